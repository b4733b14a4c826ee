"""Redis loses its data (a restart without persistence; FLUSHALL): the workers notice, say so and recover.

Traffic before the loss is counted, committed and emitted; then Redis loses everything, and more
traffic follows. Each worker must detect the loss (its generation marker is gone), log it once,
count it once (``spanmetrics_state_lost_total``), take its partitions back, resume from the
consumer group's committed offsets and go on, within ``RECOVERY_BOUND_S``. The series emitted
after the loss carry a new start time (a counter reset downstream) and count exactly the spans
produced after the loss: the committed offsets were at the end of the first traffic, so nothing
of it is read again and nothing after it is missed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from devtools.servers import REDIS_ENV_VAR, EmbeddedRedis, KafkaEndpoint, free_port
from worker.model.values import any_value_to_python
from worker.sinks.kafka import WORKER_HEADER

from .harness import (
    COUNTED_METRICS,
    SERVICE_GRAPH_REQUESTS,
    TENANT_HEADER,
    Output,
    ScenarioReport,
    Traffic,
    WorkerProcess,
    create_scenario_topics,
    problems_in_logs,
    stop_all,
    wait_for_redis_keys,
    write_config,
)

PARTITIONS = 4
WORKERS = 2
#: From the moment Redis has lost its data until every worker owns its partitions again: a few
#: flush intervals (500 ms here) plus the client's reconnect backoff after a restart.
RECOVERY_BOUND_S = 15.0
LOST = "Redis lost its state"
RECOVERED = "state recovered"

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis without persistence (no AOF, no RDB): a restart comes back empty."""
    import os

    if os.environ.get(REDIS_ENV_VAR, "").strip():
        pytest.skip(f"restarts Redis; not done to the external {REDIS_ENV_VAR}")
    config = {"appendonly": "no", "save": ""}
    with EmbeddedRedis(port=free_port(), data_dir=tmp_path / "valkey", config=config) as server:
        yield server


class StartedOutput(Output):
    """The output topic with every point's start time: tells a series' incarnations apart."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        #: key -> (start ns, time ns, value, record CreateTime ms)
        self.points: dict[SeriesKey, list[tuple[int, int, int, int]]] = {}

    def _observe(self, value: bytes, headers: Iterable[tuple[str, bytes]], created_ms: int) -> None:
        headers = list(headers)
        super()._observe(value, headers, created_ms)
        tenant = next((v.decode() for k, v in headers if k == TENANT_HEADER), "")
        assert any(k == WORKER_HEADER for k, _ in headers)
        for rm in ExportMetricsServiceRequest.FromString(value).resource_metrics:
            resource = tuple(
                sorted((kv.key, str(any_value_to_python(kv.value))) for kv in rm.resource.attributes)
            )
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind == "sum":
                        points = [(p, p.as_int) for p in metric.sum.data_points]
                    elif kind == "histogram":
                        points = [(p, p.count) for p in metric.histogram.data_points]
                    else:
                        continue
                    for point, number in points:
                        attrs = tuple(
                            sorted((kv.key, str(any_value_to_python(kv.value))) for kv in point.attributes)
                        )
                        self.points.setdefault((tenant, metric.name, (*resource, *attrs)), []).append(
                            (point.start_time_unix_nano, point.time_unix_nano, int(number), created_ms)
                        )

    def totals_since(self, after_ns: int, metrics: Iterable[str]) -> dict[tuple[str, str], int]:
        """(metric, tenant) -> sum over series of the latest value of the incarnations started
        after ``after_ns`` (a series restarted by the loss counts from its new start only)."""
        wanted = set(metrics)
        result: Counter[tuple[str, str]] = Counter()
        for (tenant, metric, _), points in self.points.items():
            new = [p for p in points if p[0] > after_ns]
            if metric in wanted and new:
                result[(metric, tenant)] += max(new, key=lambda p: (p[1], p[2]))[2]
        return {k: v for k, v in result.items() if v}

    def old_points_after(self, created_after_ms: int, started_before_ns: int) -> int:
        """Points published after a moment that still carry a start time from before another."""
        return sum(
            1
            for points in self.points.values()
            for start, _, _, created in points
            if created > created_after_ms and start <= started_before_ns
        )


def expected_of(traffic: Traffic) -> dict[tuple[str, str], int]:
    expected = traffic.expected()
    expected.update(traffic.expected_service_graph_requests())
    return {k: v for k, v in expected.items() if v}


async def wait_totals(
    read: Callable[[], dict[tuple[str, str], int]], expected: dict[tuple[str, str], int], timeout: float
) -> float:
    started = time.monotonic()
    while read() != expected:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"totals after {timeout:.0f} s: {read()}, expected {expected}")
        await asyncio.sleep(0.25)
    return time.monotonic() - started


async def wait_committed_to_end(bootstrap: str, topic: str, group: str, timeout: float) -> dict[int, int]:
    """Until the group's committed offsets reach the end of every input partition."""
    # A consumer of the group that never subscribes: it reads the group's offsets, never joins.
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        deadline = time.monotonic() + timeout
        while True:
            ends = {tp.partition: o for tp, o in (await probe.end_offsets(tps)).items()}
            committed = {tp.partition: await probe.committed(tp) for tp in tps}
            if all((committed[p] or 0) >= end for p, end in ends.items()):
                return ends
            if time.monotonic() > deadline:
                raise AssertionError(f"committed {committed}, end offsets {ends}")
            await asyncio.sleep(0.25)
    finally:
        await probe.stop()


