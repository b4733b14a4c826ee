"""StreamWorker: a group member's lifecycle and flush schedule, composing the parts of the loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid

import structlog
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from state.keys import KeySpace
from state.protocol import SeriesStore
from state.redis_store import RedisStateStore
from worker.config import Settings
from worker.model.errors import SpanmetricsError
from worker.model.series import MetricDescriptor
from worker.observability.logs import redact_url
from worker.observability.selfmetrics import WorkerMetrics
from worker.observability.stats import WorkerStats
from worker.processors.pipeline import Pipeline
from worker.sinks.kafka import KafkaSink
from worker.stream.checkpoint import Checkpoint
from worker.stream.clients import kafka_start_problem, make_consumer, make_producer, make_redis
from worker.stream.emission import Emission
from worker.stream.ingest import Ingest
from worker.stream.partitions import Partitions
from worker.stream.rebalance import Listener, Rebalance
from worker.stream.slots import EmitReport

__all__ = ["StreamWorker"]

#: How often pending service-graph half-edges are checked against ``wait`` (Tempo: 2 s).
_EXPIRY_PERIOD = 2.0

log = structlog.get_logger("spanmetrics.worker")


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
        self.shared = Partitions()
        self.rebalance = Rebalance(
            self.consumer,
            self.pipeline,
            self.shared,
            self.stats,
            self.log,
            topic=self.topic,
            revoke_deadline=settings.worker.revoke_deadline,
            retry_within=kafka.max_poll_interval * 0.5,
        )
        self.ingest = Ingest(
            kafka,
            self.consumer,
            self.producer,
            self.pipeline,
            self.shared,
            self.stats,
            self.log,
            rewind=self.rebalance.rewind,
            checkpoint_spans=settings.worker.max_buffered_spans,
        )
        #: Set by start(), once the partition count (the number of emission slots) is known.
        self.store: SeriesStore | None = None
        self.checkpoint: Checkpoint | None = None
        self.emission: Emission | None = None
        self._stop = asyncio.Event()
        self.partitions = 0
        self.last_tick = time.monotonic()
        # Counters are read from self.stats at scrape time; the loop reports durations and
        # asks for the lag/active-series refresh.
        self.metrics = metrics if metrics is not None else WorkerMetrics(CollectorRegistry())
        self.metrics.bind(self)

    @property
    def tokens(self) -> dict[int, int]:
        """partition -> fencing token, for the partitions this worker owns right now."""
        return self.shared.tokens

    @property
    def applied(self) -> dict[int, int]:
        """partition -> next offset to apply, as stored in Redis."""
        return self.shared.applied

    @property
    def ready(self) -> bool:
        return self.shared.ready

    @property
    def assigned(self) -> list[int]:
        """The input partitions the group assigned to this worker; owned when in :attr:`tokens`."""
        return self.rebalance.assigned()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to Redis and Kafka; a failure is one SpanmetricsError (the Redis password masked)."""
        try:
            await self.redis.ping()
        except RedisError as exc:
            url = redact_url(self.settings.redis.url.get_secret_value())
            raise SpanmetricsError(f"Redis at {url}: {exc}") from None
        try:
            await self.producer.start()
            self.consumer.subscribe([self.topic], listener=Listener(self.rebalance))
            await self.consumer.start()
        except Exception as exc:  # aiokafka reports a refused SASL login as KeyError & co
            raise SpanmetricsError(kafka_start_problem(self.settings.kafka, exc)) from None
        self.partitions = await self._partition_count()
        settings = self.settings
        spanmetrics = settings.spanmetrics
        exponential = spanmetrics.histogram.exponential
        store = self.store = RedisStateStore(
            self.redis,
            KeySpace(settings.redis.key_prefix, self.topic),
            slots=self.partitions,
            max_exemplars=self.pipeline.max_exemplars,
            exp_max_size=exponential.max_size if exponential else 160,
            active_series_limit=settings.worker.max_active_series_per_tenant,
        )
        self.checkpoint = Checkpoint(
            store,
            self.pipeline,
            self.consumer,
            self.shared,
            self.stats,
            self.metrics,
            self.log,
            topic=self.topic,
            retry_within=settings.kafka.max_poll_interval * 0.5,
            rewind=self.rebalance.rewind,
            forget=self.rebalance.forget,
        )
        await self.rebalance.attach(store, self.checkpoint)
        sink = KafkaSink(
            self.producer,
            topic=settings.kafka.output_topic,
            tenant_header=settings.kafka.tenant_header,
            default_tenant=settings.kafka.default_tenant,
            descriptors=self.descriptors,
            temporality=spanmetrics.aggregation_temporality,
            max_record_bytes=settings.kafka.output_max_record_bytes,
            worker_id=self.worker_id,
        )
        self.emission = Emission(
            store,
            [sink],
            self.shared,
            self.stats,
            self.log,
            temporality=spanmetrics.aggregation_temporality,
            expiration_s=spanmetrics.metrics_expiration,
            recheck_after=settings.kafka.heartbeat_interval,
        )
        await store.check_layout()
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
        shared = self.shared
        next_flush = time.monotonic() + interval
        next_expiry = time.monotonic() + _EXPIRY_PERIOD
        try:
            while not self._stop.is_set():
                self.last_tick = time.monotonic()
                if self.last_tick >= next_expiry:
                    async with shared.lock:
                        self.pipeline.expire(time.time_ns())
                    next_expiry = self.last_tick + _EXPIRY_PERIOD
                timeout = max(0.0, min(next_flush - time.monotonic(), 0.5))
                batch = await self.consumer.getmany(
                    timeout_ms=int(timeout * 1000), max_records=self.settings.kafka.max_poll_records
                )
                if batch:
                    async with shared.lock:
                        for tp, records in batch.items():
                            await self.ingest.handle(tp, records)
                if time.monotonic() >= next_flush or shared.buffered_spans >= max_buffered:
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

    # ------------------------------------------------------------------ flush

    async def flush(self, *, emit: bool = True) -> EmitReport | None:
        """Checkpoint (Redis, then Kafka), then emit the owned slots; None when fenced or not started."""
        assert self.checkpoint is not None and self.emission is not None, "flush before start()"
        started = time.monotonic()
        # Did Redis lose the state (generation marker, tokens)? Then recover first. Asked again
        # where a loss shows: a fenced merge, a refused fold.
        rebalance = self.rebalance
        await rebalance.check_state()
        held = rebalance.held()
        # The flush allocates several objects per series, none in reference cycles; with 100k+
        # live objects each collection would scan them all. Paused, not skipped.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if not await self.checkpoint.run():
                await rebalance.check_state(held)
                return None
            report = await self.emission.run() if emit else None
        finally:
            if gc_was_enabled:
                gc.enable()
        if report is not None and report.skipped:
            await rebalance.check_state(held)
        elif report is not None and set(rebalance.assigned()) <= set(report.slots):
            self.metrics.observe_emission()  # every assigned partition's slot was published
        stats = self.stats
        stats.flushes += 1
        stats.last_flush_seconds = time.monotonic() - started
        self.metrics.observe_flush(stats.last_flush_seconds)
        self.log.info(
            "flush",
            seconds=round(stats.last_flush_seconds, 3),
            redis_seconds=round(stats.last_redis_seconds, 3),
            partitions=sorted(self.shared.tokens),
            emitted_series=report.series if report else 0,
            emitted_records=report.records if report else 0,
            fold_seconds=round(report.fold_seconds, 3) if report else 0,
            send_seconds=round(report.send_seconds, 3) if report else 0,
            confirm_seconds=round(report.confirm_seconds, 3) if report else 0,
            spans=stats.spans,
        )
        await self.metrics.refresh()  # consumer lag and active series; bounded, never raises
        return report
