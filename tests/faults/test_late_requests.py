"""Redis requests held by the network and delivered late, through a real TCP path.

A cut holds the bytes of every connection open during it; when it heals, new connections go
through at once while the held bytes arrive seconds later (TCP retransmission backs off during
a partition, a new connection does not wait for it). A client whose socket timeout is shorter
than the cut gives up, retries on a new connection, moves on to newer requests, and then its
first request reaches Redis: it must change nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from importlib import resources
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeout

from devtools.servers import KafkaEndpoint, RedisEndpoint
from state.codec import attributes_of_parts
from state.keys import KeySpace
from state.redis_store import RedisStateStore
from worker.model.series import Series, TenantDeltas

from .harness import (
    COUNTED_METRICS,
    Output,
    ScenarioReport,
    Traffic,
    WorkerProcess,
    assert_clean_run,
    create_scenario_topics,
    stop_all,
    stop_traffic_and_wait,
    wait_for_redis_keys,
    write_config,
)
from .proxy import TcpProxy, _Direction

CUT_S = 3.0
#: TCP retransmission after a partition: the held request arrives after the retry and newer ones.
LATE_BY_S = 4.0
#: What EVALSHA sends for each script of the store.
SCRIPTS = {
    name: hashlib.sha1((resources.files("state") / "lua" / name).read_bytes()).hexdigest().encode()
    for name in ("merge.lua", "fold.lua")
}


class _Tripwire:
    """A client's reader that cuts the network as the armed request passes (mid-flight)."""

    def __init__(self, reader: asyncio.StreamReader, proxy: LateProxy) -> None:
        self.reader = reader
        self.proxy = proxy

    async def read(self, size: int) -> bytes:
        data = await self.reader.read(size)
        armed = self.proxy.armed
        if armed is not None and armed in data:
            self.proxy.armed = None
            self.proxy.cut()
        return data


