"""Which series a span lands in: default dimensions, configured dimensions, key string forms."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from tests.unit.processors.spanmetrics.helpers import (
    CLIENT,
    ERROR,
    OK,
    SERVER,
    TENANT,
    FakeClock,
    Pipeline,
    attribute_types,
    counts_by,
    emitted,
    make_request,
    make_resource_spans,
    make_span,
    points,
    simple_request,
)
from worker.config import SpanMetricsConfig
from worker.processors.spanmetrics.processor import SpanMetricsProcessor

# ---------------------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (Span.SPAN_KIND_UNSPECIFIED, "SPAN_KIND_UNSPECIFIED"),
        (Span.SPAN_KIND_INTERNAL, "SPAN_KIND_INTERNAL"),
        (Span.SPAN_KIND_SERVER, "SPAN_KIND_SERVER"),
        (Span.SPAN_KIND_CLIENT, "SPAN_KIND_CLIENT"),
        (Span.SPAN_KIND_PRODUCER, "SPAN_KIND_PRODUCER"),
        (Span.SPAN_KIND_CONSUMER, "SPAN_KIND_CONSUMER"),
    ],
)
def test_span_kind_uses_the_proto_enum_name(kind: int, name: str) -> None:
    out = Pipeline().run(simple_request(make_span(kind=kind)))
    [point] = points(out, "calls")
    assert point.attributes["span.kind"] == name


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (Status.STATUS_CODE_UNSET, "STATUS_CODE_UNSET"),
        (Status.STATUS_CODE_OK, "STATUS_CODE_OK"),
        (Status.STATUS_CODE_ERROR, "STATUS_CODE_ERROR"),
    ],
)
def test_status_code_uses_the_proto_enum_name(code: int, name: str) -> None:
    out = Pipeline().run(simple_request(make_span(status=code)))
    [point] = points(out, "calls")
    assert point.attributes["status.code"] == name


def test_default_dimensions_in_order_and_as_strings() -> None:
    out = Pipeline().run(simple_request(make_span("GET /cart", kind=SERVER, status=ERROR), service="cart"))
    [point] = points(out, "calls")
    assert list(point.attributes.items()) == [
        ("service.name", "cart"),
        ("span.name", "GET /cart"),
        ("span.kind", "SPAN_KIND_SERVER"),
        ("status.code", "STATUS_CODE_ERROR"),
    ]
    assert set(attribute_types(point.proto.attributes).values()) == {"string_value"}


def test_each_default_dimension_separates_series() -> None:
    spans = [
        make_span("a", kind=SERVER, status=OK),
        make_span("a", kind=SERVER, status=OK),
        make_span("b", kind=SERVER, status=OK),
        make_span("a", kind=CLIENT, status=OK),
        make_span("a", kind=SERVER, status=ERROR),
    ]
    out = Pipeline().run(simple_request(*spans))
    counts = counts_by(out, "calls", "span.name", "span.kind", "status.code")
    assert counts == {
        ("a", "SPAN_KIND_SERVER", "STATUS_CODE_OK"): 2,
        ("b", "SPAN_KIND_SERVER", "STATUS_CODE_OK"): 1,
        ("a", "SPAN_KIND_CLIENT", "STATUS_CODE_OK"): 1,
        ("a", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR"): 1,
    }


def test_resource_without_service_name_is_skipped_and_counted() -> None:
    pipeline = Pipeline()
    anonymous = make_resource_spans({"host.name": "h1"}, [make_span(), make_span()])
    anonymous.scope_spans.append(ScopeSpans(spans=[make_span()]))
    request = make_request(
        anonymous,
        make_resource_spans({"service.name": "known"}, [make_span()]),
        make_resource_spans({}, [make_span()]),
    )
    stats = pipeline.consume(request)
    assert stats.skipped_no_service == 4
    assert stats.spans == 1
    out = pipeline.flush()
    assert len(out.resource_metrics) == 1
    assert counts_by(out, "calls", "service.name") == {"known": 1}


@pytest.mark.parametrize("value", [42, True, 1.5, [1], {"a": 1}])
def test_non_string_service_name_is_counted_as_empty(value: object) -> None:
    # Upstream: connector.go aggregateMetrics skips a resource only when service.name is absent
    # (``resourceAttr.Get`` not ok) and reads it with ``serviceAttr.Str()``, which is "" for a
    # non-string value; reference notes §2.2 quirk (c). Spans counted with service.name "".
    pipeline = Pipeline()
    stats = pipeline.consume(make_request(make_resource_spans({"service.name": value}, [make_span()])))
    assert stats.skipped_no_service == 0
    assert stats.spans == 1
    out = pipeline.flush()
    assert counts_by(out, "calls", "service.name") == {"": 1}
    [duration] = points(out, "duration")
    assert duration.attributes["service.name"] == ""


def test_an_empty_service_name_string_still_counts() -> None:
    out = Pipeline().run(simple_request(make_span(), service=""))
    assert counts_by(out, "calls", "service.name") == {"": 1}


# ---------------------------------------------------------------------------------------- lookup order


DIMENSION_CONFIG = {"dimensions": [{"name": "http.method", "default": "GET"}, "region"]}


def test_span_attribute_wins_over_resource_attribute() -> None:
    span = make_span(attributes={"region": "from-span", "http.method": "POST"})
    out = Pipeline(DIMENSION_CONFIG).run(simple_request(span, region="from-resource"))
    [point] = points(out, "calls")
    assert point.attributes["region"] == "from-span"
    assert point.attributes["http.method"] == "POST"


def test_resource_attribute_when_the_span_lacks_it() -> None:
    out = Pipeline(DIMENSION_CONFIG).run(simple_request(make_span(), region="from-resource"))
    [point] = points(out, "calls")
    assert point.attributes["region"] == "from-resource"


def test_default_when_neither_has_it() -> None:
    out = Pipeline(DIMENSION_CONFIG).run(simple_request(make_span()))
    [point] = points(out, "calls")
    assert point.attributes["http.method"] == "GET"


def test_resource_attribute_wins_over_the_default() -> None:
    out = Pipeline(DIMENSION_CONFIG).run(simple_request(make_span(), **{"http.method": "PUT"}))
    [point] = points(out, "calls")
    assert point.attributes["http.method"] == "PUT"


def test_missing_dimension_without_default_is_omitted() -> None:
    out = Pipeline(DIMENSION_CONFIG).run(simple_request(make_span()))
    [point] = points(out, "calls")
    assert "region" not in point.attributes
    assert list(point.attributes) == ["service.name", "span.name", "span.kind", "status.code", "http.method"]


def test_configured_dimensions_follow_the_defaults_in_config_order() -> None:
    config = {"dimensions": ["b", "a"]}
    out = Pipeline(config).run(simple_request(make_span(attributes={"a": "1", "b": "2"})))
    [point] = points(out, "calls")
    assert list(point.attributes)[4:] == ["b", "a"]


def test_of_duplicate_span_attributes_the_last_is_used() -> None:
    """Invalid OTLP (keys must be unique): span attributes are a map (worker.otlp.batch), last wins."""
    span = make_span(attributes=[("region", "first"), ("region", "second")])
    out = Pipeline({"dimensions": ["region"]}).run(simple_request(span))
    [point] = points(out, "calls")
    assert point.attributes["region"] == "second"


def test_an_empty_string_value_is_a_value_not_a_missing_one() -> None:
    config = {"dimensions": [{"name": "region", "default": "fallback"}]}
    out = Pipeline(config).run(simple_request(make_span(attributes={"region": ""})))
    [point] = points(out, "calls")
    assert point.attributes["region"] == ""


def test_present_and_missing_values_are_different_series() -> None:
    config = {"dimensions": ["region"]}
    spans = [make_span(attributes={"region": "eu"}), make_span(), make_span(attributes={"region": "eu"})]
    out = Pipeline(config).run(simple_request(*spans))
    assert counts_by(out, "calls", "region") == {"eu": 2, None: 1}


# ---------------------------------------------------------------------------------------- key forms


@pytest.mark.parametrize(
    ("first", "second", "kind"),
    [
        (200, "200", "int_value"),
        ("200", 200, "string_value"),
        (True, "true", "bool_value"),
        (False, "false", "bool_value"),
        (2.0, "2", "double_value"),
        (0.5, "0.5", "double_value"),
        (["a", 1], '["a",1]', "array_value"),
        ({"k": "v", "n": 1}, '{"k":"v","n":1}', "kvlist_value"),
        (b"\x01\x02", "AQI=", "bytes_value"),
    ],
)
def test_values_with_the_same_string_form_share_a_series(first: Any, second: Any, kind: str) -> None:
    config = {"dimensions": ["v"]}
    spans = [make_span(attributes={"v": first}), make_span(attributes={"v": second})]
    out = Pipeline(config).run(simple_request(*spans))
    [point] = points(out, "calls")
    assert point.value == 2
    # The data point keeps the type of the value that created the series.
    assert attribute_types(point.proto.attributes)["v"] == kind
    assert point.attributes["v"] == first


def test_values_with_different_string_forms_do_not_share() -> None:
    config = {"dimensions": ["v"]}
    spans = [make_span(attributes={"v": value}) for value in (200, 200.5, "2OO", True, 1)]
    out = Pipeline(config).run(simple_request(*spans))
    assert len(points(out, "calls")) == 5


def test_the_output_keeps_the_original_type() -> None:
    config = {"dimensions": ["code", "ratio", "cached", "tags", "meta", "raw"]}
    attributes = {
        "code": 200,
        "ratio": 0.25,
        "cached": True,
        "tags": ["a", 1],
        "meta": {"k": [1, "x"]},
        "raw": b"\x00\xff",
    }
    out = Pipeline(config).run(simple_request(make_span(attributes=attributes)))
    [point] = points(out, "calls")
    assert attribute_types(point.proto.attributes) == {
        "service.name": "string_value",
        "span.name": "string_value",
        "span.kind": "string_value",
        "status.code": "string_value",
        "code": "int_value",
        "ratio": "double_value",
        "cached": "bool_value",
        "tags": "array_value",
        "meta": "kvlist_value",
        "raw": "bytes_value",
    }
    for key, value in attributes.items():
        assert point.attributes[key] == value
    [duration] = points(out, "duration")
    assert duration.attributes == point.attributes


def test_resource_attribute_dimension_keeps_its_type() -> None:
    out = Pipeline({"dimensions": ["shard"]}).run(simple_request(make_span(), shard=7))
    [point] = points(out, "calls")
    assert attribute_types(point.proto.attributes)["shard"] == "int_value"
    assert point.attributes["shard"] == 7


def test_two_dimensions_with_the_same_value_in_different_slots_do_not_collide() -> None:
    config = {"dimensions": ["a", "b"]}
    spans = [make_span(attributes={"a": "x"}), make_span(attributes={"b": "x"})]
    out = Pipeline(config).run(simple_request(*spans))
    assert counts_by(out, "calls", "a", "b") == {("x", None): 1, (None, "x"): 1}


def _series_ids(config: dict[str, Any]) -> set[str]:
    processor = SpanMetricsProcessor(SpanMetricsConfig.model_validate(config), clock=FakeClock())
    span = make_span(attributes={"x": "v", "y": "v"})
    processor.consume(simple_request(span), TENANT)
    return {series.series_id for series in emitted(processor.take_deltas())[TENANT].series}


def test_the_series_identity_names_the_dimension() -> None:
    with_x = _series_ids({"dimensions": ["x"]})
    with_y = _series_ids({"dimensions": ["y"]})
    assert len(with_x) == len(with_y) == 2  # calls and duration
    assert with_x.isdisjoint(with_y)


def test_the_series_identity_is_stable_across_processors() -> None:
    assert _series_ids({"dimensions": ["x"]}) == _series_ids({"dimensions": ["x"]})


def test_the_series_identity_differs_per_metric_and_tenant() -> None:
    processor = SpanMetricsProcessor(SpanMetricsConfig(), clock=FakeClock())
    processor.consume(simple_request(make_span()), "t1")
    processor.consume(simple_request(make_span()), "t2")
    deltas = emitted(processor.take_deltas())
    assert set(deltas) == {"t1", "t2"}
    for tenant_deltas in deltas.values():
        ids = [series.series_id for series in tenant_deltas.series]
        assert len(set(ids)) == 2
        assert {series.metric for series in tenant_deltas.series} == {"calls", "duration"}


def test_tenants_are_aggregated_separately() -> None:
    processor = SpanMetricsProcessor(SpanMetricsConfig(), clock=FakeClock())
    processor.consume(simple_request(make_span(), make_span()), "t1")
    processor.consume(simple_request(make_span()), "t2")
    deltas = emitted(processor.take_deltas())
    calls = {tenant: sum(s.count for s in d.series if s.metric == "calls") for tenant, d in deltas.items()}
    assert calls == {"t1": 2, "t2": 1}


# ---------------------------------------------------------------------------------------- lookups and caches


def test_attribute_order_may_change_from_span_to_span() -> None:
    """Attributes are looked up by key, wherever they are in the span."""
    spans = [
        make_span(attributes=[("a", "1"), ("b", "2")]),
        make_span(attributes=[("b", "2"), ("a", "1")]),
        make_span(attributes=[("x", "0"), ("a", "1"), ("b", "2")]),
        make_span(attributes=[("b", "2")]),
        make_span(attributes=[("a", "1")]),
        make_span(attributes=[]),
        make_span(attributes=[("a", 1), ("b", 2)]),
        make_span(attributes=[("b", "2"), ("x", "9"), ("a", "1")]),
    ]
    out = Pipeline({"dimensions": ["a", {"name": "b", "default": "B"}]}).run(simple_request(*spans))
    assert counts_by(out, "calls", "a", "b") == {("1", "2"): 5, (None, "2"): 1, ("1", "B"): 1, (None, "B"): 1}
    assert len(points(out, "calls")) == 4  # one point per distinct attribute set


def test_attribute_positions_are_remembered_per_resource_and_scope() -> None:
    first = make_resource_spans(
        {"service.name": "a"}, [make_span(attributes=[("x", "1"), ("k", "v1")])], scope="s1"
    )
    second = make_resource_spans(
        {"service.name": "a"}, [make_span(attributes=[("k", "v2"), ("x", "1")])], scope="s2"
    )
    third = make_resource_spans({"service.name": "b"}, [make_span(attributes=[("k", "v3")])], scope="s1")
    pipeline = Pipeline({"dimensions": ["k"]})
    for _ in range(2):
        out = pipeline.run(make_request(first, second, third))
    assert counts_by(out, "calls", "service.name", "k") == {("a", "v1"): 2, ("a", "v2"): 2, ("b", "v3"): 2}
    assert len(points(out, "calls")) == 3


def test_same_attribute_bytes_under_another_key_are_not_confused() -> None:
    spans = [make_span(attributes=[("a", "v")]), make_span(attributes=[("b", "v")])]
    out = Pipeline({"dimensions": ["a", "b"]}).run(simple_request(*spans))
    assert counts_by(out, "calls", "a", "b") == {("v", None): 1, (None, "v"): 1}


def test_series_keep_their_first_typed_value_across_intervals() -> None:
    pipeline = Pipeline({"dimensions": ["code"], "aggregation_temporality": "DELTA"})
    pipeline.run(simple_request(make_span(attributes={"code": 200})))
    out = pipeline.run(simple_request(make_span(attributes={"code": "200"})))
    [point] = points(out, "calls")
    assert attribute_types(point.proto.attributes)["code"] == "int_value"


@pytest.mark.parametrize("cache_size", [1, 2, 1000])
def test_a_small_dimensions_cache_only_costs_time(cache_size: int) -> None:
    config = {"dimensions": ["k"], "dimensions_cache_size": cache_size}
    pipeline = Pipeline(config)
    for _ in range(3):
        out = pipeline.run(
            simple_request(*(make_span(f"op{i % 4}", attributes={"k": i % 3}) for i in range(24)))
        )
    counts = counts_by(out, "calls", "span.name", "k")
    assert sum(counts.values()) == 72
    assert len(counts) == 12


def test_resource_cache_eviction_keeps_resources_right() -> None:
    pipeline = Pipeline({"resource_metrics_cache_size": 1, "dimensions": ["zone"]})
    for _ in range(2):
        pipeline.consume(
            make_request(
                make_resource_spans({"service.name": "a", "zone": "z1"}, [make_span()]),
                make_resource_spans({"service.name": "b", "zone": "z2"}, [make_span()]),
                make_resource_spans({"zone": "z3"}, [make_span()]),
            )
        )
    out = pipeline.flush()
    assert counts_by(out, "calls", "service.name", "zone") == {("a", "z1"): 2, ("b", "z2"): 2}
