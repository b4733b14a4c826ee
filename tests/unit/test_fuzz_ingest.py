"""Mutated real records through the worker's ingest, store fold and encoder.

Records from the load generator (the Collector's Kafka exporter's shape) plus other OTLP messages
and deep attributes, mutated by a seeded, structure-aware mutator, are fed in fetched batches to
:class:`worker.stream.ingest.Ingest` (joined runs and single records alike). For every batch:

* nothing raises out of ``Ingest.handle`` (the partition never stops);
* nothing is lost silently: every record is consumed or dead-lettered with a reason, and the
  spans counted are exactly those of the records consumed (decoded alone);
* every output record the encoder writes from what was counted (merged into a memory store,
  folded and published as the worker does) decodes with ``ExportMetricsServiceRequest.FromString``.

``SPANMETRICS_FUZZ_SCALE=<n>`` runs n times more batches; the figures are printed at the end.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from devtools.loadgen.model import TraceGenerator, build_model
from state.memory_store import MemoryStore
from worker.config import Settings
from worker.model.errors import OtlpDecodeError
from worker.model.series import with_companions
from worker.model.wire import message
from worker.observability.stats import WorkerStats
from worker.offline import LocalWorker
from worker.otlp.decode import decode_traces
from worker.otlp.json_codec import traces_to_json
from worker.processors.pipeline import Pipeline
from worker.processors.sampling import adjusted_count
from worker.stream.ingest import Ingest
from worker.stream.partitions import Partitions

SCALE = max(1, int(os.environ.get("SPANMETRICS_FUZZ_SCALE", "1")))
BATCHES = 400 * SCALE
MAX_WEIGHT = float(1 << 20)
TOPIC = "fuzz-in"

SETTINGS = Settings(
    spanmetrics={
        "dimensions": ["http.request.method", "http.response.status_code", "deep"],
        "events": {"enabled": True, "dimensions": ["exception.type"]},
        "exemplars": {"enabled": True},
        "aggregation_cardinality_limit": 300,
    },
    servicegraphs={"enabled": True, "dimensions": ["deep"], "max_items": 500},
)


class _Producer:
    """The DLQ side of the producer: what ``Ingest`` sends, kept."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(self, topic: str, value: bytes | None, **kwargs: Any) -> None:
        self.sent.append((value, list(kwargs.get("headers") or [])))


class _Consumer:
    def assignment(self) -> set[TopicPartition]:
        return set()


async def _no_rewind(partitions: object) -> None:
    raise AssertionError("no processor may raise on these records")


class _Log:
    def warning(self, *args: Any, **kwargs: Any) -> None:
        pass


def _nested(depth: int, rng: random.Random) -> bytes:
    """An AnyValue of lists and maps ``depth`` deep, serialized (the API refuses to build it deep)."""
    value = message(b"\x0a", b"leaf")
    for _ in range(depth):
        if rng.random() < 0.5:
            value = message(b"\x2a", message(b"\x0a", value))  # array_value.values
        else:
            value = message(b"\x32", message(b"\x0a", message(b"\x0a", b"k") + message(b"\x12", value)))
    return value


def _with_deep_attribute(request: ExportTraceServiceRequest, depth: int, rng: random.Random) -> bytes:
    """``request`` with one span moved to a resource of its own, carrying attribute ``deep``."""
    resource_spans = request.resource_spans[0]
    spans = resource_spans.scope_spans[0].spans
    span = spans.pop(rng.randrange(len(spans)))
    attribute = message(b"\x0a", b"deep") + message(b"\x12", _nested(depth, rng))
    span_bytes = span.SerializeToString() + message(b"\x4a", attribute)
    extra = message(b"\x0a", resource_spans.resource.SerializeToString()) + message(
        b"\x12", message(b"\x12", span_bytes)
    )
    return request.SerializeToString() + message(b"\x0a", extra)


def _seeds(rng: random.Random) -> list[bytes]:
    generator = TraceGenerator(
        build_model(services=6, seed=rng.randrange(1 << 30)), seed=rng.randrange(1 << 30)
    )
    now = time.time_ns()
    seeds = []
    for _ in range(40):
        request = generator.trace_request(now)[1]
        if rng.random() < 0.3:  # a deep attribute on one span (a dimension of every processor)
            seeds.append(_with_deep_attribute(request, rng.randint(10, 47), rng))
        else:
            seeds.append(request.SerializeToString())
    metrics = ExportMetricsServiceRequest()
    rm = metrics.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    rm.scope_metrics.add().metrics.add(name="http.server.request.duration").sum.data_points.add(as_int=1)
    logs = ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    rl.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    rl.scope_logs.add().log_records.add(severity_text="INFO").body.string_value = "hello"
    seeds += [metrics.SerializeToString(), logs.SerializeToString()]
    return seeds


#: Field tags of the OTLP messages (length-delimited, fields 1 to 9), and varint edges.
_INTERESTING_BYTES = (0x00, 0x0A, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42, 0x4A, 0x7F, 0x80, 0xFF)


