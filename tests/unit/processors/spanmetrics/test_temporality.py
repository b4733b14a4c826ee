"""Cumulative and delta emission through the processor and the worker's store, fold and encoder,
flush by flush."""

from __future__ import annotations

from itertools import pairwise

from tests.unit.processors.spanmetrics.helpers import (
    TENANT,
    FakeClock,
    Pipeline,
    counts_by,
    emitted,
    make_span,
    points,
    simple_request,
)
from worker.offline import run_ready


def test_cumulative_start_time_is_fixed_and_values_only_grow(clock: FakeClock) -> None:
    pipeline = Pipeline(clock=clock)
    created = clock.now
    pipeline.consume(simple_request(make_span("a", duration_ms=1)))
    first = pipeline.flush(advance_s=15)
    first_time = clock.now

    pipeline.consume(simple_request(make_span("a", duration_ms=3), make_span("a", duration_ms=700)))
    second = pipeline.flush(advance_s=15)
    third = pipeline.flush(advance_s=15)  # idle interval
    pipeline.consume(simple_request(make_span("a", duration_ms=5)))
    fourth = pipeline.flush(advance_s=15)

    calls = [points(out, "calls") for out in (first, second, third, fourth)]
    assert [[p.value for p in flush] for flush in calls] == [[1], [3], [3], [4]]
    for flush in calls:
        assert flush[0].proto.start_time_unix_nano == created
    assert calls[0][0].proto.time_unix_nano == first_time
    assert [flush[0].proto.time_unix_nano for flush in calls] == sorted(
        {flush[0].proto.time_unix_nano for flush in calls}
    )

    durations = [points(out, "duration")[0].proto for out in (first, second, third, fourth)]
    assert [d.count for d in durations] == [1, 3, 3, 4]
    assert [d.sum for d in durations] == [1.0, 704.0, 704.0, 709.0]
    for earlier, later in pairwise(durations):
        assert all(b >= a for a, b in zip(earlier.bucket_counts, later.bucket_counts, strict=True))
        assert later.start_time_unix_nano == earlier.start_time_unix_nano == created


def test_cumulative_new_series_start_when_they_appear(clock: FakeClock) -> None:
    pipeline = Pipeline(clock=clock)
    pipeline.run(simple_request(make_span("a")))
    later = clock.now
    out = pipeline.run(simple_request(make_span("b")))
    starts = {p.attributes["span.name"]: p.proto.start_time_unix_nano for p in points(out, "calls")}
    assert starts["b"] == later
    assert starts["a"] < later


def test_delta_emits_only_the_change_since_the_previous_flush(clock: FakeClock) -> None:
    pipeline = Pipeline({"aggregation_temporality": "DELTA"}, clock=clock)
    created = clock.now
    pipeline.consume(simple_request(make_span("a"), make_span("a")))
    first = pipeline.flush(advance_s=15)
    first_flush = clock.now

    pipeline.consume(simple_request(make_span("a", duration_ms=1), make_span("b")))
    second = pipeline.flush(advance_s=15)
    second_flush = clock.now

    third = pipeline.flush(advance_s=15)  # nothing happened
    third_flush = clock.now

    pipeline.consume(simple_request(make_span("a")))
    fourth = pipeline.flush(advance_s=15)

    assert counts_by(first, "calls", "span.name") == {"a": 2}
    assert counts_by(second, "calls", "span.name") == {"a": 1, "b": 1}
    assert third.resource_metrics == []
    assert counts_by(fourth, "calls", "span.name") == {"a": 1}

    [a1] = points(first, "calls")
    assert a1.proto.start_time_unix_nano == created
    assert a1.proto.time_unix_nano == first_flush
    a2 = next(p for p in points(second, "calls") if p.attributes["span.name"] == "a")
    assert a2.proto.start_time_unix_nano == first_flush
    assert a2.proto.time_unix_nano == second_flush
    # The series was idle for one interval: its next point starts at the slot's last emission
    # (the fold resets a DELTA record at every emission of its slot, emitted or not).
    [a4] = points(fourth, "calls")
    assert a4.proto.start_time_unix_nano == third_flush

    [d2] = [p.proto for p in points(second, "duration") if p.attributes["span.name"] == "a"]
    assert (d2.count, d2.sum, d2.bucket_counts[0]) == (1, 1.0, 1)
    assert d2.start_time_unix_nano == first_flush


