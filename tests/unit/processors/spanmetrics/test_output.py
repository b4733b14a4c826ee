"""The emitted OTLP shape: resources, scope, calls, duration, events, and the options that shape them."""

from __future__ import annotations

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

from tests.unit.processors.spanmetrics.helpers import (
    BASE_NS,
    CLIENT,
    ERROR,
    MS,
    OK,
    SECOND,
    SERVER,
    Pipeline,
    attribute_dict,
    counts_by,
    make_request,
    make_resource_spans,
    make_span,
    metric_names,
    points,
    simple_request,
    total,
)
from worker.config import DEFAULT_HISTOGRAM_BUCKETS

DEFAULT_BOUNDS_MS = [b * 1000 for b in DEFAULT_HISTOGRAM_BUCKETS]

# ---------------------------------------------------------------------------------------- resources


def test_one_resource_metrics_per_distinct_resource() -> None:
    request = make_request(
        make_resource_spans({"service.name": "a", "k8s.pod.name": "p1"}, [make_span()]),
        make_resource_spans({"service.name": "a", "k8s.pod.name": "p2"}, [make_span()]),
        make_resource_spans({"service.name": "a", "k8s.pod.name": "p1"}, [make_span()]),
        make_resource_spans({"service.name": "b"}, [make_span()]),
    )
    out = Pipeline().run(request)
    resources = [attribute_dict(rm.resource.attributes) for rm in out.resource_metrics]
    assert resources == [
        {"service.name": "a", "k8s.pod.name": "p1"},
        {"service.name": "a", "k8s.pod.name": "p2"},
        {"service.name": "b"},
    ]
    calls = [sum(p.value for p in points(out, "calls") if p.resource == r) for r in resources]
    assert calls == [2, 1, 1]


@pytest.mark.parametrize("add", [False, True])
def test_resource_attributes_are_copied_whatever_add_resource_attributes_says(add: bool) -> None:
    # upstream: connector.go buildMetrics copies the resource attributes unless the alpha gate
    # excludeResourceMetrics is on and add_resource_attributes is false (#43394; connector_test.go,
    # reference notes §3 case 12: only gate on + option false gives an empty resource). There is
    # no gate here: the gate-off output, for both values.
    request = make_request(
        make_resource_spans({"service.name": "a", "k8s.pod.name": "p1", "pid": 7}, [make_span()])
    )
    out = Pipeline({"add_resource_attributes": add}).run(request)
    assert [attribute_dict(rm.resource.attributes) for rm in out.resource_metrics] == [
        {"service.name": "a", "k8s.pod.name": "p1", "pid": 7}
    ]


def test_resource_identity_ignores_attribute_order() -> None:
    request = make_request(
        make_resource_spans([("service.name", "a"), ("host", "h")], [make_span()]),
        make_resource_spans([("host", "h"), ("service.name", "a")], [make_span()]),
    )
    out = Pipeline().run(request)
    assert len(out.resource_metrics) == 1
    assert total(out, "calls") == 2


def test_resources_across_requests_and_flushes_stay_one_resource() -> None:
    pipeline = Pipeline()
    pipeline.consume(simple_request(make_span(), host="h"))
    pipeline.consume(simple_request(make_span(), host="h"))
    out = pipeline.run(simple_request(make_span(), host="h"))
    assert len(out.resource_metrics) == 1
    assert total(out, "calls") == 3


def test_key_attributes_group_resources_and_keep_only_those_keys() -> None:
    config = {"resource_metrics_key_attributes": ["service.name", "deployment.environment"]}
    request = make_request(
        make_resource_spans(
            [("k8s.pod.name", "p1"), ("deployment.environment", "prod"), ("service.name", "a")], [make_span()]
        ),
        make_resource_spans(
            {"service.name": "a", "deployment.environment": "prod", "k8s.pod.name": "p2"}, [make_span()]
        ),
        make_resource_spans({"service.name": "a", "k8s.pod.name": "p3"}, [make_span()]),
    )
    out = Pipeline(config).run(request)
    assert len(out.resource_metrics) == 2
    first, second = (list(attribute_dict(rm.resource.attributes).items()) for rm in out.resource_metrics)
    # The first resource seen, with only the key attributes, in its own order.
    assert first == [("deployment.environment", "prod"), ("service.name", "a")]
    assert second == [("service.name", "a")]
    assert [p.value for p in points(out, "calls")] == [2, 1]


