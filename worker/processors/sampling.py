"""Sampling-aware counting: a span's adjusted count from its ``ot=th:`` tracestate, rounded stochastically.

:func:`multiplier_from_tracestate` is Tempo's reading of the same (pkg/sampling/multiplier.go).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

__all__ = ["adjusted_count", "multiplier_from_tracestate", "parse_threshold", "stochastic_round"]

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


#: The longest ``ot`` tracestate value (OTel's hardMaxOTelLength).
_MAX_OT_LENGTH = 256
_OT_KEY = re.compile(r"[a-z][a-z0-9]*")
_OT_VALUE = re.compile(r"[a-zA-Z0-9._-]*")
_HEX = re.compile(r"[0-9a-fA-F]+")


def _ot_value(tracestate: str) -> str:
    """The ``ot=`` member's value, as Tempo's extractOpenTelemetryTraceState finds it (untrimmed)."""
    rest = tracestate
    while True:
        rest = rest.strip()
        comma = rest.find(",")
        if rest.startswith("ot="):
            return rest[3:comma] if comma > 0 else rest[3:]
        if comma == -1:
            return ""
        rest = rest[comma + 1 :]


def _ot_fields(value: str) -> dict[str, str] | None:
    """``th`` and ``rv`` of a valid ``ot`` value (the last of each wins), None when it is invalid
    (OTel's isValidOTelTraceState, TValueToThreshold, RValueToRandomness: one bad field spoils all)."""
    if not value or len(value) > _MAX_OT_LENGTH or value.endswith(";"):
        return None
    fields: dict[str, str] = {}
    for member in value.split(";"):
        key, colon, field = member.partition(":")
        if not colon or not _OT_KEY.fullmatch(key) or not _OT_VALUE.fullmatch(field):
            return None
        if key == "th" and not (1 <= len(field) <= 14 and _HEX.fullmatch(field)):
            return None
        if key == "rv" and not (len(field) == 14 and _HEX.fullmatch(field)):
            return None
        if key in ("th", "rv"):
            fields[key] = field
    return fields


def multiplier_from_tracestate(tracestate: str) -> float:
    """Tempo's MultiplierFromTraceState: 1 / sampling probability from ``ot=th:``, 0 when unknown.

    With an ``rv:`` R-value as well, a fractional multiplier is rounded to a neighbouring integer
    using the R-value as the random source (so the same span always counts the same).
    """
    fields = _ot_fields(_ot_value(tracestate))
    if fields is None or "th" not in fields:
        return 0.0
    th = fields["th"]
    threshold = int(th, 16) << (4 * (14 - len(th)))
    multiplier = 1.0 / (float(_MAX_THRESHOLD - threshold) / float(_MAX_THRESHOLD))
    rv = fields.get("rv")
    if rv is None:
        return multiplier
    whole = math.floor(multiplier)
    fraction = multiplier - whole
    if fraction == 0:
        return float(whole)
    # The top 53 bits of the 56-bit R-value as a uniform float in [0, 1).
    uniform = float(int(rv, 16) >> 3) / float(1 << 53)
    return float(whole + 1) if uniform < fraction else float(whole)
