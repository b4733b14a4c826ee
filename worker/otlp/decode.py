"""Kafka record value -> ``ExportTraceServiceRequest``, whichever encoding the producer chose.

The Collector's Kafka exporter writes ``otlp_proto`` by default and ``otlp_json`` on request;
both are accepted on the same topic. A JSON document starts with ``{`` after optional
whitespace. A serialized request starts with the tag of field 1, ``0x0a``, which is also a
newline, and its length byte may happen to be ``{``; so a record that looks like JSON but does
not parse as JSON and starts with ``0x0a`` is tried as protobuf before it is refused.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.exceptions import OtlpDecodeError
from worker.otlp.json_codec import traces_from_json

__all__ = ["decode_traces", "decode_traces_proto"]

_PROTOBUF_FIRST_BYTE = 0x0A


def decode_traces_proto(data: bytes) -> ExportTraceServiceRequest:
    """Parse protobuf bytes; anything the parser refuses becomes an OtlpDecodeError."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OtlpDecodeError(f"not an OTLP ExportTraceServiceRequest (protobuf): {exc}") from None
    return request


def decode_traces(data: bytes) -> ExportTraceServiceRequest:
    """Decode a record value as OTLP/JSON when it looks like JSON, else as protobuf."""
    if data.lstrip()[:1] != b"{":
        return decode_traces_proto(data)
    try:
        return traces_from_json(data)
    except OtlpDecodeError:
        if data[0] != _PROTOBUF_FIRST_BYTE:
            raise
    return decode_traces_proto(data)
