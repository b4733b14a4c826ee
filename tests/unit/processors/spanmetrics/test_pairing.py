"""One ``duration`` series stands for ``calls`` too when both share their dimensions (the default).

The processor then hands over one series per key with ``companion`` naming the counter; the
stores write the counter out (``with_companions``). What is emitted must not change: these tests
compare the paired output with the same configuration made unpaired by a per-metric dimension no
span has (which adds no attribute, so the same series with the same ids come out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.processors.spanmetrics.helpers import (
    BASE_NS,
    MS,
    TENANT,
    FakeClock,
    Pipeline,
    emitted,
    make_request,
    make_resource_spans,
    make_span,
    points,
    simple_request,
    total,
)
from worker.config import Settings, SpanMetricsConfig
from worker.model.series import (
    OVERFLOW_ATTRIBUTE,
    SERIES_ID_SEPARATOR,
    Series,
    TenantDeltas,
    companion_series,
    with_companions,
)
from worker.offline import process_documents, read_documents
from worker.processors.spanmetrics.processor import SpanMetricsProcessor

DOCS = Path(__file__).resolve().parents[3] / "data" / "connector_docs"
EXEMPLARS = {"exemplars": {"enabled": True, "max_per_data_point": 3}}
#: Per-metric dimensions no span below has: the configuration is unpaired, the output the same.
UNPAIRED_BY_CALLS = {"calls_dimensions": ["absent.attribute"]}
UNPAIRED_BY_HISTOGRAM = {"histogram": {"dimensions": ["absent.attribute"]}}


def _with(config: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``extra`` added (``histogram`` options merged, not replaced)."""
    merged = {**config, **extra}
    if "histogram" in config and "histogram" in extra:
        merged["histogram"] = {**config["histogram"], **extra["histogram"]}
    return merged


def _processor(config: dict[str, Any], clock: FakeClock | None = None) -> SpanMetricsProcessor:
    return SpanMetricsProcessor(SpanMetricsConfig.model_validate(config), clock=clock or FakeClock())


def _spans(count: int = 12) -> list[Any]:
    names = ("GET /a", "GET /b", "POST /c")
    return [
        make_span(
            names[i % 3],
            status=i % 3,
            duration_ms=1.5 * (i + 1),
            attributes={"http.method": "GET" if i % 2 else "POST"},
            span_id=(i + 1).to_bytes(8, "big"),
        )
        for i in range(count)
    ]


def _deltas(config: dict[str, Any], *spans: Any) -> TenantDeltas:
    processor = _processor(config)
    processor.consume(simple_request(*spans), TENANT)
    return processor.take_deltas()[TENANT]


# ---------------------------------------------------------------------------------------- take_deltas


@pytest.mark.parametrize(
    ("config", "calls_name", "duration_name"),
    [
        ({}, "calls", "duration"),
        ({"dimensions": ["http.method"]}, "calls", "duration"),
        ({"namespace": "traces.span.metrics"}, "traces.span.metrics.calls", "traces.span.metrics.duration"),
        ({"histogram": {"exponential": {"max_size": 20}}}, "calls", "duration"),
    ],
)
def test_default_configuration_hands_over_one_series_per_key(
    config: dict[str, Any], calls_name: str, duration_name: str
) -> None:
    deltas = _deltas(config, *_spans())
    keys = {(s.resource_id, s.attributes) for s in deltas.series}
    assert len(deltas.series) == len(keys)
    assert {s.metric for s in deltas.series} == {duration_name}
    assert {s.companion for s in deltas.series} == {calls_name}
    assert sum(s.count for s in deltas.series) == 12


@pytest.mark.parametrize("config", [{}, {"histogram": {"exponential": {"max_size": 20}}}])
def test_the_companion_counter_is_the_histogram_count_start_and_exemplars(
    config: dict[str, Any], clock: FakeClock
) -> None:
    processor = _processor({**config, **EXEMPLARS}, clock)
    processor.consume(simple_request(*_spans()[:6]), TENANT)
    clock.advance(2)
    processor.consume(simple_request(*_spans()[6:]), TENANT)
    series = processor.take_deltas()[TENANT].series
    assert series
    for duration in series:
        [histogram, calls] = with_companions([duration])
        assert histogram.companion is None and duration.companion == "calls"  # a copy, as emitted
        assert (histogram.series_id, histogram.count, histogram.buckets) == (
            duration.series_id,
            duration.count,
            duration.buckets,
        )
        assert calls.metric == "calls"
        assert calls.companion is None
        assert (calls.buckets, calls.exp, calls.sum) == (None, None, 0.0)
        assert (calls.count, calls.start_ns, calls.last_ns) == (
            duration.count,
            duration.start_ns,
            duration.last_ns,
        )
        assert calls.exemplars == duration.exemplars
        assert len(duration.exemplars) == min(duration.count, 3)
        assert (calls.resource_id, calls.attributes) == (duration.resource_id, duration.attributes)
        assert calls.series_id == duration.series_id.replace("duration", "calls", 1)
        assert calls.series_id.startswith(f"calls{SERIES_ID_SEPARATOR}")
        if "histogram" in config:
            assert duration.exp is not None and duration.exp.count == duration.count
        else:
            assert duration.buckets is not None and sum(duration.buckets) == duration.count


