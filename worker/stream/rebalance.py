"""Rebalance: checkpoint before giving partitions up; claim and resume from Redis when given some;
take them back when Redis lost its state (see README, "How it stays correct")."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from state.protocol import Ownership, SeriesStore
from worker.model.errors import SpanmetricsError
from worker.observability.stats import WorkerStats
from worker.processors.pipeline import Pipeline
from worker.stream.checkpoint import Checkpoint
from worker.stream.partitions import Partitions
from worker.stream.retry import with_redis_retry

__all__ = ["STATE_LOST", "STATE_RECOVERED", "Held", "Listener", "Rebalance"]

#: Logged (at error level) once per loss of Redis state this worker sees.
STATE_LOST = "Redis lost its state"
#: Logged once the worker owns its assigned partitions again after a loss.
STATE_RECOVERED = "state recovered"
#: Fencing tokens and applied offsets a worker held, checked against the store's.
Held = tuple[dict[int, int], dict[int, int]]
#: Bound on the Kafka requests of a recovery (committed offsets), which holds the partitions' lock.
_RECOVERY_TIMEOUT_S = 15.0


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
        #: The store's generation marker as this worker last saw it (see :meth:`check_state`).
        self.generation: str | None = None
        #: Why the state was found lost, while the recovery has not succeeded yet.
        self._lost: str | None = None
        self._checking = asyncio.Lock()

    async def attach(self, store: SeriesStore, checkpoint: Checkpoint) -> None:
        """Remember the store's generation (created when missing), then take part in rebalances."""
        self.generation = await store.generation(uuid.uuid4().hex)
        self.store = store
        self.checkpoint = checkpoint

    def assigned(self) -> list[int]:
        """The input partitions the consumer group assigned to this worker (owned or not)."""
        return sorted(tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic)

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
                    stats=self.stats,
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

        Deltas are not kept per partition, so any discard rewinds every partition still owned. A
        partition Redis holds no offset for yet resumes where the group's committed offset says:
        memory held every record since then.
        """
        self.pipeline.take_deltas()
        self.shared.discard_progress()
        await self.seek_to_applied(partitions, or_committed=True)

    async def seek_to_applied(
        self, partitions: Collection[int], *, or_committed: bool = False
    ) -> dict[int, int | None]:
        """Seek to the stored offsets and restore the half-edges saved with them; where Redis holds
        no offset, to the group's committed one if ``or_committed``. Returns where each resumes."""
        assert self.store is not None
        applied = await self.store.applied_offsets(partitions)
        pending = await self.store.read_pending(partitions) if self.pipeline.servicegraphs else {}
        now = time.time_ns()
        resume: dict[int, int | None] = {}
        for partition in partitions:
            self.pipeline.drop_partition(partition)
            tp = TopicPartition(self.topic, partition)
            self.shared.unsettled.discard(partition)
            if partition in applied:
                self.shared.applied[partition] = resume[partition] = applied[partition]
                self.consumer.seek(tp, applied[partition])
            else:
                self.shared.applied.pop(partition, None)
                resume[partition] = await self._seek_to_committed(tp) if or_committed else None
            self.pipeline.restore_pending(partition, pending.get(partition), now)
        return resume

    async def _seek_to_committed(self, tp: TopicPartition) -> int | None:
        """What the last completed checkpoints reached (None: nothing committed, from the start)."""
        committed = await self.consumer.committed(tp)
        if committed is None:
            await self.consumer.seek_to_beginning(tp)  # the consumer's auto_offset_reset
            return None
        self.consumer.seek(tp, committed)
        return int(committed)

    # ------------------------------------------------------------------ lost state

    def held(self) -> Held:
        """What this worker holds now, for a later :meth:`check_state`."""
        return dict(self.shared.tokens), dict(self.shared.applied)

    async def check_state(self, held: Held | None = None) -> bool:
        """True when Redis lost the state since this worker last looked; then recover (retried at
        each call until it succeeds). ``held``: what to check, taken before (default: now).

        Never a guess: the generation marker is missing or changed, or a partition's fencing token
        or applied offset is missing or lower than what this worker held (both only grow; what it
        held was taken before this read, so a concurrent merge cannot look like a loss).
        """
        # One at a time: the loop's flush and a background emission may both ask.
        async with self._checking:
            return await self._check_state(held)

    async def _check_state(self, held: Held | None) -> bool:
        store = self.store
        if store is None or self.generation is None:
            return False
        if self._lost is None:
            tokens, applied = self.held() if held is None else held
            try:
                seen = await store.ownership(tokens)
            except (RedisError, OSError):
                return False  # an outage, not a loss: the checkpoint retries it
            reason = self._loss_in(seen, tokens, applied)
            if reason is None:
                return False
            self._lost = reason
            self.stats.state_lost += 1
            self.log.error(
                STATE_LOST,
                reason=reason,
                generation=self.generation,
                found=seen.generation,
                partitions=sorted(tokens),
                remedy="taking the partitions back from the group's committed offsets; "
                "series restart with a new start time (run Redis with appendonly yes)",
            )
        try:
            await asyncio.wait_for(self._recover(), timeout=_RECOVERY_TIMEOUT_S)
        except (TimeoutError, RedisError, OSError, KafkaError, SpanmetricsError) as exc:
            self.log.warning("recovery from lost state failed; retried at the next flush", error=str(exc))
        else:
            self._lost = None
        return True

    def _loss_in(self, seen: Ownership, tokens: Mapping[int, int], applied: Mapping[int, int]) -> str | None:
        if seen.generation is None:
            return "the generation marker is missing"
        if seen.generation != self.generation:
            return "the generation marker changed"
        behind = sorted(p for p, token in tokens.items() if seen.tokens.get(p, -1) < token)
        if behind:
            return f"fencing tokens went back for partitions {behind}"
        behind = sorted(p for p, at in applied.items() if p in tokens and seen.applied.get(p, -1) < at)
        if behind:
            return f"applied offsets went back for partitions {behind}"
        return None

    async def _recover(self) -> None:
        """Adopt the store's new generation (creating it if no worker did yet), drop what memory
        holds, claim the assigned partitions and resume them from Redis or the committed offsets."""
        store = self.store
        assert store is not None
        shared = self.shared
        async with shared.lock:
            self.generation = await store.generation(uuid.uuid4().hex)
            partitions = self.assigned()
            self.pipeline.take_deltas()
            shared.discard_progress()
            for partition in set(shared.tokens) | set(partitions):
                self.pipeline.drop_partition(partition)
            shared.tokens.clear()
            shared.applied.clear()
            shared.tokens.update(await store.claim(partitions))
            resume = await self.seek_to_applied(partitions, or_committed=True)
        self.consumer.resume(*(TopicPartition(self.topic, p) for p in partitions))
        shared.ready = True
        self.log.info(STATE_RECOVERED, generation=self.generation, partitions=partitions, resume_from=resume)

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
