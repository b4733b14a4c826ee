"""The store's generation marker on a real Redis (and its memory twin): how a worker tells that Redis
lost its data, and how several workers noticing it at once agree on one new generation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from redis.asyncio import Redis

from devtools.servers import create_topics
from state.keys import KeySpace
from state.memory_store import MemoryStore
from state.protocol import FencedError, SeriesStore
from state.redis_store import RedisStateStore

from .helpers import Observed, RunningWorker, make_settings, produce, read_until, span_count, traces


def _store(client: Redis, name: str, slots: int = 4) -> RedisStateStore:
    return RedisStateStore(client, KeySpace(name, "in"), slots=slots, max_exemplars=0)


async def test_workers_detecting_a_loss_at_once_converge_on_one_generation(
    redis_client: Redis, unique_name: str
) -> None:
    stores = [_store(redis_client, unique_name) for _ in range(5)]
    first = await asyncio.gather(*(s.generation(f"g{i}") for i, s in enumerate(stores)))
    assert len(set(first)) == 1
    marker = first[0]
    assert (await stores[0].generation("other")) == marker  # it stays once made
    assert (await stores[1].ownership([])).generation == marker

    await redis_client.delete(*[k async for k in redis_client.scan_iter(match=f"{unique_name}*")])
    assert (await stores[0].ownership([0, 1])).generation is None  # lost: the marker is gone
    again = await asyncio.gather(*(s.generation(f"h{i}") for i, s in enumerate(stores)))
    assert len(set(again)) == 1 and again[0] != marker


async def test_tokens_of_a_new_generation_never_match_tokens_of_the_lost_one(
    redis_client: Redis, unique_name: str
) -> None:
    """After a loss, claims would restart at 1: a worker still holding token 1 of the old state
    would pass the fence. The new generation's tokens start above every earlier one."""
    store = _store(redis_client, unique_name)
    await store.generation("g1")
    old = await store.claim([0, 1])
    seen = await store.ownership([0, 1, 3])
    assert seen.generation == "g1" and seen.tokens[0] == old[0] and seen.tokens[1] == old[1]
    assert 3 in seen.tokens  # every partition has a token from the start

    await redis_client.delete(*[k async for k in redis_client.scan_iter(match=f"{unique_name}*")])
    assert (await store.ownership([0, 1])).tokens == {}
    await store.generation("g2")
    new = await store.claim([0, 1])
    assert all(new[p] > old[p] for p in (0, 1))
    # The old owner's merge is fenced (this is what merge.lua checks).
    try:
        await store.merge({}, {0: (old[0], 10)})
    except FencedError as exc:
        assert exc.partition == 0
    else:
        raise AssertionError("a token of the lost generation passed the fence")


async def test_the_generation_leaves_existing_tokens_alone(redis_client: Redis, unique_name: str) -> None:
    """An upgrade from a version without the marker: the state is not lost, tokens stay."""
    store = _store(redis_client, unique_name)
    tokens = await store.claim([0, 2])
    await store.generation("g1")
    assert (await store.ownership([0, 2])).tokens == tokens
    assert await store.owns(tokens) == {0, 2}


async def test_the_memory_store_keeps_the_generation_as_the_redis_store_does(
    redis_client: Redis, unique_name: str
) -> None:
    stores: list[SeriesStore] = [_store(redis_client, unique_name), MemoryStore(slots=4, max_exemplars=0)]
    for store in stores:
        assert (await store.ownership([0])).generation is None
        before = await store.claim([1])
        assert await store.generation("g1") == "g1"
        assert await store.generation("g2") == "g1"
        seen = await store.ownership([0, 1, 9])
        assert seen.generation == "g1"
        assert seen.tokens[1] == before[1]  # kept
        assert seen.tokens[0] > 1_600_000_000_000_000  # from the clock, in microseconds
        assert 9 not in seen.tokens  # not a partition of the topic
        assert await store.claim([0]) == {0: seen.tokens[0] + 1}
        assert seen.applied == {}
        tokens = await store.claim([0, 1])
        await store.merge({}, {0: (tokens[0], 42), 1: (tokens[1], -1)})
        assert (await store.ownership([0, 1])).applied == {0: 42}


