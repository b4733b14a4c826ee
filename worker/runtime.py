"""The garbage collector tuned for a long-running worker (measured in bench/aggregate.py, issue 17).

Ingest allocates several objects per span, almost none in reference cycles (reference counting
frees them); with CPython's default thresholds (700, 10, 10) the cycle collector still ran often
enough to take about a quarter of the ingest time, scanning the processors' state each time.
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "tune_garbage_collector"]

#: Allocations (net of frees) between young collections, and the older generations' ratios.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_garbage_collector() -> None:
    """Once started: what exists now (modules, configuration, clients) is never garbage, so
    collections stop scanning it (``gc.freeze``); then collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
