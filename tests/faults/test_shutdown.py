"""SIGTERM at chosen moments: Redis down or frozen, the broker frozen, a flush in flight.

Each time the worker must exit within ``worker.shutdown_grace`` (Kubernetes kills it after its
grace period) and lose nothing: what it could not store is re-read by the next worker, started
once the servers are healthy again, and the output totals are exact.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from devtools.servers import EmbeddedKafka, EmbeddedRedis, KafkaEndpoint, RedisEndpoint

from .harness import (
    COUNTED_METRICS,
    Output,
    ScenarioReport,
    Traffic,
    WorkerProcess,
    create_scenario_topics,
    problems_in_logs,
    stop_all,
    stop_traffic_and_wait,
    wait_for_redis_keys,
    write_config,
)

PARTITIONS = 3
GRACE_S = 8.0
RETRYING = "Redis step failed; retrying"


def _config(tmp_path: Path, bootstrap: str, redis_url: str, name: str) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        kafka=bootstrap,
        redis=redis_url,
        name=name,
        service_graphs=True,
        redis_extra={"socket_timeout": "2s", "connect_timeout": "2s"},
        worker_extra={"shutdown_grace": f"{GRACE_S:.0f}s"},
    )


async def _started(worker: WorkerProcess, flushes: int = 2) -> None:
    await worker.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
    await worker.wait_until(lambda w: w.count("flush") >= flushes, 60, "flushes")


async def _recover(
    config: Path, tmp_path: Path, traffic: Traffic, output: Output, report: ScenarioReport
) -> dict[tuple[str, str], int]:
    """A new worker on healthy servers; the output must reach exactly what was produced."""
    successor = WorkerProcess(config, tmp_path, "successor").start()
    started = time.monotonic()
    try:
        expected, _ = await stop_traffic_and_wait(traffic, output, timeout=90)
        report.fact(
            "seconds from the successor's start to exact totals", round(time.monotonic() - started, 1)
        )
        await asyncio.sleep(1.5)  # more flushes: the totals must stay put
        counted = output.totals(COUNTED_METRICS)
    finally:
        codes = await stop_all([successor])
    report.produced, report.counted = expected, counted
    assert codes == {"successor": 0}
    assert problems_in_logs([successor]) == []
    return expected


@pytest.mark.parametrize("outage", ["killed", "frozen"])
async def test_sigterm_while_redis_is_unreachable_exits_within_the_grace(
    outage: str, kafka: KafkaEndpoint, own_redis: EmbeddedRedis, tmp_path: Path, report: ScenarioReport
) -> None:
    """Redis SIGKILLed (connections refused) or SIGSTOPped (requests hang) while the worker retries."""
    name = f"termredis-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = _config(tmp_path, bootstrap, own_redis.url, name)
    worker = WorkerProcess(config, tmp_path, "w0").start()
    traffic = await Traffic(bootstrap, f"{name}-in", seed=41, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    try:
        traffic.run(rate=15)
        await _started(worker)
        await wait_for_redis_keys(own_redis.url, f"{name}:t:*")
        pid = own_redis.pid
        assert pid is not None
        if outage == "killed":
            os.kill(pid, signal.SIGKILL)
        else:
            own_redis.pause()
        down = time.monotonic()
        # The worker is in its retry loop (one failed step logged), then SIGTERM.
        await worker.wait_until(lambda w: w.count(RETRYING) > 0, 30, "a failed Redis step")
        await asyncio.sleep(1.0)
        exit_s, code = await worker.terminate(timeout=GRACE_S + 30)
        report.fact(f"Redis {outage}: seconds from SIGTERM to exit (grace {GRACE_S:.0f} s)", round(exit_s, 1))
        report.fact("exit code", code)
        if outage == "killed":
            own_redis.restart()
        else:
            own_redis.resume()
        report.fact("seconds without Redis", round(time.monotonic() - down, 1))
        await _recover(config, tmp_path, traffic, output, report)
    finally:
        await traffic.stop()
        await stop_all([worker])
        await output.stop()
    assert exit_s <= GRACE_S, f"exit took {exit_s:.1f} s:\n{worker.log_text()[-3000:]}"
    assert code == 0
    assert report.counted == report.produced
    assert output.backwards() == []
    assert output.duplicates() == []


async def test_sigterm_while_the_broker_is_frozen_exits_within_the_grace(
    own_kafka: EmbeddedKafka, redis_server: RedisEndpoint, tmp_path: Path, report: ScenarioReport
) -> None:
    """The broker SIGSTOPped: emission, the Kafka commit and leaving the group all hang."""
    name = f"termkafka-{random.randrange(1 << 30):x}"
    bootstrap = own_kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = _config(tmp_path, bootstrap, redis_server.url, name)
    worker = WorkerProcess(config, tmp_path, "w0").start()
    traffic = await Traffic(bootstrap, f"{name}-in", seed=43, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    try:
        traffic.run(rate=15)
        await _started(worker)
        await traffic.hold()  # nothing in flight while the broker is frozen: "produced" is exact
        own_kafka.pause()
        frozen = time.monotonic()
        await asyncio.sleep(3.0)  # a flush or two: emission and commit wait for the broker
        exit_s, code = await worker.terminate(timeout=GRACE_S + 60)
        own_kafka.resume()
        report.fact(f"broker frozen: seconds from SIGTERM to exit (grace {GRACE_S:.0f} s)", round(exit_s, 1))
        report.fact("exit code", code)
        report.fact("seconds the broker was frozen", round(time.monotonic() - frozen, 1))
        traffic.release()
        await asyncio.sleep(1.0)
        await _recover(config, tmp_path, traffic, output, report)
    finally:
        if own_kafka.paused:
            own_kafka.resume()
        await traffic.stop()
        await stop_all([worker])
        await output.stop()
    assert exit_s <= GRACE_S, f"exit took {exit_s:.1f} s:\n{worker.log_text()[-3000:]}"
    assert code == 0
    assert report.counted == report.produced
    assert output.backwards() == []
    assert output.duplicates() == []


async def test_sigterm_during_a_flush_exits_within_the_grace(
    kafka: KafkaEndpoint, own_redis: EmbeddedRedis, tmp_path: Path, report: ScenarioReport
) -> None:
    """SIGTERM while a flush's Redis step is in flight and Redis hangs past the grace: the step is
    abandoned (Redis may still apply it when it wakes up); then SIGTERMs at random moments of
    ordinary flushes, repeated until the worker exits. The next worker resumes from whatever Redis
    applied."""
    name = f"termflush-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = _config(tmp_path, bootstrap, own_redis.url, name)
    rng = random.Random(4711)
    traffic = await Traffic(bootstrap, f"{name}-in", seed=47, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    workers: list[WorkerProcess] = []
    exits: list[float] = []
    codes: list[int | None] = []
    try:
        traffic.run(rate=30, batch=4)
        # 1. A flush stuck in Redis: freeze Redis just before a flush, SIGTERM while it hangs.
        worker = WorkerProcess(config, tmp_path, "w0").start()
        workers.append(worker)
        await _started(worker)
        flushes = worker.count("flush")
        await worker.wait_until(lambda w: w.count("flush") > flushes, 10, "a flush")
        own_redis.pause()
        await asyncio.sleep(0.8)  # the next flush (every 500 ms) is waiting for Redis now
        exit_s, code = await worker.terminate(timeout=GRACE_S + 30)
        exits.append(exit_s)
        codes.append(code)
        own_redis.resume()
        # 2. SIGTERM at random moments of ordinary flushes.
        for round_number in range(3):
            worker = WorkerProcess(config, tmp_path, f"w{round_number + 1}").start()
            workers.append(worker)
            await _started(worker)
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            # SIGTERM again every 20 ms until it exits: repeats are absorbed, the exit stays clean.
            exit_s, code = await worker.terminate(timeout=GRACE_S + 30, repeat=0.02)
            exits.append(exit_s)
            codes.append(code)
        report.fact(f"seconds from SIGTERM to exit (grace {GRACE_S:.0f} s)", [round(s, 1) for s in exits])
        report.fact("exit codes", codes)
        await _recover(config, tmp_path, traffic, output, report)
    finally:
        own_redis.resume()  # SIGCONT: harmless when it runs
        await traffic.stop()
        await stop_all(workers)
        await output.stop()
    assert max(exits) <= GRACE_S, exits
    assert codes == [0] * len(codes)
    assert report.counted == report.produced
    assert output.backwards() == []
    assert output.duplicates() == []
    assert problems_in_logs(workers) == []
