"""Sampling-aware counting: a span's adjusted count from its ``ot=th:`` tracestate, rounded stochastically."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["adjusted_count", "parse_threshold", "stochastic_round"]

_MAX_THRESHOLD = 1 << 56


def parse_threshold(tracestate: str) -> int | None:
    """The ``th`` rejection threshold from a W3C tracestate, or None when absent or malformed."""
    for member in tracestate.split(","):
        key, sep, value = member.strip().partition("=")
        if key != "ot" or not sep:
            continue
        for field in value.split(";"):
            name, colon, hex_digits = field.partition(":")
            if name != "th" or not colon:
                continue
            if not 1 <= len(hex_digits) <= 14:
                return None
            try:
                return int(hex_digits.ljust(14, "0"), 16)
            except ValueError:
                return None
    return None


def adjusted_count(tracestate: str) -> float:
    """How many spans this one represents (1.0 when the tracestate says nothing usable)."""
    threshold = parse_threshold(tracestate)
    if threshold is None or threshold >= _MAX_THRESHOLD:
        return 1.0
    return _MAX_THRESHOLD / (_MAX_THRESHOLD - threshold)


def stochastic_round(weight: float, uniform: Callable[[], float] = random.random) -> int:
    """Round up with probability equal to the fraction, so the expected value is ``weight``."""
    whole = int(weight)
    fraction = weight - whole
    if fraction > 0 and uniform() < fraction:
        whole += 1
    return whole
