"""``spanmetrics run``: one worker process with signal handling, the HTTP side port and a bounded shutdown."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import threading
from typing import Any

import structlog
from aiokafka.errors import KafkaConnectionError
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from redis.exceptions import RedisError

from worker.config import Settings
from worker.model.errors import SpanmetricsError
from worker.observability.http import HttpServer
from worker.observability.logs import configure_logging, redact_url
from worker.observability.selfmetrics import WorkerMetrics
from worker.runtime import tune_garbage_collector
from worker.stream.worker import StreamWorker

__all__ = ["effective_configuration", "log_configuration", "make_registry", "run_service", "run_worker"]


def make_registry() -> CollectorRegistry:
    """The process's registry: the worker's ``spanmetrics_*`` plus the standard process_/python_ ones."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


async def run_service(settings: Settings) -> None:
    """Start a worker and its HTTP port, run until SIGTERM/SIGINT, then let it flush, commit and leave."""
    configure_logging(settings.log)
    log = structlog.get_logger("spanmetrics")
    log_configuration(log, settings)
    # No *_created series next to every histogram: the process start time is already exported.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = make_registry()
    worker = StreamWorker(settings, metrics=WorkerMetrics(registry))
    server = None
    if settings.http.enabled:
        server = HttpServer(worker, host=settings.http.host, port=settings.http.port, registry=registry)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    watchdog = _Watchdog(settings.worker.shutdown_grace, log)

    def stop() -> None:
        worker.request_stop()
        watchdog.arm()

    for sig in signals:
        loop.add_signal_handler(sig, stop)
    tune_garbage_collector()  # the process is this worker's alone (not in run_worker: tests embed it)
    try:
        await run_worker(worker, server)
    finally:
        watchdog.cancel()
        # Stopping already: a repeated SIGTERM while the process exits must not kill it with the
        # default disposition (exit status -15 instead of 0). Removing asyncio's handler restores
        # that disposition, so the signals are blocked until they are ignored (a signal pending
        # meanwhile is discarded by SIG_IGN).
        armed = watchdog.armed
        if armed:
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            for sig in signals:
                loop.remove_signal_handler(sig)
                if armed:
                    signal.signal(sig, signal.SIG_IGN)
        finally:
            if armed:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


class _Watchdog:
    """The last resort: if the bounded shutdown still runs at the grace, exit at once (code 1)
    rather than be SIGKILLed; nothing is lost that a SIGKILL would not lose (Redis holds it)."""

    def __init__(self, grace: float, log: Any) -> None:
        self.grace = grace
        self.log = log
        self.timer: threading.Timer | None = None

    def arm(self) -> None:
        if self.timer is None:
            self.timer = threading.Timer(self.grace, self._fire)
            self.timer.daemon = True
            self.timer.start()

    @property
    def armed(self) -> bool:
        return self.timer is not None

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _fire(self) -> None:
        self.log.error("shutdown grace exceeded; exiting now", grace_seconds=self.grace)
        os._exit(1)


async def run_worker(worker: StreamWorker, server: HttpServer | None) -> None:
    """Serve ``server`` (if any) for the life of ``worker``: open before it connects, closed after it left."""
    if server is not None:
        try:
            await server.start()
        except OSError as exc:
            await worker.close()
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or exc
            raise SpanmetricsError(
                f"cannot start: http port {server.host}:{server.requested_port}: {reason} (set by "
                "http.port or env SPANMETRICS_HTTP__PORT; http.enabled: false turns the port off)"
            ) from None
    try:
        try:
            await worker.start()
        except (KafkaConnectionError, RedisError, OSError, SpanmetricsError) as exc:
            await worker.close()
            raise SpanmetricsError(f"cannot start: {exc}") from None
        await worker.run()
    finally:
        if server is not None:
            await server.stop()


def effective_configuration(settings: Settings) -> dict[str, Any]:
    """Every section of the effective configuration, secrets masked (URLs: only their password)."""
    dumped: dict[str, Any] = settings.model_dump(mode="json")
    dumped["redis"]["url"] = redact_url(settings.redis.url.get_secret_value())
    if settings.remote_write is not None:  # its headers are SecretStr: dumped masked
        dumped["remote_write"]["url"] = redact_url(settings.remote_write.url)
    return dumped


def log_configuration(log: Any, settings: Settings) -> None:
    """The start-up line with the effective configuration, then one warning per value accepted with
    no effect (found at config load, :attr:`Settings.warnings`)."""
    log.info("configuration", **effective_configuration(settings))
    for option, why, value in settings.warnings:
        log.warning("configuration value ignored", option=option, value=value, reason=why)
