"""The event loop's stalls: a task that sleeps a short period and records how late it wakes up."""

from __future__ import annotations

import asyncio

__all__ = ["STALL_THRESHOLD", "StallTracker", "watch_loop"]

#: How often the monitor wakes up; a wake-up later than this by more is a stall of the loop.
PERIOD = 0.025
#: Stalls above this are counted (spanmetrics_event_loop_stalls_total): heartbeats, probes and
#: consumption share the loop, which no single step should hold longer (issue 18).
STALL_THRESHOLD = 0.1


class StallTracker:
    """The worst stall since each reader last took it (a scrape, a flush), and how many stalls
    passed the threshold; pure bookkeeping, fed by :func:`watch_loop`."""

    def __init__(self) -> None:
        self._since_scrape = 0.0
        self._since_flush = 0.0
        self.worst = 0.0
        self.over_threshold = 0

    def record(self, stall: float) -> None:
        if stall <= 0.0:
            return
        if stall > self._since_scrape:
            self._since_scrape = stall
        if stall > self._since_flush:
            self._since_flush = stall
        if stall > self.worst:
            self.worst = stall
        if stall > STALL_THRESHOLD:
            self.over_threshold += 1

    def take_since_scrape(self) -> float:
        value, self._since_scrape = self._since_scrape, 0.0
        return value

    def take_since_flush(self) -> float:
        value, self._since_flush = self._since_flush, 0.0
        return value


async def watch_loop(tracker: StallTracker, period: float = PERIOD) -> None:
    """Until cancelled: sleep ``period``, record the lateness of each wake-up."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        tracker.record(loop.time() - before - period)
