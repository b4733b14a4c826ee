"""The HTTP side port in the worker's event loop: ``/metrics``, ``/healthz`` (the loop ticks) and ``/readyz``.

Ready: assignment done, every assigned partition owned in Redis, and Redis answers PING; liveness
never asks Kafka or Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from worker.config import Settings


class Pinger(Protocol):
    """A Redis client, as far as readiness asks it."""

    def ping(self) -> Any: ...  # awaitable (redis.asyncio types it as a union)


class HasRegistry(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class Probed(Protocol):
    """What the probes read from the worker."""

    @property
    def last_tick(self) -> float: ...

    @property
    def ready(self) -> bool: ...

    @property
    def tokens(self) -> Mapping[int, int]: ...

    @property
    def assigned(self) -> Collection[int]: ...

    @property
    def metrics(self) -> HasRegistry: ...

    @property
    def redis(self) -> Pinger: ...

    @property
    def settings(self) -> Settings: ...


__all__ = ["HasRegistry", "HttpServer", "Pinger", "Probed"]

log = structlog.get_logger("spanmetrics.http")

#: A readiness probe must answer well inside the kubelet's default 1 s probe timeout.
DEFAULT_PING_TIMEOUT_S = 0.5


class HttpServer:
    """aiohttp server for one worker; ``port=0`` binds a free port (read it from :attr:`port`)."""

    def __init__(
        self,
        worker: Probed,
        *,
        host: str = "0.0.0.0",
        port: int = 8080,
        registry: CollectorRegistry | None = None,
        redis: Pinger | None = None,
        ping_timeout: float = DEFAULT_PING_TIMEOUT_S,
        stall_after: float | None = None,
    ) -> None:
        self.worker = worker
        self.host = host
        self.requested_port = port
        self.registry = registry if registry is not None else worker.metrics.registry
        #: The Redis client readiness pings; the worker's own by default.
        self.redis = redis if redis is not None else worker.redis
        self.ping_timeout = ping_timeout
        self.stall_after = stall_after if stall_after is not None else worker.settings.kafka.max_poll_interval
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        # No access log: probes and scrapes every few seconds would drown the one line per flush.
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("http server listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            log.info("http server stopped", port=self.port)

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ probes

    async def _healthz(self, request: web.Request) -> web.Response:
        worker = self.worker
        age = time.monotonic() - worker.last_tick
        body: dict[str, Any] = {
            "last_tick_seconds_ago": round(age, 3),
            "stall_after": self.stall_after,
            # Not part of liveness (a restart would not help a broker or Redis outage); /readyz
            # and the alerts in README act on them.
            "partitions_assigned": len(worker.assigned),
            "partitions_owned": len(worker.tokens),
        }
        if age > self.stall_after:
            return web.json_response({"status": "stalled", **body}, status=503)
        return web.json_response({"status": "ok", **body})

    async def _readyz(self, request: web.Request) -> web.Response:
        worker = self.worker
        partitions = sorted(worker.tokens)
        # ``ready`` drops on revoke and on a failed Redis step; owning partitions (tokens) means the
        # assignment is done and the Redis question is answered by the PING below.
        assigned = worker.ready or bool(partitions)
        # Assigned by the group but not owned in Redis: nobody consumes them (fenced, or Redis
        # lost the state and the worker has not taken them back yet).
        unowned = sorted(set(worker.assigned) - set(partitions))
        redis_error = await self._ping()
        body: dict[str, Any] = {
            "assigned": assigned,
            "partitions": partitions,
            "unowned": unowned,
            "redis": "ok" if redis_error is None else redis_error,
        }
        if assigned and not unowned and redis_error is None:
            return web.json_response({"status": "ready", **body})
        return web.json_response({"status": "not ready", **body}, status=503)

    async def _ping(self) -> str | None:
        """None when Redis answered PING in time, else why (redis-py names host:port, never a password)."""
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=self.ping_timeout)
        except TimeoutError:
            return f"no PING answer within {self.ping_timeout}s"
        except Exception as exc:  # any failure means not ready; say which kind
            return f"{type(exc).__name__}: {exc}"[:300]
        return None
