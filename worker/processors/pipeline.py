"""The configured processors as one unit (span metrics always, service graphs when enabled)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.config import Settings
from worker.model.series import MetricDescriptor, TenantDeltas, merge_deltas
from worker.otlp.batch import ResourceGroup, SpanBatch, group_request
from worker.processors.base import PipelineStats, Processor
from worker.processors.servicegraphs.processor import ServiceGraphsProcessor
from worker.processors.spanmetrics.processor import SpanMetricsProcessor

__all__ = ["Pipeline", "PipelineStats"]


class Pipeline:
    """Drives every processor alike; the service graphs' pending half-edges stay explicit."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.spanmetrics = SpanMetricsProcessor(settings.spanmetrics, clock=clock)
        self.servicegraphs = (
            ServiceGraphsProcessor(settings.servicegraphs, clock=clock)
            if settings.servicegraphs.enabled
            else None
        )
        self.processors: list[Processor] = [self.spanmetrics]
        if self.servicegraphs is not None:
            self.processors.append(self.servicegraphs)

    @property
    def max_exemplars(self) -> int:
        """Exemplars the state keeps per point: one cap for every metric, so the larger one."""
        if self.servicegraphs is None:
            return self.spanmetrics.max_exemplars
        return max(self.spanmetrics.max_exemplars, self.servicegraphs.max_exemplars)

    def descriptors(self) -> dict[str, MetricDescriptor]:
        return {d.series_metric: d for processor in self.processors for d in processor.descriptors()}

    def consume(
        self,
        request: ExportTraceServiceRequest | SpanBatch,
        tenant: str,
        partition: int = 0,
        *,
        groups: list[ResourceGroup] | None = None,
    ) -> PipelineStats:
        """Aggregate one request with every processor, reading its resources and spans once.

        ``request`` is best a ``SpanBatch`` (``decode_spans``, which gives ``groups`` too); a
        standard request is converted first, at the cost of serializing and parsing it again.
        """
        if groups is None:
            groups = group_request(request)
        stats = PipelineStats()
        for processor in self.processors:
            processor.consume(request, tenant, partition, groups=groups).add_to(stats)
        return stats

    def expire(self, now_ns: int) -> None:
        for processor in self.processors:
            processor.expire(now_ns)

    def expire_all(self) -> None:
        """End of input (offline): nothing more will arrive."""
        for processor in self.processors:
            processor.expire_all()

    def take_deltas(self) -> dict[str, TenantDeltas]:
        return merge_deltas(*(processor.take_deltas() for processor in self.processors))

    def export_pending(self, partitions: Iterable[int]) -> dict[int, bytes]:
        """Pending half-edges per partition, saved with the offsets they belong to."""
        if self.servicegraphs is None:
            return {}
        return {p: self.servicegraphs.export_pending(p) for p in partitions}

    def restore_pending(self, partition: int, blob: bytes | None, now_ns: int) -> int:
        if self.servicegraphs is None or not blob:
            return 0
        return self.servicegraphs.restore_pending(partition, blob, now_ns)

    def drop_partition(self, partition: int) -> None:
        if self.servicegraphs is not None:
            self.servicegraphs.drop_partition(partition)

    def pending_edges(self) -> int:
        return self.servicegraphs.pending_count() if self.servicegraphs is not None else 0
