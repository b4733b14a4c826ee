"""Running totals of one worker (plain integer additions on the hot path), read by the self-metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RemoteWriteStats", "WorkerStats"]


@dataclass(slots=True)
class RemoteWriteStats:
    """The remote-write sink's totals; samples count native histograms too (one each)."""

    #: Accepted by the endpoint (2xx).
    samples: int = 0
    #: Refused by the endpoint with a status that is not retried (4xx other than 429).
    failed_samples: int = 0
    #: Never sent: pushed out of the full buffer, or still buffered at shutdown.
    dropped_samples: int = 0
    requests: int = 0
    retries: int = 0
    sent_bytes: int = 0
    #: Samples waiting in the buffer now.
    pending_samples: int = 0


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
    #: Failed attempts of an atomic Redis step (each retry that failed counts once).
    redis_errors: int = 0
    #: Failed deliveries per sink ("kafka": a failed emission, or a record refused as too large).
    sink_errors: dict[str, int] = field(default_factory=dict)
    #: tenant -> new series its active-series limit refused (folded into its overflow series).
    overflowed_by_tenant: dict[str, int] = field(default_factory=dict)
    #: Emissions that began more than a tenth of an interval after they were due, and due
    #: emissions that never began (one later emission served them): worker.stream.cadence.
    emissions_late: int = 0
    emissions_skipped: int = 0
    last_flush_seconds: float = 0.0
    last_redis_seconds: float = 0.0
    #: Totals of the remote-write sink (all 0 when it is not configured).
    remote_write: RemoteWriteStats = field(default_factory=RemoteWriteStats)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
