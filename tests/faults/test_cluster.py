"""Workers on a Redis Cluster (3 masters, a replica each): killed with SIGKILL at random moments,
then a master failover mid-run; every span counted once either way."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.cluster

from devtools.redis_cluster import EmbeddedRedisCluster
from devtools.servers import REDIS_ENV_VAR, KafkaEndpoint
from state.cluster_store import ClusterKeys

from .harness import (
    COUNTED_METRICS,
    Output,
    ScenarioReport,
    Traffic,
    WorkerProcess,
    assert_clean_run,
    create_scenario_topics,
    problems_in_logs,
    stop_all,
    stop_traffic_and_wait,
    write_config,
)
from .test_state_loss import LOST, RECOVERED, StartedOutput, expected_of, wait_totals

PARTITIONS = 6
WORKERS = 3


@pytest.fixture
def cluster() -> Iterator[EmbeddedRedisCluster]:
    """This scenario's own cluster (it fails masters over)."""
    if os.environ.get(REDIS_ENV_VAR, "").strip():
        pytest.skip(f"starts its own Redis Cluster; {REDIS_ENV_VAR} names a single server")
    with EmbeddedRedisCluster(masters=3, replicas=1) as started:
        yield started


def _config(tmp_path: Path, kafka: str, cluster: EmbeddedRedisCluster, name: str) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        kafka=kafka,
        redis=cluster.url,
        name=name,
        session_timeout="3s",
        service_graphs=True,
        redis_extra={"cluster": True, "startup_nodes": cluster.startup_nodes[1:]},
    )


