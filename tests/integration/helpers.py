"""Shared pieces of the worker integration tests: produce known traffic, run workers, read totals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from devtools.loadgen.model import TraceGenerator, build_model
from worker.config import Settings
from worker.model.values import any_value_to_python
from worker.stream.worker import StreamWorker


def make_settings(kafka: str, redis: str, name: str, **spanmetrics: object) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": kafka,
            "input_topic": f"{name}-in",
            "output_topic": f"{name}-out",
            "dlq_topic": f"{name}-dlq",
            "group_id": f"{name}-group",
            "session_timeout": "6s",
            "heartbeat_interval": "1s",
        },
        redis={"url": redis, "key_prefix": name},
        spanmetrics={"metrics_flush_interval": "1s", **spanmetrics},
        worker={"revoke_deadline": "5s", "shutdown_grace": "10s"},
        http={"enabled": False},
    )


def traces(count: int, seed: int = 7, services: int = 5) -> list[tuple[bytes, ExportTraceServiceRequest]]:
    generator = TraceGenerator(build_model(services=services, seed=seed), seed=seed)
    now = time.time_ns()
    return [generator.trace_request(now) for _ in range(count)]


def span_count(requests: Iterable[ExportTraceServiceRequest]) -> int:
    return sum(len(ss.spans) for r in requests for rs in r.resource_spans for ss in rs.scope_spans)


async def produce(
    kafka: str, topic: str, records: Iterable[tuple[bytes, bytes]], tenant: str | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    try:
        headers = [("X-Scope-OrgID", tenant.encode())] if tenant else []
        futures = [await producer.send(topic, value, key=key, headers=headers) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Observed:
    """What the output topic said: latest cumulative value per series, and per-flush duplicates."""

    latest: dict[tuple[str, str, tuple[tuple[str, object], ...]], tuple[int, int, int]] = field(
        default_factory=dict
    )
    duplicates: list[tuple[object, ...]] = field(default_factory=list)
    seen: dict[tuple[object, ...], int] = field(default_factory=dict)
    #: series key -> [(time_unix_nano, emitting worker)]
    emissions: dict[tuple[object, ...], list[tuple[int, str]]] = field(default_factory=dict)
    records: int = 0

    def total(self, metric: str = "calls", tenant: str | None = None) -> int:
        return sum(
            value
            for (t, m, _), (_, _, value) in self.latest.items()
            if m == metric and (tenant is None or t == tenant)
        )

    def start_times(self, metric: str = "calls") -> dict[object, int]:
        return {key: start for key, (start, _, _) in self.latest.items() if key[1] == metric}


def observe(observed: Observed, value: bytes, headers: Iterable[tuple[str, bytes]]) -> None:
    headers = list(headers)
    tenant = next((v.decode() for k, v in headers if k == "X-Scope-OrgID"), "")
    emitter = next((v.decode() for k, v in headers if k == "x-spanmetrics-worker"), "")
    request = ExportMetricsServiceRequest.FromString(value)
    observed.records += 1
    for rm in request.resource_metrics:
        resource = tuple(
            sorted((kv.key, str(any_value_to_python(kv.value))) for kv in rm.resource.attributes)
        )
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = metric.sum.data_points if metric.HasField("sum") else metric.histogram.data_points
                for point in points:
                    attrs = tuple(sorted((kv.key, any_value_to_python(kv.value)) for kv in point.attributes))
                    key = (tenant, metric.name, (*resource, *attrs))
                    value_now = point.as_int if metric.HasField("sum") else point.count
                    # A series appearing twice with the same time stamp means two emitters. Except
                    # a zero point sent again at its pinned time (a new owner cannot know whether
                    # the previous owner's publication went out: docs/internals.md "Zero points"):
                    # the same sample, value 0 both times.
                    flush_key = (key, point.time_unix_nano)
                    if flush_key in observed.seen and not (value_now == 0 and observed.seen[flush_key] == 0):
                        observed.duplicates.append(flush_key)
                    observed.seen[flush_key] = value_now
                    observed.emissions.setdefault(key, []).append((point.time_unix_nano, emitter))
                    previous = observed.latest.get(key)
                    if previous is None or point.time_unix_nano >= previous[1]:
                        observed.latest[key] = (point.start_time_unix_nano, point.time_unix_nano, value_now)


async def read_until(
    kafka: str, topic: str, done: object, timeout: float, observed: Observed | None = None
) -> Observed:
    """Consume the output topic from the start until ``done(observed)`` or the timeout."""
    observed = observed or Observed()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    observe(observed, record.value, record.headers)
            if done(observed):  # type: ignore[operator]
                break
    finally:
        await consumer.stop()
    return observed


class RunningWorker:
    """A StreamWorker in a task of this event loop, stoppable like SIGTERM would stop it."""

    def __init__(self, settings: Settings, name: str = "") -> None:
        self.worker = StreamWorker(settings, worker_id=name or None)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningWorker:
        await self.worker.start()
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def stop(self) -> None:
        self.worker.request_stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=30)
            self.task = None

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
