"""Ingest: fetched records into the processors (replays skipped, tenant, size, decode); bad ones to DLQ."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from aiokafka.structs import ConsumerRecord

from worker.config import KafkaConfig
from worker.model.errors import OtlpDecodeError
from worker.observability.stats import WorkerStats
from worker.otlp.decode import decode_batch, decode_batch_proto, is_plain_request
from worker.processors.pipeline import Pipeline, PipelineStats
from worker.stream.partitions import Partitions
from worker.stream.records import dlq_headers, tenant_of

__all__ = ["Ingest"]

#: A run of plain protobuf records decoded together ends at this many records or bytes.
_RUN_RECORDS = 64
_RUN_BYTES = 1 << 20


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
    ) -> None:
        self.kafka = kafka
        self.consumer = consumer
        self.producer = producer
        self.pipeline = pipeline
        self.shared = shared
        self.stats = stats
        self.log = log

    async def handle(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
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
        # Below the stored offset: already in Redis. Below our progress: already in memory
        # (a seek after a claim can hand the same records over twice).
        floor = max(shared.applied.get(partition, -1), shared.progress.get(partition, -1))
        kafka = self.kafka
        run: list[tuple[ConsumerRecord, bytes]] = []
        run_tenant = ""
        run_bytes = 0
        for record in records:
            if record.offset < floor:
                self.stats.skipped_replay += 1
                continue
            value: bytes = record.value or b""
            tenant = tenant_of(record.headers, kafka.tenant_header, kafka.default_tenant)
            plain = (
                tenant is not None and len(value) <= kafka.max_input_record_bytes and is_plain_request(value)
            )
            if run and (
                not plain or tenant != run_tenant or len(run) >= _RUN_RECORDS or run_bytes >= _RUN_BYTES
            ):
                await self._consume_records(partition, run, run_tenant)
                run = []
                run_bytes = 0
            if plain:
                run.append((record, value))
                run_tenant = tenant  # type: ignore[assignment]
                run_bytes += len(value)
            else:
                await self._consume_records(partition, [(record, value)], tenant)
        if run:
            await self._consume_records(partition, run, run_tenant)

    async def _consume_records(
        self, partition: int, run: list[tuple[ConsumerRecord, bytes]], tenant: str | None
    ) -> None:
        """Records of one tenant: several (all plain) joined into one parse, else each alone."""
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

        if len(run) > 1:
            try:
                request = decode_batch_proto(b"".join(value for _, value in run))
            except OtlpDecodeError:
                request = None  # decoded one by one below: the DLQ gets exactly the bad ones
            if request is not None:
                for record, value in run:
                    shared.progress[partition] = record.offset + 1
                    stats.records += 1
                    stats.bytes += len(value)
                try:
                    consumed = self.pipeline.consume(request, tenant or "", partition)
                except Exception as exc:  # bad data must never stop the partition
                    # Which record did it is unknown: none is counted as consumed.
                    for record, _ in run:
                        await self._dead_letter(record, f"processing failed: {type(exc).__name__}: {exc}")
                    return
                count(consumed)
                return
        for record, value in run:
            shared.progress[partition] = record.offset + 1
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
                request = decode_batch(value)
            except OtlpDecodeError as exc:
                await self._dead_letter(record, str(exc))
                continue
            try:
                consumed = self.pipeline.consume(request, tenant, partition)
            except Exception as exc:  # bad data must never stop the partition
                await self._dead_letter(record, f"processing failed: {type(exc).__name__}: {exc}")
                continue
            count(consumed)

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
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
