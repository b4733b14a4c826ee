"""Span builders and a small pipeline for the service-graph unit tests.

Spans are built as opentelemetry-proto messages directly; results are read back from the
processor's deltas merged and folded as the worker does (``worker.offline.LocalWorker``), keyed by the exact
label set, so a test also notices a label that should not be there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from state.codec import attributes_of_parts
from state.memory_store import MemoryStore

# The clock, the time constants and the attribute builders are the span-metrics tests' own.
from tests.unit.processors.spanmetrics.helpers import (  # noqa: F401 - re-exported for the graph tests
    BASE_NS,
    MS,
    SECOND,
    TENANT,
    FakeClock,
    any_value,
    key_values,
)
from worker.config import ServiceGraphsConfig
from worker.model.series import Series, Temporality, TenantDeltas, with_companions
from worker.offline import LocalWorker
from worker.otlp.batch import parse_batch
from worker.processors.servicegraphs import ServiceGraphsProcessor, ServiceGraphStats

SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT
PRODUCER = Span.SPAN_KIND_PRODUCER
CONSUMER = Span.SPAN_KIND_CONSUMER
INTERNAL = Span.SPAN_KIND_INTERNAL
UNSPECIFIED = Span.SPAN_KIND_UNSPECIFIED
OK = Status.STATUS_CODE_OK
ERROR = Status.STATUS_CODE_ERROR
UNSET = Status.STATUS_CODE_UNSET

REQUEST_TOTAL = "traces_service_graph_request_total"
REQUEST_FAILED_TOTAL = "traces_service_graph_request_failed_total"
SERVER_SECONDS = "traces_service_graph_request_server_seconds"
CLIENT_SECONDS = "traces_service_graph_request_client_seconds"
MESSAGING_SECONDS = "traces_service_graph_request_messaging_system_seconds"
UNPAIRED = "traces_service_graph_unpaired_spans_total"
DROPPED = "traces_service_graph_dropped_spans_total"


def trace_id(number: int) -> bytes:
    return number.to_bytes(16, "big")


def span_id(number: int) -> bytes:
    return number.to_bytes(8, "big")


def make_span(
    kind: int,
    *,
    trace: int = 1,
    span: int,
    parent: int | None = None,
    start_ms: float = 0.0,
    duration_ms: float = 10.0,
    status: int = UNSET,
    attributes: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    name: str = "operation",
) -> Span:
    """A span of ``kind``; times are milliseconds after :data:`BASE_NS`."""
    start = BASE_NS + round(start_ms * MS)
    return Span(
        trace_id=trace_id(trace),
        span_id=span_id(span),
        parent_span_id=span_id(parent) if parent is not None else b"",
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=start,
        end_time_unix_nano=start + round(duration_ms * MS),
        attributes=key_values(attributes),
        status=Status(code=status),  # type: ignore[arg-type]
    )


def resource_spans(service: str | None, *spans: Span, **resource: Any) -> ResourceSpans:
    """One resource (``service.name`` unless None, plus ``resource``) holding ``spans``."""
    attributes = dict(resource)
    if service is not None:
        attributes = {"service.name": service, **attributes}
    return ResourceSpans(
        resource=Resource(attributes=key_values(attributes)),
        scope_spans=[ScopeSpans(spans=list(spans))],
    )


def make_request(*items: ResourceSpans) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=list(items))


Labels = frozenset[tuple[str, Any]]


def consume_edges_native(
    processor: ServiceGraphsProcessor, data: bytes, tenant: str, partition: int
) -> ServiceGraphStats:
    """What the worker's ingest does with a run of records: the compiled edge scanner, or the
    pure path when it does not handle the bytes."""
    scanned = processor.scan(data)
    if scanned is None:
        return processor.consume(parse_batch(data), tenant, partition)
    return processor.consume_scanned(scanned, tenant, partition)


class TwinProcessor:
    """The pure processor and, when the compiled ingest serves the configuration, a native twin
    fed the same requests as serialized bytes: every call goes to both and every answer (stats,
    deltas, pending edges, counters) must be identical; the pure one's is returned."""

    def __init__(self, config: ServiceGraphsConfig, clock: FakeClock) -> None:
        self.pure = ServiceGraphsProcessor(config, clock=clock, compiled=False)
        native = ServiceGraphsProcessor(config, clock=clock)
        self.native = native if native.native_ready else None

    def consume(self, request: Any, tenant: str, partition: int = 0) -> ServiceGraphStats:
        stats = self.pure.consume(request, tenant, partition)
        if self.native is not None:
            twin = consume_edges_native(self.native, request.SerializeToString(), tenant, partition)
            assert twin == stats, "the native edge scan's stats differ"
        return stats

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.pure, name)
        if self.native is None:
            return found
        twin = getattr(self.native, name)
        if not callable(found):
            assert repr(twin) == repr(found), f"the native twin's {name} differs"
            return found

        def both(*args: Any, **kwargs: Any) -> Any:
            result = found(*args, **kwargs)
            assert repr(twin(*args, **kwargs)) == repr(result), f"the native twin's {name}() differs"
            return result

        return both