async def scrape(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"http://127.0.0.1:{worker.http_port}/metrics") as response,
    ):
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _scenario(
    kafka: KafkaEndpoint,
    redis_url: str,
    tmp_path: Path,
    report: ScenarioReport,
    lose: Callable[[], Awaitable[None]],
    how: str,
) -> None:
    name = f"lost-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = write_config(
        tmp_path / "config.yaml", kafka=bootstrap, redis=redis_url, name=name, http=True, service_graphs=True
    )
    workers = [
        WorkerProcess(config, tmp_path, f"w{i}", http_port=free_port()).start() for i in range(WORKERS)
    ]
    before = await Traffic(bootstrap, f"{name}-in", seed=5, keep_requests=True).start()
    after = await Traffic(bootstrap, f"{name}-in", seed=6, keep_requests=True).start()
    output = await StartedOutput(bootstrap, f"{name}-out").start()
    try:
        for worker in workers:
            await worker.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
        # 1. Traffic before the loss: counted, emitted, its offsets committed to the group.
        for _ in range(10):
            await before.send(2)
        await wait_totals(lambda: output.totals_since(0, COUNTED_METRICS), expected_of(before), 60)
        await wait_committed_to_end(bootstrap, f"{name}-in", f"{name}-group", 30)
        await wait_for_redis_keys(redis_url, f"{name}:t:*")
        # 2. The loss.
        lost_ns = time.time_ns()
        lost_ms = lost_ns // 1_000_000
        await lose()
        lost_at = time.monotonic()
        client = aioredis.Redis.from_url(redis_url)
        try:
            # The series state the traffic before the loss wrote. (Not every key of the
            # scenario: the workers may write their generation marker and fencing tokens again
            # between the loss and this scan.)
            keys_after_loss = [k async for k in client.scan_iter(match=f"{name}:t:*")]
        finally:
            await client.aclose()
        # 3. Traffic after the loss, while the workers find out.
        for _ in range(10):
            await after.send(2)
            await asyncio.sleep(0.2)
        # (today's code stalls here: it owns nothing any more, and no series is emitted again)
        waited = await wait_totals(
            lambda: output.totals_since(lost_ns, COUNTED_METRICS), expected_of(after), RECOVERY_BOUND_S + 45
        )
        recovered = max(_logged_at(w, RECOVERED) for w in workers) - _unix_of(lost_at)
        await asyncio.sleep(1.5)  # a few more flushes: nothing more may arrive
        counted_after = output.totals_since(lost_ns, COUNTED_METRICS)
        stale = output.old_points_after(lost_ms + 1000 * int(RECOVERY_BOUND_S), lost_ns)
        metrics = [await scrape(w) for w in workers]
        readiness = [await w.ready() for w in workers]
        losses = [w.count(LOST) for w in workers]
        lost_levels = [e.get("level") for w in workers for e in w.events() if e.get("event") == LOST]
    finally:
        await before.stop()
        await after.stop()
        codes = await stop_all(workers)
        await output.stop()

    report.fact("loss", how)
    report.fact("series state keys left in Redis right after the loss", len(keys_after_loss))
    report.fact("seconds from the loss to the last worker recovered", round(recovered, 1))
    report.fact("seconds from end of traffic to exact totals after the loss", round(waited, 1))
    report.fact("losses logged per worker", losses)
    report.produced = {k: v for k, v in expected_of(after).items() if k[0] in COUNTED_METRICS}
    report.counted = counted_after
    report.note(
        "produced/counted below: the spans produced AFTER the loss against the series incarnations "
        "started after it (spans before the loss were committed, so they are not read again)"
    )

    assert keys_after_loss == []
    assert recovered <= RECOVERY_BOUND_S, f"recovered after {recovered:.1f} s"
    assert counted_after == expected_of(after)
    assert stale == 0, "a series kept its start time from before the loss"
    assert losses == [1] * WORKERS
    assert lost_levels == ["error"] * WORKERS
    for worker, values in zip(workers, metrics, strict=True):
        assert values[("spanmetrics_state_lost_total", ())] == 1, worker.name
        assigned = values[("spanmetrics_assigned_partitions", ())]
        assert values[("spanmetrics_owned_partitions", ())] == assigned > 0, worker.name
        lags = {
            labels[0][1]: value
            for (metric, labels), value in values.items()
            if metric == "spanmetrics_consumer_lag_records"
        }
        assert len(lags) == assigned and set(lags.values()) == {0}, (worker.name, lags)
    assert sum(v[("spanmetrics_assigned_partitions", ())] for v in metrics) == PARTITIONS
    assert readiness == [200] * WORKERS
    assert set(codes.values()) == {0}
    assert not problems_in_logs(workers)
    assert SERVICE_GRAPH_REQUESTS in {m for m, _ in counted_after}


