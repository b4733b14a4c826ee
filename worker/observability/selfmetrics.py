"""The worker's own Prometheus metrics: one bundle against an injected registry, reading the loop's totals.

Counters come from :class:`WorkerStats` at scrape time; histograms are observed per flush; lag and
active series are refreshed at the end of a flush, so a scrape never waits on Kafka or Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Protocol

import structlog
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker import __version__
from worker.observability.loopmonitor import STALL_THRESHOLD, StallTracker
from worker.observability.stats import WorkerStats
from worker.otlp.metrics_encoder import encode_path

__all__ = [
    "DROP_REASONS",
    "FLUSH_BUCKETS",
    "PREFIX",
    "REDIS_STEP_BUCKETS",
    "ActiveSeriesSource",
    "LagSource",
    "MetricsSource",
    "ServiceGraphCounters",
    "WorkerMetrics",
]

PREFIX = "spanmetrics_"

#: Reasons a span (or, for ``undecodable``, a whole record) is not counted; always exported, 0 or not.
DROP_REASONS: tuple[str, ...] = (
    "undecodable",
    "no_service_name",
    "cardinality_overflow",
    "too_many_pending_edges",
)

#: A flush records deltas in Redis, commits to Kafka, folds and emits owned slots: milliseconds to a minute.
FLUSH_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: One atomic flush script: offsets and delta logs (including retries while Redis is unreachable).
REDIS_STEP_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Bound on the I/O of one refresh: metrics must never hold a flush up for long.
REFRESH_TIMEOUT_S = 2.0

log = structlog.get_logger("spanmetrics.metrics")


class ActiveSeriesSource(Protocol):
    """The state store, for the active series per tenant."""

    async def tenants(self) -> list[str]: ...

    async def active_series(self, tenant: str) -> int: ...


class LagSource(Protocol):
    """The consumer, for the high watermark and position of each assigned partition (and, for
    one not owned in Redis, so not consumed: the broker's end offset and the group's commit)."""

    def assignment(self) -> Collection[TopicPartition]: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...

    async def position(self, tp: TopicPartition) -> int: ...

    async def committed(self, tp: TopicPartition) -> int | None: ...

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...


class ServiceGraphCounters(Protocol):
    """The service-graph processor's totals since start (Tempo's ``..._service_graphs_*``)."""

    @property
    def new_edges(self) -> Mapping[str, int]: ...

    @property
    def expired_edges(self) -> Mapping[tuple[str, str], int]: ...

    @property
    def dropped_edges(self) -> Mapping[str, int]: ...

    @property
    def marker_overflows(self) -> Mapping[str, int]: ...


class MetricsSource(Protocol):
    """What the bundle reads from the worker at scrape and refresh time."""

    @property
    def stats(self) -> WorkerStats: ...

    @property
    def tokens(self) -> Mapping[int, int]: ...

    @property
    def assigned(self) -> Collection[int]: ...

    @property
    def applied(self) -> Mapping[int, int]: ...

    @property
    def topic(self) -> str: ...

    @property
    def consumer(self) -> LagSource: ...

    @property
    def store(self) -> ActiveSeriesSource | None: ...

    @property
    def service_graphs(self) -> ServiceGraphCounters | None: ...

    @property
    def ingest_path(self) -> str: ...

    @property
    def fetch_path(self) -> str: ...


class WorkerMetrics:
    """All self-metrics of one worker, registered in ``registry`` (inject your own in tests)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.flush_duration = Histogram(
            "spanmetrics_flush_duration_seconds",
            "Duration of a flush: the atomic Redis step, the Kafka offset commit and the emission.",
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        self.redis_step_duration = Histogram(
            "spanmetrics_redis_step_duration_seconds",
            "Duration of one atomic Redis merge of deltas and offsets (retries included).",
            buckets=REDIS_STEP_BUCKETS,
            registry=registry,
        )
        self._source: MetricsSource | None = None
        #: partition -> records between the high watermark and what is applied in Redis.
        self._lag: dict[int, int] = {}
        #: tenant -> active series (the quantity max_active_series_per_tenant limits).
        self._active_series: dict[str, int] = {}
        self._last_flush_unix: float | None = None
        #: What the alert rules compare against; None until the worker knows (after start).
        self._input_partitions: int | None = None
        self._flush_interval: float | None = None
        self._series_limit: int | None = None
        self._last_emission_unix: float | None = None
        #: The event loop's stalls, fed by the worker's loop monitor (worker.observability.loopmonitor).
        self.loop = StallTracker()
        registry.register(_StatsCollector(self))

    # ------------------------------------------------------------------ hooks the runtime calls

    def bind(self, source: MetricsSource) -> None:
        """Read counters and ownership from this worker at scrape time."""
        self._source = source

    def observe_flush(self, seconds: float, *, emitting: bool = True) -> None:
        """A flush ended; only one that emitted (not a merge-only flush of a full span buffer)
        advances ``spanmetrics_last_flush_timestamp_seconds``, the documented alert."""
        self.flush_duration.observe(seconds)
        if emitting:
            self._last_flush_unix = time.time()

    def observe_emission(self) -> None:
        """An emission published the slots of every partition assigned to this worker."""
        self._last_emission_unix = time.time()

    def observe_redis_step(self, seconds: float) -> None:
        self.redis_step_duration.observe(seconds)

    async def refresh(self) -> None:
        """At the end of a flush: recompute consumer lag and active series. Never raises.

        Lag is ``highwater - applied`` per owned partition (from the last fetch response: no
        request); a partition assigned but not owned in Redis is not consumed, so its lag is the
        broker's end offset minus the group's committed offset (two requests)."""
        source = self._source
        if source is None:
            return
        try:
            lag = await asyncio.wait_for(self._lag_of(source), timeout=REFRESH_TIMEOUT_S)
        except Exception as exc:  # metrics must never break the flush
            log.debug("consumer lag refresh failed", error=str(exc))
        else:
            self._lag = lag
        if source.store is None:
            return
        try:
            active = await asyncio.wait_for(self._active_of(source.store), timeout=REFRESH_TIMEOUT_S)
        except Exception as exc:
            log.debug("active series refresh failed", error=str(exc))
        else:
            self._active_series = active

    def describe_worker(self, *, input_partitions: int, flush_interval: float, series_limit: int) -> None:
        """At start: the input topic's partition count and the limits the alert rules compare to."""
        self._input_partitions = input_partitions
        self._flush_interval = flush_interval
        self._series_limit = series_limit

    # ------------------------------------------------------------------ direct setters (tests, tools)

    def set_lag(self, lag: Mapping[int, int]) -> None:
        self._lag = dict(lag)

    def set_active_series(self, active: Mapping[str, int]) -> None:
        self._active_series = dict(active)

    # ------------------------------------------------------------------ internals

    @staticmethod
    async def _lag_of(source: MetricsSource) -> dict[int, int]:
        consumer = source.consumer
        assigned = consumer.assignment()
        lag: dict[int, int] = {}
        unowned: list[TopicPartition] = []
        for partition in sorted(source.assigned):
            tp = TopicPartition(source.topic, partition)
            if tp not in assigned:
                continue
            if partition not in source.tokens:
                unowned.append(tp)
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:  # no fetch response for it yet
                continue
            position = source.applied.get(partition)
            if position is None:  # nothing applied from it yet: where the consumer reads from
                position = await consumer.position(tp)
            lag[partition] = max(0, int(highwater) - int(position))
        if unowned:
            ends = await consumer.end_offsets(unowned)
            for tp in unowned:
                committed = await consumer.committed(tp)
                if committed is None:
                    committed = (await consumer.beginning_offsets([tp]))[tp]
                lag[tp.partition] = max(0, int(ends[tp]) - int(committed))
        return lag

    @staticmethod
    async def _active_of(store: ActiveSeriesSource) -> dict[str, int]:
        tenants = await store.tenants()
        counts = await asyncio.gather(*(store.active_series(t) for t in tenants))
        return dict(zip(tenants, counts, strict=True))

    def _families(self, with_samples: bool) -> Iterator[Metric]:
        source = self._source if with_samples else None
        stats = source.stats if source is not None else None

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + name, doc)
            if stats is not None:
                family.add_metric([], value)
            return family

        def total(attribute: str) -> int:
            return int(getattr(stats, attribute)) if stats is not None else 0

        yield counter(
            "records_consumed",
            "Input records consumed (replays skipped per Redis offsets not included).",
            total("records"),
        )
        yield counter("consumed_bytes", "Bytes of input record values consumed.", total("bytes"))
        yield counter("spans_processed", "Spans aggregated into series.", total("spans"))
        dropped = CounterMetricFamily(
            PREFIX + "spans_dropped",
            "Spans not counted, by reason (undecodable counts whole records sent to the DLQ).",
            labels=["reason"],
        )
        if stats is not None:
            for reason in _reasons(stats.dropped):
                dropped.add_metric([reason], stats.dropped.get(reason, 0))
        yield dropped
        yield counter("dlq_records", "Records published to the dead-letter topic.", total("dlq"))
        yield counter(
            "records_emitted", "OTLP metrics records published to the output topic.", total("emitted_records")
        )
        yield counter("emitted_bytes", "Bytes of OTLP metrics records published.", total("emitted_bytes"))
        yield counter(
            "series_emitted", "Series published (each live series once per flush).", total("emitted_series")
        )
        yield counter(
            "series_expired", "Series removed by series_expiration or metrics_expiration.", total("expired")
        )
        yield counter(
            "series_overflowed",
            "New series folded into a tenant's overflow series (max_active_series_per_tenant reached).",
            total("overflowed"),
        )
        per_tenant = CounterMetricFamily(
            PREFIX + "tenant_series_overflowed",
            "New series folded into the tenant's overflow series because it held "
            "max_active_series_per_tenant active series (by this worker's slots).",
            labels=["tenant"],
        )
        if stats is not None:
            for tenant, value in sorted(stats.overflowed_by_tenant.items()):
                per_tenant.add_metric([tenant], value)
        yield per_tenant
        yield counter("flushes", "Completed flushes.", total("flushes"))
        yield counter(
            "emissions_late",
            "Emissions that began more than a tenth of metrics_flush_interval after they were due "
            "(due at start + k * interval).",
            total("emissions_late"),
        )
        yield counter(
            "emissions_skipped",
            "Due emissions that never began: a later, late emission served them.",
            total("emissions_skipped"),
        )
        yield counter(
            "rebalances", "Consumer-group rebalances this worker took part in.", total("rebalances")
        )
        yield counter(
            "replay_skipped_records",
            "Records skipped because Redis already holds them (exactly-once replay protection).",
            total("skipped_replay"),
        )
        yield counter(
            "fenced_flushes",
            "Flushes refused because another worker claimed a partition (state replayed from Redis).",
            total("fenced"),
        )
        yield counter(
            "redis_step_errors",
            "Failed attempts of an atomic Redis step (flush merge, partition claim, rewind); retried.",
            total("redis_errors"),
        )
        sink_errors = CounterMetricFamily(
            PREFIX + "sink_errors",
            "Failed output deliveries per sink (kafka: a failed emission, retried at the next flush, "
            "or a record the broker refused as too large).",
            labels=["sink"],
        )
        if stats is not None:
            for sink in sorted({"kafka", *stats.sink_errors}):
                sink_errors.add_metric([sink], stats.sink_errors.get(sink, 0))
        yield sink_errors
        yield counter(
            "state_lost",
            "Times this worker found Redis had lost its state (generation marker gone or changed, "
            "fencing tokens gone back) and took its partitions back from the committed offsets.",
            total("state_lost"),
        )
        remote = stats.remote_write if stats is not None else None

        def remote_total(attribute: str) -> int:
            return int(getattr(remote, attribute)) if remote is not None else 0

        yield counter(
            "remote_write_samples",
            "Samples (native histograms count one each) accepted by the remote-write endpoint.",
            remote_total("samples"),
        )
        yield counter(
            "remote_write_failed_samples",
            "Samples the remote-write endpoint refused with a status not retried (4xx but 429).",
            remote_total("failed_samples"),
        )
        yield counter(
            "remote_write_dropped_samples",
            "Samples never sent to the remote-write endpoint: pushed out of the full buffer while "
            "it was slow or down, or still buffered at shutdown.",
            remote_total("dropped_samples"),
        )
        yield counter(
            "remote_write_requests",
            "Remote-write requests sent (retries included).",
            remote_total("requests"),
        )
        yield counter(
            "remote_write_retries",
            "Remote-write requests retried (5xx, 429, timeouts, connection errors).",
            remote_total("retries"),
        )
        yield counter(
            "remote_write_sent_bytes",
            "Compressed bytes of remote-write requests sent.",
            remote_total("sent_bytes"),
        )
        pending = GaugeMetricFamily(
            PREFIX + "remote_write_pending_samples", "Samples buffered for the remote-write endpoint."
        )
        if remote is not None:
            pending.add_metric([], remote.pending_samples)
        yield pending

        yield from _service_graph_families(source.service_graphs if source is not None else None)

        tokens = source.tokens if source is not None else {}
        partitions = set(source.assigned) if source is not None else set()
        assigned = GaugeMetricFamily(
            PREFIX + "assigned_partitions", "Input partitions the consumer group assigned to this worker."
        )
        owned = GaugeMetricFamily(
            PREFIX + "owned_partitions",
            "Assigned input partitions this worker owns in Redis (holds their fencing token); "
            "fewer than assigned: those partitions are not consumed.",
        )
        if source is not None:
            assigned.add_metric([], len(partitions))
            owned.add_metric([], len(tokens))
        yield assigned
        yield owned
        yield _gauge(
            "input_partitions",
            "Partitions of the input topic (known at start); the group should own all of them.",
            self._input_partitions if source is not None else None,
        )
        yield _gauge(
            "flush_interval_seconds",
            "The configured flush interval (metrics_flush_interval), for alert rules.",
            self._flush_interval if source is not None else None,
        )
        yield _gauge(
            "max_active_series_per_tenant",
            "The configured worker.max_active_series_per_tenant (0 = unlimited), for alert rules.",
            self._series_limit if source is not None else None,
        )
        lag = GaugeMetricFamily(
            PREFIX + "consumer_lag_records",
            "Records on the broker not yet applied to Redis, per assigned input partition (per flush).",
            labels=["partition"],
        )
        for partition, value in sorted(self._lag.items()):
            if partition in partitions:  # revoked since the last refresh: not ours to report
                lag.add_metric([str(partition)], value)
        yield lag
        active = GaugeMetricFamily(
            PREFIX + "active_series",
            "Active series per tenant in Redis, the quantity max_active_series_per_tenant limits "
            "(the same on every worker: aggregate with max, not sum).",
            labels=["tenant"],
        )
        if source is not None:
            for tenant, value in sorted(self._active_series.items()):
                active.add_metric([tenant], value)
        yield active
        last = GaugeMetricFamily(
            PREFIX + "last_flush_timestamp_seconds", "Unix time of the last completed flush."
        )
        if source is not None and self._last_flush_unix is not None:
            last.add_metric([], self._last_flush_unix)
        yield last
        emission = GaugeMetricFamily(
            PREFIX + "last_emission_timestamp_seconds",
            "Unix time of the last emission that published the slots of every assigned partition "
            "(with none assigned, of the last emission).",
        )
        if source is not None and self._last_emission_unix is not None:
            emission.add_metric([], self._last_emission_unix)
        yield emission
        stall = GaugeMetricFamily(
            PREFIX + "event_loop_max_stall_seconds",
            "Worst lateness of the event loop (a 25 ms timer waking up late) since the previous scrape.",
        )
        if source is not None:
            stall.add_metric([], self.loop.take_since_scrape())
        yield stall
        yield counter(
            "event_loop_stalls",
            f"Times the event loop was blocked longer than {STALL_THRESHOLD:g} s.",
            self.loop.over_threshold,
        )
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "Always 1; the worker's version, span-metrics ingest (native, pure; unknown unbound),"
            " OTLP metrics encoder (native, pure) and fetch drain (light, aiokafka; unknown before"
            " the first fetch).",
            labels=["version", "ingest", "encode", "fetch"],
        )
        ingest = source.ingest_path if source is not None else "unknown"
        fetch = source.fetch_path if source is not None else "unknown"
        info.add_metric([__version__, ingest, encode_path(), fetch], 1)
        yield info


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _service_graph_families(counters: ServiceGraphCounters | None) -> Iterator[Metric]:
    """Tempo's service-graph processor counters, per tenant (absent without service graphs)."""
    if counters is None:
        return

    def per_tenant(name: str, doc: str, values: Mapping[str, int]) -> CounterMetricFamily:
        family = CounterMetricFamily(PREFIX + "service_graph_" + name, doc, labels=["tenant"])
        for tenant, value in sorted(values.items()):
            family.add_metric([tenant], value)
        return family

    yield per_tenant(
        "edges",
        "Spans that started a service-graph edge, waiting or completed at once (Tempo's "
        "tempo_metrics_generator_processor_service_graphs_edges).",
        counters.new_edges,
    )
    expired = CounterMetricFamily(
        PREFIX + "service_graph_expired_edges",
        "Edges that waited past `wait` with no other side and no peer to name it, by the kind of "
        "the span that touched them last (Tempo's ..._service_graphs_expired_edges).",
        labels=["tenant", "unmatched_span_kind"],
    )
    for (tenant, kind), value in sorted(counters.expired_edges.items()):
        expired.add_metric([tenant, kind], value)
    yield expired
    yield per_tenant(
        "dropped_edges",
        "Edges dropped because filter_policies filtered one side (Tempo's ..._dropped_edges_total).",
        counters.dropped_edges,
    )
    yield per_tenant(
        "dropped_span_side_cache_overflow",
        "Filtered sides not remembered because max_items markers were held, so their other side "
        "may wait and expire instead (Tempo's ..._dropped_span_side_cache_overflow_total).",
        counters.marker_overflows,
    )


def _reasons(dropped: Mapping[str, int]) -> Iterable[str]:
    """The known reasons first (always exported), then any other the runtime recorded."""
    yield from DROP_REASONS
    yield from sorted(r for r in dropped if r not in DROP_REASONS)


class _StatsCollector(Collector):
    """Serves the bundle's scrape-time families (counters from WorkerStats, gauge snapshots)."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self.metrics._families(with_samples=True))

    def describe(self) -> Iterable[Metric]:
        # Names only: lets the registry refuse a second bundle in the same registry.
        return list(self.metrics._families(with_samples=False))
