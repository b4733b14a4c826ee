"""The Redis store's folds over the state its owner keeps (state.hot), against a real Redis: each
fold emits and commits exactly what the pure fold over the slot as read from Redis right before
gives, and the kept records stay the slot's records, through merges, idle folds, expiries,
exemplars, zero points and their confirmation, the series limit, and the kept state made wrong
mid-way (dropped, another writer, a new token, a stale owner)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from state.codec import parts_of
from state.fold import fold_log
from state.keys import KeySpace
from state.protocol import fold_result
from state.redis_store import RedisStateStore
from worker.model.series import Series, TenantDeltas

pytestmark = pytest.mark.asyncio

NOW = 1_800_000_000_000_000_000
SECOND = 1_000_000_000
TENANT = "acme"


def _series(index: int, count: int, at: int, exemplar: bool) -> Series:
    histogram = index % 3 != 0
    return Series(
        series_id=f"{'duration' if histogram else 'calls'}\x1er{index % 2}\x1eop{index}",
        metric="duration" if histogram else "calls",
        resource_id=f"r{index % 2}",
        attributes=(("span.name", f"op{index}"), ("http.status_code", 200)),
        start_ns=at,
        last_ns=at,
        count=count,
        sum=count * 1.5,
        buckets=[count, 0, 0] if histogram else None,
        exemplars=[(b"t" * 16, b"s" * 8, 1.0, at)] if exemplar else [],
        companion="calls" if histogram else None,
    )


def _identity(series: Series) -> tuple[str, str, list[bytes]]:
    return series.metric, series.resource_id, series.attribute_parts or []


def _same_records(store: RedisStateStore, slot: int, stored: dict[bytes, bytes]) -> None:
    """The kept records are the slot's, but those of quiet series, not kept."""
    hot = store._hot[TENANT, slot]
    assert hot.records.keys() == stored.keys()
    for digest, record in hot.records.items():
        assert record == stored[digest] or (record is None and digest in hot.quiet)


