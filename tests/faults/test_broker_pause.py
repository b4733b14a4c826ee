"""The broker frozen (SIGSTOP) under running workers: they recover by themselves.

While the broker is frozen every request hangs and every session times out; afterwards the
group re-forms. Nothing produced before or after may be lost or doubled, and the workers must
not need a restart. The longer freeze stands for a broker restart: past every session and
request timeout (request_timeout 6 s), every connection is given up and re-established. (A real
restart of the embedded Tansu loses every topic: it keeps them in memory only; its other storage
engines are S3 and PostgreSQL.)
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from devtools.servers import EmbeddedKafka, RedisEndpoint

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

PARTITIONS = 4


@pytest.mark.parametrize(
    ("pause_s", "kafka_extra", "seed"),
    [
        pytest.param(10.0, {}, 31, id="sessions-expire"),
        pytest.param(20.0, {"request_timeout": "6s"}, 37, id="past-every-timeout"),
    ],
)
async def test_broker_pause_workers_recover_by_themselves(
    own_kafka: EmbeddedKafka,
    redis_server: RedisEndpoint,
    tmp_path: Path,
    soak: int,
    report: ScenarioReport,
    pause_s: float,
    kafka_extra: dict[str, str],
    seed: int,
) -> None:
    name = f"pause-{random.randrange(1 << 30):x}"
    bootstrap = own_kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = write_config(
        tmp_path / "config.yaml",
        kafka=bootstrap,
        redis=redis_server.url,
        name=name,
        service_graphs=True,
        kafka_extra=kafka_extra,
    )
    workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(2)]
    traffic = await Traffic(bootstrap, f"{name}-in", seed=seed, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    recoveries: list[str] = []
    try:
        traffic.run(rate=15)
        for worker in workers:
            await worker.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
        for round_number in range(soak):
            await asyncio.sleep(random.uniform(2.0, 3.0))
            await traffic.hold()  # nothing in flight: every produced record is acknowledged
            assignments = [w.count("partitions assigned") for w in workers]
            flushes = [w.count("flush") for w in workers]
            own_kafka.pause()
            await asyncio.sleep(pause_s)
            own_kafka.resume()
            resumed = time.monotonic()
            traffic.release()
            # Recovered: every worker is consuming and flushing again; and the group re-formed
            # (all partitions owned, by the worker's own logs).
            for worker, count in zip(workers, flushes, strict=True):
                await worker.wait_until(lambda w, n=count: w.count("flush") > n + 2, 90, "flushes")
            flushing = time.monotonic() - resumed
            deadline = time.monotonic() + 90
            while sorted(p for w in workers for p in w.assigned()) != list(range(PARTITIONS)):
                assert time.monotonic() < deadline, [w.assigned() for w in workers]
                await asyncio.sleep(0.2)
            regrouped = time.monotonic() - resumed
            rebalances = sum(w.count("partitions assigned") for w in workers) - sum(assignments)
            recoveries.append(
                f"round {round_number + 1}: broker frozen {pause_s:.0f} s; workers flushing again "
                f"{flushing:.1f} s and all partitions owned {regrouped:.1f} s after SIGCONT "
                f"({rebalances} assignments)"
            )
        await asyncio.sleep(2)
        expected, converged = await stop_traffic_and_wait(traffic, output, timeout=90)
        await asyncio.sleep(2)
        counted = output.totals(COUNTED_METRICS)
        alive = [w.name for w in workers if w.alive]
    finally:
        await traffic.stop()
        codes = await stop_all(workers)
        await output.stop()

    for line in recoveries:
        report.note(line)
    report.fact("workers alive at the end (never restarted)", f"{len(alive)} of {len(workers)}")
    report.fact("records produced", traffic.records)
    report.fact("seconds from end of traffic to exact totals", round(converged, 1))
    report.produced, report.counted = expected, counted

    assert len(alive) == len(workers)
    assert counted == expected
    assert_clean_run(output, workers, codes.values())
