"""Tests for the base-2 exponential histogram (worker.model.exphistogram)."""

from __future__ import annotations

import math
from random import Random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.model.exphistogram import (
    DEFAULT_MAX_SIZE,
    MAX_SCALE,
    MIN_SCALE,
    ExpHistogram,
    lower_boundary,
    map_to_index,
)

MIN_NORMAL = 2.0**-1022

# Positive normal floats: the whole range the mapping is exact on.
normal_values = st.floats(min_value=MIN_NORMAL, max_value=1.7976931348623157e308, allow_nan=False)
# Span-duration-like values (seconds or nanoseconds), plus zeros and the odd negative (clamped to 0).
durations = st.one_of(
    st.floats(min_value=1e-9, max_value=1e12, allow_nan=False),
    st.integers(min_value=1, max_value=10**12).map(float),
    st.sampled_from([0.0, -0.0, -1.5, 1.0, 2.0, 0.5, 1024.0]),
)
scales = st.integers(min_value=MIN_SCALE, max_value=MAX_SCALE)
max_sizes = st.integers(min_value=2, max_value=DEFAULT_MAX_SIZE)


def histogram_of(values: list[float], max_size: int = DEFAULT_MAX_SIZE) -> ExpHistogram:
    histogram = ExpHistogram(max_size=max_size)
    for value in values:
        histogram.record(value)
    return histogram


def assert_invariants(histogram: ExpHistogram) -> None:
    assert MIN_SCALE <= histogram.scale <= MAX_SCALE
    assert len(histogram.counts) <= histogram.max_size
    assert histogram.count == histogram.zero_count + sum(histogram.counts)
    if histogram.counts:
        assert histogram.counts[0] > 0
        assert histogram.counts[-1] > 0


def bucket_bounds(index: int, scale: int) -> tuple[float, float]:
    return lower_boundary(index, scale), lower_boundary(index + 1, scale)


# --- map_to_index -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, -1),
        (2.0, 0),
        (4.0, 1),
        (0.5, -2),
        (0.25, -3),
        (1.5, 0),
        (3.0, 1),
        (3.999, 1),
        (4.000001, 2),
        (1024.0, 9),
        (1025.0, 10),
        (0.75, -1),
        (2.0**-1022, -1023),
        (5e-324, -1023),  # subnormal: clamped to the smallest normal's bucket
        (1.7976931348623157e308, 1023),
    ],
)
def test_map_to_index_scale_zero(value: float, expected: int) -> None:
    assert map_to_index(value, 0) == expected


@pytest.mark.parametrize(
    ("value", "scale", "expected"),
    [
        # scale -1: base 4, bucket i covers (4**i, 4**(i+1)]
        (1.0, -1, -1),
        (4.0, -1, 0),
        (4.5, -1, 1),
        (16.0, -1, 1),
        (17.0, -1, 2),
        (0.25, -1, -2),
        (0.3, -1, -1),
        # scale -2: base 16
        (16.0, -2, 0),
        (17.0, -2, 1),
        (256.0, -2, 1),
        # scale -10: everything finite is -1 or 0
        (1.0, -10, -1),
        (1.5, -10, 0),
        (1.7976931348623157e308, -10, 0),
        (5e-324, -10, -1),
        # scale 1: base sqrt(2), bucket i covers (2**(i/2), 2**((i+1)/2)]
        (1.0, 1, -1),
        (2.0, 1, 1),
        (4.0, 1, 3),
        (1.4, 1, 0),
        (1.5, 1, 1),
        (math.sqrt(2.0), 1, 0),
        (3.0, 1, 3),
        (0.5, 1, -3),
        # scale 2: base 2**0.25
        (1.1, 2, 0),
        (1.2, 2, 1),
        (1.5, 2, 2),
        (1.7, 2, 3),
        (2.0, 2, 3),
        # scale 20: powers of two sit at the top of the bucket below the next multiple of 2**20
        (1.0, 20, -1),
        (2.0, 20, (1 << 20) - 1),
        (1024.0, 20, (10 << 20) - 1),
        (2.0**-1022, 20, (-1022 << 20) - 1),
        (1.7976931348623157e308, 20, (1024 << 20) - 1),
    ],
)
def test_map_to_index_other_scales(value: float, scale: int, expected: int) -> None:
    assert map_to_index(value, scale) == expected


@given(st.integers(min_value=-1022, max_value=1023), scales)
def test_powers_of_two_land_in_bucket_with_inclusive_upper_bound(exponent: int, scale: int) -> None:
    value = math.ldexp(1.0, exponent)
    index = map_to_index(value, scale)
    lower, upper = bucket_bounds(index, scale)
    assert lower < value <= upper
    if scale >= 0 or exponent % (1 << -scale) == 0:
        # The power of two is a bucket boundary at this scale: it must be the inclusive upper one.
        assert upper == value
    if scale >= 0:
        assert index == (exponent << scale) - 1
    else:
        assert index == (exponent - 1) >> -scale


