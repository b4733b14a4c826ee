"""Types of the compiled ingest (``_native.pyx``): its scanners, the parse check and the folds."""

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor

class Schema:
    """A message type's field kinds by number, for :func:`valid`."""

    def __init__(self, descriptor: Descriptor) -> None: ...
    def kinds(self) -> list[dict[int, int]]: ...

def valid(data: bytes, schema: Schema) -> bool: ...

class SpanScan:
    data: bytes

class EdgeScan:
    data: bytes
    def __len__(self) -> int: ...
    def resources(self) -> list[tuple[bytes, int]]: ...

class Edge:
    def __init__(self, deadline_ns: int) -> None: ...
    def to_row(self, key: tuple[bytes, bytes], remaining_ns: int) -> Any: ...

class EdgeContext:
    def __init__(
        self, processor: Any, names: tuple[str, ...], slow: Callable[[bytes], str], parse_value: Any
    ) -> None: ...

def scan(data: bytes, slot_names: tuple[bytes, ...]) -> SpanScan | None: ...
def scan_edges(data: bytes, keys: tuple[bytes, ...], slow: Callable[[bytes], str]) -> EdgeScan | None: ...
def scan_both(
    data: bytes, slot_names: tuple[bytes, ...], keys: tuple[bytes, ...], slow: Callable[[bytes], str]
) -> tuple[SpanScan | None, EdgeScan | None]: ...
def fold(
    processor: Any,
    scanned: SpanScan,
    tenant: str,
    stats: Any,
    parse_span: Callable[[bytes], Any],
    divisor: float,
    slow: Callable[[bytes], str | None],
) -> None: ...
def flush_folds(active: list[Any]) -> None: ...
def observe_scanned(
    ctx: EdgeContext,
    scanned: EdgeScan,
    services: list[str | None],
    values: list[dict[str, str]],
    edges: dict[tuple[bytes, bytes], Any],
    capacity: int,
    interval: Any,
    now: int,
    stats: Any,
    dropped_metric: str,
) -> None: ...
def expire_edges(
    ctx: EdgeContext, tenant: str, edges: dict[tuple[bytes, bytes], Any], now_ns: int
) -> None: ...
