"""Protobuf varints and length prefixes, the part of the wire format written and read by hand."""

from __future__ import annotations

__all__ = ["length_prefix", "message", "read_varint", "varint"]

_UINT64_LIMIT = 1 << 64


def varint(value: int) -> bytes:
    """Unsigned varint; ``ValueError`` outside uint64, as protobuf raises for such a field."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"value out of range: {value}")
        return bytes((value,))
    if value >= _UINT64_LIMIT:
        raise ValueError(f"value out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, position: int = 0, max_bytes: int = 10) -> tuple[int, int]:
    """(value, position after it) of the varint at ``position``; ``ValueError`` when the data
    ends inside it or it runs longer than ``max_bytes``."""
    value = shift = 0
    end = min(len(data), position + max_bytes)
    while position < end:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise ValueError("truncated or overlong varint")


#: Varints of 0 .. 16383: nearly every length in an OTLP message.
_SMALL_VARINTS = tuple(varint(n) for n in range(1 << 14))


def length_prefix(size: int) -> bytes:
    """The varint length that precedes a length-delimited field's body."""
    return _SMALL_VARINTS[size] if size < 16384 else varint(size)


def message(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: its tag, the varint length of ``body``, then ``body``."""
    return tag + length_prefix(len(body)) + body
