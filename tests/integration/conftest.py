"""Fixtures for integration tests: one real Kafka-protocol broker and one real Redis per test session.

The servers come from :mod:`devtools.servers`: embedded Tansu and Valkey started from wheels, or the
servers named by ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` when those are set. They are shared by the
whole session (start-up is cheap, but sharing keeps the suite fast), so tests isolate themselves by
naming everything they create - topics, consumer groups, Redis keys - after ``unique_name``. Nothing
here flushes a database: an external server may be shared with other users.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from devtools.redis_cluster import EmbeddedRedisCluster
from devtools.servers import (
    KafkaEndpoint,
    RedisEndpoint,
    kafka_from_env_or_embedded,
    redis_from_env_or_embedded,
)

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration with ``integration`` (so ``-m "not integration"`` works).

    The hook sees the whole session's items, not only this directory's, hence the path check.
    """
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaEndpoint]:
    """The session's Kafka: an :class:`~devtools.servers.EmbeddedKafka`, or the external cluster."""
    server = kafka_from_env_or_embedded()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_server: KafkaEndpoint) -> str:
    """Bootstrap servers (``host:port[,...]``) of the session's Kafka."""
    return kafka_server.bootstrap_servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisEndpoint]:
    """The session's Redis: an :class:`~devtools.servers.EmbeddedRedis` (AOF on), or the external one."""
    server = redis_from_env_or_embedded()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisEndpoint) -> str:
    """``redis://`` URL of the session's Redis."""
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[EmbeddedRedisCluster]:
    """A real local Redis Cluster: 3 masters with a replica each, from the same valkey-server
    binary as ``redis_server``, formed through redis-py; stopped at the end of the session."""
    cluster = EmbeddedRedisCluster(masters=3, replicas=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def unique_name() -> str:
    """A short name no other test (or earlier run against a shared server) uses.

    Valid as a Kafka topic name, consumer group id and Redis key prefix. ``redis_client`` deletes the
    keys starting with it after the test, so prefix the keys you create with it.
    """
    return f"it-{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture
async def redis_client(redis_url: str, unique_name: str) -> AsyncIterator[aioredis.Redis]:
    """A ``redis.asyncio`` client on the session's Redis (bytes responses), closed after the test.

    Keys starting with ``unique_name`` are deleted afterwards, so an external server stays clean.
    """
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        try:
            keys = [key async for key in client.scan_iter(match=f"{unique_name}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
