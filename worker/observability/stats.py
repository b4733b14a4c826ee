"""Running totals of one worker (plain integer additions on the hot path), read by the self-metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["WorkerStats"]


@dataclass(slots=True)
class WorkerStats:
    """Running totals; the self-metrics endpoint and the tests read them."""

    records: int = 0
    bytes: int = 0
    spans: int = 0
    skipped_replay: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dlq: int = 0
    flushes: int = 0
    fenced: int = 0
    #: Times this worker found Redis had lost its state (and recovered from the committed offsets).
    state_lost: int = 0
    rebalances: int = 0
    emitted_series: int = 0
    emitted_records: int = 0
    emitted_bytes: int = 0
    expired: int = 0
    overflowed: int = 0
    #: tenant -> new series its active-series limit refused (folded into its overflow series).
    overflowed_by_tenant: dict[str, int] = field(default_factory=dict)
    #: Emissions that began more than a tenth of an interval after they were due, and due
    #: emissions that never began (one later emission served them): worker.stream.cadence.
    emissions_late: int = 0
    emissions_skipped: int = 0
    last_flush_seconds: float = 0.0
    last_redis_seconds: float = 0.0

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
