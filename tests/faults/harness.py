"""The pieces every fault scenario uses: known traffic, worker processes, the output, a report.

* :class:`Traffic` produces traces of several services for several tenants and counts only what
  the broker acknowledged, so "produced" is exact.
* :class:`WorkerProcess` runs ``python -m worker run --config FILE`` (a real process: it can be
  killed with SIGKILL, frozen with SIGSTOP, stopped with SIGTERM) and reads its JSON log.
* :class:`Output` tails the output topic in the background and keeps every data point, so a
  scenario can check the final cumulative totals, that no series ever went backwards, and who
  emitted what when.
* :class:`ScenarioReport` collects what a scenario did; ``conftest.py`` prints every report at
  the end of the run (also when a scenario fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devtools.loadgen.model import TraceGenerator, build_model
from devtools.servers import create_topics
from state.keys import KeySpace
from worker.config import ServiceGraphsConfig
from worker.model.values import any_value_to_python
from worker.sinks.kafka import WORKER_HEADER

TENANT_HEADER = "X-Scope-OrgID"
#: "" is the default tenant: records without the header (and output records without it).
TENANTS: tuple[str, ...] = ("", "acme", "globex")
SERVICE_GRAPH_REQUESTS = "traces_service_graph_request_total"
#: What the scenarios with service graphs count: span metrics and service-graph requests.
COUNTED_METRICS = ("calls", "duration", SERVICE_GRAPH_REQUESTS)
REPORTS = "spanmetrics_fault_reports"


# ----------------------------------------------------------------------------------- report


@dataclass
class ScenarioReport:
    """What one scenario did, printed in the terminal summary."""

    name: str
    started: float = field(default_factory=time.monotonic)
    facts: dict[str, object] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def fact(self, key: str, value: object) -> None:
        self.facts[key] = value

    def note(self, text: str) -> None:
        self.notes.append(text)

    def lines(self) -> list[str]:
        out = [f"{self.name} ({self.seconds:.1f} s)"]
        out.extend(f"    {key}: {value}" for key, value in self.facts.items())
        for metric in sorted({m for m, _ in self.produced} | {m for m, _ in self.counted}):
            produced = {t: n for (m, t), n in self.produced.items() if m == metric}
            counted = {t: n for (m, t), n in self.counted.items() if m == metric}
            tenants = sorted(set(produced) | set(counted))
            shown = ", ".join(f"{t or '<default>'} {produced.get(t, 0)}/{counted.get(t, 0)}" for t in tenants)
            ok = "OK" if produced == counted else "MISMATCH"
            out.append(
                f"    {metric} produced/counted: {sum(produced.values())}/{sum(counted.values())} "
                f"[{shown}] {ok}"
            )
        out.extend(f"    note: {text}" for text in self.notes)
        return out


# ----------------------------------------------------------------------------------- config


def write_config(
    path: Path,
    *,
    kafka: str,
    redis: str,
    name: str,
    flush: str = "500ms",
    session_timeout: str = "4s",
    heartbeat: str = "500ms",
    http: bool = False,
    service_graphs: bool = False,
    kafka_extra: Mapping[str, object] | None = None,
    worker_extra: Mapping[str, object] | None = None,
    redis_extra: Mapping[str, object] | None = None,
) -> Path:
    """One YAML config for all workers of a scenario (the HTTP port comes from the environment)."""
    document: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": kafka,
            "input_topic": f"{name}-in",
            "output_topic": f"{name}-out",
            "dlq_topic": f"{name}-dlq",
            "group_id": f"{name}-group",
            "session_timeout": session_timeout,
            "heartbeat_interval": heartbeat,
            "max_poll_records": 50,
            **(kafka_extra or {}),
        },
        "redis": {"url": redis, "key_prefix": name, **(redis_extra or {})},
        "spanmetrics": {"metrics_flush_interval": flush},
        "worker": {"revoke_deadline": "5s", "shutdown_grace": "10s", **(worker_extra or {})},
        "http": {"enabled": http, "host": "127.0.0.1", "port": 0},
        "log": {"format": "json"},
    }
    if service_graphs:
        document["servicegraphs"] = {"enabled": True, "wait": "2s"}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


async def create_scenario_topics(kafka: str, name: str, partitions: int) -> None:
    await create_topics(kafka, {f"{name}-in": partitions, f"{name}-out": 2, f"{name}-dlq": 1})


# ----------------------------------------------------------------------------------- traffic


class Traffic:
    """Known traffic: traces of ``services`` services for every tenant, counted when acknowledged.

    ``run()`` produces in the background at ``rate`` traces per second per tenant until
    ``stop()``; ``hold()`` / ``release()`` pause it (for a broker outage: nothing is in flight
    while the broker is frozen, so nothing is ambiguous).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        seed: int,
        services: int = 6,
        tenants: Iterable[str] = TENANTS,
        keep_requests: bool = False,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.tenants = tuple(tenants)
        self.generators = {
            tenant: TraceGenerator(build_model(services=services, seed=seed), seed=seed * 31 + index)
            for index, tenant in enumerate(self.tenants)
        }
        self.spans: Counter[str] = Counter()
        self.records = 0
        self.keep_requests = keep_requests
        self.requests: list[tuple[str, ExportTraceServiceRequest]] = []
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()
        self._lock = asyncio.Lock()

    async def start(self) -> Traffic:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await self._producer.start()
        return self

    async def send(self, traces_per_tenant: int) -> None:
        """One batch for every tenant; counted once every record of it is acknowledged."""
        assert self._producer is not None
        async with self._lock:
            now = time.time_ns()
            pending = []
            counted: Counter[str] = Counter()
            kept = []
            for tenant, generator in self.generators.items():
                headers = [(TENANT_HEADER, tenant.encode())] if tenant else []
                for _ in range(traces_per_tenant):
                    key, request = generator.trace_request(now)
                    counted[tenant] += sum(
                        len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans
                    )
                    if self.keep_requests:
                        kept.append((tenant, request))
                    pending.append(
                        await self._producer.send(
                            self.topic, request.SerializeToString(), key=key, headers=headers
                        )
                    )
            await asyncio.gather(*pending)
            self.spans.update(counted)
            self.records += len(pending)
            self.requests.extend(kept)

    async def send_prepared(self, items: Iterable[tuple[str, bytes, ExportTraceServiceRequest]]) -> None:
        """Produce ready-made (tenant, key, request) records; counted once all are acknowledged."""
        assert self._producer is not None
        async with self._lock:
            pending = []
            counted: Counter[str] = Counter()
            for tenant, key, request in items:
                headers = [(TENANT_HEADER, tenant.encode())] if tenant else []
                counted[tenant] += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                value = request.SerializeToString()
                pending.append(await self._producer.send(self.topic, value, key=key, headers=headers))
            await asyncio.gather(*pending)
            self.spans.update(counted)
            self.records += len(pending)

    def run(self, rate: float, batch: int = 2) -> None:
        """Produce ``rate`` traces per second per tenant in the background."""

        async def loop() -> None:
            interval = batch / rate
            while not self._stop.is_set():
                await self._open.wait()
                started = time.monotonic()
                await self.send(batch)
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

        self._task = asyncio.create_task(loop())

    async def hold(self) -> None:
        """Stop producing and wait until nothing is in flight."""
        self._open.clear()
        async with self._lock:
            pass

    def release(self) -> None:
        self._open.set()

    async def stop(self) -> None:
        self._stop.set()
        self._open.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    def expected(self) -> dict[tuple[str, str], int]:
        """(metric, tenant) -> what the output must show: calls and duration counts = spans."""
        result = {("calls", t): self.spans[t] for t in self.tenants}
        result.update({("duration", t): self.spans[t] for t in self.tenants})
        return result

    def expected_service_graph_requests(self) -> dict[tuple[str, str], int]:
        """The request total a service-graph processor computes from exactly these traces."""
        from worker.processors.servicegraphs.processor import ServiceGraphsProcessor

        result: dict[tuple[str, str], int] = {}
        for tenant in self.tenants:
            processor = ServiceGraphsProcessor(ServiceGraphsConfig(enabled=True))
            for owner, request in self.requests:
                if owner == tenant:
                    processor.consume(request, tenant)
            processor.expire_all()
            total = 0
            for deltas in processor.take_deltas().values():
                total += sum(s.count for s in deltas.series if s.metric == SERVICE_GRAPH_REQUESTS)
            result[(SERVICE_GRAPH_REQUESTS, tenant)] = total
        return result


