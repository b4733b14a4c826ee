"""Workers killed with SIGKILL at random moments, while traffic flows: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from devtools.servers import KafkaEndpoint, RedisEndpoint

from .harness import (
    COUNTED_METRICS,
    Output,
    ScenarioReport,
    Traffic,
    WorkerProcess,
    assert_clean_run,
    create_scenario_topics,
    stop_all,
    stop_traffic_and_wait,
    write_config,
)

PARTITIONS = 6
WORKERS = 3


async def test_sigkill_storm_counts_every_span_once(
    kafka: KafkaEndpoint, redis_server: RedisEndpoint, tmp_path: Path, soak: int, report: ScenarioReport
) -> None:
    name = f"kill-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = write_config(
        tmp_path / "config.yaml",
        kafka=bootstrap,
        redis=redis_server.url,
        name=name,
        session_timeout="3s",
        service_graphs=True,
    )
    rng = random.Random(20240611)
    kills_wanted = 12 * soak
    workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(WORKERS)]
    everyone = list(workers)
    traffic = await Traffic(bootstrap, f"{name}-in", seed=11, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    kills = 0
    killed_owning = 0
    try:
        await asyncio.gather(*(w.wait_until(lambda w: bool(w.worker_id), 30, "start") for w in workers))
        traffic.run(rate=15)
        await asyncio.sleep(2)
        while kills < kills_wanted:
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            # Mostly kill a worker that owns partitions right now (it holds unflushed deltas);
            # sometimes whoever it is, mid-rebalance or still starting.
            owners = [i for i, w in enumerate(workers) if w.assigned()]
            if not owners and rng.random() < 0.8:
                deadline = time.monotonic() + 15
                while not owners and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    owners = [i for i, w in enumerate(workers) if w.assigned()]
            index = rng.choice(owners) if owners and rng.random() < 0.8 else rng.randrange(len(workers))
            victim = workers[index]
            killed_owning += bool(victim.assigned())
            victim.kill()
            kills += 1
            # Restart at once or a little later: sometimes the new process joins while the old
            # member is still in the group, sometimes after it was evicted.
            if rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0.5, 3.0))
            workers[index] = WorkerProcess(config, tmp_path, f"w{index}-{kills}").start()
            everyone.append(workers[index])
        last_kill = time.monotonic()
        await asyncio.sleep(1)
        expected, _ = await stop_traffic_and_wait(traffic, output, timeout=120)
        recovered = time.monotonic() - last_kill
        await asyncio.sleep(2)  # more flushes: the totals must stay put
        counted = output.totals(COUNTED_METRICS)
    finally:
        await traffic.stop()
        codes = await stop_all(workers)
        await output.stop()

    assigned = sum(w.count("partitions assigned") for w in everyone)
    fenced = sum(w.count("fenced: another worker owns a partition; replaying from Redis") for w in everyone)
    report.fact("kills (SIGKILL)", f"{kills} ({killed_owning} of a worker owning partitions)")
    report.fact("worker processes", len(everyone))
    report.fact("assignments logged (rebalances x members)", assigned)
    report.fact("fenced flushes (stale owner refused)", fenced)
    report.fact("records produced", traffic.records)
    report.fact("seconds from last kill to exact totals", round(recovered, 1))
    report.fact("output records", len(output.records))
    report.produced, report.counted = expected, counted

    assert kills >= 10
    assert counted == expected
    assert_clean_run(output, everyone, codes.values())
