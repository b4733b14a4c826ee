"""A rebalance storm: workers join and leave (SIGTERM) every few seconds while traffic flows."""

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
MIN_WORKERS, MAX_WORKERS = 1, 4


async def test_rebalance_storm_counts_every_span_once(
    kafka: KafkaEndpoint, redis_server: RedisEndpoint, tmp_path: Path, soak: int, report: ScenarioReport
) -> None:
    name = f"storm-{random.randrange(1 << 30):x}"
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
    rng = random.Random(99)
    live = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(2)]
    everyone = list(live)
    traffic = await Traffic(bootstrap, f"{name}-in", seed=41, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    joins = leaves = 0
    departures: list[asyncio.Future[int | None]] = []
    loop = asyncio.get_running_loop()
    try:
        traffic.run(rate=15)
        await asyncio.sleep(2)
        storm_until = time.monotonic() + 24 * soak
        while time.monotonic() < storm_until:
            await asyncio.sleep(rng.uniform(1.5, 4.0))
            join = len(live) < MAX_WORKERS and (len(live) <= MIN_WORKERS or rng.random() < 0.5)
            if join:
                worker = WorkerProcess(config, tmp_path, f"w{len(everyone)}").start()
                live.append(worker)
                everyone.append(worker)
                joins += 1
            else:
                leaving = live.pop(rng.randrange(len(live)))
                leaves += 1
                # Leave in the background: the storm goes on while it flushes and leaves.
                departures.append(loop.run_in_executor(None, leaving.stop, 30.0))
        storm_ended = time.monotonic()
        expected, _ = await stop_traffic_and_wait(traffic, output, timeout=120)
        recovered = time.monotonic() - storm_ended
        await asyncio.sleep(2)
        counted = output.totals(COUNTED_METRICS)
    finally:
        await traffic.stop()
        codes = await stop_all(live)
        await output.stop()
    leave_codes = await asyncio.gather(*departures)

    assignments = sum(w.count("partitions assigned") for w in everyone)
    revokes = sum(w.count("partitions revoked") for w in everyone)
    report.fact("joins / leaves (SIGTERM)", f"{joins} / {leaves}")
    report.fact("assignments / revocations logged", f"{assignments} / {revokes}")
    report.fact("records produced", traffic.records)
    report.fact("seconds from end of storm to exact totals", round(recovered, 1))
    report.produced, report.counted = expected, counted

    assert joins + leaves >= 6
    assert counted == expected
    assert_clean_run(output, everyone, [*leave_codes, *codes.values()])
