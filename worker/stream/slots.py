"""Folding owned slots through the store and handing each slot's live series to the sinks."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from state.protocol import SeriesStore
from worker.model.series import Attributes, Temporality
from worker.sinks.base import Delivery, Sink
from worker.stream.gc_pause import collection_paused

__all__ = ["EmitReport", "SlotEmitter"]


@dataclass(slots=True)
class EmitReport:
    series: int = 0
    records: int = 0
    bytes: int = 0
    expired: int = 0
    #: New series the tenant's active-series limit refused (folded into the overflow series).
    overflowed: int = 0
    #: The same, per tenant.
    overflowed_by_tenant: dict[str, int] = field(default_factory=dict)
    slots: list[int] = field(default_factory=list)
    #: Slots lost while this emission ran (revoked, or taken over while the process was frozen):
    #: not published, so no stale value goes out under a time stamp another owner also uses.
    skipped: list[int] = field(default_factory=list)
    #: Records not published because they are too large for the output (producer or broker).
    too_large: int = 0
    #: Where the time went: folding (Redis reads, the fold, its commit), encoding and handing
    #: records to the sinks, and waiting for delivery.
    fold_seconds: float = 0.0
    send_seconds: float = 0.0
    confirm_seconds: float = 0.0


@dataclass(slots=True)
class _InFlight:
    """A slot's series handed to the sinks, not yet delivered."""

    key: tuple[str, int]
    token: int
    deliveries: list[Delivery]
    series: int
    #: The slot's version after the fold, and its records owing a zero point, without it.
    version: int = 0
    zero_owed: list[tuple[bytes, bytes]] = field(default_factory=list)


