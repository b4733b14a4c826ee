"""Reading a few named attributes of a span, fast.

Reading the attributes of a decoded span from Python costs about half a microsecond per
attribute (every element of a repeated message field becomes a wrapper object, every key a new
string), and the service-graph processor wants only a handful of keys (peer and database
attributes) out of the ten or so a client span carries, and usually needs one or none of
them. So :func:`find_attribute` looks a key up in the span's serialized form (serialized once
per span, one C call; then one ``bytes.find`` per key) and decodes only what it finds.

A top-level span attribute is ``0x4a <length> 0x0a <key length> <key> [0x12 <length> <AnyValue>]``
on the wire (field 9, then the KeyValue's key and value fields in field-number order, as upb
writes them). A hit counts only when it is framed like that and every length adds up, so keys of
event and link attributes (other tags) and key-like bytes inside values are skipped, and the
first framed hit is the first occurrence, like Tempo's ``FindAttributeValue``. Anything that does
not add up falls back to walking the attribute messages.

The one input this can misread is a value crafted to contain a complete, length-consistent
attribute encoding (control bytes included) ahead of the real attribute: it would be taken for
the attribute. Such a span could as well carry the attribute itself, so nothing is gained by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from worker.servicegraphs.labels import tempo_string

__all__ = ["attribute_token", "find_attribute", "walk_attribute"]

_ATTRIBUTE_TAG = 0x4A  # Span.attributes (field 9), length-delimited
_VALUE_TAG = 0x12  # KeyValue.value (field 2), length-delimited
_STRING_TAG = 0x0A  # AnyValue.string_value (field 1), length-delimited


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(blob: bytes, position: int) -> tuple[int, int]:
    """(value, position after it); raises IndexError on a truncated varint."""
    byte = blob[position]
    if byte < 0x80:
        return byte, position + 1
    result = byte & 0x7F
    shift = 7
    position += 1
    while True:
        byte = blob[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


class _Mismatch(Exception):
    """The bytes did not have the expected shape: read the attribute messages instead."""


def attribute_token(name: str) -> bytes:
    """What to search for: the KeyValue's key field, ``0x0a <key length> <key>``."""
    encoded = name.encode("utf-8")
    return b"\x0a" + _encode_varint(len(encoded)) + encoded


def find_attribute(span: Any, blob: bytes, token: bytes, name: str) -> str | None:
    """The first ``name`` attribute of ``span`` as a Tempo string, None when it has none.

    ``blob`` is ``span.SerializeToString()`` and ``token`` is ``attribute_token(name)``.
    """
    try:
        index = blob.find(token)
        while index >= 0:
            value = _framed_value(blob, index, len(token))
            if value is not None:
                return value
            index = blob.find(token, index + 1)
    except (_Mismatch, IndexError, DecodeError):
        return walk_attribute(span.attributes, name)
    return None


def walk_attribute(attributes: Iterable[Any], name: str) -> str | None:
    """The plain way: one pass over the attribute messages."""
    for kv in attributes:
        if kv.key == name:
            return tempo_string(kv.value)
    return None


def _framed_value(blob: bytes, index: int, token_length: int) -> str | None:
    """The value of the attribute whose key token starts at ``index``, or None if it is no attribute.

    Before the token: ``0x4a`` and the KeyValue's length (a varint, its last byte below 0x80).
    """
    # The common case first: a short string attribute, every length one byte (below 0x80).
    if index >= 2 and blob[index - 2] == _ATTRIBUTE_TAG:
        end = index + blob[index - 1]
        position = index + token_length
        if (
            blob[index - 1] < 0x80
            and position + 4 <= end <= len(blob)
            and blob[position] == _VALUE_TAG
            and blob[position + 1] == end - position - 2
            and blob[position + 2] == _STRING_TAG
            and blob[position + 3] == end - position - 4
        ):
            try:
                return blob[position + 4 : end].decode("utf-8")
            except UnicodeDecodeError:
                raise _Mismatch from None
    if index < 2 or blob[index - 1] >= 0x80:
        return None
    start = index - 2
    while start >= 0 and blob[start] >= 0x80:
        start -= 1
    if start < 0 or blob[start] != _ATTRIBUTE_TAG or index - start > 5:
        return None
    length, after = _read_varint(blob, start + 1)
    end = index + length
    position = index + token_length
    if after != index or end > len(blob) or position > end:
        return None
    if position == end:
        return ""  # a key without a value
    if blob[position] != _VALUE_TAG:
        return None
    value_length, position = _read_varint(blob, position + 1)
    if position + value_length != end:
        return None
    if value_length == 0:
        return ""  # an empty AnyValue
    if blob[position] == _STRING_TAG:
        string_length, string_start = _read_varint(blob, position + 1)
        if string_start + string_length == end:
            try:
                return blob[string_start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise _Mismatch from None
    # Numbers, booleans, arrays, maps, bytes: rare in these keys; let protobuf decode them.
    return tempo_string(AnyValue.FromString(blob[position:end]))
