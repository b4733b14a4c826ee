from collections.abc import Callable
from typing import Any

def scan(
    data: bytes,
    slot_names: tuple[bytes, ...],
    want_ids: bool,
    divisor: float,
    slow: Callable[[bytes], str | None],
) -> list[tuple[bytes, list[tuple[Any, ...]]]] | None: ...
def fold(
    processor: Any,
    scanned: list[tuple[bytes, list[tuple[Any, ...]]]],
    data: bytes,
    tenant: str,
    stats: Any,
    parse_span: Callable[[bytes], Any],
) -> None: ...