@given(normal_values, scales)
def test_value_falls_strictly_inside_its_bucket(value: float, scale: int) -> None:
    lower, upper = bucket_bounds(map_to_index(value, scale), scale)
    assert lower < value <= upper


@given(normal_values, st.integers(min_value=MIN_SCALE + 1, max_value=MAX_SCALE), st.data())
def test_index_is_consistent_across_scales(value: float, scale: int, data: st.DataObject) -> None:
    change = data.draw(st.integers(min_value=1, max_value=scale - MIN_SCALE))
    assert map_to_index(value, scale) >> change == map_to_index(value, scale - change)


@given(st.integers(min_value=-1000, max_value=1000), scales)
def test_lower_boundaries_are_identical_across_scales(index: int, scale: int) -> None:
    if scale < MAX_SCALE:
        assert lower_boundary(index, scale) == lower_boundary(index * 2, scale + 1)
    lower, upper = bucket_bounds(index, scale)
    if lower >= MIN_NORMAL and upper < math.inf:  # outside the normal range boundaries saturate
        assert lower < upper


def test_map_to_index_values_near_boundaries_at_scale_20() -> None:
    for index in [1, 12345, (1 << 20) - 1, -5, 7 << 20 | 999]:
        boundary = lower_boundary(index, 20)
        assert map_to_index(boundary, 20) == index - 1
        assert map_to_index(math.nextafter(boundary, math.inf), 20) == index
        assert map_to_index(math.nextafter(boundary, 0.0), 20) == index - 1


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_map_to_index_rejects_non_positive_and_non_finite(value: float) -> None:
    with pytest.raises(ValueError):
        map_to_index(value, 0)


@pytest.mark.parametrize("scale", [MIN_SCALE - 1, MAX_SCALE + 1])
def test_scale_out_of_range_is_rejected(scale: int) -> None:
    with pytest.raises(ValueError):
        map_to_index(1.5, scale)
    with pytest.raises(ValueError):
        lower_boundary(0, scale)
    with pytest.raises(ValueError):
        ExpHistogram(scale=scale)


def test_lower_boundary_extremes() -> None:
    assert lower_boundary(1024, 0) == math.inf
    assert lower_boundary(1024 << 20, 20) == math.inf
    assert lower_boundary(1023, 0) == 2.0**1023
    assert lower_boundary(0, 5) == 1.0
    assert lower_boundary(1, 0) == 2.0
    assert lower_boundary(1, -1) == 4.0
    assert lower_boundary(-1, -2) == 1.0 / 16
    assert lower_boundary(1, 1) == math.sqrt(2.0)


# --- record -----------------------------------------------------------------------------------------


def test_empty_histogram() -> None:
    histogram = ExpHistogram()
    assert histogram.scale == MAX_SCALE
    assert histogram.max_size == DEFAULT_MAX_SIZE
    assert histogram.counts == []
    assert histogram.count == 0
    assert histogram.min is None
    assert histogram.max is None
    assert_invariants(histogram)


def test_record_single_value_stays_at_max_scale() -> None:
    histogram = ExpHistogram()
    histogram.record(1.5)
    assert histogram.scale == MAX_SCALE
    assert histogram.offset == map_to_index(1.5, MAX_SCALE)
    assert histogram.counts == [1]
    assert (histogram.count, histogram.sum, histogram.min, histogram.max) == (1, 1.5, 1.5, 1.5)


def test_record_zero_and_negative_go_to_zero_bucket_as_zero() -> None:
    histogram = ExpHistogram()
    histogram.record(0.0)
    histogram.record(-0.0)
    histogram.record(-3.0, weight=2)
    assert histogram.zero_count == 4
    assert histogram.counts == []
    assert histogram.count == 4
    assert histogram.sum == 0.0
    assert histogram.min == 0.0
    assert histogram.max == 0.0
    assert_invariants(histogram)


def test_record_weight() -> None:
    histogram = ExpHistogram()
    histogram.record(3.0, weight=5)
    histogram.record(3.0)
    assert histogram.counts == [6]
    assert histogram.count == 6
    assert histogram.sum == 18.0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_record_rejects_non_finite(value: float) -> None:
    histogram = ExpHistogram()
    with pytest.raises(ValueError):
        histogram.record(value)
    assert histogram.count == 0


@pytest.mark.parametrize("weight", [0, -1])
def test_record_rejects_non_positive_weight(weight: int) -> None:
    with pytest.raises(ValueError):
        ExpHistogram().record(1.0, weight=weight)


