"""Exemplars of the latency histograms: the edge's trace id, as Tempo's registry keeps them."""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import Settings
from worker.processors.pipeline import Pipeline

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


def points(harness: Harness, metric: str, request: Any = None) -> list[Any]:
    """The data points of ``metric`` in the next emission (or in ``request``)."""
    request = request or harness.metrics_request()
    return [
        point
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for one in scope.metrics
        if one.name == metric
        for point in (
            one.histogram.data_points or one.exponential_histogram.data_points or one.sum.data_points
        )
    ]


def exemplars(point: Any) -> list[tuple[str, bytes, float]]:
    return [(e.trace_id.hex(), e.span_id, e.as_double) for e in point.exemplars]


def test_completed_and_virtual_edges_carry_their_trace_id() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_exemplarsCarryTraceID ("completed edge",
    # "expired root server edge"): the trace id, no span id (Tempo's exemplar has only traceID).
    harness = Harness(histogram_buckets=(1.0,), wait=1e-9)
    consumed_at = harness.clock()
    harness.consume(
        resource_spans("svc-a", make_span(CLIENT, trace=0x10, span=0x0102, duration_ms=30)),
        resource_spans("svc-b", make_span(SERVER, trace=0x10, span=0x09, parent=0x0102, duration_ms=20)),
        resource_spans("svc-b", make_span(SERVER, trace=0x20, span=0x0A, duration_ms=40)),
    )
    harness.expire_after(1)
    completed = trace_id(0x10).hex()
    root = trace_id(0x20).hex()
    request = harness.metrics_request()  # exemplars go out once: read one emission
    server = {
        tuple(sorted((kv.key, kv.value.string_value) for kv in p.attributes)): p
        for p in points(harness, SERVER_SECONDS, request)
    }
    client = {
        tuple(sorted((kv.key, kv.value.string_value) for kv in p.attributes)): p
        for p in points(harness, CLIENT_SECONDS, request)
    }
    pair = (("client", "svc-a"), ("server", "svc-b"))
    virtual = (("client", "user"), ("connection_type", "virtual_node"), ("server", "svc-b"))
    assert exemplars(server[pair]) == [(completed, b"", pytest.approx(0.020))]
    assert exemplars(client[pair]) == [(completed, b"", pytest.approx(0.030))]
    # The missing client's 0 is observed, with the root span's trace id.
    assert exemplars(server[virtual]) == [(root, b"", pytest.approx(0.040))]
    assert exemplars(client[virtual]) == [(root, b"", 0.0)]
    # Stamped with the emission's time, as Tempo stamps them with the collection's (registry
    # histogram.go collectMetrics: Ts = timeMs) and the connector with the flush's.
    assert consumed_at < server[pair].time_unix_nano
    assert [e.time_unix_nano for e in server[pair].exemplars] == [server[pair].time_unix_nano]
    assert [e.time_unix_nano for e in server[virtual].exemplars] == [server[virtual].time_unix_nano]
    # Counters carry none (Tempo's counters have no exemplars).
    assert all(not p.exemplars for p in points(harness, REQUEST_TOTAL, request))


def test_one_exemplar_per_bucket_the_last_observed() -> None:
    # upstream: registry/histogram.go updateSeries keeps exemplars[bucket] = the last observation
    # of each bucket (value as observed); collectMetrics sends each once, then clears it.
    harness = Harness(histogram_buckets=(0.1, 1.0))
    for trace, duration_ms in ((1, 50), (2, 60), (3, 500), (4, 5000), (5, 7000)):
        harness.consume(
            resource_spans("a", make_span(CLIENT, trace=trace, span=10, duration_ms=duration_ms)),
            resource_spans("b", make_span(SERVER, trace=trace, span=11, parent=10, duration_ms=duration_ms)),
        )
    (point,) = points(harness, SERVER_SECONDS)
    assert exemplars(point) == [
        (trace_id(2).hex(), b"", pytest.approx(0.060)),  # le=0.1: trace 1 was replaced by trace 2
        (trace_id(3).hex(), b"", pytest.approx(0.500)),  # le=1
        (trace_id(5).hex(), b"", pytest.approx(7.000)),  # +Inf
    ]
    assert harness.processor.max_exemplars == 3
    (again,) = points(harness, SERVER_SECONDS)  # emitted once: the next emission has none
    assert exemplars(again) == []


def test_messaging_histogram_exemplar() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_histogramModesEmitValuesAndExemplars (classic):
    # one exemplar per histogram, including the messaging-system one, with the observed value.
    harness = Harness(histogram_buckets=(0.04,), enable_messaging_system_latency_histogram=True)
    harness.consume(
        resource_spans("client", make_span(PRODUCER, trace=7, span=1, duration_ms=50)),
        resource_spans("server", make_span(CONSUMER, trace=7, span=2, parent=1, start_ms=60, duration_ms=30)),
    )
    expected = trace_id(7).hex()
    assert [exemplars(p) for p in points(harness, MESSAGING_SECONDS)] == [
        [(expected, b"", pytest.approx(0.010))]
    ]


def test_pipeline_keeps_as_many_exemplars_as_the_larger_need() -> None:
    # The state keeps one cap for every metric: span metrics' exemplar setting, or one per
    # service-graph bucket (8 Tempo buckets and +Inf), whichever is larger.
    off = Settings(spanmetrics={"exemplars": {"enabled": False}}, servicegraphs={"enabled": True})
    assert Pipeline(off).max_exemplars == 9
    native = Settings(servicegraphs={"enabled": True, "generate_native_histograms": "native"})
    assert Pipeline(native).max_exemplars == max(10, Pipeline(Settings()).max_exemplars)
    only_requests = Settings(
        spanmetrics={"exemplars": {"enabled": False}},
        servicegraphs={"enabled": True, "subprocessors": ["service-graphs-request"]},
    )
    assert Pipeline(only_requests).max_exemplars == 0
