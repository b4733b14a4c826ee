"""The Redis store's Lua scripts against a real Redis: they must agree with the pure merge."""

from __future__ import annotations

import random

import pytest
from redis.asyncio import Redis

from state.keys import KeySpace
from state.store import FencedError, RedisStateStore
from worker.series import Series, merge_series
from worker.spanmetrics.exphistogram import ExpHistogram
from worker.spanmetrics.processor import TenantDeltas

NOW = 1_800_000_000_000_000_000


def _series(series_id: str, *, count: int, buckets: list[int] | None = None, exp: ExpHistogram | None = None,
            start: int = NOW, exemplars: int = 0) -> Series:  # fmt: skip
    return Series(
        series_id=series_id,
        metric=series_id.split("\x1e")[0],
        resource_id="r1",
        attributes=(("service.name", "svc"), ("http.status_code", 200), ("ok", True), ("ratio", 0.5)),
        start_ns=start,
        last_ns=start,
        count=count,
        sum=float(count) * 1.5,
        buckets=buckets,
        exp=exp,
        exemplars=[(b"t" * 16, b"s" * 8, 1.0, NOW + i * 1000) for i in range(exemplars)],
    )


def _deltas(*series: Series) -> dict[str, TenantDeltas]:
    return {"acme": TenantDeltas(resources={"r1": (("service.name", "svc"),)}, series=list(series))}


async def _all(store: RedisStateStore, tenant: str = "acme") -> dict[str, Series]:
    result = {}
    for slot in range(store.slots):
        for stored in await store.read_slot(tenant, slot):
            result[stored.series.metric] = stored.series
    return result


@pytest.fixture
def store(redis_client: Redis, unique_name: str) -> RedisStateStore:
    return RedisStateStore(
        redis_client, KeySpace(unique_name, "in"), slots=4, max_exemplars=3, exp_max_size=20
    )


async def test_merge_sums_counts_buckets_and_keeps_types_and_start(store: RedisStateStore) -> None:
    tokens = await store.claim([0])
    first = _series("duration\x1er1\x1ea", count=2, buckets=[1, 1, 0], exemplars=2)
    second = _series(
        "duration\x1er1\x1ea", count=3, buckets=[0, 1, 2], start=NOW + 5_000_000_000, exemplars=2
    )
    await store.merge(_deltas(first), {0: (tokens[0], 10)})
    await store.merge(_deltas(second), {0: (tokens[0], 20)})
    merged = (await _all(store))["duration"]
    assert merged.count == 5
    assert merged.buckets == [1, 2, 2]
    assert merged.sum == pytest.approx(7.5)
    assert merged.start_ns == NOW  # creation time, never moved by later deltas
    assert merged.attributes == first.attributes  # int, bool, float kept
    assert len(merged.exemplars) == 3  # capped at max_exemplars
    assert await store.applied_offsets([0, 1]) == {0: 20}
    assert await store.active_series("acme") == 1


async def test_exponential_merge_in_lua_equals_python_merge(store: RedisStateStore) -> None:
    rng = random.Random(5)
    tokens = await store.claim([0])
    expected = ExpHistogram(max_size=20)
    for round_number in range(6):
        delta = ExpHistogram(max_size=20)
        for _ in range(50):
            delta.record(rng.lognormvariate(round_number, 2.0))
        expected.merge(delta)
        await store.merge(
            _deltas(_series("duration\x1er1\x1ee", count=delta.count, exp=delta)),
            {0: (tokens[0], round_number)},
        )
    stored = (await _all(store))["duration"].exp
    assert stored is not None
    assert (stored.scale, stored.offset, stored.zero_count) == (
        expected.scale,
        expected.offset,
        expected.zero_count,
    )
    assert stored.counts == expected.counts
    assert stored.count == expected.count == 300


async def test_a_stale_token_changes_nothing(store: RedisStateStore) -> None:
    old = await store.claim([0])
    await store.claim([0])  # another worker took the partition over
    with pytest.raises(FencedError):
        await store.merge(_deltas(_series("calls\x1er1\x1ea", count=1)), {0: (old[0], 99)})
    assert await store.applied_offsets([0]) == {}
    assert await _all(store) == {}


async def test_tenant_limit_routes_new_series_to_overflow(redis_client: Redis, unique_name: str) -> None:
    store = RedisStateStore(
        redis_client, KeySpace(unique_name, "in"), slots=2, max_exemplars=0, active_series_limit=2
    )
    tokens = await store.claim([0])
    deltas = [_series(f"calls\x1er1\x1e{i}", count=1) for i in range(5)]
    result = await store.merge(_deltas(*deltas), {0: (tokens[0], 1)})
    assert result.overflowed == 3
    series = [s.series for slot in range(2) for s in await store.read_slot("acme", slot)]
    overflow = [s for s in series if s.attributes == (("otel.metric.overflow", True),)]
    assert len(overflow) == 1 and overflow[0].count == 3
    assert sum(s.count for s in series) == 5  # nothing lost, only folded


async def test_after_emit_trims_exemplars_subtracts_delta_and_expires(store: RedisStateStore) -> None:
    tokens = await store.claim([0])
    await store.merge(
        _deltas(
            _series("calls\x1er1\x1ea", count=4, exemplars=2),
            _series("events\x1er1\x1eb", count=1, start=NOW),
        ),
        {0: (tokens[0], 1)},
    )
    for slot in range(store.slots):
        stored = await store.read_slot("acme", slot)
        await store.after_emit(
            "acme",
            slot,
            stored,
            expire_before_ns=NOW + 1_000_000,
            delta_mode=True,
            now_ns=NOW + 10_000_000_000,
        )
    # Both were idle since NOW, before the cut-off: expired and no longer counted as active.
    assert await _all(store) == {}
    assert await store.active_series("acme") == 0

    await store.merge(_deltas(_series("calls\x1er1\x1ea", count=4, exemplars=2)), {0: (tokens[0], 2)})
    for slot in range(store.slots):
        stored = await store.read_slot("acme", slot)
        await store.after_emit(
            "acme", slot, stored, expire_before_ns=0, delta_mode=True, now_ns=NOW + 20_000_000_000
        )
    kept = (await _all(store))["calls"]
    assert kept.count == 0 and kept.exemplars == []
    assert kept.start_ns == NOW + 20_000_000_000  # the next delta starts at this emission


def test_python_merge_matches_expectations_used_above() -> None:
    target = _series("calls\x1er1\x1ea", count=1, exemplars=2)
    merge_series(target, _series("calls\x1er1\x1ea", count=2, exemplars=2), max_exemplars=3)
    assert target.count == 3 and len(target.exemplars) == 3


async def test_a_changed_partition_count_is_refused(redis_client: Redis, unique_name: str) -> None:
    from worker.exceptions import StateError

    await RedisStateStore(redis_client, KeySpace(unique_name, "in"), slots=8, max_exemplars=0).check_layout()
    await RedisStateStore(redis_client, KeySpace(unique_name, "in"), slots=8, max_exemplars=0).check_layout()
    with pytest.raises(StateError, match="written for 8 partitions"):
        await RedisStateStore(
            redis_client, KeySpace(unique_name, "in"), slots=12, max_exemplars=0
        ).check_layout()
