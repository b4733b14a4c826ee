"""The Kafka OTLP sink: folded series as size-limited OTLP metrics records with tenant and worker headers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from worker.model.series import Attributes, MetricDescriptor, Series, Temporality
from worker.otlp.metrics_encoder import encode_slot
from worker.sinks.base import Delivered

__all__ = ["WORKER_HEADER", "KafkaDelivery", "KafkaSink"]

#: Which worker emitted a record: for operators tracing a series, and for the tests.
WORKER_HEADER = "x-spanmetrics-worker"

_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


@dataclass(slots=True)
class KafkaDelivery:
    """Records handed to the producer; :meth:`wait` awaits the broker's acknowledgements."""

    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    handed: Delivered = field(default_factory=Delivered)

    async def wait(self) -> Delivered:
        results = await asyncio.gather(*self.futures, return_exceptions=True)
        delivered = self.handed
        for result in results:
            if isinstance(result, _TOO_LARGE):
                delivered.too_large += 1  # refused by the broker: refused again at every flush
                delivered.records -= 1
            elif isinstance(result, BaseException):
                raise result
        return delivered


class KafkaSink:
    """Publishes to ``topic``; delivered means acknowledged by the broker per the producer's acks."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        tenant_header: str,
        default_tenant: str,
        descriptors: Mapping[str, MetricDescriptor],
        temporality: Temporality,
        max_record_bytes: int,
        worker_id: str = "",
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.tenant_header = tenant_header
        self.default_tenant = default_tenant
        self.descriptors = dict(descriptors)
        self.temporality = temporality
        self.max_record_bytes = max_record_bytes
        self.worker_id = worker_id.encode()

    def _headers(self, tenant: str) -> list[tuple[str, bytes]]:
        headers = [(WORKER_HEADER, self.worker_id)]
        if tenant != self.default_tenant:
            headers.append((self.tenant_header, tenant.encode("utf-8")))
        return headers

    async def publish(
        self, tenant: str, resources: Mapping[str, Attributes], series: Sequence[Series], now_ns: int
    ) -> KafkaDelivery:
        headers = self._headers(tenant)
        delivery = KafkaDelivery()
        handed = delivery.handed
        # Encoding is CPU work per series: in a thread, so that the event loop keeps running
        # while a large slot is encoded (the GIL is handed over every few ms).
        descriptors, temporality, limit = self.descriptors, self.temporality, self.max_record_bytes
        requests = await asyncio.to_thread(
            lambda: list(encode_slot(resources, series, descriptors, temporality, now_ns, limit))
        )
        for request in requests:
            try:
                delivery.futures.append(
                    await self.producer.send(self.topic, request.data, key=request.key, headers=headers)
                )
            except _TOO_LARGE:
                handed.too_large += 1  # one series over the producer's limit: never sendable
                continue
            handed.records += 1
            handed.bytes += len(request.data)
        return delivery
