"""The local Redis Cluster fixture: formed, sharded over three masters, surviving a manual failover."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from devtools.redis_cluster import TOTAL_SLOTS, EmbeddedRedisCluster


async def test_cluster_is_formed_and_shards_keys(
    redis_cluster: EmbeddedRedisCluster, unique_name: str
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    with redis_cluster.client(masters[0]) as client:
        info = client.execute_command("CLUSTER", "INFO")
    assert "cluster_state:ok" in info
    assert f"cluster_slots_assigned:{TOTAL_SLOTS}" in info
    assert "cluster_known_nodes:6" in info
    nodes = [ClusterNode(*node.split(":")) for node in redis_cluster.startup_nodes]
    client = RedisCluster(startup_nodes=nodes)
    try:
        keys = [f"{unique_name}:{n}" for n in range(60)]
        for n, key in enumerate(keys):
            await client.set(key, n)
        holders = {client.get_node_from_key(key).port for key in keys}
        assert holders == {node.port for node in masters}  # the keys are spread over every master
        assert [int(await client.get(key)) for key in keys] == list(range(60))
    finally:
        await client.delete(*keys)
        await client.aclose()


async def test_manual_failover_keeps_acknowledged_data(
    redis_cluster: EmbeddedRedisCluster, unique_name: str
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    key = f"{unique_name}:{{failover}}"
    try:
        await client.set(key, "before")
        old = next(m for m in redis_cluster.masters() if m.port == client.get_node_from_key(key).port)
        replica = await asyncio.to_thread(redis_cluster.failover, old)
        assert replica.port != old.port
        plain = aioredis.Redis(port=replica.port)
        try:
            assert (await plain.info("replication"))["role"] == "master"
        finally:
            await plain.aclose()
        # The client follows the MOVED redirection to the new master.
        assert await client.get(key) == b"before"
        await client.set(key, "after")
        assert client.get_node_from_key(key).port == replica.port
    finally:
        await client.delete(key)
        await client.aclose()


async def test_the_worker_client_starts_from_any_startup_node(redis_cluster: EmbeddedRedisCluster) -> None:
    """The node in redis.url is gone: the client the worker builds starts from startup_nodes."""
    from devtools.servers import free_port
    from worker.config import RedisConfig
    from worker.stream.clients import make_redis

    config = RedisConfig.model_validate(
        {
            "url": f"redis://127.0.0.1:{free_port()}",  # nobody listens there
            "cluster": True,
            "startup_nodes": redis_cluster.startup_nodes[1:],
            "connect_timeout": 1,
        }
    )
    client = make_redis(config)
    assert isinstance(client, RedisCluster)
    try:
        assert await client.ping()
        await client.set("startup-node-check", "1")
        await client.delete("startup-node-check")
    finally:
        await client.aclose()
