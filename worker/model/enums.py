"""The OTLP span kind and status code enum names, as every processor and the filter policies spell them."""

from __future__ import annotations

__all__ = ["SPAN_KIND_NAMES", "STATUS_CODE_NAMES"]

#: ``Span.SpanKind`` number -> its proto enum name (the connector's and Tempo's label values).
SPAN_KIND_NAMES: dict[int, str] = {
    0: "SPAN_KIND_UNSPECIFIED",
    1: "SPAN_KIND_INTERNAL",
    2: "SPAN_KIND_SERVER",
    3: "SPAN_KIND_CLIENT",
    4: "SPAN_KIND_PRODUCER",
    5: "SPAN_KIND_CONSUMER",
}
#: ``Status.StatusCode`` number -> its proto enum name.
STATUS_CODE_NAMES: dict[int, str] = {0: "STATUS_CODE_UNSET", 1: "STATUS_CODE_OK", 2: "STATUS_CODE_ERROR"}
