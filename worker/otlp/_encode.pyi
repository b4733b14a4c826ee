from collections.abc import Callable, Iterable, Iterator
from typing import Any

class Requests(Iterator[tuple[bytes, bytes | None, int]]):
    def __iter__(self) -> Requests: ...
    def __next__(self) -> tuple[bytes, bytes | None, int]: ...

def encode(
    series: Iterable[Any],
    plans: dict[str, Any],
    now_ns: int,
    max_bytes: int,
    resource_body: Callable[[str], bytes],
    point_attributes: Callable[[bytes, Any, dict[int, Any]], bytes],
) -> Requests | None: ...
def fields_at_slots() -> bool: ...
def fit_all(series: Iterable[Any], fit: Callable[[Any], None]) -> None: ...