def distinct_series_request(
    service: str, names: Iterable[str], now_ns: int, rng: random.Random
) -> tuple[bytes, ExportTraceServiceRequest]:
    """(key, request): one server span per name, each name a new series (a cardinality storm)."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attribute = resource_spans.resource.attributes.add()
    attribute.key = "service.name"
    attribute.value.string_value = service
    scope_spans = resource_spans.scope_spans.add()
    trace_id = rng.randbytes(15) + b"\x01"
    for name in names:
        span = scope_spans.spans.add()
        span.trace_id = trace_id
        span.span_id = rng.randbytes(7) + b"\x01"
        span.name = name
        span.kind = Span.SpanKind.SPAN_KIND_SERVER
        span.start_time_unix_nano = now_ns - 5_000_000
        span.end_time_unix_nano = now_ns
    return trace_id, request


# ----------------------------------------------------------------------------------- output


@dataclass(frozen=True, slots=True)
class Point:
    time_ns: int
    value: int
    worker: str
    created_ms: int


SeriesKey = tuple[str, str, tuple[tuple[str, object], ...]]


class Output:
    """Every data point of the output topic, read from the beginning by a background task."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.series: dict[SeriesKey, list[Point]] = {}
        #: (record CreateTime ms, emitting worker) of every output record.
        self.records: list[tuple[int, str]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Output:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            request_timeout_ms=60000,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=300)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker may be frozen by a scenario; keep reading afterwards
                await asyncio.sleep(0.5)
                continue
            for records in batch.values():
                for record in records:
                    self._observe(record.value, record.headers, record.timestamp)

    def _observe(self, value: bytes, headers: Iterable[tuple[str, bytes]], created_ms: int) -> None:
        headers = list(headers)
        tenant = next((v.decode() for k, v in headers if k == TENANT_HEADER), "")
        emitter = next((v.decode() for k, v in headers if k == WORKER_HEADER), "")
        self.records.append((created_ms, emitter))
        request = ExportMetricsServiceRequest.FromString(value)
        for rm in request.resource_metrics:
            resource = tuple(
                sorted((kv.key, str(any_value_to_python(kv.value))) for kv in rm.resource.attributes)
            )
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind == "sum":
                        points = [(p, p.as_int) for p in metric.sum.data_points]
                    elif kind == "histogram":
                        points = [(p, p.count) for p in metric.histogram.data_points]
                    elif kind == "exponential_histogram":
                        points = [(p, p.count) for p in metric.exponential_histogram.data_points]
                    else:
                        continue
                    for point, number in points:
                        attrs = tuple(
                            sorted((kv.key, str(any_value_to_python(kv.value))) for kv in point.attributes)
                        )
                        key = (tenant, metric.name, (*resource, *attrs))
                        self.series.setdefault(key, []).append(
                            Point(point.time_unix_nano, int(number), emitter, created_ms)
                        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    # -- what it says

    def totals(self, metrics: Iterable[str] = ("calls", "duration")) -> dict[tuple[str, str], int]:
        """(metric, tenant) -> sum over series of the value at the latest time stamp."""
        wanted = set(metrics)
        result: Counter[tuple[str, str]] = Counter()
        for (tenant, metric, _), points in self.series.items():
            if metric in wanted:
                result[(metric, tenant)] += max(points, key=lambda p: (p.time_ns, p.value)).value
        return dict(result)

    def backwards(self) -> list[tuple[SeriesKey, Point, Point]]:
        """Series whose value went down from one time stamp to a later one (cumulative broken)."""
        problems = []
        for key, points in self.series.items():
            ordered = sorted(points, key=lambda p: p.time_ns)
            for earlier, later in itertools.pairwise(ordered):
                if later.time_ns > earlier.time_ns and later.value < earlier.value:
                    problems.append((key, earlier, later))
        return problems

    def duplicates(self) -> list[tuple[SeriesKey, int]]:
        """A series reported twice for the same time stamp with different values (two writers)."""
        problems = []
        for key, points in self.series.items():
            by_time: dict[int, set[int]] = {}
            for point in points:
                by_time.setdefault(point.time_ns, set()).add(point.value)
            problems.extend((key, t) for t, values in by_time.items() if len(values) > 1)
        return problems

    async def wait_for(
        self,
        expected: Mapping[tuple[str, str], int],
        timeout: float,
        *,
        metrics: Iterable[str] = ("calls", "duration"),
    ) -> float:
        """Seconds until the totals equal ``expected`` (raises AssertionError on timeout)."""
        started = time.monotonic()
        expected = {k: v for k, v in expected.items() if v}
        while True:
            current = self.totals(metrics)
            if {k: v for k, v in current.items() if v} == expected:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"totals after {timeout:.0f} s: {current}, expected {expected}")
            await asyncio.sleep(0.25)


