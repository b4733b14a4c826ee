"""The emission schedule (pure): emissions due at start + k * interval, and which were late or skipped."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["EMIT", "MERGE", "Cadence", "EmissionSlot"]

#: What the run loop does next (:meth:`Cadence.next_flush`): an emitting flush, or a merge-only one.
EMIT = "emit"
MERGE = "merge"

#: An emission that starts more than this share of an interval after it was due counts as late.
LATE_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class EmissionSlot:
    """What an emission that begins now serves: the due time it was for, how late it begins, and
    how many due times passed without an emission of their own (served by this one instead)."""

    due: float
    lateness: float
    skipped: int
    late: bool


class Cadence:
    """Fixed-rate emission times: due at ``start + k * interval``, never an interval after the
    previous emission ended, so a slow emission or a merge-only flush shifts nothing.

    An emission is *late* when it begins more than ``LATE_SHARE`` of an interval after its due
    time; due times that passed entirely while an earlier emission was awaited (the next due time
    came before this one began) are *skipped*: one emission serves them all, and the schedule
    goes on from the first due time after it began."""

    def __init__(self, interval: float, start: float) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.start = start
        #: Index k of the next due time.
        self.k = 1
        self.late_total = 0
        self.skipped_total = 0

    @property
    def next_due(self) -> float:
        return self.start + self.k * self.interval

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def until_due(self, now: float) -> float:
        """Seconds until the next emission is due (0 when due already)."""
        return max(0.0, self.next_due - now)

    def next_flush(self, now: float, *, buffer_full: bool) -> str | None:
        """The flush to run at ``now``: EMIT when an emission is due (whatever the buffer holds:
        the emission's checkpoint merges it too), MERGE when only the span buffer is full, else
        None. A merge-only flush that ends past the due time is followed by the emission at once."""
        if self.due(now):
            return EMIT
        return MERGE if buffer_full else None

    def begin(self, now: float) -> EmissionSlot:
        """An emission begins at ``now`` (due or not: a final one); the schedule moves to the
        first due time after ``now``. Counts lateness and skipped due times."""
        due = self.next_due
        lateness = max(0.0, now - due)
        # Due times strictly after ``due`` and not after ``now``: passed without their own emission.
        passed = math.floor((now - self.start) / self.interval)
        skipped = max(0, passed - self.k)
        late = lateness > LATE_SHARE * self.interval
        self.k = max(self.k, passed + 1)
        self.late_total += int(late)
        self.skipped_total += skipped
        return EmissionSlot(due=due, lateness=lateness, skipped=skipped, late=late)
