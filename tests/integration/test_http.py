"""The HTTP side port of a real worker: /healthz, /readyz and /metrics against a real broker and Redis."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from devtools.servers import create_topics
from worker.config import HttpConfig, Settings
from worker.observability.http import HttpServer
from worker.observability.selfmetrics import WorkerMetrics
from worker.service import run_worker
from worker.stream.worker import StreamWorker

from .helpers import make_settings, produce, span_count, traces


def closed_port() -> int:
    """A local port nothing listens on (bound once to pick it, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_settings(kafka: str, redis: str, name: str) -> Settings:
    settings = make_settings(kafka, redis, name)
    return settings.model_copy(update={"http": HttpConfig(enabled=True, host="127.0.0.1", port=0)})


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def eventually(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_probes_and_metrics_of_a_running_worker(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    settings = http_settings(kafka_bootstrap, redis_url, unique_name)
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 2, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    batch = traces(25)
    expected_spans = span_count(request for _, request in batch)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])

    registry = CollectorRegistry()
    worker = StreamWorker(settings, worker_id="http", metrics=WorkerMetrics(registry))
    server = HttpServer(worker, host=settings.http.host, port=settings.http.port, registry=registry)
    # A second port on the same worker whose readiness pings a Redis that is not there.
    unreachable = Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=0.3)
    broken = HttpServer(worker, host="127.0.0.1", port=0, redis=unreachable)

    async with aiohttp.ClientSession() as http:
        # Before the worker joins its group: alive, Redis answers, but not ready.
        async with HttpServer(worker, host="127.0.0.1", port=0) as early:
            assert early.port not in (None, 0)
            status, _, body = await get(http, f"{early.url}/healthz")
            assert status == 200, body
            status, _, body = await get(http, f"{early.url}/readyz")
            assert status == 503, body
            assert '"assigned": false' in body and '"redis": "ok"' in body

        task = asyncio.create_task(run_worker(worker, server))
        try:
            await eventually(lambda: server.port is not None or task.done(), 30, "the http port")
            assert server.port not in (None, 0) and server.port != settings.http.port
            base = server.url

            async def ready() -> bool:
                return (await get(http, f"{base}/readyz"))[0] == 200

            await eventually(ready, 60, "/readyz 200 once partitions are assigned")
            status, _, body = await get(http, f"{base}/healthz")
            assert status == 200, body

            async def caught_up() -> bool:
                _, _, text = await get(http, f"{base}/metrics")
                values = samples(text)
                lags = [values.get(("spanmetrics_consumer_lag_records", (("partition", p),))) for p in "01"]
                processed = values.get(("spanmetrics_spans_processed_total", ()))
                # Active series are counted when the slot owners fold them in, during emission;
                # the gauge follows at the end of that flush.
                active = values.get(("spanmetrics_active_series", (("tenant", "single-tenant"),)), 0)
                return processed == expected_spans and lags == [0.0, 0.0] and active > 0

            await eventually(caught_up, 60, "all spans processed, zero lag and active series on /metrics")
            status, content_type, text = await get(http, f"{base}/metrics")
            assert status == 200
            assert content_type.startswith("text/plain")
            values = samples(text)
            assert values[("spanmetrics_spans_processed_total", ())] == expected_spans
            assert values[("spanmetrics_records_consumed_total", ())] == len(batch)
            assert values[("spanmetrics_assigned_partitions", ())] == 2
            assert values[("spanmetrics_dlq_records_total", ())] == 0
            assert values[("spanmetrics_flush_duration_seconds_count", ())] >= 1
            assert values[("spanmetrics_redis_step_duration_seconds_count", ())] >= 1
            assert values[("spanmetrics_records_emitted_total", ())] >= 1
            assert values[("spanmetrics_active_series", (("tenant", "single-tenant"),))] > 0
            assert "# TYPE spanmetrics_consumer_lag_records gauge" in text

            # Redis unreachable for the readiness check: 503, while liveness stays 200.
            async with broken:
                status, _, body = await get(http, f"{broken.url}/readyz")
                assert status == 503, body
                assert '"assigned": true' in body and "ConnectionError" in body
                status, _, body = await get(http, f"{broken.url}/healthz")
                assert status == 200, body
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, timeout=30)
            await unreachable.aclose()

        # run_worker closed the port with the worker.
        try:
            await get(http, f"{base}/healthz")
        except aiohttp.ClientConnectionError:
            pass
        else:
            raise AssertionError("the http port is still open after the worker stopped")


async def test_healthz_reports_a_stalled_loop() -> None:
    worker = StreamWorker(Settings(), worker_id="stalled")
    try:
        async with HttpServer(worker, host="127.0.0.1", port=0, stall_after=0.05) as server:
            worker.last_tick = time.monotonic() - 1.0
            async with aiohttp.ClientSession() as http:
                status, _, body = await get(http, f"{server.url}/healthz")
                assert status == 503 and '"status": "stalled"' in body
                worker.last_tick = time.monotonic()
                status, _, _ = await get(http, f"{server.url}/healthz")
                assert status == 200
    finally:
        await worker.close(0.1)