async def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_merge_fenced_by_a_loss_is_recovered_from(
    kafka_bootstrap: str, redis_client: Redis, redis_url: str, unique_name: str
) -> None:
    """The loss lands between the flush's check and its merge: the merge is FENCED (the tokens are
    gone), the checkpoint resets to Redis and owns nothing; the check after it finds the loss and
    takes the partitions back from the committed offsets. Flushes are driven by the test."""
    settings = make_settings(kafka_bootstrap, redis_url, unique_name, metrics_flush_interval="1h")
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 2, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    before, after = traces(20, seed=3), traces(30, seed=4)
    spans_before = span_count(r for _, r in before)
    spans_after = span_count(r for _, r in after)
    async with RunningWorker(settings, "lost") as running:
        worker = running.worker
        await _wait(lambda: sorted(worker.tokens) == [0, 1], 30, "the assignment")
        await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in before])
        await _wait(lambda: worker.stats.spans == spans_before, 30, "the first spans consumed")
        assert await worker.flush() is not None
        first = await read_until(
            kafka_bootstrap, f"{unique_name}-out", lambda o: o.total() == spans_before, timeout=30
        )
        assert first.total() == spans_before

        held = worker.rebalance.held()
        await redis_client.delete(*[k async for k in redis_client.scan_iter(match=f"{unique_name}:*")])
        await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in after])
        await _wait(lambda: worker.stats.spans == spans_before + spans_after, 30, "the next spans consumed")

        assert await worker.checkpoint.run() is False  # type: ignore[union-attr]
        assert worker.tokens == {} and worker.assigned == [0, 1]  # stalled: not ready, lag from commits
        assert worker.stats.state_lost == 0
        assert await worker.rebalance.check_state(held) is True
        assert sorted(worker.tokens) == [0, 1] and worker.stats.state_lost == 1
        assert (await worker.rebalance.check_state()) is False  # adopted: no second loss
        # The spans of the second batch are read again from the committed offsets (the end of the first).
        await _wait(
            lambda: worker.stats.spans == spans_before + 2 * spans_after, 30, "the next spans read again"
        )
        started = time.time_ns()
        assert await worker.flush() is not None

        def calls_since(observed: Observed) -> int:
            return sum(v for (_, m, _), (_, t, v) in observed.latest.items() if m == "calls" and t >= started)

        second = await read_until(
            kafka_bootstrap, f"{unique_name}-out", lambda o: calls_since(o) == spans_after, timeout=30
        )
    # Counts restart: only the second batch, under series with a new start time.
    assert calls_since(second) == spans_after
    first_emission = max(t for _, t, _ in first.latest.values())
    assert all(start > first_emission for start, t, _ in second.latest.values() if t >= started)


async def test_a_merge_onto_state_that_went_back_is_refused_by_both_stores(
    redis_client: Redis, unique_name: str
) -> None:
    """A failover to a replica that was behind, between the worker's state check and its merge:
    the merge must not move the offsets on from the replica's older ones (the records between
    would never be counted); it is refused, nothing written, and the state check recovers."""
    from state.protocol import StateBehindError
    from worker.model.series import TenantDeltas

    redis_store = _store(redis_client, unique_name)
    memory_store = MemoryStore(slots=4, max_exemplars=0)
    stores: list[SeriesStore] = [redis_store, memory_store]
    for store in stores:
        [token] = (await store.claim([0])).values()
        assert await store.merge({}, {0: (token, 10)}, sequence=1, applied={})
        assert await store.merge({}, {0: (token, 20)}, sequence=2, applied={0: 10})
    # The replica had only the first step.
    await redis_client.hset(redis_store.keys.offsets, "0", "10")
    memory_store._offsets[0] = 10
    for store in stores:
        [token] = (await store.ownership([0])).tokens.values()
        deltas = {"t": TenantDeltas()}
        try:
            await store.merge(deltas, {0: (token, 30)}, sequence=3, applied={0: 20})
        except StateBehindError as exc:
            assert exc.partition == 0
        else:
            raise AssertionError(f"{type(store).__name__} applied a merge onto state that went back")
        assert await store.applied_offsets([0]) == {0: 10}
        # The same step from a writer that saw what the store holds applies.
        assert await store.merge({}, {0: (token, 30)}, sequence=4, applied={0: 10})
        assert await store.applied_offsets([0]) == {0: 30}