async def test_sigkill_storm_on_a_cluster_counts_every_span_once(
    kafka: KafkaEndpoint, cluster: EmbeddedRedisCluster, tmp_path: Path, soak: int, report: ScenarioReport
) -> None:
    name = f"ckill-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = _config(tmp_path, bootstrap, cluster, name)
    rng = random.Random(20261207)
    kills_wanted = 6 * soak
    workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(WORKERS)]
    everyone = list(workers)
    traffic = await Traffic(bootstrap, f"{name}-in", seed=13, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    kills = 0
    try:
        await asyncio.gather(*(w.wait_until(lambda w: bool(w.worker_id), 30, "start") for w in workers))
        traffic.run(rate=15)
        await asyncio.sleep(2)
        while kills < kills_wanted:
            await asyncio.sleep(rng.uniform(0.3, 2.0))
            owners = [i for i, w in enumerate(workers) if w.assigned()]
            index = rng.choice(owners) if owners else rng.randrange(len(workers))
            workers[index].kill()
            kills += 1
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

    report.fact("kills (SIGKILL)", kills)
    report.fact("records produced", traffic.records)
    report.fact("seconds from last kill to exact totals", round(recovered, 1))
    report.produced, report.counted = expected, counted
    assert kills >= 6
    assert counted == expected
    assert_clean_run(output, everyone, codes.values())


async def test_a_master_failover_mid_run_counts_every_span_once(
    kafka: KafkaEndpoint, cluster: EmbeddedRedisCluster, tmp_path: Path, report: ScenarioReport
) -> None:
    """Every master fails over to its replica in turn (CLUSTER FAILOVER) while traffic flows and
    workers flush: the client follows the new slot map, and the totals are exact."""
    name = f"cfail-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = _config(tmp_path, bootstrap, cluster, name)
    workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(2)]
    traffic = await Traffic(bootstrap, f"{name}-in", seed=17, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    failovers = 0
    try:
        await asyncio.gather(*(w.wait_until(lambda w: bool(w.worker_id), 30, "start") for w in workers))
        traffic.run(rate=15)
        await asyncio.sleep(3)
        for master in cluster.masters():
            await asyncio.to_thread(cluster.failover, master)
            failovers += 1
            await asyncio.sleep(1.5)
        expected, waited = await stop_traffic_and_wait(traffic, output, timeout=120)
        await asyncio.sleep(2)
        counted = output.totals(COUNTED_METRICS)
    finally:
        await traffic.stop()
        codes = await stop_all(workers)
        await output.stop()

    report.fact("master failovers", failovers)
    report.fact("records produced", traffic.records)
    report.fact("seconds to exact totals after traffic stopped", round(waited, 1))
    report.produced, report.counted = expected, counted
    assert failovers == 3
    assert counted == expected
    assert_clean_run(output, workers, codes.values())


async def test_a_resharding_mid_run_counts_every_span_once(
    kafka: KafkaEndpoint, cluster: EmbeddedRedisCluster, tmp_path: Path, report: ScenarioReport
) -> None:
    """Every index's hash tag (input partition i, emission slot i) and the control tag move to
    another master, key by key as redis-cli reshards, while traffic flows and two workers merge,
    fold and claim: merges and folds meet their tag half-moved (ASK, TRYAGAIN) or moved (MOVED)
    and are retried, and the totals are exact."""
    name = f"cmove-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = _config(tmp_path, bootstrap, cluster, name)
    workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(2)]
    traffic = await Traffic(bootstrap, f"{name}-in", seed=23, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    layout = ClusterKeys(name, f"{name}-in")
    tags = [layout.control.generation, *(layout.token(index) for index in range(PARTITIONS))]
    moved: list[int] = []

    def reshard() -> None:
        for key in tags:
            slot = redis.cluster.key_slot(key.encode())
            source = cluster.master_of(slot)
            target = next(master for master in cluster.masters() if master is not source)
            cluster.move_slot(slot, target, batch=1, pause=0.05)
            moved.append(slot)

    try:
        await asyncio.gather(
            *(w.wait_until(lambda w: bool(w.assigned()), 60, "an assignment") for w in workers)
        )
        traffic.run(rate=15)
        await asyncio.sleep(2)
        await asyncio.to_thread(reshard)
        await asyncio.sleep(2)
        expected, waited = await stop_traffic_and_wait(traffic, output, timeout=120)
        await asyncio.sleep(2)
        counted = output.totals(COUNTED_METRICS)
    finally:
        await traffic.stop()
        codes = await stop_all(workers)
        await output.stop()

    report.fact("hash slots resharded", len(moved))
    # Redirections the client followed itself are not logged; steps it gave up on and the worker
    # retried are.
    report.fact(
        "Redis steps retried by the workers", sum(w.count("Redis step failed; retrying") for w in workers)
    )
    report.fact("records produced", traffic.records)
    report.fact("seconds to exact totals after traffic stopped", round(waited, 1))
    report.produced, report.counted = expected, counted
    assert len(moved) == len(tags)
    assert counted == expected
    assert_clean_run(output, workers, codes.values())


async def test_masters_killed_mid_run_count_every_span_once(
    kafka: KafkaEndpoint, cluster: EmbeddedRedisCluster, tmp_path: Path, report: ScenarioReport
) -> None:
    """Each master in turn, the control tag's first, is SIGKILLed while traffic flows: its replica
    is elected by the other masters (asynchronous replication: what the dead master had not sent
    is lost). A merge's offsets reach Kafka only once a replica acknowledged it, and a fold
    commits only outbox entries a replica holds, so a lost step is one the workers re-read."""
    name = f"ckillm-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, PARTITIONS)
    config = _config(tmp_path, bootstrap, cluster, name)
    workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(2)]
    traffic = await Traffic(bootstrap, f"{name}-in", seed=19, keep_requests=True).start()
    output = await Output(bootstrap, f"{name}-out").start()
    control = f"{{{name}:{name}-in}}"
    with redis.cluster.RedisCluster.from_url(cluster.url) as client:
        control_port = client.get_node_from_key(control).port
    masters = sorted(cluster.masters(), key=lambda node: node.port != control_port)
    kills = []
    try:
        await asyncio.gather(*(w.wait_until(lambda w: bool(w.worker_id), 30, "start") for w in workers))
        traffic.run(rate=15)
        await asyncio.sleep(3)
        for master in masters:
            started = time.monotonic()
            await asyncio.to_thread(cluster.kill, master)
            kills.append(round(time.monotonic() - started, 1))
            await asyncio.sleep(1)
            await asyncio.to_thread(cluster.revive, master)
        expected, waited = await stop_traffic_and_wait(traffic, output, timeout=120)
        await asyncio.sleep(2)
        counted = output.totals(COUNTED_METRICS)
    finally:
        await traffic.stop()
        codes = await stop_all(workers)
        await output.stop()

    retried = sum(w.count("Redis step failed; retrying") for w in workers)
    report.fact("masters killed (seconds until the replica served)", kills)
    report.fact("Redis steps retried", retried)
    report.fact("records produced", traffic.records)
    report.fact("seconds to exact totals after traffic stopped", round(waited, 1))
    report.produced, report.counted = expected, counted
    assert len(kills) == 3
    assert counted == expected
    assert_clean_run(output, workers, codes.values())


def _lose_tag(
    client: redis.cluster.RedisCluster, layout: ClusterKeys, index: int, slots: int, found: list[bytes]
) -> None:
    """Every key of the index's tag gone at once, as a master restarted without persistence loses
    them: those found, and every key the layout may hold there (one script, one hash slot)."""
    keys = {key.decode() for key in found}
    keys |= {layout.token(index), layout.marker(index), layout.slot_tenants(index), layout.epoch(index)}
    keys |= {layout.offset(index), layout.watermark(index), layout.edges(index), f"{layout.tag(index)}:sync"}
    for raw in client.smembers(layout.slot_tenants(index)):  # type: ignore[union-attr]
        tenant = raw.decode()
        keys |= {
            *layout.slot_keys(tenant, index),
            layout.resources(tenant, index),
            layout.seen(tenant, index),
        }
        for slot in range(slots):
            keys |= {layout.outbox(tenant, index, slot), layout.base(tenant, index, slot)}
    client.eval("for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end", len(keys), *sorted(keys))


