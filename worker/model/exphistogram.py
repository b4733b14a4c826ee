"""Base-2 exponential histogram of span durations, bucketed and downscaled as go-expohisto does.

Bucket ``i`` covers ``(base**i, base**(i + 1)]``, ``base = 2 ** (2 ** -scale)``; values ``<= 0`` count as 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_SCALE",
    "MIN_SCALE",
    "MIN_SIZE",
    "ExpHistogram",
    "lower_boundary",
    "map_to_index",
]

MAX_SCALE = 20
"""Highest scale, as in go-expohisto: finer buckets buy nothing measurable for durations."""

MIN_SCALE = -10
"""Lowest scale: at -10 every finite float64 maps to index -1 or 0, so any ``max_size >= 2`` fits."""

MIN_SIZE = 2
"""Smallest allowed ``max_size`` (go-expohisto's ``MinSize``); below it downscaling could not converge."""

DEFAULT_MAX_SIZE = 160
"""go-expohisto's default number of buckets per range, used by the Collector's spanmetrics connector."""

_MIN_NORMAL_EXPONENT = -1022
"""Base-2 exponent of the smallest normal float64; subnormal values are clamped into its bucket."""

_MIN_NORMAL = 2.0**_MIN_NORMAL_EXPONENT

_LOG2E = 1.0 / math.log(2.0)

# Module-level aliases: ``record`` runs once per span and a global lookup is cheaper than ``math.x``.
_log = math.log
_floor = math.floor
_frexp = math.frexp

_SCALE_FACTOR: tuple[float, ...] = tuple(math.ldexp(_LOG2E, s) for s in range(MAX_SCALE + 1))
"""``2**s / ln 2`` per positive scale; ``ldexp`` keeps it exact so indexes agree across scales."""

_NEAR_BOUNDARY = 1e-5
"""How close (in index units) the logarithm estimate must be to a boundary to trigger an exact check.

At scale 20 the estimate ``log(v) * 2**20 / ln 2`` is off by at most about 3e-7 index units (a one-ulp
error in ``log`` of the largest exponents, plus rounding of a product near 1e9), and the boundary floats
by about 3e-10, so 1e-5 is a 30x safety margin; the exact check runs for about one value in 50,000.
"""


def _check_scale(scale: int) -> None:
    """Reject scales outside go-expohisto's range: beyond them the index arithmetic is not defined."""
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be between {MIN_SCALE} and {MAX_SCALE}, got {scale}")


def _mantissa_boundary(local: int, scale: int) -> float:
    """``2 ** (local / 2**scale)`` for ``0 <= local <= 2**scale``: a boundary relative to its power of two.

    ``local / 2**scale`` is an exact float, so bucket ``2*i`` at scale ``s+1`` and bucket ``i`` at scale
    ``s`` get bit-identical boundaries -- the property that makes downscaling exact.
    """
    if local == 0:
        return 1.0
    if local == 1 << scale:
        return 2.0
    return float(2.0 ** (local / (1 << scale)))


def _index(value: float, scale: int) -> int:
    """Bucket index of a positive finite ``value``; no argument checks (the hot path of ``record``).

    For scale > 0 the scaled natural logarithm gives the index directly unless it lands within
    ``_NEAR_BOUNDARY`` of an integer (always so for a power of two) or the value is subnormal; then
    :func:`_exact_index` decides. For scale <= 0 the exponent alone decides, so it goes there directly.
    """
    if scale > 0:
        estimate = _log(value) * _SCALE_FACTOR[scale]
        index = _floor(estimate)
        fraction = estimate - index
        if _NEAR_BOUNDARY < fraction < 1.0 - _NEAR_BOUNDARY and value >= _MIN_NORMAL:
            return index
    return _exact_index(value, scale)


def _exact_index(value: float, scale: int) -> int:
    """Bucket index decided from the float's exponent and, for scale > 0, the exact boundary floats."""
    mantissa, exp = _frexp(value)  # value == mantissa * 2**exp, 0.5 <= mantissa < 1
    exponent = exp - 1  # value == (2 * mantissa) * 2**exponent, 1 <= 2 * mantissa < 2
    if mantissa == 0.5 or exponent < _MIN_NORMAL_EXPONENT:
        # Exact power of two (subnormals are treated as the smallest normal, 2**-1022): it is the
        # inclusive upper bound of the bucket just below it.
        if exponent < _MIN_NORMAL_EXPONENT:
            exponent = _MIN_NORMAL_EXPONENT
        if scale <= 0:
            return (exponent - 1) >> -scale
        return (exponent << scale) - 1
    if scale <= 0:
        return exponent >> -scale
    significand = 2.0 * mantissa  # in (1, 2), exact
    local = int(_log(significand) * _SCALE_FACTOR[scale])  # floor: the product is in (0, 2**scale]
    top = (1 << scale) - 1
    if local > top:
        local = top
    # The logarithm is within a tiny fraction of the right answer: one step of correction against the
    # boundaries themselves makes it exact.
    if significand <= _mantissa_boundary(local, scale):
        local -= 1
    elif significand > _mantissa_boundary(local + 1, scale):
        local += 1
    return (exponent << scale) + local


def map_to_index(value: float, scale: int) -> int:
    """Index of the bucket holding ``value`` at ``scale``: bucket ``i`` covers ``(base**i, base**(i+1)]``.

    ``value`` must be positive and finite (the zero bucket is the histogram's business, not the
    mapping's). Values below the smallest normal float64 (2**-1022) map to that number's bucket, as the
    spec allows. Raises :class:`ValueError` for a non-positive or non-finite value or a scale outside
    ``[MIN_SCALE, MAX_SCALE]``.
    """
    _check_scale(scale)
    if not 0.0 < value < math.inf:
        raise ValueError(f"value must be positive and finite, got {value!r}")
    return _index(value, scale)


def lower_boundary(index: int, scale: int) -> float:
    """Lower (exclusive) boundary of bucket ``index`` at ``scale``, i.e. ``base**index``.

    The upper (inclusive) boundary of bucket ``i`` is ``lower_boundary(i + 1, scale)``. Boundaries that
    are powers of two (any index at scale <= 0, a multiple of ``2**scale`` above) are exact; others are
    within one ulp of the true value and are the very floats :func:`map_to_index` decides against.
    Returns ``math.inf`` above the float64 range and ``0.0`` (or a subnormal) below it.
    """
    _check_scale(scale)
    if scale <= 0:
        exponent = index << -scale
        base = 1.0
    else:
        exponent = index >> scale
        base = _mantissa_boundary(index & ((1 << scale) - 1), scale)
    try:
        return math.ldexp(base, exponent)
    except OverflowError:
        return math.inf


def _change_to_fit(low: int, high: int, max_size: int) -> int:
    """Smallest downscale after which indexes ``low..high`` span at most ``max_size`` buckets."""
    change = 0
    while high - low >= max_size:
        high >>= 1
        low >>= 1
        change += 1
    return change


@dataclass(slots=True)
class ExpHistogram:
    """Exponential histogram of non-negative values (positive range plus zero bucket only).

    ``counts[k]`` is the count of bucket ``offset + k`` at ``scale``; an empty list means no positive
    bucket yet. Histograms built by :meth:`record` and :meth:`merge` keep non-zero counts at both ends of
    ``counts``, so ``len(counts)`` is the index range and never exceeds ``max_size``.
    """

    max_size: int = DEFAULT_MAX_SIZE
    scale: int = MAX_SCALE
    zero_count: int = 0
    offset: int = 0
    counts: list[int] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        """Reject impossible shapes early, so a bad config fails at start-up rather than mid-stream."""
        if self.max_size < MIN_SIZE:
            raise ValueError(f"max_size must be at least {MIN_SIZE}, got {self.max_size}")
        _check_scale(self.scale)
        if len(self.counts) > self.max_size:
            raise ValueError(f"{len(self.counts)} buckets exceed max_size {self.max_size}")

    def record(self, value: float, weight: int = 1) -> None:
        """Add ``weight`` observations of ``value``; values ``<= 0`` go to the zero bucket as ``0.0``.

        Runs once per span, so the common case (index inside the current range) is a single list
        increment; the range only grows or downscales when the index falls outside it.
        """
        if not -math.inf < value < math.inf:
            raise ValueError(f"cannot record non-finite value {value!r}")
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        if value <= 0.0:
            value = 0.0
            self.zero_count += weight
        else:
            index = _index(value, self.scale)
            counts = self.counts
            position = index - self.offset
            if counts and 0 <= position < len(counts):
                counts[position] += weight
            else:
                self._add_outside(index, weight)
        self.count += weight
        self.sum += value * weight
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def _add_outside(self, index: int, weight: int) -> None:
        """Slow path of :meth:`record`: widen the range, downscaling first if it would not fit."""
        counts = self.counts
        if not counts:
            self.offset = index
            counts.append(weight)
            return
        low = min(index, self.offset)
        high = max(index, self.offset + len(counts) - 1)
        change = _change_to_fit(low, high, self.max_size)
        if change:
            self._downscale(change)
            counts = self.counts
            # Same bucket map_to_index(value, new scale) would give: indexes are consistent across scales.
            index >>= change
        if index < self.offset:
            counts[0:0] = [0] * (self.offset - index)
            self.offset = index
        elif index >= self.offset + len(counts):
            counts.extend([0] * (index - self.offset - len(counts) + 1))
        counts[index - self.offset] += weight

    def _downscale(self, change: int) -> None:
        """Lower the scale by ``change``: bucket ``i`` becomes ``i >> change`` and colliding counts add up."""
        if change <= 0:
            return
        if self.scale - change < MIN_SCALE:
            raise ValueError(f"cannot downscale below scale {MIN_SCALE}")
        counts = self.counts
        if counts:
            offset = self.offset
            new_offset = offset >> change
            new_counts = [0] * (((offset + len(counts) - 1) >> change) - new_offset + 1)
            for position, bucket_count in enumerate(counts):
                new_counts[((offset + position) >> change) - new_offset] += bucket_count
            self.counts = new_counts
            self.offset = new_offset
        self.scale -= change

    def merge(self, other: ExpHistogram) -> None:
        """Add ``other`` into this histogram exactly; ``other`` is left untouched.

        Both sides are brought to the highest common scale at which the union of their ranges fits
        ``self.max_size`` (the minimum of the two scales, lowered further if needed), then counts add.
        The result equals recording every value of both into one histogram. A side without positive
        buckets does not constrain the scale: it has no resolution to lose.
        """
        if other.count == 0:
            return
        self.count += other.count
        self.sum += other.sum
        self.zero_count += other.zero_count
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        if not other.counts:
            return
        sides = [(other.scale, other.offset, list(other.counts))]
        if self.counts:
            sides.append((self.scale, self.offset, self.counts))
        scale = min(side_scale for side_scale, _, _ in sides)
        low = min(side_offset >> (side_scale - scale) for side_scale, side_offset, _ in sides)
        high = max(
            (side_offset + len(side_counts) - 1) >> (side_scale - scale)
            for side_scale, side_offset, side_counts in sides
        )
        change = _change_to_fit(low, high, self.max_size)
        scale -= change
        low >>= change
        high >>= change
        merged = [0] * (high - low + 1)
        for side_scale, side_offset, side_counts in sides:
            shift = side_scale - scale
            for position, bucket_count in enumerate(side_counts):
                if bucket_count:
                    merged[((side_offset + position) >> shift) - low] += bucket_count
        self.scale = scale
        self.offset = low
        self.counts = merged

    def to_state(self) -> list[Any]:
        """Compact list for msgpack (the Redis state keeps it in this layout).

        Layout: ``[scale, zero_count, offset, counts, count, sum, min, max]``; ``min``/``max`` are ``None``
        while the histogram is empty. ``max_size`` is configuration, not state, so it is not stored.
        """
        return [
            self.scale,
            self.zero_count,
            self.offset,
            list(self.counts),
            self.count,
            self.sum,
            self.min,
            self.max,
        ]

    @classmethod
    def from_state(cls, state: Sequence[Any], max_size: int) -> ExpHistogram:
        """Rebuild a histogram from :meth:`to_state` output (possibly after a round trip through Lua).

        Tolerates what msgpack and Lua do to types (tuples for lists, integral floats for ints, ints for
        floats), trims zero buckets at both ends, and downscales if the stored range is wider than
        ``max_size`` (state written under a larger configuration). Raises :class:`ValueError` on a
        malformed or inconsistent state rather than carrying corruption forward.
        """
        if len(state) != 8:
            raise ValueError(f"histogram state must have 8 fields, got {len(state)}")
        scale, zero_count, offset, raw_counts, count, total, minimum, maximum = state
        counts = [_as_int(c) for c in raw_counts]
        first = 0
        while first < len(counts) and counts[first] == 0:
            first += 1
        last = len(counts)
        while last > first and counts[last - 1] == 0:
            last -= 1
        histogram = cls(
            max_size=max_size,
            scale=_as_int(scale),
            zero_count=_as_int(zero_count),
            offset=_as_int(offset) + first if first < last else 0,
            count=_as_int(count),
            sum=float(total),
            min=None if minimum is None else float(minimum),
            max=None if maximum is None else float(maximum),
        )
        kept = counts[first:last]
        if any(c < 0 for c in kept) or histogram.zero_count < 0:
            raise ValueError("histogram state has negative bucket counts")
        if histogram.count != histogram.zero_count + sum(kept):
            raise ValueError(
                f"histogram state count {histogram.count} != zero_count + bucket counts "
                f"{histogram.zero_count + sum(kept)}"
            )
        histogram.counts = kept
        if kept:
            histogram._downscale(_change_to_fit(histogram.offset, histogram.offset + len(kept) - 1, max_size))
        return histogram


def _as_int(value: Any) -> int:
    """``int(value)`` for ints and integral floats (Lua numbers are doubles); ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"expected an integer, got {value!r}")
