"""Spans in, per-series deltas out: the Collector spanmetrics connector's aggregation, without I/O.

The per-span path is the hot path of the whole product, so it is written for speed: per
``ResourceSpans`` the resource work (identity, service name, resource-level dimension values) is
done once and cached; per span only the configured dimensions are looked up (one pass over the
span's attributes), the series is found by a tuple key in a dict, and the histogram bucket by
bisection. Everything that is per *series* (canonical id, typed attributes) happens only when a
series first appears in a flush interval.

Semantics follow the connector: default dimensions ``service.name``, ``span.name``, ``span.kind``
and ``status.code`` (proto enum names), configured dimensions from span attributes, then resource
attributes, then their default; ``calls`` counts spans, ``duration`` is a histogram in ms or s,
``events`` counts span events; one ``ResourceMetrics`` per distinct resource.
"""

from __future__ import annotations

import hashlib
import random
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from worker.config import Dimension, SpanMetricsConfig, Temporality
from worker.otlp.values import any_value_to_python, stringify_any_value, stringify_python
from worker.series import Attributes, MetricDescriptor, MetricKind, Series
from worker.spanmetrics.exphistogram import ExpHistogram
from worker.spanmetrics.sampling import adjusted_count, stochastic_round

__all__ = [
    "OVERFLOW_ATTRIBUTE",
    "SPAN_KIND_NAMES",
    "STATUS_CODE_NAMES",
    "ConsumeStats",
    "SpanMetricsProcessor",
    "TenantDeltas",
    "resource_identity",
]

SPAN_KIND_NAMES: dict[int, str] = {
    0: "SPAN_KIND_UNSPECIFIED",
    1: "SPAN_KIND_INTERNAL",
    2: "SPAN_KIND_SERVER",
    3: "SPAN_KIND_CLIENT",
    4: "SPAN_KIND_PRODUCER",
    5: "SPAN_KIND_CONSUMER",
}
STATUS_CODE_NAMES: dict[int, str] = {0: "STATUS_CODE_UNSET", 1: "STATUS_CODE_OK", 2: "STATUS_CODE_ERROR"}

#: The only attribute of the series that absorbs new series past the cardinality limit.
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
SCOPE_NAME_ATTRIBUTE = "span.instrumentation.scope.name"
SCOPE_VERSION_ATTRIBUTE = "span.instrumentation.scope.version"

_SERVICE_NAME = "service.name"
_OVERFLOW_KEY: tuple[Any, ...] = ("\x00overflow",)
_KEY_SEPARATOR = "\x1e"


@dataclass(slots=True)
class ConsumeStats:
    """What one ``consume`` call did, for the worker's self-metrics and logs."""

    spans: int = 0
    skipped_no_service: int = 0
    overflowed: int = 0


@dataclass(slots=True)
class TenantDeltas:
    """One tenant's deltas for one flush: resources by id, and the series that changed."""

    resources: dict[str, Attributes] = field(default_factory=dict)
    series: list[Series] = field(default_factory=list)


@dataclass(slots=True)
class _Resource:
    """Per-resource work done once: identity, typed attributes, resource-level dimension values."""

    resource_id: str
    service_name: str
    attributes: Attributes
    #: dimension name -> the resource's AnyValue for it (span attributes override these).
    values: dict[str, AnyValue]


@dataclass(slots=True)
class _Accumulator:
    """One resource's series for the current flush interval, keyed by dimension-value tuples."""

    resource: _Resource
    calls: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    duration: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    events: dict[tuple[Any, ...], Series] = field(default_factory=dict)