def test_key_attributes_without_service_name_keep_services_apart() -> None:
    config = {"resource_metrics_key_attributes": ["k8s.namespace.name"]}
    request = make_request(
        make_resource_spans({"service.name": "cart", "k8s.namespace.name": "shop"}, [make_span("op")]),
        make_resource_spans({"service.name": "checkout", "k8s.namespace.name": "shop"}, [make_span("op")]),
        make_resource_spans({"service.name": "checkout", "k8s.namespace.name": "shop"}, [make_span("op")]),
    )
    out = Pipeline(config).run(request)
    assert len(out.resource_metrics) == 1
    assert attribute_dict(out.resource_metrics[0].resource.attributes) == {"k8s.namespace.name": "shop"}
    assert counts_by(out, "calls", "service.name") == {"cart": 1, "checkout": 2}
    assert counts_by(out, "duration", "service.name") == {"cart": 1, "checkout": 2}


def test_key_attributes_still_read_dimensions_from_each_resource() -> None:
    config = {"resource_metrics_key_attributes": ["service.name"], "dimensions": ["k8s.pod.name"]}
    request = make_request(
        make_resource_spans({"service.name": "a", "k8s.pod.name": "p1"}, [make_span()]),
        make_resource_spans({"service.name": "a", "k8s.pod.name": "p2"}, [make_span(), make_span()]),
    )
    out = Pipeline(config).run(request)
    assert len(out.resource_metrics) == 1
    assert counts_by(out, "calls", "k8s.pod.name") == {"p1": 1, "p2": 2}


def test_key_attributes_still_skip_a_resource_without_service_name() -> None:
    config = {"resource_metrics_key_attributes": ["k8s.namespace.name"]}
    pipeline = Pipeline(config)
    stats = pipeline.consume(
        make_request(
            make_resource_spans({"service.name": "a", "k8s.namespace.name": "shop"}, [make_span()]),
            make_resource_spans({"k8s.namespace.name": "shop"}, [make_span(), make_span()]),
        )
    )
    assert stats.skipped_no_service == 2
    assert total(pipeline.flush(), "calls") == 1


def test_resources_beyond_the_cache_size_still_count() -> None:
    config = {"resource_metrics_cache_size": 2}
    pipeline = Pipeline(config)
    for round_ in range(3):
        for host in ("h1", "h2", "h3"):
            pipeline.consume(simple_request(make_span(), host=host))
        out = pipeline.flush()
        assert counts_by(out, "calls", "service.name") == {"checkout": 3 * (round_ + 1)}
    assert len(out.resource_metrics) == 3


# ---------------------------------------------------------------------------------------- scope & calls


def test_scope_name_and_metric_order() -> None:
    out = Pipeline().run(simple_request(make_span()))
    [resource_metrics] = out.resource_metrics
    [scope_metrics] = resource_metrics.scope_metrics
    assert scope_metrics.scope.name == "spanmetricsconnector"
    assert [m.name for m in scope_metrics.metrics] == ["calls", "duration"]


def test_calls_is_a_monotonic_cumulative_int_sum() -> None:
    out = Pipeline().run(simple_request(make_span(), make_span(), make_span(status=ERROR)))
    calls = points(out, "calls")
    metric = calls[0].metric
    assert metric.WhichOneof("data") == "sum"
    assert metric.sum.is_monotonic
    assert metric.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    assert all(p.proto.WhichOneof("value") == "as_int" for p in calls)
    assert counts_by(out, "calls", "status.code") == {"STATUS_CODE_UNSET": 2, "STATUS_CODE_ERROR": 1}


