"""The Redis store against a real Redis, and the cluster store against a real Redis Cluster (the
same protocol tests, parametrized): merges append to slot logs, the owner's fold commits them;
the memory store folds what it folds.

A series' value is its record plus the unfolded rows of its slot's log; these tests check that
value through ``read_slot`` (a read-only view) and through ``fold_slot`` (what the owner emits),
and that the Lua scripts keep the invariants: fencing, retries, the active-series limit.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from devtools.redis_cluster import EmbeddedRedisCluster
from state.cluster_store import ClusterKeys, ClusterStateStore
from state.codec import attributes_of_parts, delta_payload, encode_meta
from state.fold import series_slot
from state.keys import KeySpace
from state.memory_store import MemoryStore
from state.protocol import FencedError, SeriesStore
from state.redis_store import RedisStateStore
from worker.model.exphistogram import ExpHistogram
from worker.model.series import (
    MetricDescriptor,
    MetricKind,
    Series,
    Temporality,
    TenantDeltas,
    with_companions,
)
from worker.otlp.metrics_encoder import encode_requests, fit_otlp

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


async def _fold_all(
    store: RedisStateStore, tokens: dict[int, int], tenant: str = "acme", **kwargs: Any
) -> list[Series]:
    """Fold every slot as its owner (claiming the slots not claimed yet); the series emitted."""
    missing = [slot for slot in range(store.slots) if slot not in tokens]
    tokens.update(await store.claim(missing))
    emitted: list[Series] = []
    for slot in range(store.slots):
        result = await store.fold_slot(tenant, slot, tokens[slot], **kwargs)
        assert result.committed
        emitted.extend(with_companions(result.live))  # as the encoder writes them out
    for series in emitted:  # emitted from their OTLP encoding; typed again for the assertions
        if series.attribute_parts is not None:
            series.attributes = attributes_of_parts(series.attribute_parts)
    return emitted


async def _log_lengths(client: Redis, store: RedisStateStore, tenant: str = "acme") -> list[int]:
    """Entries waiting per slot (on a cluster: in every partition's outbox for the slot)."""
    if isinstance(store, ClusterStateStore):
        outbox = store.layout.outbox
        return [
            sum([int(await client.llen(outbox(tenant, source, slot))) for source in range(store.slots)])
            for slot in range(store.slots)
        ]
    return [int(await client.llen(store.keys.log(tenant, slot))) for slot in range(store.slots)]


@pytest.fixture
async def cluster_client(
    redis_cluster: EmbeddedRedisCluster, unique_name: str
) -> AsyncIterator[RedisCluster]:
    """A client on the session's Redis Cluster; keys named after ``unique_name`` deleted afterwards."""
    on_cluster = RedisCluster.from_url(redis_cluster.url)
    try:
        yield on_cluster
    finally:
        keys = [key async for key in on_cluster.scan_iter(match=f"*{unique_name}*", count=1000)]
        for key in keys:
            await on_cluster.delete(key)
        await on_cluster.aclose()


@pytest.fixture(params=["node", "cluster"])
def client(request: pytest.FixtureRequest) -> Any:
    """The store tests run on one Redis node and on a Redis Cluster."""
    return request.getfixturevalue("redis_client" if request.param == "node" else "cluster_client")


def _new(client: Any, name: str, **options: Any) -> RedisStateStore:
    """The store for the client: a RedisStateStore on one node, a ClusterStateStore on a cluster."""
    if isinstance(client, RedisCluster):
        return ClusterStateStore(client, ClusterKeys(name, "in"), **options)
    return RedisStateStore(client, KeySpace(name, "in"), **options)


def _slot_key(store: RedisStateStore, slot: int, tenant: str = "acme") -> str:
    """Where the slot's records live."""
    if isinstance(store, ClusterStateStore):
        return store.layout.records(tenant, slot)
    return store.keys.slot(tenant, slot)


def _version_key(store: RedisStateStore, slot: int, tenant: str = "acme") -> str:
    if isinstance(store, ClusterStateStore):
        return store.layout.version(tenant, slot)
    return store.keys.version(tenant, slot)


def _active_key(store: RedisStateStore, slot: int, tenant: str = "acme") -> str:
    """The tenant's active-series count (per slot on a cluster, where it is summed)."""
    if isinstance(store, ClusterStateStore):
        return store.layout.active(tenant, slot)
    return store.keys.active(tenant)


@pytest.fixture
def store(client: Any, unique_name: str) -> RedisStateStore:
    return _new(client, unique_name, slots=4, max_exemplars=3, exp_max_size=20)


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
    assert await store.active_series("acme") == 0  # counted when the owner folds it in
    assert [s.count for s in await _fold_all(store, {0: tokens[0]})] == [5]
    assert (await _all(store))["duration"] == merged
    assert await store.active_series("acme") == 1


async def test_exponential_histograms_fold_exactly(store: RedisStateStore) -> None:
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


async def test_the_owners_fold_commits_the_log_and_emits_the_cumulative_values(
    client: Any, store: RedisStateStore
) -> None:
    tokens = await store.claim([0])
    await store.merge(_deltas(_series("calls\x1er1\x1ea", count=2)), {0: (tokens[0], 1)})
    await store.merge(_deltas(_series("calls\x1er1\x1ea", count=3)), {0: (tokens[0], 2)})
    assert sum(await _log_lengths(client, store)) == 2  # one entry per merge and slot
    emitted = await _fold_all(store, tokens)
    assert [s.count for s in emitted] == [5]
    assert await _log_lengths(client, store) == [0] * store.slots
    assert (await _all(store))["calls"].count == 5  # now in the record
    assert await store.active_series("acme") == 1
    # Idle: emitted again with the same cumulative value, nothing written.
    assert [s.count for s in await _fold_all(store, tokens)] == [5]


async def test_rows_appended_while_the_owner_folds_wait_for_the_next_fold(
    store: RedisStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = await store.claim([0])
    await store.merge(_deltas(_series("calls\x1er1\x1ea", count=1)), {0: (tokens[0], 1)})
    name = "_read" if isinstance(store, ClusterStateStore) else "_read_slot_and_log"
    read = getattr(store, name)

    async def read_then_merge(escaped: str, slot: int) -> Any:
        snapshot = await read(escaped, slot)
        # Another worker's flush lands between the owner's read and its commit.
        await store.merge(_deltas(_series("calls\x1er1\x1ea", count=10)), {0: (tokens[0], 2)})
        return snapshot

    monkeypatch.setattr(store, name, read_then_merge)
    tokens.update(await store.claim([s for s in range(store.slots) if s != 0]))
    slot = series_slot("calls\x1er1\x1ea", store.slots)
    first = await store.fold_slot("acme", slot, tokens[slot])
    assert [s.count for s in first.live] == [1]
    monkeypatch.undo()
    second = await store.fold_slot("acme", slot, tokens[slot])
    assert [s.count for s in second.live] == [11]  # the late row was kept, and folded once


async def test_a_stale_owner_cannot_fold(store: RedisStateStore, client: Any) -> None:
    tokens = await store.claim(range(store.slots))
    await store.merge(_deltas(_series("calls\x1er1\x1ea", count=1)), {0: (tokens[0], 1)})
    slot = series_slot("calls\x1er1\x1ea", store.slots)
    await store.claim([slot])  # the slot moved to another worker
    result = await store.fold_slot("acme", slot, tokens[slot])
    assert not result.committed and result.live == []
    assert sum(await _log_lengths(client, store)) == 1  # left for the new owner


async def test_tenant_limit_routes_new_series_to_overflow(client: Any, unique_name: str) -> None:
    store = _new(client, unique_name, slots=2, max_exemplars=0, active_series_limit=2)
    tokens = await store.claim([0])
    deltas = [_series(f"calls\x1er1\x1e{i}", count=1) for i in range(5)]
    await store.merge(_deltas(*deltas), {0: (tokens[0], 1)})
    await _fold_all(store, tokens)
    emitted = await _fold_all(store, tokens)  # the overflow rows may land in a slot folded earlier
    assert await store.active_series("acme") == 3  # two admitted series and the overflow series
    series = [s.series for slot in range(2) for s in await store.read_slot("acme", slot)]
    overflow = [s for s in series if s.attributes == (("otel.metric.overflow", True),)]
    assert len(overflow) == 1 and overflow[0].count == 3
    assert sum(s.count for s in series) == 5  # nothing lost, only folded
    assert len(series) == 3
    # The refused series are not published under their own attributes.
    published = sorted((s.attributes == overflow[0].attributes, s.count) for s in emitted)
    assert published == [(False, 1), (False, 1), (True, 3)]


async def test_fold_trims_emitted_exemplars_resets_delta_and_expires(store: RedisStateStore) -> None:
    tokens = await store.claim([0])
    await store.merge(
        _deltas(
            _series("calls\x1er1\x1ea", count=4, exemplars=2),
            _series("events\x1er1\x1eb", count=1, start=NOW),
        ),
        {0: (tokens[0], 1)},
    )
    emitted = await _fold_all(store, tokens, delta_mode=True, reset_emitted_ns=None)
    assert sorted((s.metric, s.count, len(s.exemplars)) for s in emitted) == [
        ("calls", 4, 2),
        ("events", 1, 0),
    ]
    # Published successfully: the next fold forgets the values and exemplars that went out.
    emitted_at = NOW + 10_000_000_000
    again = await _fold_all(store, tokens, delta_mode=True, reset_emitted_ns=emitted_at)
    assert again == []  # DELTA: nothing new, nothing to publish
    kept = (await _all(store))["calls"]
    assert kept.count == 0 and kept.exemplars == []
    assert kept.start_ns == emitted_at  # the next delta starts at that emission

    await store.merge(_deltas(_series("calls\x1er1\x1ea", count=4, exemplars=2)), {0: (tokens[0], 2)})
    third = await _fold_all(store, tokens, delta_mode=True, reset_emitted_ns=emitted_at)
    assert [(s.metric, s.count, s.start_ns) for s in third] == [("calls", 4, emitted_at)]

    # Idle since NOW (events) and since NOW (calls' delta): past the cut-off both expire.
    assert await _fold_all(store, tokens, expire_before_ns=NOW + 1_000_000) == []
    assert await _all(store) == {}
    assert await store.active_series("acme") == 0


async def test_a_failed_publication_is_not_forgotten(store: RedisStateStore) -> None:
    tokens = await store.claim([0])
    await store.merge(_deltas(_series("calls\x1er1\x1ea", count=4, exemplars=2)), {0: (tokens[0], 1)})
    await _fold_all(store, tokens, delta_mode=True)
    # No reset time: the previous publication is not known to have succeeded, so it goes again.
    again = await _fold_all(store, tokens, delta_mode=True, reset_emitted_ns=None)
    assert [(s.count, len(s.exemplars)) for s in again] == [(4, 2)]


async def test_a_changed_partition_count_is_refused(client: Any, unique_name: str) -> None:
    from worker.model.errors import StateError

    await _new(client, unique_name, slots=8, max_exemplars=0).check_layout()
    await _new(client, unique_name, slots=8, max_exemplars=0).check_layout()
    with pytest.raises(StateError, match="written for 8 partitions"):
        await _new(client, unique_name, slots=12, max_exemplars=0).check_layout()


def test_the_cached_meta_follows_the_value_types_not_only_the_series_id(store: RedisStateStore) -> None:
    # 200 and "200" are spelled the same in a series id; the stored attributes keep the type.
    as_int = _series("calls\x1er1\x1ecode=200", count=1)
    as_str = _series("calls\x1er1\x1ecode=200", count=1)
    as_str.attributes = tuple(
        (k, str(v)) if k == "http.status_code" else (k, v) for k, v in as_int.attributes
    )
    first = store.packer.constants(as_int)[2]
    assert store.packer.constants(_series("calls\x1er1\x1ecode=200", count=2))[2] is first  # cached
    assert store.packer.constants(as_str)[2] != first
    assert store.packer.constants(as_int)[2] == first


async def test_two_owners_under_the_tenant_limit_lose_nothing(client: Any, unique_name: str) -> None:
    """Two workers, each owning half the slots, both merging deltas of every slot while the
    tenant's limit refuses most new series: whichever owner refuses a series, its counts reach
    the overflow series (possibly in the other owner's slot) exactly once."""
    limit = 5
    stores = [
        _new(client, unique_name, slots=4, max_exemplars=0, active_series_limit=limit) for _ in range(2)
    ]
    first = await stores[0].claim([0, 1])
    second = await stores[1].claim([2, 3])
    owners = {slot: (stores[0], first[slot]) for slot in (0, 1)} | {
        slot: (stores[1], second[slot]) for slot in (2, 3)
    }
    rng = random.Random(11)
    produced = 0
    for round_number in range(6):
        for index, (store, tokens) in enumerate(((stores[0], first), (stores[1], second))):
            deltas = []
            for _ in range(15):
                count = rng.randint(1, 4)
                produced += count
                deltas.append(_series(f"calls\x1er1\x1ek{rng.randint(0, 40)}", count=count))
            partition = next(iter(tokens))
            await store.merge(
                _deltas(*deltas), {partition: (tokens[partition], round_number * 2 + index + 1)}
            )
        for slot in rng.sample(range(4), 4):  # the owners' emissions interleave in any order
            store, token = owners[slot]
            assert (await store.fold_slot("acme", slot, token)).committed
    for _ in range(2):  # overflow rows routed to slots already folded this round
        for slot, (store, token) in owners.items():
            await store.fold_slot("acme", slot, token)
    series = [s.series for slot in range(4) for s in await stores[0].read_slot("acme", slot)]
    assert sum(s.count for s in series) == produced
    overflow = [s for s in series if s.attributes == (("otel.metric.overflow", True),)]
    assert len(overflow) == 1 and overflow[0].count > 0
    assert len(series) == limit + 1  # the admitted ones and the one overflow series
    assert await stores[0].active_series("acme") == limit + 1


async def test_paired_series_count_once_against_the_tenant_limit(client: Any, unique_name: str) -> None:
    """The limit counts label sets: a duration record standing for its calls counter is one
    active series (README); the pair is admitted or refused as a whole, the overflow too."""
    store = _new(client, unique_name, slots=2, max_exemplars=0, active_series_limit=3)
    tokens = await store.claim([0])
    deltas = [_series(f"duration\x1er1\x1e{i}", count=i + 1, buckets=[i + 1, 0]) for i in range(4)]
    for delta in deltas:
        delta.companion = "calls"
    await store.merge(_deltas(*deltas), {0: (tokens[0], 1)})
    await _fold_all(store, tokens)
    await _fold_all(store, tokens)  # the overflow rows may land in a slot folded earlier
    # Three pairs admitted (3 label sets, at the limit); the fourth goes to the overflow pair,
    # which is never refused and counts as one more.
    assert await store.active_series("acme") == 4
    series = [s.series for slot in range(2) for s in await store.read_slot("acme", slot)]
    assert sorted(s.metric for s in series) == ["calls"] * 4 + ["duration"] * 4
    for metric in ("calls", "duration"):
        assert sum(s.count for s in series if s.metric == metric) == 1 + 2 + 3 + 4
        overflow = [
            s for s in series if s.metric == metric and s.attributes == (("otel.metric.overflow", True),)
        ]
        assert len(overflow) == 1
    records = [int(await client.hlen(_slot_key(store, slot))) for slot in range(2)]
    assert sum(records) == 4  # one record per pair


async def test_an_upgraded_worker_folds_the_separate_calls_record_into_the_pair(
    store: RedisStateStore, client: Any
) -> None:
    """State of an earlier version: calls and duration stored as two records. The first paired
    row makes the duration record stand for the counter and the calls record leaves; the
    counter goes on from where it was, and the tenant's active count follows."""
    calls = _series("calls\x1er1\x1ea", count=5)
    duration = _series("duration\x1er1\x1ea", count=5, buckets=[2, 3])
    slot = series_slot(duration.series_id, store.slots)
    assert series_slot(calls.series_id, store.slots) == slot
    for old in (calls, duration):
        payload = delta_payload(old, encode_meta(old))[:8]  # records of earlier versions end here
        await client.hset(_slot_key(store, slot), old.digest, msgpack.packb(payload, use_bin_type=True))
    await client.set(_active_key(store, slot), 2)
    tokens = await store.claim([0])
    update = _series("duration\x1er1\x1ea", count=2, buckets=[1, 1])
    update.companion = "calls"
    await store.merge(_deltas(update), {0: (tokens[0], 1)})
    emitted = await _fold_all(store, tokens)
    assert sorted((s.metric, s.count, s.start_ns) for s in emitted) == [
        ("calls", 7, NOW),
        ("duration", 7, NOW),
    ]
    # One label set now (the pair counts once); the separate calls record that left took one.
    assert await store.active_series("acme") == 1
    assert await client.hkeys(_slot_key(store, slot)) == [duration.digest]


# ---------------------------------------------------------------------------------------- the memory twin

_TWIN_DESCRIPTORS = {
    "calls": MetricDescriptor("calls", MetricKind.SUM, order=0, zero_init=True),
    "duration": MetricDescriptor("duration", MetricKind.HISTOGRAM, bounds=(1.0, 10.0), order=1),
    "size": MetricDescriptor("size", MetricKind.EXPONENTIAL_HISTOGRAM, order=2, zero_init=True),
}
_TWIN_RESOURCES = {"r1": (("service.name", "svc"),), "r2": (("service.name", "other"),)}
#: (series name, kind, count, exemplars): kinds "paired" (duration standing for calls), "calls"
#: (a counter of its own, superseded by a paired record of the same name), "size" (exponential).
#: Names "a" to "c" belong to resource r1, "d" and "e" to r2.
_delta = st.tuples(
    st.sampled_from("abcde"),
    st.sampled_from(["paired", "calls", "size"]),
    st.integers(1, 5),
    st.integers(0, 2),
)
#: (deltas, seconds to the flush, whether the flush's publication is confirmed)
_flushes = st.lists(
    st.tuples(st.lists(_delta, max_size=8), st.sampled_from([10, 30]), st.booleans()),
    min_size=1,
    max_size=4,
)


def _twin_delta(name: str, kind: str, count: int, exemplars: int, now_ns: int) -> Series:
    metric = "duration" if kind == "paired" else kind
    resource = "r1" if name in "abc" else "r2"
    series = _series(f"{metric}\x1e{resource}\x1ename={name}", count=count, start=now_ns - 5_000_000_123)
    series.resource_id = resource
    series.attributes = (("name", name), ("code", 200))
    series.last_ns = now_ns - 1_000_000_456
    series.exemplars = [(b"t" * 16, bytes([n]) * 8, float(n), now_ns - n) for n in range(exemplars)]
    if kind == "paired":
        series.buckets, series.companion = [count, 0, count], "calls"
    elif kind == "size":
        series.exp = ExpHistogram(max_size=20)
        for n in range(count):
            series.exp.record(0.5 + n * 3.25)
    return series


def _canonical(live: list[Series]) -> list[Series]:
    """Live series in one order for both stores: a Redis hash does not keep insertion order."""
    return sorted(live, key=lambda s: (s.metric, s.resource_id, s.attribute_parts or []))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flushes=_flushes,
    slots=st.integers(1, 3),
    limit=st.sampled_from([0, 2, 5]),
    delta=st.booleans(),
    expiration_s=st.sampled_from([0, 20]),
    resource_expiration_s=st.sampled_from([0, 20, 35]),
)
# A refused new series, then the same series again beside the overflow series' first row: a
# cluster pulls the refused row from the slot's own outbox after the others, one node has it
# first in the log; the overflow series meets the limit first on both.
@example(
    flushes=[
        ([("a", "paired", 1, 0), ("b", "paired", 1, 0), ("d", "paired", 1, 0)], 10, False),
        ([("a", "paired", 1, 0), ("d", "paired", 1, 0)], 30, False),
    ],
    slots=2,
    limit=2,
    delta=False,
    expiration_s=20,
    resource_expiration_s=0,
)
@pytest.mark.parametrize("on_cluster", [False, True], ids=["node", "cluster"])
def test_the_memory_store_folds_what_the_redis_store_folds(
    redis_url: str,
    redis_cluster: EmbeddedRedisCluster,
    on_cluster: bool,
    flushes: list[tuple[list[tuple[str, str, int, int]], int, bool]],
    slots: int,
    limit: int,
    delta: bool,
    expiration_s: int,
    resource_expiration_s: int,
) -> None:
    """The same flushes through both stores, each folded by the owner of every slot as the
    emitter folds them: the same fold results and the same encoded requests (zero points
    included), the same resource last-seen times and forgetting, flush by flush."""
    temporality = Temporality.DELTA if delta else Temporality.CUMULATIVE

    async def run() -> None:
        prefix = f"twin-{uuid.uuid4().hex[:12]}"
        client: Any = RedisCluster.from_url(redis_cluster.url) if on_cluster else Redis.from_url(redis_url)
        options: dict[str, Any] = {"slots": slots, "max_exemplars": 2, "exp_max_size": 20}
        redis = _new(client, prefix, active_series_limit=limit, **options)
        memory = MemoryStore(active_series_limit=limit, **options)
        stores: tuple[SeriesStore, SeriesStore] = (redis, memory)
        try:
            tokens = [await store.claim(range(slots)) for store in stores]
            assert tokens[0] == tokens[1]
            now, previous = NOW, None
            for offset, (rows, advance_s, confirmed) in enumerate(flushes, start=1):
                now += advance_s * 1_000_000_000
                deltas = {"acme": TenantDeltas(resources={}, series=[])}
                seen = set()
                for name, kind, count, exemplars in rows:
                    if (name, kind) not in seen:  # one delta per series and flush, as take_deltas gives
                        seen.add((name, kind))
                        one = _twin_delta(name, kind, count, exemplars, now)
                        deltas["acme"].series.append(one)
                        deltas["acme"].resources[one.resource_id] = _TWIN_RESOURCES[one.resource_id]
                for store, owned in zip(stores, tokens, strict=True):
                    fences = {p: (token, offset if p == 0 else -1) for p, token in owned.items()}
                    await store.merge(deltas, fences)
                    if offset == 1:
                        await store.merge(deltas, fences)  # a duplicate: nothing changes
                resource_before = now - resource_expiration_s * 10**9 if resource_expiration_s else 0
                seen = [await store.resource_seen("acme") for store in stores]
                assert seen[0] == seen[1]
                for slot in range(slots):
                    results = [
                        await store.fold_slot(
                            "acme",
                            slot,
                            owned[slot],
                            expire_before_ns=now - expiration_s * 1_000_000_000 if expiration_s else 0,
                            delta_mode=delta,
                            reset_emitted_ns=previous,
                            now_ns=now,
                            resource_expire_before_ns=resource_before,
                            resource_seen_ns=seen[0] if resource_before else None,
                        )
                        for store, owned in zip(stores, tokens, strict=True)
                    ]
                    from_redis, from_memory = results
                    assert from_redis.committed and from_memory.committed
                    assert (from_memory.overflowed, from_memory.expired) == (
                        from_redis.overflowed,
                        from_redis.expired,
                    )
                    assert _canonical(from_memory.live) == _canonical(from_redis.live)
                    assert sorted(from_memory.zero_owed) == sorted(from_redis.zero_owed)
                    assert from_memory.version == from_redis.version
                    encoded = []
                    for store, result in zip(stores, results, strict=True):
                        live = _canonical(result.live)
                        for series in live:
                            fit_otlp(series)
                        requests = encode_requests(
                            await store.resources("acme"), live, _TWIN_DESCRIPTORS, temporality, now, 1 << 40,
                            reuse_attribute_tuples=False,
                        )  # fmt: skip
                        encoded.append([request.data for request in requests])
                    assert encoded[0] == encoded[1]
                    if confirmed:  # the publication went out: its zero points are owed no more
                        confirms = [
                            await store.confirm_zero(
                                "acme", slot, owned[slot], result.version, result.zero_owed
                            )
                            for store, owned, result in zip(stores, tokens, results, strict=True)
                        ]
                        assert confirms == [True, True]
                if resource_before:
                    stale = [rid for rid, last in seen[0].items() if last < resource_before]
                    forgotten = [
                        await store.forget_resources("acme", stale, resource_before) for store in stores
                    ]
                    assert forgotten[0] == forgotten[1] == len(stale)
                    assert await redis.resource_seen("acme") == await memory.resource_seen("acme")
                previous = now if confirmed else None
                for slot in range(slots):  # records and the rows left in the log (refused series)
                    held = [
                        sorted((s.digest, repr(s.series)) for s in await store.read_slot("acme", slot))
                        for store in stores
                    ]
                    assert held[0] == held[1]
                assert await memory.active_series("acme") == await redis.active_series("acme")
                assert await memory.applied_offsets([0]) == await redis.applied_offsets([0]) == {0: offset}
        finally:
            keys = [key async for key in client.scan_iter(match=f"*{prefix}*")]
            for key in keys:
                await client.delete(key)
            await client.aclose()

    asyncio.run(run())


# ---------------------------------------------------------------------------------------- issue 16


async def test_a_zero_point_stays_pinned_across_owners_until_a_publication_is_confirmed(
    store: RedisStateStore, client: Any
) -> None:
    """upstream: tempo registry counter_test.go Test_counter (0 at getEndOfLastMinuteMs, then the
    value, in one collection). Across owners the zero point keeps its time, so sent again it is
    the same sample, never a 0 after a value (a counter reset)."""
    calls = _series("calls\x1er1\x1ea", count=2, start=NOW - 7_000_000_000)
    slot = series_slot(calls.series_id, store.slots)
    first = await store.claim([slot])
    await store.merge(_deltas(calls), {slot: (first[slot], 1)})
    now = NOW + 15_000_000_000
    zero_ns = NOW - 1_000_000_000  # the end of the minute before the flush (NOW is on a minute)
    (series,) = (await store.fold_slot("acme", slot, first[slot], now_ns=now)).live
    assert series.zero_ns == zero_ns
    # The owner lost the slot before its publication was confirmed: the next owner sends the
    # same zero point (a new token proves nothing about the old owner's publication).
    second = await store.claim([slot])
    await store.merge(_deltas(_series("calls\x1er1\x1ea", count=1)), {slot: (second[slot], 2)})
    (series,) = (await store.fold_slot("acme", slot, second[slot], now_ns=now + 60_000_000_000)).live
    assert (series.zero_ns, series.count) == (zero_ns, 3)
    # Its publication is confirmed: the record forgets the zero point.
    (series,) = (
        await store.fold_slot("acme", slot, second[slot], now_ns=now + 75_000_000_000, reset_emitted_ns=now)
    ).live
    assert series.zero_ns == 0
    (record,) = (await client.hgetall(_slot_key(store, slot))).values()
    assert msgpack.unpackb(record, raw=True)[9] == 0


async def test_a_record_written_by_an_earlier_version_folds_without_a_zero_point(
    store: RedisStateStore, client: Any
) -> None:
    calls = _series("calls\x1er1\x1ea", count=4)
    slot = series_slot(calls.series_id, store.slots)
    tokens = await store.claim([slot])
    for fields in (8, 9):  # before the companion field, before the zero field
        legacy = msgpack.packb(delta_payload(calls, encode_meta(calls))[:fields], use_bin_type=True)
        await client.hset(_slot_key(store, slot), calls.digest, legacy)
        (series,) = (await store.fold_slot("acme", slot, tokens[slot], now_ns=NOW + 10**9)).live
        assert (series.count, series.zero_ns) == (4, 0)


async def test_resource_last_seen_times_are_maxed_at_merge_and_forgotten_only_while_stale(
    store: RedisStateStore,
) -> None:
    """metrics_expiration needs a resource's last-seen time whichever slot its series live in
    (upstream PR #31106: per resource). A max: a replayed or late merge cannot lower it."""
    tokens = await store.claim([0])
    newer = _series("calls\x1er1\x1ea", count=1, start=NOW)
    older = _series("calls\x1er1\x1eb", count=1, start=NOW - 50_000_000_000)
    await store.merge(_deltas(newer), {0: (tokens[0], 1)})
    await store.merge(_deltas(older), {0: (tokens[0], 2)})  # a replay of older spans
    assert await store.resource_seen("acme") == {"r1": NOW}
    assert await store.forget_resources("acme", ["r1", "nope"], NOW) == 0  # not before the cut-off
    assert await store.forget_resources("acme", ["r1"], NOW + 1_000) == 1
    assert await store.resource_seen("acme") == {}
    await store.merge(_deltas(older), {0: (tokens[0], 3)})
    assert await store.resource_seen("acme") == {"r1": NOW - 50_000_000_000}


async def test_a_confirmed_publication_clears_the_zero_point_at_once_and_only_once(
    store: RedisStateStore, client: Any
) -> None:
    """confirm.lua: written right after the publication is confirmed, so the slot's next owner
    does not send the zero point again; fenced and a compare-and-set on the slot's version."""
    calls = _series("calls\x1er1\x1ea", count=2, start=NOW - 7_000_000_000)
    slot = series_slot(calls.series_id, store.slots)
    first = await store.claim([slot])
    await store.merge(_deltas(calls), {slot: (first[slot], 1)})
    fold = await store.fold_slot("acme", slot, first[slot], now_ns=NOW + 15_000_000_000)
    ((digest, _),) = fold.zero_owed
    assert fold.version == 1 and digest == calls.digest
    assert await store.confirm_zero("acme", slot, first[slot], fold.version, fold.zero_owed)
    # Late or repeated: the version moved on; nothing changes.
    assert not await store.confirm_zero("acme", slot, first[slot], fold.version, fold.zero_owed)
    second = await store.claim([slot])
    (series,) = (await store.fold_slot("acme", slot, second[slot], now_ns=NOW + 30_000_000_000)).live
    assert (series.zero_ns, series.count) == (0, 2)
    # A fenced owner's confirmation is refused; an expired record is not brought back.
    assert not await store.confirm_zero("acme", slot, first[slot], 2, fold.zero_owed)
    await client.hdel(_slot_key(store, slot), digest)
    version = int(await client.get(_version_key(store, slot)) or 0)
    assert await store.confirm_zero("acme", slot, second[slot], version, fold.zero_owed)
    assert await client.hgetall(_slot_key(store, slot)) == {}
