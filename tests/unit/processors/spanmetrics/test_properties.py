"""Properties over random span sets: nothing is lost, nothing is counted twice."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.unit.processors.spanmetrics.helpers import (
    BASE_NS,
    MS,
    Pipeline,
    make_request,
    make_resource_spans,
    make_span,
    points,
    total,
)

attribute_value = st.one_of(
    st.sampled_from(["GET", "POST", "200", "eu", ""]),
    st.integers(min_value=-2, max_value=300),
    st.booleans(),
    st.sampled_from([2.0, 0.5, 200.0]),
)

spans = st.builds(
    lambda name, kind, status, duration_ns, attributes: make_span(
        name,
        kind=kind,
        status=status,
        start_ns=BASE_NS,
        end_ns=BASE_NS + duration_ns,
        attributes=attributes,
    ),
    name=st.sampled_from(["a", "b", "c"]),
    kind=st.integers(min_value=0, max_value=5),
    status=st.integers(min_value=0, max_value=2),
    duration_ns=st.one_of(
        st.integers(min_value=-5 * MS, max_value=20_000 * MS),
        st.sampled_from([0, 2 * MS, 4 * MS, 15_000 * MS]),
    ),
    attributes=st.dictionaries(
        st.sampled_from(["http.method", "region", "code"]), attribute_value, max_size=3
    ),
)

resources = st.one_of(
    st.fixed_dictionaries(
        {"service.name": st.sampled_from(["svc-a", "svc-b"])}, optional={"pod": st.sampled_from(["p1", "p2"])}
    ),
    st.fixed_dictionaries({}, optional={"pod": st.sampled_from(["p1", "p2"])}),
)

batches = st.lists(st.tuples(resources, st.lists(spans, max_size=6)), max_size=5)

configs = st.fixed_dictionaries(
    {},
    optional={
        "dimensions": st.sampled_from(
            [["http.method"], ["region", "code"], [{"name": "code", "default": "0"}]]
        ),
        "exclude_dimensions": st.sampled_from([["span.name"], ["status.code", "span.kind"]]),
        "resource_metrics_key_attributes": st.sampled_from([["service.name"], ["pod"]]),
        "aggregation_cardinality_limit": st.integers(min_value=1, max_value=4),
        "histogram": st.sampled_from([{"unit": "s"}, {"exponential": {"max_size": 4}}]),
    },
)


def build(batch: list[tuple[dict[str, Any], list[Span]]]) -> tuple[ExportTraceServiceRequest, int]:
    request = make_request(*(make_resource_spans(resource, spans_) for resource, spans_ in batch))
    with_service = sum(len(spans_) for resource, spans_ in batch if "service.name" in resource)
    return request, with_service


@settings(max_examples=150, deadline=None)
@given(batches, configs)
def test_calls_total_is_the_number_of_spans_with_a_service(
    batch: list[tuple[dict[str, Any], list[Span]]], config: dict[str, Any]
) -> None:
    request, with_service = build(batch)
    pipeline = Pipeline(config)
    stats = pipeline.consume(request)
    assert stats.spans == with_service
    assert stats.skipped_no_service == sum(len(s) for _, s in batch) - with_service
    out = pipeline.flush()
    assert total(out, "calls") == with_service
    assert total(out, "duration") == with_service


@settings(max_examples=150, deadline=None)
@given(batches, configs)
def test_histogram_buckets_add_up_to_the_count(
    batch: list[tuple[dict[str, Any], list[Span]]], config: dict[str, Any]
) -> None:
    request, _ = build(batch)
    out = Pipeline(config).run(request)
    for point in points(out, "duration"):
        histogram = point.proto
        if point.metric.WhichOneof("data") == "histogram":
            assert len(histogram.bucket_counts) == len(histogram.explicit_bounds) + 1
            assert sum(histogram.bucket_counts) == histogram.count
        else:
            assert histogram.zero_count + sum(histogram.positive.bucket_counts) == histogram.count
        assert histogram.sum >= 0


@settings(max_examples=75, deadline=None)
@given(st.lists(batches, min_size=1, max_size=4))
def test_delta_flushes_add_up_to_the_cumulative_total(
    rounds: list[list[tuple[dict[str, Any], list[Span]]]],
) -> None:
    cumulative = Pipeline()
    delta = Pipeline({"aggregation_temporality": "DELTA"})
    delta_sum: dict[tuple[Any, ...], int] = {}
    for batch in rounds:
        request, _ = build(batch)
        last = cumulative.run(request)
        for point in points(delta.run(request), "calls"):
            key = (tuple(point.resource.items()), tuple(point.attributes.items()))
            delta_sum[key] = delta_sum.get(key, 0) + point.value
    cumulative_sum = {
        (tuple(p.resource.items()), tuple(p.attributes.items())): p.value for p in points(last, "calls")
    }
    assert cumulative_sum == delta_sum


@settings(max_examples=100, deadline=None)
@given(st.lists(spans, max_size=12))
def test_series_are_unique_per_flush(span_list: list[Span]) -> None:
    out = Pipeline({"dimensions": ["http.method", "region", "code"]}).run(
        make_request(make_resource_spans({"service.name": "s"}, span_list))
    )
    for name in ("calls", "duration"):
        seen = [tuple(sorted((k, str(v)) for k, v in p.attributes.items())) for p in points(out, name)]
        assert len(seen) == len(set(seen))


# ---------------------------------------------------------------------------------------- reference model


def key_string(value: Any) -> str:
    """pcommon AsString for the scalar types the strategies produce."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


