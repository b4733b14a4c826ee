"""Checkpoint: deltas and the offsets they cover into Redis in one atomic step, then offsets to Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from state.cluster_store import ClusterStateStore
from state.protocol import FencedError, SeriesStore, StateBehindError
from worker.model.series import TenantDeltas
from worker.observability.selfmetrics import WorkerMetrics
from worker.observability.stats import WorkerStats
from worker.processors.pipeline import Pipeline
from worker.stream.partitions import Partitions
from worker.stream.retry import with_redis_retry

__all__ = ["Checkpoint"]


class Checkpoint:
    """The ordered commit unit of the loop (:meth:`run`); a fenced step resets memory to Redis."""

    def __init__(
        self,
        store: SeriesStore,
        pipeline: Pipeline,
        consumer: AIOKafkaConsumer,
        shared: Partitions,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        log: Any,
        *,
        topic: str,
        retry_within: float,
        rewind: Callable[[Collection[int]], Awaitable[None]],
        forget: Callable[[Collection[int]], None],
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.consumer = consumer
        self.shared = shared
        self.stats = stats
        self.metrics = metrics
        self.log = log
        self.topic = topic
        self.retry_within = retry_within
        #: Resume these partitions from Redis, discarding memory (the rebalance part's rewind).
        self._rewind = rewind
        #: Give these partitions up: token, applied offset, processor state (the rebalance part's).
        self._forget = forget
        #: The last merge's sequence: each merge takes the next one, its retries repeat it.
        self._sequence = 0
        #: The tokens of a merge whose outcome is unknown (retries ran out, the deadline passed,
        #: cancelled): it may still be delivered, so it is settled before the next merge.
        self._unsettled: dict[int, int] | None = None
        #: On a Redis Cluster each partition merges in a step of its own (README: Redis Cluster),
        #: so the pipeline keeps each partition's deltas apart.
        self._cluster = store if isinstance(store, ClusterStateStore) else None
        if self._cluster is not None:
            pipeline.split_by_partition()

    async def run(
        self,
        *,
        deadline: float | None = None,
        releasing: Collection[int] = (),
        interrupt: Sequence[asyncio.Event] = (),
    ) -> bool:
        """One checkpoint, in order; ``releasing`` partitions are forgotten once their state is stored.

        Returns False when fenced (memory was reset to Redis and nothing is committed). Raises
        TimeoutError past ``deadline`` (waiting for the lock included), StateError when Redis stays
        unreachable and RetryInterrupted when one of ``interrupt`` is set during the retries; then
        the owned partitions are unsettled (paused until re-read from Redis).
        """
        shared = self.shared
        async with asyncio.timeout(deadline), shared.lock:
            # 1. Take what memory holds: deltas, the offsets they cover, pending half-edges.
            #    Unsettled partitions have nothing in memory and are left out.
            deltas: Mapping[int, Mapping[str, TenantDeltas]] = (
                self.pipeline.take_partition_deltas()
                if self._cluster is not None
                else {-1: self.pipeline.take_deltas()}
            )
            progress = shared.take_progress()
            fences = {
                p: (token, progress.get(p, -1))
                for p, token in shared.tokens.items()
                if p not in shared.unsettled
            }
            pending = self.pipeline.export_pending(fences)
            committed: dict[int, int] | None = {}
            #: Partitions whose own step is applied and on a replica (a cluster's partial failure).
            done: set[int] = set()
            failure: BaseException | None = None
            if fences:
                # 2. One atomic Redis step: deltas, offsets and half-edges, fenced by our tokens
                #    (on a cluster one per partition: each applied whole or not at all).
                redis_started = time.monotonic()
                try:
                    await self._merge(deltas, fences, pending, interrupt, done)
                except FencedError as exc:
                    self.stats.fenced += 1
                    self.log.warning(
                        "Redis holds less than this worker saw applied; checking the state"
                        if isinstance(exc, StateBehindError)
                        else "fenced: another worker owns a partition; replaying from Redis",
                        partition=exc.partition,
                    )
                    try:
                        await self._reset_to_redis()
                    except BaseException:
                        self.unsettle()
                        raise
                    committed = None
                except BaseException as exc:
                    # Taken from memory, maybe applied by Redis, maybe not: only Redis can say.
                    # (Partitions whose step is known applied and replicated still go to Kafka.)
                    self.unsettle()
                    if not done or not isinstance(exc, Exception):  # cancelled: no Kafka now
                        raise
                    failure = exc
                    committed = {p: o for p, o in progress.items() if p in done and p in shared.tokens}
                    shared.advance_applied(committed)
                else:
                    self.stats.last_redis_seconds = time.monotonic() - redis_started
                    self.metrics.observe_redis_step(self.stats.last_redis_seconds)
                    # 3. Stored: records below these offsets are replays from now on.
                    shared.advance_applied(progress)
                    committed = {p: o for p, o in progress.items() if p in shared.tokens}
            elif any(deltas.values()):
                # Deltas without an owned partition cannot be recorded exactly once; their
                # partitions' new owners replay them from the stored offsets.
                self.log.warning(
                    "dropping deltas of partitions no longer owned",
                    tenants=sum(len(d) for d in deltas.values()),
                )
            # 4. Partitions being given up go before anything else can take the lock.
            self._forget(releasing)
        if committed is None:
            return False
        # 5. Then Kafka, for lag exporters and KEDA (Redis holds the truth).
        await self._commit_to_kafka(committed)
        if failure is not None:
            raise failure
        return True

    async def _merge(
        self,
        deltas: Mapping[int, Mapping[str, TenantDeltas]],
        fences: dict[int, tuple[int, int]],
        pending: Mapping[int, bytes] | None,
        interrupt: Sequence[asyncio.Event] = (),
        done: set[int] | None = None,
    ) -> None:
        """One merge under a new sequence, retried through an outage with that same sequence.
        ``deltas``: per partition on a cluster, else all under -1. ``done`` collects the
        partitions whose step is applied and replicated (a cluster: the retries skip them)."""
        self._sequence += 1
        sequence, store = self._sequence, self.store
        applied = self.shared.applied
        seen = {p: applied[p] for p in fences if p in applied}
        finished = set() if done is None else done

        async def step() -> object:
            if self._cluster is None:
                return await store.merge(deltas.get(-1, {}), fences, pending, sequence=sequence, applied=seen)
            left = {p: fence for p, fence in fences.items() if p not in finished}
            steps = await self._cluster.merge_partitions(
                deltas, left, pending, sequence=sequence, applied=seen
            )
            failures = [result for result in steps.values() if isinstance(result, BaseException)]
            finished.update(p for p, result in steps.items() if not isinstance(result, BaseException))
            if failures:  # a refused step first: it is never retried
                raise next((f for f in failures if isinstance(f, FencedError)), failures[0])
            return True

        try:
            await with_redis_retry(
                step,
                within=self.retry_within,
                shared=self.shared,
                log=self.log,
                stats=self.stats,
                interrupt=interrupt,
            )
        except FencedError:
            raise  # refused: nothing applied, and never will be (its token is stale for good)
        except BaseException:
            self._unsettled = {p: token for p, (token, _) in fences.items()}
            raise

    async def settle(self) -> None:
        """Re-read the owned partitions from Redis, once a merge of unknown outcome (held in the
        network, queued in Redis) can no longer apply (see README); the caller resumes them."""
        unsettled = self._unsettled
        if unsettled is not None:
            tokens = self.shared.tokens
            held = {p: token for p, token in unsettled.items() if tokens.get(p) == token}
            if held:
                # A newer merge with no deltas and no offsets overtakes it on these partitions,
                # or finds one taken over (then it is fenced for good too). Partitions claimed
                # again or given up need nothing: their next owners claim before they resume.
                with contextlib.suppress(FencedError):
                    await self._merge({}, {p: (token, -1) for p, token in held.items()}, None)
            self._unsettled = None
        await self._reset_to_redis()

    async def _commit_to_kafka(self, offsets: dict[int, int]) -> None:
        if not offsets:
            return
        to_commit = {TopicPartition(self.topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        try:
            await asyncio.wait_for(self.consumer.commit(to_commit), timeout=5)
        except (KafkaError, TimeoutError) as exc:
            # Redis holds the truth; the group commit only feeds lag monitoring.
            self.log.info("kafka commit skipped", error=str(exc))

    def unsettle(self) -> None:
        """Memory of the owned partitions is gone into a step of unknown outcome: pause them until
        they are re-read from Redis (merging them again could count twice or skip records)."""
        shared = self.shared
        fresh = set(shared.tokens) - shared.unsettled
        if fresh:
            shared.unsettled |= fresh
            self.consumer.pause(*(TopicPartition(self.topic, p) for p in fresh))

    async def _reset_to_redis(self) -> None:
        """Fenced: drop in-memory state, forget lost partitions, replay the rest from Redis."""
        shared = self.shared
        owned = await self.store.owns(shared.tokens)
        lost = set(shared.tokens) - owned
        for partition in lost:
            shared.tokens.pop(partition, None)
            self.pipeline.drop_partition(partition)
        if lost:
            self.consumer.pause(*(TopicPartition(self.topic, p) for p in lost))
        await self._rewind(owned)
