"""Late, duplicated and reordered state requests against a real Redis, and the memory store in
lockstep: random interleavings of merges and folds from several writers, with claims in between,
keep exact totals and never let a series go backwards (README, "How it stays correct").

A request is delivered late the way the network does it: the store's request (the Lua script's
arguments for Redis; the commit of a fold or the whole merge for the memory store) is captured
when it is sent, its sender sees a timeout, and the test delivers it later, after whatever the
sender did next (a retry, newer merges and folds, another writer's claim).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeout

from state.codec import attributes_of_parts
from state.keys import KeySpace
from state.memory_store import MemoryStore
from state.protocol import FencedError, SeriesStore
from state.redis_store import RedisStateStore
from worker.model.series import Series, TenantDeltas

PARTITIONS = 3
WRITERS = 3
TENANT = "acme"
NOW = 1_800_000_000_000_000_000
SeriesKey = tuple[str, tuple[tuple[str, Any], ...]]


def count_at(partition: int, offset: int) -> int:
    """The ``calls`` count of the input record at ``offset`` of ``partition``."""
    return 1 + (partition + offset) % 3


def calls_below(partition: int, offset: int) -> int:
    return sum(count_at(partition, o) for o in range(offset))


def _delta(metric: str, name: str, count: int) -> Series:
    return Series(
        series_id=f"{metric}\x1er1\x1ek={name}",
        metric=metric,
        resource_id="r1",
        attributes=(("k", name),),
        start_ns=NOW,
        last_ns=NOW,
        count=count,
    )


class GaveUp(Exception):
    """Every attempt of a merge timed out: its outcome is unknown."""


# ------------------------------------------------------------------------------------ the network


@dataclass
class Network:
    """Between the writers and one store: delivers, holds (to deliver late), or loses replies."""

    mode: str = "deliver"
    held: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    late_delivered: int = 0

    async def send(self, request: Callable[[], Awaitable[Any]]) -> Any:
        mode = self.mode
        if mode in ("hold", "duplicate"):
            self.held.append(request)  # to be delivered later
            if mode == "hold":
                raise RedisTimeout("held by the network")
        try:
            reply = await request()
        except FencedError:  # the memory store's merge raises what merge.lua replies
            if mode == "lose_reply":
                raise RedisTimeout("reply lost") from None
            raise
        if mode == "lose_reply":
            raise RedisTimeout("reply lost")
        return reply

    async def deliver(self, index: int) -> None:
        request = self.held.pop(index % len(self.held))
        self.late_delivered += 1
        with contextlib.suppress(FencedError):  # the memory store's merge raises what Lua replies
            await request()


def wire(store: SeriesStore, network: Network) -> None:
    """Route the store's state-changing requests through ``network``."""
    if isinstance(store, RedisStateStore):
        for name in ("_merge", "_fold"):
            script = getattr(store, name)

            def call(*, args: list[Any], _script: Any = script) -> Awaitable[Any]:
                return network.send(lambda: _script(args=args))

            setattr(store, name, call)
    else:
        assert isinstance(store, MemoryStore)
        merge, commit_fold = store.merge, store._commit_fold

        async def send_merge(*args: Any, **kwargs: Any) -> Any:
            return await network.send(lambda: merge(*args, **kwargs))

        def send_fold(*args: Any, **kwargs: Any) -> Any:
            # The memory store commits synchronously: a held commit raises here and now.
            mode = network.mode
            if mode in ("hold", "duplicate"):
                network.held.append(_ready(lambda: commit_fold(*args, **kwargs)))
                if mode == "hold":
                    raise RedisTimeout("held by the network")
            result = commit_fold(*args, **kwargs)
            if mode == "lose_reply":
                raise RedisTimeout("reply lost")
            return result

        store.merge = send_merge  # type: ignore[method-assign]
        store._commit_fold = send_fold  # type: ignore[method-assign]


