"""Redis sizing figures for README: bytes per series and commands per flush, on one Valkey node and
on a local Redis Cluster (3 masters, a replica each), through the real stores.

N span-metrics series (a ``duration`` histogram with 16 buckets standing for its ``calls``
counter, five attributes, as the worker stores them) over 8 input partitions = 8 slots; one
create flush (merge + fold of every slot), one update flush (every series again) and one idle
flush (fold only). On one node the flush is one merge of every partition's deltas; on the cluster
one step per partition (each series' delta in ``--seen-in`` partitions, as a series whose spans
arrive through k partitions is k delta rows). Prints, per layout: used memory per series (over a
baseline, all masters summed), the commands the servers executed per flush (INFO commandstats,
all masters) and, on the cluster, per master for the merge and for the folds; checks that every
series is held with its exact count.

    python bench/cluster_sizing.py                 # 20,000 series
    python bench/cluster_sizing.py --series 100000 --seen-in 3
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


def _deltas(series: int, round_number: int, part: int = 0, parts: int = 1) -> dict[str, TenantDeltas]:
    """The round's deltas of the series ``n`` with ``n % parts == part``."""
    batch = []
    for n in range(part, series, parts):
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
    resources: dict[str, tuple[tuple[str, Any], ...]] = {
        f"r{n}": (("service.name", f"svc-{n}"),) for n in range(20)
    }
    return {"acme": TenantDeltas(resources=resources, series=batch)}


def _bytes_in(nodes: list[redis.Redis]) -> int:
    """Bytes the nodes have read from their clients so far, summed."""
    return sum(int(node.info("stats")["total_net_input_bytes"]) for node in nodes)


def _stats(nodes: list[redis.Redis]) -> tuple[int, list[int]]:
    """(used memory without the replication buffers, summed; commands executed, per node)."""
    memory = 0
    commands = []
    for node in nodes:
        info = node.info("memory")
        memory += int(info["used_memory"]) - int(info.get("mem_replication_backlog", 0))
        memory -= int(info.get("mem_clients_slaves", 0))
        stats = node.info("commandstats")
        # The bench's own INFO calls aside.
        commands.append(sum(int(value["calls"]) for name, value in stats.items() if name != "cmdstat_info"))
    return memory, commands


def _spent(before: list[int], after: list[int]) -> list[int]:
    """Commands per node between two _stats calls."""
    return [b - a for a, b in zip(before, after, strict=True)]


async def _run(store: RedisStateStore, nodes: list[redis.Redis], series: int, seen_in: int) -> dict[str, Any]:
    await store.generation("bench")
    tokens = await store.claim(range(SLOTS))
    base_memory, _ = _stats(nodes)
    figures: dict[str, Any] = {}
    per_node: list[list[str]] = [[] for _ in nodes]
    for round_number, label in enumerate(("create", "update", "idle")):
        _, before = _stats(nodes)
        received = _bytes_in(nodes)
        if label != "idle":
            fences = {p: (tokens[p], round_number + 1) for p in range(SLOTS)}
            if isinstance(store, ClusterStateStore):
                # Partition p carries the series n with n % SLOTS in p's window of seen_in.
                by_partition: dict[int, dict[str, TenantDeltas]] = {p: {} for p in range(SLOTS)}
                for residue in range(SLOTS):
                    deltas = _deltas(series, round_number, residue, SLOTS)
                    for k in range(seen_in):
                        target = by_partition[(residue + k) % SLOTS]
                        if "acme" in target:
                            target["acme"].series += deltas["acme"].series
                        else:
                            target["acme"] = TenantDeltas(
                                dict(deltas["acme"].resources), list(deltas["acme"].series)
                            )
                steps = await store.merge_partitions(by_partition, fences, sequence=round_number + 1)
                assert all(result is True for result in steps.values()), steps
            else:
                deltas = _deltas(series, round_number)
                for one in deltas["acme"].series:
                    one.count *= seen_in
                    one.sum *= seen_in
                    one.buckets = [b * seen_in for b in one.buckets or []]
                await store.merge(deltas, fences)
        if label == "update":
            figures["merge bytes sent per update flush"] = _bytes_in(nodes) - received
        _, merged = _stats(nodes)
        emitted = 0
        for slot in range(SLOTS):
            result = await store.fold_slot("acme", slot, tokens[slot])
            assert result.committed
            emitted += result.emitted
        _, after = _stats(nodes)
        merge, fold = _spent(before, merged), _spent(merged, after)
        figures[f"commands per {label} flush"] = sum(merge) + sum(fold)
        for node, (m, f) in enumerate(zip(merge, fold, strict=True)):
            per_node[node].append(f"{m}+{f}")
        assert emitted == 2 * series, (label, emitted)
    memory, _ = _stats(nodes)
    figures["bytes per series (pair of calls + duration)"] = round((memory - base_memory) / series)
    held = [s.series for slot in range(SLOTS) for s in await store.read_slot("acme", slot)]
    assert sorted({s.count for s in held}) == [2 * seen_in], "every series holds exactly its deltas"
    figures["series held"] = len(held)
    if len(nodes) > 1:
        figures["merge+fold commands per master: create, update, idle"] = [" ".join(n) for n in per_node]
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20_000)
    parser.add_argument("--seen-in", type=int, default=1, help="partitions each series' spans arrive through")
    options = parser.parse_args()
    with EmbeddedRedis() as node:
        client = Redis.from_url(node.url)
        single = RedisStateStore(client, KeySpace("bench", "in"), slots=SLOTS, max_exemplars=0)
        plain = [redis.Redis.from_url(node.url)]
        print("one node:", await _run(single, plain, options.series, options.seen_in))
        await client.aclose()
    with EmbeddedRedisCluster(masters=3, replicas=1) as cluster:
        on_cluster = RedisCluster.from_url(cluster.url)
        sharded = ClusterStateStore(on_cluster, ClusterKeys("bench", "in"), slots=SLOTS, max_exemplars=0)
        masters = [cluster.client(master) for master in cluster.masters()]
        print("cluster (3 masters):", await _run(sharded, masters, options.series, options.seen_in))
        for master in masters:
            port = master.connection_pool.connection_kwargs["port"]
            used = int(master.info("memory")["used_memory_dataset"])
            print(f"  master {port}: {master.dbsize()} keys, dataset {used / 2**20:.1f} MiB")
        await on_cluster.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
