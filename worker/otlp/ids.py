"""Every span of a record needs a 16-byte trace id and an 8-byte span id, neither all zeros.

Checked in bulk on the record's bytes (one parse in C, no Python per span); a record that fails
is walked span by span to name the first bad one.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from worker.model.errors import OtlpDecodeError
from worker.otlp.batch import ResourceGroup

__all__ = ["SPAN_ID_BYTES", "TRACE_ID_BYTES", "check_span_ids", "span_id_problem"]

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8
_ZERO_TRACE_ID = bytes(TRACE_ID_BYTES)
_ZERO_SPAN_ID = bytes(SPAN_ID_BYTES)
_FIELD = descriptor_pb2.FieldDescriptorProto


def _build_ids_schema() -> Any:
    """``ExportTraceServiceRequest`` reduced to the span ids, with every level but the ids singular.

    Protobuf merges the occurrences of a singular message field, so every resource, scope and
    span of a record parse into ONE ``Span`` whose repeated ``trace_id`` and ``span_id`` hold the
    ids of all spans in order (an empty id is not written, so it adds no entry). Everything else
    stays unknown bytes.
    """
    file = descriptor_pb2.FileDescriptorProto(name="spanmetrics_ids.proto", package="spanmetrics.ids")
    file.syntax = "proto3"

    def message(name: str, *fields: tuple[str, int, int, str]) -> None:
        body = file.message_type.add(name=name)
        for field_name, number, label, type_name in fields:
            field = body.field.add(name=field_name, number=number, label=label)
            if type_name:
                field.type = _FIELD.TYPE_MESSAGE
                field.type_name = f".spanmetrics.ids.{type_name}"
            else:
                field.type = _FIELD.TYPE_BYTES

    message("Span", ("trace_id", 1, _FIELD.LABEL_REPEATED, ""), ("span_id", 2, _FIELD.LABEL_REPEATED, ""))
    message("ScopeSpans", ("spans", 2, _FIELD.LABEL_OPTIONAL, "Span"))
    message("ResourceSpans", ("scope_spans", 2, _FIELD.LABEL_OPTIONAL, "ScopeSpans"))
    message("Request", ("resource_spans", 1, _FIELD.LABEL_OPTIONAL, "ResourceSpans"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("spanmetrics.ids.Request"))


_IdsRequest: Any = _build_ids_schema()


def _all_valid(data: bytes, spans: int) -> bool:
    """True when ``data`` holds exactly ``spans`` trace ids and span ids, each valid.

    False is not a verdict (a span may repeat a field, which the full parse reads as its last
    value): the caller then checks span by span.
    """
    try:
        merged = _IdsRequest.FromString(data).resource_spans.scope_spans.spans
    except DecodeError:
        return False
    trace_ids = merged.trace_id
    span_ids = merged.span_id
    if len(trace_ids) != spans or len(span_ids) != spans:
        return False
    trace_ids = list(trace_ids)
    span_ids = list(span_ids)
    return (
        set(map(len, trace_ids)) == {TRACE_ID_BYTES}
        and set(map(len, span_ids)) == {SPAN_ID_BYTES}
        and _ZERO_TRACE_ID not in trace_ids
        and _ZERO_SPAN_ID not in span_ids
    )


def _id_problem(name: str, value: bytes, size: int) -> str | None:
    if len(value) != size:
        return f"{name} of {len(value)} bytes (want {size})"
    if not any(value):
        return f"{name} is all zeros"
    return None


def span_id_problem(trace_id: bytes, span_id: bytes) -> str | None:
    """What is wrong with a span's ids, or None (the OTel spec's rule for a valid span context)."""
    return _id_problem("trace_id", trace_id, TRACE_ID_BYTES) or _id_problem("span_id", span_id, SPAN_ID_BYTES)


def check_span_ids(groups: list[ResourceGroup], data: bytes | None = None) -> None:
    """Raise OtlpDecodeError naming the first span with an invalid id (and how many there are).

    ``groups`` is ``group_request`` of the record; ``data`` its serialized bytes (or several
    records joined, as parsed together), for the bulk check. Without ``data`` every span is read.
    """
    spans = 0
    for _, _, scopes in groups:
        for _, scope in scopes:
            spans += len(scope)
    if not spans or (data is not None and _all_valid(data, spans)):
        return
    first = ""
    invalid = 0
    for resource_index, (_, _, scopes) in enumerate(groups):
        span_index = 0
        for _, scope in scopes:
            for span in scope:
                problem = span_id_problem(span.trace_id, span.span_id)
                if problem is not None:
                    invalid += 1
                    if not first:
                        first = f"span {span_index} of resource {resource_index}: {problem}"
                span_index += 1
    if invalid:
        raise OtlpDecodeError(
            f"{first} ({invalid} of {spans} spans have invalid ids); is this an OTLP traces request?"
        )
