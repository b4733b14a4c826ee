"""Span builders and a small end-to-end pipeline for the span metrics unit tests.

The builders construct opentelemetry-proto messages directly (nothing from ``worker`` is used to
*build* input), and the readers decode the output with their own AnyValue decoder, so a bug in
``worker.model.values`` cannot hide itself in both directions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from state.memory_store import MemoryStore
from worker.config import SpanMetricsConfig
from worker.model.series import TenantDeltas, with_companions
from worker.model.values import python_to_any_value
from worker.offline import LocalWorker
from worker.otlp.batch import parse_batch
from worker.processors.spanmetrics.processor import ConsumeStats, SpanMetricsProcessor

TENANT = "tenant-a"
#: 2023-11-14T22:13:20Z, a round start for span timestamps.
BASE_NS = 1_700_000_000_000_000_000
MS = 1_000_000
SECOND = 1_000_000_000

SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT
INTERNAL = Span.SPAN_KIND_INTERNAL
OK = Status.STATUS_CODE_OK
ERROR = Status.STATUS_CODE_ERROR
UNSET = Status.STATUS_CODE_UNSET


# ---------------------------------------------------------------------------------------- clock


class FakeClock:
    """A unix-nanosecond clock that only moves when told to."""

    def __init__(self, start_ns: int = BASE_NS + 3600 * SECOND) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += round(seconds * SECOND)
        return self.now


# ---------------------------------------------------------------------------------------- input


def any_value(value: Any) -> AnyValue:
    """A Python value as AnyValue, through the product's own conversion."""
    if isinstance(value, AnyValue):
        return value
    if not isinstance(value, str | bool | int | float | bytes | list | tuple | dict):
        raise TypeError(f"no AnyValue for {value!r}")
    out = AnyValue()
    python_to_any_value(value, out)
    return out


def key_values(attributes: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[KeyValue]:
    items = attributes.items() if isinstance(attributes, Mapping) else attributes
    return [KeyValue(key=key, value=any_value(value)) for key, value in items]


_ids = iter(range(1, 1 << 62))


def make_span(
    name: str = "GET /users",
    *,
    kind: int = SERVER,
    status: int = UNSET,
    start_ns: int = BASE_NS,
    duration_ms: float | None = 10.0,
    end_ns: int | None = None,
    attributes: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
    trace_id: bytes | None = None,
    span_id: bytes | None = None,
    trace_state: str = "",
    events: Iterable[Mapping[str, Any]] = (),
) -> Span:
    """A span; ``events`` is a list of event attribute mappings (one event each)."""
    number = next(_ids)
    if end_ns is None:
        end_ns = start_ns + round((duration_ms or 0.0) * MS)
    span = Span(
        trace_id=trace_id if trace_id is not None else number.to_bytes(16, "big"),
        span_id=span_id if span_id is not None else number.to_bytes(8, "big"),
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        attributes=key_values(attributes),
        trace_state=trace_state,
        status=Status(code=status),  # type: ignore[arg-type]
    )
    for index, event_attributes in enumerate(events):
        span.events.add(
            name=f"event-{index}", time_unix_nano=start_ns, attributes=key_values(event_attributes)
        )
    return span


def make_resource_spans(
    resource: Mapping[str, Any] | Iterable[tuple[str, Any]],
    spans: Iterable[Span],
    *,
    scope: str = "",
    scope_version: str = "",
) -> ResourceSpans:
    return ResourceSpans(
        resource=Resource(attributes=key_values(resource)),
        scope_spans=[
            ScopeSpans(scope=InstrumentationScope(name=scope, version=scope_version), spans=list(spans))
        ],
    )


def make_request(*resource_spans: ResourceSpans) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=list(resource_spans))


def simple_request(*spans: Span, service: str = "checkout", **resource: Any) -> ExportTraceServiceRequest:
    """One resource (``service.name`` plus ``resource``) holding ``spans``."""
    return make_request(make_resource_spans({"service.name": service, **resource}, spans))