def _ready(call: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return call()

    return run


# ------------------------------------------------------------------------------------ the writers

#: How each attempt of a merge goes: the first attempt, then the retries (the same sequence).
MERGE_ATTEMPTS = {
    "deliver": ["deliver"],
    "duplicate": ["duplicate"],  # delivered, and a copy of it delivered again later
    "lose_reply": ["lose_reply", "deliver"],  # applied, reply lost, retried
    "late_retry": ["hold", "deliver"],  # held, retried on: the first one arrives late
    "give_up": ["hold", "hold"],  # held and so are the retries: the outcome is unknown
}


class Writer:
    """One worker as the checkpoint and the emitter drive the store: the partitions it believes
    it owns, where it reads each one, its pending service-graph units, its merge sequence."""

    def __init__(self, store: SeriesStore, network: Network, published: list[tuple[SeriesKey, int]]) -> None:
        self.store = store
        self.network = network
        self.published = published
        self.tokens: dict[int, int] = {}
        self.position: dict[int, int] = {}
        self.pending: dict[int, int] = {}
        self.sequence = 0
        self.unsettled: dict[int, int] | None = None

    async def claim(self, partitions: set[int]) -> str:
        tokens = await self.store.claim(partitions)
        self.tokens.update(tokens)
        await self._rewind(partitions)
        return f"claimed {sorted(tokens.items())}"

    async def _rewind(self, partitions: set[int]) -> None:
        """Resume from the offsets and half-edges stored in Redis."""
        applied = await self.store.applied_offsets(partitions)
        pending = await self.store.read_pending(partitions)
        for partition in partitions:
            self.position[partition] = applied.get(partition, 0)
            self.pending[partition] = int(pending.get(partition) or b"0")

    async def _reset(self) -> None:
        """Fenced: forget what another writer owns now, resume the rest from Redis."""
        owned = await self.store.owns(self.tokens)
        for partition in set(self.tokens) - owned:
            del self.tokens[partition]
        await self._rewind(owned)

    async def _merge(self, mode: str, deltas: dict[str, TenantDeltas], fences: dict[int, tuple[int, int]],
                     pending: dict[int, bytes] | None) -> bool:  # fmt: skip
        self.sequence += 1
        for attempt in MERGE_ATTEMPTS[mode]:
            self.network.mode = attempt
            try:
                return bool(await self.store.merge(deltas, fences, pending, sequence=self.sequence))
            except RedisTimeout:
                continue
            finally:
                self.network.mode = "deliver"
        self.unsettled = {p: token for p, (token, _) in fences.items()}
        raise GaveUp

    async def _settle(self) -> None:
        """As the checkpoint does: a newer merge overtakes the unsettled one, then a rewind."""
        assert self.unsettled is not None
        held = {p: t for p, t in self.unsettled.items() if self.tokens.get(p) == t}
        if held:
            with contextlib.suppress(FencedError):
                await self._merge("deliver", {}, {p: (t, -1) for p, t in held.items()}, None)
            await self._reset()
        self.unsettled = None

    async def flush(self, records: int, expire: bool, mode: str) -> str:
        """Read ``records`` more records of every partition held, optionally expire the pending
        units (service-graph expiry: deltas without new offsets), merge as ``mode`` says."""
        if not self.tokens:
            return "owns nothing"
        if self.unsettled is not None:
            await self._settle()
            if not self.tokens:
                return "settled; owns nothing"
        series: dict[str, Series] = {}
        pending = dict(self.pending)
        fences = {}
        for partition, token in sorted(self.tokens.items()):
            start = self.position[partition]
            for offset in range(start, start + records):
                name = f"c{(partition * 5 + offset) % 4}"
                found = series.setdefault(name, _delta("calls", name, 0))
                found.count += count_at(partition, offset)
            pending[partition] += records
            if expire and pending[partition]:
                series[f"e{partition}"] = _delta("edges", f"p{partition}", pending[partition])
                pending[partition] = 0
            fences[partition] = (token, start + records if records else -1)
        deltas = {
            TENANT: TenantDeltas(resources={"r1": (("service.name", "svc"),)}, series=list(series.values()))
        }
        blobs = {p: str(units).encode() if units else b"" for p, units in pending.items() if p in fences}
        try:
            applied = await self._merge(mode, deltas, fences, blobs)
        except FencedError:
            await self._reset()
            return "fenced"
        except GaveUp:
            return "gave up"
        for partition, (_, offset) in fences.items():
            if offset >= 0:
                self.position[partition] = offset
        self.pending.update(pending)
        return "applied" if applied else "seen"

    async def fold(self, slot: int, mode: str) -> str:
        """Fold ``slot`` with the token this writer holds for it (stale or not); publish what
        a committed fold returns."""
        if slot not in self.tokens:
            return "not held"
        self.network.mode = mode
        try:
            result = await self.store.fold_slot(TENANT, slot, self.tokens[slot])
        except RedisTimeout:
            return "timed out"
        finally:
            self.network.mode = "deliver"
        if not result.committed:
            return "not committed"
        for series in result.live:  # as the encoder reads them
            attributes = attributes_of_parts(series.attribute_parts) if series.attribute_parts else ()
            self.published.append(((series.metric, tuple(attributes or series.attributes)), series.count))
        return f"committed {len(result.live)}"


# ------------------------------------------------------------------------------------ the checks


async def stored_totals(store: SeriesStore) -> dict[SeriesKey, int]:
    """Every series' value as stored (records plus rows not folded yet)."""
    totals: dict[SeriesKey, int] = {}
    for slot in range(PARTITIONS):
        for stored in await store.read_slot(TENANT, slot):
            key = (stored.series.metric, tuple(stored.series.attributes or ()))
            totals[key] = totals.get(key, 0) + stored.series.count
    return totals


async def check_exact(store: SeriesStore, before: dict[SeriesKey, int]) -> dict[SeriesKey, int]:
    """What is stored is exactly what the applied offsets cover; no series went down."""
    applied = await store.applied_offsets(range(PARTITIONS))
    pending = await store.read_pending(range(PARTITIONS))
    totals = await stored_totals(store)
    calls = sum(n for (metric, _), n in totals.items() if metric == "calls")
    edges = sum(n for (metric, _), n in totals.items() if metric == "edges")
    assert calls == sum(calls_below(p, applied.get(p, 0)) for p in range(PARTITIONS)), (calls, applied)
    units = edges + sum(int(blob) for blob in pending.values())
    assert units == sum(applied.values()), (edges, pending, applied)
    went_down = {key: (was, totals.get(key, 0)) for key, was in before.items() if totals.get(key, 0) < was}
    assert not went_down, went_down
    return totals


def never_backwards(published: list[tuple[SeriesKey, int]]) -> list[tuple[SeriesKey, int, int]]:
    last: dict[SeriesKey, int] = {}
    problems = []
    for key, value in published:
        if value < last.get(key, 0):
            problems.append((key, last[key], value))
        last[key] = max(last.get(key, 0), value)
    return problems


# ------------------------------------------------------------------------------------ the property

_writer = st.integers(0, WRITERS - 1)
_actions = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), _writer, st.sets(st.integers(0, PARTITIONS - 1), min_size=1)),
        st.tuples(
            st.just("flush"),
            _writer,
            st.integers(0, 3),
            st.booleans(),
            st.sampled_from(sorted(MERGE_ATTEMPTS)),
        ),
        st.tuples(
            st.just("fold"),
            _writer,
            st.integers(0, PARTITIONS - 1),
            st.sampled_from(["deliver", "duplicate", "lose_reply", "hold"]),
        ),
        st.tuples(st.just("late"), st.integers(0, 1000)),
    ),
    min_size=8,
    max_size=50,
)


