"""/readyz and /healthz of a worker that owns none of the partitions its group assigned it (Redis
lost the state, or another worker fenced it): not ready, while liveness still means "the loop ticks"."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from worker.config import Settings
from worker.observability.http import HttpServer
from worker.observability.selfmetrics import WorkerMetrics


class Pong:
    async def ping(self) -> bool:
        return True


@dataclass
class FakeWorker:
    assigned: list[int] = field(default_factory=list)
    tokens: dict[int, int] = field(default_factory=dict)
    ready: bool = True
    last_tick: float = field(default_factory=time.monotonic)
    metrics: WorkerMetrics = field(default_factory=lambda: WorkerMetrics(CollectorRegistry()))
    redis: Any = field(default_factory=Pong)
    settings: Settings = field(default_factory=Settings)


async def probe(server: HttpServer, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}{path}") as response:
        return response.status, json.loads(await response.text())


async def test_a_worker_owning_none_of_its_assigned_partitions_is_not_ready() -> None:
    worker = FakeWorker(assigned=[0, 1], tokens={})
    async with HttpServer(worker, host="127.0.0.1", port=0) as server:
        status, body = await probe(server, "/readyz")
        assert status == 503
        assert body["unowned"] == [0, 1] and body["partitions"] == []

        # Liveness is still "the loop ticks" (a restart does not help an outage); it says how many.
        status, body = await probe(server, "/healthz")
        assert status == 200
        assert body["partitions_assigned"] == 2 and body["partitions_owned"] == 0

        worker.tokens = {0: 5}  # one taken back: still not ready
        status, body = await probe(server, "/readyz")
        assert status == 503 and body["unowned"] == [1]

        worker.tokens = {0: 5, 1: 6}
        status, body = await probe(server, "/readyz")
        assert status == 200 and body["unowned"] == []


async def test_a_worker_with_nothing_assigned_is_ready() -> None:
    """More workers than partitions: an idle member is ready (as before)."""
    worker = FakeWorker(assigned=[], tokens={})
    async with HttpServer(worker, host="127.0.0.1", port=0) as server:
        status, body = await probe(server, "/readyz")
        assert status == 200 and body["unowned"] == []
