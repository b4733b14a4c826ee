"""The ingest over light records (what the fetch drain hands it, worker.stream.fetch): plain ones
joined into runs and counted, a bad one dead-lettered with its key, value and headers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from devtools.loadgen.model import TraceGenerator, build_model
from worker.config import Settings
from worker.model import extensions
from worker.observability.stats import WorkerStats
from worker.processors.pipeline import Pipeline
from worker.stream import kafka_records
from worker.stream.ingest import Ingest
from worker.stream.partitions import Partitions

TOPIC = "light-in"
SETTINGS = Settings(kafka={"input_topic": TOPIC, "tenant_header": "x-tenant"})
compiled: Any = extensions.load("worker.stream._kafka_records")
PARSERS = [kafka_records.parse] + ([compiled.parse] if compiled is not None else [])


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []

    async def send_and_wait(self, topic: str, value: bytes, **kwargs: Any) -> None:
        self.sent.append((value, kwargs))


class _Consumer:
    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}


def _fetch() -> tuple[bytes, int]:
    """A fetched batch: trace requests of two tenants and, between them, a record that is no OTLP."""
    generator = TraceGenerator(build_model(services=4, seed=5), seed=5)
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    spans = 0
    offset = 0
    for index in range(12):
        key, request = generator.trace_request(1_700_000_000_000_000_000)
        headers = [("x-tenant", b"acme")] if index >= 8 else []
        spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        value = request.SerializeToString()
        builder.append(offset, timestamp=1_700_000_000_000, key=key, value=value, headers=headers)
        offset += 1
        if index == 4:
            bad_headers = [("x-trace", b"1")]
            builder.append(offset, timestamp=1, key=b"bad-key", value=b"\xffnot otlp", headers=bad_headers)
            offset += 1
    return bytes(builder.build()), spans


@pytest.mark.parametrize("parse", PARSERS)
def test_light_records_are_counted_and_a_bad_one_dead_lettered_whole(parse: Any) -> None:
    raw, spans = _fetch()
    records, _, _, status = parse(raw, 0, 0, True, TOPIC, 0, 1 << 30)
    assert status == kafka_records.END and len(records) == 13
    shared = Partitions()
    shared.tokens[0] = 1
    stats = WorkerStats()
    producer = _Producer()
    ingest = Ingest(
        SETTINGS.kafka,
        _Consumer(),  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        Pipeline(SETTINGS),
        shared,
        stats,
        _Log(),
        rewind=lambda partitions: asyncio.sleep(0),
        checkpoint_spans=SETTINGS.worker.max_buffered_spans,
    )
    asyncio.run(ingest.handle(TopicPartition(TOPIC, 0), records))
    assert stats.records == 13 and stats.spans == spans and stats.dlq == 1
    assert shared.progress[0] == 13
    [(value, sent)] = producer.sent
    assert value == b"\xffnot otlp" and sent["key"] == b"bad-key"
    headers = dict(sent["headers"])
    assert headers["x-trace"] == b"1" and headers["x-spanmetrics-source-offset"] == b"5"