@pytest.mark.parametrize(
    "config",
    [
        {"calls_dimensions": ["http.method"]},
        {"histogram": {"dimensions": ["http.method"]}},
        UNPAIRED_BY_CALLS,
        UNPAIRED_BY_HISTOGRAM,
    ],
)
def test_per_metric_dimensions_keep_separate_calls_series(config: dict[str, Any]) -> None:
    deltas = _deltas(config, *_spans())
    assert {s.companion for s in deltas.series} == {None}
    assert with_companions(deltas.series) == deltas.series
    assert sum(s.count for s in deltas.series if s.metric == "calls") == 12
    assert sum(s.count for s in deltas.series if s.metric == "duration") == 12


def test_without_the_histogram_calls_series_have_no_companion() -> None:
    deltas = _deltas({"histogram": {"disable": True}}, *_spans())
    assert {s.metric for s in deltas.series} == {"calls"}
    assert {s.companion for s in deltas.series} == {None}
    assert sum(s.count for s in deltas.series) == 12


def test_events_series_have_no_companion() -> None:
    span = make_span(events=[{"exception.type": "E"}])
    deltas = _deltas({"events": {"enabled": True, "dimensions": ["exception.type"]}}, span)
    [duration] = [s for s in deltas.series if s.metric == "duration"]
    [events] = [s for s in deltas.series if s.metric == "events"]
    assert (duration.companion, events.companion) == ("calls", None)
    assert [s.metric for s in with_companions(deltas.series)].count("calls") == 1


@pytest.mark.parametrize("unpaired", [UNPAIRED_BY_CALLS, UNPAIRED_BY_HISTOGRAM])
@pytest.mark.parametrize(
    "config",
    [
        {},
        EXEMPLARS,
        {"namespace": "ns", "dimensions": ["http.method"]},
        {"histogram": {"exponential": {"max_size": 10}}, **EXEMPLARS},
        {"aggregation_cardinality_limit": 2, **EXEMPLARS},
    ],
)
def test_paired_deltas_emit_what_unpaired_deltas_emit(
    config: dict[str, Any], unpaired: dict[str, Any]
) -> None:
    spans = _spans()
    paired = with_companions(_deltas(config, *spans).series)
    separate = _deltas(_with(config, unpaired), *spans).series

    def by_id(series: list[Series]) -> dict[str, tuple[Any, ...]]:
        return {
            s.series_id: (
                s.metric,
                s.attributes,
                s.count,
                s.sum,
                s.buckets,
                s.exp.to_state() if s.exp is not None else None,
                s.exemplars,
                s.start_ns,
                s.last_ns,
            )
            for s in series
        }

    assert len(paired) == len(separate)
    assert by_id(paired) == by_id(separate)


def test_pending_series_counts_a_paired_series_twice() -> None:
    for config in ({}, UNPAIRED_BY_CALLS):
        processor = _processor(config)
        processor.consume(simple_request(*_spans()), TENANT)
        assert processor.pending_series() == 6  # 3 keys, calls and duration


def test_templates_hold_only_duration_series_when_paired() -> None:
    processor = _processor({})
    processor.consume(simple_request(*_spans()), TENANT)
    processor.take_deltas()
    processor.consume(simple_request(*_spans()), TENANT)
    assert {metric for metric, _, _ in processor._templates} == {"duration"}
    assert len(processor._templates) == 3
    assert all(s.companion == "calls" for s in processor.take_deltas()[TENANT].series)


# ---------------------------------------------------------------------------------------- cardinality


def test_overflow_series_is_paired_and_refusals_count_for_both_metrics() -> None:
    processor = _processor({"aggregation_cardinality_limit": 2})
    spans = [make_span(name) for name in ("a", "b", "c", "d", "e", "c")]
    stats = processor.consume(simple_request(*spans), TENANT)
    # Three keys refused (c, d, e), each once per interval, for calls and for duration: as when
    # the two were separate series.
    assert stats.overflowed == 6
    series = processor.take_deltas()[TENANT].series
    assert len(series) == 3
    [overflow] = [s for s in series if s.attributes == ((OVERFLOW_ATTRIBUTE, True),)]
    assert overflow.companion == "calls"
    assert overflow.metric == "duration"
    assert overflow.count == 4
    assert {s.companion for s in series} == {"calls"}

    # The next interval refuses the same keys again, and admits the known ones without a count.
    stats = processor.consume(simple_request(*spans), TENANT)
    assert stats.overflowed == 6


