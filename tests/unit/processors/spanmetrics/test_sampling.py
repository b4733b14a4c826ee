"""Sampling-aware counting from the W3C tracestate ``ot=th:...`` threshold."""

from __future__ import annotations

import random
from itertools import cycle
from typing import Any

import pytest

from tests.unit.processors.spanmetrics.helpers import (
    Pipeline,
    counts_by,
    make_request,
    make_resource_spans,
    make_span,
    points,
    simple_request,
    total,
)
from worker.processors.sampling import adjusted_count, parse_threshold, stochastic_round

EVENTS = {"events": {"enabled": True, "dimensions": ["exception.type"]}}


@pytest.mark.parametrize(
    ("tracestate", "threshold"),
    [
        ("ot=th:8", 0x80000000000000),
        ("ot=th:0", 0),
        ("ot=th:c", 0xC0000000000000),
        ("ot=th:fffffffffffff", 0xFFFFFFFFFFFFF0),
        ("ot=rv:abcdef01234567;th:4", 0x40000000000000),
        ("vendor=x, ot=th:8", 0x80000000000000),
        ("", None),
        ("vendor=th:8", None),
        ("ot=th:", None),
        ("ot=th:zz", None),
        ("ot=th:123456789abcdef", None),  # 15 digits
        ("ot=rv:1234", None),
        ("ot", None),
    ],
)
def test_parse_threshold(tracestate: str, threshold: int | None) -> None:
    assert parse_threshold(tracestate) == threshold


@pytest.mark.parametrize(
    ("tracestate", "count"),
    [
        ("ot=th:8", 2.0),
        ("ot=th:c", 4.0),
        ("ot=th:e", 8.0),
        ("ot=th:0", 1.0),
        ("ot=th:4", 4 / 3),
        ("ot=th:zz", 1.0),
        ("", 1.0),
    ],
)
def test_adjusted_count(tracestate: str, count: float) -> None:
    assert adjusted_count(tracestate) == pytest.approx(count)


def test_stochastic_round() -> None:
    assert stochastic_round(2.0, lambda: 0.0) == 2
    assert stochastic_round(1.25, lambda: 0.2) == 2
    assert stochastic_round(1.25, lambda: 0.25) == 1
    assert stochastic_round(1.25, lambda: 0.9) == 1


def test_half_sampled_span_counts_two_everywhere() -> None:
    span = make_span(duration_ms=3.0, trace_state="ot=th:8", events=[{"exception.type": "E"}])
    out = Pipeline(EVENTS).run(simple_request(span))
    assert total(out, "calls") == 2
    [histogram] = points(out, "duration")
    assert histogram.proto.count == 2
    assert histogram.proto.sum == pytest.approx(6.0)
    assert histogram.proto.bucket_counts[1] == 2
    assert total(out, "events") == 2


def test_exponential_histogram_is_weighted_too() -> None:
    config = {"histogram": {"exponential": {}}}
    out = Pipeline(config).run(simple_request(make_span(duration_ms=3.0, trace_state="ot=th:c")))
    [histogram] = points(out, "duration")
    assert histogram.proto.count == 4
    assert sum(histogram.proto.positive.bucket_counts) == 4
    assert histogram.proto.sum == pytest.approx(12.0)


@pytest.mark.parametrize(
    "tracestate", ["ot=th:0", "ot=th:", "ot=th:xyz", "ot=th:123456789abcdef", "ot=garbage", "th:8", "ot=th=8"]
)
def test_unsampled_or_malformed_counts_one(tracestate: str) -> None:
    out = Pipeline(EVENTS).run(
        simple_request(make_span(trace_state=tracestate, events=[{"exception.type": "E"}]))
    )
    assert total(out, "calls") == 1
    assert total(out, "duration") == 1
    assert total(out, "events") == 1