# ---------------------------------------------------------------------------------------- output


def python_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [python_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: python_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attribute_dict(key_values_: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: python_value(kv.value) for kv in key_values_}


def attribute_types(key_values_: Iterable[KeyValue]) -> dict[str, str | None]:
    return {kv.key: kv.value.WhichOneof("value") for kv in key_values_}


@dataclass
class Point:
    resource: dict[str, Any]
    metric: Metric
    attributes: dict[str, Any]
    proto: Any

    @property
    def value(self) -> int:
        """``as_int`` of a sum point, ``count`` of a histogram point."""
        if self.metric.WhichOneof("data") == "sum":
            return int(self.proto.as_int)
        return int(self.proto.count)


def points(request: ExportMetricsServiceRequest, metric_name: str, *, zero: bool = False) -> list[Point]:
    """The counted data points of ``metric_name`` across all resources; with ``zero``, the
    zero-initialisation points instead. A zero point is recognised (a point followed by one with
    the same attributes: a series is emitted once per flush) and checked wherever it appears:
    only on a CUMULATIVE sum (the connector zero-initialises no histogram), value 0, no
    exemplars, the start of its counted point and an earlier time."""
    found: list[Point] = []
    for resource_metrics in request.resource_metrics:
        resource = attribute_dict(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name != metric_name:
                    continue
                data = getattr(metric, metric.WhichOneof("data"))
                protos = list(data.data_points)
                for index, proto in enumerate(protos):
                    following = protos[index + 1] if index + 1 < len(protos) else None
                    is_zero = following is not None and list(following.attributes) == list(proto.attributes)
                    if is_zero:
                        assert following is not None
                        assert metric.WhichOneof("data") == "sum", "a histogram got a zero point"
                        cumulative = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
                        assert data.aggregation_temporality == cumulative
                        assert proto.HasField("as_int") and proto.as_int == 0 and not proto.exemplars
                        assert proto.start_time_unix_nano == following.start_time_unix_nano
                        assert proto.start_time_unix_nano <= proto.time_unix_nano < following.time_unix_nano
                    if is_zero == zero:
                        found.append(Point(resource, metric, attribute_dict(proto.attributes), proto))
    return found


def metric_names(request: ExportMetricsServiceRequest) -> list[str]:
    return [
        metric.name
        for resource_metrics in request.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    ]


def counts_by(request: ExportMetricsServiceRequest, metric_name: str, *keys: str) -> dict[Any, int]:
    """``{attribute values tuple (or single value): count}`` for one metric."""
    result: dict[Any, int] = {}
    for point in points(request, metric_name):
        values = tuple(point.attributes.get(key) for key in keys)
        label = values[0] if len(values) == 1 else values
        result[label] = result.get(label, 0) + point.value
    return result


def total(request: ExportMetricsServiceRequest, metric_name: str) -> int:
    return sum(point.value for point in points(request, metric_name))


def emitted(deltas: Mapping[str, TenantDeltas]) -> dict[str, TenantDeltas]:
    """The deltas with every paired ``duration`` series followed by its ``calls`` companion.

    ``take_deltas`` hands a paired series over once for both metrics (``Series.companion``);
    this is the series as they are emitted, for tests about what the metrics say.
    """
    return {
        tenant: TenantDeltas(resources=dict(one.resources), series=with_companions(one.series))
        for tenant, one in deltas.items()
    }


# ---------------------------------------------------------------------------------------- native


def consume_native(processor: SpanMetricsProcessor, data: bytes, tenant: str) -> ConsumeStats:
    """What the worker's ingest does with a run of records: the compiled scanner, or the pure
    path when it does not handle the bytes."""
    scanned = processor.scan(data)
    if scanned is None:
        return processor.consume(parse_batch(data), tenant)
    return processor.consume_scanned(scanned, tenant)


def same_deltas(one: Mapping[str, TenantDeltas], other: Mapping[str, TenantDeltas]) -> bool:
    """Identical deltas, field by field and in order; a NaN attribute equals a NaN (``repr``
    writes floats exactly, and tells 0.0 from -0.0)."""
    return repr(one) == repr(other)


# ---------------------------------------------------------------------------------------- pipeline


class Pipeline:
    """Processor + the worker's store, fold and encoder (offline.LocalWorker), flushed by hand
    with a fake clock."""

    def __init__(
        self,
        config: Mapping[str, Any] | SpanMetricsConfig | None = None,
        *,
        clock: FakeClock | None = None,
        uniform: Callable[[], float] | None = None,
        tenant: str = TENANT,
    ) -> None:
        if isinstance(config, SpanMetricsConfig):
            self.config = config
        else:
            self.config = SpanMetricsConfig.model_validate(dict(config or {}))
        self.clock = clock or FakeClock()
        self.tenant = tenant
        self.processor = SpanMetricsProcessor(
            self.config, clock=self.clock, uniform=self._recorded(uniform or random.Random(1234).random)
        )
        #: The same configuration through the compiled ingest, when it serves it: every request
        #: goes through both and every interval's deltas must be identical (see ``take_deltas``).
        self.native: SpanMetricsProcessor | None = None
        if self.processor.native_ready:
            self.native = SpanMetricsProcessor(self.config, clock=self.clock, uniform=self._uniforms.pop)
        self.descriptors = {d.name: d for d in self.processor.descriptors()}
        exponential = self.config.histogram.exponential
        self.store = MemoryStore(
            slots=1,
            max_exemplars=self.processor.max_exemplars,
            exp_max_size=exponential.max_size if exponential else 160,
        )
        self.worker = LocalWorker(
            self.store,
            self.descriptors,
            self.config.aggregation_temporality,
            series_expiration_s=self.config.series_expiration,
            resource_expiration_s=self.config.metrics_expiration,
        )

    def _recorded(self, uniform: Callable[[], float]) -> Callable[[], float]:
        """``uniform``, its draws kept for the native twin to replay in the same order."""
        self._uniforms: list[float] = []

        def draw() -> float:
            value = uniform()
            self._uniforms.insert(0, value)
            return value

        return draw

    def consume(self, *requests: ExportTraceServiceRequest) -> ConsumeStats:
        stats = ConsumeStats()
        for request in requests:
            one = self.processor.consume(request, self.tenant)
            if self.native is not None:
                assert consume_native(self.native, request.SerializeToString(), self.tenant) == one
                assert not self._uniforms
            stats.spans += one.spans
            stats.skipped_no_service += one.skipped_no_service
            stats.overflowed += one.overflowed
        return stats

    def take_deltas(self) -> dict[str, TenantDeltas]:
        """The processor's deltas as it hands them over (paired, see :func:`emitted`), checked
        and applied to the store."""
        deltas = self.processor.take_deltas()
        if self.native is not None:
            assert same_deltas(self.native.take_deltas(), deltas), "the native ingest's deltas differ"
        for tenant_deltas in emitted(deltas).values():
            # Two delta series with one id would mean one span shape was keyed two ways (or a
            # companion counter named like a series of its own).
            ids = [series.series_id for series in tenant_deltas.series]
            assert len(ids) == len(set(ids)), "take_deltas returned a series twice"
            assert {series.resource_id for series in tenant_deltas.series} <= set(tenant_deltas.resources)
        self.worker.merge(deltas)
        return deltas

    def flush(self, advance_s: float = 15.0) -> ExportMetricsServiceRequest:
        """Hand the interval's deltas to the store, move the clock, and emit as the worker does."""
        self.take_deltas()
        published = self.worker.emit(self.clock.advance(advance_s))
        data = b"".join(r.data for one in published if one.tenant == self.tenant for r in one.requests)
        return ExportMetricsServiceRequest.FromString(data)

    def run(self, *requests: ExportTraceServiceRequest) -> ExportMetricsServiceRequest:
        """Consume and flush once."""
        self.consume(*requests)
        return self.flush()
