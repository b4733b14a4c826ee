"""Kafka record value -> ``ExportTraceServiceRequest``, whichever encoding the producer chose.

The Collector's Kafka exporter writes ``otlp_proto`` by default and ``otlp_json`` on request;
both are accepted on the same topic. A JSON document starts with ``{`` (after optional
whitespace), which a serialized request never does: its first byte is the tag of field 1
(``0x0a``), so the sniff is unambiguous for valid input.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.exceptions import OtlpDecodeError
from worker.otlp.json_codec import traces_from_json

__all__ = ["decode_traces", "decode_traces_proto"]

_JSON_START = frozenset(b"{ \t\r\n")


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
    if data and data[0] in _JSON_START:
        return traces_from_json(data)
    return decode_traces_proto(data)
