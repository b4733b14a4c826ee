"""Per-partition state the stream parts share: fencing tokens, applied offsets, progress, the lock."""

from __future__ import annotations

import asyncio
from typing import Literal

__all__ = ["Partitions", "WatchedLock"]


class WatchedLock(asyncio.Lock):
    """An asyncio.Lock whose :attr:`wanted` is set while a task waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        #: Set while some task waits: a holder retrying through an outage gives way (rebalances).
        self.wanted = asyncio.Event()

    async def acquire(self) -> Literal[True]:
        self.waiting += 1
        if self.locked():
            self.wanted.set()
        try:
            return await super().acquire()
        finally:
            self.waiting -= 1
            if not self.waiting:
                self.wanted.clear()


class Partitions:
    """What this worker holds per input partition; every change happens under :attr:`lock`."""

    def __init__(self) -> None:
        #: partition -> fencing token, for the partitions this worker owns right now.
        self.tokens: dict[int, int] = {}
        #: partition -> next offset to apply, as stored in Redis (records below it are replays).
        self.applied: dict[int, int] = {}
        #: partition -> next offset after what the in-memory deltas cover.
        self.progress: dict[int, int] = {}
        #: Spans consumed since the last checkpoint (a checkpoint is forced past a limit).
        self.buffered_spans = 0
        #: Assignment complete and the last Redis step answered (readiness).
        self.ready = False
        #: Held while records are consumed and while memory is merged into or reset from Redis.
        self.lock = WatchedLock()
        #: Partitions whose memory went into a Redis step of unknown outcome: paused, never merged
        #: again, until they are re-read from Redis (a seek to the stored offsets).
        self.unsettled: set[int] = set()
        #: Assigned by the group, but the claim in Redis failed (an outage): paused, claimed later.
        self.unclaimed: set[int] = set()
        #: Set on SIGTERM: Redis retries give up at once (what is not stored is re-read later).
        self.stopping = asyncio.Event()

    def take_progress(self) -> dict[int, int]:
        """What the in-memory deltas cover, handed to a checkpoint; memory starts afresh."""
        progress, self.progress = self.progress, {}
        self.buffered_spans = 0
        return progress

    def discard_progress(self) -> None:
        """Memory was dropped: it covers nothing any more."""
        self.progress.clear()
        self.buffered_spans = 0

    def advance_applied(self, progress: dict[int, int]) -> None:
        """Offsets now stored in Redis; never moves one backwards."""
        for partition, offset in progress.items():
            if offset > self.applied.get(partition, -1):
                self.applied[partition] = offset
