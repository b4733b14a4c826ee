"""The ``Processor`` protocol the pipeline drives, and the per-request stats it adds up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.model.series import MetricDescriptor, TenantDeltas
from worker.otlp.batch import ResourceGroup, SpanBatch

__all__ = ["PipelineStats", "Processor", "ProcessorStats"]


@dataclass(slots=True)
class PipelineStats:
    """What one request did across the processors, for the worker's self-metrics and logs."""

    spans: int = 0
    skipped_no_service: int = 0
    overflowed: int = 0
    edges: int = 0
    dropped_edges: int = 0
    #: Tempo mode: spans Tempo's span metrics leave out (filter_policies), spans outside
    #: metrics_ingestion_time_range_slack, spans whose labels a length limit made invalid.
    filtered: int = 0
    outside_slack: int = 0
    invalid_labels: int = 0


class ProcessorStats(Protocol):
    def add_to(self, total: PipelineStats) -> None:
        """Report this processor's counts in ``total`` (each field has one owning processor)."""


class Processor(Protocol):
    """Spans in, per-series deltas out; pure, no I/O, one instance per event loop."""

    def descriptors(self) -> list[MetricDescriptor]:
        """The metrics this processor emits, in output order."""

    def consume(
        self,
        request: ExportTraceServiceRequest | SpanBatch,
        tenant: str,
        partition: int = 0,
        *,
        groups: list[ResourceGroup] | None = None,
    ) -> ProcessorStats:
        """Aggregate one request read from ``partition``; ``groups`` is ``group_request(request)``."""

    def expire(self, now_ns: int) -> None:
        """Resolve what waited past its deadline at ``now_ns``."""

    def expire_all(self) -> None:
        """End of input: resolve everything still waiting."""

    def take_deltas(self) -> dict[str, TenantDeltas]:
        """Hand over the deltas since the last call, by tenant, and start a new interval."""
