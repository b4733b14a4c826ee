from collections.abc import Callable
from typing import Any

class SpanScan:
    data: bytes

def scan(data: bytes, slot_names: tuple[bytes, ...]) -> SpanScan | None: ...
def fold(
    processor: Any,
    scanned: SpanScan,
    tenant: str,
    stats: Any,
    parse_span: Callable[[bytes], Any],
    divisor: float,
    slow: Callable[[bytes], str | None],
) -> None: ...

class StringValue:
    string_value: str
    def __init__(self, value: str) -> None: ...
    def WhichOneof(self, name: str) -> str: ...

class EdgeSpan:
    kind: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    start_time_unix_nano: int
    end_time_unix_nano: int
    code: int
    attributes: dict[str, Any]
    @property
    def status(self) -> EdgeSpan: ...

def scan_edges(
    data: bytes, names: tuple[str, ...], parse_value: Callable[[bytes], Any]
) -> list[tuple[bytes, int, list[EdgeSpan]]] | None: ...
def observe_edges(
    processor: Any,
    work: list[tuple[Any, list[EdgeSpan]]],
    edges: dict[tuple[bytes, bytes], Any],
    capacity: int,
    interval: Any,
    now: int,
    stats: Any,
    edge_class: Any,
    tempo_string: Callable[[Any], str],
    dropped_metric: str,
) -> None: ...
