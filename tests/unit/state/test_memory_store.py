"""The in-memory store: merge.lua's and fold.lua's rules in Python (fencing, retries, offsets,
half-edges, the active-series limit), and the paired series it folds (moved from the processors'
tests of the earlier, separate memory store)."""

from __future__ import annotations

import pytest

from state.fold import overflow_series_id, series_slot
from state.memory_store import MemoryStore
from state.protocol import FencedError
from worker.model.series import OVERFLOW_ATTRIBUTE, SERIES_ID_SEPARATOR, Series, TenantDeltas, with_companions

US = 1_000


def _paired_series(count: int, start_us: int, last_us: int, exemplars: int = 1, name: str = "1") -> Series:
    last = last_us * US
    return Series(
        series_id=f"duration{SERIES_ID_SEPARATOR}r{SERIES_ID_SEPARATOR}a={name}",
        metric="duration",
        resource_id="r",
        attributes=(("a", name),),
        start_ns=start_us * US,
        last_ns=last,
        count=count,
        sum=2.5 * count,
        buckets=[count, 0],
        exemplars=[(b"t" * 16, bytes([n]) * 8, 2.5, last) for n in range(exemplars)],
        companion="calls",
    )


def _calls(name: str, count: int = 1, last_us: int = 100) -> Series:
    return Series(
        series_id=f"calls{SERIES_ID_SEPARATOR}r{SERIES_ID_SEPARATOR}a={name}",
        metric="calls",
        resource_id="r",
        attributes=(("a", name),),
        start_ns=last_us * US,
        last_ns=last_us * US,
        count=count,
    )


def _one(*series: Series) -> dict[str, TenantDeltas]:
    return {"t": TenantDeltas(resources={"r": (("service.name", "svc"),)}, series=list(series))}


async def test_a_paired_series_is_stored_once_and_emitted_as_two() -> None:
    store = MemoryStore(slots=1, max_exemplars=5)
    [token] = (await store.claim([0])).values()
    await store.merge(_one(_paired_series(2, 100, 150)), {0: (token, 1)})
    await store.merge(_one(_paired_series(3, 200, 250)), {0: (token, 2)})
    fold = await store.fold_slot("t", 0, token)
    assert fold.committed and fold.emitted == 2
    assert await store.active_series("t") == 1  # one label set for the limit, emitted as two
    duration, calls = with_companions(fold.live)
    assert (duration.metric, calls.metric) == ("duration", "calls")
    assert (calls.count, calls.start_ns, calls.last_ns) == (5, 100 * US, 250 * US)
    assert (duration.count, duration.buckets) == (5, [5, 0])
    assert len(calls.exemplars) == len(duration.exemplars) == 2
    # Once the emission is confirmed, the next fold forgets its exemplars, not its values.
    duration, calls = with_companions((await store.fold_slot("t", 0, token, reset_emitted_ns=300 * US)).live)
    assert (calls.count, calls.exemplars, duration.exemplars) == (5, [], [])


async def test_delta_emits_the_companion_and_resets_at_each_emission() -> None:
    store = MemoryStore(slots=1, max_exemplars=5)
    [token] = (await store.claim([0])).values()
    await store.merge(_one(_paired_series(2, 100, 150)), {0: (token, 1)})
    duration, calls = with_companions((await store.fold_slot("t", 0, token, delta_mode=True)).live)
    assert (calls.count, calls.start_ns, len(calls.exemplars)) == (2, 100 * US, 1)
    assert calls.exemplars is duration.exemplars
    nothing = await store.fold_slot("t", 0, token, delta_mode=True, reset_emitted_ns=300 * US)
    assert nothing.committed and nothing.live == []  # nothing new: neither metric is emitted
    await store.merge(_one(_paired_series(4, 500, 550, exemplars=0)), {0: (token, 2)})
    fold = await store.fold_slot("t", 0, token, delta_mode=True, reset_emitted_ns=400 * US)
    duration, calls = with_companions(fold.live)
    # Both start at the slot's last emission.
    assert (calls.count, calls.start_ns, calls.exemplars) == (4, 400 * US, [])
    assert (duration.count, duration.start_ns, duration.buckets) == (4, 400 * US, [4, 0])


async def test_a_series_keeps_its_first_start_time() -> None:
    store = MemoryStore(slots=2, max_exemplars=0)
    tokens = await store.claim([0, 1])
    await store.merge(_one(_calls("x", 2, 100)), {0: (tokens[0], 1)})
    slot = series_slot(_calls("x").series_id, 2)
    await store.fold_slot("t", slot, tokens[slot])
    await store.merge(_one(_calls("x", 3, 250)), {0: (tokens[0], 2)})
    [stored] = await store.read_slot("t", slot)
    assert (stored.series.count, stored.series.start_ns, stored.series.last_ns) == (5, 100 * US, 250 * US)
    assert stored.series.attributes == (("a", "x"),)
    assert await store.read_slot("t", 1 - slot) == []


