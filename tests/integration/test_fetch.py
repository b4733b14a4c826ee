"""The worker's fetch drain (worker.stream.fetch) against aiokafka's getmany on a real broker: the
same offsets, values, keys, headers and timestamps, also across seeks, pauses and small
``max_records``; a compressed topic falls back to aiokafka's own path."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devtools.servers import create_topics
from worker.stream import fetch, kafka_records
from worker.stream.fetch import COMPILED_PARSE, Reader, fetch_path, reader_for


def _fields(record: Any) -> tuple[Any, ...]:
    return (
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        record.key,
        record.value,
        tuple(record.headers),
    )


async def _produce(bootstrap: str, topic: str, count: int, compression: str | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=compression, linger_ms=20)
    await producer.start()
    try:
        futures = []
        for i in range(count):
            headers = [("tenant", b"t%d" % (i % 3))] if i % 4 == 0 else []
            key = b"k%d" % i if i % 2 else None
            value = None if i % 14 == 3 else b"v%d-" % i + b"x" * (i % 300)
            futures.append(await producer.send(topic, value, key=key, headers=headers, partition=i % 2))
        for future in futures:
            await future
    finally:
        await producer.stop()


async def _consumer(bootstrap: str, topic: str, **options: Any) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4096,  # several fetches per partition
        **options,
    )
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    return consumer


async def _drain(get: Any, want: int, max_records: int | None = None) -> dict[int, list[tuple[Any, ...]]]:
    out: dict[int, list[tuple[Any, ...]]] = {0: [], 1: []}
    for _ in range(400):
        batch = await get(timeout_ms=200, max_records=max_records)
        for tp, records in batch.items():
            if max_records is not None:
                assert len(records) <= max_records
            out[tp.partition].extend(_fields(r) for r in records)
        if sum(len(v) for v in out.values()) >= want:
            break
    return out


PARSERS = [
    pytest.param(
        "native",
        marks=pytest.mark.skipif(COMPILED_PARSE is None, reason="compiled record parser not built"),
    ),
    "pure",
]


async def _pair(bootstrap: str, topic: str, parser: str) -> tuple[AIOKafkaConsumer, AIOKafkaConsumer, Reader]:
    plain = await _consumer(bootstrap, topic)
    fast = await _consumer(bootstrap, topic)
    reader = reader_for(fast) if parser == "native" else Reader(fast, parse=kafka_records.parse)
    assert reader.fast, f"the fast drain is off on the installed aiokafka: {reader.unsupported}"
    return plain, fast, reader


@pytest.mark.skipif(COMPILED_PARSE is None, reason="compiled record parser not built")
async def test_the_fast_drain_runs_on_the_installed_aiokafka(kafka_bootstrap: str, unique_name: str) -> None:
    """An aiokafka upgrade that the drain does not mirror turns it off: this says so in CI."""
    topic = f"{unique_name}-active"
    await create_topics(kafka_bootstrap, {topic: 2})
    consumer = await _consumer(kafka_bootstrap, topic)
    try:
        assert fetch_path(consumer) == "unknown"  # (spanmetrics_build_info{fetch=}) before a fetch
        reader = reader_for(consumer)
        assert reader.fast, reader.unsupported
        await reader.getmany(timeout_ms=100, max_records=None)
        assert fetch_path(consumer) == "light"
        # Its connections read large responses straight into their frames.
        conns = list(consumer._client._conns.values())  # type: ignore[attr-defined]
        assert conns and all(type(conn._reader) is fetch._FrameReader for conn in conns)
    finally:
        await consumer.stop()


@pytest.mark.skipif(COMPILED_PARSE is None, reason="compiled record parser not built")
async def test_large_fetch_responses_read_through_frames(kafka_bootstrap: str, unique_name: str) -> None:
    """Responses far above the frame threshold (64 KiB), cut by the socket at random places:
    every record value arrives whole and in order."""
    topic = f"{unique_name}-large"
    await create_topics(kafka_bootstrap, {topic: 2})
    values = [bytes([i % 251]) * (20_000 + 997 * i) for i in range(40)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20, max_request_size=8 << 20)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send(topic, value, partition=i % 2)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=1 << 20,
    )
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    try:
        reader = reader_for(consumer)
        frames = []
        original = fetch._FrameReader.readexactly

        async def readexactly(self: Any, n: int) -> bytes:
            frames.append(n)
            return await original(self, n)

        fetch._FrameReader.readexactly = readexactly  # type: ignore[method-assign]
        try:
            got = await _drain(reader.getmany, 40)
        finally:
            fetch._FrameReader.readexactly = original  # type: ignore[method-assign]
        assert max(frames) > 4 * fetch._FRAME_LEAST
        assert [r[5] for r in got[0]] == values[0::2] and [r[5] for r in got[1]] == values[1::2]
    finally:
        await consumer.stop()


@pytest.mark.parametrize("parser", PARSERS)
async def test_fast_drain_gives_what_getmany_gives(
    kafka_bootstrap: str, unique_name: str, parser: str
) -> None:
    topic = f"{unique_name}-plain-{parser}"
    await create_topics(kafka_bootstrap, {topic: 2})
    await _produce(kafka_bootstrap, topic, 600)
    plain, fast, reader = await _pair(kafka_bootstrap, topic, parser)
    try:
        expected = await _drain(plain.getmany, 600)
        got = await _drain(reader.getmany, 600, max_records=7)
        assert sum(map(len, expected.values())) == 600
        assert got == expected
        assert reader.parsed > 0 and reader.declined == 0
        for tp in (TopicPartition(topic, 0), TopicPartition(topic, 1)):
            assert await fast.position(tp) == await plain.position(tp) == 300

        # A seek back and a pause: both drains follow aiokafka's positions.
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        for consumer in (plain, fast):
            consumer.seek(tp0, 120)
            consumer.seek(tp1, 250)
            consumer.pause(tp1)
        expected = await _drain(plain.getmany, 180)
        got = await _drain(reader.getmany, 180)
        assert got == expected and not got[1]
        assert [r[2] for r in got[0]] == list(range(120, 300))
        for consumer in (plain, fast):
            consumer.resume(tp1)
        expected = await _drain(plain.getmany, 50, max_records=13)
        got = await _drain(reader.getmany, 50, max_records=13)
        assert got == expected and [r[2] for r in got[1]] == list(range(250, 300))
    finally:
        await plain.stop()
        await fast.stop()


@pytest.mark.parametrize("parser", PARSERS)
async def test_seek_within_a_drained_fetch(kafka_bootstrap: str, unique_name: str, parser: str) -> None:
    """A seek between two drains of one fetch: the rest of that fetch is dropped, as aiokafka does."""
    topic = f"{unique_name}-seek-{parser}"
    await create_topics(kafka_bootstrap, {topic: 2})
    await _produce(kafka_bootstrap, topic, 200)
    plain, fast, reader = await _pair(kafka_bootstrap, topic, parser)
    try:
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        for consumer in (plain, fast):
            consumer.pause(tp1)  # the first drain: partition 0 in both, whichever fetch came first
        first_plain = await _drain(plain.getmany, 1, max_records=3)
        first_fast = await _drain(reader.getmany, 1, max_records=3)
        assert first_plain == first_fast and [r[2] for r in first_fast[0]] == [0, 1, 2]
        for consumer in (plain, fast):
            consumer.seek(tp0, 40)
            consumer.resume(tp1)
        got = await _drain(reader.getmany, 160)
        assert got == await _drain(plain.getmany, 160)
        assert [r[2] for r in got[0]] == list(range(40, 100)) and [r[2] for r in got[1]] == list(range(100))
    finally:
        await plain.stop()
        await fast.stop()


@pytest.mark.parametrize("parser", PARSERS)
async def test_compressed_topic_falls_back(kafka_bootstrap: str, unique_name: str, parser: str) -> None:
    topic = f"{unique_name}-gzip-{parser}"
    await create_topics(kafka_bootstrap, {topic: 2})
    await _produce(kafka_bootstrap, topic, 300, compression="gzip")
    plain, fast, reader = await _pair(kafka_bootstrap, topic, parser)
    try:
        expected = await _drain(plain.getmany, 300)
        got = await _drain(reader.getmany, 300)
        assert got == expected and sum(map(len, got.values())) == 300
        assert reader.declined > 0 and reader.parsed == 0
    finally:
        await plain.stop()
        await fast.stop()


async def test_options_the_parser_does_not_serve_use_getmany(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"{unique_name}-committed"
    await create_topics(kafka_bootstrap, {topic: 2})
    await _produce(kafka_bootstrap, topic, 40)
    plain = await _consumer(kafka_bootstrap, topic)
    committed = await _consumer(kafka_bootstrap, topic, isolation_level="read_committed")
    try:
        reader = reader_for(committed)
        assert not reader.fast and "read_committed" in reader.unsupported
        assert await _drain(reader.getmany, 40) == await _drain(plain.getmany, 40)
    finally:
        await plain.stop()
        await committed.stop()
