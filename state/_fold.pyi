from collections.abc import Callable, Mapping
from typing import Any

def fields_at_slots() -> bool: ...
def walk_held(
    stored: Mapping[bytes, bytes | None],
    deltas: dict[bytes, tuple[list[Any], int]],
    known: Mapping[bytes, tuple[Any, ...]],
    expire_before_us: int,
    resource_expire_before_us: int,
    resource_seen: Mapping[str, int],
    plan: Any,
    other: Callable[[bytes, bytes | None, tuple[list[Any], int] | None], None],
) -> None: ...
def quiet_series(
    blob: bytes,
    parts: Mapping[int, bytes] | None,
    companion_name: Callable[[bytes], str | None],
) -> Any: ...