async def stop_traffic_and_wait(
    traffic: Traffic, output: Output, *, timeout: float, metrics: tuple[str, ...] = COUNTED_METRICS
) -> tuple[dict[tuple[str, str], int], float]:
    """Stop the traffic, then wait until the output shows all it produced: (expected totals,
    seconds waited). Raises AssertionError when the totals do not get there in ``timeout``."""
    await traffic.stop()
    expected = traffic.expected()
    if SERVICE_GRAPH_REQUESTS in metrics:
        expected.update(traffic.expected_service_graph_requests())
    return expected, await output.wait_for(expected, timeout=timeout, metrics=metrics)


# ----------------------------------------------------------------------------------- workers


class WorkerProcess:
    """One ``python -m worker run`` process with its own JSON log file."""

    def __init__(self, config: Path, log_dir: Path, name: str, *, http_port: int | None = None) -> None:
        self.config = config
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.http_port = http_port
        self.process: subprocess.Popen[bytes] | None = None
        self._worker_id: str | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.http_port is not None:
            env["SPANMETRICS_HTTP__PORT"] = str(self.http_port)
            env["SPANMETRICS_HTTP__ENABLED"] = "true"
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (after SIGCONT, in case it is frozen); SIGKILL if it does not exit in time."""
        if self.process is None:
            return None
        if self.alive:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    async def terminate(self, timeout: float, *, repeat: float | None = None) -> tuple[float, int | None]:
        """SIGTERM only (no SIGCONT), again every ``repeat`` seconds if given (an impatient
        supervisor): (seconds until the process exited, exit code; None when it was still running
        after ``timeout`` and had to be killed)."""
        assert self.process is not None
        process = self.process
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        waiting = loop.run_in_executor(None, process.wait, timeout)
        while repeat is not None and not waiting.done():
            await asyncio.sleep(repeat)
            self.signal(signal.SIGTERM)
        try:
            code: int | None = await waiting
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - started
        if code is None:
            self.kill()
        return seconds, code

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (other lines, such as a crash's traceback, are skipped)."""
        events = []
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    @property
    def worker_id(self) -> str | None:
        if self._worker_id is None:
            for event in self.events():
                if event.get("event") == "worker started":
                    self._worker_id = str(event.get("worker"))
                    break
        return self._worker_id

    def assigned(self) -> list[int]:
        """The partitions of the last assignment this worker logged (eager rebalancing)."""
        current: list[int] = []
        for event in self.events():
            if event.get("event") == "partitions assigned":
                current = list(event.get("partitions") or [])
            elif event.get("event") == "partitions revoked":
                current = []
        return current

    async def wait_until(
        self, predicate: Callable[[WorkerProcess], bool], timeout: float, what: str
    ) -> float:
        started = time.monotonic()
        while not predicate(self):
            if not self.alive:
                raise AssertionError(
                    f"{self.name} exited while waiting for {what}:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def ready(self) -> int:
        """HTTP status of /readyz (0 when it does not answer)."""
        if self.http_port is None:
            raise ValueError("started without an HTTP port")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"http://127.0.0.1:{self.http_port}/readyz") as response,
            ):
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0


