"""The self-metrics bundle against a fresh registry: names, types, labels and values from WorkerStats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.processors.servicegraphs.helpers import CLIENT, SERVER, Harness, make_span
from tests.unit.processors.servicegraphs.helpers import resource_spans as spans_of
from worker import __version__
from worker.config import Settings
from worker.observability.selfmetrics import DROP_REASONS, WorkerMetrics
from worker.observability.stats import WorkerStats
from worker.otlp.metrics_encoder import encode_path
from worker.stream.worker import StreamWorker

TOPIC = "spans"

EXPECTED_TYPES = {
    "spanmetrics_records_consumed": "counter",
    "spanmetrics_consumed_bytes": "counter",
    "spanmetrics_spans_processed": "counter",
    "spanmetrics_spans_dropped": "counter",
    "spanmetrics_dlq_records": "counter",
    "spanmetrics_flush_duration_seconds": "histogram",
    "spanmetrics_redis_step_duration_seconds": "histogram",
    "spanmetrics_records_emitted": "counter",
    "spanmetrics_emitted_bytes": "counter",
    "spanmetrics_series_emitted": "counter",
    "spanmetrics_series_expired": "counter",
    "spanmetrics_series_overflowed": "counter",
    "spanmetrics_flushes": "counter",
    "spanmetrics_tenant_series_overflowed": "counter",
    "spanmetrics_emissions_late": "counter",
    "spanmetrics_emissions_skipped": "counter",
    "spanmetrics_event_loop_max_stall_seconds": "gauge",
    "spanmetrics_event_loop_stalls": "counter",
    "spanmetrics_active_series": "gauge",
    "spanmetrics_assigned_partitions": "gauge",
    "spanmetrics_owned_partitions": "gauge",
    "spanmetrics_consumer_lag_records": "gauge",
    "spanmetrics_last_flush_timestamp_seconds": "gauge",
    "spanmetrics_last_emission_timestamp_seconds": "gauge",
    "spanmetrics_rebalances": "counter",
    "spanmetrics_replay_skipped_records": "counter",
    "spanmetrics_fenced_flushes": "counter",
    "spanmetrics_state_lost": "counter",
    "spanmetrics_redis_step_errors": "counter",
    "spanmetrics_sink_errors": "counter",
    "spanmetrics_input_partitions": "gauge",
    "spanmetrics_flush_interval_seconds": "gauge",
    "spanmetrics_max_active_series_per_tenant": "gauge",
    "spanmetrics_remote_write_samples": "counter",
    "spanmetrics_remote_write_failed_samples": "counter",
    "spanmetrics_remote_write_dropped_samples": "counter",
    "spanmetrics_remote_write_requests": "counter",
    "spanmetrics_remote_write_retries": "counter",
    "spanmetrics_remote_write_sent_bytes": "counter",
    "spanmetrics_remote_write_pending_samples": "gauge",
    "spanmetrics_build_info": "gauge",
}


class FakeConsumer:
    def __init__(
        self,
        assigned: set[int],
        highwater: dict[int, int],
        position: dict[int, int],
        *,
        committed: dict[int, int] | None = None,
        ends: dict[int, int] | None = None,
        beginnings: dict[int, int] | None = None,
    ) -> None:
        self._assigned = {TopicPartition(TOPIC, p) for p in assigned}
        self._highwater = highwater
        self._position = position
        self._committed = committed or {}
        self._ends = ends or {}
        self._beginnings = beginnings or {}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._committed.get(tp.partition)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._ends[tp.partition] for tp in partitions}

    async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._beginnings.get(tp.partition, 0) for tp in partitions}

    def assignment(self) -> set[TopicPartition]:
        return self._assigned

    def highwater(self, tp: TopicPartition) -> int | None:
        assert tp in self._assigned, "Partition is not assigned"
        return self._highwater.get(tp.partition)

    async def position(self, tp: TopicPartition) -> int:
        return self._position[tp.partition]


class FakeStore:
    def __init__(self, active: dict[str, int], fail: bool = False) -> None:
        self.active = active
        self.fail = fail

    async def tenants(self) -> list[str]:
        if self.fail:
            raise ConnectionError("Redis is down")
        return sorted(self.active)

    async def active_series(self, tenant: str) -> int:
        return self.active[tenant]


@dataclass
class FakeWorker:
    stats: WorkerStats = field(default_factory=WorkerStats)
    tokens: dict[int, int] = field(default_factory=dict)
    applied: dict[int, int] = field(default_factory=dict)
    topic: str = TOPIC
    consumer: Any = None
    store: Any = None
    service_graphs: Any = None
    ingest_path: str = "native"
    fetch_path: str = "light"

    @property
    def assigned(self) -> list[int]:
        """The consumer's assignment; without a consumer, the owned partitions."""
        if self.consumer is None or not hasattr(self.consumer, "assignment"):
            return sorted(self.tokens)
        return sorted(tp.partition for tp in self.consumer.assignment())