def _logged_at(worker: WorkerProcess, event: str) -> float:
    """Unix time of the first log line ``event`` (the JSON logs carry an ISO time stamp)."""
    from datetime import datetime

    for line in worker.events():
        if line.get("event") == event:
            return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"{worker.name} never logged {event!r}")


def _unix_of(monotonic: float) -> float:
    return time.time() - (time.monotonic() - monotonic)


async def test_redis_restarted_without_persistence_is_survived(
    kafka: KafkaEndpoint, volatile_redis: EmbeddedRedis, tmp_path: Path, report: ScenarioReport
) -> None:
    async def restart() -> None:
        await asyncio.get_running_loop().run_in_executor(None, volatile_redis.restart)

    await _scenario(kafka, volatile_redis.url, tmp_path, report, restart, "restart without persistence")


async def test_redis_flushall_is_survived(
    kafka: KafkaEndpoint, own_redis: EmbeddedRedis, tmp_path: Path, report: ScenarioReport
) -> None:
    async def flushall() -> None:
        client = aioredis.Redis.from_url(own_redis.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    await _scenario(kafka, own_redis.url, tmp_path, report, flushall, "FLUSHALL")


def _sum(*totals: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    result: Counter[tuple[str, str]] = Counter()
    for one in totals:
        result.update(one)
    return dict(result)


async def test_failover_to_a_stale_replica_is_survived(
    kafka: KafkaEndpoint, own_redis: EmbeddedRedis, tmp_path: Path, report: ScenarioReport
) -> None:
    """Redis goes back in time: every key as it was a while ago (a replica that was behind). The
    marker and the tokens are the same; the applied offsets went back. The worker resumes from
    them, so the final totals are exact: the spans the replica lacks are read and counted again."""
    name = f"stale-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    redis_url = own_redis.url
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = write_config(
        tmp_path / "config.yaml", kafka=bootstrap, redis=redis_url, name=name, http=True, service_graphs=True
    )
    workers = [
        WorkerProcess(config, tmp_path, f"w{i}", http_port=free_port()).start() for i in range(WORKERS)
    ]
    phases = [
        await Traffic(bootstrap, f"{name}-in", seed=seed, keep_requests=True).start() for seed in (7, 8, 9)
    ]
    output = await StartedOutput(bootstrap, f"{name}-out").start()
    client = aioredis.Redis.from_url(redis_url)
    try:
        for worker in workers:
            await worker.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
        for _ in range(10):
            await phases[0].send(2)
        await output.wait_for(expected_of(phases[0]), 60, metrics=COUNTED_METRICS)
        # 1. What the replica holds: every key of the scenario as of now.
        keys = [k async for k in client.scan_iter(match=f"{name}:*")]
        snapshot = [(k, await client.dump(k)) for k in keys]
        # 2. More traffic, applied to the primary only.
        for _ in range(10):
            await phases[1].send(2)
        await output.wait_for(_sum(*map(expected_of, phases[:2])), 60, metrics=COUNTED_METRICS)
        # 3. Failover: the replica's keys replace the primary's, in one transaction.
        failover = time.monotonic()
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(*[k async for k in client.scan_iter(match=f"{name}:*")])
            for key, dumped in snapshot:
                pipe.restore(key, 0, dumped, replace=True)
            await pipe.execute()
        for _ in range(10):
            await phases[2].send(2)
        expected = _sum(*map(expected_of, phases))
        # (today's code goes on from the replica's state with its own offsets: the spans of the
        # second phase are missing from the totals for good)
        waited = await output.wait_for(expected, 60, metrics=COUNTED_METRICS)
        recovered = max(_logged_at(w, RECOVERED) for w in workers) - _unix_of(failover)
        await asyncio.sleep(1.5)
        counted = {k: v for k, v in output.totals(COUNTED_METRICS).items() if v}
        # Nothing expires here: every series ever published is still published after the failover.
        failover_ms = int(_unix_of(failover) * 1000)
        vanished = [k for k, pts in output.series.items() if max(p.created_ms for p in pts) < failover_ms]
        reasons = [e.get("reason") for w in workers for e in w.events() if e.get("event") == LOST]
        metrics = [await scrape(w) for w in workers]
        readiness = [await w.ready() for w in workers]
    finally:
        await client.aclose()
        for traffic in phases:
            await traffic.stop()
        codes = await stop_all(workers)
        await output.stop()

    report.fact("loss", "failover to a replica 10 traces per tenant behind (same marker and tokens)")
    report.fact("seconds from the failover to the last worker recovered", round(recovered, 1))
    report.fact("seconds from end of traffic to exact totals", round(waited, 1))
    report.fact("reasons logged", reasons)
    report.produced = {k: v for k, v in expected.items() if k[0] in COUNTED_METRICS}
    report.counted = counted
    report.note("produced/counted: all three phases; the series continue from the replica's values")

    assert recovered <= RECOVERY_BOUND_S
    assert counted == expected
    assert vanished == []
    assert len(reasons) == WORKERS
    assert all(str(r).startswith("applied offsets went back") for r in reasons)
    for worker, values in zip(workers, metrics, strict=True):
        assert values[("spanmetrics_state_lost_total", ())] == 1, worker.name
        assert values[("spanmetrics_owned_partitions", ())] == values[("spanmetrics_assigned_partitions", ())]
    assert readiness == [200] * WORKERS
    assert set(codes.values()) == {0}
    assert not problems_in_logs(workers)