def test_max_size_below_two_is_rejected() -> None:
    with pytest.raises(ValueError):
        ExpHistogram(max_size=1)


def test_downscales_when_values_spread_beyond_max_size() -> None:
    histogram = ExpHistogram(max_size=4)
    values = [1e-6, 1e-3, 1.0, 1e3, 1e6]
    for value in values:
        histogram.record(value)
    assert histogram.scale < 0
    assert len(histogram.counts) <= 4
    assert_invariants(histogram)
    # The scale is the highest one at which all five values fit in four buckets.
    indexes = [map_to_index(v, histogram.scale) for v in values]
    assert max(indexes) - min(indexes) < 4
    finer = [map_to_index(v, histogram.scale + 1) for v in values]
    assert max(finer) - min(finer) >= 4
    for value in values:
        index = map_to_index(value, histogram.scale)
        assert histogram.counts[index - histogram.offset] >= 1


def test_downscale_picks_smallest_change_like_go_expohisto() -> None:
    # At scale 20, 1.0 (index -1) and 2.0 (index 2**20 - 1) are 2**20 apart; with max_size 160 the
    # range must shrink below 160, i.e. 2**20 >> change < 160 -> change = 13, scale 7.
    histogram = ExpHistogram()
    histogram.record(1.0)
    histogram.record(2.0)
    assert histogram.scale == 7
    assert histogram.offset == -1
    assert histogram.counts[0] == 1
    assert histogram.counts[-1] == 1
    assert len(histogram.counts) == (1 << 7) + 1


def test_record_grows_range_both_ways_without_downscaling() -> None:
    histogram = ExpHistogram(scale=0)
    histogram.record(10.0)  # index 3
    histogram.record(100.0)  # index 6
    histogram.record(0.3)  # index -2
    assert histogram.scale == 0
    assert histogram.offset == -2
    assert histogram.counts == [1, 0, 0, 0, 0, 1, 0, 0, 1]


def test_extreme_spread_stays_within_min_scale() -> None:
    histogram = ExpHistogram(max_size=2)
    for value in [5e-324, 2.0**-1022, 1e-300, 1.0, 1e300, 1.7976931348623157e308]:
        histogram.record(value)
    assert histogram.scale >= MIN_SCALE
    assert_invariants(histogram)


@settings(max_examples=200)
@given(st.lists(durations, max_size=60), max_sizes)
def test_record_invariants_and_bucket_bounds(values: list[float], max_size: int) -> None:
    histogram = histogram_of(values, max_size)
    assert_invariants(histogram)
    assert histogram.count == len(values)
    positives = [v for v in values if v > 0]
    assert histogram.zero_count == len(values) - len(positives)
    assert math.isclose(histogram.sum, math.fsum(positives), rel_tol=1e-9)
    if values:
        assert histogram.min == max(min(values), 0.0)
        assert histogram.max == max(max(values), 0.0)
    for value in positives:
        index = map_to_index(value, histogram.scale)
        assert 0 <= index - histogram.offset < len(histogram.counts)
        lower, upper = bucket_bounds(index, histogram.scale)
        assert lower < value <= upper
    # The scale is the highest at which everything fits: one step finer would not.
    if positives and histogram.scale < MAX_SCALE:
        finer = [map_to_index(v, histogram.scale + 1) for v in positives]
        assert max(finer) - min(finer) >= max_size


@given(st.lists(durations, max_size=40), st.randoms(use_true_random=False))
def test_record_order_does_not_matter(values: list[float], random: Random) -> None:
    shuffled = list(values)
    random.shuffle(shuffled)
    a, b = histogram_of(values, 8), histogram_of(shuffled, 8)
    assert (a.scale, a.offset, a.counts, a.zero_count, a.count) == (
        b.scale,
        b.offset,
        b.counts,
        b.zero_count,
        b.count,
    )


# --- merge ------------------------------------------------------------------------------------------


def assert_same_histogram(merged: ExpHistogram, expected: ExpHistogram) -> None:
    assert merged.scale == expected.scale
    assert merged.offset == expected.offset
    assert merged.counts == expected.counts
    assert merged.zero_count == expected.zero_count
    assert merged.count == expected.count
    assert merged.min == expected.min
    assert merged.max == expected.max
    assert math.isclose(merged.sum, expected.sum, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=300)
@given(st.lists(durations, max_size=50), st.lists(durations, max_size=50), max_sizes)
def test_merge_equals_recording_everything(left: list[float], right: list[float], max_size: int) -> None:
    a = histogram_of(left, max_size)
    b = histogram_of(right, max_size)
    b_before = b.to_state()
    a.merge(b)
    assert_same_histogram(a, histogram_of(left + right, max_size))
    assert_invariants(a)
    assert b.to_state() == b_before  # other is untouched