def simulated_stats() -> WorkerStats:
    stats = WorkerStats(
        records=120,
        bytes=48_000,
        spans=900,
        skipped_replay=7,
        dlq=2,
        flushes=5,
        fenced=1,
        rebalances=3,
        emitted_series=40,
        emitted_records=6,
        emitted_bytes=12_345,
        expired=4,
        overflowed=8,
        overflowed_by_tenant={"acme": 5, "globex": 3},
        emissions_late=2,
        emissions_skipped=1,
    )
    stats.drop("undecodable", 2)
    stats.drop("no_service_name", 11)
    stats.drop("cardinality_overflow", 3)
    return stats


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_counters_read_worker_stats_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    worker = FakeWorker(stats=simulated_stats(), tokens={0: 1, 3: 1})
    metrics.bind(worker)

    assert (
        value(
            registry,
            "spanmetrics_build_info",
            version=__version__,
            ingest="native",
            encode=encode_path(),
            fetch="light",
        )
        == 1
    )
    assert value(registry, "spanmetrics_records_consumed_total") == 120
    assert value(registry, "spanmetrics_consumed_bytes_total") == 48_000
    assert value(registry, "spanmetrics_spans_processed_total") == 900
    assert value(registry, "spanmetrics_dlq_records_total") == 2
    assert value(registry, "spanmetrics_records_emitted_total") == 6
    assert value(registry, "spanmetrics_emitted_bytes_total") == 12_345
    assert value(registry, "spanmetrics_series_emitted_total") == 40
    assert value(registry, "spanmetrics_series_expired_total") == 4
    assert value(registry, "spanmetrics_series_overflowed_total") == 8
    assert value(registry, "spanmetrics_tenant_series_overflowed_total", tenant="acme") == 5
    assert value(registry, "spanmetrics_tenant_series_overflowed_total", tenant="globex") == 3
    assert value(registry, "spanmetrics_emissions_late_total") == 2
    assert value(registry, "spanmetrics_emissions_skipped_total") == 1
    assert value(registry, "spanmetrics_flushes_total") == 5
    assert value(registry, "spanmetrics_rebalances_total") == 3
    assert value(registry, "spanmetrics_replay_skipped_records_total") == 7
    assert value(registry, "spanmetrics_fenced_flushes_total") == 1
    assert value(registry, "spanmetrics_assigned_partitions") == 2
    assert value(registry, "spanmetrics_spans_dropped_total", reason="no_service_name") == 11
    assert value(registry, "spanmetrics_spans_dropped_total", reason="undecodable") == 2
    assert value(registry, "spanmetrics_spans_dropped_total", reason="cardinality_overflow") == 3
    # Known reasons exist from the start (rate() needs the zero), service graphs' included.
    assert value(registry, "spanmetrics_spans_dropped_total", reason="too_many_pending_edges") == 0

    # Nothing is copied: the next scrape sees the hot path's new totals.
    worker.stats.spans += 100
    worker.stats.drop("too_many_pending_edges", 5)
    worker.tokens.pop(3)
    assert value(registry, "spanmetrics_spans_processed_total") == 1000
    assert value(registry, "spanmetrics_spans_dropped_total", reason="too_many_pending_edges") == 5
    assert value(registry, "spanmetrics_assigned_partitions") == 1