def _incarnation_totals(output: StartedOutput, metrics: tuple[str, ...]) -> dict[tuple[str, str], int]:
    """(metric, tenant) -> the sum over every series incarnation (series and start time) of its
    latest value: a series restarted by a loss counts its old and its new incarnation."""
    wanted = set(metrics)
    result: Counter[tuple[str, str]] = Counter()
    for (tenant, metric, _), points in output.points.items():
        if metric not in wanted:
            continue
        latest: dict[int, tuple[int, int]] = {}
        for start, at, value, _ in points:
            latest[start] = max(latest.get(start, (at, value)), (at, value))
        result[(metric, tenant)] += sum(value for _, value in latest.values())
    return {k: v for k, v in result.items() if v}


async def test_a_slot_shard_that_loses_its_data_is_noticed_and_only_its_series_restart(
    kafka: KafkaEndpoint, cluster: EmbeddedRedisCluster, tmp_path: Path, report: ScenarioReport
) -> None:
    """One index's hash tag (input partition 1 and emission slot 1) loses everything at once (as a
    master restarted without persistence would): its owner notices (the generation marker is
    missing), logs it, recovers (partition 1 from the group's committed offset); the slot's
    series restart with a new start time and count exactly the spans after the loss; the other
    slots' series go on (and fold partition 1's new outboxes from their start). Summed over
    incarnations, every span is counted once."""
    name = f"closs-{random.randrange(1 << 30):x}"
    bootstrap = kafka.bootstrap_servers
    await create_scenario_topics(bootstrap, name, 4)
    config = _config(tmp_path, bootstrap, cluster, name)
    workers = [WorkerProcess(config, tmp_path, f"w{i}").start() for i in range(2)]
    before = await Traffic(bootstrap, f"{name}-in", seed=5, keep_requests=True).start()
    after = await Traffic(bootstrap, f"{name}-in", seed=6, keep_requests=True).start()
    output = await StartedOutput(bootstrap, f"{name}-out").start()
    lost_tag = f"{{{name}:{name}-in:s1}}"
    try:
        for worker in workers:
            await worker.wait_until(lambda w: bool(w.assigned()), 60, "an assignment")
        for _ in range(10):
            await before.send(2)
        await wait_totals(lambda: _incarnation_totals(output, COUNTED_METRICS), expected_of(before), 60)
        lost_ns = time.time_ns()
        with redis.cluster.RedisCluster.from_url(cluster.url) as client:
            keys = list(client.scan_iter(match=f"{lost_tag}*"))
            assert keys, "the slot's tag holds its records"
            _lose_tag(client, ClusterKeys(name, f"{name}-in"), 1, 4, keys)
        for _ in range(10):
            await after.send(2)
            await asyncio.sleep(0.2)
        both = expected_of(before)
        for key, value in expected_of(after).items():
            both[key] = both.get(key, 0) + value
        waited = await wait_totals(lambda: _incarnation_totals(output, COUNTED_METRICS), both, 60)
        await asyncio.sleep(1.5)  # more flushes: nothing more may arrive
        counted = _incarnation_totals(output, COUNTED_METRICS)
        restarted = continued = 0
        for points in output.points.values():
            starts = {start > lost_ns for start, *_ in points}
            if starts == {True, False}:
                restarted += 1  # an incarnation before the loss and one after: the lost slot's
            elif starts == {False} and max(at for _, at, *_ in points) > lost_ns:
                continued += 1  # kept its start time and went on being emitted: another slot's
    finally:
        await before.stop()
        await after.stop()
        codes = await stop_all(workers)
        await output.stop()

    losses = [w.count(LOST) for w in workers]
    report.fact("keys of the slot's tag lost", len(keys))
    report.fact("losses logged per worker", losses)
    report.fact("series restarted (new start time) / continued", f"{restarted} / {continued}")
    report.fact("seconds from end of traffic to exact totals", round(waited, 1))
    report.produced, report.counted = both, counted
    assert sum(losses) >= 1
    assert sum(w.count(RECOVERED) for w in workers) >= 1
    assert counted == both
    assert restarted > 0 and continued > 0  # only the lost slot's series restarted
    assert problems_in_logs(workers) == []
    assert all(code == 0 for code in codes.values()), codes
