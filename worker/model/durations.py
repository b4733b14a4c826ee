"""Go-style duration strings ("2ms", "1m30s", "1h"), because users paste Collector and Tempo configs."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: object) -> float:
    """Return the duration in seconds.

    Accepts what Go's ``time.ParseDuration`` accepts (without a sign), plus plain numbers meaning
    seconds, so both ``"1400ms"`` and ``15`` work. Negative values are refused here because no
    option of ours has a meaning for them; the caller adds the option name to the message.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '2ms', '15s' or '1h', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '2ms', '15s' or '1h', got {value!r}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError("must not be negative")
    if text.startswith("+"):
        text = text[1:]
    if text == "0":
        return 0.0
    position = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise ValueError(
            f"invalid duration {value!r}: use a number with a unit (ns, us, ms, s, m, h), e.g. '2ms', '1m30s'"
        )
    return total


def format_duration(seconds: float) -> str:
    """Render seconds the short way a user would write them (for logs and error messages)."""
    if seconds == 0:
        return "0s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:g}us"
    if seconds < 1:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds:g}s"
