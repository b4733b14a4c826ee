"""The hot path's decode schema: OTLP traces with span attributes read as a ``map<string, AnyValue>``.

A :data:`SpanBatch` parses the very bytes ``ExportTraceServiceRequest`` does; :func:`as_batch` converts one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from worker.model.errors import OtlpDecodeError

__all__ = [
    "BatchRequest",
    "BatchResource",
    "BatchScope",
    "BatchScopeSpans",
    "BatchSpan",
    "SpanBatch",
    "as_batch",
    "is_batch",
    "parse_batch",
    "parse_into",
]

# The classes are built at runtime, so static typing sees their messages as ``Any``; the names
# say which message is meant.
#: An ``ExportTraceServiceRequest`` of the batch schema.
SpanBatch = Any
#: A ``Resource`` of the batch schema (as the standard one).
BatchResource = Any
#: An ``InstrumentationScope`` of the batch schema (as the standard one).
BatchScope = Any
#: A ``ScopeSpans`` of the batch schema (as the standard one).
BatchScopeSpans = Any
#: A ``Span`` of the batch schema: ``attributes`` is a map of key to ``AnyValue``.
BatchSpan = Any

_M = TypeVar("_M", bound=Message)
_SPAN = "opentelemetry.proto.trace.v1.Span"
_ANY_VALUE = ".opentelemetry.proto.common.v1.AnyValue"
_ENTRY = "AttributesEntry"
_FIELD = descriptor_pb2.FieldDescriptorProto


def _with_attribute_map(span: descriptor_pb2.DescriptorProto) -> None:
    """Redeclare ``Span.attributes`` (field 9, repeated KeyValue) as ``map<string, AnyValue>``."""
    entry = span.nested_type.add(name=_ENTRY)
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_STRING)
    entry.field.add(
        name="value", number=2, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_MESSAGE, type_name=_ANY_VALUE
    )
    [attributes] = [f for f in span.field if f.name == "attributes"]
    if attributes.number != 9 or attributes.label != _FIELD.LABEL_REPEATED:  # pragma: no cover
        raise RuntimeError("unexpected OTLP Span.attributes declaration")
    attributes.type_name = f".{_SPAN}.{_ENTRY}"


def _build() -> Any:
    """The batch schema's ExportTraceServiceRequest class, in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        file.ClearField("service")  # the gRPC service is not needed
        if module is trace_pb2:
            [span] = [m for m in file.message_type if m.name == "Span"]
            _with_attribute_map(span)
        pool.Add(file)
    descriptor = pool.FindMessageTypeByName(ExportTraceServiceRequest.DESCRIPTOR.full_name)
    return message_factory.GetMessageClass(descriptor)


#: ``ExportTraceServiceRequest`` with span attributes as a map (see the module docstring).
BatchRequest: Any = _build()


def parse_into(request: _M, data: bytes) -> _M:
    """Parse protobuf bytes into ``request`` (either schema); anything the parser refuses
    becomes an OtlpDecodeError."""
    try:
        request.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OtlpDecodeError(f"not an OTLP ExportTraceServiceRequest (protobuf): {exc}") from None
    return request


def parse_batch(data: bytes) -> SpanBatch:
    """Parse protobuf bytes in the batch schema (see :func:`parse_into`)."""
    return parse_into(BatchRequest(), data)


def is_batch(request: Any) -> bool:
    return isinstance(request, BatchRequest)


def as_batch(request: ExportTraceServiceRequest | SpanBatch) -> SpanBatch:
    """``request`` in the batch schema: as it is when it already is, else serialized and parsed.

    Raises OtlpDecodeError for what the parser refuses although a message holds it (nesting
    deeper than the parser's recursion limit).
    """
    if isinstance(request, BatchRequest):
        return request
    return parse_batch(request.SerializeToString())


#: One ``ResourceSpans`` read once for every processor: the resource, its serialized bytes (the
#: processors' resource cache key) and its non-empty ``ScopeSpans`` with their spans: the
#: resource is serialized and the message tree down to the spans walked from Python only once.
#: (The scope itself is read only by a processor that needs it: every read builds a wrapper.)
ResourceGroup = tuple[BatchResource, bytes, list[tuple[BatchScopeSpans, Sequence[BatchSpan]]]]


def group_request(request: ExportTraceServiceRequest | SpanBatch) -> list[ResourceGroup]:
    """The request's resources and spans, read once (see :data:`ResourceGroup`).

    A standard request is turned into the batch schema first (see :func:`as_batch`).
    """
    groups: list[ResourceGroup] = []
    for resource_spans in as_batch(request).resource_spans:
        resource = resource_spans.resource
        scopes: list[tuple[BatchScopeSpans, Sequence[BatchSpan]]] = []
        for scope_spans in resource_spans.scope_spans:
            spans = scope_spans.spans
            if spans:
                scopes.append((scope_spans, spans))
        groups.append((resource, resource.SerializeToString(), scopes))
    return groups
