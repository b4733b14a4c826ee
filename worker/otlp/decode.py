"""Kafka record value -> OTLP traces: protobuf or JSON, detected per record; batch schema for the hot path."""

from __future__ import annotations

import re
from typing import NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.model.errors import OtlpDecodeError
from worker.model.wire import read_varint
from worker.otlp.batch import ResourceGroup, SpanBatch, group_request, parse_batch, parse_into
from worker.otlp.ids import check_span_ids
from worker.otlp.json_codec import traces_from_json

__all__ = [
    "Decoded",
    "decode_batch",
    "decode_batch_proto",
    "decode_spans",
    "decode_spans_proto",
    "decode_traces",
    "decode_traces_proto",
    "is_plain_request",
]

_PROTOBUF_FIRST_BYTE = 0x0A
#: What ``bytes.lstrip()`` strips: ASCII whitespace, as ``bytes.isspace`` defines it.
_FIRST_NON_SPACE = re.compile(rb"[^ \t\n\r\x0b\x0c]")
#: Second bytes of a protobuf record after which it might still be taken for JSON.
_JSON_SUSPECT = frozenset(b" \t\n\r\x0b\x0c{")


class Decoded(NamedTuple):
    """A record's spans as ``Pipeline.consume`` takes them: every span's ids checked."""

    batch: SpanBatch
    groups: list[ResourceGroup]


def decode_traces_proto(data: bytes) -> ExportTraceServiceRequest:
    """Parse protobuf bytes; anything the parser refuses becomes an OtlpDecodeError.

    Parsing only: a record of the input topic is decoded with :func:`decode_spans`, which also
    refuses spans without valid ids.
    """
    return parse_into(ExportTraceServiceRequest(), data)


def _looks_like_json(data: bytes) -> bool:
    """Whether the first byte after whitespace is ``{``, without copying the record.

    (``data.lstrip()`` would copy it: a protobuf record starts with 0x0a, a newline.)
    """
    first = data[:1]
    if first.isspace():
        match = _FIRST_NON_SPACE.search(data)
        first = data[match.start() : match.start() + 1] if match else b""
    return first == b"{"


def decode_traces(data: bytes) -> ExportTraceServiceRequest:
    """Decode a record value as OTLP/JSON when it looks like JSON, else as protobuf."""
    if not _looks_like_json(data):
        return decode_traces_proto(data)
    try:
        return traces_from_json(data)
    except OtlpDecodeError:
        if data[0] != _PROTOBUF_FIRST_BYTE:
            raise
    return decode_traces_proto(data)


def _checked(batch: SpanBatch, data: bytes) -> Decoded:
    groups = group_request(batch)
    check_span_ids(groups, data)
    return Decoded(batch, groups)


def decode_spans_proto(data: bytes) -> Decoded:
    """Protobuf bytes (one record, or several joined) in the batch schema, with their groups.

    Raises OtlpDecodeError for what ``decode_traces_proto`` refuses and for a span whose trace
    id or span id is invalid (see :mod:`worker.otlp.ids`): such "spans" come from another OTLP
    message (metrics, logs) parsed as traces, or from a misconfigured producer.
    """
    return _checked(parse_batch(data), data)


def decode_spans(data: bytes) -> Decoded:
    """:func:`decode_spans_proto`, or OTLP/JSON when the record looks like JSON (as :func:`decode_traces`)."""
    if not _looks_like_json(data):
        return decode_spans_proto(data)
    try:
        request = traces_from_json(data)
    except OtlpDecodeError:
        if data[0] != _PROTOBUF_FIRST_BYTE:
            raise
        return decode_spans_proto(data)
    # Into the batch schema through its canonical bytes (see ``as_batch``), checked on those.
    canonical = request.SerializeToString()
    return _checked(parse_batch(canonical), canonical)


def decode_batch_proto(data: bytes) -> SpanBatch:
    """:func:`decode_spans_proto` without the groups."""
    return decode_spans_proto(data).batch


def decode_batch(data: bytes) -> SpanBatch:
    """:func:`decode_spans` without the groups."""
    return decode_spans(data).batch


def is_plain_request(data: bytes) -> bool:
    """True when ``data`` is protobuf made of whole ``resource_spans`` fields and nothing else.

    Such records can be decoded together, ``decode_traces_proto(b"".join(records))``: the
    concatenation parses as the records' ``resource_spans`` one after the other, and a damaged
    value inside one of them fails the joined parse too (a sub-message never reads past its own
    length). A record that does not end where its last field ends, carries any other field, or
    would be tried as JSON first is not plain: it is decoded on its own.
    """
    size = len(data)
    position = 0
    while position < size:
        if data[position] != _PROTOBUF_FIRST_BYTE:
            return False
        # Lengths below 16384 (one or two varint bytes) inline: this runs for every record.
        first = data[position + 1] if position + 1 < size else 0x80
        if first < 0x80:
            position += 2 + first
            continue
        second = data[position + 2] if position + 2 < size else 0x80
        if second < 0x80:
            position += 3 + (first & 0x7F) + (second << 7)
            continue
        try:
            length, position = read_varint(data, position + 1, max_bytes=5)
        except ValueError:
            return False
        position += length
    if position != size:
        return False
    # After the leading 0x0A (whitespace) the next byte decides, unless it is whitespace or "{".
    return size < 2 or data[1] not in _JSON_SUSPECT or not _looks_like_json(data)
