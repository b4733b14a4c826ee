"""The stream worker: consume spans, aggregate in memory, flush exactly once into Redis, emit.

One checkpoint is one ordered unit (as in quix-streams): aggregate in memory; on the flush
timer (and before partitions are given up) merge all deltas into Redis together with the input
offsets they cover, in one atomic step; then commit those offsets to Kafka (for lag exporters
and KEDA); then emit the slots this worker owns. A worker that takes a partition over resumes
from the offset stored in Redis, so replayed records are skipped, and it bumps the partition's
fencing token first, so the previous owner can no longer write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from state.keys import KeySpace
from state.redis_store import FencedError, RedisStateStore
from worker.config import KafkaConfig, RedisConfig, Settings
from worker.model.errors import OtlpDecodeError, SpanmetricsError, StateError
from worker.model.series import MetricDescriptor
from worker.observability.logs import redact_url
from worker.observability.selfmetrics import WorkerMetrics
from worker.otlp.decode import decode_batch
from worker.processors.pipeline import Pipeline
from worker.stream.emission import EmitReport, Emitter
from worker.stream.kafka_clients import make_consumer, make_producer
from worker.stream.records import dlq_headers, tenant_of

__all__ = ["StreamWorker", "WorkerStats", "make_redis"]

_T = TypeVar("_T")

#: How often pending service-graph half-edges are checked against ``wait`` (Tempo: 2 s).
_EXPIRY_PERIOD = 2.0

log = structlog.get_logger("spanmetrics.worker")


@dataclass(slots=True)
class WorkerStats:
    """Running totals; the self-metrics endpoint and the tests read them."""

    records: int = 0
    bytes: int = 0
    spans: int = 0
    skipped_replay: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dlq: int = 0
    flushes: int = 0
    fenced: int = 0
    rebalances: int = 0
    emitted_series: int = 0
    emitted_records: int = 0
    emitted_bytes: int = 0
    expired: int = 0
    overflowed: int = 0
    last_flush_seconds: float = 0.0
    last_redis_seconds: float = 0.0

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


def make_redis(config: RedisConfig) -> Redis:
    """The async Redis client; ``rediss://`` URLs get TLS, with a CA bundle when configured."""
    options: dict[str, Any] = {
        "password": config.password.get_secret_value() if config.password else None,
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
    }
    if config.ssl_ca_certs:
        options["ssl_ca_certs"] = config.ssl_ca_certs
    return Redis.from_url(config.url.get_secret_value(), **options)


def _kafka_start_problem(config: KafkaConfig, exc: Exception) -> str:
    """One line for a Kafka client that did not start: which cluster, what went wrong."""
    where = f"Kafka at {config.bootstrap_servers} ({config.security_protocol})"
    if config.security_protocol.startswith("SASL") and not isinstance(exc, KafkaConnectionError):
        return (
            f"{where}: SASL {config.sasl_mechanism} login as {config.sasl_username!r} failed - check "
            f"sasl_username, sasl_password and sasl_mechanism ({type(exc).__name__}: {exc})"
        )
    return f"{where}: {type(exc).__name__}: {exc}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self.worker.on_assigned(assigned)