def test_overflow_counts_as_before_without_pairing() -> None:
    """Unpaired, each metric refuses on its own: the same total for the same spans."""
    spans = [make_span(name) for name in ("a", "b", "c", "d", "e", "c")]
    for config in ({}, UNPAIRED_BY_CALLS, UNPAIRED_BY_HISTOGRAM):
        processor = _processor({"aggregation_cardinality_limit": 2, **config})
        assert processor.consume(simple_request(*spans), TENANT).overflowed == 6
    no_histogram = _processor({"aggregation_cardinality_limit": 2, "histogram": {"disable": True}})
    assert no_histogram.consume(simple_request(*spans), TENANT).overflowed == 3


def test_overflow_is_emitted_for_both_metrics() -> None:
    pipeline = Pipeline({"aggregation_cardinality_limit": 1, **EXEMPLARS})
    pipeline.consume(simple_request(*(make_span(name) for name in ("a", "b", "c"))))
    out = pipeline.flush()
    assert total(out, "calls") == total(out, "duration") == 3
    for metric in ("calls", "duration"):
        [overflow] = [p for p in points(out, metric) if p.attributes == {OVERFLOW_ATTRIBUTE: True}]
        assert overflow.value == 2
        assert len(overflow.proto.exemplars) == 2


def test_exponential_overflow_is_paired() -> None:
    config = {"aggregation_cardinality_limit": 1, "histogram": {"exponential": {"max_size": 10}}}
    processor = _processor(config)
    stats = processor.consume(simple_request(*(make_span(name) for name in ("a", "b", "c"))), TENANT)
    assert stats.overflowed == 4
    series = processor.take_deltas()[TENANT].series
    assert [(s.attributes[0], s.companion, s.count) for s in series] == [
        (("service.name", "checkout"), "calls", 1),
        ((OVERFLOW_ATTRIBUTE, True), "calls", 2),
    ]
    assert all(s.exp is not None and s.exp.count == s.count for s in series)


@pytest.mark.parametrize(
    "temporality", ["AGGREGATION_TEMPORALITY_CUMULATIVE", "AGGREGATION_TEMPORALITY_DELTA"]
)
def test_pipeline_output_is_the_same_paired_or_not(temporality: str, clock: FakeClock) -> None:
    base = {"aggregation_temporality": temporality, "metrics_expiration": "40s", **EXEMPLARS}
    requests = [
        make_request(
            make_resource_spans({"service.name": "checkout"}, _spans(3 + round_ * 4)),
            make_resource_spans({"service.name": "other"}, [make_span("x", duration_ms=round_)]),
        )
        for round_ in range(4)
    ]
    outputs = []
    for config in ({}, UNPAIRED_BY_CALLS):
        flushes = []
        pipeline = Pipeline({**base, **config}, clock=FakeClock(clock.now))
        for round_, request in enumerate(requests):
            pipeline.consume(request)
            flushes.append(pipeline.flush(advance_s=15 if round_ < 2 else 30).SerializeToString())
        outputs.append(flushes)
    assert outputs[0] == outputs[1]
    assert all(outputs[0])


def test_companion_series_of_a_series_without_id_parts() -> None:
    """A series without separators (as some stores build them) keeps an empty id."""
    series = Series("", "duration", "r", (), 1, 2, count=3, companion="calls")
    calls = companion_series(series)
    assert (calls.series_id, calls.metric, calls.count) == ("", "calls", 3)


# ---------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("example", ["same_resource", "two_resources"])
def test_process_output_is_the_same_paired_or_not(example: str) -> None:
    data = (DOCS / f"{example}_input.json").read_bytes()
    results = []
    for spanmetrics in ({}, UNPAIRED_BY_CALLS):
        settings = Settings.model_validate({"spanmetrics": {**spanmetrics, **EXEMPLARS}})
        result = process_documents(settings, read_documents(example, data, None), clock=FakeClock())
        results.append(result.request.SerializeToString())
    assert results[0] == results[1]
    assert b"calls" in results[0] and b"duration" in results[0]


def test_emitted_helper_expands_only_paired_series() -> None:
    spans = [make_span(start_ns=BASE_NS + i * MS) for i in range(3)]
    processor = _processor({})
    processor.consume(simple_request(*spans), TENANT)
    deltas = processor.take_deltas()
    [duration] = deltas[TENANT].series
    [histogram, calls] = emitted(deltas)[TENANT].series
    assert (histogram.metric, histogram.count, histogram.companion) == (duration.metric, 3, None)
    assert calls.count == 3