def test_delta_idle_series_are_not_emitted(clock: FakeClock) -> None:
    pipeline = Pipeline({"aggregation_temporality": "DELTA"}, clock=clock)
    pipeline.run(simple_request(make_span("a"), make_span("b")))
    out = pipeline.run(simple_request(make_span("b")))
    assert counts_by(out, "calls", "span.name") == {"b": 1}
    assert counts_by(out, "duration", "span.name") == {"b": 1}


def test_delta_exponential_histogram_resets(clock: FakeClock) -> None:
    config = {"aggregation_temporality": "DELTA", "histogram": {"exponential": {"max_size": 20}}}
    pipeline = Pipeline(config, clock=clock)
    pipeline.run(simple_request(make_span(duration_ms=1), make_span(duration_ms=1000)))
    out = pipeline.run(simple_request(make_span(duration_ms=8)))
    [point] = points(out, "duration")
    assert (point.proto.count, point.proto.sum) == (1, 8.0)
    assert sum(point.proto.positive.bucket_counts) == 1


def test_several_take_deltas_before_one_collect_add_up(clock: FakeClock) -> None:
    pipeline = Pipeline(clock=clock)
    for _ in range(3):
        pipeline.consume(simple_request(make_span()))
        pipeline.take_deltas()
    out = pipeline.flush()
    [point] = points(out, "calls")
    assert point.value == 3


def test_take_deltas_starts_a_new_interval(clock: FakeClock) -> None:
    pipeline = Pipeline(clock=clock)
    pipeline.consume(simple_request(make_span()))
    assert pipeline.processor.pending_series() == 2
    first = emitted(pipeline.processor.take_deltas())
    assert pipeline.processor.pending_series() == 0
    assert pipeline.processor.take_deltas() == {}
    assert sum(s.count for s in first[TENANT].series if s.metric == "calls") == 1


def test_series_expiration_drops_idle_series(clock: FakeClock) -> None:
    """Per series, by last-seen time: upstream series_expiration (PR #48270, issue #44187); what
    metrics_expiration did here before it became per resource."""
    pipeline = Pipeline({"series_expiration": "40s"}, clock=clock)
    pipeline.run(simple_request(make_span("a")))
    pipeline.consume(simple_request(make_span("b")))
    # "a" was last seen 35 s ago, "b" 20 s ago: both kept.
    assert counts_by(pipeline.flush(advance_s=20), "calls", "span.name") == {"a": 1, "b": 1}
    # "a" 45 s, "b" 30 s.
    assert counts_by(pipeline.flush(advance_s=10), "calls", "span.name") == {"b": 1}
    assert pipeline.flush(advance_s=15).resource_metrics == []


def test_a_new_cumulative_counter_shows_zero_then_its_count_in_its_first_flush(clock: FakeClock) -> None:
    """upstream: connector_test.go (#38537 / PR #39052): a new cumulative calls (and events)
    series starts at 0 and the histogram does not; done Tempo's way (registry counter_test.go
    Test_counter): the 0 and the count in the same flush, the 0 earlier, the same start."""
    config = {"events": {"enabled": True, "dimensions": [{"name": "exception.type"}]}}
    pipeline = Pipeline(config, clock=clock)
    created = clock.now
    pipeline.consume(simple_request(make_span("a", events=[{"exception.type": "E"}])))
    first = pipeline.flush(advance_s=75)  # the flush is in the next minute but one
    end_of_last_minute = clock.now - clock.now % (60 * 10**9) - 10**9
    for metric in ("calls", "events"):
        [zero] = points(first, metric, zero=True)
        [counted] = points(first, metric)
        assert (zero.value, zero.proto.start_time_unix_nano, zero.proto.time_unix_nano) == (
            0,
            created,
            end_of_last_minute,
        )
        assert (counted.value, counted.proto.time_unix_nano) == (1, clock.now)
    assert points(first, "duration", zero=True) == [] and len(points(first, "duration")) == 1
    pipeline.consume(simple_request(make_span("a")))
    second = pipeline.flush(advance_s=15)  # the first publication was confirmed: no zero point again
    assert points(second, "calls", zero=True) == [] and [p.value for p in points(second, "calls")] == [2]


