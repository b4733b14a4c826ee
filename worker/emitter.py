"""Emission: the owner of a slot reads its series from Redis and publishes them.

Each series belongs to one slot (``slot_of(digest, partitions)``) and the worker that holds input
partition N emits slot N, so every live series is published once per flush by exactly one
worker, including idle series, until they expire. Records stay under the configured size and
carry the tenant header of the input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from state.store import RedisStateStore, StoredSeries
from worker.config import Temporality
from worker.otlp.metrics_builder import split_by_size
from worker.series import Attributes, MetricDescriptor, Series

__all__ = ["WORKER_HEADER", "EmitReport", "Emitter"]

WORKER_HEADER = "x-spanmetrics-worker"

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1


def _fit_otlp(series: Series) -> None:
    """Keep every value within its OTLP field (int64 counts, uint64 buckets and times).

    State written before a limit existed, or pushed past one (counts and times come back from
    Lua doubles), must never fail the emission: one value out of range would fail it again at
    every flush, for every series after it.
    Cumulative counts never go below zero, so they are clamped to [0, int64 max].
    """
    if not 0 <= series.count <= _INT64_MAX:
        series.count = min(max(series.count, 0), _INT64_MAX)
        if series.buckets:
            series.buckets = [min(max(b, 0), _UINT64_MAX) for b in series.buckets]
        exp = series.exp
        if exp is not None:
            exp.zero_count = min(max(exp.zero_count, 0), _UINT64_MAX)
            exp.counts = [min(max(c, 0), _UINT64_MAX) for c in exp.counts]
    if any(not 0 <= exemplar[3] <= _UINT64_MAX for exemplar in series.exemplars):
        series.exemplars = [
            (trace_id, span_id, value, min(max(time_ns, 0), _UINT64_MAX))
            for trace_id, span_id, value, time_ns in series.exemplars
        ]


@dataclass(slots=True)
class EmitReport:
    series: int = 0
    records: int = 0
    bytes: int = 0
    expired: int = 0
    slots: list[int] = field(default_factory=list)
    #: Slots lost while this emission ran (revoked, or taken over while the process was frozen):
    #: not published, so no stale value goes out under a time stamp another owner also uses.
    skipped: list[int] = field(default_factory=list)
    #: Records not published because they are too large for the producer or the broker (a
    #: single series with a 10 MB attribute value, say); everything else still goes out.
    too_large: int = 0


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
        slots: Collection[int],
        now_ns: int,
        *,
        still_owned: Callable[[int], Awaitable[bool]] | None = None,
    ) -> EmitReport:
        """Publish every live series of ``slots`` for every tenant, then tidy up state.

        ``still_owned(slot)`` is asked right before each publication: ownership was checked when
        the emission began, but a rebalance (or a process frozen past its session timeout) can
        move a slot to another worker in the meantime.
        """
        report = EmitReport(slots=sorted(slots))
        if not slots:
            return report
        expire_before = now_ns - self.expiration_ns if self.expiration_ns else 0
        delta = self.temporality is Temporality.DELTA
        for tenant in await self.store.tenants():
            for slot in sorted(slots):
                if slot in report.skipped:
                    continue
                stored = await self.store.read_slot(tenant, slot)
                if not stored:
                    continue
                live: list[StoredSeries] = []
                touched: list[StoredSeries] = []
                for item in stored:
                    if expire_before and item.series.last_ns < expire_before:
                        touched.append(item)
                    elif delta and item.series.count == 0:
                        continue
                    else:
                        live.append(item)
                        touched.append(item)
                if still_owned is not None and not await still_owned(slot):
                    report.skipped.append(slot)
                    continue
                if live:
                    await self._publish(tenant, live, now_ns, report)
                _, expired = await self.store.after_emit(
                    tenant, slot, touched, expire_before_ns=expire_before, delta_mode=delta, now_ns=now_ns
                )
                report.expired += expired
        return report

    async def _publish(self, tenant: str, live: list[StoredSeries], now_ns: int, report: EmitReport) -> None:
        series = [item.series for item in live]
        for one in series:
            _fit_otlp(one)
        resources = await self._resources_for(tenant, {s.resource_id for s in series})
        headers = self._headers(tenant)
        pending = []
        for request in split_by_size(
            resources, series, self.descriptors, self.temporality, now_ns, self.max_record_bytes
        ):
            data = request.SerializeToString()
            key = (
                request.resource_metrics[0].resource.SerializeToString()[:64]
                if request.resource_metrics
                else None
            )
            try:
                pending.append(await self.producer.send(self.topic, data, key=key, headers=headers))
            except _TOO_LARGE:
                report.too_large += 1  # one series over the producer's limit: never sendable
                continue
            report.records += 1
            report.bytes += len(data)
        # Delivery must be confirmed before state is tidied (exemplars trimmed, deltas subtracted).
        # A record the broker refuses as too large would be refused at every flush: it is counted
        # and skipped, so it cannot hold back the series emitted after it.
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, _TOO_LARGE):
                report.too_large += 1
                report.records -= 1
            elif isinstance(result, BaseException):
                raise result
        report.series += len(series)
