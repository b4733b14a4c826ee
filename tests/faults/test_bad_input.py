"""Bad records on a real topic, between good ones on the same partition.

Each bad record is counted (when it is valid OTLP, however absurd) or dead-lettered with a
reason; the worker never stops, and the good records after them are counted. The cases are the
ones ``tests/unit/test_fuzz_inputs.py`` fuzzes, sent through the broker, the worker, Redis and
the emitter - including the ones that only break there (values that cannot be stored or
published, records too large to forward).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devtools.servers import KafkaEndpoint, RedisEndpoint
from worker.model.values import any_value_to_python, stringify_any_value

from ..integration.helpers import RunningWorker, make_settings, span_count, traces
from .harness import TENANT_HEADER, Output, ScenarioReport, create_scenario_topics

YEAR_2300_NS = int((2300 - 1970) * 365.2425 * 86400) * 10**9
FIXED64_MAX = (1 << 64) - 1
MAX_WEIGHT = 1 << 20


def _request(*spans: Span, resource: list[KeyValue] | None = None) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="absurd"))
    rs.resource.attributes.extend(resource or [])
    rs.scope_spans.add().spans.extend(spans)
    return request


def _span(name: str = "op", **fields: object) -> Span:
    base: dict[str, object] = {
        "trace_id": b"\x01" * 16,
        "span_id": b"\x02" * 8,
        "start_time_unix_nano": time.time_ns(),
        "end_time_unix_nano": time.time_ns() + 1_000_000,
        "kind": Span.SPAN_KIND_SERVER,
    }
    base.update(fields)
    return Span(name=name, **base)  # type: ignore[arg-type]


def _bad_utf8_name() -> bytes:
    blob = _request(_span("\u2603\u2603")).SerializeToString()
    return blob.replace("\u2603\u2603".encode(), b"\xff\xfe\xfd\xfc\xfb\xfa")


def _deep_tree(depth: int) -> ExportTraceServiceRequest:
    spans, parent = [], b""
    for level in range(depth):
        span_id = (level + 1).to_bytes(8, "big")
        kind = Span.SPAN_KIND_CLIENT if level % 2 else Span.SPAN_KIND_SERVER
        spans.append(_span(f"level{level % 5}", span_id=span_id, parent_span_id=parent, kind=kind))
        parent = span_id
    return _request(*spans)


#: Valid records whose series cannot be published: one series alone is larger than any output
#: record may be. They are counted in Redis, and skipped (with a dropped counter) at emission.
#: (A 10 MB dimension value is published: a label is cut to MAX_LABEL_LENGTH.)
UNPUBLISHABLE = ("10 MB span name",)


def _cases() -> tuple[list[tuple[str, bytes, list[tuple[str, bytes]]]], int, int]:
    """(name, value, headers) of every bad record; the calls the output shows; how many go to the DLQ."""
    huge = "x" * (10 * 1024 * 1024)
    counted: list[tuple[str, ExportTraceServiceRequest, int]] = [
        ("end before start", _request(_span(start_time_unix_nano=10, end_time_unix_nano=5)), 1),
        ("1970", _request(_span(start_time_unix_nano=0, end_time_unix_nano=1)), 1),
        ("2300", _request(_span(start_time_unix_nano=YEAR_2300_NS, end_time_unix_nano=YEAR_2300_NS + 9)), 1),
        ("largest fixed64", _request(_span(start_time_unix_nano=0, end_time_unix_nano=FIXED64_MAX)), 1),
        (
            "sampled at 2^-56 (x300)",
            _request(*[_span(trace_state="ot=th:ffffffffffffff") for _ in range(300)]),
            300 * MAX_WEIGHT,
        ),
        ("own parent", _request(_span(span_id=b"\x07" * 8, parent_span_id=b"\x07" * 8)), 1),
        ("kind and status outside the enums", _request(_span(kind=42, status={"code": 9})), 1),
        ("deep tree (2,000 levels)", _deep_tree(2_000), 2_000),
        (
            "100,000 attributes",
            _request(
                _span(attributes=[KeyValue(key=f"a{i}", value=AnyValue(int_value=i)) for i in range(100_000)])
            ),
            1,
        ),
        (
            "10 MB dimension value",
            _request(_span(attributes=[KeyValue(key="http.method", value=AnyValue(string_value=huge))])),
            1,
        ),
        (
            "10 MB span name",
            _request(_span(huge)),
            1,
        ),
    ]
    dead: list[tuple[str, bytes, list[tuple[str, bytes]]]] = [
        ("random bytes", random.Random(1).randbytes(300), []),
        ("truncated protobuf", traces(1, seed=9)[0][1].SerializeToString()[:-7], []),
        ("invalid UTF-8 in a span name", _bad_utf8_name(), []),
        ("invalid OTLP/JSON", b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 12}]}]}]}', []),
        ("not JSON at all", b"{not json", []),
        ("3 MB of garbage", random.Random(2).randbytes(3 * 1024 * 1024), []),
        (
            "invalid tenant header",
            traces(1, seed=10)[0][1].SerializeToString(),
            [(TENANT_HEADER, b"\xff" * 4)],
        ),
        (
            "tenant header too long",
            traces(1, seed=11)[0][1].SerializeToString(),
            [(TENANT_HEADER, b"t" * 500)],
        ),
        ("empty trace and span ids", _request(_span(trace_id=b"", span_id=b"")).SerializeToString(), []),
    ]
    records = [(name, request.SerializeToString(), []) for name, request, _ in counted]
    shown = sum(calls for name, _, calls in counted if name not in UNPUBLISHABLE)
    return [*records, *dead], shown, len(dead)


async def test_bad_records_are_counted_or_dead_lettered_and_the_partition_moves_on(
    kafka: KafkaEndpoint, redis_server: RedisEndpoint, report: ScenarioReport
) -> None:
    name = f"bad-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, 1)  # one partition: the bad ones sit between good ones
    settings = make_settings(
        bootstrap, redis_server.url, name, exemplars={"enabled": True}, dimensions=["http.method"]
    )
    bad, bad_calls, dead_expected = _cases()
    before, after = traces(10, seed=21), traces(10, seed=22)
    good_calls = span_count(r for _, r in before) + span_count(r for _, r in after)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=32 * 1024 * 1024, linger_ms=5)
    await producer.start()
    try:
        for key, request in before:
            await producer.send_and_wait(f"{name}-in", request.SerializeToString(), key=key)
        for _, value, headers in bad:
            await producer.send_and_wait(f"{name}-in", value, key=b"bad", headers=headers)
        for key, request in after:
            await producer.send_and_wait(f"{name}-in", request.SerializeToString(), key=key)
    finally:
        await producer.stop()

    output = await Output(bootstrap, f"{name}-out").start()
    expected = good_calls + bad_calls
    try:
        async with RunningWorker(settings, "bad-input") as running:
            deadline = time.monotonic() + 90
            while sum(output.totals(("calls",)).values()) < expected and time.monotonic() < deadline:
                assert running.task is not None and not running.task.done(), running.task
                await asyncio.sleep(0.25)
            await asyncio.sleep(2)
            stats = running.worker.stats
            alive = running.task is not None and not running.task.done()
        calls = sum(output.totals(("calls",)).values())
    finally:
        await output.stop()
    dead = await _dead_letters(bootstrap, f"{name}-dlq", dead_expected)

    report.fact(
        "bad records",
        f"{len(bad)} ({len(bad) - dead_expected} valid but absurd, {dead_expected} undecodable)",
    )
    report.fact("dead-lettered", f"{len(dead)}: " + "; ".join(sorted({r[:60] for r in dead})))
    report.fact("worker dropped counters", stats.dropped)
    report.note(f"not in the output (counted in Redis, too large to publish): {', '.join(UNPUBLISHABLE)}")
    report.produced = {("calls", ""): expected}
    report.counted = {("calls", ""): calls}

    assert alive
    assert calls == expected
    assert stats.dlq == dead_expected
    assert len(dead) == dead_expected
    assert stats.dropped.get("output_record_too_large", 0) >= len(UNPUBLISHABLE)


async def _dead_letters(bootstrap: str, topic: str, count: int) -> list[str]:
    """The x-spanmetrics-error header of every dead letter."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    reasons: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while len(reasons) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    reasons.append(dict(record.headers).get("x-spanmetrics-error", b"").decode())
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            reasons.extend(dict(r.headers).get("x-spanmetrics-error", b"").decode() for r in records)
    finally:
        await consumer.stop()
    return reasons