class Harness:
    """Processor + fake clock + MemoryStore: consume, expire, then read series by exact labels.

    ``processor`` is a :class:`TwinProcessor`: every test also checks the compiled edge scan.
    """

    def __init__(self, config: ServiceGraphsConfig | None = None, **options: Any) -> None:
        self.config = config or ServiceGraphsConfig(**options)
        self.clock = FakeClock()
        self.processor: Any = TwinProcessor(self.config, self.clock)
        self.descriptors = {d.series_metric: d for d in self.processor.descriptors()}
        self.worker = LocalWorker(
            MemoryStore(slots=1, max_exemplars=self.processor.max_exemplars),
            self.descriptors,
            Temporality.CUMULATIVE,
        )

    def consume(self, *items: ResourceSpans, tenant: str = TENANT, partition: int = 0) -> ServiceGraphStats:
        return self.processor.consume(make_request(*items), tenant, partition)

    def expire_after(self, seconds: float) -> None:
        self.processor.expire(self.clock.advance(seconds))

    def take(self) -> dict[str, TenantDeltas]:
        deltas = self.processor.take_deltas()
        for tenant_deltas in deltas.values():
            ids = [series.series_id for series in tenant_deltas.series]
            assert len(ids) == len(set(ids)), "take_deltas returned a series twice"
            assert {s.resource_id for s in tenant_deltas.series} <= set(tenant_deltas.resources)
        self.worker.merge(deltas)
        return deltas

    def series(self, tenant: str = TENANT) -> dict[tuple[str, Labels], Series]:
        """Everything recorded so far for ``tenant``, by (metric, exact label set)."""
        self.take()
        live = [s for one in self.worker.emit(self.clock()) if one.tenant == tenant for s in one.series]
        emitted = with_companions(live)
        for series in emitted:  # folded series carry their attributes in their OTLP encoding
            series.attributes = attributes_of_parts(series.attribute_parts or ())
        return {(s.metric, frozenset(s.attributes)): s for s in emitted}

    def get(self, metric: str, tenant: str = TENANT, **labels: str) -> Series | None:
        return self.series(tenant).get((metric, frozenset(labels.items())))

    def count(self, metric: str, tenant: str = TENANT, **labels: str) -> int:
        """The value of the series with exactly ``labels`` (0 when there is none)."""
        found = self.get(metric, tenant, **labels)
        return found.count if found is not None else 0

    def label_sets(self, metric: str, tenant: str = TENANT) -> list[dict[str, Any]]:
        return sorted(
            (dict(labels) for name, labels in self.series(tenant) if name == metric),
            key=lambda item: sorted(item.items()),
        )

    def metrics_request(self, tenant: str = TENANT) -> ExportMetricsServiceRequest:
        self.take()
        requests = [r for one in self.worker.emit(self.clock()) if one.tenant == tenant for r in one.requests]
        assert requests
        return ExportMetricsServiceRequest.FromString(b"".join(request.data for request in requests))


def edge_labels(client: str, server: str, connection_type: str = "", **extra: str) -> dict[str, str]:
    labels = {"client": client, "server": server, **extra}
    if connection_type:
        labels["connection_type"] = connection_type
    return labels


def queue_database_trace() -> list[Any]:
    """The three edges of testdata/trace-with-queue-database.json: requester -> server (HTTP),
    server -> postgres (db.name, db.system), requester -> recorder over rabbitmq."""
    return [
        resource_spans(
            "mythical-requester",
            make_span(CLIENT, span=1, duration_ms=45.8),
            make_span(PRODUCER, span=3, duration_ms=0.069, attributes={"messaging.system": "rabbitmq"}),
        ),
        resource_spans(
            "mythical-server",
            make_span(SERVER, span=2, parent=1, duration_ms=30.0),
            make_span(
                CLIENT,
                span=4,
                parent=2,
                duration_ms=23.8,
                attributes={"db.name": "postgres", "db.system": "postgresql"},
            ),
        ),
        resource_spans(
            "mythical-recorder",
            make_span(CONSUMER, span=5, parent=3, start_ms=10, duration_ms=0.699),
        ),
    ]
