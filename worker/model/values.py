"""OTLP ``AnyValue`` <-> Python values, and the Collector's ``AsString`` form used in series keys."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from worker.model.wire import length_prefix, message, varint

__all__ = [
    "MAX_LABEL_DEPTH",
    "MAX_LABEL_LENGTH",
    "AttributeValue",
    "Attributes",
    "any_value_to_python",
    "attribute_parts",
    "encode_any_value",
    "fill_key_values",
    "format_double",
    "key_value",
    "label_value",
    "python_to_any_value",
    "stringify_any_value",
    "stringify_python",
]

#: A decoded attribute value: str, bool, int, float, bytes, list of these, or dict of these.
AttributeValue = Any

#: Ordered (name, value) pairs; values keep their OTLP type.
Attributes = tuple[tuple[str, AttributeValue], ...]


def format_double(value: float) -> str:
    """Shortest round-trip decimal, as ES6 (and Go's pcommon) render a float64."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        mantissa, _, exponent = repr(value).partition("e")
        sign = exponent[0] if exponent[0] in "+-" else "+"
        return f"{mantissa}e{sign}{int(exponent.lstrip('+-'))}"
    if value.is_integer() and magnitude < 2**53:
        return str(int(value))
    # Fixed notation of the shortest round-trip digits, as Go's FormatFloat(v, 'f', -1, 64):
    # 1.2345678901234568e+20 is "123456789012345680000", not the float's exact integer value.
    return format(Decimal(repr(value)).normalize(), "f")


def any_value_to_python(value: AnyValue) -> AttributeValue:
    """Decode an AnyValue keeping its type (the data point keeps the attribute's original type)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return bytes(value.bytes_value)
    return None


#: Go's encoding/json escapes these even inside strings (HTML safety); the key string must match.
_GO_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _go_json(value: AttributeValue) -> str:
    """Compact JSON as Go's ``json.Marshal`` writes an attribute map or slice (``pcommon AsRaw``).

    Map keys sorted, doubles in the same shortest form as :func:`format_double` (``[2]``, not
    ``[2.0]``), bytes as base64 strings.
    """
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).translate(_GO_JSON_ESCAPES)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_double(value)
    if isinstance(value, bytes):
        return '"' + base64.b64encode(value).decode("ascii") + '"'
    if isinstance(value, list | tuple):
        return "[" + ",".join(_go_json(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_go_json(str(k))}:{_go_json(value[k])}" for k in sorted(value)) + "}"
    return "null"


def stringify_python(value: AttributeValue) -> str:
    """The key string of a decoded value (see the module docstring for the rules)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_double(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if value is None:
        return ""
    return _go_json(value)


def stringify_any_value(value: AnyValue) -> str:
    """The key string of an AnyValue; the string case is first because it is nearly every case."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    return stringify_python(any_value_to_python(value))


#: Lists and maps nested deeper than this become a label as their key string (JSON): an OTLP
#: data point attribute sits 8 messages deep, each level adds 2 or 3, and standard protobuf
#: decoders stop at 100 (upb, the Python and Java runtimes).
MAX_LABEL_DEPTH = 16
#: Label values are cut to this many characters (bytes for a bytes value); a list or map whose
#: key string is longer becomes that string, cut.
MAX_LABEL_LENGTH = 4096


def _nesting(value: AttributeValue) -> int:
    """Levels of lists and maps in a decoded value (0 for a scalar)."""
    deepest = 0
    level = [value]
    while True:
        containers = [item for item in level if isinstance(item, list | dict)]
        if not containers:
            return deepest
        deepest += 1
        level = [v for c in containers for v in (c.values() if isinstance(c, dict) else c)]


def label_value(value: AnyValue) -> AttributeValue:
    """A dimension value as a data point attribute: typed as it came (``any_value_to_python``),
    within :data:`MAX_LABEL_DEPTH` and :data:`MAX_LABEL_LENGTH`.

    A longer string or bytes value is cut; a list or map nested deeper, or whose key string is
    longer, becomes its key string (``stringify_any_value``, cut). Within the bounds the value
    and its key string are unchanged, so is the series it belongs to.
    """
    kind = value.WhichOneof("value")
    if kind == "string_value":
        text = value.string_value
        return text if len(text) <= MAX_LABEL_LENGTH else text[:MAX_LABEL_LENGTH]
    decoded = any_value_to_python(value)
    if kind == "bytes_value":
        return decoded[:MAX_LABEL_LENGTH]
    if isinstance(decoded, list | dict):
        if _nesting(decoded) > MAX_LABEL_DEPTH:
            return stringify_python(decoded)[:MAX_LABEL_LENGTH]
        text = stringify_python(decoded)
        if len(text) > MAX_LABEL_LENGTH:
            return text[:MAX_LABEL_LENGTH]
    return decoded


def python_to_any_value(value: AttributeValue, out: AnyValue) -> None:
    """Fill ``out`` from a decoded value (the inverse of :func:`any_value_to_python`)."""
    if isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list | tuple):
        array = out.array_value
        array.SetInParent()
        for item in value:
            python_to_any_value(item, array.values.add())
    elif isinstance(value, dict):
        kvlist = out.kvlist_value
        kvlist.SetInParent()
        for key, item in value.items():
            kv = kvlist.values.add(key=str(key))
            python_to_any_value(item, kv.value)


def fill_key_values(target: Any, attributes: Iterable[tuple[str, AttributeValue]]) -> None:
    """Append attributes to a repeated KeyValue field, preserving order."""
    for key, value in attributes:
        kv: KeyValue = target.add(key=key)
        python_to_any_value(value, kv.value)


_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_pack_double = struct.Struct("<d").pack


def encode_any_value(value: AttributeValue) -> bytes | None:
    """An ``AnyValue`` body as :func:`worker.model.values.python_to_any_value` fills it.

    ``None`` when that function sets nothing (``None`` or an unsupported type), so the enclosing
    ``KeyValue`` has no ``value`` field at all; an empty body is an AnyValue set to an empty
    array or map.
    """
    if isinstance(value, str):
        return message(b"\x0a", value.encode("utf-8"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"value out of range: {value}")
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return message(b"\x3a", value)
    if isinstance(value, list | tuple):
        items = b"".join(message(b"\x0a", encode_any_value(item) or b"") for item in value)
        return message(b"\x2a", items)
    if isinstance(value, dict):
        entries = b"".join(message(b"\x0a", key_value(str(key), item)) for key, item in value.items())
        return message(b"\x32", entries)
    return None


def key_value(key: str, value: AttributeValue) -> bytes:
    """A ``KeyValue`` body: ``key`` (left out when empty) and ``value`` (left out when unset)."""
    encoded_key = key.encode("utf-8")
    body = message(b"\x0a", encoded_key) if encoded_key else b""
    any_value = encode_any_value(value)
    if any_value is not None:
        body += message(b"\x12", any_value)
    return body


def attribute_parts(attributes: Attributes) -> list[bytes]:
    """Each attribute as a length-prefixed ``KeyValue``: the ``attributes`` entries of a data
    point without their field tag, which differs by data point type (see Series.attribute_parts)."""
    parts = []
    for key, value in attributes:
        body = key_value(key, value)
        parts.append(length_prefix(len(body)) + body)
    return parts