async def play(store: SeriesStore, actions: list[tuple[Any, ...]]) -> tuple[list[str], dict[str, int]]:
    """Run ``actions`` against ``store``: what each did, and figures of the run."""
    network = Network()
    wire(store, network)
    published: list[tuple[SeriesKey, int]] = []
    writers = [Writer(store, network, published) for _ in range(WRITERS)]
    outcomes = [await writers[0].claim(set(range(PARTITIONS)))]
    totals = await check_exact(store, {})
    for action in actions:
        kind = action[0]
        if kind == "claim":
            outcomes.append(await writers[action[1]].claim(action[2]))
        elif kind == "flush":
            outcomes.append(await writers[action[1]].flush(action[2], action[3], action[4]))
        elif kind == "fold":
            outcomes.append(await writers[action[1]].fold(action[2], action[3]))
        elif network.held:
            await network.deliver(action[1])
            outcomes.append("late delivery")
        totals = await check_exact(store, totals)
        assert never_backwards(published) == []
    held_at_the_end = len(network.held)
    # The held rest arrives after a last writer took every partition over; it changes nothing.
    last = Writer(store, network, published)
    await last.claim(set(range(PARTITIONS)))
    while network.held:
        await network.deliver(0)
        totals = await check_exact(store, totals)
    end = {p: last.position[p] + 2 for p in range(PARTITIONS)}
    assert await last.flush(2, True, "deliver") == "applied"
    for _ in range(2):  # rows routed while folding wait for the next fold
        for slot in range(PARTITIONS):
            assert (await last.fold(slot, "deliver")).startswith("committed")
    totals = await check_exact(store, totals)
    final = dict(published[-len(totals) :])  # the last round published every series
    assert sum(n for (metric, _), n in final.items() if metric == "calls") == sum(
        calls_below(p, end[p]) for p in range(PARTITIONS)
    )
    assert sum(n for (metric, _), n in final.items() if metric == "edges") == sum(end.values())
    assert never_backwards(published) == []
    return outcomes, {"late": network.late_delivered, "held at the end": held_at_the_end}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=_actions)