class StreamWorker:
    """One member of the consumer group. ``run()`` until ``request_stop()``; then it flushes and leaves."""

    def __init__(
        self, settings: Settings, *, worker_id: str | None = None, metrics: WorkerMetrics | None = None
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.stats = WorkerStats()
        self.log = log.bind(worker=self.worker_id)
        kafka = settings.kafka
        self.topic = kafka.input_topic
        self.consumer = make_consumer(kafka)
        self.producer = make_producer(kafka)
        self.redis = make_redis(settings.redis)
        self.pipeline = Pipeline(settings)
        self.descriptors: dict[str, MetricDescriptor] = self.pipeline.descriptors()
        self.store: RedisStateStore | None = None
        self.emitter: Emitter | None = None
        #: partition -> fencing token, for the partitions this worker owns right now.
        self.tokens: dict[int, int] = {}
        #: partition -> next offset to apply, as stored in Redis (records below it are replays).
        self.applied: dict[int, int] = {}
        #: partition -> next offset after what the in-memory deltas cover.
        self.progress: dict[int, int] = {}
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._buffered_spans = 0
        self.partitions = 0
        self.ready = False
        self.last_tick = time.monotonic()
        # Self-metrics (worker/observability/selfmetrics.py): counters are read from self.stats at
        # scrape time; histograms and the lag/active-series refresh are the only calls below.
        self.metrics = metrics if metrics is not None else WorkerMetrics(CollectorRegistry())
        self.metrics.bind(self)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to Redis and Kafka; a failure is one SpanmetricsError naming the server and
        the problem (never a secret: the Redis URL's password is masked)."""
        try:
            await self.redis.ping()
        except RedisError as exc:
            url = redact_url(self.settings.redis.url.get_secret_value())
            raise SpanmetricsError(f"Redis at {url}: {exc}") from None
        try:
            await self.producer.start()
            self.consumer.subscribe([self.topic], listener=_Rebalance(self))
            await self.consumer.start()
        except Exception as exc:  # aiokafka reports a refused SASL login as KeyError & co
            raise SpanmetricsError(_kafka_start_problem(self.settings.kafka, exc)) from None
        self.partitions = await self._partition_count()
        spanmetrics = self.settings.spanmetrics
        exponential = spanmetrics.histogram.exponential
        self.store = RedisStateStore(
            self.redis,
            KeySpace(self.settings.redis.key_prefix, self.topic),
            slots=self.partitions,
            max_exemplars=self.pipeline.max_exemplars,
            exp_max_size=exponential.max_size if exponential else 160,
            active_series_limit=self.settings.worker.max_active_series_per_tenant,
        )
        await self.store.check_layout()
        self.emitter = Emitter(
            self.store,
            self.producer,
            topic=self.settings.kafka.output_topic,
            tenant_header=self.settings.kafka.tenant_header,
            default_tenant=self.settings.kafka.default_tenant,
            descriptors=self.descriptors,
            temporality=spanmetrics.aggregation_temporality,
            expiration_s=spanmetrics.metrics_expiration,
            max_record_bytes=self.settings.kafka.output_max_record_bytes,
            worker_id=self.worker_id,
        )
        self.log.info("worker started", topic=self.topic, partitions=self.partitions)

    async def _partition_count(self) -> int:
        deadline = time.monotonic() + 30
        while True:
            partitions = self.consumer.partitions_for_topic(self.topic)
            if partitions:
                return len(partitions)
            if time.monotonic() > deadline:
                raise SpanmetricsError(f"input topic {self.topic!r} does not exist or has no partitions")
            await self.consumer._client.force_metadata_update()  # no public API for this
            await asyncio.sleep(0.5)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Consume and flush until stopped; then flush, commit and leave within the grace period."""
        interval = self.settings.spanmetrics.metrics_flush_interval
        max_buffered = self.settings.worker.max_buffered_spans
        next_flush = time.monotonic() + interval
        next_expiry = time.monotonic() + _EXPIRY_PERIOD
        try:
            while not self._stop.is_set():
                self.last_tick = time.monotonic()
                if self.last_tick >= next_expiry:
                    async with self._lock:
                        self.pipeline.expire(time.time_ns())
                    next_expiry = self.last_tick + _EXPIRY_PERIOD
                timeout = max(0.0, min(next_flush - time.monotonic(), 0.5))
                batch = await self.consumer.getmany(
                    timeout_ms=int(timeout * 1000), max_records=self.settings.kafka.max_poll_records
                )
                if batch:
                    async with self._lock:
                        for tp, records in batch.items():
                            await self._handle(tp, records)
                if time.monotonic() >= next_flush or self._buffered_spans >= max_buffered:
                    await self.flush(emit=time.monotonic() >= next_flush)
                    if time.monotonic() >= next_flush:
                        next_flush = time.monotonic() + interval
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        grace = self.settings.worker.shutdown_grace
        try:
            await asyncio.wait_for(self.flush(emit=False), timeout=grace * 0.6)
        except (TimeoutError, SpanmetricsError, RedisError, KafkaError) as exc:
            self.log.error("final flush failed; the next owner replays from Redis offsets", error=str(exc))
        await self.close(grace * 0.4)
        self.log.info("worker stopped", **self._totals())

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the clients (leaving the group), never raising: also used when start() fails."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.consumer.stop(), timeout=timeout * 0.75)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), timeout=timeout * 0.25)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def _totals(self) -> dict[str, object]:
        s = self.stats
        return {"records": s.records, "spans": s.spans, "dlq": s.dlq, "skipped_replay": s.skipped_replay}

    # ------------------------------------------------------------------ records

    async def _handle(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        partition = tp.partition
        if partition not in self.tokens:
            # Fetched before our claim finished (aiokafka fetches while the assignment callback
            # awaits Redis): fetch them again once claimed. If the partition is gone, its new
            # owner replays them from the offsets stored in Redis.
            if tp in self.consumer.assignment():
                self.consumer.seek(tp, records[0].offset)
            return
        # Below the stored offset: already in Redis. Below our progress: already in memory
        # (a seek after a claim can hand the same records over twice).
        floor = max(self.applied.get(partition, -1), self.progress.get(partition, -1))
        kafka = self.settings.kafka
        from worker.otlp.decode import is_plain_request  # kept local to the record methods

        # Consecutive plain protobuf records of one tenant are decoded and consumed together
        # (one parse and one pass of the processors for many small records, usually one trace
        # each); anything else goes alone, and a run is handed over before it.
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
            if run and (not plain or tenant != run_tenant or len(run) >= 64 or run_bytes >= 1 << 20):
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
        """Decode and consume records of one tenant: together when there are several, else alone.

        Several are plain protobuf records (``is_plain_request``): joined, they parse as one
        request with all their resources. If the joined parse fails, each is decoded alone so the
        dead-letter topic gets exactly the bad ones. Progress and counters stay per record.
        """
        from worker.otlp.decode import decode_batch_proto  # kept local to the record methods
        from worker.processors.pipeline import PipelineStats

        kafka = self.settings.kafka
        stats = self.stats

        def count(consumed: PipelineStats) -> None:
            stats.spans += consumed.spans
            self._buffered_spans += consumed.spans
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
                request = None
            if request is not None:
                for record, value in run:
                    self.progress[partition] = record.offset + 1
                    self.stats.records += 1
                    self.stats.bytes += len(value)
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
            self.progress[partition] = record.offset + 1
            self.stats.records += 1
            self.stats.bytes += len(value)
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
        headers = dlq_headers(record.headers, reason, record.topic, record.partition, record.offset)
        # A record needs a key or a value (a keyless tombstone is forwarded with an empty value).
        value = record.value if record.value is not None or record.key is not None else b""
        try:
            await self.producer.send_and_wait(
                self.settings.kafka.dlq_topic, value, key=record.key, headers=headers
            )
        except (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError):
            # Too large to forward (for our producer or for the broker): failing here would stop
            # the partition for good (the record comes back after every restart). Say where it
            # is and why, without the value and the original headers.
            size = len(record.value or b"") + sum(len(k) + len(v or b"") for k, v in record.headers or ())
            reason = f"{reason}; not forwarded: the record ({size} bytes) is too large for the DLQ topic"
            headers = dlq_headers(None, reason, record.topic, record.partition, record.offset)
            await self.producer.send_and_wait(self.settings.kafka.dlq_topic, b"", headers=headers)
        self.log.warning(
            "record sent to the dead-letter topic",
            partition=record.partition,
            offset=record.offset,
            reason=reason[:200],
        )

    # ------------------------------------------------------------------ flush

    async def flush(self, *, emit: bool = True) -> EmitReport | None:
        """Merge deltas + offsets into Redis atomically, commit to Kafka, then emit owned slots."""
        import gc  # kept local to the flush methods

        started = time.monotonic()
        # The flush allocates several objects per series (merge rows, decoded records, OTLP
        # points), none in reference cycles; with 100k+ live objects every collection they
        # trigger scans them all, which was about a third of a flush. Paused, not skipped:
        # collections resume when the flush ends.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            async with self._lock:
                committed = await self._merge_step()
            if committed is None:
                return None
            await self._commit_to_kafka(committed)
            report = None
            if emit:
                report = await self._emit()
        finally:
            if gc_was_enabled:
                gc.enable()
        self.stats.flushes += 1
        self.stats.last_flush_seconds = time.monotonic() - started
        self.metrics.observe_flush(self.stats.last_flush_seconds)
        self.log.info(
            "flush",
            seconds=round(self.stats.last_flush_seconds, 3),
            redis_seconds=round(self.stats.last_redis_seconds, 3),
            partitions=sorted(self.tokens),
            emitted_series=report.series if report else 0,
            emitted_records=report.records if report else 0,
            fold_seconds=round(report.fold_seconds, 3) if report else 0,
            send_seconds=round(report.send_seconds, 3) if report else 0,
            confirm_seconds=round(report.confirm_seconds, 3) if report else 0,
            spans=self.stats.spans,
        )
        await self.metrics.refresh()  # consumer lag and active series; bounded, never raises
        return report

    async def _merge_step(self) -> dict[int, int] | None:
        """Under the lock: the atomic Redis step. Returns the offsets it covered, None if fenced."""
        assert self.store is not None
        deltas = self.pipeline.take_deltas()
        progress, self.progress = self.progress, {}
        self._buffered_spans = 0
        fences = {p: (token, progress.get(p, -1)) for p, token in self.tokens.items()}
        pending = self.pipeline.export_pending(fences)
        if not fences and not deltas:
            return {}
        if not fences:
            # Deltas without an owned partition cannot be recorded exactly once; their
            # partitions' new owners replay them from the stored offsets.
            self.log.warning("dropping deltas of partitions no longer owned", tenants=len(deltas))
            return {}
        redis_started = time.monotonic()
        store = self.store
        try:
            await self._with_retry(lambda: store.merge(deltas, fences, pending))
        except FencedError as exc:
            self.stats.fenced += 1
            self.log.warning(
                "fenced: another worker owns a partition; replaying from Redis", partition=exc.partition
            )
            await self._reset_to_redis()
            return None
        self.stats.last_redis_seconds = time.monotonic() - redis_started
        self.metrics.observe_redis_step(self.stats.last_redis_seconds)
        for partition, offset in progress.items():
            if offset > self.applied.get(partition, -1):
                self.applied[partition] = offset
        return {p: o for p, o in progress.items() if p in self.tokens}

    async def _with_retry(self, step: Callable[[], Awaitable[_T]]) -> _T:
        """Retry Redis outages with backoff; past the poll interval give up (and be restarted)."""
        delay = 0.2
        deadline = time.monotonic() + self.settings.kafka.max_poll_interval * 0.5
        while True:
            try:
                return await step()
            except (RedisError, OSError) as exc:
                if isinstance(exc, FencedError):
                    raise
                if time.monotonic() > deadline:
                    raise StateError(f"Redis unavailable for too long: {exc}") from exc
                self.ready = False
                self.log.warning("Redis step failed; retrying", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _commit_to_kafka(self, offsets: dict[int, int]) -> None:
        if not offsets:
            return
        to_commit = {TopicPartition(self.topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        try:
            await asyncio.wait_for(self.consumer.commit(to_commit), timeout=5)
        except (KafkaError, TimeoutError) as exc:
            # Redis holds the truth; the group commit only feeds lag monitoring.
            self.log.info("kafka commit skipped", error=str(exc))

    async def _emit(self) -> EmitReport | None:
        assert self.store is not None and self.emitter is not None
        store = self.store
        tokens = dict(self.tokens)
        recheck_after = self.settings.kafka.heartbeat_interval
        try:
            owned = await store.owns(tokens)
            checked = time.monotonic()

            async def still_owned(slot: int) -> bool:
                # Revoked or fenced meanwhile; or this process stood still for longer than a
                # heartbeat (frozen, SIGSTOP, a long pause), so the group may have moved the
                # slot: ask Redis again before publishing it.
                nonlocal owned, checked
                if self.tokens.get(slot) != tokens.get(slot):
                    return False
                if time.monotonic() - checked > recheck_after:
                    owned = await store.owns(tokens)
                    checked = time.monotonic()
                return slot in owned

            report = await self.emitter.emit(
                {slot: tokens[slot] for slot in owned}, time.time_ns(), still_owned=still_owned
            )
        except (RedisError, OSError, KafkaError) as exc:
            self.log.warning("emission failed; it is retried at the next flush", error=str(exc))
            return None
        if report.skipped:
            self.log.warning("slots lost during the emission were not published", slots=report.skipped)
        if report.too_large:
            self.stats.drop("output_record_too_large", report.too_large)
            self.log.warning("output records too large to publish were skipped", records=report.too_large)
        self.stats.emitted_series += report.series
        self.stats.emitted_records += report.records
        self.stats.emitted_bytes += report.bytes
        self.stats.expired += report.expired
        self.stats.overflowed += report.overflowed
        return report

    async def _reset_to_redis(self) -> None:
        """Fenced: drop in-memory state, forget lost partitions, replay the rest from Redis."""
        assert self.store is not None
        owned = await self.store.owns(self.tokens)
        lost = set(self.tokens) - owned
        for partition in lost:
            self.tokens.pop(partition, None)
            self.pipeline.drop_partition(partition)
        if lost:
            self.consumer.pause(*(TopicPartition(self.topic, p) for p in lost))
        await self._rewind(owned)

    async def _rewind(self, partitions: Collection[int]) -> None:
        """Discard what memory holds and resume ``partitions`` from the state saved in Redis.

        Deltas are not kept per partition, so any discard rewinds every partition still owned:
        their offsets and pending half-edges come back exactly as the last atomic step left them.
        """
        self.pipeline.take_deltas()
        self.progress.clear()
        self._buffered_spans = 0
        await self._seek_to_applied(partitions)

    async def _seek_to_applied(self, partitions: Collection[int]) -> None:
        """Seek to the stored offsets and restore the half-edges saved with them."""
        assert self.store is not None
        applied = await self.store.applied_offsets(partitions)
        pending = await self.store.read_pending(partitions) if self.pipeline.servicegraphs else {}
        now = time.time_ns()
        for partition in partitions:
            self.pipeline.drop_partition(partition)
            if partition in applied:
                self.applied[partition] = applied[partition]
                self.consumer.seek(TopicPartition(self.topic, partition), applied[partition])
            else:
                self.applied.pop(partition, None)
            self.pipeline.restore_pending(partition, pending.get(partition), now)

    # ------------------------------------------------------------------ rebalance

    async def on_revoked(self, revoked: Collection[TopicPartition]) -> None:
        """Flush everything held (bounded by the revoke deadline) before letting go."""
        self.stats.rebalances += 1
        partitions = sorted(tp.partition for tp in revoked if tp.topic == self.topic)
        self.ready = False
        if not partitions or self.store is None:
            return
        try:
            async with self._lock:
                committed = await asyncio.wait_for(
                    self._merge_step(), timeout=self.settings.worker.revoke_deadline
                )
        except (TimeoutError, SpanmetricsError, RedisError) as exc:
            self.log.error("flush on revoke failed; new owners replay from Redis", error=str(exc))
            committed = None
            kept = set(self.tokens) - set(partitions)
            async with self._lock:
                with contextlib.suppress(RedisError, OSError):
                    await self._rewind(kept)
        for partition in partitions:
            self.tokens.pop(partition, None)
            self.applied.pop(partition, None)
            self.pipeline.drop_partition(partition)
        if committed:
            await self._commit_to_kafka(committed)
        self.log.info("partitions revoked", partitions=partitions)

    async def on_assigned(self, assigned: Collection[TopicPartition]) -> None:
        """Claim (fence out the previous owner), then resume from the offsets stored in Redis."""
        partitions = sorted(tp.partition for tp in assigned if tp.topic == self.topic)
        if self.store is None:
            await self._wait_for_store()
        assert self.store is not None
        async with self._lock:
            store = self.store
            tokens = await self._with_retry(lambda: store.claim(partitions))
            self.tokens.update(tokens)
            await self._seek_to_applied(partitions)
        self.consumer.resume(*(TopicPartition(self.topic, p) for p in partitions))
        self.ready = True
        self.log.info(
            "partitions assigned",
            partitions=partitions,
            resume_from={p: self.applied.get(p) for p in partitions},
        )

    async def _wait_for_store(self) -> None:
        # The first assignment can arrive while start() is still reading metadata.
        for _ in range(300):
            if self.store is not None:
                return
            await asyncio.sleep(0.1)
        raise SpanmetricsError("state store not ready 30 s after start")
