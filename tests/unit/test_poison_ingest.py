"""A record whose processing raises counts nothing and is dead-lettered once (issue 15, section 3).

The stream parts run for real (Ingest, Checkpoint, Rebalance's rewind, a real Pipeline, the memory
store) over an in-process partition log; a processor is made to raise, after aggregating, on
requests holding a span with the attribute ``poison``. Everything emitted must equal what the same
loop emits over the good records alone, and each poisoned record is dead-lettered exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client import CollectorRegistry

from devtools.loadgen.model import TraceGenerator, build_model
from state.memory_store import MemoryStore
from tests.poison import raise_on_poison
from worker.config import Settings
from worker.observability.selfmetrics import WorkerMetrics
from worker.observability.stats import WorkerStats
from worker.offline import LocalWorker
from worker.processors.pipeline import Pipeline
from worker.processors.servicegraphs.processor import ServiceGraphsProcessor
from worker.processors.spanmetrics.processor import SpanMetricsProcessor
from worker.stream.checkpoint import Checkpoint
from worker.stream.ingest import Ingest
from worker.stream.partitions import Partitions
from worker.stream.rebalance import Rebalance

TOPIC = "poison-in"
PARTITIONS = 3
SETTINGS = Settings(
    kafka={"input_topic": TOPIC, "max_poll_records": 50},
    servicegraphs={"enabled": True},
    worker={"max_buffered_spans": 1000},
)


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Consumer:
    """The consumer calls the parts make, over an in-process log per partition."""

    def __init__(self, logs: dict[int, list[ConsumerRecord[bytes, bytes]]]) -> None:
        self.logs = logs
        self.positions = dict.fromkeys(logs, 0)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, p) for p in self.logs}

    async def getmany(self, max_records: int) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        batch = {}
        for partition, log in self.logs.items():
            at = self.positions[partition]
            records = log[at : at + max_records // len(self.logs)]
            if records:
                batch[TopicPartition(TOPIC, partition)] = records
                self.positions[partition] = records[-1].offset + 1
        return batch

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp.partition] = 0

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp.partition]

    async def commit(self, offsets: object) -> None:
        pass

    async def committed(self, tp: TopicPartition) -> None:
        return None

    def pause(self, *tps: TopicPartition) -> None:
        pass

    def resume(self, *tps: TopicPartition) -> None:
        pass

    def done(self) -> bool:
        return all(self.positions[p] >= len(log) for p, log in self.logs.items())


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, bytes]]] = []

    async def send_and_wait(self, topic: str, value: bytes, **kwargs: Any) -> None:
        self.sent.append((value, dict(kwargs.get("headers") or [])))


class _SendFailed(Exception):
    pass


class _BrokenProducer(_Producer):
    async def send_and_wait(self, topic: str, value: bytes, **kwargs: Any) -> None:
        raise _SendFailed("the DLQ topic is unreachable")


def _records(
    count: int, poison_every: int
) -> tuple[dict[int, list[ConsumerRecord[bytes, bytes]]], set[bytes]]:
    """``count`` trace requests spread over the partitions by trace; every ``poison_every``-th has
    one span marked (its other spans are good ones: they must count nothing either)."""
    generator = TraceGenerator(build_model(services=5, seed=3), seed=3)
    now = time.time_ns()
    logs: dict[int, list[ConsumerRecord[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    poisoned: set[bytes] = set()
    for index in range(count):
        key, request = generator.trace_request(now)
        if index % poison_every == 3:
            span = request.resource_spans[-1].scope_spans[0].spans[-1]
            span.attributes.add(key="poison", value=AnyValue(bool_value=True))
        value = request.SerializeToString()
        if index % poison_every == 3:
            poisoned.add(value)
        log = logs[index % PARTITIONS]
        log.append(
            ConsumerRecord(
                topic=TOPIC,
                partition=index % PARTITIONS,
                offset=len(log),
                timestamp=0,
                timestamp_type=0,
                key=key,
                value=value,
                checksum=None,
                serialized_key_size=len(key),
                serialized_value_size=len(value),
                headers=[],
            )
        )
    return logs, poisoned


async def _run(
    logs: dict[int, list[ConsumerRecord[bytes, bytes]]],
    store: MemoryStore | None = None,
    producer: _Producer | None = None,
    *,
    killed_after_dlq: int = 0,
) -> tuple[Counter[tuple[str, str]], _Producer]:
    """The worker's loop over ``logs``: batches under the lock, a checkpoint every few batches or
    when forced; then every slot folded and emitted. Returns the emitted values and the DLQ.

    ``killed_after_dlq``: stop dead (SIGKILL) once the DLQ holds that many records. A failed DLQ
    send ends the loop as in the worker: the final checkpoint, then the error.
    """
    pipeline = Pipeline(SETTINGS)
    store = store or MemoryStore(slots=PARTITIONS, max_exemplars=pipeline.max_exemplars)
    consumer = _Consumer(logs)
    producer = producer or _Producer()
    shared = Partitions()
    stats = WorkerStats()
    log = _Log()
    rebalance = Rebalance(
        consumer,  # type: ignore[arg-type]
        pipeline,
        shared,
        stats,
        log,
        topic=TOPIC,
        revoke_deadline=5,
        retry_within=1,
    )
    checkpoint = Checkpoint(
        store,
        pipeline,
        consumer,  # type: ignore[arg-type]
        shared,
        stats,
        WorkerMetrics(CollectorRegistry()),
        log,
        topic=TOPIC,
        retry_within=1,
        rewind=rebalance.rewind,
        forget=rebalance.forget,
    )
    await rebalance.attach(store, checkpoint)
    ingest = Ingest(
        SETTINGS.kafka,
        consumer,  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        pipeline,
        shared,
        stats,
        log,
        rewind=rebalance.rewind,
        checkpoint_spans=SETTINGS.worker.max_buffered_spans,
    )
    await rebalance.on_assigned(consumer.assignment())
    rounds = 0
    try:
        while not consumer.done():
            rounds += 1
            assert rounds < 10_000, "the loop makes no progress"
            batch = await consumer.getmany(SETTINGS.kafka.max_poll_records)
            async with shared.lock:
                for tp, records in batch.items():
                    await ingest.handle(tp, records)
                    if killed_after_dlq and len(producer.sent) >= killed_after_dlq:
                        return Counter(), producer
            if rounds % 7 == 0 or shared.buffered_spans >= SETTINGS.worker.max_buffered_spans:
                assert await checkpoint.run()
    except _SendFailed:
        assert await checkpoint.run()  # the worker's final flush on its way out
        raise
    assert await checkpoint.run()
    assert await store.applied_offsets(range(PARTITIONS)) == {p: len(log) for p, log in logs.items()}

    local = LocalWorker(store, pipeline.descriptors(), SETTINGS.spanmetrics.aggregation_temporality)
    values: Counter[tuple[str, str]] = Counter()
    for published in local.emit(time.time_ns()):
        for encoded in published.requests:
            request = ExportMetricsServiceRequest.FromString(encoded.data)
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.HasField("sum"):
                            for point in metric.sum.data_points:
                                key = (metric.name, str(rm.resource) + str(point.attributes))
                                values[key] += point.as_int or int(point.as_double)
                        else:
                            for point in metric.histogram.data_points:
                                key = (metric.name, str(rm.resource) + str(point.attributes))
                                values[key] += point.count
    return values, producer


@pytest.mark.parametrize("processor", [SpanMetricsProcessor, ServiceGraphsProcessor])
def test_a_record_whose_processing_raises_counts_nothing_and_is_dead_lettered_once(
    monkeypatch: pytest.MonkeyPatch, processor: type[Any]
) -> None:
    logs, poisoned = _records(600, poison_every=37)
    good = {p: [r for r in log if r.value not in poisoned] for p, log in logs.items()}
    for log in good.values():  # the same records, as if the poisoned ones were never written
        for offset, record in enumerate(log):
            log[offset] = dataclasses.replace(record, offset=offset)
    expected, none = asyncio.run(_run(good))
    assert none.sent == []

    raise_on_poison(monkeypatch, processor)
    started = time.monotonic()
    counted, producer = asyncio.run(_run(logs))
    seconds = time.monotonic() - started

    spans = sum(v for (name, _), v in expected.items() if name == "calls")
    print(
        f"\npoison ({processor.__name__}): {sum(len(log) for log in logs.values())} records, "
        f"{len(poisoned)} poisoned; calls counted {sum(v for (n, _), v in counted.items() if n == 'calls')}"
        f" of {spans} expected; {len(producer.sent)} dead-lettered; {seconds:.2f} s"
    )
    assert counted == expected
    assert sorted(value for value, _ in producer.sent) == sorted(poisoned)
    for _, headers in producer.sent:
        assert headers["x-spanmetrics-error"] == b"processing failed: RuntimeError: poisoned span"


def _expected(logs: dict[int, list[ConsumerRecord[bytes, bytes]]], poisoned: set[bytes]) -> Counter[Any]:
    """What the loop emits over the good records alone (no processor raises on them)."""
    good = {p: [r for r in log if r.value not in poisoned] for p, log in logs.items()}
    for log in good.values():
        for offset, record in enumerate(log):
            log[offset] = dataclasses.replace(record, offset=offset)
    expected, none = asyncio.run(_run(good))
    assert none.sent == []
    return expected


def test_a_worker_killed_after_the_dlq_send_leaves_the_record_to_be_dead_lettered_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At-least-once to the DLQ, exactly once into the counts."""
    logs, poisoned = _records(300, poison_every=37)
    expected = _expected(logs, poisoned)
    raise_on_poison(monkeypatch, ServiceGraphsProcessor)

    async def scenario() -> tuple[Counter[Any], _Producer]:
        store = MemoryStore(slots=PARTITIONS, max_exemplars=Pipeline(SETTINGS).max_exemplars)
        producer = _Producer()
        await _run(logs, store, producer, killed_after_dlq=1)
        return await _run(logs, store, producer)  # the next owner, from what Redis holds

    counted, producer = asyncio.run(scenario())
    assert counted == expected
    sent = [value for value, _ in producer.sent]
    assert sorted(sent) == sorted([*poisoned, sent[0]])  # the first one twice, the others once


def test_a_failed_dlq_send_leaves_nothing_partial_for_the_final_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs, poisoned = _records(300, poison_every=37)
    expected = _expected(logs, poisoned)
    raise_on_poison(monkeypatch, SpanMetricsProcessor)

    async def scenario() -> tuple[Counter[Any], _Producer]:
        store = MemoryStore(slots=PARTITIONS, max_exemplars=Pipeline(SETTINGS).max_exemplars)
        with pytest.raises(_SendFailed):
            await _run(logs, store, _BrokenProducer())
        return await _run(logs, store)

    counted, producer = asyncio.run(scenario())
    assert counted == expected
    assert sorted(value for value, _ in producer.sent) == sorted(poisoned)