@given(st.lists(durations, max_size=30), st.lists(durations, max_size=30), st.lists(durations, max_size=30))
def test_merge_is_associative_and_commutative(x: list[float], y: list[float], z: list[float]) -> None:
    left = histogram_of(x, 10)
    left.merge(histogram_of(y, 10))
    left.merge(histogram_of(z, 10))
    right = histogram_of(z, 10)
    yx = histogram_of(y, 10)
    yx.merge(histogram_of(x, 10))
    right.merge(yx)
    assert_same_histogram(left, right)


def test_merge_into_empty_and_from_empty() -> None:
    values = [0.001, 0.25, 3.0, 0.0]
    target = ExpHistogram()
    target.merge(histogram_of(values))
    assert_same_histogram(target, histogram_of(values))
    target.merge(ExpHistogram())
    assert_same_histogram(target, histogram_of(values))


def test_merge_with_self_doubles() -> None:
    histogram = histogram_of([0.5, 7.0, 0.0, 1e4], max_size=6)
    histogram.merge(histogram)
    assert_same_histogram(histogram, histogram_of([0.5, 7.0, 0.0, 1e4] * 2, max_size=6))


def test_merge_downscales_to_fit_union() -> None:
    a = histogram_of([1e-3, 2e-3], max_size=4)
    b = histogram_of([1e3, 2e3], max_size=4)
    a.merge(b)
    assert len(a.counts) <= 4
    assert a.scale < min(histogram_of([1e-3, 2e-3], 4).scale, b.scale)
    assert_same_histogram(a, histogram_of([1e-3, 2e-3, 1e3, 2e3], max_size=4))


def test_merge_ignores_scale_of_side_without_buckets() -> None:
    zeros_only = ExpHistogram(scale=-3)
    zeros_only.record(0.0)
    histogram = histogram_of([1.5])
    histogram.merge(zeros_only)
    assert histogram.scale == MAX_SCALE
    assert histogram.zero_count == 1


# --- state ------------------------------------------------------------------------------------------


@given(st.lists(durations, max_size=50), max_sizes)
def test_state_round_trip(values: list[float], max_size: int) -> None:
    histogram = histogram_of(values, max_size)
    state = histogram.to_state()
    assert len(state) == 8
    restored = ExpHistogram.from_state(state, max_size)
    assert restored == histogram
    via_msgpack = ExpHistogram.from_state(msgpack.unpackb(msgpack.packb(state), use_list=False), max_size)
    assert via_msgpack == histogram


def test_state_layout() -> None:
    histogram = ExpHistogram(scale=0)
    histogram.record(3.0)
    histogram.record(0.0)
    assert histogram.to_state() == [0, 1, 1, [1], 2, 3.0, 0.0, 3.0]
    assert ExpHistogram().to_state() == [MAX_SCALE, 0, 0, [], 0, 0.0, None, None]


def test_to_state_does_not_alias_counts() -> None:
    histogram = histogram_of([1.0])
    state = histogram.to_state()
    state[3].append(99)
    assert histogram.counts == [1]


def test_from_state_tolerates_lua_numbers_and_trims_zero_edges() -> None:
    state = [3.0, 2.0, 10, (0, 0, 4.0, 0, 1, 0), 7, 12, 0, 42.5]
    histogram = ExpHistogram.from_state(state, 160)
    assert histogram.scale == 3
    assert histogram.offset == 12
    assert histogram.counts == [4, 0, 1]
    assert histogram.count == 7
    assert histogram.sum == 12.0
    assert isinstance(histogram.sum, float)
    assert histogram.min == 0.0


def test_from_state_downscales_into_smaller_max_size() -> None:
    values = [1.0, 1.1, 1.3, 1.7, 1.9, 2.5, 3.9]
    wide = histogram_of(values, max_size=160)
    narrow = ExpHistogram.from_state(wide.to_state(), max_size=4)
    assert len(narrow.counts) <= 4
    assert_same_histogram(narrow, histogram_of(values, max_size=4))


@pytest.mark.parametrize(
    "state",
    [
        [0, 0, 0, [], 0, 0.0, None],  # too short
        [0, 0, 0, [1], 2, 1.0, 1.0, 1.0],  # count mismatch
        [0, 0, 0, [-1, 2], 1, 1.0, 1.0, 1.0],  # negative bucket
        [0, 0, 0, [1.5], 1, 1.0, 1.0, 1.0],  # fractional count
        [21, 0, 0, [], 0, 0.0, None, None],  # scale too high
    ],
)
def test_from_state_rejects_bad_state(state: list[object]) -> None:
    with pytest.raises(ValueError):
        ExpHistogram.from_state(state, 160)