def test_delta_counters_are_not_zero_initialised(clock: FakeClock) -> None:
    """upstream: #40139 / PR #40148 (zero-init made delta calls always 0): cumulative only."""
    pipeline = Pipeline({"aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA"}, clock=clock)
    pipeline.consume(simple_request(make_span("a")))
    out = pipeline.flush(advance_s=75)
    assert points(out, "calls", zero=True) == [] and [p.value for p in points(out, "calls")] == [1]


def test_metrics_expiration_drops_a_resource_idle_that_long(clock: FakeClock) -> None:
    """upstream: connector.go (PR #31106): metrics_expiration is per resource; a stale resource
    is exported one last time, then removed; a busy resource keeps its idle series."""
    pipeline = Pipeline({"metrics_expiration": "40s"}, clock=clock)
    pipeline.consume(
        simple_request(make_span("a"), service="busy"), simple_request(make_span("b"), service="idle")
    )
    pipeline.flush(advance_s=15)
    pipeline.consume(simple_request(make_span("c"), service="busy"))
    assert counts_by(pipeline.flush(advance_s=20), "calls", "span.name") == {"a": 1, "b": 1, "c": 1}
    pipeline.consume(simple_request(make_span("c"), service="busy"))
    # "idle" last seen 55 s ago: exported one last time; "a" idle as long, but its resource is busy.
    assert counts_by(pipeline.flush(advance_s=20), "calls", "span.name") == {"a": 1, "b": 1, "c": 2}
    assert counts_by(pipeline.flush(advance_s=10), "calls", "span.name") == {"a": 1, "c": 2}
    assert set(run_ready(pipeline.store.resource_seen(TENANT))) == {
        rid for rid, attributes in run_ready(pipeline.store.resources(TENANT)).items()
        if dict(attributes)["service.name"] == "busy"
    }  # fmt: skip


def test_delta_start_times_continue_for_more_series_than_the_timestamp_cache(clock: FakeClock) -> None:
    # upstream: connector_test.go TestTimestampsForUninterruptedStream (delta: start of a flush ==
    # time of the previous one) and its metric_timestamp_cache_size=1 case, where the LRU evicts
    # all but one series and the others restart from their creation time (a gap). Here each
    # series' start lives with the series in the state store: the size changes nothing.
    pipeline = Pipeline({"aggregation_temporality": "DELTA", "metric_timestamp_cache_size": 1}, clock=clock)
    services = ["a", "b", "c", "d"]
    flush_times = [clock.now]
    outputs = []
    for _ in range(3):
        pipeline.consume(*(simple_request(make_span("op"), service=service) for service in services))
        clock.advance(1)  # the spans arrive after the previous flush
        outputs.append(pipeline.flush(advance_s=14))
        flush_times.append(clock.now)
    for index, out in enumerate(outputs[1:], start=1):
        for metric in ("calls", "duration"):
            found = {p.resource["service.name"]: p.proto for p in points(out, metric)}
            assert sorted(found) == services
            for proto in found.values():
                assert proto.start_time_unix_nano == flush_times[index]
                assert proto.time_unix_nano == flush_times[index + 1]


def test_delta_series_idle_for_an_interval_starts_at_the_previous_flush(clock: FakeClock) -> None:
    # upstream (same test, flushes alternating A, B, A with a cache of 1): A's third start is its
    # creation time in the third interval. Here it is the previous flush, whatever the size: no
    # point overlaps another and none leaves time uncovered after the previous flush.
    pipeline = Pipeline({"aggregation_temporality": "DELTA", "metric_timestamp_cache_size": 1}, clock=clock)
    times = []
    for service in ("a", "b", "a"):
        pipeline.consume(simple_request(make_span("op"), service=service))
        clock.advance(1)
        out = pipeline.flush(advance_s=14)
        times.append(clock.now)
    [a3] = points(out, "calls")
    assert a3.resource["service.name"] == "a"
    assert (a3.proto.start_time_unix_nano, a3.proto.time_unix_nano) == (times[1], times[2])
