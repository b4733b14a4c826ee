"""Remote write into a REAL Prometheus (``--web.enable-remote-write-receiver``), read back through its
HTTP API, and the protocol details (headers, tenants, retries) against a real HTTP server.

The Prometheus binary comes from Debian's ``prometheus`` package (``.ci/run`` installs it); the
tests that need it are skipped, saying so, where it is not installed.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cramjam
import pytest
import pytest_asyncio
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from structlog.testing import capture_logs

from devtools.servers import create_topics
from worker.config import RemoteWriteConfig, Settings
from worker.model.series import Series
from worker.model.values import any_value_to_python, stringify_python
from worker.observability.stats import RemoteWriteStats
from worker.processors.pipeline import Pipeline
from worker.sinks.prometheus_translate import normalize_label
from worker.sinks.prompb.remote_write_pb2 import WriteRequest
from worker.sinks.remote_write import RemoteWriteSink

from .helpers import RunningWorker, make_settings, produce, span_count, traces

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="no prometheus binary (Debian: apt-get install -y prometheus; .ci/run installs it)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus receiving remote write on a free port, with a fresh storage directory."""
    assert PROMETHEUS is not None
    directory = tmp_path_factory.mktemp("prometheus")
    config = directory / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\n", encoding="utf-8")
    port = _free_port()
    with (directory / "prometheus.log").open("wb") as log_file:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-remote-write-receiver",
                "--enable-feature=native-histograms,exemplar-storage",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = (directory / "prometheus.log").read_text(errors="replace")
                raise RuntimeError(f"prometheus did not start: {log[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _query(prometheus: str, query: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prometheus}/api/v1/query", params={"query": query}) as response,
    ):
        body = await response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def _scalar(prometheus: str, query: str) -> float | None:
    result = await _query(prometheus, query)
    return float(result[0]["value"][1]) if result else None


async def _wait_for(prometheus: str, query: str, expected: float, timeout: float = 60) -> float | None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await _scalar(prometheus, query)
        if value == expected:
            return value
        await asyncio.sleep(0.5)
    return value


async def _wait_for_positive(prometheus: str, query: str, timeout: float = 30) -> float:
    """The query's value once it is above 0 and the same twice in a row (a flush apart)."""
    previous = None
    for _ in range(int(timeout / 1.2)):
        value = await _scalar(prometheus, query)
        if value and value == previous:
            return value
        previous = value
        await asyncio.sleep(1.2)
    return previous or 0.0


