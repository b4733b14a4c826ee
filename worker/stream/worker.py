"""StreamWorker: a group member's lifecycle and flush schedule, composing the parts of the loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from state.cluster_store import ClusterKeys, ClusterStateStore
from state.keys import KeySpace
from state.protocol import SeriesStore
from state.redis_store import RedisStateStore
from worker.config import Settings
from worker.model.errors import SpanmetricsError
from worker.model.series import MetricDescriptor, Temporality
from worker.observability.logs import redact_url
from worker.observability.loopmonitor import watch_loop
from worker.observability.selfmetrics import WorkerMetrics
from worker.observability.stats import WorkerStats
from worker.otlp.metrics_encoder import encode_path
from worker.processors.pipeline import Pipeline
from worker.processors.servicegraphs.processor import ServiceGraphsProcessor
from worker.sinks.base import Sink
from worker.sinks.kafka import KafkaSink
from worker.sinks.remote_write import RemoteWriteSink
from worker.stream.cadence import EMIT, MERGE, Cadence
from worker.stream.checkpoint import Checkpoint
from worker.stream.clients import kafka_start_problem, make_consumer, make_producer, make_redis
from worker.stream.emission import Emission
from worker.stream.fetch import fetch_path, fetch_records
from worker.stream.gc_pause import collection_paused
from worker.stream.ingest import Ingest
from worker.stream.partitions import Partitions
from worker.stream.rebalance import Held, Listener, Rebalance
from worker.stream.retry import RetryInterrupted
from worker.stream.slots import EmitReport

__all__ = ["StreamWorker"]

#: How often pending service-graph half-edges are checked against ``wait`` (Tempo: 2 s).
_EXPIRY_PERIOD = 2.0
#: Where the addresses come from, for start-up errors (file option, then the environment variables).
REDIS_OPTIONS = (
    "set by redis.url or env REDIS_URL / SPANMETRICS_REDIS__URL; "
    "password: redis.password or env SPANMETRICS_REDIS__PASSWORD"
)
KAFKA_OPTIONS = (
    "set by kafka.bootstrap_servers or env KAFKA_BOOTSTRAP_SERVERS / SPANMETRICS_KAFKA__BOOTSTRAP_SERVERS"
)

#: How long a fetch waits at most while an emission is due but the previous one still runs.
_EMISSION_POLL = 0.05
#: How often unclaimed or unsettled partitions are tried again while Redis is away.
_SETTLE_PERIOD = 2.0
#: Shares of ``shutdown_grace`` from SIGTERM: the step in progress ends by the first, the final
#: flush (Redis step and Kafka commit) by the second, leaving the group and closing by the third.
_DRAIN_SHARE = 0.35
_FLUSH_SHARE = 0.65
_END_SHARE = 0.9
#: DELTA with remote write: a series without spans this long (and no series_expiration) is
#: forgotten by the sink's running totals; it starts from 0 again when it comes back.
_DELTA_IDLE_S = 3600.0

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
        #: "native" or "pure": the span-metrics ingest path (spanmetrics_build_info's ``ingest`` label).
        self.ingest_path = self.pipeline.ingest_path
        self.descriptors: dict[str, MetricDescriptor] = self.pipeline.descriptors()
        #: The Prometheus remote-write sink, when ``remote_write`` is configured (cumulative only).
        self.remote_write: RemoteWriteSink | None = None
        if settings.remote_write is not None:
            self.remote_write = RemoteWriteSink(
                settings.remote_write,
                descriptors=self.descriptors,
                default_tenant=settings.kafka.default_tenant,
                stats=self.stats.remote_write,
                # Tempo mode: the processors already wrote Tempo's label names.
                sanitize_labels=not settings.tempo_mode,
                # Remote write is cumulative: with DELTA state the sink adds the deltas up.
                delta_idle_s=(settings.series_expiration or _DELTA_IDLE_S)
                if settings.temporality is Temporality.DELTA
                else None,
            )
        self.shared = Partitions()
        self.rebalance = Rebalance(
            self.consumer,
            self.pipeline,
            self.shared,
            self.stats,
            self.log,
            topic=self.topic,
            revoke_deadline=settings.worker.revoke_deadline,
            # A claim must not hold the group's rebalance for a whole Redis outage: past this
            # the partitions stay paused and the loop claims them later.
            retry_within=settings.worker.revoke_deadline,
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
        self._stop_at: float | None = None
        self._drain: asyncio.Timeout | None = None
        #: The run loop's emission in progress: consumption goes on meanwhile.
        self._emitting: asyncio.Task[EmitReport | None] | None = None
        self._next_settle = 0.0
        self.partitions = 0
        self.last_tick = time.monotonic()
        # Counters are read from self.stats at scrape time; the loop reports durations and
        # asks for the lag/active-series refresh.
        self.metrics = metrics if metrics is not None else WorkerMetrics(CollectorRegistry())
        self.metrics.bind(self)

    @property
    def service_graphs(self) -> ServiceGraphsProcessor | None:
        """The service-graph processor, for its self-metrics (None when it does not run)."""
        return self.pipeline.servicegraphs

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
        started = time.monotonic()
        try:
            await self.redis.ping()
        except RedisError as exc:
            url = redact_url(self.settings.redis.url.get_secret_value())
            raise SpanmetricsError(
                f"Redis at {url}: {exc} (tried {time.monotonic() - started:.1f} s; {REDIS_OPTIONS})"
            ) from None
        started = time.monotonic()
        try:
            await self.producer.start()
            self.consumer.subscribe([self.topic], listener=Listener(self.rebalance))
            await self.consumer.start()
        except Exception as exc:  # aiokafka reports a refused SASL login as KeyError & co
            problem = kafka_start_problem(self.settings.kafka, exc)
            raise SpanmetricsError(
                f"{problem} (tried {time.monotonic() - started:.1f} s; {KAFKA_OPTIONS})"
            ) from None
        self.partitions = await self._partition_count()
        settings = self.settings
        self.metrics.describe_worker(
            input_partitions=self.partitions,
            flush_interval=settings.flush_interval,
            series_limit=settings.worker.max_active_series_per_tenant,
        )
        options: dict[str, Any] = {
            "slots": self.partitions,
            "max_exemplars": self.pipeline.max_exemplars,
            "exp_max_size": settings.exponential_max_size,
            "active_series_limit": settings.worker.max_active_series_per_tenant,
            "overflow_attributes": settings.overflow_attributes,
        }
        if isinstance(self.redis, RedisCluster):  # redis.cluster: true (README: cluster mode)
            store: RedisStateStore = ClusterStateStore(
                self.redis,
                ClusterKeys(settings.redis.key_prefix, self.topic),
                replica_wait_s=settings.redis.replica_wait,
                **options,
            )
        else:
            store = RedisStateStore(
                self.redis,
                KeySpace(settings.redis.key_prefix, self.topic),
                max_kept_series=settings.worker.max_kept_series,
                **options,
            )
        self.store = store
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
        sinks: list[Sink] = []
        if settings.kafka.output_topic:
            sinks.append(
                KafkaSink(
                    self.producer,
                    topic=settings.kafka.output_topic,
                    tenant_header=settings.kafka.tenant_header,
                    default_tenant=settings.kafka.default_tenant,
                    descriptors=self.descriptors,
                    temporality=settings.temporality,
                    max_record_bytes=settings.kafka.output_max_record_bytes,
                    worker_id=self.worker_id,
                )
            )
        if self.remote_write is not None:
            sinks.append(self.remote_write)
        self.emission = Emission(
            store,
            sinks,
            self.shared,
            self.stats,
            self.log,
            temporality=settings.temporality,
            series_expiration_s=settings.series_expiration,
            resource_expiration_s=settings.resource_expiration,
            recheck_after=settings.kafka.heartbeat_interval,
        )
        await store.check_layout()
        # Which span-metrics ingest runs, and what keeps it off the compiled one (issue 17).
        self.log.info(
            "span metrics ingest",
            path=self.pipeline.ingest_path,
            pure_because=", ".join(self.pipeline.native_unsupported),
            service_graphs=self.pipeline.edges_path,
            service_graphs_pure_because=", ".join(self.pipeline.edges_unsupported),
            encode=encode_path(),
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
        """SIGTERM: the step in progress gets a share of the grace, then flush, commit and leave."""
        if self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        self._stop_at = loop.time()
        self._stop.set()
        self.shared.stopping.set()  # retry loops give up at once
        if self._drain is not None and not self._drain.expired():
            self._drain.reschedule(self._stop_at + self.settings.worker.shutdown_grace * _DRAIN_SHARE)

    async def run(self) -> None:
        """Consume and flush until stopped; then flush, commit and leave within the grace period.

        Emissions are due at a fixed rate (worker.stream.cadence); a full span buffer adds
        merge-only flushes in between, which never move or skip a due emission."""
        max_buffered = self.settings.worker.max_buffered_spans
        shared = self.shared
        cadence = Cadence(self.settings.flush_interval, time.monotonic())
        next_expiry = time.monotonic() + _EXPIRY_PERIOD
        monitor = asyncio.create_task(watch_loop(self.metrics.loop), name="event loop monitor")
        try:
            async with asyncio.timeout(None) as self._drain:
                while not self._stop.is_set():
                    self.last_tick = time.monotonic()
                    if (shared.unsettled or shared.unclaimed) and self.last_tick >= self._next_settle:
                        await self._settle()
                    if self.last_tick >= next_expiry:
                        async with shared.lock:
                            self.pipeline.expire(time.time_ns())
                        next_expiry = self.last_tick + _EXPIRY_PERIOD
                    if self._emitting is not None and self._emitting.done():
                        await self._finish_emission()  # raises what the emission raised
                    # Without waiting when an emission is due, but always: an emission longer
                    # than the interval must not stop consumption. Due while the previous
                    # emission still runs: it begins as soon as that one ends.
                    timeout = min(cadence.until_due(time.monotonic()), 0.5)
                    if self.emitting():
                        timeout = max(timeout, _EMISSION_POLL)
                    # aiokafka's getmany, without a ConsumerRecord per record where it can (fetch.py).
                    batch = await fetch_records(
                        self.consumer,
                        timeout_ms=int(timeout * 1000),
                        max_records=self.settings.kafka.max_poll_records,
                        log=self.log,
                    )
                    if batch:
                        async with shared.lock:
                            for tp, records in batch.items():
                                await self.ingest.handle(tp, records)
                    full = shared.buffered_spans >= max_buffered
                    kind = cadence.next_flush(time.monotonic(), buffer_full=full)
                    if kind == MERGE:
                        await self._scheduled_flush(cadence, emit=False)
                        # Due meanwhile: the emission goes now, not after the next fetch.
                        kind = cadence.next_flush(time.monotonic(), buffer_full=False)
                    if kind == EMIT and not self.emitting():
                        await self._scheduled_flush(cadence, emit=True)
        except TimeoutError:
            if self._drain is None or not self._drain.expired():
                raise
            # The step in progress at SIGTERM outlived its share of the grace: whatever memory
            # holds may be half-done; none of it is stored, the next owner re-reads it.
            self.log.warning("step in progress abandoned at shutdown")
            assert self.checkpoint is not None
            self.checkpoint.unsettle()
        finally:
            self._drain = None
            monitor.cancel()
            await self._shutdown()

    async def _scheduled_flush(self, cadence: Cadence, *, emit: bool) -> None:
        """One flush of the run loop; an emitting one takes its due time from ``cadence``, and a
        late start or due times that passed without an emission are counted and logged."""
        if emit:
            slot = cadence.begin(time.monotonic())
            stats = self.stats
            if slot.late:
                stats.emissions_late += 1
            if slot.skipped:
                stats.emissions_skipped += slot.skipped
            if slot.late or slot.skipped:
                self.log.warning(
                    "emission late", lateness_seconds=round(slot.lateness, 3), skipped=slot.skipped
                )
        try:
            await self.flush(emit=emit, background=True)
        except RetryInterrupted:
            # A stop or a rebalance came first; the partitions are unsettled.
            self._next_settle = time.monotonic() + _SETTLE_PERIOD

    async def _settle(self) -> None:
        """Claim what the group assigned but Redis did not grant, and re-read unsettled partitions
        from Redis; one bounded try, repeated every few seconds while Redis is away."""
        self._next_settle = time.monotonic() + _SETTLE_PERIOD
        shared = self.shared
        if shared.unclaimed:
            tps = [TopicPartition(self.topic, p) for p in sorted(shared.unclaimed)]
            await self.rebalance.on_assigned(tps, retry=True)
        shared.unsettled &= set(shared.tokens)
        if not shared.unsettled:
            return
        try:
            async with asyncio.timeout(self.settings.worker.revoke_deadline), shared.lock:
                assert self.checkpoint is not None
                await self.checkpoint.settle()
        except (TimeoutError, SpanmetricsError, RedisError, OSError, KafkaError) as exc:
            self.log.warning("partitions not re-read from Redis yet; retrying", error=str(exc))
            return
        owned = sorted(shared.tokens)
        settled = sorted(shared.unsettled)
        shared.unsettled.clear()
        self.consumer.resume(*(TopicPartition(self.topic, p) for p in owned))
        shared.ready = True
        self.log.info("partitions re-read from Redis after an interrupted step", partitions=settled)

    async def _shutdown(self) -> None:
        """Final flush, Kafka commit and leaving the group, all within one deadline from SIGTERM."""
        loop = asyncio.get_running_loop()
        grace = self.settings.worker.shutdown_grace
        began = self._stop_at if self._stop_at is not None else loop.time()
        end = began + grace * _END_SHARE
        try:
            await self._finish_emission(max(0.0, began + grace * _DRAIN_SHARE - loop.time()))
        except Exception as exc:  # the final flush goes on: it stores what memory holds
            self.log.error("emission failed", error=str(exc))
        if self.checkpoint is not None and set(self.shared.tokens) - self.shared.unsettled:
            try:
                async with asyncio.timeout_at(began + grace * _FLUSH_SHARE):
                    await self.flush(emit=False, final=True)
            except (TimeoutError, SpanmetricsError, RedisError, KafkaError) as exc:
                self.log.error(
                    "final flush failed; the next owner replays from Redis offsets", error=str(exc)
                )
        elif self.shared.unsettled:
            self.log.warning(
                "no final flush: what memory held is re-read by the next owner",
                partitions=sorted(self.shared.unsettled),
            )
        await self.close(max(0.5, end - loop.time()))
        self.log.info("worker stopped", seconds=round(loop.time() - began, 1), **self._totals())

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the clients (leaving the group) within ``timeout``, never raising: also used when
        start() fails."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.consumer.stop(), timeout=timeout * 0.6)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), timeout=max(0.1, (end - loop.time()) * 0.7))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.aclose(), timeout=max(0.1, end - loop.time()))
        if self.remote_write is not None:
            # What the final flush queued: delivered in the time left, the rest counted as dropped.
            with contextlib.suppress(Exception):
                await self.remote_write.close(timeout=max(0.1, end - loop.time()))

    def _totals(self) -> dict[str, object]:
        s = self.stats
        return {"records": s.records, "spans": s.spans, "dlq": s.dlq, "skipped_replay": s.skipped_replay}

    # ------------------------------------------------------------------ flush

    async def flush(
        self, *, emit: bool = True, final: bool = False, background: bool = False
    ) -> EmitReport | None:
        """Checkpoint (Redis, then Kafka), then emit the owned slots; None when fenced or not started.

        ``background``: the emission runs as a task while the loop goes on consuming (the run
        loop's emitting flushes); None is returned at once and the flush is reported when the
        emission ends. Its Redis retries give way to a stop request and to a rebalance waiting
        for the lock, except in the ``final`` flush at shutdown (bounded by the caller).
        """
        assert self.checkpoint is not None and self.emission is not None, "flush before start()"
        started = time.monotonic()
        # Did Redis lose the state (generation marker, tokens)? Then recover first. Asked again
        # where a loss shows: a fenced merge, a refused fold.
        rebalance = self.rebalance
        await rebalance.check_state()
        held = rebalance.held()
        shared = self.shared
        interrupt = () if final else (shared.stopping, shared.lock.wanted)
        with collection_paused():
            if not await self.checkpoint.run(interrupt=interrupt):
                await rebalance.check_state(held)
                return None
        if emit and background:
            self._emitting = asyncio.create_task(self._emit(started, held, final), name="emission")
            return None
        return await self._emit(started, held, final) if emit else await self._flushed(started, None, final)

    @property
    def fetch_path(self) -> str:
        """Which drain reads the fetches (``spanmetrics_build_info{fetch=}``): see stream.fetch."""
        return fetch_path(self.consumer)

    def emitting(self) -> bool:
        """An emission started by the run loop is still running."""
        return self._emitting is not None and not self._emitting.done()

    async def _finish_emission(self, timeout: float | None = None) -> None:
        """Wait for the background emission (cancelled past ``timeout``); raise what it raised."""
        task, self._emitting = self._emitting, None
        if task is None:
            return
        if not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.log.warning("emission in progress abandoned at shutdown")
            return
        task.result()

    async def _emit(self, started: float, held: Held, final: bool) -> EmitReport | None:
        """The emission of a flush whose checkpoint is done, then its report."""
        assert self.emission is not None
        # Collection is paused per slot (stream.slots), not for the whole emission: ingest goes
        # on meanwhile, and what it allocates during a long emission would otherwise meet the
        # collector all at once when it ends (at 1M series, one young collection of 0.7-1.25 s).
        report = await self.emission.run()
        rebalance = self.rebalance
        if report is not None and report.skipped:
            await rebalance.check_state(held)
        elif report is not None and set(rebalance.assigned()) <= set(report.slots):
            self.metrics.observe_emission()  # every assigned partition's slot was published
        return await self._flushed(started, report, final, emitting=True)

    async def _flushed(
        self, started: float, report: EmitReport | None, final: bool, *, emitting: bool = False
    ) -> EmitReport | None:
        """Count and log a flush that ended (its emission too, when it emitted)."""
        stats = self.stats
        stats.flushes += 1
        stats.last_flush_seconds = time.monotonic() - started
        # An emission that failed (Redis, Kafka) does not advance the alert's timestamp either.
        self.metrics.observe_flush(stats.last_flush_seconds, emitting=emitting and report is not None)
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
            loop_max_stall_seconds=round(self.metrics.loop.take_since_flush(), 3),
        )
        if not final:
            await self.metrics.refresh()  # consumer lag and active series; bounded, never raises
        return report