class LateProxy(TcpProxy):
    """:meth:`heal_late`: new connections go through at once, what the cut held arrives later;
    :meth:`arm`: the cut starts as a chosen request is on its way."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.stuck: list[_Direction] = []
        self.armed: bytes | None = None

    def arm(self, marker: bytes) -> None:
        """Cut when a request containing ``marker`` (a script's SHA) passes, holding it."""
        self.armed = marker

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await super()._accept(_Tripwire(client_reader, self), client_writer)  # type: ignore[arg-type]

    def heal_late(self, late_by: float) -> int:
        """Heal for new connections now; deliver the held bytes ``late_by`` seconds later.
        Returns how many bytes are held."""
        held = self.held_bytes()
        stuck = [self.up, self.down]
        self.stuck.extend(stuck)
        self.up, self.down = _Direction(), _Direction()

        def deliver() -> None:
            for direction in stuck:
                direction.open.set()
                self.stuck.remove(direction)

        asyncio.get_running_loop().call_later(late_by, deliver)
        return held

    def held_bytes(self) -> int:
        return super().held_bytes() + sum(direction.held_bytes for direction in self.stuck)

    async def delivered(self, timeout: float = 10.0) -> float:
        """Seconds until nothing is held any more (and Redis had a moment to execute it)."""
        started = time.monotonic()
        while self.stuck or self.held_bytes():
            assert time.monotonic() - started < timeout, f"{self.held_bytes()} bytes still held"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        return time.monotonic() - started


def _delta(count: int) -> dict[str, TenantDeltas]:
    series = Series(
        series_id="calls\x1er\x1espan.name=x",
        metric="calls",
        resource_id="r",
        attributes=(("span.name", "x"),),
        start_ns=1_000,
        last_ns=2_000,
        count=count,
    )
    return {"acme": TenantDeltas(resources={"r": ()}, series=[series])}


async def test_a_merge_and_a_fold_delivered_late_change_nothing(
    redis_server: RedisEndpoint, report: ScenarioReport
) -> None:
    """A merge held by the network times out and is retried on a new connection; a newer merge
    (a service-graph expiry: deltas, no new offsets) follows; then the held merge arrives. A
    fold's commit is held the same way, the next fold commits, more rows arrive, then the held
    fold arrives. Totals stay exact and the emitted value never goes backwards."""
    host, port = redis_server.url.removeprefix("redis://").split("/")[0].split(":")
    proxy = await LateProxy(host, int(port)).start()
    client = aioredis.Redis.from_url(f"redis://{proxy.url_host}", socket_timeout=0.5)
    store = RedisStateStore(
        client, KeySpace(f"late-{random.randrange(1 << 30):x}", "in"), slots=1, max_exemplars=0
    )
    emitted: list[int] = []

    async def fold() -> None:
        result = await store.fold_slot("acme", 0, tokens[0])
        assert result.committed
        emitted.extend(s.count for s in result.live)

    try:
        tokens = await store.claim([0])
        await store.merge(_delta(1), {0: (tokens[0], 1)}, sequence=1)
        await fold()
        # 1. The merge: held, retried on a new connection, overtaken, delivered late.
        proxy.cut()
        timed_out = []
        try:
            await store.merge(_delta(3), {0: (tokens[0], 2)}, sequence=2)
        except RedisTimeout:
            timed_out.append("merge")
        merge_held = proxy.heal_late(LATE_BY_S)
        await store.merge(_delta(3), {0: (tokens[0], 2)}, sequence=2)  # the retry
        await store.merge(_delta(4), {0: (tokens[0], -1)}, sequence=3)  # no new offsets
        await fold()
        await proxy.delivered()
        # 2. The fold: its commit held, the next fold commits, more rows, then it arrives.
        script = store._fold

        async def cut_then_commit(*, args: list[Any]) -> Any:
            proxy.cut()
            return await script(args=args)

        await store.merge(_delta(5), {0: (tokens[0], 3)}, sequence=4)
        store._fold = cut_then_commit  # type: ignore[method-assign]
        try:
            await store.fold_slot("acme", 0, tokens[0])
        except RedisTimeout:
            timed_out.append("fold")
        store._fold = script  # type: ignore[method-assign]
        fold_held = proxy.heal_late(LATE_BY_S)
        await fold()
        await store.merge(_delta(7), {0: (tokens[0], 4)}, sequence=5)
        await proxy.delivered()
        await fold()
        stored = [s.series for s in await store.read_slot("acme", 0)]
        attributes = [
            attributes_of_parts(s.attribute_parts) if s.attribute_parts else s.attributes for s in stored
        ]
    finally:
        await client.aclose()
        await proxy.close()
    report.fact("requests that timed out and arrived late", timed_out)
    report.fact("bytes held by the network (merge, fold)", (merge_held, fold_held))
    report.fact("emitted values (expected 1, 8, 13, 20)", emitted)
    report.produced = {("calls", "acme"): 1 + 3 + 4 + 5 + 7}
    report.counted = {("calls", "acme"): stored[0].count}
    assert timed_out == ["merge", "fold"] and merge_held > 0 and fold_held > 0
    assert attributes == [(("span.name", "x"),)]
    assert emitted == [1, 8, 13, 20]
    assert stored[0].count == 20


async def test_network_cuts_between_workers_and_redis_lose_and_double_nothing(
    kafka: KafkaEndpoint, redis_server: RedisEndpoint, tmp_path: Path, soak: int, report: ScenarioReport
) -> None:
    """Two workers reach Redis through the proxy with a 1 s socket timeout; the network is cut
    for 3 s several times during traffic, each time as a merge or a fold's commit is on its way;
    what the cut held arrives 4 s after it heals, after the workers retried and moved on. Exact
    totals on the output topic, no series backwards."""
    name = f"late-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, 4)
    host, port = redis_server.url.removeprefix("redis://").split("/")[0].split(":")
    proxy = await LateProxy(host, int(port)).start()
    config = write_config(
        tmp_path / "config.yaml",
        kafka=bootstrap,
        redis=f"redis://{proxy.url_host}/0",
        name=name,
        service_graphs=True,
        redis_extra={"socket_timeout": "1s", "connect_timeout": "1s"},
    )
    workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(2)]
    traffic = await Traffic(bootstrap, f"{name}-in", seed=41, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    held: list[int] = []
    recovered: list[float] = []
    try:
        traffic.run(rate=15)
        for worker in workers:
            await worker.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
        await wait_for_redis_keys(redis_server.url, f"{name}:t:*")
        for cut in range(4 * soak):
            # The cut starts as a merge (even cuts) or a fold's commit (odd ones) is on its way.
            await asyncio.sleep(random.uniform(0.5, 1.5))
            proxy.arm(SCRIPTS["merge.lua" if cut % 2 == 0 else "fold.lua"])
            armed = time.monotonic()
            while proxy.armed is not None:
                assert time.monotonic() - armed < 30, "no such request within 30 s"
                await asyncio.sleep(0.01)
            await asyncio.sleep(CUT_S)
            flushes = [w.count("flush") for w in workers]
            held.append(proxy.heal_late(LATE_BY_S))
            healed = time.monotonic()
            for worker, count in zip(workers, flushes, strict=True):
                await worker.wait_until(lambda w, n=count: w.count("flush") > n + 1, 60, "flushes")
            recovered.append(time.monotonic() - healed)
            await proxy.delivered()
        await asyncio.sleep(2)
        expected, converged = await stop_traffic_and_wait(traffic, output, timeout=90)
        await asyncio.sleep(2)
        counted = output.totals(COUNTED_METRICS)
    finally:
        await traffic.stop()
        codes = await stop_all(workers)
        await output.stop()
        await proxy.close()
    retries = sum(w.count("Redis step failed; retrying") for w in workers)
    report.fact(
        "cuts (3 s, mid-merge or mid-fold; socket timeout 1 s; held bytes arrive 4 s after heal)", len(held)
    )
    report.fact("bytes held per cut", held)
    report.fact("seconds from heal to two more flushes per worker", [round(s, 1) for s in recovered])
    report.fact("retried Redis steps (logged)", retries)
    report.fact("records produced", traffic.records)
    report.fact("seconds from end of traffic to exact totals", round(converged, 1))
    report.produced, report.counted = expected, counted
    assert all(held) and retries > 0
    assert counted == expected
    assert_clean_run(output, workers, codes.values())