def _mutate(data: bytes, seeds: list[bytes], rng: random.Random) -> bytes:
    """One to three of: bit flips, a byte set, bytes inserted or removed, a cut, a splice with
    another record, a field duplicated, a length varint changed, as JSON."""
    blob = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        how = rng.randrange(9)
        if not blob:
            blob = bytearray(rng.choice(seeds))
        at = rng.randrange(len(blob))
        if how == 0:
            blob[at] ^= 1 << rng.randrange(8)
        elif how == 1:
            blob[at] = rng.choice(
                [0x00, 0x0A, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42, 0x4A, 0x7F, 0x80, 0xFF]
            )
        elif how == 2:
            blob[at:at] = rng.randbytes(rng.randint(1, 4))
        elif how == 3:
            del blob[at : at + rng.randint(1, 8)]
        elif how == 4:
            del blob[at:]
        elif how == 5:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) or 1)
            blob = blob[:at] + bytearray(other[cut:])
        elif how == 6:  # repeat a slice (a field written twice, when it is one)
            end = min(len(blob), at + rng.randint(2, 40))
            blob[end:end] = blob[at:end]
        elif how == 7:
            blob[at] = (blob[at] + rng.choice([-2, -1, 1, 2])) & 0xFF
        else:
            try:
                return traces_to_json(ExportTraceServiceRequest.FromString(bytes(blob))).encode()
            except Exception:
                pass
    return bytes(blob)


def _expected_spans(value: bytes) -> tuple[int, int, int | None] | None:
    """(spans, spans without a service name, calls) the record counts when consumed alone (calls
    None when a sampling weight is fractional, so rounded at random); None when it is refused."""
    try:
        request = decode_traces(value)  # parsing only: the id rule is checked here, independently
    except OtlpDecodeError:
        return None
    every = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
    if any(
        len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id) or not any(span.span_id)
        for span in every
    ):
        return None
    spans = unnamed = 0
    calls: int | None = 0
    for resource_spans in request.resource_spans:
        # Upstream: a service.name of any type counts (a non-string one reads as ""); only an
        # absent one skips the resource.
        named = any(kv.key == "service.name" for kv in resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            items = scope_spans.spans
            if not named:
                unnamed += len(items)
            else:
                spans += len(items)
                for span in items:
                    weight = min(adjusted_count(span.trace_state), MAX_WEIGHT) if span.trace_state else 1.0
                    if calls is not None:
                        calls = calls + int(weight) if weight.is_integer() else None
    return spans, unnamed, calls


def _record(offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TOPIC,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=[],
    )


def test_mutated_real_records_through_ingest_store_and_encoder() -> None:
    rng = random.Random(20240615)
    seeds = _seeds(rng)
    outcomes: Counter[str] = Counter()
    output_records = 0
    started = time.monotonic()
    for batch_index in range(BATCHES):
        pipeline = Pipeline(SETTINGS)
        shared = Partitions()
        shared.tokens[0] = 1
        stats = WorkerStats()
        producer = _Producer()
        ingest = Ingest(
            SETTINGS.kafka,
            _Consumer(),  # type: ignore[arg-type]
            producer,  # type: ignore[arg-type]
            pipeline,
            shared,
            stats,
            _Log(),
            rewind=_no_rewind,
            checkpoint_spans=SETTINGS.worker.max_buffered_spans,
        )
        values = []
        for _ in range(rng.randint(1, 40)):
            seed = rng.choice(seeds)
            values.append(seed if rng.random() < 0.35 else _mutate(seed, seeds, rng))
        records = [_record(offset, value) for offset, value in enumerate(values)]

        asyncio.run(ingest.handle(TopicPartition(TOPIC, 0), records))  # raises nothing

        # Nothing lost silently: each record consumed or dead-lettered with a reason.
        assert stats.records == len(records)
        reasons = [dict(headers).get("x-spanmetrics-error", b"") for _, headers in producer.sent]
        assert all(reasons) and stats.dlq == len(producer.sent)
        expected = [_expected_spans(value) for value in values]
        refused = sum(e is None for e in expected)
        assert stats.dlq == refused, (batch_index, stats.dlq, refused)
        refused_values = [v for v, e in zip(values, expected, strict=True) if e is None]
        assert sorted(v or b"" for v, _ in producer.sent) == sorted(refused_values)
        consumed = [e for e in expected if e is not None]
        assert stats.spans == sum(s for s, _, _ in consumed)
        assert stats.dropped.get("no_service_name", 0) == sum(u for _, u, _ in consumed)
        outcomes["dead-lettered"] += refused
        outcomes["consumed"] += len(consumed)

        # What was counted: stored, folded, published; every record decodes with the standard decoder.
        pipeline.expire_all()
        deltas = pipeline.take_deltas()
        calls = sum(
            s.count for d in deltas.values() for s in with_companions(d.series) if s.metric == "calls"
        )
        weights = [c for _, _, c in consumed]
        if None not in weights:
            assert calls == sum(c for c in weights if c is not None)
        store = MemoryStore(slots=1, max_exemplars=pipeline.max_exemplars)
        local = LocalWorker(store, pipeline.descriptors(), SETTINGS.spanmetrics.aggregation_temporality)
        local.merge(deltas, pipeline.export_pending(local.tokens))
        for published in local.emit(time.time_ns()):
            for request in published.requests:
                ExportMetricsServiceRequest.FromString(request.data)
                output_records += 1
    print(
        f"\ningest fuzz: {BATCHES} batches, {sum(outcomes.values())} records "
        f"({dict(outcomes)}), {output_records} output records decoded, {time.monotonic() - started:.1f} s"
    )
