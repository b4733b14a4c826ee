"""Emission: the owner of a slot reads its series from Redis and publishes them.

Each series belongs to one slot (``slot_of(digest, partitions)``) and the worker that holds input
partition N emits slot N, so every live series is published once per flush by exactly one
worker, including idle series, until they expire. Records stay under the configured size and
carry the tenant header of the input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer

from state.store import RedisStateStore, StoredSeries
from worker.config import Temporality
from worker.otlp.metrics_builder import split_by_size
from worker.series import Attributes, MetricDescriptor

__all__ = ["WORKER_HEADER", "EmitReport", "Emitter"]

WORKER_HEADER = "x-spanmetrics-worker"


@dataclass(slots=True)
class EmitReport:
    series: int = 0
    records: int = 0
    bytes: int = 0
    expired: int = 0
    slots: list[int] = field(default_factory=list)


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

    async def emit(self, slots: Collection[int], now_ns: int) -> EmitReport:
        """Publish every live series of ``slots`` for every tenant, then tidy up state."""
        report = EmitReport(slots=sorted(slots))
        if not slots:
            return report
        expire_before = now_ns - self.expiration_ns if self.expiration_ns else 0
        delta = self.temporality is Temporality.DELTA
        for tenant in await self.store.tenants():
            for slot in sorted(slots):
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
                if live:
                    await self._publish(tenant, live, now_ns, report)
                _, expired = await self.store.after_emit(
                    tenant, slot, touched, expire_before_ns=expire_before, delta_mode=delta, now_ns=now_ns
                )
                report.expired += expired
        return report

    async def _publish(self, tenant: str, live: list[StoredSeries], now_ns: int, report: EmitReport) -> None:
        series = [item.series for item in live]
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
            pending.append(await self.producer.send(self.topic, data, key=key, headers=headers))
            report.records += 1
            report.bytes += len(data)
        # Delivery must be confirmed before state is tidied (exemplars trimmed, deltas subtracted).
        await asyncio.gather(*pending)
        report.series += len(series)