def test_exposition_is_valid_prefixed_and_typed() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    worker = FakeWorker(stats=simulated_stats(), tokens={0: 1})
    metrics.bind(worker)
    metrics.set_lag({0: 17})
    metrics.set_active_series({"acme": 10, "globex": 20})
    metrics.observe_flush(0.2)
    metrics.describe_worker(input_partitions=4, flush_interval=15.0, series_limit=1000)

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    types = {name: f.type for name, f in families.items() if not name.endswith("_created")}
    assert types == EXPECTED_TYPES
    assert all(name.startswith("spanmetrics_") for name in families)
    labels = {
        name: sorted({key for s in f.samples for key in s.labels} - {"le"}) for name, f in families.items()
    }
    assert labels["spanmetrics_spans_dropped"] == ["reason"]
    assert labels["spanmetrics_consumer_lag_records"] == ["partition"]
    assert labels["spanmetrics_active_series"] == ["tenant"]
    assert labels["spanmetrics_tenant_series_overflowed"] == ["tenant"]
    assert labels["spanmetrics_build_info"] == ["encode", "fetch", "ingest", "version"]
    assert labels["spanmetrics_sink_errors"] == ["sink"]
    unlabelled = set(EXPECTED_TYPES) - {
        "spanmetrics_sink_errors",
        "spanmetrics_spans_dropped",
        "spanmetrics_consumer_lag_records",
        "spanmetrics_active_series",
        "spanmetrics_tenant_series_overflowed",
        "spanmetrics_build_info",
    }
    assert all(labels[name] == [] for name in unlabelled)