def test_late_duplicated_and_reordered_requests_keep_totals_exact(
    redis_url: str, actions: list[tuple[Any, ...]]
) -> None:
    """Three writers merge, fold and claim in random order while the network duplicates, delays
    and reorders their requests: after every step what is stored is exactly what the applied
    offsets cover, no series goes down, what is published never goes backwards, and the memory
    store answers every step as Redis does."""

    async def run() -> None:
        prefix = f"late-{uuid.uuid4().hex[:12]}"
        client = Redis.from_url(redis_url)
        try:
            redis = RedisStateStore(client, KeySpace(prefix, "in"), slots=PARTITIONS, max_exemplars=0)
            memory = MemoryStore(slots=PARTITIONS, max_exemplars=0)
            from_redis, _ = await play(redis, actions)
            for kind in sorted({outcome.split(" ")[0] for outcome in from_redis}):
                event(kind)  # pytest --hypothesis-show-statistics: what the examples exercised
            from_memory, _ = await play(memory, actions)
            assert from_memory == from_redis
        finally:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    asyncio.run(run())


async def test_a_late_merge_overtaken_by_a_newer_one_is_not_applied(
    redis_client: Redis, unique_name: str
) -> None:
    """The simplest case, spelled out: merge 1 is held, its retry applies, merge 2 applies (a
    service-graph expiry, no new offsets), then merge 1 arrives: nothing changes."""
    store = RedisStateStore(redis_client, KeySpace(unique_name, "in"), slots=1, max_exemplars=0)
    network = Network()
    wire(store, network)
    writer = Writer(store, network, [])
    await writer.claim({0})
    assert await writer.flush(2, False, "late_retry") == "applied"
    assert await writer.flush(0, True, "deliver") == "applied"
    before = await check_exact(store, {})
    await network.deliver(0)
    assert await check_exact(store, before) == before
    assert before[("calls", (("k", "c0"),))] + before[("calls", (("k", "c1"),))] == calls_below(0, 2)


async def test_a_late_fold_overtaken_by_a_newer_one_writes_nothing(
    redis_client: Redis, unique_name: str
) -> None:
    """Fold 1 is held; the next fold commits, more rows arrive, then fold 1 arrives: without the
    compare-and-set it would write its older records over the newer ones and trim rows it never
    folded."""
    store = RedisStateStore(redis_client, KeySpace(unique_name, "in"), slots=1, max_exemplars=0)
    network = Network()
    wire(store, network)
    writer = Writer(store, network, [])
    await writer.claim({0})
    assert await writer.flush(2, False, "deliver") == "applied"
    assert await writer.fold(0, "hold") == "timed out"
    assert (await writer.fold(0, "deliver")).startswith("committed")
    assert await writer.flush(3, False, "deliver") == "applied"
    before = await check_exact(store, {})
    await network.deliver(0)
    assert await check_exact(store, before) == before
    assert (await writer.fold(0, "deliver")).startswith("committed")
    assert never_backwards(writer.published) == []
