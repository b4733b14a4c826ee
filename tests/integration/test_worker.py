"""The stream worker against a real broker and a real Redis (invariants 1-3 and 5, tenancy)."""

from __future__ import annotations

import asyncio

from devtools.servers import create_topics

from .helpers import Observed, RunningWorker, make_settings, produce, read_until, span_count, traces


async def test_two_workers_count_every_span_exactly_once(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, unique_name)
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 8, f"{unique_name}-out": 4, f"{unique_name}-dlq": 1}
    )
    batch = traces(300)
    expected = span_count(request for _, request in batch)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])

    async with RunningWorker(settings, "a"), RunningWorker(settings, "b"):
        observed = await read_until(
            kafka_bootstrap, f"{unique_name}-out", lambda o: o.total() >= expected, timeout=60
        )
        # Let a few more flushes go by: the totals must not move and no series may be doubled.
        await asyncio.sleep(3)
        observed = await read_until(
            kafka_bootstrap, f"{unique_name}-out", lambda o: False, timeout=2, observed=Observed()
        )

    assert observed.total("calls") == expected
    assert observed.total("duration") == expected
    assert observed.duplicates == []


async def test_garbage_goes_to_dlq_and_partition_keeps_moving(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, unique_name)
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 1, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    batch = traces(20)
    good = [(k, r.SerializeToString()) for k, r in batch]
    records = [*good[:10], (b"bad", b"\xff\x00 definitely not protobuf"), *good[10:]]
    await produce(kafka_bootstrap, f"{unique_name}-in", records)
    expected = span_count(r for _, r in batch)

    async with RunningWorker(settings) as running:
        observed = await read_until(
            kafka_bootstrap, f"{unique_name}-out", lambda o: o.total() >= expected, timeout=60
        )
        assert running.worker.stats.dlq == 1
    assert observed.total() == expected

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        f"{unique_name}-dlq", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batch_dlq = await consumer.getmany(timeout_ms=5000)
    finally:
        await consumer.stop()
    dead = [r for rs in batch_dlq.values() for r in rs]
    assert len(dead) == 1
    assert dead[0].value == b"\xff\x00 definitely not protobuf"
    headers = dict(dead[0].headers)
    assert headers["x-spanmetrics-source-offset"] == b"10"
    assert b"not an OTLP" in headers["x-spanmetrics-error"]


async def test_tenants_are_kept_apart(kafka_bootstrap: str, redis_url: str, unique_name: str) -> None:
    settings = make_settings(kafka_bootstrap, redis_url, unique_name)
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 2, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    first, second = traces(15, seed=1), traces(25, seed=2)
    await produce(
        kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in first], tenant="acme"
    )
    await produce(
        kafka_bootstrap,
        f"{unique_name}-in",
        [(k, r.SerializeToString()) for k, r in second],
        tenant="glob*:x",
    )
    expected_first = span_count(r for _, r in first)
    expected_second = span_count(r for _, r in second)

    async with RunningWorker(settings):
        observed = await read_until(
            kafka_bootstrap,
            f"{unique_name}-out",
            lambda o: (
                o.total(tenant="acme") >= expected_first and o.total(tenant="glob*:x") >= expected_second
            ),
            timeout=60,
        )
    assert observed.total(tenant="acme") == expected_first
    assert observed.total(tenant="glob*:x") == expected_second
    assert observed.total(tenant="") == 0


async def test_a_rewind_before_the_first_checkpoint_reads_the_records_again(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    """Memory discarded (a fenced step, a poisoned record) for a partition Redis holds no offset
    for yet: its records are read again from the group's committed offset (here: the start),
    not skipped."""
    settings = make_settings(kafka_bootstrap, redis_url, unique_name, metrics_flush_interval="30s")
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 1, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    batch = traces(20)
    expected = span_count(r for _, r in batch)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])

    async with RunningWorker(settings) as running:
        worker = running.worker
        for _ in range(300):
            if worker.stats.spans >= expected:
                break
            await asyncio.sleep(0.1)
        assert worker.stats.spans == expected  # consumed, not checkpointed (the interval is 30 s)
        async with worker.shared.lock:
            await worker.rebalance.rewind(list(worker.tokens))
        for _ in range(300):
            if worker.stats.spans >= 2 * expected:
                break
            await asyncio.sleep(0.1)
        await worker.flush()
        observed = await read_until(
            kafka_bootstrap, f"{unique_name}-out", lambda o: o.total() >= expected, timeout=20
        )
    assert observed.total() == expected
