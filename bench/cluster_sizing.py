"""Redis sizing figures for README: bytes per series and commands per flush, on one Valkey node and
on a local Redis Cluster (3 masters, a replica each), through the real stores.

N span-metrics series (a ``duration`` histogram with 16 buckets standing for its ``calls``
counter, five attributes, as the worker stores them) over 8 slots; one create flush (merge +
fold of every slot), one update flush (every series again) and one idle flush (fold only).
Prints, per layout: used memory per series (over a baseline, all masters summed) and the
commands the servers executed per flush (INFO commandstats, all masters), and checks that every
series is held with its exact count.

    python bench/cluster_sizing.py                 # 20,000 series
    python bench/cluster_sizing.py --series 100000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from devtools.redis_cluster import EmbeddedRedisCluster
from devtools.servers import EmbeddedRedis
from state.cluster_store import ClusterKeys, ClusterStateStore
from state.keys import KeySpace
from state.redis_store import RedisStateStore
from worker.model.series import Series, TenantDeltas

SLOTS = 8
NOW = 1_800_000_000_000_000_000


def _deltas(series: int, round_number: int) -> dict[str, TenantDeltas]:
    batch = []
    for n in range(series):
        one = Series(
            series_id=f"duration\x1er{n % 20}\x1eroute=/api/{n}",
            metric="duration",
            resource_id=f"r{n % 20}",
            attributes=(
                ("service.name", f"svc-{n % 20}"),
                ("span.name", f"GET /api/{n}"),
                ("span.kind", "SPAN_KIND_SERVER"),
                ("status.code", "STATUS_CODE_UNSET"),
                ("http.response.status_code", 200),
            ),
            start_ns=NOW,
            last_ns=NOW + round_number,
            count=1,
            sum=12.5,
            buckets=[0] * 5 + [1] + [0] * 11,
        )
        one.companion = "calls"
        batch.append(one)
    resources = {f"r{n}": (("service.name", f"svc-{n}"),) for n in range(20)}
    return {"acme": TenantDeltas(resources=resources, series=batch)}


def _stats(nodes: list[redis.Redis]) -> tuple[int, int]:
    """(used memory without the replication buffers, commands executed) summed over the nodes."""
    memory = commands = 0
    for node in nodes:
        info = node.info("memory")
        memory += int(info["used_memory"]) - int(info.get("mem_replication_backlog", 0))
        memory -= int(info.get("mem_clients_slaves", 0))
        stats = node.info("commandstats")
        commands += sum(int(value["calls"]) for value in stats.values())
    return memory, commands


async def _run(store: RedisStateStore, nodes: list[redis.Redis], series: int) -> dict[str, Any]:
    await store.generation("bench")
    tokens = await store.claim(range(SLOTS))
    base_memory, _ = _stats(nodes)
    figures: dict[str, Any] = {}
    for round_number, label in enumerate(("create", "update", "idle")):
        _, before = _stats(nodes)
        if label != "idle":
            await store.merge(_deltas(series, round_number), {0: (tokens[0], round_number + 1)})
        emitted = 0
        for slot in range(SLOTS):
            result = await store.fold_slot("acme", slot, tokens[slot])
            assert result.committed
            emitted += result.emitted
        _, after = _stats(nodes)
        figures[f"commands per {label} flush"] = after - before - len(nodes) * 2  # minus our INFO calls
        assert emitted == 2 * series, (label, emitted)
    memory, _ = _stats(nodes)
    figures["bytes per series (pair of calls + duration)"] = round((memory - base_memory) / series)
    held = [s.series for slot in range(SLOTS) for s in await store.read_slot("acme", slot)]
    assert sorted({s.count for s in held}) == [2], "every series holds exactly its two deltas"
    figures["series held"] = len(held)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20_000)
    options = parser.parse_args()
    with EmbeddedRedis() as node:
        client = Redis.from_url(node.url)
        single = RedisStateStore(client, KeySpace("bench", "in"), slots=SLOTS, max_exemplars=0)
        plain = [redis.Redis.from_url(node.url)]
        print("one node:", await _run(single, plain, options.series))
        await client.aclose()
    with EmbeddedRedisCluster(masters=3, replicas=1) as cluster:
        on_cluster = RedisCluster.from_url(cluster.url)
        sharded = ClusterStateStore(on_cluster, ClusterKeys("bench", "in"), slots=SLOTS, max_exemplars=0)
        masters = [cluster.client(master) for master in cluster.masters()]
        print("cluster (3 masters):", await _run(sharded, masters, options.series))
        for master in masters:
            port = master.connection_pool.connection_kwargs["port"]
            used = int(master.info("memory")["used_memory_dataset"])
            print(f"  master {port}: {master.dbsize()} keys, dataset {used / 2**20:.1f} MiB")
        await on_cluster.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
