"""DELTA -> cumulative for remote write: deltas after a confirmed publication add up; a delta
sent again (the previous publication not confirmed) replaces the one it contains."""

from __future__ import annotations

from worker.model.exphistogram import ExpHistogram
from worker.model.series import Series
from worker.sinks.cumulative import DeltaToCumulative

SECOND = 1_000_000_000


def _delta(start_s: int, count: int, *, buckets: list[int] | None = None, value: str = "b") -> Series:
    return Series(
        "",  # as folded from the store: no series id
        "duration",
        "r",
        (("a", value),),
        start_s * SECOND,
        start_s * SECOND,
        count,
        float(count),
        buckets,
        exemplars=[(b"t" * 16, b"s" * 8, 1.0, 0)],
        companion="calls",
    )


def test_confirmed_deltas_add_up_and_a_resent_delta_replaces() -> None:
    totals = DeltaToCumulative(idle_s=3600)
    first = _delta(10, 3, buckets=[1, 2])
    (out,) = totals.apply("t", [first], 20 * SECOND)
    assert (out.count, out.sum, out.buckets, out.start_ns) == (3, 3.0, [1, 2], 10 * SECOND)
    assert first.count == 3 and first.buckets == [1, 2]  # the delta itself is not changed
    # Confirmed at 20 s: the next delta starts there.
    (out,) = totals.apply("t", [_delta(20, 2, buckets=[2, 0])], 30 * SECOND)
    assert (out.count, out.buckets, out.start_ns) == (5, [3, 2], 10 * SECOND)
    # Not confirmed at 30 s: at 40 s the delta from 20 s holds the earlier one plus new spans.
    (out,) = totals.apply("t", [_delta(20, 4, buckets=[3, 1])], 40 * SECOND)
    assert (out.count, out.buckets) == (7, [4, 3])
    assert out.companion == "calls" and out.zero_ns == 0
    assert len(out.exemplars) == 1  # this flush's exemplars only
    # Confirmed at 40 s.
    (out,) = totals.apply("t", [_delta(40, 1, buckets=[1, 0])], 50 * SECOND)
    assert (out.count, out.buckets) == (8, [5, 3])


def test_tenants_and_series_are_apart_and_idle_ones_are_forgotten() -> None:
    totals = DeltaToCumulative(idle_s=60)
    totals.apply("a", [_delta(0, 1), _delta(0, 5, value="x")], 10 * SECOND)
    (out,) = totals.apply("b", [_delta(0, 2)], 10 * SECOND)
    assert out.count == 2
    assert len(totals) == 3
    (out,) = totals.apply("a", [_delta(10, 1)], 200 * SECOND)
    assert out.count == 2
    assert len(totals) == 1  # "x" of a and the series of b: idle past 60 s


def test_exponential_histograms_add_up() -> None:
    totals = DeltaToCumulative(idle_s=3600)
    first, second = ExpHistogram(max_size=160), ExpHistogram(max_size=160)
    first.record(3.0)
    second.record(3.0)
    second.record(700.0)
    one = _delta(0, 1)
    one.exp = first
    two = _delta(10, 2)
    two.exp = second
    totals.apply("t", [one], 10 * SECOND)
    (out,) = totals.apply("t", [two], 20 * SECOND)
    assert out.exp is not None and out.exp.count == 3 and out.count == 3
