"""A Tempo-mode pipeline (``metrics_generator`` settings) flushed by hand, and readers of its output.

Spans are built with the span-metrics tests' builders (opentelemetry-proto messages); the output is
read back from the OTLP request the worker's encoder writes, keyed by the exact label set, so a
test also notices a label that should not be there.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from state.memory_store import MemoryStore
from tests.unit.processors.spanmetrics.helpers import TENANT, FakeClock, attribute_dict
from worker.config import Settings
from worker.offline import LocalWorker
from worker.processors.base import PipelineStats
from worker.processors.pipeline import Pipeline

#: A label set as a hashable key: sorted (name, value) pairs.
Labels = tuple[tuple[str, Any], ...]


def labels(**pairs: Any) -> Labels:
    return tuple(sorted(pairs.items()))


def tempo_settings(generator: Mapping[str, Any], **other: Any) -> Settings:
    return Settings.model_validate({"metrics_generator": dict(generator), **other})


class TempoRun:
    """Settings -> the worker's Pipeline, memory store, fold and encoder, with a fake clock."""

    def __init__(
        self,
        generator: Mapping[str, Any],
        *,
        clock: FakeClock | None = None,
        tenant: str = TENANT,
        **other: Any,
    ):
        self.settings = tempo_settings(generator, **other)
        self.clock = clock or FakeClock()
        self.tenant = tenant
        self.pipeline = Pipeline(self.settings, clock=self.clock)
        if self.pipeline.tempo is not None:
            self.pipeline.tempo._uniform = random.Random(1234).random
        self.store = MemoryStore(
            slots=1,
            max_exemplars=self.pipeline.max_exemplars,
            exp_max_size=self.settings.exponential_max_size,
            active_series_limit=self.settings.worker.max_active_series_per_tenant,
            overflow_attributes=self.settings.overflow_attributes,
        )
        self.worker = LocalWorker(
            self.store,
            self.pipeline.descriptors(),
            self.settings.temporality,
            series_expiration_s=self.settings.series_expiration,
            resource_expiration_s=self.settings.resource_expiration,
        )

    def consume(self, *requests: ExportTraceServiceRequest) -> PipelineStats:
        total = PipelineStats()
        for request in requests:
            stats = self.pipeline.consume(request, self.tenant)
            total.spans += stats.spans
        return total

    def flush(self, advance_s: float = 15.0) -> ExportMetricsServiceRequest:
        self.pipeline.expire_all()
        self.worker.merge(self.pipeline.take_deltas(), self.pipeline.export_pending(self.worker.tokens))
        published = self.worker.emit(self.clock.advance(advance_s))
        data = b"".join(r.data for one in published if one.tenant == self.tenant for r in one.requests)
        return ExportMetricsServiceRequest.FromString(data)

    def run(self, *requests: ExportTraceServiceRequest) -> ExportMetricsServiceRequest:
        self.consume(*requests)
        return self.flush()


def series(request: ExportMetricsServiceRequest, name: str, kind: str | None = None) -> dict[Labels, Any]:
    """label set -> the last data point of metric ``name`` (``kind``: the data field, e.g.
    ``exponential_histogram``, when two metrics share the name)."""
    found: dict[Labels, Any] = {}
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                data_kind = metric.WhichOneof("data")
                if metric.name != name or (kind is not None and data_kind != kind):
                    continue
                for point in getattr(metric, data_kind).data_points:
                    found[tuple(sorted(attribute_dict(point.attributes).items()))] = point
    return found


def values(request: ExportMetricsServiceRequest, name: str) -> dict[Labels, int]:
    """label set -> value of a sum (``as_int``) or count of a histogram."""
    result: dict[Labels, int] = {}
    for key, point in series(request, name).items():
        is_sum = hasattr(point, "as_int") and point.HasField("as_int")
        result[key] = int(point.as_int) if is_sum else int(point.count)
    return result


def resources(request: ExportMetricsServiceRequest) -> list[dict[str, Any]]:
    return [attribute_dict(rm.resource.attributes) for rm in request.resource_metrics]


def scopes(request: ExportMetricsServiceRequest) -> set[str]:
    return {sm.scope.name for rm in request.resource_metrics for sm in rm.scope_metrics}
