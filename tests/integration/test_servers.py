"""The integration fixtures give real servers: Kafka as the worker uses it, Redis with Lua cmsgpack.

If one of these fails, every other integration test would fail for a reason that has nothing to do
with the worker, so these run first in the directory and say exactly what is missing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict

import msgpack
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from devtools.servers import (
    KAFKA_ENV_VAR,
    REDIS_ENV_VAR,
    EmbeddedKafka,
    EmbeddedRedis,
    create_topics,
    wait_for_kafka,
)

PARTITIONS = 8
RECORDS = 100


async def _consume(consumer: AIOKafkaConsumer, count: int, within: float = 30.0) -> list[ConsumerRecord]:
    """Fetch until *count* records arrived (or fail after *within* seconds, showing how many did)."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + within
    while len(records) < count:
        assert time.monotonic() < deadline, f"only {len(records)} of {count} records arrived in {within}s"
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            records.extend(batch)
    return records


async def test_topic_create_is_idempotent(kafka_bootstrap: str, unique_name: str) -> None:
    await create_topics(kafka_bootstrap, {unique_name: PARTITIONS})
    await create_topics(kafka_bootstrap, {unique_name: PARTITIONS, f"{unique_name}-b": 1})

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics([unique_name, f"{unique_name}-b"])}
    finally:
        await admin.close()
    assert len(described[unique_name]["partitions"]) == PARTITIONS
    assert len(described[f"{unique_name}-b"]["partitions"]) == 1


async def test_produce_consume_commit_roundtrip(kafka_bootstrap: str, unique_name: str) -> None:
    topic, group = unique_name, f"{unique_name}-group"
    await create_topics(kafka_bootstrap, {topic: PARTITIONS})

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sends = [
            await producer.send(
                topic,
                key=f"key-{i % 20}".encode(),
                value=f"value-{i}".encode(),
                headers=[("content-type", b"application/x-protobuf"), ("seq", str(i).encode())],
            )
            for i in range(RECORDS)
        ]
        metadata = await asyncio.gather(*sends)
    finally:
        await producer.stop()
    assert len({m.partition for m in metadata}) > 1, "20 keys over 8 partitions should spread out"

    # Tansu holds a JoinGroup for about half the session timeout before it answers, so a short
    # session timeout keeps the join at ~2s instead of ~5s with aiokafka's default of 10s.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=3000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        records = await _consume(consumer, RECORDS)
        assert len(records) == RECORDS
        assert sorted(int(dict(r.headers)["seq"]) for r in records) == list(range(RECORDS))
        for record in records:
            headers = dict(record.headers)
            assert headers["content-type"] == b"application/x-protobuf"
            assert record.value == f"value-{int(headers['seq'])}".encode()

        # The same key always lands on the same partition, in send order.
        partition_of_key: dict[bytes, set[int]] = defaultdict(set)
        by_partition: dict[int, list[ConsumerRecord]] = defaultdict(list)
        for record in records:
            assert record.key is not None
            partition_of_key[record.key].add(record.partition)
            by_partition[record.partition].append(record)
        assert all(len(parts) == 1 for parts in partition_of_key.values())
        for partition_records in by_partition.values():
            offsets = [r.offset for r in partition_records]
            assert offsets == sorted(offsets)
            seqs = [int(dict(r.headers)["seq"]) for r in partition_records]
            assert seqs == sorted(seqs)

        # Manual commit of explicit next-offsets, then read them back from the group coordinator.
        to_commit = {
            TopicPartition(topic, partition): partition_records[-1].offset + 1
            for partition, partition_records in by_partition.items()
        }
        await consumer.commit(to_commit)
        for tp, offset in to_commit.items():
            assert await consumer.committed(tp) == offset
    finally:
        await consumer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        # Tansu answers OffsetFetch with a null topic list ("all partitions of the group", what aiokafka
        # sends for partitions=None) with a frame aiokafka cannot decode, so name the partitions.
        committed = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(PARTITIONS)]
        )
    finally:
        await admin.close()
    assert {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0} == to_commit
    assert sum(to_commit.values()) == RECORDS  # each partition's log starts at offset 0

    # A new client of the group resumes from the commits: one more record is all it sees. It assigns
    # the partitions itself rather than joining, which proves the commits live on the broker without
    # paying Tansu's group-join delays (see the consumer options above).
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"key-0", value=b"after-commit", headers=[("seq", b"-1")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        [record] = await _consume(consumer, 1)
        assert record.value == b"after-commit"
        assert await consumer.getmany(timeout_ms=500) == {}
    finally:
        await consumer.stop()


async def test_redis_set_get(redis_client: aioredis.Redis, unique_name: str) -> None:
    key = f"{unique_name}:greeting"
    assert await redis_client.set(key, b"hello", ex=60)
    assert await redis_client.get(key) == b"hello"


async def test_redis_lua_has_cmsgpack(redis_client: aioredis.Redis, unique_name: str) -> None:
    packed = await redis_client.eval("return cmsgpack.pack({1,2})", 0)
    assert packed == msgpack.packb([1, 2])

    # Round trip through a key: Python packs, Lua unpacks, adds, repacks and stores.
    key = f"{unique_name}:state"
    script = """
        local t = cmsgpack.unpack(ARGV[1])
        t['count'] = t['count'] + tonumber(ARGV[2])
        redis.call('SET', KEYS[1], cmsgpack.pack(t))
        return t['count']
    """
    result = await redis_client.eval(script, 1, key, msgpack.packb({"count": 40}), 2)
    assert result == 42
    assert msgpack.unpackb(await redis_client.get(key)) == {"count": 42}


@pytest.mark.skipif(bool(os.environ.get(REDIS_ENV_VAR)), reason=f"{REDIS_ENV_VAR} set: no embedded Redis")
def test_embedded_redis_aof_survives_restart() -> None:
    with EmbeddedRedis() as server:
        url, data_dir = server.url, server.data_dir
        assert data_dir is not None
        client = redis.Redis.from_url(url)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            client.set("graceful", b"1")
            server.restart()
            assert server.url == url
            assert client.get("graceful") == b"1"

            client.set("crash", b"2")
            server.restart(hard=True)  # SIGKILL: only the AOF can bring the key back
            assert server.url == url
            assert client.mget("graceful", "crash") == [b"1", b"2"]
        finally:
            client.close()
        assert (data_dir / "appendonlydir").is_dir()
    assert not data_dir.exists()


@pytest.mark.skipif(bool(os.environ.get(KAFKA_ENV_VAR)), reason=f"{KAFKA_ENV_VAR} set: no embedded Kafka")
async def test_embedded_kafka_pause_resume_stop() -> None:
    kafka = EmbeddedKafka().start()
    try:
        bootstrap, pid = kafka.bootstrap_servers, kafka.pid
        assert (await wait_for_kafka(bootstrap, 5.0))["cluster_id"] == kafka.cluster_id
        kafka.pause()
        with pytest.raises(TimeoutError):
            await wait_for_kafka(bootstrap, 1.0)
        kafka.resume()
        await wait_for_kafka(bootstrap, 5.0)
        kafka.pause()  # stop() must also work on a paused broker
    finally:
        kafka.stop()
    assert _is_dead(pid)


def _is_dead(pid: int | None) -> bool:
    """Whether *pid* is gone or a zombie (this container's init reaps orphans only now and then)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True
