"""The event-loop stall monitor: a blocking call shows as a stall of about its length."""

from __future__ import annotations

import asyncio
import time

from worker.observability.loopmonitor import StallTracker, watch_loop


def test_tracker_keeps_the_worst_per_reader() -> None:
    tracker = StallTracker()
    tracker.record(0.05)
    tracker.record(0.3)
    tracker.record(-0.001)  # a timer on time (or early) is no stall
    assert tracker.take_since_flush() == 0.3
    tracker.record(0.02)
    assert tracker.take_since_flush() == 0.02
    assert tracker.take_since_scrape() == 0.3
    assert tracker.take_since_scrape() == 0.0
    assert tracker.worst == 0.3 and tracker.over_threshold == 1


async def test_a_blocked_loop_is_measured() -> None:
    tracker = StallTracker()
    task = asyncio.create_task(watch_loop(tracker, period=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.25)  # noqa: ASYNC251 -- blocking the loop is the point
    await asyncio.sleep(0.05)
    task.cancel()
    assert 0.2 <= tracker.worst < 1.0
    assert tracker.over_threshold == 1
