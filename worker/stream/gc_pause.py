"""Cycle collection paused around a flush's per-series work (see worker.runtime for the tuning)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["collection_paused"]


class _Pauses:
    """How many :func:`collection_paused` blocks are open, and whether collection was enabled
    when the first of them began."""

    open = 0
    was_enabled = True


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No cycle collection inside (a flush allocates several objects per series, none in cycles,
    and each collection would scan them all): paused, not skipped. Blocks may nest and overlap
    (a merge during a background emission): collection resumes when the last one ends, and only
    if it was enabled when the first began."""
    if _Pauses.open == 0:
        _Pauses.was_enabled = gc.isenabled()
        gc.disable()
    _Pauses.open += 1
    try:
        yield
    finally:
        _Pauses.open -= 1
        if _Pauses.open == 0 and _Pauses.was_enabled:
            gc.enable()
