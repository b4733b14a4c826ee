"""Invariants 2 and 3 across membership changes: one emitter per series, start times kept."""

from __future__ import annotations

import asyncio
import itertools
import time

from devtools.servers import create_topics

from .helpers import Observed, RunningWorker, make_settings, produce, read_until, span_count, traces


async def _setup(kafka: str, name: str, count: int, seed: int = 3) -> int:
    await create_topics(kafka, {f"{name}-in": 8, f"{name}-out": 2, f"{name}-dlq": 1})
    batch = traces(count, seed=seed)
    await produce(kafka, f"{name}-in", [(k, r.SerializeToString()) for k, r in batch])
    return span_count(r for _, r in batch)


async def _settled(*workers: RunningWorker, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owned = [set(w.worker.tokens) for w in workers]
        if all(owned) and sum(len(o) for o in owned) == 8 and not set.intersection(*owned):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"group did not settle: {[sorted(w.worker.tokens) for w in workers]}")


async def test_joining_worker_takes_slots_without_double_emission(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, unique_name)
    expected = await _setup(kafka_bootstrap, unique_name, 200)
    out = f"{unique_name}-out"
    async with RunningWorker(settings, "first") as first:
        await read_until(kafka_bootstrap, out, lambda o: o.total() >= expected, timeout=60)
        async with RunningWorker(settings, "second") as second:
            await _settled(first, second)
            await asyncio.sleep(1.5)  # let flushes that started before the settle finish
            since = time.time_ns()
            await asyncio.sleep(4)
            observed = await read_until(kafka_bootstrap, out, lambda o: False, timeout=3)

    window = {key: [(t, w) for t, w in emitted if t >= since] for key, emitted in observed.emissions.items()}
    live = {key: emitted for key, emitted in window.items() if emitted}
    # None missing: every series known at the end is emitted, every flush (1 s) of the window.
    assert set(live) == set(observed.latest)
    assert all(len(emitted) >= 3 for emitted in live.values()), min(len(e) for e in live.values())
    # One emitter: within the settled window each series comes from exactly one worker ...
    assert all(len({w for _, w in emitted}) == 1 for emitted in live.values())
    # ... both workers emit (the slots moved with the partitions) ...
    assert {w for emitted in live.values() for _, w in emitted} == {"first", "second"}
    # ... and never twice per flush: consecutive emissions are about one interval apart.
    for emitted in live.values():
        times = sorted(t for t, _ in emitted)
        assert all(b - a > 0.5e9 for a, b in itertools.pairwise(times))
    assert observed.total() == expected


async def test_start_times_survive_restarts(kafka_bootstrap: str, redis_url: str, unique_name: str) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, unique_name)
    expected = await _setup(kafka_bootstrap, unique_name, 60, seed=5)
    out = f"{unique_name}-out"
    async with RunningWorker(settings, "before"):
        before = await read_until(kafka_bootstrap, out, lambda o: o.total() >= expected, timeout=60)
    starts = before.start_times()

    more = traces(60, seed=5)  # the same services and operations again: the same series
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in more])
    expected += span_count(r for _, r in more)
    async with RunningWorker(settings, "after"):
        after = await read_until(
            kafka_bootstrap, out, lambda o: o.total() >= expected, timeout=60, observed=Observed()
        )
    assert after.total() == expected
    restarted = after.start_times()
    common = set(starts) & set(restarted)
    assert common, "the second run should update series of the first"
    assert all(restarted[key] == starts[key] for key in common)
