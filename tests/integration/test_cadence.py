"""Emission keeps its fixed rate while a backlog is consumed through merge-only flushes (issue 18)."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from devtools.servers import create_topics
from worker.config import Settings
from worker.sinks.base import Delivery, Sink

from .helpers import RunningWorker, make_settings, produce, span_count, traces

INTERVAL_S = 1.0
#: Added to every request to Redis: each Redis step takes this long, as on a remote, busy Redis,
#: so merge-only flushes fill most of the time while the backlog is merged.
REDIS_DELAY_S = 0.04


class SlowProxy:
    """127.0.0.1:``port`` -> ``target``, every chunk towards the server delayed (the real server
    behind it: a slower network, no mock)."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.target = (host, port)
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> SlowProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, self.delay)),
            asyncio.create_task(self._pump(up_reader, writer, 0.0)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while chunk := await reader.read(1 << 16):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def _emission_times(kafka: str, topic: str, expected: int, timeout: float) -> tuple[list[float], int]:
    """The distinct emission times (s) of the output topic's calls points (zero points left out),
    read until the latest calls values add up to ``expected``; and that total."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest")
    await consumer.start()
    times: set[int] = set()
    latest: dict[bytes, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sum(v for _, v in latest.values()) < expected:
            batch = await consumer.getmany(timeout_ms=500)
            for record in itertools.chain.from_iterable(batch.values()):
                request = ExportMetricsServiceRequest.FromString(record.value or b"")
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            if metric.name != "calls":
                                continue
                            for point in metric.sum.data_points:
                                if point.as_int == 0:
                                    continue  # a zero point, at its pinned time
                                times.add(point.time_unix_nano)
                                key = rm.resource.SerializeToString() + b"".join(
                                    kv.SerializeToString() for kv in point.attributes
                                )
                                if key not in latest or latest[key][0] <= point.time_unix_nano:
                                    latest[key] = (point.time_unix_nano, point.as_int)
    finally:
        await consumer.stop()
    return sorted(t / 1e9 for t in times), sum(v for _, v in latest.values())


async def test_emission_stays_on_the_interval_while_a_backlog_is_merged(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    url = urlsplit(redis_url)
    assert url.hostname is not None and url.port is not None
    proxy = SlowProxy(url.hostname, url.port, REDIS_DELAY_S)
    await proxy.__aenter__()
    slow_url = url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    try:
        await _run(kafka_bootstrap, slow_url, unique_name)
    finally:
        await proxy.__aexit__()


async def _run(kafka_bootstrap: str, redis_url: str, unique_name: str) -> None:
    base = make_settings(kafka_bootstrap, redis_url, unique_name)
    # A span buffer of 1,000 spans and fetches of 100 records: a merge-only flush after every
    # fetch or two while the backlog lasts, the case where emissions used to be pushed back.
    settings = Settings.model_validate(
        {
            **base.model_dump(mode="python"),
            "kafka": {**base.kafka.model_dump(mode="python"), "max_poll_records": 100},
            "worker": {**base.worker.model_dump(mode="python"), "max_buffered_spans": 1000},
        }
    )
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 2, f"{unique_name}-out": 2, f"{unique_name}-dlq": 1}
    )
    batch = traces(6_000)
    expected = span_count(request for _, request in batch)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])

    async with RunningWorker(settings) as running:
        times, total = await _emission_times(kafka_bootstrap, f"{unique_name}-out", expected, timeout=120)
        await asyncio.sleep(0)
        stats = running.worker.stats
        merge_only = stats.flushes - len(times)

    assert total == expected
    # Emissions while the backlog was merged: one per interval, at a fixed rate (the gaps
    # between emission starts stay near the interval; a skipped one would be a gap of two).
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 3, times
    assert merge_only >= 2 * len(times), (stats.flushes, len(times))  # merge-only flushes ran
    assert max(gaps) < 1.75 * INTERVAL_S, gaps
    assert stats.emissions_skipped == 0


class GatedSink:
    """The worker's own sink, each publication held until the test opens the gate."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def publish(self, *args: Any, **kwargs: Any) -> Delivery:
        self.waiting.set()
        await self.gate.wait()
        return await self.sink.publish(*args, **kwargs)


async def test_consumption_goes_on_while_an_emission_runs(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, unique_name)
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 2, f"{unique_name}-out": 2, f"{unique_name}-dlq": 1}
    )
    first, second = traces(300), traces(500)
    expected = span_count(request for _, request in first + second)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in first])

    async with RunningWorker(settings) as running:
        worker = running.worker
        assert worker.emission is not None
        gated = GatedSink(worker.emission.slots.sinks[0])
        worker.emission.slots.sinks[0] = gated
        await asyncio.wait_for(gated.waiting.wait(), timeout=30)  # an emission is under way
        assert worker.emitting()
        # Held in its publication for longer than an interval: the loop keeps consuming.
        await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in second])
        deadline = time.monotonic() + 30
        consumed = worker.stats.spans
        while consumed < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            consumed = worker.stats.spans
        assert consumed == expected
        assert worker.emitting()
        await asyncio.sleep(1.5 * INTERVAL_S)
        gated.gate.set()
        _, total = await _emission_times(kafka_bootstrap, f"{unique_name}-out", expected, timeout=60)
        stats = worker.stats

    assert total == expected  # everything consumed meanwhile was counted, once
    assert stats.emissions_late >= 1  # the emission due while the first one was held began late
