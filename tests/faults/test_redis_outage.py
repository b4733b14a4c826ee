"""Redis crashes (SIGKILL) and stays away for 10 s, then comes back from its AOF; later it hangs.

Workers must keep running, say "not ready" while Redis is gone, retry with backoff, and lose or
double nothing: the flush in flight when Redis died is retried, and one that Redis applied but
whose reply was lost must not be applied twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

from devtools.servers import EmbeddedRedis, KafkaEndpoint, free_port

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
OUTAGE_S = 10.0
HANG_S = 5.0
RETRYING = "Redis step failed; retrying"


async def _wait_readiness(workers: list[WorkerProcess], wanted: bool, timeout: float) -> float:
    """Seconds until every worker's /readyz says ``wanted`` (200 or not)."""
    started = time.monotonic()
    while True:
        statuses = await asyncio.gather(*(w.ready() for w in workers))
        if all((status == 200) == wanted for status in statuses):
            return time.monotonic() - started
        for worker in workers:
            assert worker.alive, f"{worker.name} died:\n{worker.log_text()[-3000:]}"
        if time.monotonic() - started > timeout:
            raise AssertionError(f"readiness {statuses}, wanted {'ready' if wanted else 'not ready'}")
        await asyncio.sleep(0.2)


async def _wait_flushing(workers: list[WorkerProcess], before: list[int]) -> float:
    """Seconds until every worker logged two more flushes than ``before`` (its Redis steps work)."""
    started = time.monotonic()
    for worker, count in zip(workers, before, strict=True):
        await worker.wait_until(lambda w, n=count: w.count("flush") > n + 1, 60, "flushes")
    return time.monotonic() - started


async def test_redis_outage_and_hang_lose_nothing(
    kafka: KafkaEndpoint, own_redis: EmbeddedRedis, tmp_path: Path, soak: int, report: ScenarioReport
) -> None:
    name = f"redis-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = write_config(
        tmp_path / "config.yaml",
        kafka=bootstrap,
        redis=own_redis.url,
        name=name,
        http=True,
        service_graphs=True,
        redis_extra={"socket_timeout": "2s"},
    )
    workers = [WorkerProcess(config, tmp_path, f"w{i}", http_port=free_port()).start() for i in range(2)]
    everyone = list(workers)
    traffic = await Traffic(bootstrap, f"{name}-in", seed=23, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    phases: list[str] = []
    left_codes: list[int | None] = []
    loop = asyncio.get_running_loop()
    try:
        traffic.run(rate=15)
        for worker in workers:
            await worker.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
        await wait_for_redis_keys(own_redis.url, f"{name}:t:*")
        await _wait_readiness(workers, True, 30)
        for round_number in range(soak):
            await asyncio.sleep(random.uniform(0.5, 1.5))
            # 1. crash: SIGKILL, 10 s without Redis, restart on the same port from the AOF.
            #    Meanwhile one worker is stopped (SIGTERM): its final flush fails, it leaves the
            #    group, and the other one goes through revoke and assign without Redis.
            pid = own_redis.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            crashed = time.monotonic()
            unready = await _wait_readiness(workers, False, OUTAGE_S)
            leaving = workers.pop(0)
            left = loop.run_in_executor(None, leaving.stop, 30.0)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - crashed)))
            flushes = [w.count("flush") for w in workers]
            own_redis.restart()
            back = time.monotonic()
            left_codes.append(await left)
            ready = await _wait_readiness(workers, True, 60)
            flushing = await _wait_flushing(workers, flushes)
            replacement = WorkerProcess(config, tmp_path, f"w{len(everyone)}", http_port=free_port()).start()
            workers.append(replacement)
            everyone.append(replacement)
            await replacement.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
            phases.append(
                f"round {round_number + 1}: Redis SIGKILLed, down {back - crashed:.1f} s (workers not "
                f"ready after {unready:.1f} s; one stopped and left meanwhile, exit code "
                f"{left_codes[-1]}); after the restart ready in {ready:.1f} s, flushing again in "
                f"{flushing:.1f} s"
            )
            # 2. hang: SIGSTOP past the socket timeout, so a command may be applied after the
            #    client gave up on it (and retried it)
            await asyncio.sleep(random.uniform(0.5, 1.5))
            flushes = [w.count("flush") for w in workers]
            own_redis.pause()
            await asyncio.sleep(HANG_S)
            own_redis.resume()
            ready = await _wait_readiness(workers, True, 60)
            flushing = await _wait_flushing(workers, flushes)
            phases.append(
                f"round {round_number + 1}: Redis SIGSTOPped {HANG_S:.0f} s; after SIGCONT ready in "
                f"{ready:.1f} s, flushing again in {flushing:.1f} s"
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

    retries = sum(w.count(RETRYING) for w in everyone)
    for phase in phases:
        report.note(phase)
    report.fact("workers alive at the end", f"{len(alive)} of {len(workers)}")
    report.fact("retried Redis steps (logged)", retries)
    report.fact("records produced", traffic.records)
    report.fact("seconds from end of traffic to exact totals", round(converged, 1))
    report.produced, report.counted = expected, counted

    assert len(alive) == len(workers)
    assert retries > 0
    assert counted == expected
    assert_clean_run(output, everyone, [*left_codes, *codes.values()])


async def test_a_merge_applied_after_its_timeout_is_not_applied_again(
    own_redis: EmbeddedRedis, report: ScenarioReport
) -> None:
    """The exact race behind the hang above, made deterministic: Redis applies a merge after the
    client gave up waiting for it (socket timeout); the worker's retry must not count it twice."""
    import redis.asyncio as aioredis

    from state.keys import KeySpace
    from state.redis_store import RedisStateStore
    from worker.model.series import Series, TenantDeltas

    client = aioredis.Redis.from_url(own_redis.url, socket_timeout=0.5)
    store = RedisStateStore(client, KeySpace("idem", "in"), slots=2, max_exemplars=0)
    delta = Series(
        metric="calls",
        resource_id="r",
        attributes=(("span.name", "x"),),
        series_id="calls\x1er\x1espan.name=x",
        start_ns=1_000,
        last_ns=2_000,
        count=3,
    )
    deltas = {"acme": TenantDeltas(resources={"r": ()}, series=[delta])}
    try:
        tokens = await store.claim([0])
        fences = {0: (tokens[0], 10)}
        await store.merge(deltas, {0: (tokens[0], 5)})  # loads the script; count 3
        own_redis.pause()
        timed_out = False
        try:
            await store.merge(deltas, fences)
        except Exception:  # a timeout: the command waits in the socket of the frozen server
            timed_out = True
        own_redis.resume()
        await asyncio.sleep(0.3)
        await store.merge(deltas, fences)  # the worker's retry
        stored = [s.series for slot in range(2) for s in await store.read_slot("acme", slot)]
    finally:
        await client.aclose()
    report.fact("merge timed out while Redis was frozen", timed_out)
    report.fact("count after the late apply and the retry (expected 6)", stored[0].count)
    assert timed_out
    assert [s.count for s in stored] == [6]
