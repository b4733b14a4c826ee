"""Rebalance: checkpoint before giving partitions up; claim and resume from Redis when given some."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from redis.exceptions import RedisError

from state.protocol import SeriesStore
from worker.model.errors import SpanmetricsError
from worker.observability.stats import WorkerStats
from worker.processors.pipeline import Pipeline
from worker.stream.checkpoint import Checkpoint
from worker.stream.partitions import Partitions
from worker.stream.retry import with_redis_retry

__all__ = ["Listener", "Rebalance"]


class Rebalance:
    """Partition hand-over; the store and the checkpoint are attached once the worker has started."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        pipeline: Pipeline,
        shared: Partitions,
        stats: WorkerStats,
        log: Any,
        *,
        topic: str,
        revoke_deadline: float,
        retry_within: float,
    ) -> None:
        self.consumer = consumer
        self.pipeline = pipeline
        self.shared = shared
        self.stats = stats
        self.log = log
        self.topic = topic
        self.revoke_deadline = revoke_deadline
        self.retry_within = retry_within
        self.store: SeriesStore | None = None
        self.checkpoint: Checkpoint | None = None

    def attach(self, store: SeriesStore, checkpoint: Checkpoint) -> None:
        self.store = store
        self.checkpoint = checkpoint

    async def on_revoked(self, revoked: Collection[TopicPartition]) -> None:
        """Checkpoint everything held (bounded by the revoke deadline) before letting go."""
        self.stats.rebalances += 1
        partitions = sorted(tp.partition for tp in revoked if tp.topic == self.topic)
        shared = self.shared
        shared.ready = False
        if not partitions or self.checkpoint is None:
            return
        try:
            await self.checkpoint.run(deadline=self.revoke_deadline, releasing=partitions)
        except (TimeoutError, SpanmetricsError, RedisError) as exc:
            self.log.error("flush on revoke failed; new owners replay from Redis", error=str(exc))
            kept = set(shared.tokens) - set(partitions)
            async with shared.lock:
                with contextlib.suppress(RedisError, OSError):
                    await self.rewind(kept)
            self.forget(partitions)
        self.log.info("partitions revoked", partitions=partitions)

    async def on_assigned(self, assigned: Collection[TopicPartition], *, retry: bool = False) -> None:
        """Claim (fence out the previous owner), then resume from the offsets stored in Redis.

        A claim that fails within ``retry_within`` leaves the partitions paused and unclaimed (the
        group's rebalance goes on); the loop tries again with ``retry=True``.
        """
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.topic)
        store = self.store if self.store is not None else await self._wait_for_store()
        shared = self.shared
        try:
            async with shared.lock:
                if retry:  # only what is still assigned and unclaimed (no rebalance meanwhile)
                    partitions = sorted(shared.unclaimed.intersection(partitions))
                    if not partitions:
                        return
                tokens = await with_redis_retry(
                    lambda: store.claim(partitions),
                    within=self.retry_within,
                    shared=shared,
                    log=self.log,
                    interrupt=(shared.stopping,),
                )
                shared.tokens.update(tokens)
                await self.seek_to_applied(partitions)
        except (SpanmetricsError, RedisError, OSError) as exc:
            self.consumer.pause(*(TopicPartition(self.topic, p) for p in partitions))
            for partition in partitions:
                shared.tokens.pop(partition, None)
            shared.unclaimed.update(partitions)
            self.log.warning("partitions assigned but not claimed yet", partitions=partitions, error=str(exc))
            return
        shared.unclaimed.difference_update(partitions)
        self.consumer.resume(*(TopicPartition(self.topic, p) for p in partitions))
        shared.ready = True
        self.log.info(
            "partitions assigned",
            partitions=partitions,
            resume_from={p: shared.applied.get(p) for p in partitions},
        )

    def forget(self, partitions: Collection[int]) -> None:
        """Given up: no token, no applied offset, no processor state for these partitions."""
        for partition in partitions:
            self.shared.tokens.pop(partition, None)
            self.shared.unclaimed.discard(partition)
            self.shared.applied.pop(partition, None)
            self.pipeline.drop_partition(partition)

    async def rewind(self, partitions: Collection[int]) -> None:
        """Discard what memory holds and resume ``partitions`` from the state saved in Redis.

        Deltas are not kept per partition, so any discard rewinds every partition still owned.
        """
        self.pipeline.take_deltas()
        self.shared.discard_progress()
        await self.seek_to_applied(partitions)

    async def seek_to_applied(self, partitions: Collection[int]) -> None:
        """Seek to the stored offsets and restore the half-edges saved with them."""
        assert self.store is not None
        applied = await self.store.applied_offsets(partitions)
        pending = await self.store.read_pending(partitions) if self.pipeline.servicegraphs else {}
        now = time.time_ns()
        for partition in partitions:
            self.pipeline.drop_partition(partition)
            self.shared.unsettled.discard(partition)
            if partition in applied:
                self.shared.applied[partition] = applied[partition]
                self.consumer.seek(TopicPartition(self.topic, partition), applied[partition])
            else:
                self.shared.applied.pop(partition, None)
            self.pipeline.restore_pending(partition, pending.get(partition), now)

    async def _wait_for_store(self) -> SeriesStore:
        # The first assignment can arrive while start() is still reading metadata.
        for _ in range(300):
            if self.store is not None:
                return self.store
            await asyncio.sleep(0.1)
        raise SpanmetricsError("state store not ready 30 s after start")


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """The aiokafka callbacks, handed to :class:`Rebalance`."""

    def __init__(self, rebalance: Rebalance) -> None:
        self.rebalance = rebalance

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self.rebalance.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self.rebalance.on_assigned(assigned)
