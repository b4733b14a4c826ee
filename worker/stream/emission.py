"""Emission: once per flush, the slots this worker owns, published while it still owns them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from state.protocol import SeriesStore
from worker.model.series import Temporality
from worker.observability.stats import WorkerStats
from worker.sinks.base import Sink
from worker.stream.partitions import Partitions
from worker.stream.slots import EmitReport, SlotEmitter

__all__ = ["Emission"]


class Emission:
    """Publishes the slots this worker owns, each once per flush, through ``sinks``."""

    def __init__(
        self,
        store: SeriesStore,
        sinks: Sequence[Sink],
        shared: Partitions,
        stats: WorkerStats,
        log: Any,
        *,
        temporality: Temporality,
        series_expiration_s: float,
        resource_expiration_s: float,
        recheck_after: float,
    ) -> None:
        self.store = store
        self.slots = SlotEmitter(
            store,
            sinks,
            temporality=temporality,
            series_expiration_s=series_expiration_s,
            resource_expiration_s=resource_expiration_s,
        )
        self.shared = shared
        self.stats = stats
        self.log = log
        #: Ownership is asked again before a publication when this long passed since the last check.
        self.recheck_after = recheck_after

    async def run(self) -> EmitReport | None:
        """Emit the slots owned now; None when it failed (it is retried at the next flush)."""
        store = self.store
        shared = self.shared
        tokens = dict(shared.tokens)
        try:
            owned = await store.owns(tokens)
            checked = time.monotonic()

            async def still_owned(slot: int) -> bool:
                # Revoked or fenced meanwhile; or this process stood still for longer than a
                # heartbeat (frozen, SIGSTOP, a long pause), so the group may have moved the
                # slot: ask Redis again before publishing it.
                nonlocal owned, checked
                if shared.tokens.get(slot) != tokens.get(slot):
                    return False
                if time.monotonic() - checked > self.recheck_after:
                    owned = await store.owns(tokens)
                    checked = time.monotonic()
                return slot in owned

            report = await self.slots.emit(
                {slot: tokens[slot] for slot in owned}, time.time_ns(), still_owned=still_owned
            )
        except (RedisError, OSError, KafkaError) as exc:
            if isinstance(exc, KafkaError):
                self.stats.sink_errors["kafka"] = self.stats.sink_errors.get("kafka", 0) + 1
            self.log.warning("emission failed; it is retried at the next flush", error=str(exc))
            return None
        stats = self.stats
        if report.skipped:
            self.log.warning("slots lost during the emission were not published", slots=report.skipped)
        if report.too_large:
            stats.drop("output_record_too_large", report.too_large)
            stats.sink_errors["kafka"] = stats.sink_errors.get("kafka", 0) + report.too_large
            self.log.warning("output records too large to publish were skipped", records=report.too_large)
        stats.emitted_series += report.series
        stats.emitted_records += report.records
        stats.emitted_bytes += report.bytes
        stats.expired += report.expired
        stats.overflowed += report.overflowed
        for tenant, refused in report.overflowed_by_tenant.items():
            stats.overflowed_by_tenant[tenant] = stats.overflowed_by_tenant.get(tenant, 0) + refused
        return report
