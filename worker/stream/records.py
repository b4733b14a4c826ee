"""Per-record rules that need no I/O: which tenant a record belongs to, and DLQ headers."""

from __future__ import annotations

from collections.abc import Sequence

from state.keys import validate_tenant

__all__ = ["DLQ_ERROR", "DLQ_OFFSET", "DLQ_PARTITION", "DLQ_TOPIC", "dlq_headers", "tenant_of"]

Headers = Sequence[tuple[str, bytes]]

DLQ_ERROR = "x-spanmetrics-error"
DLQ_TOPIC = "x-spanmetrics-source-topic"
DLQ_PARTITION = "x-spanmetrics-source-partition"
DLQ_OFFSET = "x-spanmetrics-source-offset"

#: Returned by :func:`tenant_of` for a header that is present but unusable.
INVALID = None


def tenant_of(headers: Headers | None, header: str, default: str) -> str | None:
    """The record's tenant: the header's value, the default when absent, None when invalid.

    Header names compare case-insensitively (HTTP habit: ``x-scope-orgid`` is the same header).
    """
    if headers:
        wanted = header.lower()
        for name, value in headers:
            if name.lower() == wanted:
                return validate_tenant(value or b"")
    return default


def dlq_headers(
    original: Headers | None, reason: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The original headers plus why and where from, so a DLQ reader can replay or inspect."""
    kept = [(k, v) for k, v in (original or ()) if not k.startswith("x-spanmetrics-")]
    return [
        *kept,
        (DLQ_ERROR, reason.encode("utf-8", "replace")[:1024]),
        (DLQ_TOPIC, topic.encode()),
        (DLQ_PARTITION, str(partition).encode()),
        (DLQ_OFFSET, str(offset).encode()),
    ]
