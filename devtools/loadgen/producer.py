"""``spanmetrics loadgen``: traces from the traffic model to a topic, one record per trace, steadily paced."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from devtools.loadgen.model import TraceGenerator, build_model
from worker.model.errors import SpanmetricsError

__all__ = ["TENANT_HEADER", "LoadgenStats", "TokenBucket", "loadgen_command", "run_loadgen"]

#: The header Mimir, Tempo and the worker read the tenant from.
TENANT_HEADER = "X-Scope-OrgID"

#: Traces produced back to back when rate=0, before yielding to the event loop.
_UNPACED_CHUNK = 64


@dataclass(slots=True)
class LoadgenStats:
    """Running totals, for the progress line and the return value."""

    started: float
    traces: int = 0
    spans: int = 0
    bytes: int = 0

    def line(self, now: float) -> str:
        """A one-line summary: totals and the mean rate since the start."""
        elapsed = max(now - self.started, 1e-9)
        return (
            f"loadgen: {self.traces} traces, {self.spans} spans, {self.bytes / 1e6:.1f} MB in {elapsed:.0f}s "
            f"({self.traces / elapsed:.1f} traces/s, {self.spans / elapsed:.0f} spans/s)"
        )


class TokenBucket:
    """Tokens accrue at ``rate`` per second up to ``burst``; :meth:`take` returns what is available.

    Pure arithmetic over a caller-supplied clock, so pacing can be reasoned about (and tested)
    without sleeping.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = 1.0  # the first trace goes out at once
        self._last = now

    def take(self, now: float, limit: int) -> int:
        """Take up to *limit* whole tokens; return how many were taken (possibly 0)."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        taken = min(int(self._tokens), limit)
        self._tokens -= taken
        return taken

    def wait_time(self) -> float:
        """Seconds until the next whole token, as of the last :meth:`take`."""
        return max(0.0, (1.0 - self._tokens) / self.rate)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep *seconds*, returning early when *stop* is set."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def _stderr_report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_loadgen(
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float = 100.0,
    traces: int = 0,
    services: int = 6,
    seed: int = 1,
    tenant: str | None = None,
    stop: asyncio.Event | None = None,
    error_rate: float = 0.02,
    max_in_flight: int = 1000,
    progress_interval: float = 5.0,
    report: Callable[[str], None] | None = None,
) -> int:
    """Produce traces until *traces* are sent (0: forever) or *stop* is set; return spans produced.

    *rate* is traces per second (0: as fast as the broker accepts them). *report* receives the
    progress line every *progress_interval* seconds and once at the end (default: print to stderr).
    Every record handed to the producer is awaited before returning, so the count is of delivered
    spans; a delivery error is raised.
    """
    if rate < 0:
        raise ValueError("rate must not be negative")
    if traces < 0:
        raise ValueError("traces must not be negative")
    stop = stop if stop is not None else asyncio.Event()
    emit = report if report is not None else _stderr_report
    generator = TraceGenerator(build_model(services=services, error_rate=error_rate, seed=seed))
    headers = [(TENANT_HEADER, tenant.encode("utf-8"))] if tenant else None

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id="spanmetrics-loadgen",
        acks=1,
        linger_ms=5,
        max_request_size=16 * 1024 * 1024,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # aiokafka leaves a half-started client open otherwise
        raise
    loop = asyncio.get_running_loop()
    stats = LoadgenStats(started=loop.time())
    pending: deque[asyncio.Future[object]] = deque()
    # Burst: a tenth of a second's worth, so pacing stays smooth at any rate.
    bucket = TokenBucket(rate, rate / 10.0, loop.time()) if rate > 0 else None
    next_report = stats.started + progress_interval
    try:
        while not stop.is_set() and (traces == 0 or stats.traces < traces):
            remaining = traces - stats.traces if traces else _UNPACED_CHUNK
            if bucket is None:
                batch = min(remaining, _UNPACED_CHUNK)
            else:
                batch = bucket.take(loop.time(), remaining)
                if batch == 0:
                    await _sleep_or_stop(stop, bucket.wait_time())
                    continue
            now_ns = time.time_ns()
            for _ in range(batch):
                key, request = generator.trace_request(now_ns)
                value = request.SerializeToString()
                pending.append(await producer.send(topic, value=value, key=key, headers=headers))
                stats.traces += 1
                stats.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                stats.bytes += len(value)
                while len(pending) > max_in_flight:
                    await pending.popleft()
            if bucket is None:
                await asyncio.sleep(0)
            if loop.time() >= next_report:
                emit(stats.line(loop.time()))
                next_report = loop.time() + progress_interval
        while pending:
            await pending.popleft()
    finally:
        for future in pending:
            future.cancel()
        await producer.stop()
    emit(stats.line(loop.time()))
    return stats.spans


def loadgen_command(
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float,
    traces: int,
    services: int,
    seed: int,
    tenant: str | None,
    error_rate: float = 0.02,
) -> int:
    """Run :func:`run_loadgen` until done or until SIGINT/SIGTERM; return spans produced.

    The CLI's entry point: a signal stops the loop gently (every record already handed to the
    producer is still delivered). Kafka failures become one :class:`SpanmetricsError` line.
    """

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await run_loadgen(
                bootstrap_servers,
                topic,
                rate=rate,
                traces=traces,
                services=services,
                seed=seed,
                tenant=tenant,
                stop=stop,
                error_rate=error_rate,
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except KafkaError as exc:
        raise SpanmetricsError(f"Kafka at {bootstrap_servers}: {exc}") from exc