def test_fractional_weight_rounds_with_the_injected_uniform() -> None:
    # th:4 is a 75 % sampling probability: each span stands for 4/3 spans.
    draws = cycle([0.1, 0.5, 0.9])  # 0.1 < 1/3 rounds up; 0.5 and 0.9 round down
    pipeline = Pipeline(uniform=lambda: next(draws))
    out = pipeline.run(simple_request(*(make_span(trace_state="ot=th:4") for _ in range(6))))
    assert total(out, "calls") == 8
    [histogram] = points(out, "duration")
    assert histogram.proto.count == 8


def test_fractional_weights_are_unbiased_on_average() -> None:
    spans = 6000
    pipeline = Pipeline(uniform=random.Random(7).random)
    out = pipeline.run(simple_request(*(make_span(trace_state="ot=th:4") for _ in range(spans))))
    expected = spans * 4 / 3
    # Binomial(6000, 1/3) has a standard deviation of about 37.
    assert abs(total(out, "calls") - expected) < 200
    assert total(out, "calls") == total(out, "duration")


# ---------------------------------------------------------------------------------------- sampling.method

SAMPLING_METHOD = {"enable_metrics_sampling_method": True, **EVENTS}


def three_spans(*tracestates: str) -> list[Any]:
    return [make_span(trace_state=ts, events=[{"exception.type": "E"}]) for ts in tracestates]


def test_sampling_method_splits_extrapolated_from_counted() -> None:
    # upstream: connector_test.go adjusted-count cases (PR #45557; reference notes §3 case 9):
    # three otherwise identical spans th:8 / none / invalid give 2 series when enabled.
    out = Pipeline(SAMPLING_METHOD).run(simple_request(*three_spans("ot=th:8", "", "ot=th:zz")))
    for metric in ("calls", "duration", "events"):
        assert counts_by(out, metric, "sampling.method") == {"extrapolated": 2, "counted": 2}, metric
    [extrapolated] = [p for p in points(out, "calls") if p.attributes["sampling.method"] == "extrapolated"]
    # Ours: after the scope attributes (none here), last (upstream: after scope, before dimensions).
    assert [kv.key for kv in extrapolated.proto.attributes] == [
        "service.name",
        "span.name",
        "span.kind",
        "status.code",
        "sampling.method",
    ]


def test_without_sampling_method_the_same_spans_are_one_series() -> None:
    out = Pipeline(EVENTS).run(simple_request(*three_spans("ot=th:8", "", "ot=th:zz")))
    for metric in ("calls", "duration", "events"):
        [point] = points(out, metric)
        assert point.value == 4
        assert "sampling.method" not in point.attributes


@pytest.mark.parametrize(
    ("tracestate", "method", "count"),
    [
        ("ot=th:8", "extrapolated", 6),
        ("ot=th:c", "extrapolated", 12),
        ("ot=th:0", "extrapolated", 3),  # a threshold of 0 is a valid one (count 1)
        ("", "counted", 3),
        ("ot=rv:abcdabcdabcdff", "counted", 3),  # no th
        ("ot=th:zz", "counted", 3),
    ],
)
def test_sampling_method_per_tracestate(tracestate: str, method: str, count: int) -> None:
    # upstream: adjusted_count.go GetStochasticAdjustedCount: adjusted when the tracestate has a
    # valid threshold; connector_test.go: 3 spans th:8 -> 6, th:c -> 12, none / rv only -> 3.
    config = {**SAMPLING_METHOD, "dimensions": ["region"], "include_instrumentation_scope": ["lib"]}
    request = make_request(
        make_resource_spans(
            {"service.name": "svc"},
            three_spans(tracestate, tracestate, tracestate),
            scope="lib",
            scope_version="1.0",
        )
    )
    out = Pipeline(config).run(request)
    for metric in ("calls", "duration", "events"):
        assert counts_by(out, metric, "sampling.method") == {method: count}, metric
    [point] = points(out, "calls")
    assert [kv.key for kv in point.proto.attributes][4:] == [
        "span.instrumentation.scope.name",
        "span.instrumentation.scope.version",
        "sampling.method",
    ]
