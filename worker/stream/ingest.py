"""Ingest: fetched records into the processors (replays skipped, tenant, size, decode); bad ones to DLQ.
A record whose processing raises counts nothing: memory is rewound to Redis (README, "poison")."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from worker.config import KafkaConfig
from worker.model.errors import OtlpDecodeError
from worker.observability.stats import WorkerStats
from worker.otlp.decode import Decoded, decode_spans
from worker.processors.pipeline import NativeRun, Pipeline, PipelineStats
from worker.stream.fetch import RecordLike, is_plain_request  # compiled when built
from worker.stream.partitions import Partitions
from worker.stream.records import dlq_headers, tenant_of
from worker.stream.retry import with_redis_retry

__all__ = ["Ingest"]

#: A run of plain protobuf records decoded together ends at this many records or bytes.
_RUN_RECORDS = 64
_RUN_BYTES = 1 << 20
#: Dead-lettered (partition, offset)s remembered until a checkpoint has passed them; past this
#: many the oldest is forgotten (it would be dead-lettered again, never counted).
_MAX_REMEMBERED = 10_000


class Ingest:
    """Consumes fetched records of owned partitions into the pipeline; call under the shared lock."""

    def __init__(
        self,
        kafka: KafkaConfig,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pipeline: Pipeline,
        shared: Partitions,
        stats: WorkerStats,
        log: Any,
        *,
        rewind: Callable[[Collection[int]], Awaitable[None]],
        checkpoint_spans: int,
    ) -> None:
        self.kafka = kafka
        self.consumer = consumer
        self.producer = producer
        self.pipeline = pipeline
        self.shared = shared
        self.stats = stats
        self.log = log
        #: Discard memory and resume these partitions from Redis (the rebalance part's rewind).
        self._rewind = rewind
        #: Buffered spans at which the loop checkpoints (``worker.max_buffered_spans``).
        self.checkpoint_spans = checkpoint_spans
        #: (partition, offset) dead-lettered because processing raised, until a checkpoint passed it.
        self._dead: OrderedDict[tuple[int, int], None] = OrderedDict()
        #: partition -> records below this offset are consumed one by one (a joined run raised).
        self._alone: dict[int, int] = {}
        #: Partitions sought back by a rewind: records fetched before the seek are dropped.
        self._sought: set[int] = set()

    async def handle(self, tp: TopicPartition, records: Sequence[RecordLike]) -> None:
        """One partition's fetched records: skip replays, then consume runs of plain records together."""
        partition = tp.partition
        shared = self.shared
        if partition not in shared.tokens or partition in shared.unsettled:
            # Fetched before our claim finished (aiokafka fetches while the assignment callback
            # awaits Redis), or before the partition was paused: fetch them again once claimed
            # (settled). If the partition is gone, its new owner replays them from Redis.
            if tp in self.consumer.assignment():
                self.consumer.seek(tp, records[0].offset)
            return
        if partition in self._sought and await self._fetched_before_rewind(tp, records):
            return
        # Below the stored offset: already in Redis. Below our progress: already in memory
        # (a seek after a claim can hand the same records over twice).
        applied = shared.applied.get(partition, -1)
        floor = max(applied, shared.progress.get(partition, -1))
        self._forget_below(partition, applied)
        alone = self._alone.get(partition, -1)
        kafka = self.kafka
        tenant_header, default_tenant = kafka.tenant_header, kafka.default_tenant
        max_bytes = kafka.max_input_record_bytes
        dead = self._dead
        run: list[tuple[RecordLike, bytes]] = []
        run_tenant = ""
        run_bytes = 0
        for record in records:
            offset = record.offset
            if offset < floor:
                self.stats.skipped_replay += 1
                continue
            if dead and (partition, offset) in dead:
                # Dead-lettered before a rewind: counts nothing and is not sent again. Checkpoint
                # past it before reading on, so that a later failure rewinds to after it.
                if run and not await self._consume_records(partition, run, run_tenant):
                    return
                self.stats.skipped_replay += 1
                self._advance(partition, record.offset)
                shared.buffered_spans = max(shared.buffered_spans, self.checkpoint_spans)
                if record is not records[-1]:
                    self.consumer.seek(tp, record.offset + 1)
                return
            value: bytes = record.value or b""
            size = len(value)
            headers = record.headers
            tenant = tenant_of(headers, tenant_header, default_tenant) if headers else default_tenant
            plain = tenant is not None and size <= max_bytes and offset >= alone and is_plain_request(value)
            if run and (
                not plain or tenant != run_tenant or len(run) >= _RUN_RECORDS or run_bytes >= _RUN_BYTES
            ):
                if not await self._consume_records(partition, run, run_tenant):
                    return
                run = []
                run_bytes = 0
            if plain:
                run.append((record, value))
                run_tenant = tenant  # type: ignore[assignment]
                run_bytes += size
            elif not await self._consume_records(partition, [(record, value)], tenant):
                return
        if run:
            await self._consume_records(partition, run, run_tenant)

    async def _consume_records(
        self, partition: int, run: list[tuple[RecordLike, bytes]], tenant: str | None
    ) -> bool:
        """Records of one tenant: several (all plain) joined into one parse, else each alone.

        False when processing raised and memory was rewound: the caller drops the rest of the
        fetched records (read again from Redis's offsets).
        """
        # One turn of the event loop per run (at most _RUN_RECORDS records): a batch of spans
        # that all start new series takes ~1 ms a record, and heartbeats and probes share the
        # loop (issue 18). The caller holds the partitions' lock, so nothing else consumes. It
        # also lets aiokafka's fetcher task send the next fetch of a drained partition, so that
        # fetching overlaps processing (getmany returns buffered records without suspending).
        await asyncio.sleep(0)
        kafka = self.kafka
        stats = self.stats
        shared = self.shared

        def count(consumed: PipelineStats) -> None:
            stats.spans += consumed.spans
            shared.buffered_spans += consumed.spans
            if consumed.skipped_no_service:
                stats.drop("no_service_name", consumed.skipped_no_service)
            if consumed.overflowed:
                stats.drop("cardinality_overflow", consumed.overflowed)
            if consumed.dropped_edges:
                stats.drop("too_many_pending_edges", consumed.dropped_edges)
            if consumed.filtered:
                stats.drop("span_metrics_filtered", consumed.filtered)
            if consumed.outside_slack:
                stats.drop("outside_metrics_ingestion_slack", consumed.outside_slack)
            if consumed.invalid_labels:
                stats.drop("invalid_labels", consumed.invalid_labels)

        # The ingestion slack is relative to each record's time: then records are read one by one.
        if len(run) > 1 and not self.pipeline.needs_record_time:
            joined: Decoded | NativeRun | None
            try:
                joined = self.pipeline.decode(b"".join(value for _, value in run))
            except OtlpDecodeError:
                joined = None  # decoded one by one below: the DLQ gets exactly the bad ones
            if joined is not None:
                # The run's offsets ascend: memory covers it up to its last record.
                self._advance(partition, run[-1][0].offset)
                stats.records += len(run)
                stats.bytes += sum([len(value) for _, value in run])
                try:
                    consumed = self.pipeline.consume_decoded(joined, tenant or "", partition)
                except Exception as exc:  # bad data must never stop the partition
                    # Which record did it is unknown: after the rewind they are read one by one,
                    # so that only the one that raises is dead-lettered.
                    end = run[-1][0].offset + 1
                    self._alone[partition] = max(self._alone.get(partition, -1), end)
                    await self._discard_memory(partition, run[0][0].offset, exc)
                    return False
                count(consumed)
                return True
        for record, value in run:
            self._advance(partition, record.offset)
            stats.records += 1
            stats.bytes += len(value)
            if tenant is None:
                await self._dead_letter(record, f"invalid {kafka.tenant_header} header")
                continue
            if len(value) > kafka.max_input_record_bytes:
                await self._dead_letter(
                    record, f"record of {len(value)} bytes exceeds max_input_record_bytes"
                )
                continue
            try:
                decoded = decode_spans(value)
            except OtlpDecodeError as exc:
                await self._dead_letter(record, str(exc))
                continue
            try:
                consumed = self.pipeline.consume(
                    decoded.batch,
                    tenant,
                    partition,
                    groups=decoded.groups,
                    record_time_ns=_record_time_ns(record),
                )
            except Exception as exc:  # bad data must never stop the partition
                # Memory first (a failed DLQ send then leaves nothing partial to checkpoint),
                # then the DLQ; remembered so the re-read skips it.
                await self._discard_memory(partition, record.offset, exc)
                await self._dead_letter(record, f"processing failed: {type(exc).__name__}: {exc}")
                self._remember(partition, record.offset)
                return False
            count(consumed)
        return True

    def _advance(self, partition: int, offset: int) -> None:
        """Memory covers ``partition`` up to ``offset`` (inclusive)."""
        self.shared.progress[partition] = offset + 1

    async def _discard_memory(self, partition: int, offset: int, exc: Exception) -> None:
        """Processing raised, perhaps after adding part of its deltas: drop everything memory holds
        and resume every owned partition from Redis (under the shared lock: no checkpoint between)."""
        shared = self.shared
        owned = sorted(shared.tokens)
        self.log.warning(
            "processing failed; memory discarded, owned partitions re-read from Redis's offsets",
            partition=partition,
            offset=offset,
            error=f"{type(exc).__name__}: {exc}"[:200],
        )
        await with_redis_retry(
            lambda: self._rewind(owned),
            within=self.kafka.max_poll_interval * 0.5,
            shared=shared,
            log=self.log,
            stats=self.stats,
        )
        self._sought.update(owned)
        for key in [key for key in self._dead if key[0] not in shared.tokens]:
            del self._dead[key]  # a new owner re-reads it: dead-lettered again, counted never
        for p in [p for p in self._alone if p not in shared.tokens]:
            del self._alone[p]

    async def _fetched_before_rewind(self, tp: TopicPartition, records: Sequence[RecordLike]) -> bool:
        """True for records of the batch that was being handled when a rewind sought ``tp`` back
        (its position is then at or before them); they are fetched again."""
        if tp not in self.consumer.assignment():
            return True
        if await self.consumer.position(tp) <= records[0].offset:
            return True
        self._sought.discard(tp.partition)
        return False

    def _remember(self, partition: int, offset: int) -> None:
        dead = self._dead
        dead[(partition, offset)] = None
        while len(dead) > _MAX_REMEMBERED:
            dead.popitem(last=False)

    def _forget_below(self, partition: int, applied: int) -> None:
        """What a checkpoint has passed is skipped as a replay anyway."""
        if self._alone.get(partition, applied) < applied:
            del self._alone[partition]
        if self._dead:
            for key in [key for key in self._dead if key[0] == partition and key[1] < applied]:
                del self._dead[key]

    async def _dead_letter(self, record: RecordLike, reason: str) -> None:
        """Publish the record unchanged with why and where from; wait for delivery so it is never lost."""
        self.stats.dlq += 1
        self.stats.drop("undecodable")
        topic = self.kafka.dlq_topic
        headers = dlq_headers(record.headers, reason, record.topic, record.partition, record.offset)
        # A record needs a key or a value (a keyless tombstone is forwarded with an empty value).
        value = record.value if record.value is not None or record.key is not None else b""
        try:
            await self.producer.send_and_wait(topic, value, key=record.key, headers=headers)
        except (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError):
            # Too large to forward (for our producer or for the broker): failing here would stop
            # the partition for good (the record comes back after every restart). Say where it
            # is and why, without the value and the original headers.
            size = len(record.value or b"") + sum(len(k) + len(v or b"") for k, v in record.headers or ())
            reason = f"{reason}; not forwarded: the record ({size} bytes) is too large for the DLQ topic"
            headers = dlq_headers(None, reason, record.topic, record.partition, record.offset)
            await self.producer.send_and_wait(topic, b"", headers=headers)
        self.log.warning(
            "record sent to the dead-letter topic",
            partition=record.partition,
            offset=record.offset,
            reason=reason[:200],
        )


def _record_time_ns(record: RecordLike) -> int | None:
    """The record's Kafka timestamp (milliseconds: create or log-append time) in nanoseconds."""
    timestamp = getattr(record, "timestamp", None)
    return timestamp * 1_000_000 if isinstance(timestamp, int) and timestamp >= 0 else None
