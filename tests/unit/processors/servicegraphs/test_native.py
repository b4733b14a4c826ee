"""``generate_native_histograms``: the latency histograms as OTLP exponential histograms."""

from __future__ import annotations

from typing import Any

import pytest

from worker.model.series import MetricKind
from worker.processors.servicegraphs import NATIVE_SCOPE_NAME, SCOPE_NAME

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    CONSUMER,
    MESSAGING_SECONDS,
    PRODUCER,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    Harness,
    make_span,
    resource_spans,
    trace_id,
)

HISTOGRAMS = (CLIENT_SECONDS, SERVER_SECONDS, MESSAGING_SECONDS)


def messaging_edge(harness: Harness) -> None:
    """upstream: servicegraphs_benchmark_test.go benchmarkServiceGraphMessagingEdge as used by
    TestServiceGraphs_histogramModesEmitValuesAndExemplars: client 0.05 s, server 0.03 s, a 0.01 s lag."""
    harness.consume(
        resource_spans("client", make_span(PRODUCER, trace=1, span=1, duration_ms=50)),
        resource_spans("server", make_span(CONSUMER, trace=1, span=2, parent=1, start_ms=60, duration_ms=30)),
    )


def metrics(harness: Harness) -> list[tuple[str, str, str, Any]]:
    """(scope, name, data kind, metric) of one emission, in order."""
    request = harness.metrics_request()
    return [
        (scope.scope.name, metric.name, metric.WhichOneof("data"), metric)
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    ]


def native_points(harness: Harness, name: str) -> list[Any]:
    (metric,) = [m for _, n, kind, m in metrics(harness) if n == name and kind == "exponential_histogram"]
    return list(metric.exponential_histogram.data_points)


@pytest.mark.parametrize("mode", ["classic", "native", "both"])
def test_histogram_modes_emit_values_and_exemplars(mode: str) -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_histogramModesEmitValuesAndExemplars: the
    # counter in every mode; classic buckets in classic and both; a native histogram in native and
    # both, with the same count and sum; one exemplar per histogram (on the classic buckets when
    # there are any), with the trace id and the observed value.
    harness = Harness(
        histogram_buckets=(0.04,),
        enable_messaging_system_latency_histogram=True,
        generate_native_histograms=mode,
    )
    messaging_edge(harness)
    emitted = metrics(harness)
    sums = {CLIENT_SECONDS: 0.05, SERVER_SECONDS: 0.03, MESSAGING_SECONDS: 0.01}
    (total,) = [m for _, name, _, m in emitted if name == REQUEST_TOTAL]
    assert total.sum.data_points[0].as_int == 1
    classic = {name: m for scope, name, kind, m in emitted if kind == "histogram"}
    native = {name: (scope, m) for scope, name, kind, m in emitted if kind == "exponential_histogram"}
    assert set(classic) == (set(HISTOGRAMS) if mode != "native" else set())
    assert set(native) == (set(HISTOGRAMS) if mode != "classic" else set())
    expected_trace = trace_id(1)
    for name in HISTOGRAMS:
        exemplar_points = []
        if name in classic:
            (point,) = classic[name].histogram.data_points
            assert (point.count, point.sum) == (1, pytest.approx(sums[name]))
            assert list(point.bucket_counts) == ([0, 1] if name == CLIENT_SECONDS else [1, 0])
            exemplar_points.append(point)
        if name in native:
            scope, metric = native[name]
            # Next to explicit buckets of the same name, the exponential one sits in its own scope.
            assert scope == (NATIVE_SCOPE_NAME if mode == "both" else SCOPE_NAME)
            (point,) = metric.exponential_histogram.data_points
            assert (point.count, point.sum, point.zero_count) == (1, pytest.approx(sums[name]), 0)
            assert point.scale == 3  # native_histogram_bucket_factor 1.1: Prometheus schema 3
            assert sum(point.positive.bucket_counts) == 1
            exemplar_points.append(point)
        exemplars = [(e.trace_id, e.as_double) for point in exemplar_points for e in point.exemplars]
        assert exemplars == [(expected_trace, pytest.approx(sums[name]))]


def test_native_descriptors_and_the_twins_of_both() -> None:
    native = Harness(generate_native_histograms="native").processor.descriptors()
    assert [(d.name, d.kind, d.series_metric, d.scope) for d in native if d.unit == "s"] == [
        (SERVER_SECONDS, MetricKind.EXPONENTIAL_HISTOGRAM, SERVER_SECONDS, SCOPE_NAME),
        (CLIENT_SECONDS, MetricKind.EXPONENTIAL_HISTOGRAM, CLIENT_SECONDS, SCOPE_NAME),
    ]
    both = Harness(generate_native_histograms="both").processor.descriptors()
    assert [(d.name, d.kind, d.series_metric, d.scope) for d in both if d.unit == "s"] == [
        (SERVER_SECONDS, MetricKind.HISTOGRAM, SERVER_SECONDS, SCOPE_NAME),
        (SERVER_SECONDS, MetricKind.EXPONENTIAL_HISTOGRAM, SERVER_SECONDS + ":native", NATIVE_SCOPE_NAME),
        (CLIENT_SECONDS, MetricKind.HISTOGRAM, CLIENT_SECONDS, SCOPE_NAME),
        (CLIENT_SECONDS, MetricKind.EXPONENTIAL_HISTOGRAM, CLIENT_SECONDS + ":native", NATIVE_SCOPE_NAME),
    ]


def test_native_histogram_keeps_at_most_100_buckets() -> None:
    # upstream: native_histogram_max_bucket_number 100 (Tempo's default override). client_golang
    # halves the resolution past it (or resets, after native_histogram_min_reset_duration); a
    # cumulative OTLP series never resets, so only the resolution goes down.
    harness = Harness(generate_native_histograms="native", wait=3600)
    for number, duration_ms in enumerate((0.001, 0.01, 1, 100, 10_000, 1_000_000), start=1):
        harness.consume(
            resource_spans("a", make_span(CLIENT, trace=number, span=10, duration_ms=duration_ms)),
            resource_spans("b", make_span(SERVER, trace=number, span=11, parent=10, duration_ms=duration_ms)),
        )
    (point,) = native_points(harness, SERVER_SECONDS)
    assert point.count == 6 and sum(point.positive.bucket_counts) == 6
    # 1e-6 s .. 1e3 s is 2**-20 .. 2**10: 30 powers of two, 240 buckets at scale 3, 60 at scale 1.
    assert point.scale == 1
    assert len(point.positive.bucket_counts) <= 100


def test_native_exemplars_are_the_last_ten() -> None:
    # upstream: registry/native_histogram.go leaves NativeHistogramMaxExemplars at 0 in native-only
    # mode: client_golang's default of 10 per histogram.
    harness = Harness(generate_native_histograms="native")
    for number in range(1, 13):
        harness.consume(
            resource_spans("a", make_span(CLIENT, trace=number, span=10)),
            resource_spans("b", make_span(SERVER, trace=number, span=11, parent=10)),
        )
    assert harness.processor.max_exemplars == 10
    (point,) = native_points(harness, SERVER_SECONDS)
    assert [e.trace_id for e in point.exemplars] == [trace_id(number) for number in range(3, 13)]
