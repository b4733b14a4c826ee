"""A burst of new series far above ``max_active_series_per_tenant`` under running traffic.

Every span must still be counted (the refused series go into the overflow series), the worker's
memory must stay bounded, and it must keep emitting on its flush interval.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

from devtools.servers import KafkaEndpoint, RedisEndpoint
from worker.model.series import OVERFLOW_ATTRIBUTE

from .harness import (
    Output,
    ScenarioReport,
    Traffic,
    WorkerProcess,
    assert_clean_run,
    create_scenario_topics,
    distinct_series_request,
    stop_all,
    write_config,
)

PARTITIONS = 2
LIMIT = 400
#: New span names per tenant in the storm: each one a calls + duration series.
STORM_NAMES = 6000
FLUSH_S = 1.0


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def test_cardinality_storm_counts_every_span_and_keeps_the_cadence(
    kafka: KafkaEndpoint, redis_server: RedisEndpoint, tmp_path: Path, report: ScenarioReport
) -> None:
    name = f"storm-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = write_config(
        tmp_path / "config.yaml",
        kafka=bootstrap,
        redis=redis_server.url,
        name=name,
        flush="1s",
        worker_extra={"max_active_series_per_tenant": LIMIT},
    )
    worker = WorkerProcess(config, tmp_path, "w0").start()
    traffic = await Traffic(bootstrap, f"{name}-in", seed=53).start()
    output = await Output(bootstrap, f"{name}-out").start()
    rng = random.Random(53)
    try:
        traffic.run(rate=15)
        await worker.wait_until(lambda w: w.count("flush") >= 3, 60, "flushes")
        rss_before = _rss_mib(worker.pid)
        storm_started = time.monotonic()
        storm_ms = time.time() * 1000
        for first in range(0, STORM_NAMES, 200):
            now = time.time_ns()
            await traffic.send_prepared(
                (tenant, *distinct_series_request(f"storm-{tenant or 'default'}", names, now, rng))
                for tenant in traffic.tenants
                for names in [[f"op-{i}" for i in range(first, first + 200)]]
            )
        storm_s = time.monotonic() - storm_started
        await asyncio.sleep(6 * FLUSH_S)
        rss_after = _rss_mib(worker.pid)
        await traffic.stop()
        expected = {k: v for k, v in traffic.expected().items() if k[0] == "calls"}
        converged = await output.wait_for(expected, timeout=90, metrics=("calls",))
        await asyncio.sleep(2 * FLUSH_S)
        counted = output.totals(("calls",))
    finally:
        await traffic.stop()
        codes = await stop_all([worker])
        await output.stop()

    # Cadence: the gaps between this worker's emissions from the storm on (records of one flush
    # share nearly one creation time; a gap is the time between two flushes' records).
    times = sorted({ms for ms, _ in output.records if ms >= storm_ms})
    gaps = [b - a for a, b in itertools.pairwise(times) if b - a > 200]
    longest_gap_s = max(gaps, default=0) / 1000
    overflow = {
        key: max(p.value for p in points)
        for key, points in output.series.items()
        if key[1] == "calls" and (OVERFLOW_ATTRIBUTE, "True") in key[2]
    }
    series_per_tenant = {
        tenant: sum(1 for key in output.series if key[0] == tenant and key[1] == "calls")
        for tenant in traffic.tenants
    }
    report.fact("new series offered per tenant (calls + duration)", 2 * STORM_NAMES)
    report.fact("max_active_series_per_tenant", LIMIT)
    report.fact("seconds to produce the storm", round(storm_s, 1))
    report.fact("calls series emitted per tenant", series_per_tenant)
    report.fact("spans counted in the overflow series", sum(overflow.values()))
    report.fact("worker RSS MiB before / after the storm", f"{rss_before:.0f} / {rss_after:.0f}")
    report.fact("longest gap between emissions after the storm began (s)", round(longest_gap_s, 1))
    report.fact("seconds from end of traffic to exact totals", round(converged, 1))
    report.produced, report.counted = expected, counted

    assert counted == expected
    assert overflow and all(value > 0 for value in overflow.values())
    # The limit counts label sets (a calls + duration pair is one); the overflow series, never
    # refused, come on top of it.
    admitted = {
        tenant: sum(
            1
            for key in output.series
            if key[0] == tenant and key[1] == "calls" and (OVERFLOW_ATTRIBUTE, "True") not in key[2]
        )
        for tenant in traffic.tenants
    }
    assert all(n <= LIMIT for n in admitted.values()), admitted
    assert rss_after - rss_before < 150, (rss_before, rss_after)
    assert longest_gap_s <= 4 * FLUSH_S, gaps
    assert_clean_run(output, [worker], codes.values())
