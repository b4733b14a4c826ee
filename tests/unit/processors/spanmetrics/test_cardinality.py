"""aggregation_cardinality_limit: new series past the limit fold into one overflow series."""

from __future__ import annotations

from tests.unit.processors.spanmetrics.helpers import (
    Pipeline,
    attribute_types,
    counts_by,
    make_request,
    make_resource_spans,
    make_span,
    points,
    simple_request,
    total,
)

OVERFLOW = {"otel.metric.overflow": True}


def test_series_past_the_limit_go_to_one_overflow_series() -> None:
    pipeline = Pipeline({"aggregation_cardinality_limit": 2})
    stats = pipeline.consume(simple_request(*(make_span(name) for name in ("a", "b", "c", "d", "c"))))
    out = pipeline.flush()
    calls = points(out, "calls")
    assert len(calls) == 3
    overflow = [p for p in calls if p.attributes == OVERFLOW]
    assert len(overflow) == 1
    assert overflow[0].value == 3
    assert attribute_types(overflow[0].proto.attributes) == {"otel.metric.overflow": "bool_value"}
    assert counts_by(out, "calls", "span.name") == {"a": 1, "b": 1, None: 3}
    assert stats.overflowed > 0


def test_duration_overflows_the_same_way() -> None:
    out = Pipeline({"aggregation_cardinality_limit": 1}).run(
        simple_request(
            make_span("a", duration_ms=1), make_span("b", duration_ms=3), make_span("c", duration_ms=3)
        )
    )
    histograms = points(out, "duration")
    [overflow] = [p for p in histograms if p.attributes == OVERFLOW]
    assert overflow.proto.count == 2
    assert overflow.proto.sum == 6.0
    assert overflow.proto.bucket_counts[1] == 2
    assert sum(p.proto.count for p in histograms) == 3


def test_existing_series_keep_counting_after_the_limit() -> None:
    pipeline = Pipeline({"aggregation_cardinality_limit": 2})
    pipeline.run(simple_request(make_span("a"), make_span("b"), make_span("c")))
    out = pipeline.run(simple_request(make_span("a"), make_span("a"), make_span("e"), make_span("b")))
    assert counts_by(out, "calls", "span.name") == {"a": 3, "b": 2, None: 2}


def test_new_series_still_overflow_in_later_flushes() -> None:
    pipeline = Pipeline({"aggregation_cardinality_limit": 1, "aggregation_temporality": "DELTA"})
    pipeline.run(simple_request(make_span("a")))
    out = pipeline.run(simple_request(make_span("z")))
    [point] = points(out, "calls")
    assert point.attributes == OVERFLOW


def test_the_limit_is_per_resource() -> None:
    request = make_request(
        make_resource_spans({"service.name": "x"}, [make_span("a"), make_span("b")]),
        make_resource_spans({"service.name": "y"}, [make_span("a"), make_span("b")]),
    )
    out = Pipeline({"aggregation_cardinality_limit": 1}).run(request)
    assert len(out.resource_metrics) == 2
    for resource_metrics in out.resource_metrics:
        calls = resource_metrics.scope_metrics[0].metrics[0]
        # Two series, each new: its zero point, then its count (connector_test.go, PR #39052:
        # overflow series are zero-initialised too).
        assert [p.as_int for p in calls.sum.data_points] == [0, 1, 0, 1]
    assert counts_by(out, "calls", "service.name", "span.name") == {
        ("x", "a"): 1,
        ("y", "a"): 1,
        (None, None): 2,
    }


def test_the_limit_is_per_metric() -> None:
    config = {"aggregation_cardinality_limit": 2, "calls_dimensions": ["route"]}
    spans = [make_span("a", attributes={"route": "/1"}), make_span("a", attributes={"route": "/2"})]
    spans += [make_span("a", attributes={"route": "/3"})]
    out = Pipeline(config).run(simple_request(*spans))
    # calls has three distinct series (one overflows); duration only one.
    assert len(points(out, "calls")) == 3
    assert [p.attributes for p in points(out, "calls")][-1] == OVERFLOW
    [duration] = points(out, "duration")
    assert duration.attributes != OVERFLOW
    assert duration.proto.count == 3


def test_no_limit_by_default() -> None:
    out = Pipeline().run(simple_request(*(make_span(str(i)) for i in range(300))))
    assert len(points(out, "calls")) == 300
    assert not any(p.attributes == OVERFLOW for p in points(out, "calls"))


def test_events_overflow() -> None:
    config = {
        "aggregation_cardinality_limit": 1,
        "events": {"enabled": True, "dimensions": ["exception.type"]},
    }
    span = make_span(events=[{"exception.type": "A"}, {"exception.type": "B"}, {"exception.type": "C"}])
    out = Pipeline(config).run(simple_request(span))
    assert counts_by(out, "events", "exception.type") == {"A": 1, None: 2}


def test_events_key_respects_excluded_dimensions() -> None:
    config = {
        "aggregation_cardinality_limit": 1,
        "exclude_dimensions": ["span.name"],
        "events": {"enabled": True, "dimensions": ["exception.type"]},
    }
    spans = [
        make_span("a", events=[{"exception.type": "E"}]),
        make_span("b", events=[{"exception.type": "E"}]),
    ]
    pipeline = Pipeline(config)
    pipeline.consume(simple_request(*spans))
    deltas = pipeline.processor.take_deltas()
    events = [s for s in deltas["tenant-a"].series if s.metric == "events"]
    # One series: the two spans only differ in an excluded dimension.
    assert [(dict(s.attributes).get("exception.type"), s.count) for s in events] == [("E", 2)]


def test_total_is_preserved_under_overflow() -> None:
    spans = [make_span(str(i % 7)) for i in range(50)]
    out = Pipeline({"aggregation_cardinality_limit": 3}).run(simple_request(*spans))
    assert total(out, "calls") == 50
    assert total(out, "duration") == 50