KIND_NAMES = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
              "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"]  # fmt: skip
STATUS_NAMES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]
REFERENCE_CONFIG = {"dimensions": [{"name": "a", "default": "dflt"}, "b"]}

scalar = st.one_of(
    st.sampled_from(["x", "y", "200", "true", ""]), st.sampled_from([200, 7, True, False, 2.0])
)
# OTLP requires unique keys within a span; repeated keys are covered separately below.
attribute_lists = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), scalar), max_size=6, unique_by=lambda kv: kv[0]
)
repeated_key_lists = st.lists(st.tuples(st.sampled_from(["a", "b"]), scalar), max_size=8)
reference_spans = st.tuples(
    st.sampled_from(["op1", "op2"]), st.integers(0, 5), st.integers(0, 2), attribute_lists
)
reference_resources = st.fixed_dictionaries(
    {"service.name": st.sampled_from(["s1", "s2"])},
    optional={"a": scalar, "b": scalar, "pod": st.sampled_from(["p1", "p2"])},
)
reference_batches = st.lists(
    st.tuples(reference_resources, st.lists(reference_spans, max_size=8)), min_size=1, max_size=4
)


def expected_calls(batch: list[tuple[dict[str, Any], list[Any]]]) -> dict[tuple[Any, ...], int]:
    """What the connector's rules say, computed the slow obvious way."""
    counts: dict[tuple[Any, ...], int] = {}
    for resource, span_specs in batch:
        for name, kind, status, attributes in span_specs:
            first: dict[str, Any] = {}
            for key, value in attributes:
                first.setdefault(key, value)
            dims = []
            for dimension, default in (("a", "dflt"), ("b", None)):
                if dimension in first:
                    dims.append(key_string(first[dimension]))
                elif dimension in resource:
                    dims.append(key_string(resource[dimension]))
                else:
                    dims.append(default)
            label = (
                tuple(sorted((k, key_string(v)) for k, v in resource.items())),
                resource["service.name"], name, KIND_NAMES[kind], STATUS_NAMES[status], *dims,
            )  # fmt: skip
            counts[label] = counts.get(label, 0) + 1
    return counts


def produced_calls(out: Any) -> dict[tuple[Any, ...], int]:
    counts: dict[tuple[Any, ...], int] = {}
    for point in points(out, "calls"):
        attrs = point.attributes
        label = (
            tuple(sorted((k, key_string(v)) for k, v in point.resource.items())),
            attrs["service.name"], attrs["span.name"], attrs["span.kind"], attrs["status.code"],
            *(key_string(attrs[d]) if d in attrs else None for d in ("a", "b")),
        )  # fmt: skip
        counts[label] = counts.get(label, 0) + point.value
    return counts


def reference_request(batch: list[tuple[dict[str, Any], list[Any]]]) -> ExportTraceServiceRequest:
    return make_request(
        *(
            make_resource_spans(
                resource,
                [
                    make_span(name, kind=kind, status=status, attributes=attrs)
                    for name, kind, status, attrs in specs
                ],
            )
            for resource, specs in batch
        )
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(reference_batches, min_size=1, max_size=3))
def test_dimension_lookup_matches_the_reference_model(
    rounds: list[list[tuple[dict[str, Any], list[Any]]]],
) -> None:
    """Across several requests and flushes, so remembered attribute positions and caches get exercised."""
    pipeline = Pipeline({**REFERENCE_CONFIG, "aggregation_temporality": "DELTA"})
    for batch in rounds:
        out = pipeline.run(reference_request(batch))
        assert produced_calls(out) == expected_calls(batch)
        assert len(points(out, "calls")) == len(expected_calls(batch)), "one point per distinct attribute set"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.just("op1"), st.just(2), st.just(0), repeated_key_lists), min_size=1, max_size=8)
)
def test_repeated_attribute_keys_never_double_a_series_or_lose_a_span(specs: list[Any]) -> None:
    """Invalid input (a key twice in one span): which occurrence wins is not promised, but every
    span is counted once and no series is handed over twice in a flush."""
    pipeline = Pipeline({**REFERENCE_CONFIG, "aggregation_temporality": "DELTA"})
    out = pipeline.run(reference_request([({"service.name": "s1"}, specs)]))
    assert sum(point.value for point in points(out, "calls")) == len(specs)
