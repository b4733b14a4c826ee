"""A worker's checkpoint on a Redis Cluster: one merge step per owned partition, and when the
master of some partitions dies mid-checkpoint, every other partition's step is stored and
committed to Kafka, the dead master's partitions neither (they wait to be re-read from Redis)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Collection
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from devtools.loadgen.model import TraceGenerator, build_model
from devtools.redis_cluster import EmbeddedRedisCluster
from state.cluster_store import ClusterKeys, ClusterStateStore
from worker.config import Settings
from worker.model.errors import StateError
from worker.observability.selfmetrics import WorkerMetrics
from worker.observability.stats import WorkerStats
from worker.processors.pipeline import Pipeline
from worker.stream.checkpoint import Checkpoint
from worker.stream.partitions import Partitions

TOPIC = "in"
PARTITIONS = 6


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Consumer:
    """What the checkpoint asks of the Kafka consumer: commits and pauses, recorded."""

    def __init__(self) -> None:
        self.commits: list[dict[int, int]] = []
        self.paused: set[int] = set()

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= {tp.partition for tp in tps}


async def test_a_master_dying_mid_checkpoint_leaves_every_other_partition_stored_and_committed() -> None:
    with EmbeddedRedisCluster(masters=3, replicas=1) as cluster:
        client = RedisCluster.from_url(cluster.url)
        keys = ClusterKeys(f"cp-{uuid.uuid4().hex[:10]}", TOPIC)
        try:
            settings = Settings(servicegraphs={"enabled": True})
            pipeline = Pipeline(settings)
            store = ClusterStateStore(
                client, keys, slots=PARTITIONS, max_exemplars=pipeline.max_exemplars, replica_wait_s=1.0
            )
            await store.generation("g1")
            consumer = _Consumer()
            shared = Partitions()
            rewound: list[set[int]] = []

            async def rewind(partitions: Collection[int]) -> None:
                rewound.append(set(partitions))

            checkpoint = Checkpoint(
                store,
                pipeline,
                consumer,  # type: ignore[arg-type]
                shared,
                WorkerStats(),
                WorkerMetrics(CollectorRegistry()),
                _Log(),
                topic=TOPIC,
                retry_within=2.0,
                rewind=rewind,
                forget=lambda partitions: None,
            )
            assert pipeline.per_partition  # a cluster store: deltas kept per partition
            shared.tokens.update(await store.claim(range(PARTITIONS)))
            generator = TraceGenerator(build_model(services=4, seed=11), seed=11)

            def consume(first_offset: int) -> None:
                for index in range(30):
                    _, request = generator.trace_request(time.time_ns())
                    partition = index % PARTITIONS
                    pipeline.consume(request, "acme", partition)
                    shared.progress[partition] = first_offset + index // PARTITIONS + 1

            consume(0)
            assert await checkpoint.run()
            assert consumer.commits == [dict.fromkeys(range(PARTITIONS), 5)]
            assert await store.applied_offsets(range(PARTITIONS)) == dict.fromkeys(range(PARTITIONS), 5)

            ports = {p: client.get_node_from_key(keys.token(p)).port for p in range(PARTITIONS)}
            dead_port = ports[0]
            dying = {p for p, port in ports.items() if port == dead_port}
            living = set(range(PARTITIONS)) - dying
            assert living
            master = next(m for m in cluster.masters() if m.port == dead_port)
            replica = cluster.replica_of(master)
            with cluster.client(replica) as direct:  # no failover during the checkpoint
                direct.config_set("cluster-replica-no-failover", "yes")
            assert master.pid is not None
            os.kill(master.pid, signal.SIGKILL)
            consume(5)
            with pytest.raises(StateError):
                await checkpoint.run()
            # Stored and committed: exactly the partitions on living masters.
            assert consumer.commits[1:] == [dict.fromkeys(living, 10)]
            assert {p: shared.applied[p] for p in living} == dict.fromkeys(living, 10)
            assert consumer.paused == set(range(PARTITIONS))  # every partition waits to be re-read
            await asyncio.to_thread(cluster.elect, replica)
            for _ in range(100):  # the client finds the new master
                try:
                    stored = await store.applied_offsets(range(PARTITIONS))
                    break
                except (RedisError, OSError):  # while the client reloads its slot map
                    await asyncio.sleep(0.1)
            # Each partition's step applied whole or not at all: the dead master's ones not at all.
            assert stored == {p: 10 if p in living else 5 for p in range(PARTITIONS)}
            await checkpoint.settle()  # as the worker does before resuming: re-read from Redis
            assert rewound and rewound[-1] == set(range(PARTITIONS))
        finally:
            await client.aclose()
