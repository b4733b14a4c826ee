"""The cluster store's own layout on a real Redis Cluster: state and merges spread over the
masters, outboxes trimmed once folded, idempotent pulls and trims, a multi-partition merge whose
one step fails applying the others, lost shards noticed, replicas waited for."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot
from redis.exceptions import RedisError

from devtools.redis_cluster import EmbeddedRedisCluster
from state.cluster_store import ClusterKeys, ClusterStateStore, NotReplicatedError
from state.codec import attributes_of_parts
from state.fold import series_slot
from state.redis_store import _text
from worker.model.series import Series, TenantDeltas

NOW = 1_800_000_000_000_000_000
T = TypeVar("T")


def _calls(name: str, count: int) -> Series:
    return Series(
        series_id=f"calls\x1er1\x1e{name}",
        metric="calls",
        resource_id="r1",
        attributes=(("name", name),),
        start_ns=NOW,
        last_ns=NOW,
        count=count,
        sum=float(count),
    )


def _deltas(*series: Series) -> dict[str, TenantDeltas]:
    return {"acme": TenantDeltas(resources={"r1": (("service.name", "svc"),)}, series=list(series))}


@pytest.fixture
async def client(redis_cluster: EmbeddedRedisCluster) -> AsyncIterator[RedisCluster]:
    on_cluster = RedisCluster.from_url(redis_cluster.url)
    name = f"cs-{uuid.uuid4().hex[:10]}"
    on_cluster.test_prefix = name  # type: ignore[attr-defined]
    try:
        yield on_cluster
    finally:
        for key in [key async for key in on_cluster.scan_iter(match=f"*{name}*", count=1000)]:
            await on_cluster.delete(key)
        await on_cluster.aclose()


def _store(client: RedisCluster, slots: int = 12, **options: object) -> ClusterStateStore:
    prefix = client.test_prefix  # type: ignore[attr-defined]
    return ClusterStateStore(client, ClusterKeys(prefix, "in"), slots=slots, max_exemplars=0, **options)  # type: ignore[arg-type]


async def _fold_all(store: ClusterStateStore, tokens: dict[int, int]) -> dict[str, int]:
    """Every slot folded by its owner: series name -> count emitted."""
    counts: dict[str, int] = {}
    for slot in range(store.slots):
        result = await store.fold_slot("acme", slot, tokens[slot])
        assert result.committed
        for series in result.live:
            (name,) = (value for key, value in attributes_of_parts(series.attribute_parts or []))
            counts[str(name)] = series.count
    return counts


async def test_series_state_spreads_over_every_master_and_outboxes_are_trimmed(
    client: RedisCluster, redis_cluster: EmbeddedRedisCluster
) -> None:
    store = _store(client, slots=32)  # 32 random hash tags: all on one or two masters ~1e-5
    await store.generation("g1")
    tokens = await store.claim(range(store.slots))
    series = [_calls(f"s{n}", n + 1) for n in range(300)]
    await store.merge(_deltas(*series), {0: (tokens[0], 10)})
    await store.merge(_deltas(*series), {1: (tokens[1], 20)})
    counts = await _fold_all(store, tokens)
    assert counts == {f"s{n}": 2 * (n + 1) for n in range(300)}
    layout = store.layout
    holders = {
        client.get_node_from_key(layout.records("acme", slot)).port
        for slot in range(store.slots)
        if await client.hlen(layout.records("acme", slot))
    }
    assert holders == {node.port for node in redis_cluster.masters()}  # sharded, not one tag
    for slot in range(store.slots):
        cursors = await client.hgetall(layout.cursors("acme", slot))
        for source in (0, 1):
            assert await client.llen(layout.outbox("acme", source, slot)) == 0  # folded: trimmed
            base = int(await client.get(layout.base("acme", source, slot)) or 0)
            cursor = cursors.get(str(source).encode(), b":0").decode()
            assert cursor.split(":") == [_text(await client.get(layout.epoch(source))), str(base)]
    assert await store.active_series("acme") == 300
    assert await _fold_all(store, tokens) == counts  # idle: the same values, nothing refolded


async def test_late_trims_and_overflow_rows_handed_on_in_the_fold_change_nothing(
    client: RedisCluster,
) -> None:
    store = _store(client, slots=2, active_series_limit=1)
    tokens = await store.claim([0, 1])
    await store.merge(_deltas(*(_calls(f"s{n}", 1) for n in range(6))), {0: (tokens[0], 1)})
    await _fold_all(store, tokens)
    await _fold_all(store, tokens)  # overflow rows handed on to a slot folded before
    held = [s.series for slot in range(2) for s in await store.read_slot("acme", slot)]
    assert sum(s.count for s in held) == 6 and len(held) == 2  # one admitted, one overflow
    outbox, base, epoch = (
        store.layout.outbox("acme", 0, 0),
        store.layout.base("acme", 0, 0),
        store.layout.epoch(0),
    )
    current = _text(await client.get(epoch))
    assert await store._trim(keys=[outbox, base, epoch], args=["0", current]) == 0  # an older cursor
    await _fold_all(store, tokens)  # nothing new: nothing refolded, nothing handed on again
    again = [s.series for slot in range(2) for s in await store.read_slot("acme", slot)]
    assert sum(s.count for s in again) == 6


async def test_a_slot_that_lost_its_data_is_noticed_and_restarts(client: RedisCluster) -> None:
    store = _store(client, slots=3)
    marker = await store.generation("g1")
    tokens = await store.claim(range(3))
    one = _calls("lost", 5)
    slot = series_slot(one.series_id, 3)
    await store.merge(_deltas(one), {0: (tokens[0], 1)})
    await _fold_all(store, tokens)
    assert (await store.ownership(range(3))).generation == marker
    # The master of the slot's tag failed over to a replica that had none of it.
    layout = store.layout
    await client.delete(layout.marker(slot), layout.token(slot), *layout.slot_keys("acme", slot))
    seen = await store.ownership(range(3))
    assert seen.generation is None  # noticed: the worker logs the loss and recovers
    assert await store.generation("g2") == marker  # the control tag kept its marker
    assert (await store.ownership(range(3))).generation == marker
    tokens = await store.claim(range(3))
    await store.merge(_deltas(_calls("lost", 1)), {0: (tokens[0], 2)})
    assert (await _fold_all(store, tokens))["lost"] == 1  # restarted, not stuck


async def test_a_new_generation_drops_the_records_of_the_old_one(client: RedisCluster) -> None:
    store = _store(client, slots=2)
    await store.generation("g1")
    tokens = await store.claim(range(2))
    await store.merge(_deltas(_calls("a", 3)), {0: (tokens[0], 1)})
    await _fold_all(store, tokens)
    # The control tag's master lost everything: its keys are gone, a worker starts a generation.
    async for key in client.scan_iter(match=f"{{{store.layout.prefix}:in}}*"):
        await client.delete(key)
    assert (await store.ownership(range(2))).generation is None
    assert await store.generation("g2") == "g2"
    assert [await store.read_slot("acme", slot) for slot in range(2)] == [[], []]
    assert await store.active_series("acme") == 0


async def test_a_merge_waits_for_a_replica_and_its_retry_is_answered_seen(
    client: RedisCluster, redis_cluster: EmbeddedRedisCluster
) -> None:
    store = _store(client, slots=2, replica_wait_s=0.3)
    tokens = await store.claim([0])
    port = client.get_node_from_key(store.layout.token(0)).port
    master = next(node for node in redis_cluster.masters() if node.port == port)
    replica = redis_cluster.replica_of(master)
    replica.pause()
    try:
        with pytest.raises(NotReplicatedError, match="no replica"):
            await store.merge(_deltas(_calls("a", 1)), {0: (tokens[0], 1)}, sequence=1)
    finally:
        replica.resume()
    # The retry (same sequence) finds the step applied, and now a replica holds it.
    assert await store.merge(_deltas(_calls("a", 1)), {0: (tokens[0], 1)}, sequence=1) is False
    assert await store.applied_offsets([0]) == {0: 1}
    redis_cluster.wait_ok()


async def _retried(step: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """A step retried on Redis errors as the worker retries it (same arguments): (result, retries)."""
    for attempt in range(200):
        try:
            return await step(), attempt
        except RedisError:
            await asyncio.sleep(0.02)
    raise AssertionError("still failing after 200 attempts")


async def test_a_resharding_while_merging_and_folding_keeps_counts_exact(
    client: RedisCluster, redis_cluster: EmbeddedRedisCluster
) -> None:
    """Partition 0's hash tag (its merges), then slot 1's, move to another master key by key while
    merges and folds go on: redirections (ASK, MOVED) are followed, a script meeting its tag
    half-moved (TRYAGAIN) is retried, and every count is exact."""
    store = _store(client, slots=4)
    await store.generation("g1")
    tokens = await store.claim(range(4))
    moving = [key_slot(store.layout.token(0).encode()), key_slot(store.layout.records("acme", 1).encode())]

    def reshard() -> None:
        for slot in moving:
            target = next(m for m in redis_cluster.masters() if m is not redis_cluster.master_of(slot))
            redis_cluster.move_slot(slot, target, batch=1, pause=0.05)

    mover = asyncio.create_task(asyncio.to_thread(reshard))
    rounds = retries = 0
    try:
        while not mover.done() or rounds < 10:
            rounds += 1
            batch = _deltas(*(_calls(f"s{n}", 1) for n in range(10)))
            _, again = await _retried(
                lambda b=batch, r=rounds: store.merge(b, {0: (tokens[0], r)}, sequence=r)  # type: ignore[misc]
            )
            retries += again
            for slot in range(4):
                _, again = await _retried(lambda s=slot: store.fold_slot("acme", s, tokens[s]))  # type: ignore[misc]
                retries += again
    finally:
        await mover
    counts, _ = await _retried(lambda: _fold_all(store, tokens))
    assert counts == {f"s{n}": rounds for n in range(10)}
    for slot in moving:  # both moved for real
        assert redis_cluster.master_of(slot).port == client.nodes_manager.get_node_from_slot(slot).port


async def test_a_step_a_failover_loses_was_never_acknowledged_and_its_retry_applies_it_once() -> None:
    """Asynchronous replication: partition 0's master applies a merge, its replica (frozen)
    does not get it, the master dies and the replica is elected without it. The merge never
    returned (no replica acknowledged it), so its offsets never reached Kafka; its retry (same
    sequence) applies it on the new master, once."""
    with EmbeddedRedisCluster(masters=3, replicas=1) as cluster:
        client = RedisCluster.from_url(cluster.url)
        client.test_prefix = f"cs-{uuid.uuid4().hex[:10]}"  # type: ignore[attr-defined]
        try:
            store = _store(client, slots=2, replica_wait_s=0.3)
            tokens = await store.claim([0])
            first = _deltas(_calls("a", 1))
            assert await store.merge(first, {0: (tokens[0], 10)}, sequence=1)
            master = cluster.master_of(key_slot(store.layout.token(0).encode()))
            replica = cluster.replica_of(master)
            replica.pause()
            with cluster.client(master) as direct:  # the replication link goes with it
                direct.execute_command("CLIENT", "KILL", "TYPE", "replica")
            second = _deltas(_calls("a", 2))
            with pytest.raises(NotReplicatedError):
                await store.merge(second, {0: (tokens[0], 20)}, sequence=2)
            assert master.pid is not None
            os.kill(master.pid, signal.SIGKILL)  # the step dies with it
            replica.resume()
            # Until the replica is elected: the cluster may still call itself ok (and map the
            # slot to the dead master) before the nodes have marked the master failed.
            slot = key_slot(store.layout.token(0).encode())

            def elected() -> None:
                deadline = time.monotonic() + 60
                while cluster.master_of(slot).port != replica.port and time.monotonic() < deadline:
                    time.sleep(0.2)
                cluster.wait_ok()

            await asyncio.to_thread(elected)
            assert cluster.master_of(slot).port == replica.port
            lost, _ = await _retried(lambda: store.applied_offsets([0]))
            assert lost == {0: 10}  # the replica never had the second step
            applied, _ = await _retried(lambda: store.merge(second, {0: (tokens[0], 20)}, sequence=2))
            assert applied is True
            assert await store.merge(second, {0: (tokens[0], 20)}, sequence=2) is False  # once
            assert await store.applied_offsets([0]) == {0: 20}
            tokens.update(await store.claim([1]))
            counts, _ = await _retried(lambda: _fold_all(store, tokens))
            assert counts == {"a": 3}
        finally:
            await client.aclose()


def _rpush_calls(cluster: EmbeddedRedisCluster) -> dict[int, int]:
    """RPUSH calls each master has run so far (scripts' commands included): port -> calls."""
    calls = {}
    for master in cluster.masters():
        with cluster.client(master) as direct:
            stats = direct.info("commandstats")
        calls[master.port] = int(stats.get("cmdstat_rpush", {}).get("calls", 0))
    return calls


async def test_merges_of_different_partitions_go_to_their_own_masters(
    client: RedisCluster, redis_cluster: EmbeddedRedisCluster
) -> None:
    """Every partition's merge step writes under its own tag only: each master appends exactly the
    outbox entries of the partitions it holds, and every master takes a share of the merges."""
    store = _store(client, slots=24)  # 24 tags: one master holding none ~ 3 * (2/3)^24 = 2e-4
    await store.generation("g1")
    tokens = await store.claim(range(store.slots))
    by_partition = {p: _deltas(*(_calls(f"p{p}-s{n}", 1) for n in range(20))) for p in range(store.slots)}
    fences = {p: (tokens[p], 100 + p) for p in range(store.slots)}
    expected = {master.port: 0 for master in redis_cluster.masters()}
    for p, deltas in by_partition.items():  # one outbox entry per slot the partition's rows hit
        slots = {series_slot(s.series_id, store.slots) for s in deltas["acme"].series}
        expected[client.get_node_from_key(store.layout.token(p)).port] += len(slots)
    before = _rpush_calls(redis_cluster)
    steps = await store.merge_partitions(by_partition, fences, sequence=1)
    after = _rpush_calls(redis_cluster)
    assert steps == dict.fromkeys(range(store.slots), True)
    assert {port: after[port] - before[port] for port in after} == expected
    assert all(expected.values())  # the merge load shards over every master
    assert await store.applied_offsets(range(store.slots)) == {p: 100 + p for p in range(store.slots)}
    counts = await _fold_all(store, tokens)
    assert counts == {f"p{p}-s{n}": 1 for p in range(store.slots) for n in range(20)}
    # A repeated multi-partition merge (the same sequence) is seen by every partition.
    again = await store.merge_partitions(by_partition, fences, sequence=1)
    assert again == dict.fromkeys(range(store.slots), False)
    assert await _fold_all(store, tokens) == counts


async def test_a_multi_partition_merge_whose_one_master_dies_applies_every_other_partition() -> None:
    """A master dies (SIGKILL) just before a merge of every partition, its replica held back from
    a failover until the steps are done: the steps of the partitions it held fail, and each of
    them applied nothing (not on the replica elected afterwards either); every other partition's
    step is applied, once. The failed steps' retry (same sequence) applies them once on the new
    master, and the counts are exact."""
    with EmbeddedRedisCluster(masters=3, replicas=1) as cluster:
        client = RedisCluster.from_url(cluster.url)
        client.test_prefix = f"cs-{uuid.uuid4().hex[:10]}"  # type: ignore[attr-defined]
        try:
            store = _store(client, slots=6, replica_wait_s=1.0)
            await store.generation("g1")
            tokens = await store.claim(range(6))
            by_partition = {p: _deltas(*(_calls(f"p{p}-s{n}", p + 1) for n in range(5))) for p in range(6)}
            fences = {p: (tokens[p], 10 + p) for p in range(6)}
            ports = {p: client.get_node_from_key(store.layout.token(p)).port for p in range(6)}
            dead_port = ports[0]
            dying = {p for p, port in ports.items() if port == dead_port}
            assert dying != set(range(6))
            master = next(m for m in cluster.masters() if m.port == dead_port)
            replica = cluster.replica_of(master)
            with cluster.client(replica) as direct:  # no failover until the steps are done
                direct.config_set("cluster-replica-no-failover", "yes")
            assert master.pid is not None
            os.kill(master.pid, signal.SIGKILL)
            # As the checkpoint retries them: every step not applied yet, the same sequence. (A
            # step on a healthy master may fail too while the client refreshes its slot map.)
            done: dict[int, bool] = {}
            for _ in range(100):
                left = {p: fences[p] for p in range(6) if p not in done}
                steps = await store.merge_partitions(by_partition, left, sequence=1)
                assert all(isinstance(steps[p], BaseException) for p in dying)
                done.update({p: r for p, r in steps.items() if isinstance(r, bool)})
                if set(done) == set(range(6)) - dying:
                    break
                await asyncio.sleep(0.1)
            assert set(done) == set(range(6)) - dying
            await asyncio.to_thread(cluster.elect, replica)
            stored, _ = await _retried(lambda: store.applied_offsets(range(6)))
            assert stored == {p: 10 + p for p in set(range(6)) - dying}  # all or nothing per partition
            again: dict[int, bool] = {}
            for _ in range(200):
                left = {p: fences[p] for p in dying if p not in again}
                steps = await store.merge_partitions(by_partition, left, sequence=1)
                again.update({p: r for p, r in steps.items() if isinstance(r, bool)})
                if set(again) == dying:
                    break
                await asyncio.sleep(0.1)
            assert again == dict.fromkeys(dying, True)  # applied now, once
            assert await store.applied_offsets(range(6)) == {p: 10 + p for p in range(6)}
            counts, _ = await _retried(lambda: _fold_all(store, tokens))
            assert counts == {f"p{p}-s{n}": p + 1 for p in range(6) for n in range(5)}
        finally:
            await client.aclose()


async def test_outboxes_of_a_partition_tag_that_lost_its_data_are_folded_from_their_start(
    client: RedisCluster,
) -> None:
    """Partition 0's tag loses everything (its master restarted without persistence): its
    outboxes start again from entry 0 in a new epoch, and another slot's cursor into the old
    epoch (past the new entries' positions) skips none of them; the resources of that slot's
    series, merged through partition 0, are still known (copied into the slot by its fold)."""
    store = _store(client, slots=3)
    await store.generation("g1")
    tokens = await store.claim(range(3))
    name = next(f"x{n}" for n in range(100) if series_slot(_calls(f"x{n}", 1).series_id, 3) != 0)
    for offset in range(1, 4):
        await store.merge(_deltas(_calls(name, 1)), {0: (tokens[0], offset)})
    assert (await _fold_all(store, tokens))[name] == 3  # the slot's cursor: 3 entries in
    async for key in client.scan_iter(match=f"{store.layout.tag(0)}*"):
        await client.delete(key)
    assert (await store.ownership([0])).generation is None  # noticed
    assert "r1" in await store.resources("acme")  # the slot's fold kept a copy of its series' resource
    await store.generation("g2")
    tokens = await store.claim(range(3))
    for offset in range(1, 5):  # four entries: positions 0..3 of the new epoch
        await store.merge(_deltas(_calls(name, 10)), {0: (tokens[0], offset)})
    assert (await _fold_all(store, tokens))[name] == 3 + 40