def resource_identity(attributes: Sequence[Any], key_attributes: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """Sorted (key, string value) pairs of the attributes that identify the resource."""
    pairs = [
        (kv.key, stringify_any_value(kv.value))
        for kv in attributes
        if not key_attributes or kv.key in key_attributes
    ]
    pairs.sort()
    return tuple(pairs)


def _resource_id(identity: tuple[tuple[str, str], ...]) -> str:
    text = _KEY_SEPARATOR.join(f"{k}={v}" for k, v in identity)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


class SpanMetricsProcessor:
    """Aggregates spans into per-series deltas; :meth:`take_deltas` hands them over and resets.

    Not thread-safe; one instance per worker event loop. ``clock`` returns unix nanoseconds and
    ``uniform`` a float in [0, 1) for stochastic rounding; both are injectable for tests.
    """

    def __init__(
        self,
        config: SpanMetricsConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self._clock = clock
        self._uniform = uniform
        histogram = config.histogram
        self._histogram_enabled = not histogram.disable
        self._exponential_size = histogram.exponential.max_size if histogram.exponential else 0
        self._bounds: tuple[float, ...] = () if self._exponential_size else histogram.bounds
        self._divisor = histogram.unit.divisor_ns
        self._exemplars = config.exemplars.max_per_data_point if config.exemplars.enabled else 0
        self._limit = config.aggregation_cardinality_limit
        self._key_attributes = frozenset(config.resource_metrics_key_attributes)

        excluded = set(config.exclude_dimensions)
        self._include_service = _SERVICE_NAME not in excluded
        self._include_name = "span.name" not in excluded
        self._include_kind = "span.kind" not in excluded
        self._include_status = "status.code" not in excluded
        self._no_exclusions = not excluded

        self._dimensions: tuple[Dimension, ...] = config.dimensions
        self._calls_extra: tuple[Dimension, ...] = config.calls_dimensions
        self._histogram_extra: tuple[Dimension, ...] = histogram.dimensions
        self._event_dimensions: tuple[Dimension, ...] = config.events.dimensions
        # Every span-level dimension name -> its slot in the per-span lookup array.
        span_dimensions = [*self._dimensions, *self._calls_extra, *self._histogram_extra]
        self._dimension_index: dict[str, int] = {}
        for dimension in span_dimensions:
            self._dimension_index.setdefault(dimension.name, len(self._dimension_index))
        self._dimension_defaults: list[AnyValue | None] = [None] * len(self._dimension_index)
        for dimension in span_dimensions:
            if dimension.default is not None:
                self._dimension_defaults[self._dimension_index[dimension.name]] = AnyValue(
                    string_value=dimension.default
                )
        self._base_slots = [self._dimension_index[d.name] for d in self._dimensions]
        self._calls_slots = [self._dimension_index[d.name] for d in self._calls_extra]
        self._histogram_slots = [self._dimension_index[d.name] for d in self._histogram_extra]
        self._scopes = frozenset(config.include_instrumentation_scope)

        self.calls_name = config.metric_name("calls")
        self.duration_name = config.metric_name("duration")
        self.events_name = config.metric_name("events")

        self._resources: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], _Resource] = OrderedDict()
        self._resource_cache_size = config.resource_metrics_cache_size
        self._pending: dict[tuple[str, str], _Accumulator] = {}
        self._tracestate_weights: dict[str, float] = {}
        #: (tenant, resource_id, metric) -> series keys admitted under the cardinality limit.
        self._admitted: dict[tuple[str, str, str], set[tuple[Any, ...]]] = {}

    # ------------------------------------------------------------------ descriptors

    def descriptors(self) -> list[MetricDescriptor]:
        """The metrics this processor emits, in output order."""
        result = [MetricDescriptor(self.calls_name, MetricKind.SUM, order=0)]
        if self._histogram_enabled:
            kind = MetricKind.EXPONENTIAL_HISTOGRAM if self._exponential_size else MetricKind.HISTOGRAM
            result.append(
                MetricDescriptor(
                    self.duration_name, kind, unit=self.config.histogram.unit.value, bounds=self._bounds, order=1
                )
            )
        if self.config.events.enabled:
            result.append(MetricDescriptor(self.events_name, MetricKind.SUM, order=2))
        return result

    @property
    def temporality(self) -> Temporality:
        return self.config.aggregation_temporality

    @property
    def max_exemplars(self) -> int:
        return self._exemplars

    # ------------------------------------------------------------------ consume

    def consume(self, request: ExportTraceServiceRequest, tenant: str) -> ConsumeStats:
        """Aggregate every span of one OTLP request into the current interval's deltas."""
        stats = ConsumeStats()
        now = self._clock()
        for resource_spans in request.resource_spans:
            resource = self._resource(tenant, resource_spans.resource)
            if resource is None:
                stats.skipped_no_service += sum(len(ss.spans) for ss in resource_spans.scope_spans)
                continue
            accumulator = self._pending.get((tenant, resource.resource_id))
            if accumulator is None:
                accumulator = self._pending[(tenant, resource.resource_id)] = _Accumulator(resource)
            for scope_spans in resource_spans.scope_spans:
                scope_key = self._scope_key(scope_spans.scope)
                for span in scope_spans.spans:
                    self._observe(tenant, accumulator, span, scope_key, now, stats)
                stats.spans += len(scope_spans.spans)
        return stats

    def _resource(self, tenant: str, resource: Resource) -> _Resource | None:
        attributes = resource.attributes
        identity = resource_identity(attributes, self._key_attributes)
        cache_key = (tenant, identity)
        cached = self._resources.get(cache_key)
        if cached is not None:
            self._resources.move_to_end(cache_key)
            return cached
        service_name: str | None = None
        values: dict[str, AnyValue] = {}
        for kv in attributes:
            if kv.key == _SERVICE_NAME and kv.value.WhichOneof("value") == "string_value":
                service_name = kv.value.string_value
            if kv.key in self._dimension_index or self._event_dimensions:
                values.setdefault(kv.key, kv.value)
        if service_name is None:
            return None
        kept = [kv for kv in attributes if not self._key_attributes or kv.key in self._key_attributes]
        entry = _Resource(
            resource_id=_resource_id(identity),
            service_name=service_name,
            attributes=tuple((kv.key, any_value_to_python(kv.value)) for kv in kept),
            values=values,
        )
        self._resources[cache_key] = entry
        if len(self._resources) > self._resource_cache_size:
            self._resources.popitem(last=False)
        return entry

    def _scope_key(self, scope: InstrumentationScope) -> tuple[str, ...]:
        if self._scopes and scope.name and scope.name in self._scopes:
            return (scope.name, scope.version)
        return ()

    def _weight(self, tracestate: str) -> int:
        weight = self._tracestate_weights.get(tracestate)
        if weight is None:
            weight = adjusted_count(tracestate)
            if len(self._tracestate_weights) < 1024:
                self._tracestate_weights[tracestate] = weight
        return stochastic_round(weight, self._uniform) if not weight.is_integer() else int(weight)

    def _observe(
        self,
        tenant: str,
        accumulator: _Accumulator,
        span: Span,
        scope_key: tuple[str, ...],
        now: int,
        stats: ConsumeStats,
    ) -> None:
        resource = accumulator.resource
        name = span.name
        kind = SPAN_KIND_NAMES.get(span.kind, "")
        status = STATUS_CODE_NAMES.get(span.status.code, "")
        if self._no_exclusions:
            base: tuple[Any, ...] = (name, kind, status)
        else:
            base = (
                name if self._include_name else None,
                kind if self._include_kind else None,
                status if self._include_status else None,
            )
        found: list[AnyValue | None] | None = None
        strings: list[str | None] | None = None
        if self._dimension_index:
            found = self._lookup(span, resource)
            strings = [None if v is None else stringify_any_value(v) for v in found]
            base = base + tuple(strings[i] for i in self._base_slots)
        if scope_key:
            base = base + scope_key
        weight = 1 if not span.trace_state else self._weight(span.trace_state)
        start = span.start_time_unix_nano
        end = span.end_time_unix_nano
        duration = (end - start) / self._divisor if end > start else 0.0
        exemplar = None
        if self._exemplars and span.trace_id:
            exemplar = (span.trace_id, span.span_id, duration, end or now)

        key = base + tuple(strings[i] for i in self._calls_slots) if self._calls_slots and strings else base
        series = accumulator.calls.get(key)
        if series is None:
            series = self._new_series(tenant, accumulator, accumulator.calls, self.calls_name, key, found, span,
                                      scope_key, self._calls_extra, now, stats)  # fmt: skip
        series.count += weight
        series.last_ns = now
        if exemplar is not None and len(series.exemplars) < self._exemplars:
            series.exemplars.append(exemplar)

        if self._histogram_enabled:
            if self._histogram_slots and strings:
                key = base + tuple(strings[i] for i in self._histogram_slots)
            else:
                key = base
            series = accumulator.duration.get(key)
            if series is None:
                series = self._new_series(tenant, accumulator, accumulator.duration, self.duration_name, key, found,
                                          span, scope_key, self._histogram_extra, now, stats)  # fmt: skip
            series.count += weight
            series.sum += duration * weight
            series.last_ns = now
            if series.buckets is not None:
                series.buckets[bisect_left(self._bounds, duration)] += weight
            elif series.exp is not None:
                series.exp.record(duration, weight)
            if exemplar is not None and len(series.exemplars) < self._exemplars:
                series.exemplars.append(exemplar)

        if self.config.events.enabled and span.events:
            self._observe_events(tenant, accumulator, span, scope_key, weight, exemplar, now, stats)

    def _lookup(self, span: Span, resource: _Resource) -> list[AnyValue | None]:
        """Configured dimension values: span attribute, else resource attribute, else default."""
        index = self._dimension_index
        found: list[AnyValue | None] = [None] * len(index)
        missing = len(index)
        for kv in span.attributes:
            slot = index.get(kv.key)
            if slot is not None and found[slot] is None:
                found[slot] = kv.value
                missing -= 1
                if not missing:
                    return found
        for dimension_name, slot in index.items():
            if found[slot] is None:
                value = resource.values.get(dimension_name)
                found[slot] = value if value is not None else self._dimension_defaults[slot]
        return found

    def _observe_events(
        self,
        tenant: str,
        accumulator: _Accumulator,
        span: Span,
        scope_key: tuple[str, ...],
        weight: int,
        exemplar: tuple[bytes, bytes, float, int] | None,
        now: int,
        stats: ConsumeStats,
    ) -> None:
        """Events are rare next to spans, so this path favours clarity over speed."""
        resource = accumulator.resource
        span_attributes = {kv.key: kv.value for kv in span.attributes}
        dimensions = (*self._dimensions, *self._event_dimensions)
        for event in span.events:
            event_attributes = {kv.key: kv.value for kv in event.attributes}
            values: list[AnyValue | None] = []
            for dimension in dimensions:
                value = span_attributes.get(dimension.name)
                if value is None:
                    value = event_attributes.get(dimension.name)
                if value is None:
                    value = resource.values.get(dimension.name)
                if value is None and dimension.default is not None:
                    value = AnyValue(string_value=dimension.default)
                values.append(value)
            key = (
                span.name,
                SPAN_KIND_NAMES.get(span.kind, ""),
                STATUS_CODE_NAMES.get(span.status.code, ""),
                *(None if v is None else stringify_any_value(v) for v in values),
                *scope_key,
            )
            series = accumulator.events.get(key)
            if series is None:
                series = self._admit(tenant, accumulator, accumulator.events, self.events_name, key, now, stats)
                if series is None:
                    attributes = self._attributes(resource, span, scope_key, list(zip(dimensions, values, strict=True)))
                    series = self._create(accumulator, accumulator.events, self.events_name, key, attributes, now)
            series.count += weight
            series.last_ns = now
            if exemplar is not None and len(series.exemplars) < self._exemplars:
                series.exemplars.append(exemplar)

    # ------------------------------------------------------------------ series creation

    def _new_series(
        self,
        tenant: str,
        accumulator: _Accumulator,
        target: dict[tuple[Any, ...], Series],
        metric: str,
        key: tuple[Any, ...],
        found: list[AnyValue | None] | None,
        span: Span,
        scope_key: tuple[str, ...],
        extra: tuple[Dimension, ...],
        now: int,
        stats: ConsumeStats,
    ) -> Series:
        overflow = self._admit(tenant, accumulator, target, metric, key, now, stats)
        if overflow is not None:
            return overflow
        pairs: list[tuple[Dimension, AnyValue | None]] = []
        if found is not None:
            for dimension in (*self._dimensions, *extra):
                pairs.append((dimension, found[self._dimension_index[dimension.name]]))
        attributes = self._attributes(accumulator.resource, span, scope_key, pairs)
        return self._create(accumulator, target, metric, key, attributes, now)

    def _admit(
        self,
        tenant: str,
        accumulator: _Accumulator,
        target: dict[tuple[Any, ...], Series],
        metric: str,
        key: tuple[Any, ...],
        now: int,
        stats: ConsumeStats,
    ) -> Series | None:
        """Apply the cardinality limit: None admits ``key``, else the overflow series to use."""
        if not self._limit:
            return None
        admitted = self._admitted.setdefault((tenant, accumulator.resource.resource_id, metric), set())
        if key in admitted:
            return None
        if len(admitted) < self._limit:
            admitted.add(key)
            return None
        stats.overflowed += 1
        series = target.get(_OVERFLOW_KEY)
        if series is None:
            series = self._create(accumulator, target, metric, _OVERFLOW_KEY, ((OVERFLOW_ATTRIBUTE, True),), now)
        # The overflow series stands in for the key from now on, so later spans skip this check.
        target[key] = series
        return series

    def _attributes(
        self,
        resource: _Resource,
        span: Span,
        scope_key: tuple[str, ...],
        dimensions: Sequence[tuple[Dimension, AnyValue | None]],
    ) -> Attributes:
        attributes: list[tuple[str, Any]] = []
        if self._include_service:
            attributes.append((_SERVICE_NAME, resource.service_name))
        if self._include_name:
            attributes.append(("span.name", span.name))
        if self._include_kind:
            attributes.append(("span.kind", SPAN_KIND_NAMES.get(span.kind, "")))
        if self._include_status:
            attributes.append(("status.code", STATUS_CODE_NAMES.get(span.status.code, "")))
        for dimension, value in dimensions:
            if value is not None:
                attributes.append((dimension.name, any_value_to_python(value)))
        if scope_key:
            attributes.append((SCOPE_NAME_ATTRIBUTE, scope_key[0]))
            if scope_key[1]:
                attributes.append((SCOPE_VERSION_ATTRIBUTE, scope_key[1]))
        return tuple(attributes)

    def _create(
        self,
        accumulator: _Accumulator,
        target: dict[tuple[Any, ...], Series],
        metric: str,
        key: tuple[Any, ...],
        attributes: Attributes,
        now: int,
    ) -> Series:
        resource_id = accumulator.resource.resource_id
        # The canonical id names every dimension, so two configurations never share a series.
        body = _KEY_SEPARATOR.join(
            f"{name}={value if isinstance(value, str) else stringify_python(value)}" for name, value in attributes
        )
        series = Series(
            series_id=f"{metric}{_KEY_SEPARATOR}{resource_id}{_KEY_SEPARATOR}{body}",
            metric=metric,
            resource_id=resource_id,
            attributes=attributes,
            start_ns=now,
            last_ns=now,
        )
        if metric == self.duration_name:
            if self._exponential_size:
                series.exp = ExpHistogram(max_size=self._exponential_size)
            else:
                series.buckets = [0] * (len(self._bounds) + 1)
        target[key] = series
        return series

    # ------------------------------------------------------------------ hand over

    def pending_series(self) -> int:
        """How many distinct series the current interval holds (memory bound check)."""
        return sum(len(a.calls) + len(a.duration) + len(a.events) for a in self._pending.values())

    def take_deltas(self) -> dict[str, TenantDeltas]:
        """Hand over this interval's deltas grouped by tenant, and start a new interval."""
        pending, self._pending = self._pending, {}
        result: dict[str, TenantDeltas] = {}
        for (tenant, resource_id), accumulator in pending.items():
            deltas = result.get(tenant)
            if deltas is None:
                deltas = result[tenant] = TenantDeltas()
            deltas.resources[resource_id] = accumulator.resource.attributes
            for table in (accumulator.calls, accumulator.duration, accumulator.events):
                seen: set[int] = set()
                for series in table.values():
                    if id(series) not in seen:  # overflow series are shared by many keys
                        seen.add(id(series))
                        deltas.series.append(series)
        return result

