"""Exemplars: which span, what value, how many, and that they last one flush."""

from __future__ import annotations

import pytest

from tests.unit.processors.spanmetrics.helpers import (
    BASE_NS,
    MS,
    FakeClock,
    Pipeline,
    make_span,
    points,
    simple_request,
)

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
ENABLED = {"exemplars": {"enabled": True}}


def test_exemplar_carries_trace_id_span_id_and_duration() -> None:
    span = make_span(trace_id=TRACE_ID, span_id=SPAN_ID, start_ns=BASE_NS, end_ns=BASE_NS + 12_500_000)
    out = Pipeline(ENABLED).run(simple_request(span))
    [histogram] = points(out, "duration")
    [exemplar] = histogram.proto.exemplars
    assert exemplar.trace_id == TRACE_ID
    assert exemplar.span_id == SPAN_ID
    assert exemplar.as_double == pytest.approx(12.5)
    # upstream connector_test.go (reference §2.7): stamped with the flush time, not the span end;
    # on the calls sum the value is the duration too.
    assert exemplar.time_unix_nano == histogram.proto.time_unix_nano == BASE_NS + 3615 * 10**9
    [calls] = points(out, "calls")
    [call_exemplar] = calls.proto.exemplars
    assert (call_exemplar.trace_id, call_exemplar.span_id) == (TRACE_ID, SPAN_ID)
    assert (call_exemplar.as_double, call_exemplar.time_unix_nano) == (12.5, calls.proto.time_unix_nano)


def test_exemplar_value_follows_the_unit() -> None:
    config = {"exemplars": {"enabled": True}, "histogram": {"unit": "s"}}
    span = make_span(start_ns=BASE_NS, end_ns=BASE_NS + 250 * MS)
    [histogram] = points(Pipeline(config).run(simple_request(span)), "duration")
    assert histogram.proto.exemplars[0].as_double == pytest.approx(0.25)


def test_at_most_max_per_data_point_per_flush() -> None:
    config = {"exemplars": {"enabled": True, "max_per_data_point": 2}}
    spans = [make_span(span_id=bytes([i]) * 8) for i in range(1, 6)]
    out = Pipeline(config).run(simple_request(*spans))
    for point in points(out, "calls") + points(out, "duration"):
        assert [e.span_id for e in point.proto.exemplars] == [b"\x01" * 8, b"\x02" * 8]


def test_the_limit_holds_across_several_intervals_before_a_flush() -> None:
    config = {"exemplars": {"enabled": True, "max_per_data_point": 3}}
    pipeline = Pipeline(config)
    for _ in range(2):
        pipeline.consume(simple_request(make_span(), make_span()))
        pipeline.take_deltas()
    [point] = points(pipeline.flush(), "duration")
    assert len(point.proto.exemplars) == 3


def test_max_per_data_point_zero_means_no_exemplars() -> None:
    # Upstream accepts 0 (config.go Validate refuses only a negative max_per_data_point). Since
    # PR #41679 the field is an int with default 5 (no more nil pointer meaning "unlimited"), and
    # internal/metrics/metrics.go AddExemplar adds nothing once the slice holds max entries: with
    # 0, no exemplars (metrics_test.go TestSum_AddExemplar is the cap check).
    config = {"exemplars": {"enabled": True, "max_per_data_point": 0}}
    out = Pipeline(config).run(simple_request(make_span(trace_id=TRACE_ID), make_span(trace_id=TRACE_ID)))
    assert points(out, "calls") and points(out, "duration")
    for point in points(out, "calls") + points(out, "duration"):
        assert len(point.proto.exemplars) == 0
    assert sum(p.proto.count for p in points(out, "duration")) == 2


def test_default_maximum_is_five() -> None:
    spans = [make_span() for _ in range(8)]
    [point] = points(Pipeline(ENABLED).run(simple_request(*spans)), "duration")
    assert len(point.proto.exemplars) == 5


def test_exemplars_are_cleared_after_each_flush(clock: FakeClock) -> None:
    pipeline = Pipeline(ENABLED, clock=clock)
    pipeline.run(simple_request(make_span(), make_span()))
    idle = pipeline.flush()
    [point] = points(idle, "duration")
    assert point.proto.count == 2
    assert list(point.proto.exemplars) == []

    out = pipeline.run(simple_request(make_span(span_id=SPAN_ID)))
    [point] = points(out, "duration")
    assert [e.span_id for e in point.proto.exemplars] == [SPAN_ID]


def test_exemplars_are_cleared_after_each_delta_flush(clock: FakeClock) -> None:
    config = {"exemplars": {"enabled": True}, "aggregation_temporality": "DELTA"}
    pipeline = Pipeline(config, clock=clock)
    pipeline.run(simple_request(make_span(), make_span()))
    out = pipeline.run(simple_request(make_span(span_id=SPAN_ID)))
    [point] = points(out, "duration")
    assert [e.span_id for e in point.proto.exemplars] == [SPAN_ID]


def test_no_exemplars_when_disabled() -> None:
    out = Pipeline().run(simple_request(make_span(), make_span()))
    for point in points(out, "calls") + points(out, "duration"):
        assert list(point.proto.exemplars) == []


def test_no_exemplar_for_a_span_without_trace_id() -> None:
    out = Pipeline(ENABLED).run(simple_request(make_span(trace_id=b"")))
    [point] = points(out, "duration")
    assert point.proto.count == 1
    assert list(point.proto.exemplars) == []


def test_events_get_exemplars_too() -> None:
    config = {**ENABLED, "events": {"enabled": True, "dimensions": ["exception.type"]}}
    span = make_span(span_id=SPAN_ID, events=[{"exception.type": "E"}])
    [point] = points(Pipeline(config).run(simple_request(span)), "events")
    assert [e.span_id for e in point.proto.exemplars] == [SPAN_ID]