class SlotEmitter:
    """Folds and publishes slots: each owned slot once per call, through every sink."""

    def __init__(
        self,
        store: SeriesStore,
        sinks: Sequence[Sink],
        *,
        temporality: Temporality,
        series_expiration_s: float = 0.0,
        resource_expiration_s: float = 0.0,
    ) -> None:
        """``series_expiration_s``: a series idle that long is dropped (the connector's
        ``series_expiration``, Tempo's ``registry.stale_duration``); ``resource_expiration_s``:
        once no span of a resource was seen for that long, its series are emitted one last time
        and dropped (the connector's ``metrics_expiration``). 0: never."""
        self.store = store
        self.sinks = list(sinks)
        self.temporality = temporality
        self.series_expiration_ns = int(series_expiration_s * 1e9)
        self.resource_expiration_ns = int(resource_expiration_s * 1e9)
        self._resources: dict[str, dict[str, Attributes]] = {}
        #: (tenant, slot) -> (token, time) of this worker's last successful publication of the
        #: slot: the next fold may forget what that publication carried (exemplars; DELTA values).
        self._published: dict[tuple[str, int], tuple[int, int]] = {}

    async def emit(
        self,
        tokens: Mapping[int, int],
        now_ns: int,
        *,
        still_owned: Callable[[int], Awaitable[bool]] | None = None,
    ) -> EmitReport:
        """Fold and publish every live series of the owned slots (slot -> fencing token).

        ``still_owned(slot)`` is asked right before each publication: the fold's commit proved
        ownership, but a rebalance can move the slot to another worker in the meantime.
        """
        report = EmitReport(slots=sorted(tokens))
        self._published = {key: value for key, value in self._published.items() if key[1] in tokens}
        self.store.hold(tokens)
        if not tokens:
            return report
        expire_before = now_ns - self.series_expiration_ns if self.series_expiration_ns else 0
        resource_before = now_ns - self.resource_expiration_ns if self.resource_expiration_ns else 0
        # One slot's records are delivered while the next slot is folded and encoded: at most
        # two slots' records are held at a time.
        in_flight: _InFlight | None = None
        for tenant in await self.store.tenants():
            # Read once per tenant: the series of one resource are spread over every slot.
            seen = await self.store.resource_seen(tenant) if resource_before else None
            for slot in sorted(tokens):
                if slot in report.skipped:
                    continue
                # Collection paused for the slot's per-series work only: ingest goes on beside an
                # emission, and what it allocates meets the collector between slots.
                with collection_paused():
                    sent = await self._emit_slot(
                        tenant,
                        slot,
                        tokens[slot],
                        now_ns,
                        report,
                        expire_before_ns=expire_before,
                        resource_before_ns=resource_before,
                        resource_seen_ns=seen,
                        still_owned=still_owned,
                    )
                if sent is None:
                    continue
                if in_flight is not None:
                    await self._confirm(in_flight, now_ns, report)
                in_flight = sent
            if seen:
                stale = [rid for rid, last in seen.items() if last < resource_before]
                await self.store.forget_resources(tenant, stale, resource_before)
        if in_flight is not None:
            await self._confirm(in_flight, now_ns, report)
        return report

    async def _emit_slot(
        self,
        tenant: str,
        slot: int,
        token: int,
        now_ns: int,
        report: EmitReport,
        *,
        expire_before_ns: int,
        resource_before_ns: int,
        resource_seen_ns: Mapping[str, int] | None,
        still_owned: Callable[[int], Awaitable[bool]] | None,
    ) -> _InFlight | None:
        """Fold one slot and hand its live series to the sinks; None when nothing went out (a
        stale token, a slot lost, nothing live)."""
        previous = self._published.pop((tenant, slot), None)
        started = time.perf_counter()
        fold = await self.store.fold_slot(
            tenant,
            slot,
            token,
            expire_before_ns=expire_before_ns,
            delta_mode=self.temporality is Temporality.DELTA,
            reset_emitted_ns=previous[1] if previous is not None and previous[0] == token else None,
            now_ns=now_ns,
            resource_expire_before_ns=resource_before_ns,
            resource_seen_ns=resource_seen_ns,
        )
        report.fold_seconds += time.perf_counter() - started
        if not fold.committed:
            report.skipped.append(slot)
            return None
        report.expired += fold.expired
        report.overflowed += fold.overflowed
        if fold.overflowed:
            by_tenant = report.overflowed_by_tenant
            by_tenant[tenant] = by_tenant.get(tenant, 0) + fold.overflowed
        if not fold.live:
            self._published[(tenant, slot)] = (token, now_ns)
            return None
        if still_owned is not None and not await still_owned(slot):
            report.skipped.append(slot)
            return None
        started = time.perf_counter()
        resources = await self._resources_for(tenant, {s.resource_id for s in fold.live})
        deliveries = [await sink.publish(tenant, resources, fold.live, now_ns) for sink in self.sinks]
        report.send_seconds += time.perf_counter() - started
        return _InFlight((tenant, slot), token, deliveries, fold.emitted, fold.version, fold.zero_owed)

    async def _resources_for(self, tenant: str, needed: Collection[str]) -> dict[str, Attributes]:
        known = self._resources.get(tenant, {})
        if any(rid not in known for rid in needed):
            known = self._resources[tenant] = await self.store.resources(tenant)
        return known

    async def _confirm(self, sent: _InFlight, now_ns: int, report: EmitReport) -> None:
        """Wait for a slot's deliveries; only then may the next fold forget what went out.

        A failure raises, and the slot is not recorded as published (its exemplars and DELTA
        values go out again at the next flush).
        """
        started = time.perf_counter()
        for delivery in sent.deliveries:
            delivered = await delivery.wait()
            report.records += delivered.records
            report.bytes += delivered.bytes
            report.too_large += delivered.too_large
        if sent.zero_owed:
            # At once rather than at the next fold: the slot may move before it, and its new
            # owner, unable to tell, would send the zero points again (docs/internals.md).
            tenant, slot = sent.key
            await self.store.confirm_zero(tenant, slot, sent.token, sent.version, sent.zero_owed)
        report.confirm_seconds += time.perf_counter() - started
        report.series += sent.series
        self._published[sent.key] = (sent.token, now_ns)