def _metrics_request() -> bytes:
    """An OTLP metrics export, as a Collector's Kafka exporter writes it to the wrong topic."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    metric = rm.scope_metrics.add().metrics.add(name="http.server.request.duration", unit="s")
    metric.sum.data_points.add(as_int=3, time_unix_nano=time.time_ns())
    return request.SerializeToString()


def _logs_request() -> bytes:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    rl.scope_logs.add().log_records.add(severity_text="INFO").body.string_value = "payment accepted"
    return request.SerializeToString()


def _nested_array(depth: int) -> AnyValue:
    value = AnyValue(string_value="leaf")
    for _ in range(depth):
        outer = AnyValue()
        outer.array_value.values.append(value)
        value = outer
    return value


async def test_other_otlp_messages_are_dead_lettered_and_a_deep_attribute_poisons_nothing(
    kafka: KafkaEndpoint, redis_server: RedisEndpoint, report: ScenarioReport
) -> None:
    """A metrics and a logs request on the traces topic go to the DLQ naming the problem (they
    parse as traces: before, they were counted as phantom spans); a span whose dimension is
    nested 47 deep (the deepest a traces request may carry) is counted with its label as a
    string, and every output record decodes, so the good series of the same flush arrive."""
    name = f"notraces-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, 1)
    settings = make_settings(bootstrap, redis_server.url, name, dimensions=["deep"])
    before, after = traces(10, seed=31), traces(10, seed=32)
    deep = _nested_array(47)
    deep_record = _request(
        _span("deep", attributes=[KeyValue(key="deep", value=deep)]),
        _span("shallow", span_id=b"\x03" * 8, attributes=[KeyValue(key="deep", value=AnyValue(int_value=7))]),
    )
    good_calls = span_count(r for _, r in before) + span_count(r for _, r in after) + 2
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for key, request in before:
            await producer.send_and_wait(f"{name}-in", request.SerializeToString(), key=key)
        await producer.send_and_wait(f"{name}-in", _metrics_request(), key=b"metrics")
        await producer.send_and_wait(f"{name}-in", _logs_request(), key=b"logs")
        await producer.send_and_wait(f"{name}-in", deep_record.SerializeToString(), key=b"deep")
        for key, request in after:
            await producer.send_and_wait(f"{name}-in", request.SerializeToString(), key=key)
    finally:
        await producer.stop()

    raw = await _RawOutput(bootstrap, f"{name}-out").start()
    try:
        async with RunningWorker(settings, "not-traces") as running:
            deadline = time.monotonic() + 60
            while raw.calls() < good_calls and time.monotonic() < deadline and not raw.undecodable:
                assert running.task is not None and not running.task.done(), running.task
                await asyncio.sleep(0.25)
            await asyncio.sleep(2)  # anything counted twice would show now
            stats = running.worker.stats
    finally:
        await raw.stop()
    dead = await _dead_letters(bootstrap, f"{name}-dlq", 2)

    report.fact(
        "records", f"{len(before) + len(after)} good, 2 other OTLP messages, 1 with a 47-deep attribute"
    )
    report.fact("dead-lettered", "; ".join(reason[:80] for reason in dead))
    report.fact("output records", f"{raw.decoded} decoded, {len(raw.undecodable)} undecodable")
    report.produced = {("calls", ""): good_calls}
    report.counted = {("calls", ""): raw.calls()}

    assert not raw.undecodable, raw.undecodable[0]
    assert raw.calls() == good_calls
    assert stats.dlq == 2 and len(dead) == 2
    assert dead[0].startswith("span 0 of resource 0: trace_id of 28 bytes (want 16)"), dead[0]
    assert dead[1].startswith("span 0 of resource 0: trace_id of 0 bytes (want 16)"), dead[1]
    assert all(reason.endswith("is this an OTLP traces request?") for reason in dead)
    assert raw.labels["deep"] == {stringify_any_value(deep), 7}


class _RawOutput:
    """The output topic decoded record by record with the standard decoder: calls per series
    (latest cumulative value), the values seen for each label, and what did not decode."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self.latest: dict[tuple[object, ...], tuple[int, int]] = {}
        self.labels: dict[str, set[object]] = {}
        self.decoded = 0
        self.undecodable: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> _RawOutput:
        await self.consumer.start()
        self._task = asyncio.create_task(self._loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()

    def calls(self) -> int:
        return sum(value for _, value in self.latest.values())

    async def _loop(self) -> None:
        while True:
            for records in (await self.consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    try:
                        request = ExportMetricsServiceRequest.FromString(record.value or b"")
                    except DecodeError as exc:
                        self.undecodable.append(str(exc))
                        continue
                    self.decoded += 1
                    self._observe(request)

    def _observe(self, request: ExportMetricsServiceRequest) -> None:
        for rm in request.resource_metrics:
            resource = rm.resource.SerializeToString()
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != "calls":
                        continue
                    for point in metric.sum.data_points:
                        labels = tuple((kv.key, kv.value.SerializeToString()) for kv in point.attributes)
                        for kv in point.attributes:
                            self.labels.setdefault(kv.key, set()).add(any_value_to_python(kv.value))
                        key = (resource, labels)
                        seen = self.latest.get(key)
                        if seen is None or point.time_unix_nano >= seen[0]:
                            self.latest[key] = (point.time_unix_nano, point.as_int)
