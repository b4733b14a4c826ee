"""What the worker and the emitter get: descriptors, deltas, and the OTLP built from them."""

from __future__ import annotations

from worker.model.series import MetricKind
from worker.processors.servicegraphs import RESOURCE_ID, SCOPE_NAME, ServiceGraphsProcessor

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    DROPPED,
    MESSAGING_SECONDS,
    REQUEST_FAILED_TOTAL,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    TENANT,
    UNPAIRED,
    Harness,
    make_span,
    resource_spans,
)


def test_descriptors_name_kind_unit_scope_and_order() -> None:
    processor = ServiceGraphsProcessor(Harness().config)
    descriptors = processor.descriptors()
    assert [(d.name, d.kind) for d in descriptors] == [
        (REQUEST_TOTAL, MetricKind.SUM),
        (REQUEST_FAILED_TOTAL, MetricKind.SUM),
        (SERVER_SECONDS, MetricKind.HISTOGRAM),
        (CLIENT_SECONDS, MetricKind.HISTOGRAM),
        (UNPAIRED, MetricKind.SUM),
        (DROPPED, MetricKind.SUM),
    ]
    assert {d.scope for d in descriptors} == {SCOPE_NAME}
    assert [d.order for d in descriptors] == sorted(d.order for d in descriptors)
    assert all(d.unit == "s" for d in descriptors if d.kind is MetricKind.HISTOGRAM)
    assert all(d.description for d in descriptors)


def test_messaging_histogram_is_described_only_when_enabled() -> None:
    harness = Harness(enable_messaging_system_latency_histogram=True)
    assert [d.name for d in harness.processor.descriptors()].index(MESSAGING_SECONDS) == 4


def test_deltas_use_one_fixed_empty_resource() -> None:
    harness = Harness()
    harness.consume(
        resource_spans("a", make_span(CLIENT, span=10)),
        resource_spans("b", make_span(SERVER, span=11, parent=10)),
    )
    deltas = harness.processor.take_deltas()[TENANT]
    assert deltas.resources == {RESOURCE_ID: ()}
    assert {series.resource_id for series in deltas.series} == {RESOURCE_ID}
    assert {series.metric for series in deltas.series} == {REQUEST_TOTAL, SERVER_SECONDS, CLIENT_SECONDS}
    # Same id layout as span metrics (metric, resource id, attributes), so every metric of one
    # edge lands in one emission slot.
    total = next(s for s in deltas.series if s.metric == REQUEST_TOTAL)
    assert total.series_id == "\x1e".join([REQUEST_TOTAL, RESOURCE_ID, "client=a", "server=b"])


def test_series_times_come_from_the_clock() -> None:
    harness = Harness()
    start = harness.clock()
    harness.consume(
        resource_spans("a", make_span(CLIENT, span=10)),
        resource_spans("b", make_span(SERVER, span=11, parent=10)),
    )
    later = harness.clock.advance(3)
    harness.consume(
        resource_spans("a", make_span(CLIENT, trace=2, span=10)),
        resource_spans("b", make_span(SERVER, trace=2, span=11, parent=10)),
    )
    total = next(s for s in harness.processor.take_deltas()[TENANT].series if s.metric == REQUEST_TOTAL)
    assert (total.start_ns, total.last_ns, total.count) == (start, later, 2)


def test_otlp_output_matches_what_grafana_queries() -> None:
    harness = Harness(histogram_buckets=(0.1, 1.0))
    harness.consume(
        resource_spans("a", make_span(CLIENT, span=10)),
        resource_spans("b", make_span(SERVER, span=11, parent=10)),
    )
    harness.consume(resource_spans("c", make_span(CLIENT, trace=2, span=10)))
    harness.expire_after(10)
    request = harness.metrics_request()
    (resource_metrics,) = request.resource_metrics
    assert list(resource_metrics.resource.attributes) == []  # no job/instance labels, like Tempo
    (scope_metrics,) = resource_metrics.scope_metrics
    assert scope_metrics.scope.name == SCOPE_NAME
    metrics = {metric.name: metric for metric in scope_metrics.metrics}
    assert list(metrics) == [REQUEST_TOTAL, SERVER_SECONDS, CLIENT_SECONDS, UNPAIRED]
    total = metrics[REQUEST_TOTAL].sum
    assert total.is_monotonic
    assert total.aggregation_temporality == 2  # cumulative, as Prometheus counters
    assert [(kv.key, kv.value.string_value) for kv in total.data_points[0].attributes] == [
        ("client", "a"),
        ("server", "b"),
    ]
    histogram = metrics[SERVER_SECONDS]
    assert histogram.unit == "s"
    # Tempo's registry zero-initialises counters and histogram buckets (registry/counter.go,
    # histogram.go: the initial 0 sample): the series' first flush writes a 0 point, then the value.
    zero, counted = histogram.histogram.data_points
    assert list(counted.explicit_bounds) == [0.1, 1.0]
    assert sum(counted.bucket_counts) == 1
    assert (sum(zero.bucket_counts), zero.count, list(zero.explicit_bounds)) == (0, 0, [0.1, 1.0])
    assert zero.start_time_unix_nano == counted.start_time_unix_nano
    assert zero.time_unix_nano < counted.time_unix_nano
    assert [point.as_int for point in total.data_points] == [0, 1]
    assert total.data_points[0].time_unix_nano < total.data_points[1].time_unix_nano


def test_take_deltas_starts_a_new_interval() -> None:
    harness = Harness()
    harness.consume(
        resource_spans("a", make_span(CLIENT, span=10)),
        resource_spans("b", make_span(SERVER, span=11, parent=10)),
    )
    first = harness.processor.take_deltas()
    assert next(s for s in first[TENANT].series if s.metric == REQUEST_TOTAL).count == 1
    harness.consume(
        resource_spans("a", make_span(CLIENT, trace=2, span=10)),
        resource_spans("b", make_span(SERVER, trace=2, span=11, parent=10)),
    )
    second = harness.processor.take_deltas()
    assert next(s for s in second[TENANT].series if s.metric == REQUEST_TOTAL).count == 1
