"""The in-memory OTLP sink: the Kafka sink's requests, kept instead of sent (``process``, tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.model.series import Attributes, MetricDescriptor, Series, Temporality
from worker.otlp.metrics_encoder import EncodedRequest, encode_slot
from worker.sinks.base import Delivered

__all__ = ["MemorySink", "Published"]


@dataclass(slots=True)
class Published:
    """One slot's publication: the series as folded and the requests they were encoded into."""

    tenant: str
    series: list[Series]
    requests: list[EncodedRequest]


@dataclass(slots=True)
class _Done:
    delivered: Delivered

    async def wait(self) -> Delivered:
        return self.delivered


@dataclass
class MemorySink:
    """Encodes exactly as :class:`worker.sinks.kafka.KafkaSink` does; delivered once kept."""

    descriptors: Mapping[str, MetricDescriptor]
    temporality: Temporality
    max_record_bytes: int
    published: list[Published] = field(default_factory=list)

    async def publish(
        self, tenant: str, resources: Mapping[str, Attributes], series: Sequence[Series], now_ns: int
    ) -> _Done:
        requests = list(
            encode_slot(resources, series, self.descriptors, self.temporality, now_ns, self.max_record_bytes)
        )
        self.published.append(Published(tenant, list(series), requests))
        return _Done(Delivered(records=len(requests), bytes=sum(len(r.data) for r in requests)))

    def take(self) -> list[Published]:
        """What was published since the last call."""
        published, self.published = self.published, []
        return published
