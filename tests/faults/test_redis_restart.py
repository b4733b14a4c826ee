"""Redis (AOF, ``appendonly yes``) restarted while a flush is in flight: nothing lost or doubled.

To be sure a flush is in flight, Redis is frozen (SIGSTOP) just before a flush, so the flush's
Redis step waits in its socket; then Redis is restarted: crashed (SIGKILL, ``appendfsync
always``: what it acknowledged is on disk) or shut down cleanly. The step is retried on the new
server; what the old one applied before the crash is not applied twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from devtools.servers import REDIS_ENV_VAR, EmbeddedRedis, KafkaEndpoint, free_port

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
    wait_for_redis_keys,
    write_config,
)

PARTITIONS = 4


async def test_redis_restart_mid_flush_loses_nothing(
    kafka: KafkaEndpoint, tmp_path: Path, soak: int, report: ScenarioReport
) -> None:
    if os.environ.get(REDIS_ENV_VAR, "").strip():
        pytest.skip(f"restarts Redis; not done to the external {REDIS_ENV_VAR}")
    name = f"restart-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    with EmbeddedRedis(port=free_port(), data_dir=tmp_path / "valkey", appendfsync="always") as redis:
        config = write_config(
            tmp_path / "config.yaml",
            kafka=bootstrap,
            redis=redis.url,
            name=name,
            service_graphs=True,
            redis_extra={"socket_timeout": "2s"},
        )
        workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(2)]
        traffic = await Traffic(bootstrap, f"{name}-in", seed=59, keep_requests=True).start()
        output = await Output(bootstrap, f"{name}-out").start()
        rounds: list[str] = []
        try:
            traffic.run(rate=20)
            for worker in workers:
                await worker.wait_until(lambda w: w.count("flush") >= 2, 60, "flushes")
            await wait_for_redis_keys(redis.url, f"{name}:t:*")
            for round_number, hard in enumerate([True, False, True] * soak):
                await asyncio.sleep(random.uniform(1.0, 2.0))
                redis.pause()
                await asyncio.sleep(0.8)  # both workers' next flush (every 500 ms) waits in Redis
                started = time.monotonic()
                redis.restart(hard=hard)  # SIGKILL or SIGTERM reach a stopped process too
                restarted = time.monotonic() - started
                flushes = [w.count("flush") for w in workers]
                for worker, count in zip(workers, flushes, strict=True):
                    await worker.wait_until(lambda w, n=count: w.count("flush") > n + 1, 60, "flushes")
                rounds.append(
                    f"round {round_number + 1}: Redis {'crashed (SIGKILL)' if hard else 'shut down'} "
                    f"mid-flush, back in {restarted:.1f} s, workers flushing again "
                    f"{time.monotonic() - started:.1f} s after the restart began"
                )
            expected, converged = await stop_traffic_and_wait(traffic, output, timeout=90)
            await asyncio.sleep(2)
            counted = output.totals(COUNTED_METRICS)
            alive = [w.name for w in workers if w.alive]
        finally:
            redis.resume()
            await traffic.stop()
            codes = await stop_all(workers)
            await output.stop()

    for line in rounds:
        report.note(line)
    report.fact("workers alive at the end (never restarted)", f"{len(alive)} of {len(workers)}")
    report.fact("records produced", traffic.records)
    report.fact("seconds from end of traffic to exact totals", round(converged, 1))
    report.produced, report.counted = expected, counted

    assert len(alive) == len(workers)
    assert counted == expected
    assert_clean_run(output, workers, codes.values())
