"""The pipeline drives every processor through the ``Processor`` protocol and sums their stats."""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.unit.processors.servicegraphs.helpers import (
    CLIENT,
    SERVER,
    make_request,
    make_span,
    resource_spans,
)
from tests.unit.processors.spanmetrics.helpers import FakeClock
from worker.config import Settings
from worker.model.series import MetricDescriptor, MetricKind, TenantDeltas
from worker.otlp.batch import ResourceGroup, SpanBatch
from worker.processors.base import PipelineStats, Processor
from worker.processors.pipeline import Pipeline


def _settings(service_graphs: bool, max_items: int = 10_000) -> Settings:
    return Settings.model_validate({"servicegraphs": {"enabled": service_graphs, "max_items": max_items}})


def _request() -> ExportTraceServiceRequest:
    """A client/server pair (one edge), a lone client (one pending half-edge), a span without service."""
    return make_request(
        resource_spans("frontend", make_span(CLIENT, trace=1, span=10), make_span(CLIENT, trace=2, span=20)),
        resource_spans("checkout", make_span(SERVER, trace=1, span=11, parent=10)),
        resource_spans(None, make_span(SERVER, trace=3, span=30)),
    )


def test_stats_come_from_the_processor_that_owns_them() -> None:
    pipeline = Pipeline(_settings(True), clock=FakeClock())
    assert pipeline.processors == [pipeline.spanmetrics, pipeline.servicegraphs]
    stats = pipeline.consume(_request(), "t", partition=3)
    # spans and skipped spans are the span-metrics processor's counts (it sees every kind).
    assert stats == PipelineStats(spans=3, skipped_no_service=1, overflowed=0, edges=1, dropped_edges=0)
    assert pipeline.pending_edges() == 1
    assert pipeline.servicegraphs is not None and pipeline.servicegraphs.partitions() == [3]


def test_dropped_half_edges_are_counted() -> None:
    pipeline = Pipeline(_settings(True, max_items=1), clock=FakeClock())
    request = make_request(
        resource_spans("frontend", make_span(CLIENT, trace=1, span=10), make_span(CLIENT, trace=2, span=20))
    )
    assert pipeline.consume(request, "t").dropped_edges == 1


def test_without_service_graphs_only_span_metrics_run() -> None:
    pipeline = Pipeline(_settings(False), clock=FakeClock())
    assert pipeline.processors == [pipeline.spanmetrics] and pipeline.servicegraphs is None
    stats = pipeline.consume(_request(), "t")
    assert stats == PipelineStats(spans=3, skipped_no_service=1)
    assert set(pipeline.descriptors()) == {"calls", "duration"}
    assert pipeline.export_pending([0]) == {} and pipeline.pending_edges() == 0


def test_descriptors_and_deltas_of_every_processor() -> None:
    pipeline = Pipeline(_settings(True), clock=FakeClock())
    names = list(pipeline.descriptors())
    assert names[:2] == ["calls", "duration"]
    assert "traces_service_graph_request_total" in names
    pipeline.consume(_request(), "t")
    deltas = pipeline.take_deltas()
    metrics = {series.metric for series in deltas["t"].series}
    assert "duration" in metrics and "traces_service_graph_request_total" in metrics
    assert pipeline.take_deltas() == {}


@dataclass
class _Stats:
    requests: int

    def add_to(self, total: PipelineStats) -> None:
        total.edges += 100 * self.requests


@dataclass
class _Recorder:
    """A third processor: the pipeline drives it like the others."""

    calls: list[str] = field(default_factory=list)

    def descriptors(self) -> list[MetricDescriptor]:
        return [MetricDescriptor("recorded_total", MetricKind.SUM, order=0)]

    def consume(
        self,
        request: ExportTraceServiceRequest | SpanBatch,
        tenant: str,
        partition: int = 0,
        *,
        groups: list[ResourceGroup] | None = None,
    ) -> _Stats:
        assert groups is not None, "the pipeline reads the request once for all processors"
        self.calls.append(f"consume {tenant} {partition} {len(groups)}")
        return _Stats(1)

    def expire(self, now_ns: int) -> None:
        self.calls.append(f"expire {now_ns}")

    def expire_all(self) -> None:
        self.calls.append("expire_all")

    def take_deltas(self) -> dict[str, TenantDeltas]:
        self.calls.append("take_deltas")
        return {"other": TenantDeltas()}


def test_a_processor_added_to_the_list_is_driven_alike() -> None:
    pipeline = Pipeline(_settings(False), clock=FakeClock())
    recorder = _Recorder()
    processor: Processor = recorder
    pipeline.processors.append(processor)
    assert pipeline.consume(_request(), "t", 2).edges == 100
    pipeline.expire(5)
    pipeline.expire_all()
    assert set(pipeline.take_deltas()) == {"t", "other"}
    assert "recorded_total" in pipeline.descriptors()
    assert recorder.calls == ["consume t 2 3", "expire 5", "expire_all", "take_deltas"]