def test_alerting_inputs_redis_and_sink_errors_and_what_the_worker_knows() -> None:
    """What deploy/prometheus/alerts.yaml reads besides the counters above."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    stats = WorkerStats(redis_errors=3)
    metrics.bind(FakeWorker(stats=stats))
    assert value(registry, "spanmetrics_sink_errors_total", sink="kafka") == 0  # exported before any failure
    assert value(registry, "spanmetrics_input_partitions") is None  # unknown before start
    stats.sink_errors["kafka"] = 2
    metrics.describe_worker(input_partitions=12, flush_interval=15.0, series_limit=100_000)
    assert value(registry, "spanmetrics_redis_step_errors_total") == 3
    assert value(registry, "spanmetrics_sink_errors_total", sink="kafka") == 2
    assert value(registry, "spanmetrics_input_partitions") == 12
    assert value(registry, "spanmetrics_flush_interval_seconds") == 15.0
    assert value(registry, "spanmetrics_max_active_series_per_tenant") == 100_000


async def test_a_failing_redis_step_counts_each_failed_attempt() -> None:
    from worker.stream.partitions import Partitions
    from worker.stream.retry import with_redis_retry

    stats = WorkerStats()
    attempts = 0

    async def step() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("Redis is down")
        return "done"

    class Log:
        def warning(self, *args: object, **kwargs: object) -> None: ...

        def info(self, *args: object, **kwargs: object) -> None: ...

    result = await with_redis_retry(step, within=30, shared=Partitions(), log=Log(), stats=stats)
    assert result == "done" and stats.redis_errors == 2


def test_histograms_observe_in_seconds() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.observe_flush(0.2)
    metrics.observe_flush(3.0)
    metrics.observe_redis_step(0.004)

    assert value(registry, "spanmetrics_flush_duration_seconds_count") == 2
    assert value(registry, "spanmetrics_flush_duration_seconds_sum") == pytest.approx(3.2)
    assert value(registry, "spanmetrics_flush_duration_seconds_bucket", le="0.25") == 1
    assert value(registry, "spanmetrics_flush_duration_seconds_bucket", le="5.0") == 2
    assert value(registry, "spanmetrics_redis_step_duration_seconds_bucket", le="0.005") == 1
    assert value(registry, "spanmetrics_redis_step_duration_seconds_bucket", le="0.0025") == 0
    metrics.bind(FakeWorker())
    last_flush = value(registry, "spanmetrics_last_flush_timestamp_seconds")
    assert last_flush is not None and last_flush > 1.7e9


def test_last_flush_timestamp_advances_only_on_an_emitting_flush() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.bind(FakeWorker())
    metrics.observe_flush(0.1, emitting=False)  # merge-only: the span buffer was full
    assert value(registry, "spanmetrics_last_flush_timestamp_seconds") is None
    assert value(registry, "spanmetrics_flush_duration_seconds_count") == 1
    metrics.observe_flush(0.1, emitting=True)
    assert value(registry, "spanmetrics_last_flush_timestamp_seconds") is not None


def test_event_loop_stall_is_the_worst_since_the_previous_scrape() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.bind(FakeWorker())
    for stall in (0.01, 0.35, 0.02, 0.12):
        metrics.loop.record(stall)
    assert value(registry, "spanmetrics_event_loop_max_stall_seconds") == pytest.approx(0.35)
    # Each scrape (here each read) takes the worst since the one before.
    assert value(registry, "spanmetrics_event_loop_max_stall_seconds") == 0.0
    assert value(registry, "spanmetrics_event_loop_stalls_total") == 2  # above 0.1 s
    metrics.loop.record(0.004)
    assert value(registry, "spanmetrics_event_loop_max_stall_seconds") == pytest.approx(0.004)


def test_unbound_bundle_exports_names_without_values() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    assert value(registry, "spanmetrics_spans_processed_total") is None
    assert value(registry, "spanmetrics_assigned_partitions") is None
    assert (
        value(
            registry,
            "spanmetrics_build_info",
            version=__version__,
            ingest="unknown",
            encode=encode_path(),
            fetch="unknown",
        )
        == 1
    )


def test_one_bundle_per_registry() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        WorkerMetrics(registry)
    WorkerMetrics(CollectorRegistry())  # another registry is fine


async def test_refresh_computes_lag_and_active_series() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    consumer = FakeConsumer(
        assigned={0, 1, 2, 5},
        highwater={0: 100, 1: 50, 2: 10, 5: 30},
        position={2: 4},
    )
    worker = FakeWorker(
        tokens={0: 1, 1: 1, 2: 1, 4: 1, 5: 1},
        applied={0: 90, 1: 60},  # 1: applied past the stale highwater of the last fetch -> 0, not -10
        consumer=consumer,
        store=FakeStore({"acme": 12, "single-tenant": 3}),
    )
    consumer._highwater.pop(5)  # no fetch response for partition 5 yet
    metrics.bind(worker)
    await metrics.refresh()

    assert value(registry, "spanmetrics_consumer_lag_records", partition="0") == 10
    assert value(registry, "spanmetrics_consumer_lag_records", partition="1") == 0
    assert value(registry, "spanmetrics_consumer_lag_records", partition="2") == 6  # from the position
    assert value(registry, "spanmetrics_consumer_lag_records", partition="4") is None  # not assigned
    assert value(registry, "spanmetrics_consumer_lag_records", partition="5") is None
    assert value(registry, "spanmetrics_active_series", tenant="acme") == 12
    assert value(registry, "spanmetrics_active_series", tenant="single-tenant") == 3

    # Revoked since the last refresh: its lag is no longer reported, even before the next flush.
    worker.tokens.pop(0)
    consumer._assigned.discard(TopicPartition(TOPIC, 0))
    assert value(registry, "spanmetrics_consumer_lag_records", partition="0") is None


async def test_lag_is_reported_for_assigned_partitions_not_owned_in_redis() -> None:
    """Redis lost the state (or another worker fenced this one): the partitions stay assigned but
    are not consumed; their lag grows from the group's committed offsets, it does not vanish."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    consumer = FakeConsumer(
        assigned={0, 1, 2},
        highwater={0: 100, 1: 40, 2: 40},  # 1 and 2: stale, they are paused (not fetched)
        position={},
        committed={1: 30},
        ends={1: 75, 2: 60},
        beginnings={2: 5},
    )
    worker = FakeWorker(tokens={0: 7}, applied={0: 95}, consumer=consumer)
    metrics.bind(worker)
    await metrics.refresh()

    assert value(registry, "spanmetrics_assigned_partitions") == 3
    assert value(registry, "spanmetrics_owned_partitions") == 1
    assert value(registry, "spanmetrics_consumer_lag_records", partition="0") == 5
    assert value(registry, "spanmetrics_consumer_lag_records", partition="1") == 45  # end - committed
    assert value(registry, "spanmetrics_consumer_lag_records", partition="2") == 55  # none committed


