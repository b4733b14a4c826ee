"""Half-edges waiting for their other side (Tempo's ``store.Edge``), and their portable form for a handover.

An edge travels with the wait it has *left*, so time without an owner does not count against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgpack

__all__ = [
    "FORMAT_VERSION",
    "Edge",
    "EdgeKey",
    "MarkerKey",
    "decode_pending",
    "edge_from_row",
    "encode_pending",
]

#: (trace_id, client span id): the server side uses its parent span id, so both sides meet here.
EdgeKey = tuple[bytes, bytes]

#: First element of an exported blob; bumped whenever the row layout changes. Version 2 adds the
#: last span's kind and the span multiplier; version 1 blobs (an older worker's) still restore.
FORMAT_VERSION = 2
_ROW_LENGTHS = {1: 13, 2: 15}


class Edge:
    """One request between two nodes, complete when both service names are known."""

    __slots__ = (
        "client",
        "client_end_ns",
        "client_seconds",
        "connection_type",
        "deadline_ns",
        "dimensions",
        "failed",
        "multiplier",
        "peer",
        "server",
        "server_seconds",
        "server_start_ns",
        "span_kind",
    )

    def __init__(self, deadline_ns: int) -> None:
        #: When the edge gives up waiting for its other side (unix ns, processor clock).
        self.deadline_ns = deadline_ns
        #: "" (plain request), "messaging_system", "database" or "virtual_node".
        self.connection_type = ""
        self.client = ""
        self.server = ""
        self.client_seconds = 0.0
        self.server_seconds = 0.0
        #: Producer end and consumer start, for the messaging-system latency.
        self.client_end_ns = 0
        self.server_start_ns = 0
        self.failed = False
        #: The first peer attribute found on the span: names the virtual node on expiry.
        self.peer = ""
        #: Label name -> value of the configured dimensions (None when none are configured).
        self.dimensions: dict[str, str] | None = None
        #: The kind of the span that touched the edge last (Tempo's ``SpanKind``): what an
        #: expired edge is counted under.
        self.span_kind = 0
        #: The span multiplier of the span that touched the edge last (Tempo's ``SpanMultiplier``).
        self.multiplier = 1.0

    def to_row(self, key: EdgeKey, remaining_ns: int) -> list[Any]:
        return [
            key[0],
            key[1],
            remaining_ns,
            self.connection_type,
            self.client,
            self.server,
            self.client_seconds,
            self.server_seconds,
            self.client_end_ns,
            self.server_start_ns,
            self.failed,
            self.peer,
            self.dimensions,
            self.span_kind,
            self.multiplier,
        ]

    @classmethod
    def from_row(
        cls, row: list[Any], now_ns: int, max_wait_ns: int, version: int = FORMAT_VERSION
    ) -> tuple[EdgeKey, Edge]:
        return edge_from_row(cls, row, now_ns, max_wait_ns, version)


def edge_from_row(
    edge_type: Callable[[int], Edge],
    row: list[Any],
    now_ns: int,
    max_wait_ns: int,
    version: int = FORMAT_VERSION,
) -> tuple[EdgeKey, Edge]:
    """An exported row as an edge of ``edge_type`` (:class:`Edge`, or the compiled ingest's
    twin with the same fields), its deadline counted from ``now_ns``."""
    if len(row) != _ROW_LENGTHS[version]:
        raise ValueError(f"a version {version} row has {_ROW_LENGTHS[version]} fields, not {len(row)}")
    (
        trace_id,
        span_id,
        remaining_ns,
        connection_type,
        client,
        server,
        client_seconds,
        server_seconds,
        client_end_ns,
        server_start_ns,
        failed,
        peer,
        dimensions,
    ) = row[:13]
    remaining = min(max(int(remaining_ns), 0), max_wait_ns)
    edge = edge_type(now_ns + remaining)
    edge.connection_type = str(connection_type)
    edge.client = str(client)
    edge.server = str(server)
    edge.client_seconds = float(client_seconds)
    edge.server_seconds = float(server_seconds)
    edge.client_end_ns = int(client_end_ns)
    edge.server_start_ns = int(server_start_ns)
    edge.failed = bool(failed)
    edge.peer = str(peer)
    edge.dimensions = {str(k): str(v) for k, v in dimensions.items()} if dimensions is not None else None
    if version >= 2:
        edge.span_kind = int(row[13])
        edge.multiplier = float(row[14])
    return (bytes(trace_id), bytes(span_id)), edge


#: (edge key, side) of a filtered span (Tempo's dropped span side, #6453): 0 client, 1 server.
MarkerKey = tuple[EdgeKey, int]


def encode_pending(
    tenants: Iterable[tuple[str, Iterable[tuple[EdgeKey, Edge]], Iterable[tuple[MarkerKey, int]]]],
    now_ns: int,
) -> bytes:
    """``[version, [[tenant, [row, ...], [marker, ...]], ...]]``, each edge and marker with its
    remaining wait at ``now_ns`` (a marker row: ``[trace id, span id, side, remaining ns]``)."""
    body = [
        [
            tenant,
            [edge.to_row(key, max(edge.deadline_ns - now_ns, 0)) for key, edge in edges],
            [[key[0], key[1], side, max(deadline - now_ns, 0)] for (key, side), deadline in markers],
        ]
        for tenant, edges, markers in tenants
    ]
    packed: bytes = msgpack.packb([FORMAT_VERSION, body], use_bin_type=True)
    return packed


def decode_pending(
    blob: bytes, now_ns: int, max_wait_ns: int, edge_type: Callable[[int], Edge] = Edge
) -> list[tuple[str, list[tuple[EdgeKey, Edge]], list[tuple[MarkerKey, int]]]]:
    """The tenants, edges and markers of a blob, deadlines counted from ``now_ns`` (at most
    ``max_wait_ns`` on); a version 1 blob has no markers.

    Decodes everything before returning, so a damaged blob raises ``ValueError`` and restores
    nothing rather than half of it.
    """
    try:
        version, body = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a service-graph pending-edge export: {exc}") from None
    if not isinstance(version, int) or version not in _ROW_LENGTHS:
        raise ValueError(f"unsupported service-graph pending-edge export version {version!r}")
    try:
        result = []
        for entry in body:
            if len(entry) != (2 if version == 1 else 3):
                raise ValueError(f"a version {version} tenant entry has {len(entry)} fields")
            tenant, rows = entry[0], entry[1]
            edges = [edge_from_row(edge_type, row, now_ns, max_wait_ns, version) for row in rows]
            markers = [
                (
                    ((bytes(trace_id), bytes(span_id)), int(side)),
                    now_ns + min(max(int(remaining), 0), max_wait_ns),
                )
                for trace_id, span_id, side, remaining in (entry[2] if version > 1 else ())
            ]
            result.append((str(tenant), edges, markers))
        return result
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"damaged service-graph pending-edge export: {exc}") from None
