"""Label values (``StringifyAnyValue``) and label names (``SanitizeLabelName``) as Tempo writes them."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["format_go_fixed", "sanitize_label_name", "tempo_string"]

_INVALID_LABEL_CHARACTER = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label_name(name: str) -> str:
    """Prometheus ``strutil.SanitizeLabelName``: every character outside ``[a-zA-Z0-9_]`` becomes ``_``.

    ``db.system`` becomes ``db_system``; like the Go version this works on code points, so one
    non-ASCII character becomes one underscore.
    """
    return _INVALID_LABEL_CHARACTER.sub("_", name)


def format_go_fixed(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'f', -1, 64)``: shortest round-trip digits, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return format(Decimal(repr(value)).normalize(), "f")


def tempo_string(value: AnyValue) -> str:
    """Tempo's ``StringifyAnyValue``: the label value of an attribute."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return format_go_fixed(value.double_value)
    if kind == "array_value":
        return "[" + "".join(tempo_string(item) for item in value.array_value.values) + "]"
    if kind == "kvlist_value":
        return "{" + "".join(kv.key + ":" + tempo_string(kv.value) for kv in value.kvlist_value.values) + "}"
    # bytes_value and an unset value: Tempo's switch has no case for them.
    return ""
