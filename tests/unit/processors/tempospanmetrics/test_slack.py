"""``metrics_ingestion_time_range_slack``: spans judged by the Kafka record's time, before the processors.

upstream: modules/generator/instance.go preprocessSpans and
integration/metrics-generator/metrics_generator_test.go (the reference notes' A1: a pair counted,
a span ended 5 minutes ago and one 10 days ahead discarded).
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.unit.processors.spanmetrics.helpers import BASE_NS, SECOND, make_request, make_resource_spans
from tests.unit.processors.tempospanmetrics.helpers import TempoRun, labels, series, values

GENERATOR: dict[str, Any] = {
    "processors": ["service-graphs", "span-metrics"],
    "metrics_ingestion_time_range_slack": "30s",
    "processor": {
        "service_graphs": {"histogram_buckets": [1, 2]},
        "span_metrics": {"histogram_buckets": [1, 2]},
    },
}
RECORD_NS = BASE_NS + 1000 * SECOND
TRACE = b"\x07" * 16


def _span(name: str, kind: int, span_id: int, parent: int | None, seconds: float, end_ns: int) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=end_ns - round(seconds * SECOND),
        end_time_unix_nano=end_ns,
    )


def _request() -> Any:
    lb = _span("lb-get", Span.SPAN_KIND_CLIENT, 1, None, 2.0, RECORD_NS - SECOND)
    app = _span("app-handle", Span.SPAN_KIND_SERVER, 2, 1, 1.0, RECORD_NS - 2 * SECOND)
    stale = _span("app-handle", Span.SPAN_KIND_SERVER, 3, None, 1.0, RECORD_NS - 300 * SECOND)
    future = _span("app-handle", Span.SPAN_KIND_SERVER, 4, None, 1.0, RECORD_NS + 10 * 86400 * SECOND)
    return make_request(
        make_resource_spans({"service.name": "lb"}, [lb]),
        make_resource_spans({"service.name": "app"}, [app, stale, future]),
    )


def test_spans_outside_the_slack_of_the_record_time_count_nothing() -> None:
    run = TempoRun(GENERATOR)
    stats = run.pipeline.consume(_request(), run.tenant, record_time_ns=RECORD_NS)
    assert (stats.spans, stats.outside_slack) == (2, 2)
    out = run.flush()
    edge = labels(client="lb", server="app")
    assert values(out, "traces_service_graph_request_total") == {edge: 1}
    client = series(out, "traces_service_graph_request_client_seconds")[edge]
    server = series(out, "traces_service_graph_request_server_seconds")[edge]
    assert (client.count, client.sum, list(client.bucket_counts)) == (1, 2.0, [0, 1, 0])
    assert (server.count, server.sum, list(server.bucket_counts)) == (1, 1.0, [1, 0, 0])
    lb = labels(
        service="lb", span_name="lb-get", span_kind="SPAN_KIND_CLIENT", status_code="STATUS_CODE_UNSET"
    )
    app = labels(
        service="app", span_name="app-handle", span_kind="SPAN_KIND_SERVER", status_code="STATUS_CODE_UNSET"
    )
    assert values(out, "traces_spanmetrics_calls_total") == {lb: 1, app: 1}
    latency = series(out, "traces_spanmetrics_latency")
    assert (latency[lb].sum, latency[app].sum) == (2.0, 1.0)
    assert all(value > 0 for value in values(out, "traces_spanmetrics_size_total").values())


def test_the_window_is_inclusive_and_relative_to_the_record_not_the_clock() -> None:
    # The worker's clock is an hour past the record (a replay): the record's time decides.
    run = TempoRun(GENERATOR)
    edge_low = _span("x", Span.SPAN_KIND_INTERNAL, 5, None, 0.0, RECORD_NS - 30 * SECOND)
    edge_high = _span("x", Span.SPAN_KIND_INTERNAL, 6, None, 0.0, RECORD_NS + 30 * SECOND)
    past = _span("x", Span.SPAN_KIND_INTERNAL, 7, None, 0.0, RECORD_NS - 30 * SECOND - 1)
    request = make_request(make_resource_spans({"service.name": "s"}, [edge_low, edge_high, past]))
    run.clock.now = RECORD_NS + 3600 * SECOND
    stats = run.pipeline.consume(request, run.tenant, record_time_ns=RECORD_NS)
    assert (stats.spans, stats.outside_slack) == (2, 1)
    assert run.pipeline.needs_record_time


def test_without_the_slack_every_span_counts() -> None:
    # Off by default here (Tempo's default is 30s against the wall clock; see docs/internals.md).
    generator = {
        key: value for key, value in GENERATOR.items() if key != "metrics_ingestion_time_range_slack"
    }
    run = TempoRun(generator)
    stats = run.pipeline.consume(_request(), run.tenant, record_time_ns=RECORD_NS)
    assert (stats.spans, stats.outside_slack) == (4, 0)
    assert not run.pipeline.needs_record_time