async def test_merge_is_fenced_and_a_retry_applies_nothing() -> None:
    store = MemoryStore(slots=2, max_exemplars=0)
    old = await store.claim([0, 1])
    new = await store.claim([1])
    assert await store.owns(old) == {0}
    with pytest.raises(FencedError) as raised:
        await store.merge(_one(_calls("x")), {0: (old[0], 5), 1: (old[1], 5)})
    assert raised.value.partition == 1
    assert await store.applied_offsets([0, 1]) == {} and await store.tenants() == []
    fences = {0: (old[0], 5), 1: (new[1], -1)}
    await store.merge(_one(_calls("x")), fences, {0: b"edges", 1: b"", 7: b"not fenced"})
    await store.merge(_one(_calls("x")), fences, {0: b"edges", 1: b"", 7: b"not fenced"})  # lost reply
    assert await store.applied_offsets([0, 1]) == {0: 5}  # -1: no progress recorded
    assert await store.read_pending([0, 1, 7]) == {0: b"edges"}
    assert await store.tenants() == ["t"]
    assert await store.resources("t") == {"r": (("service.name", "svc"),)}
    slot = series_slot(_calls("x").series_id, 2)
    [stored] = await store.read_slot("t", slot)
    assert stored.series.count == 1
    # An older offset never moves the applied one back; an empty blob clears the half-edges.
    await store.merge(_one(_calls("x")), {0: (old[0], 3)}, {0: b""})
    assert await store.applied_offsets([0]) == {0: 5} and await store.read_pending([0]) == {}
    [stored] = await store.read_slot("t", slot)
    assert stored.series.count == 2


async def test_a_fold_with_a_stale_token_commits_nothing() -> None:
    store = MemoryStore(slots=1, max_exemplars=0)
    [token] = (await store.claim([0])).values()
    await store.merge(_one(_calls("x")), {0: (token, 1)})
    await store.claim([0])
    result = await store.fold_slot("t", 0, token)
    assert not result.committed and result.live == []
    assert await store.active_series("t") == 0
    [stored] = await store.read_slot("t", 0)  # still in the log
    assert stored.series.count == 1


async def test_new_series_past_the_limit_go_to_the_overflow_series() -> None:
    store = MemoryStore(slots=1, max_exemplars=0, active_series_limit=2)
    [token] = (await store.claim([0])).values()
    deltas = _one(*(_calls(f"s{n}", count=n) for n in range(1, 7)))
    await store.merge(deltas, {0: (token, 1)})
    first = await store.fold_slot("t", 0, token)
    assert (first.overflowed, [s.count for s in first.live]) == (4, [1, 2])
    assert await store.active_series("t") == 2
    # The refused rows wait in the overflow series' log; the overflow series is never refused.
    second = await store.fold_slot("t", 0, token)
    assert (second.overflowed, [s.count for s in second.live]) == (0, [1, 2, 3 + 4 + 5 + 6])
    assert await store.active_series("t") == 3
    overflow = [s.series for s in await store.read_slot("t", 0)][-1]
    assert (overflow.metric, overflow.attributes) == ("calls", ((OVERFLOW_ATTRIBUTE, True),))
    assert series_slot(overflow_series_id("calls", "r"), 1) == 0


async def test_expired_series_leave_the_slot_and_the_count() -> None:
    store = MemoryStore(slots=1, max_exemplars=0)
    [token] = (await store.claim([0])).values()
    await store.merge(_one(_calls("old", last_us=100), _paired_series(1, 500, 500)), {0: (token, 1)})
    await store.fold_slot("t", 0, token)
    assert await store.active_series("t") == 2  # a calls series and a pair: two label sets
    result = await store.fold_slot("t", 0, token, expire_before_ns=200 * US)
    assert result.expired == 1 and [s.metric for s in result.live] == ["duration"]
    assert await store.active_series("t") == 1


async def test_a_merge_applies_only_above_each_partitions_watermark() -> None:
    """merge.lua's rule: applied iff the sequence is above what every fenced partition applied
    under the same token; a late, repeated or overtaken merge is a no-op, not an error."""
    store = MemoryStore(slots=2, max_exemplars=0)
    tokens = await store.claim([0, 1])
    fences = {p: (token, -1) for p, token in tokens.items()}
    assert await store.merge(_one(_calls("x", 2)), fences, sequence=2)
    assert not await store.merge(_one(_calls("x", 5)), fences, sequence=1)  # late: overtaken
    assert not await store.merge(_one(_calls("x", 2)), fences, sequence=2)  # repeated
    # Partition 1 is claimed again: its epoch starts afresh, but partition 0 already applied 2.
    tokens.update(await store.claim([1]))
    fences = {p: (token, -1) for p, token in tokens.items()}
    assert not await store.merge(_one(_calls("x", 7)), fences, sequence=2)
    assert await store.merge(_one(_calls("x", 3)), fences, sequence=3)
    [stored] = await store.read_slot("t", series_slot(_calls("x").series_id, 2))
    assert stored.series.count == 5


async def test_a_fold_commits_only_on_the_version_it_read() -> None:
    """fold.lua's compare-and-set: a fold decided on an older version of the slot writes nothing."""
    store = MemoryStore(slots=1, max_exemplars=0)
    [token] = (await store.claim([0])).values()
    await store.merge(_one(_calls("x", 2)), {0: (token, 1)})
    tenant = store._tenants["t"]
    late = store._plan(tenant.slot(0), limit=0, delta_mode=False)  # read, its commit delayed
    assert (await store.fold_slot("t", 0, token)).committed  # the retry commits: version 1
    await store.merge(_one(_calls("x", 3)), {0: (token, 2)})
    assert store._commit_fold(tenant, 0, token, late, folded=1, version=0) is None
    [stored] = await store.read_slot("t", 0)
    assert stored.series.count == 5 and len(tenant.slot(0).log) == 1