@pytest.mark.parametrize(("seed", "delta_mode"), [(1, False), (2, False), (3, False), (4, True)])
async def test_folds_over_the_kept_state_are_the_folds_over_the_slot_read_from_redis(
    redis_client: Redis, unique_name: str, seed: int, delta_mode: bool
) -> None:
    rng = random.Random(seed)
    store = RedisStateStore(
        redis_client, KeySpace(unique_name, "in"), slots=2, max_exemplars=2, active_series_limit=12
    )
    tokens = await store.claim([0, 1])
    offset = 0
    clock = NOW
    published: dict[int, int] = {}
    folds_from_memory = 0
    for _ in range(60):
        clock += 5 * SECOND
        action = rng.random()
        if action < 0.35:
            offset += 1
            series = [
                _series(rng.randrange(20), rng.randrange(4), clock, rng.random() < 0.3)
                for _ in range(rng.randrange(1, 8))
            ]
            deltas = {TENANT: TenantDeltas(resources={"r0": (), "r1": ()}, series=series)}
            await store.merge(deltas, {p: (tokens[p], offset) for p in tokens})
            continue
        slot = rng.randrange(2)
        if action < 0.40:
            store._hot.clear()  # (a restart of the owner)
        elif action < 0.45:
            # Another writer: a record gone (or a failover that lost it), the version moved on.
            held = await redis_client.hkeys(store.keys.slot(TENANT, slot))
            if held:
                await redis_client.hdel(store.keys.slot(TENANT, slot), rng.choice(held))
            await redis_client.incr(store.keys.version(TENANT, slot))
        elif action < 0.48:
            tokens.update(await store.claim([slot]))  # a new token for this owner
            published.pop(slot, None)
        stale = 0.48 <= action < 0.51
        token = tokens[slot] - 1 if stale else tokens[slot]
        options: dict[str, Any] = {
            "expire_before_ns": clock - 40 * SECOND if rng.random() < 0.3 else 0,
            "reset_emitted_ns": published.get(slot),
            "now_ns": clock,
            "resource_expire_before_ns": clock - 20 * SECOND if rng.random() < 0.2 else 0,
            "resource_seen_ns": {"r0": clock - 10 * SECOND, "r1": clock - 30 * SECOND},
            "delta_mode": delta_mode,
        }
        # The slot as Redis holds it right before the fold, folded by the pure fold.
        before = await redis_client.hgetall(store.keys.slot(TENANT, slot))
        log = await redis_client.lrange(store.keys.log(TENANT, slot), 0, -1)
        version = int(await redis_client.get(store.keys.version(TENANT, slot)) or 0)
        parts = parts_of(await redis_client.hgetall(store.keys.parts(TENANT, slot)))
        reference = fold_log(
            before,
            log,
            parts=parts,
            slots=2,
            max_exemplars=2,
            exp_max_size=160,
            limit=12,
            delta_mode=delta_mode,
            expire_before_us=options["expire_before_ns"] // 1000,
            reset_emitted_us=None if slot not in published else published[slot] // 1000,
            now_us=clock // 1000,
            resource_expire_before_us=options["resource_expire_before_ns"] // 1000,
            resource_seen_us={rid: seen // 1000 for rid, seen in options["resource_seen_ns"].items()},
        )
        folds_from_memory += (TENANT, slot) in store._hot
        result = await store.fold_slot(TENANT, slot, token, **options)
        after = await redis_client.hgetall(store.keys.slot(TENANT, slot))
        changes = reference.updates or reference.created or reference.expired or log
        if stale and changes:
            assert not result.committed and (TENANT, slot) not in store._hot
            assert after == before
            continue
        assert result.committed  # (a fold with nothing to write commits nothing: read only)
        refused = [n for n, new in enumerate(reference.created, 1) if new.digest not in after]
        expected = fold_result(reference, refused, version + 1 if changes else version)
        # The same series and records; their order is the order of the records read (Redis's
        # hash order, or the order the kept records were written in), which nothing relies on.
        assert sorted(result.live, key=_identity) == sorted(expected.live, key=_identity)
        assert sorted(result.zero_owed) == sorted(expected.zero_owed)
        assert (result.version, result.expired, result.overflowed) == (
            expected.version,
            expected.expired,
            expected.overflowed,
        )
        _same_records(store, slot, after)
        if result.zero_owed and rng.random() < 0.8:
            assert await store.confirm_zero(TENANT, slot, token, result.version, result.zero_owed)
            _same_records(store, slot, await redis_client.hgetall(store.keys.slot(TENANT, slot)))
        published[slot] = clock
    assert folds_from_memory > 10
    for record in (await redis_client.hgetall(store.keys.slot(TENANT, 0))).values():
        assert msgpack.unpackb(record, raw=True)


async def test_only_the_slots_held_keep_their_state(redis_client: Redis, unique_name: str) -> None:
    store = RedisStateStore(redis_client, KeySpace(unique_name, "in"), slots=2, max_exemplars=2)
    tokens = await store.claim([0, 1])
    series = [_series(index, 1, NOW, False) for index in range(6)]
    deltas = {TENANT: TenantDeltas(resources={}, series=series)}
    await store.merge(deltas, {p: (tokens[p], 1) for p in tokens})
    for slot in (0, 1):
        assert (await store.fold_slot(TENANT, slot, tokens[slot], now_ns=NOW)).committed
    assert set(store._hot) == {(TENANT, 0), (TENANT, 1)}
    store.hold({1})  # slot 0 given up: its state is read from Redis again if it comes back
    assert set(store._hot) == {(TENANT, 1)}


async def test_kept_state_stays_within_max_kept_series(redis_client: Redis, unique_name: str) -> None:
    series = [_series(index, 1, NOW, False) for index in range(12)]
    deltas = {TENANT: TenantDeltas(resources={}, series=series)}
    sizes = {}
    for budget in (10_000, 0):
        store = RedisStateStore(
            redis_client,
            KeySpace(f"{unique_name}-{budget}", "in"),
            slots=2,
            max_exemplars=2,
            max_kept_series=budget,
        )
        tokens = await store.claim([0, 1])
        await store.merge(deltas, {p: (tokens[p], 1) for p in tokens})
        for slot in (0, 1):
            assert (await store.fold_slot(TENANT, slot, tokens[slot], now_ns=NOW)).committed
        sizes[budget] = {key[1]: len(hot.records) for key, hot in store._hot.items()}
    assert sizes[0] == {}
    first, second = sizes[10_000][0], sizes[10_000][1]
    assert first and second
    # Room for the first slot's records only: the second is read from Redis at every fold.
    store = RedisStateStore(
        redis_client, KeySpace(f"{unique_name}-small", "in"), slots=2, max_exemplars=2, max_kept_series=first
    )
    tokens = await store.claim([0, 1])
    await store.merge(deltas, {p: (tokens[p], 1) for p in tokens})
    for _ in range(2):
        for slot in (0, 1):
            assert (await store.fold_slot(TENANT, slot, tokens[slot], now_ns=NOW + SECOND)).committed
    assert set(store._hot) == {(TENANT, 0)}
    assert sum(len(hot.records) for hot in store._hot.values()) <= first