async def _output_calls(kafka: str, topic: str) -> dict[frozenset[tuple[str, str]], float]:
    """The latest value of every ``calls`` series on the Kafka output, as the Prometheus labels
    the exporter gives it (job, instance, otel_scope_name, sanitised point attributes)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka, auto_offset_reset="earliest", enable_auto_commit=False
    )
    latest: dict[frozenset[tuple[str, str]], tuple[int, float]] = {}
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=1500)
            if not batch:
                break
            for records in batch.values():
                for record in records:
                    request = ExportMetricsServiceRequest.FromString(record.value)
                    for rm in request.resource_metrics:
                        resource = {
                            kv.key: stringify_python(any_value_to_python(kv.value))
                            for kv in rm.resource.attributes
                        }
                        identity = {
                            "job": f"{resource['service.namespace']}/{resource['service.name']}",
                            "instance": resource["service.instance.id"],
                        }
                        for sm in rm.scope_metrics:
                            for metric in sm.metrics:
                                if metric.name != "calls":
                                    continue
                                for point in metric.sum.data_points:
                                    labels = {
                                        normalize_label(kv.key): stringify_python(
                                            any_value_to_python(kv.value)
                                        )
                                        for kv in point.attributes
                                    }
                                    labels.update(
                                        identity, __name__="calls_total", otel_scope_name=sm.scope.name
                                    )
                                    key = frozenset(labels.items())
                                    if key not in latest or point.time_unix_nano >= latest[key][0]:
                                        latest[key] = (point.time_unix_nano, float(point.as_int))
    finally:
        await consumer.stop()
    return {key: value for key, (_, value) in latest.items()}


async def _until(check: Callable[[], bool], timeout: float, step: float = 0.2) -> None:
    for _ in range(int(timeout / step)):
        if check():
            return
        await asyncio.sleep(step)


def _remote_settings(settings: Settings, url: str, **remote: object) -> Settings:
    return settings.model_copy(
        update={"remote_write": Settings(remote_write={"url": url, **remote}).remote_write}
    )


@needs_prometheus
async def test_connector_series_land_in_prometheus_exactly(
    kafka_bootstrap: str, redis_url: str, unique_name: str, prometheus: str
) -> None:
    settings = _remote_settings(
        make_settings(kafka_bootstrap, redis_url, unique_name, exemplars={"enabled": True}),
        f"{prometheus}/api/v1/write",
    )
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 2, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    batch = traces(40, seed=11, services=3)
    expected = span_count(request for _, request in batch)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])

    async with RunningWorker(settings) as running:
        total = await _wait_for(prometheus, "sum(calls_total)", expected)
        assert total == expected
        assert await _wait_for(prometheus, "sum(duration_milliseconds_count)", expected) == expected
        await asyncio.sleep(1.5)  # one more flush: the values must not move
        stats = running.worker.stats.remote_write
    assert await _scalar(prometheus, "sum(calls_total)") == expected
    assert stats.failed_samples == 0 and stats.dropped_samples == 0 and stats.samples > 0

    # Every calls series, label for label and value for value, as on the Kafka output.
    wanted = await _output_calls(kafka_bootstrap, f"{unique_name}-out")
    got = {
        frozenset(item["metric"].items()): float(item["value"][1])
        for item in await _query(prometheus, "calls_total")
    }
    assert got == wanted
    # le as Go formats it; the connector's default buckets in ms.
    les = {
        item["metric"]["le"]
        for item in await _query(prometheus, "count by (le) (duration_milliseconds_bucket)")
    }
    assert les == {
        "2",
        "4",
        "6",
        "8",
        "10",
        "50",
        "100",
        "200",
        "400",
        "800",
        "1000",
        "1400",
        "2000",
        "5000",
        "10000",
        "15000",
        "+Inf",
    }
    assert await _scalar(prometheus, 'sum(duration_milliseconds_bucket{le="+Inf"})') == expected
    # Resource attributes go to target_info only, with job and instance.
    info = await _query(prometheus, "target_info")
    assert info and all(
        {"job", "instance", "k8s_pod_name", "telemetry_sdk_language"} <= set(item["metric"]) for item in info
    )
    assert all("k8s_pod_name" not in labels for labels in (dict(key) for key in got))
    # Exemplars stored with their trace ids.
    now = time.time()
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{prometheus}/api/v1/query_exemplars",
            params={"query": "calls_total", "start": str(now - 600), "end": str(now + 60)},
        ) as response,
    ):
        exemplars = (await response.json())["data"]
    assert exemplars and all(
        len(e["labels"]["trace_id"]) == 32 for group in exemplars for e in group["exemplars"]
    )


@needs_prometheus
async def test_tempo_mode_with_native_histograms_and_kafka_output_off(
    kafka_bootstrap: str, redis_url: str, unique_name: str, prometheus: str
) -> None:
    base = make_settings(kafka_bootstrap, redis_url, unique_name)
    settings = Settings(
        kafka={**base.kafka.model_dump(), "output_topic": ""},
        redis=base.redis.model_dump(mode="json") | {"url": redis_url},
        worker=base.worker.model_dump(),
        http={"enabled": False},
        metrics_generator={
            "processors": ["span-metrics", "service-graphs"],
            "registry": {"collection_interval": "1s", "external_labels": {"cluster": unique_name}},
            "generate_native_histograms": "both",
        },
        remote_write={"url": f"{prometheus}/api/v1/write"},
    )
    await create_topics(kafka_bootstrap, {f"{unique_name}-in": 1, f"{unique_name}-dlq": 1})
    batch = traces(30, seed=5, services=3)
    expected = span_count(request for _, request in batch)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])
    selector = f'{{cluster="{unique_name}"}}'
    async with RunningWorker(settings):
        total = await _wait_for(prometheus, f"sum(traces_spanmetrics_calls_total{selector})", expected)
        assert total == expected
        assert (
            await _wait_for(prometheus, f"sum(traces_spanmetrics_latency_count{selector})", expected)
            == expected
        )
        assert (
            await _wait_for(
                prometheus, f"histogram_count(sum(traces_spanmetrics_latency{selector}))", expected
            )
            == expected
        )
        # Tempo's service graph, with its classic and native latency histograms.
        edges = await _wait_for_positive(prometheus, f"sum(traces_service_graph_request_total{selector})")
        assert edges > 0
        server = await _wait_for_positive(
            prometheus, f"sum(traces_service_graph_request_server_seconds_count{selector})"
        )
        assert server == edges
        native = await _wait_for_positive(
            prometheus, f"histogram_count(sum(traces_service_graph_request_server_seconds{selector}))"
        )
        assert native == edges
    series = await _query(prometheus, f"traces_spanmetrics_calls_total{selector}")
    for item in series:
        labels = item["metric"]
        assert {"service", "span_name", "span_kind", "status_code"} <= set(labels)
        assert "otel_scope_name" not in labels and "job" not in labels
    les = {
        item["metric"]["le"]
        for item in await _query(prometheus, f"count by (le) (traces_spanmetrics_latency_bucket{selector})")
    }
    assert {"0.002", "1.024", "16.384", "+Inf"} <= les
    # Kafka output off: nothing was written to a topic of that name.
    assert settings.kafka.output_topic == ""


# ---------------------------------------------------------------------------------- protocol


class _Receiver:
    """A real HTTP endpoint that records remote-write requests and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], WriteRequest]] = []
        self.statuses: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        decoded = WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        status = self.statuses.pop(0) if self.statuses else 204
        self.requests.append((dict(request.headers), decoded))
        return web.Response(status=status, text="" if status < 300 else f"scripted {status}")


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[_Receiver, str]]:
    recorder = _Receiver()
    app = web.Application()
    app.router.add_post("/api/v1/write", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield recorder, f"http://127.0.0.1:{port}/api/v1/write"
    finally:
        await runner.cleanup()


async def test_protocol_headers_tenants_and_retries(
    kafka_bootstrap: str, redis_url: str, unique_name: str, receiver: tuple[_Receiver, str]
) -> None:
    recorder, url = receiver
    recorder.statuses = [503, 429]  # the first two requests are retried, then accepted
    settings = _remote_settings(
        make_settings(kafka_bootstrap, redis_url, unique_name),
        url,
        headers={"Authorization": "Bearer t0ken"},
        min_backoff="10ms",
    )
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 1, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    acme, plain = traces(5, seed=1, services=2), traces(5, seed=2, services=2)
    await produce(
        kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in acme], tenant="acme"
    )
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in plain])
    expected = {"acme": span_count(r for _, r in acme), None: span_count(r for _, r in plain)}

    def totals() -> dict[str | None, float]:
        latest: dict[tuple[str | None, tuple[tuple[str, str], ...]], float] = {}
        for headers, request in recorder.requests:
            tenant = headers.get("X-Scope-OrgID")
            for ts in request.timeseries:
                labels = tuple((label.name, label.value) for label in ts.labels)
                if dict(labels).get("__name__") == "calls_total":
                    latest[(tenant, labels)] = ts.samples[-1].value
        result: dict[str | None, float] = {}
        for (tenant, _), value in latest.items():
            result[tenant] = result.get(tenant, 0) + value
        return result

    async with RunningWorker(settings) as running:
        await _until(lambda: totals() == expected, 60)
        stats = running.worker.stats.remote_write
        assert totals() == expected
        assert stats.retries >= 2
    for headers, request in recorder.requests:
        assert headers["Content-Encoding"] == "snappy"
        assert headers["Content-Type"] == "application/x-protobuf"
        assert headers["X-Prometheus-Remote-Write-Version"] == "0.1.0"
        assert headers["User-Agent"].startswith("spanmetrics-worker/")
        assert headers["Authorization"] == "Bearer t0ken"
        assert headers.get("X-Scope-OrgID") in (None, "acme")
        for ts in request.timeseries:
            names = [label.name for label in ts.labels]
            assert names == sorted(names) and len(set(names)) == len(names)
            assert all(label.value for label in ts.labels)


