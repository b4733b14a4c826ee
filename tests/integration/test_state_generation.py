"""The store's generation marker on a real Redis (and its memory twin): how a worker tells that Redis
lost its data, and how several workers noticing it at once agree on one new generation."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from state.keys import KeySpace
from state.memory_store import MemoryStore
from state.protocol import FencedError, SeriesStore
from state.redis_store import RedisStateStore


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