def test_delta_temporality_is_marked() -> None:
    out = Pipeline({"aggregation_temporality": "DELTA"}).run(simple_request(make_span()))
    for point in points(out, "calls") + points(out, "duration"):
        data = getattr(point.metric, point.metric.WhichOneof("data"))
        assert data.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


def test_namespace_prefixes_every_metric() -> None:
    config = {
        "namespace": "traces.span.metrics",
        "events": {"enabled": True, "dimensions": ["exception.type"]},
    }
    out = Pipeline(config).run(simple_request(make_span(events=[{"exception.type": "E"}])))
    assert metric_names(out) == [
        "traces.span.metrics.calls",
        "traces.span.metrics.duration",
        "traces.span.metrics.events",
    ]


def test_empty_flush_emits_nothing() -> None:
    assert Pipeline().flush().resource_metrics == []


# ---------------------------------------------------------------------------------------- duration


def test_duration_histogram_in_milliseconds() -> None:
    spans = [make_span(duration_ms=ms) for ms in (1.0, 2.0, 2.5, 100.0, 20_000.0)]
    out = Pipeline().run(simple_request(*spans))
    [point] = points(out, "duration")
    assert point.metric.unit == "ms"
    assert point.metric.WhichOneof("data") == "histogram"
    assert (
        point.metric.histogram.aggregation_temporality
        == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    histogram = point.proto
    assert list(histogram.explicit_bounds) == DEFAULT_BOUNDS_MS
    assert len(histogram.bucket_counts) == len(histogram.explicit_bounds) + 1
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(1.0 + 2.0 + 2.5 + 100.0 + 20_000.0)
    expected = [0] * 17
    expected[0] = 2  # 1 ms and exactly 2 ms: bounds are upper-inclusive
    expected[1] = 1  # 2.5 ms
    expected[6] = 1  # 100 ms is the upper bound of (50, 100]
    expected[16] = 1  # beyond 15 s
    assert list(histogram.bucket_counts) == expected


@pytest.mark.parametrize(
    ("duration_ns", "bucket"),
    [(2 * MS, 0), (2 * MS + 1, 1), (4 * MS, 1), (15 * SECOND, 15), (15 * SECOND + 1, 16), (0, 0)],
)
def test_bucket_edges(duration_ns: int, bucket: int) -> None:
    span = make_span(start_ns=BASE_NS, end_ns=BASE_NS + duration_ns)
    [point] = points(Pipeline().run(simple_request(span)), "duration")
    assert list(point.proto.bucket_counts).index(1) == bucket


def test_duration_histogram_in_seconds() -> None:
    out = Pipeline({"histogram": {"unit": "s"}}).run(simple_request(make_span(duration_ms=2.0)))
    [point] = points(out, "duration")
    assert point.metric.unit == "s"
    assert list(point.proto.explicit_bounds) == list(DEFAULT_HISTOGRAM_BUCKETS)
    assert point.proto.bucket_counts[0] == 1
    assert point.proto.sum == pytest.approx(0.002)


def test_explicit_buckets() -> None:
    config = {"histogram": {"explicit": {"buckets": ["50ms", "100ms", "250ms", "1s"]}}}
    spans = [make_span(duration_ms=ms) for ms in (10, 75, 250, 999, 5000)]
    [point] = points(Pipeline(config).run(simple_request(*spans)), "duration")
    assert list(point.proto.explicit_bounds) == [50.0, 100.0, 250.0, 1000.0]
    assert list(point.proto.bucket_counts) == [1, 1, 1, 1, 1]


def test_a_span_that_ends_before_it_starts_counts_with_duration_zero() -> None:
    span = make_span(start_ns=BASE_NS + SECOND, end_ns=BASE_NS)
    out = Pipeline().run(simple_request(span))
    [point] = points(out, "duration")
    assert point.proto.count == 1
    assert point.proto.sum == 0.0
    assert point.proto.bucket_counts[0] == 1
    assert total(out, "calls") == 1


def test_a_span_without_end_time_counts_with_duration_zero() -> None:
    span = make_span(start_ns=BASE_NS, end_ns=0)
    [point] = points(Pipeline().run(simple_request(span)), "duration")
    assert (point.proto.count, point.proto.sum) == (1, 0.0)


def test_exponential_histogram() -> None:
    config = {"histogram": {"exponential": {"max_size": 10}}}
    spans = [make_span(duration_ms=ms) for ms in (1.0, 2.0, 4.0, 1000.0)]
    out = Pipeline(config).run(simple_request(*spans))
    [point] = points(out, "duration")
    assert point.metric.WhichOneof("data") == "exponential_histogram"
    assert point.metric.unit == "ms"
    exp = point.proto
    assert exp.count == 4
    assert exp.sum == pytest.approx(1007.0)
    assert exp.zero_count == 0
    assert sum(exp.positive.bucket_counts) == 4
    assert len(exp.positive.bucket_counts) <= 10
    assert exp.min == pytest.approx(1.0)
    assert exp.max == pytest.approx(1000.0)
    # Every value lies in its bucket: base**(offset + i) < value <= base**(offset + i + 1).
    base = 2.0 ** (2.0**-exp.scale)
    assert base**exp.positive.offset < 1.0 <= base ** (exp.positive.offset + 1)
    assert attribute_dict(exp.attributes)["span.name"] == "GET /users"


def test_exponential_histogram_zero_durations() -> None:
    config = {"histogram": {"exponential": {}}}
    span = make_span(start_ns=BASE_NS, end_ns=BASE_NS)
    [point] = points(Pipeline(config).run(simple_request(span)), "duration")
    assert (point.proto.count, point.proto.zero_count) == (1, 1)


def test_histogram_disable_drops_duration() -> None:
    out = Pipeline({"histogram": {"disable": True}}).run(simple_request(make_span()))
    assert metric_names(out) == ["calls"]
    assert total(out, "calls") == 1


# ---------------------------------------------------------------------------------------- events


EVENTS = {"dimensions": ["region"], "events": {"enabled": True, "dimensions": ["exception.type"]}}


def test_events_count_span_events() -> None:
    spans = [
        make_span(events=[{"exception.type": "Timeout"}, {"exception.type": "Timeout"}]),
        make_span(events=[{"exception.type": "Refused"}]),
        make_span(),
    ]
    out = Pipeline(EVENTS).run(simple_request(*spans))
    [metric] = {p.metric.name: p.metric for p in points(out, "events")}.values()
    assert metric.WhichOneof("data") == "sum"
    assert metric.sum.is_monotonic
    assert counts_by(out, "events", "exception.type") == {"Timeout": 2, "Refused": 1}
    assert total(out, "calls") == 3


def test_event_dimensions_are_looked_up_span_then_event_then_resource() -> None:
    spans = [
        make_span("s1", attributes={"exception.type": "span"}, events=[{"exception.type": "event"}]),
        make_span("s2", events=[{"exception.type": "event"}]),
        make_span("s3", events=[{}]),
    ]
    out = Pipeline(EVENTS).run(simple_request(*spans, **{"exception.type": "resource"}))
    assert counts_by(out, "events", "span.name", "exception.type") == {
        ("s1", "span"): 1,
        ("s2", "event"): 1,
        ("s3", "resource"): 1,
    }


def test_events_carry_the_default_and_top_level_dimensions() -> None:
    span = make_span("op", status=ERROR, attributes={"region": "eu"}, events=[{"exception.type": "E"}])
    [point] = points(Pipeline(EVENTS).run(simple_request(span)), "events")
    assert point.attributes == {
        "service.name": "checkout",
        "span.name": "op",
        "span.kind": "SPAN_KIND_SERVER",
        "status.code": "STATUS_CODE_ERROR",
        "region": "eu",
        "exception.type": "E",
    }


def test_event_dimension_default_and_omission() -> None:
    config = {
        "events": {"enabled": True, "dimensions": [{"name": "exception.type", "default": "none"}, "extra"]}
    }
    [point] = points(Pipeline(config).run(simple_request(make_span(events=[{}]))), "events")
    assert point.attributes["exception.type"] == "none"
    assert "extra" not in point.attributes


def test_event_dimensions_do_not_appear_on_calls() -> None:
    span = make_span(events=[{"exception.type": "E"}])
    out = Pipeline(EVENTS).run(simple_request(span))
    [calls] = points(out, "calls")
    assert "exception.type" not in calls.attributes


def test_events_disabled_ignores_events() -> None:
    out = Pipeline().run(simple_request(make_span(events=[{"exception.type": "E"}])))
    assert "events" not in metric_names(out)


def test_events_metric_absent_from_a_flush_without_events() -> None:
    out = Pipeline(EVENTS).run(simple_request(make_span()))
    assert metric_names(out) == ["calls", "duration"]


# ---------------------------------------------------------------------------------------- per-metric dims


def test_calls_dimensions_apply_only_to_calls() -> None:
    config = {"dimensions": ["region"], "calls_dimensions": ["http.route"]}
    spans = [
        make_span(attributes={"region": "eu", "http.route": "/a"}),
        make_span(attributes={"region": "eu", "http.route": "/b"}),
    ]
    out = Pipeline(config).run(simple_request(*spans))
    assert counts_by(out, "calls", "region", "http.route") == {("eu", "/a"): 1, ("eu", "/b"): 1}
    [duration] = points(out, "duration")
    assert duration.attributes["region"] == "eu"
    assert "http.route" not in duration.attributes
    assert duration.proto.count == 2


def test_a_name_in_two_lists_is_written_once_with_each_lists_default() -> None:
    # upstream: config.go validates each list on its own, so `a` may be in dimensions and in
    # calls_dimensions; buildAttributes writes the shared list, then the metric's own, into one
    # map (the later value replaces the earlier in place), and buildKey takes both.
    config = {
        "dimensions": [{"name": "a", "default": "base"}],
        "calls_dimensions": [{"name": "a", "default": "calls"}],
        "events": {"enabled": True, "dimensions": [{"name": "a", "default": "event"}]},
    }
    spans = [
        make_span(attributes={"a": "span"}, events=[{}]),
        make_span(events=[{}]),
    ]
    out = Pipeline(config).run(simple_request(*spans))
    for metric in ("calls", "duration", "events"):
        for point in points(out, metric):
            assert [kv.key for kv in point.proto.attributes].count("a") == 1
    assert counts_by(out, "calls", "a") == {"span": 1, "calls": 1}
    assert counts_by(out, "duration", "a") == {"span": 1, "base": 1}
    assert counts_by(out, "events", "a") == {"span": 1, "event": 1}


def test_histogram_dimensions_apply_only_to_duration() -> None:
    config = {"histogram": {"dimensions": ["http.route"]}}
    spans = [make_span(attributes={"http.route": "/a"}), make_span(attributes={"http.route": "/b"})]
    out = Pipeline(config).run(simple_request(*spans))
    assert counts_by(out, "duration", "http.route") == {"/a": 1, "/b": 1}
    [calls] = points(out, "calls")
    assert "http.route" not in calls.attributes
    assert calls.value == 2


def test_per_metric_dimensions_fall_back_to_resource_and_default() -> None:
    config = {
        "calls_dimensions": [{"name": "tier", "default": "free"}],
        "histogram": {"dimensions": ["zone"]},
    }
    out = Pipeline(config).run(simple_request(make_span(), zone="z1"))
    [calls] = points(out, "calls")
    [duration] = points(out, "duration")
    assert calls.attributes["tier"] == "free"
    assert "zone" not in calls.attributes
    assert duration.attributes["zone"] == "z1"
    assert "tier" not in duration.attributes


# ---------------------------------------------------------------------------------------- exclusions


def test_exclude_dimensions_drops_and_merges() -> None:
    config = {"exclude_dimensions": ["span.name"]}
    spans = [make_span("GET /a"), make_span("GET /b"), make_span("GET /c", status=ERROR)]
    out = Pipeline(config).run(simple_request(*spans))
    calls = points(out, "calls")
    assert all("span.name" not in p.attributes for p in calls)
    assert counts_by(out, "calls", "status.code") == {"STATUS_CODE_UNSET": 2, "STATUS_CODE_ERROR": 1}
    assert sorted(p.proto.count for p in points(out, "duration")) == [1, 2]


def test_excluding_a_name_that_is_not_a_default_dimension_is_ignored() -> None:
    # Upstream: connector_test.go excludes [span.kind, span.name, totallyWrong]; the bogus name is
    # no error and has no effect, only the two real defaults are dropped (reference notes §3 case 5).
    config = {"exclude_dimensions": ["span.kind", "span.name", "totallyWrong"]}
    spans = [make_span("a", kind=SERVER), make_span("b", kind=CLIENT)]
    out = Pipeline(config).run(simple_request(*spans))
    [calls] = points(out, "calls")
    assert calls.value == 2
    assert sorted(calls.attributes) == ["service.name", "status.code"]
    assert "totallyWrong" not in calls.attributes


@pytest.mark.parametrize("excluded", ["service.name", "span.name", "span.kind", "status.code"])
def test_each_default_dimension_can_be_excluded(excluded: str) -> None:
    spans = [make_span("a", status=OK), make_span("b", status=ERROR)]
    request = make_request(
        make_resource_spans({"service.name": "x"}, spans[:1]),
        make_resource_spans({"service.name": "y"}, spans[1:]),
    )
    out = Pipeline({"exclude_dimensions": [excluded]}).run(request)
    for point in points(out, "calls"):
        assert excluded not in point.attributes
        assert len(point.attributes) == 3


def test_excluding_every_default_dimension_leaves_one_series_per_resource() -> None:
    config = {"exclude_dimensions": ["service.name", "span.name", "span.kind", "status.code"]}
    spans = [make_span("a"), make_span("b", status=ERROR)]
    out = Pipeline(config).run(simple_request(*spans))
    [point] = points(out, "calls")
    assert point.attributes == {}
    assert point.value == 2


# ---------------------------------------------------------------------------------------- scopes


def test_include_instrumentation_scope_only_for_listed_scopes() -> None:
    config = {"include_instrumentation_scope": ["io.opentelemetry.jdbc", "no-version"]}
    resource_spans = make_resource_spans(
        {"service.name": "a"}, [make_span("q")], scope="io.opentelemetry.jdbc", scope_version="2.1.0"
    )
    resource_spans.scope_spans.append(ScopeSpans(spans=[make_span("q")]))
    resource_spans.scope_spans[-1].scope.name = "io.opentelemetry.http"
    resource_spans.scope_spans[-1].scope.version = "1.0"
    resource_spans.scope_spans.append(ScopeSpans(spans=[make_span("q")]))
    resource_spans.scope_spans[-1].scope.name = "no-version"
    out = Pipeline(config).run(make_request(resource_spans))
    found = {
        (
            p.attributes.get("span.instrumentation.scope.name"),
            p.attributes.get("span.instrumentation.scope.version"),
        )
        for p in points(out, "calls")
    }
    assert found == {("io.opentelemetry.jdbc", "2.1.0"), (None, None), ("no-version", None)}
    assert len(points(out, "duration")) == 3


def test_scopes_are_ignored_when_not_configured() -> None:
    resource_spans = make_resource_spans(
        {"service.name": "a"}, [make_span("q")], scope="lib", scope_version="1"
    )
    resource_spans.scope_spans.append(ScopeSpans(spans=[make_span("q")]))
    [point] = points(Pipeline().run(make_request(resource_spans)), "calls")
    assert point.value == 2
    assert "span.instrumentation.scope.name" not in point.attributes
