"""A worker frozen (SIGSTOP) past its session timeout: evicted, its partitions move, then it wakes.

The woken worker still believes it owns its partitions and holds deltas for them. Fencing must
refuse its flush (no stale state is written), and it must not publish the slots it lost until
the group has given it partitions again.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.servers import KafkaEndpoint, RedisEndpoint

from .harness import (
    Output,
    ScenarioReport,
    Traffic,
    WorkerProcess,
    assert_clean_run,
    create_scenario_topics,
    fence_tokens,
    stop_all,
    stop_traffic_and_wait,
    wait_for_tokens_to_change,
    write_config,
)

PARTITIONS = 4
FENCED = "fenced: another worker owns a partition; replaying from Redis"


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


async def test_frozen_worker_is_fenced_and_does_not_emit_lost_slots(
    kafka: KafkaEndpoint, redis_server: RedisEndpoint, tmp_path: Path, soak: int, report: ScenarioReport
) -> None:
    name = f"stop-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    session = 3.0
    config = write_config(
        tmp_path / "config.yaml",
        kafka=bootstrap,
        redis=redis_server.url,
        name=name,
        session_timeout=f"{session}s",
    )
    rng = random.Random(7)
    frozen = WorkerProcess(config, tmp_path, "frozen").start()
    other = WorkerProcess(config, tmp_path, "other").start()
    workers = [frozen, other]
    traffic = await Traffic(bootstrap, f"{name}-in", seed=5).start()
    output = await Output(bootstrap, f"{name}-out").start()
    rounds = []
    try:
        traffic.run(rate=15)
        for _ in range(soak):
            for worker in workers:
                await worker.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
            await asyncio.sleep(rng.uniform(0.3, 1.5))  # mid-interval: it holds unflushed deltas
            lost = frozen.assigned()
            before = await fence_tokens(redis_server.url, name, f"{name}-in")
            assignments_before = frozen.count("partitions assigned")
            frozen.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            evicted = await wait_for_tokens_to_change(
                redis_server.url, name, f"{name}-in", before, lost, timeout=60
            )
            await asyncio.sleep(2)  # the other worker flushes and emits the moved slots
            frozen_for = time.monotonic() - stopped
            woke_ms = int(time.time() * 1000)
            frozen.signal(signal.SIGCONT)
            await frozen.wait_until(
                lambda w, n=assignments_before: w.count("partitions assigned") > n, 60, "a new assignment"
            )
            reassigned = next(
                e
                for e in frozen.events()[::-1]
                if e.get("event") == "partitions assigned" and _epoch_ms(e["timestamp"]) >= woke_ms - 50
            )
            rounds.append((lost, evicted, frozen_for, woke_ms, _epoch_ms(reassigned["timestamp"])))
        await asyncio.sleep(2)
        expected, converged = await stop_traffic_and_wait(
            traffic, output, timeout=90, metrics=("calls", "duration")
        )
        await asyncio.sleep(2)
        counted = output.totals()
    finally:
        await traffic.stop()
        codes = await stop_all(workers)
        await output.stop()

    frozen_id = frozen.worker_id
    # Records the frozen worker published after it woke and before it owned partitions again.
    stale = [
        (created, woke, back)
        for created, emitter in output.records
        if emitter == frozen_id
        for _, _, _, woke, back in rounds
        if woke <= created < back
    ]
    fenced = frozen.count(FENCED)
    for index, (lost, evicted, frozen_for, woke, back) in enumerate(rounds):
        report.fact(
            f"round {index + 1}",
            f"froze a worker owning partitions {lost}; taken over after {evicted:.1f} s; "
            f"woke after {frozen_for:.1f} s; partitions again {(back - woke) / 1000:.1f} s after waking",
        )
    report.fact("fenced flushes of the woken worker", fenced)
    report.fact("its records between waking and its new assignment", len(stale))
    report.fact("seconds from end of traffic to exact totals", round(converged, 1))
    report.produced, report.counted = expected, counted

    assert counted == expected
    assert fenced >= len(rounds), frozen.log_text()[-3000:]
    assert stale == []
    assert_clean_run(output, workers, codes.values())


async def test_emission_frozen_after_its_ownership_check_skips_slots_taken_over(
    kafka: KafkaEndpoint, redis_server: RedisEndpoint, monkeypatch: pytest.MonkeyPatch, report: ScenarioReport
) -> None:
    """The SIGSTOP race made deterministic: a worker freezes in the middle of an emission, after
    it checked which slots it owns; meanwhile another worker claims them. Waking up, it must not
    publish the rest of those slots with the values and time stamp of a flush it no longer owns."""
    import redis.asyncio as aioredis

    from state.keys import KeySpace
    from state.redis_store import RedisStateStore

    from ..integration.helpers import RunningWorker, make_settings, produce, span_count, traces

    name = f"freeze-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, 2)
    settings = make_settings(bootstrap, redis_server.url, name)
    batch = traces(40, seed=3)
    expected = span_count(r for _, r in batch)
    for tenant in ("acme", "globex"):
        await produce(bootstrap, f"{name}-in", [(k, r.SerializeToString()) for k, r in batch], tenant=tenant)
    output = await Output(bootstrap, f"{name}-out").start()
    try:
        async with RunningWorker(settings, "frozen") as running:
            await output.wait_for(
                {(m, t): expected for m in ("calls", "duration") for t in ("acme", "globex")}, timeout=60
            )
            store = running.worker.store
            assert store is not None
            original = store.fold_slot
            inside, release = asyncio.Event(), asyncio.Event()

            async def frozen_fold_slot(tenant: str, slot: int, token: int, **kwargs: Any) -> object:
                if not inside.is_set():
                    inside.set()
                    await release.wait()  # the process is "stopped" here
                return await original(tenant, slot, token, **kwargs)

            monkeypatch.setattr(store, "fold_slot", frozen_fold_slot)
            await asyncio.wait_for(inside.wait(), timeout=10)
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                other = RedisStateStore(client, KeySpace(name, f"{name}-in"), slots=2, max_exemplars=0)
                await other.claim([0, 1])  # the group gave both partitions to another worker
            finally:
                await client.aclose()
            await asyncio.sleep(2.0)  # frozen for longer than a heartbeat
            woke_ms = int(time.time() * 1000)
            release.set()
            await asyncio.sleep(1.5)
            late = [
                created for created, emitter in output.records if emitter == "frozen" and created >= woke_ms
            ]
    finally:
        await output.stop()
    report.fact("records published after waking without owning the slots", len(late))
    assert late == []