def test_state_lost_and_last_emission() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    worker = FakeWorker(tokens={0: 1})
    metrics.bind(worker)
    assert value(registry, "spanmetrics_state_lost_total") == 0
    assert value(registry, "spanmetrics_last_emission_timestamp_seconds") is None
    worker.stats.state_lost += 1
    metrics.observe_emission()
    assert value(registry, "spanmetrics_state_lost_total") == 1
    last = value(registry, "spanmetrics_last_emission_timestamp_seconds")
    assert last is not None and last > 1.7e9


async def test_refresh_never_raises_and_keeps_the_last_snapshot() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    store = FakeStore({"acme": 12})
    worker = FakeWorker(tokens={0: 1}, applied={0: 5}, consumer=FakeConsumer({0}, {0: 9}, {}), store=store)
    metrics.bind(worker)
    await metrics.refresh()
    store.fail = True
    worker.consumer = object()  # any failure inside the lag computation
    await metrics.refresh()
    assert value(registry, "spanmetrics_active_series", tenant="acme") == 12
    assert value(registry, "spanmetrics_consumer_lag_records", partition="0") == 4
    await WorkerMetrics(CollectorRegistry()).refresh()  # unbound: nothing to do


async def test_stream_worker_uses_the_injected_bundle() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    worker = StreamWorker(Settings(), worker_id="w", metrics=metrics)
    other = StreamWorker(Settings(), worker_id="x")  # default: a private registry, no clash
    try:
        assert worker.metrics is metrics
        assert other.metrics.registry is not registry
        worker.stats.records += 3
        worker.stats.spans += 30
        worker.stats.drop("no_service_name", 2)
        worker.tokens[4] = 9
        assert value(registry, "spanmetrics_records_consumed_total") == 3
        assert value(registry, "spanmetrics_spans_processed_total") == 30
        assert value(registry, "spanmetrics_spans_dropped_total", reason="no_service_name") == 2
        assert value(registry, "spanmetrics_owned_partitions") == 1
        assert value(registry, "spanmetrics_assigned_partitions") == 0  # not started: no assignment
        assert value(other.metrics.registry, "spanmetrics_spans_processed_total") == 0
    finally:
        await worker.close(0.1)
        await other.close(0.1)


def test_drop_reasons_are_the_documented_set() -> None:
    assert DROP_REASONS == (
        "undecodable",
        "no_service_name",
        "cardinality_overflow",
        "too_many_pending_edges",
    )


def test_service_graph_counters_are_exported_per_tenant() -> None:
    # Tempo's tempo_metrics_generator_processor_service_graphs_{edges,expired_edges,
    # dropped_edges_total,dropped_span_side_cache_overflow_total}, read from the processor.
    harness = Harness(wait=1e-9)
    harness.consume(
        spans_of("client", make_span(CLIENT, trace=1, span=1)),
        spans_of("server", make_span(SERVER, trace=2, span=2, parent=0x10)),
        spans_of("server", make_span(SERVER, trace=3, span=3, parent=0x11)),
        tenant="acme",
    )
    harness.expire_after(1)
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.bind(FakeWorker(service_graphs=harness.processor))
    assert value(registry, "spanmetrics_service_graph_edges_total", tenant="acme") == 3
    kind = "unmatched_span_kind"
    expired = "spanmetrics_service_graph_expired_edges_total"
    assert value(registry, expired, tenant="acme", **{kind: "SPAN_KIND_CLIENT"}) == 1
    assert value(registry, expired, tenant="acme", **{kind: "SPAN_KIND_SERVER"}) == 2
    assert value(registry, "spanmetrics_service_graph_dropped_edges_total", tenant="acme") is None


def test_service_graph_counters_are_absent_without_service_graphs() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry).bind(FakeWorker())
    assert "spanmetrics_service_graph" not in generate_latest(registry).decode()
