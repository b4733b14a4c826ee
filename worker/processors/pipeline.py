"""The configured processors as one unit: span metrics always, service graphs when enabled.

The stream worker and the offline command both drive processors the same way (consume, expire,
take deltas, describe metrics); this keeps that in one place, pure and without I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.config import Settings
from worker.model.series import MetricDescriptor, TenantDeltas, merge_deltas
from worker.otlp.batch import SpanBatch, group_request
from worker.processors.servicegraphs.processor import ServiceGraphsProcessor
from worker.processors.spanmetrics.processor import SpanMetricsProcessor

__all__ = ["Pipeline", "PipelineStats", "merge_deltas"]


@dataclass(slots=True)
class PipelineStats:
    spans: int = 0
    skipped_no_service: int = 0
    overflowed: int = 0
    edges: int = 0
    dropped_edges: int = 0


class Pipeline:
    def __init__(self, settings: Settings, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.spanmetrics = SpanMetricsProcessor(settings.spanmetrics, clock=clock)
        self.servicegraphs = (
            ServiceGraphsProcessor(settings.servicegraphs, clock=clock)
            if settings.servicegraphs.enabled
            else None
        )

    @property
    def max_exemplars(self) -> int:
        return self.spanmetrics.max_exemplars

    def descriptors(self) -> dict[str, MetricDescriptor]:
        described = list(self.spanmetrics.descriptors())
        if self.servicegraphs is not None:
            described.extend(self.servicegraphs.descriptors())
        return {d.name: d for d in described}

    def consume(
        self, request: ExportTraceServiceRequest | SpanBatch, tenant: str, partition: int = 0
    ) -> PipelineStats:
        """Aggregate one request with every processor.

        ``request`` is best in the batch schema (``decode_batch``, :mod:`worker.otlp.batch`); a
        standard request is converted first, at the cost of serializing and parsing it again.
        The request's resources and spans are read once for both processors.
        """
        groups = group_request(request)
        spans = self.spanmetrics.consume(request, tenant, groups=groups)
        stats = PipelineStats(
            spans=spans.spans, skipped_no_service=spans.skipped_no_service, overflowed=spans.overflowed
        )
        if self.servicegraphs is not None:
            graphs = self.servicegraphs.consume(request, tenant, partition, groups=groups)
            stats.edges = graphs.edges
            stats.dropped_edges = graphs.dropped
        return stats

    def expire(self, now_ns: int) -> None:
        """Turn half-edges older than ``wait`` into virtual-node edges or unpaired counts."""
        if self.servicegraphs is not None:
            self.servicegraphs.expire(now_ns)

    def expire_all(self) -> None:
        """End of input (offline): nothing more will arrive, so every pending half-edge resolves."""
        if self.servicegraphs is not None:
            self.servicegraphs.expire_all()

    def take_deltas(self) -> dict[str, TenantDeltas]:
        if self.servicegraphs is None:
            return self.spanmetrics.take_deltas()
        return merge_deltas(self.spanmetrics.take_deltas(), self.servicegraphs.take_deltas())

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
