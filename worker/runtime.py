"""The garbage collector tuned for a long-running worker (measured in bench/aggregate.py, issue 17).

Ingest allocates several objects per span, almost none in reference cycles (reference counting
frees them); with CPython's default thresholds (700, 10, 10) the cycle collector still ran often
enough to take about a quarter of the ingest time, scanning the processors' state each time.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["GC_THRESHOLDS", "collection_paused", "tune_garbage_collector"]

#: Allocations (net of frees) between young collections, and the older generations' ratios.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_garbage_collector() -> None:
    """Once started: what exists now (modules, configuration, clients) is never garbage, so
    collections stop scanning it (``gc.freeze``); then collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