async def test_4xx_is_not_retried_and_counted(
    kafka_bootstrap: str, redis_url: str, unique_name: str, receiver: tuple[_Receiver, str]
) -> None:
    recorder, url = receiver
    recorder.statuses = [400] * 1000
    settings = _remote_settings(make_settings(kafka_bootstrap, redis_url, unique_name), url)
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 1, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    batch = traces(5, seed=3, services=2)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])
    with capture_logs() as logs:
        async with RunningWorker(settings) as running:
            stats = running.worker.stats.remote_write
            await _until(lambda: stats.failed_samples > 0 and len(recorder.requests) >= 3, 30)
    # One failure episode, one line, however many requests were refused.
    failing = [entry for entry in logs if entry["event"] == "remote write failing"]
    assert len(failing) == 1 and len(recorder.requests) >= 3
    assert failing[0]["status"] == 400 and "scripted 400" in failing[0]["error"]
    assert stats.retries == 0
    assert stats.requests == len(recorder.requests)
    assert stats.samples == 0
    assert stats.failed_samples + stats.dropped_samples > 0 and stats.pending_samples == 0


async def test_unreachable_endpoint_never_blocks_and_drops_are_counted(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    url = f"http://127.0.0.1:{_free_port()}/api/v1/write"  # nothing listens there
    settings = _remote_settings(
        make_settings(kafka_bootstrap, redis_url, unique_name),
        url,
        max_buffered_samples=50,
        max_samples_per_send=10,
        min_backoff="50ms",
        max_backoff="100ms",
    )
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 1, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    batch = traces(20, seed=4, services=2)
    expected = span_count(r for _, r in batch)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])
    with capture_logs() as logs:
        async with RunningWorker(settings) as running:
            worker = running.worker
            await _until(lambda: worker.stats.spans >= expected and worker.stats.flushes >= 3, 30)
            stats = worker.stats.remote_write
            # Consumption and flushes went on; the buffer stayed within its bound.
            assert worker.stats.spans == expected
            assert worker.stats.flushes >= 3
            assert stats.pending_samples <= 50
            assert stats.dropped_samples > 0
            assert stats.retries > 0
            assert stats.samples == 0
    # What was still buffered at shutdown is counted as dropped: nothing is unaccounted for.
    assert stats.pending_samples == 0
    # One failure episode: one line when it starts, one for the drops, however many attempts.
    events = [entry["event"] for entry in logs]
    assert events.count("remote write failing") == 1
    assert events.count("remote write buffer full; oldest samples dropped") == 1