def problems_in_logs(workers: Iterable[WorkerProcess]) -> list[str]:
    """Error lines that mean a bug rather than an expected fault reaction."""
    found = []
    for worker in workers:
        text = worker.log_text()
        for line in text.splitlines():
            if "Traceback" in line and not line.startswith("{"):
                found.append(f"{worker.name}: {line}")
            elif '"level": "error"' in line and "rebalance listener" in line:
                found.append(f"{worker.name}: {line[:500]}")
    return found


def assert_clean_run(
    output: Output, workers: Iterable[WorkerProcess], exit_codes: Iterable[int | None]
) -> None:
    """What every fault scenario ends on besides its exact totals: no counter went backwards or
    was emitted twice, no worker logged a bug, every worker exited with 0."""
    backwards = output.backwards()
    assert not backwards, f"counters went backwards: {backwards[:5]}"
    duplicates = output.duplicates()
    assert not duplicates, f"points emitted twice: {duplicates[:5]}"
    problems = problems_in_logs(workers)
    assert not problems, "\n".join(problems[:20])
    codes = list(exit_codes)
    assert all(code == 0 for code in codes), f"exit codes: {codes}"


async def stop_all(workers: Iterable[WorkerProcess], timeout: float = 30.0) -> dict[str, int | None]:
    """SIGTERM every live worker at once and wait for each; name -> exit code."""
    workers = list(workers)
    for worker in workers:
        if worker.alive:
            worker.signal(signal.SIGCONT)
            worker.signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    codes = await asyncio.gather(*(loop.run_in_executor(None, w.stop, timeout) for w in workers))
    return {w.name: code for w, code in zip(workers, codes, strict=True)}


# ----------------------------------------------------------------------------------- redis


async def fence_tokens(redis_url: str, prefix: str, topic: str) -> dict[int, int]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.hgetall(KeySpace(prefix, topic).fence)
    finally:
        await client.aclose()
    return {int(k): int(v) for k, v in raw.items()}


async def wait_for_tokens_to_change(
    redis_url: str,
    prefix: str,
    topic: str,
    before: Mapping[int, int],
    partitions: Iterable[int],
    timeout: float,
) -> float:
    """Seconds until every one of ``partitions`` has a new fencing token (another owner claimed it)."""
    started = time.monotonic()
    wanted = list(partitions)
    while True:
        now = await fence_tokens(redis_url, prefix, topic)
        if all(now.get(p, 0) > before.get(p, 0) for p in wanted):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"partitions {wanted} not claimed again within {timeout} s: {before} -> {now}"
            )
        await asyncio.sleep(0.1)


async def wait_for_redis_keys(redis_url: str, pattern: str, timeout: float = 30.0) -> None:
    """Until some key matches (the workers have flushed at least once)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async for _ in client.scan_iter(match=pattern, count=1000):
                return
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()
    raise AssertionError(f"no key matching {pattern!r} after {timeout} s")
