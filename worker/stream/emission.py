"""Emission: the owner of a slot folds its delta log into its records, then publishes them.

Each series belongs to one slot (``slot_of(digest, partitions)``) and the worker that holds input
partition N emits slot N, so every live series is published once per flush by exactly one
worker, including idle series, until they expire. The fold is committed (fenced by the owner's
token) before anything is published, so what goes out is always what Redis holds. Records stay
under the configured size and carry the tenant header of the input.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from state.redis_store import RedisStateStore
from worker.model.series import Attributes, MetricDescriptor, Series, Temporality
from worker.otlp.metrics_encoder import encode_requests, fit_otlp

__all__ = ["WORKER_HEADER", "EmitReport", "Emitter"]

WORKER_HEADER = "x-spanmetrics-worker"

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
@dataclass(slots=True)
class EmitReport:
    series: int = 0
    records: int = 0
    bytes: int = 0
    expired: int = 0
    #: New series the tenant's active-series limit refused (folded into the overflow series).
    overflowed: int = 0
    slots: list[int] = field(default_factory=list)
    #: Slots lost while this emission ran (revoked, or taken over while the process was frozen):
    #: not published, so no stale value goes out under a time stamp another owner also uses.
    skipped: list[int] = field(default_factory=list)
    #: Records not published because they are too large for the producer or the broker (a
    #: single series with a 10 MB attribute value, say); everything else still goes out.
    too_large: int = 0
    #: Where the emission's time went: folding (Redis reads, the fold, its commit), encoding and
    #: handing records to the producer, and waiting for the broker's acknowledgements.
    fold_seconds: float = 0.0
    send_seconds: float = 0.0
    confirm_seconds: float = 0.0


class Emitter:
    def __init__(
        self,
        store: RedisStateStore,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        tenant_header: str,
        default_tenant: str,
        descriptors: Mapping[str, MetricDescriptor],
        temporality: Temporality,
        expiration_s: float,
        max_record_bytes: int,
        worker_id: str = "",
    ) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        self.tenant_header = tenant_header
        self.default_tenant = default_tenant
        self.descriptors = dict(descriptors)
        self.temporality = temporality
        self.expiration_ns = int(expiration_s * 1e9)
        self.max_record_bytes = max_record_bytes
        self.worker_id = worker_id.encode()
        self._resources: dict[str, dict[str, Attributes]] = {}
        #: (tenant, slot) -> (token, time) of this worker's last successful publication of the
        #: slot: the next fold may forget what that publication carried (exemplars; DELTA values).
        self._published: dict[tuple[str, int], tuple[int, int]] = {}

    async def _resources_for(self, tenant: str, needed: Collection[str]) -> dict[str, Attributes]:
        known = self._resources.get(tenant, {})
        if any(rid not in known for rid in needed):
            known = self._resources[tenant] = await self.store.resources(tenant)
        return known

    def _headers(self, tenant: str) -> list[tuple[str, bytes]]:
        # Which worker emitted a record: for operators tracing a series, and for the tests.
        headers = [(WORKER_HEADER, self.worker_id)]
        if tenant != self.default_tenant:
            headers.append((self.tenant_header, tenant.encode("utf-8")))
        return headers

    async def emit(
        self,
        tokens: Mapping[int, int],
        now_ns: int,
        *,
        still_owned: Callable[[int], Awaitable[bool]] | None = None,
    ) -> EmitReport:
        """Fold and publish every live series of the owned slots (slot -> fencing token).

        ``still_owned(slot)`` is asked right before each publication: the fold's commit proved
        ownership, but a rebalance (or a process frozen past its session timeout) can move a
        slot to another worker in the meantime.
        """
        report = EmitReport(slots=sorted(tokens))
        self._published = {key: value for key, value in self._published.items() if key[1] in tokens}
        if not tokens:
            return report
        expire_before = now_ns - self.expiration_ns if self.expiration_ns else 0
        delta = self.temporality is Temporality.DELTA
        # One slot's records are delivered while the next slot is folded and encoded: the
        # broker's acknowledgements overlap Python work, and at most two slots' records are
        # held at a time.
        in_flight: _InFlight | None = None
        for tenant in await self.store.tenants():
            for slot in sorted(tokens):
                if slot in report.skipped:
                    continue
                token = tokens[slot]
                previous = self._published.pop((tenant, slot), None)
                started = time.perf_counter()
                fold = await self.store.fold_slot(
                    tenant,
                    slot,
                    token,
                    expire_before_ns=expire_before,
                    delta_mode=delta,
                    reset_emitted_ns=previous[1] if previous is not None and previous[0] == token else None,
                )
                report.fold_seconds += time.perf_counter() - started
                if not fold.committed:
                    report.skipped.append(slot)
                    continue
                report.expired += fold.expired
                report.overflowed += fold.overflowed
                if not fold.live:
                    self._published[(tenant, slot)] = (token, now_ns)
                    continue
                if still_owned is not None and not await still_owned(slot):
                    report.skipped.append(slot)
                    continue
                started = time.perf_counter()
                sent = await self._send(tenant, fold.live, now_ns, report)
                report.send_seconds += time.perf_counter() - started
                if in_flight is not None:
                    await self._confirm(in_flight, now_ns, report)
                in_flight = _InFlight((tenant, slot), token, sent, fold.emitted)
        if in_flight is not None:
            await self._confirm(in_flight, now_ns, report)
        return report

    async def _confirm(self, sent: _InFlight, now_ns: int, report: EmitReport) -> None:
        """Wait for a slot's records; only then may the next fold forget what went out.

        A record the broker refuses as too large would be refused at every flush: it is counted
        and skipped, so it cannot hold back the series emitted after it. Any other failure
        raises, and the slot is not recorded as published (its exemplars and DELTA values go
        out again at the next flush).
        """
        started = time.perf_counter()
        results = await asyncio.gather(*sent.deliveries, return_exceptions=True)
        report.confirm_seconds += time.perf_counter() - started
        for result in results:
            if isinstance(result, _TOO_LARGE):
                report.too_large += 1
                report.records -= 1
            elif isinstance(result, BaseException):
                raise result
        report.series += sent.series
        self._published[sent.key] = (sent.token, now_ns)

    async def _send(
        self, tenant: str, series: Sequence[Series], now_ns: int, report: EmitReport
    ) -> list[asyncio.Future[Any]]:
        """Encode and hand a slot's series to the producer; returns the delivery futures."""
        for one in series:
            fit_otlp(one)
        resources = await self._resources_for(tenant, {s.resource_id for s in series})
        headers = self._headers(tenant)
        deliveries = []
        for request in encode_requests(
            resources,
            series,
            self.descriptors,
            self.temporality,
            now_ns,
            self.max_record_bytes,
            reuse_attribute_tuples=False,  # decoded afresh from Redis at every fold
        ):
            try:
                deliveries.append(
                    await self.producer.send(self.topic, request.data, key=request.key, headers=headers)
                )
            except _TOO_LARGE:
                report.too_large += 1  # one series over the producer's limit: never sendable
                continue
            report.records += 1
            report.bytes += len(request.data)
        return deliveries


@dataclass(slots=True)
class _InFlight:
    """A slot's records handed to the producer, not yet acknowledged."""

    key: tuple[str, int]
    token: int
    deliveries: list[asyncio.Future[Any]]
    series: int