@needs_prometheus
async def test_delta_output_still_writes_cumulative_series(
    kafka_bootstrap: str, redis_url: str, unique_name: str, prometheus: str
) -> None:
    """DELTA on Kafka; remote write adds the deltas up: two batches, one running total."""
    settings = _remote_settings(
        make_settings(
            kafka_bootstrap,
            redis_url,
            unique_name,
            aggregation_temporality="DELTA",
            dimensions=[{"name": "test.run", "default": unique_name}],
        ),
        f"{prometheus}/api/v1/write",
    )
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 2, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    first, second = traces(20, seed=21, services=3), traces(25, seed=22, services=3)
    expected_first = span_count(r for _, r in first)
    expected = expected_first + span_count(r for _, r in second)
    query = f'sum(calls_total{{test_run="{unique_name}"}})'
    async with RunningWorker(settings) as running:
        await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in first])
        assert await _wait_for(prometheus, query, expected_first) == expected_first
        await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in second])
        assert await _wait_for(prometheus, query, expected) == expected
        histogram = f'sum(duration_milliseconds_count{{test_run="{unique_name}"}})'
        assert await _wait_for(prometheus, histogram, expected) == expected
        await asyncio.sleep(2.5)  # more flushes without spans: the totals stay
        assert await _scalar(prometheus, query) == expected
        stats = running.worker.stats.remote_write
        assert stats.failed_samples == 0 and stats.dropped_samples == 0


async def test_a_tenant_that_cannot_be_a_header_fails_alone(receiver: tuple[_Receiver, str]) -> None:
    """A request that cannot be sent at all (the tenant holds a line break) is counted as failed
    and the sender goes on with the next one."""
    recorder, url = receiver
    stats = RemoteWriteStats()
    sink = RemoteWriteSink(
        RemoteWriteConfig(url=url),
        descriptors=Pipeline(Settings()).descriptors(),
        default_tenant="single-tenant",
        stats=stats,
    )
    now = time.time_ns()
    series = [Series("", "calls", "r", (("service.name", "a"),), now - 10**9, now, 4)]
    try:
        await sink.publish("bad\r\ntenant", {"r": (("service.name", "a"),)}, series, now)
        await sink.publish("acme", {"r": (("service.name", "a"),)}, series, now)
        assert await sink.drain(10)
    finally:
        await sink.close()
    assert stats.failed_samples == 1 and stats.samples == 1 and stats.dropped_samples == 0
    ((headers, request),) = recorder.requests
    assert headers["X-Scope-OrgID"] == "acme"
    assert request.timeseries[0].samples[0].value == 4.0
