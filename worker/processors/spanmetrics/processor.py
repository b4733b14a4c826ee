"""Spans in, per-series deltas out: the Collector spanmetrics connector's aggregation (the hot path)."""

from __future__ import annotations

import hashlib
import random
import re
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from worker.config import RESERVED_DIMENSIONS, Dimension, SpanMetricsConfig, compile_glob
from worker.model.enums import SPAN_KIND_NAMES, STATUS_CODE_NAMES
from worker.model.exphistogram import ExpHistogram
from worker.model.series import (
    OVERFLOW_ATTRIBUTE,
    SERIES_ID_SEPARATOR,
    Attributes,
    MetricDescriptor,
    MetricKind,
    Series,
    Temporality,
    TenantDeltas,
    make_series_id,
    merge_series,
)
from worker.model.values import any_value_to_python, label_value, stringify_any_value, stringify_python
from worker.otlp.batch import (
    BatchRequest,
    BatchResource,
    BatchScope,
    BatchSpan,
    ResourceGroup,
    SpanBatch,
    group_request,
)
from worker.processors import native
from worker.processors.base import PipelineStats
from worker.processors.sampling import adjusted_count, parse_threshold, stochastic_round

__all__ = [
    "OVERFLOW_ATTRIBUTE",
    "SAMPLING_METHOD_ATTRIBUTE",
    "ConsumeStats",
    "ResourceGroup",
    "Scanned",
    "SpanMetricsProcessor",
    "TenantDeltas",
    "group_request",
    "resource_identity",
]


#: The only attribute of the series that absorbs new series past the cardinality limit.
SCOPE_NAME_ATTRIBUTE = "span.instrumentation.scope.name"
SCOPE_VERSION_ATTRIBUTE = "span.instrumentation.scope.version"
#: ``enable_metrics_sampling_method``: ``extrapolated`` (count from ``ot=th``) or ``counted``.
SAMPLING_METHOD_ATTRIBUTE = "sampling.method"

_SERVICE_NAME = "service.name"
_OVERFLOW_KEY: tuple[Any, ...] = ("\x00overflow",)
#: The most one span counts for. The sampling threshold allows 2^56 (a probability of 2^-56);
#: counted as that, 128 such spans overflow an int64 counter (Redis scripts wrap it negative).
#: Capped at about one in a million, the practical floor of probability sampling.
_MAX_WEIGHT = float(1 << 20)
#: The latest time state can keep exactly (2^53 microseconds, in 2255): exemplars of spans that
#: claim to end later (or at 0) carry the time the worker saw them instead.
_MAX_TIME_NS = (1 << 53) * 1000
#: Series attributes and ids kept across intervals when ``dimensions_cache_size`` is not set.
_DEFAULT_TEMPLATE_CACHE_SIZE = 10_000
#: Larger resources are not cached: the cache's memory stays bounded by its entry count times
#: this, whatever the size of the resources that come in.
_RESOURCE_CACHE_ENTRY_MAX_BYTES = 64 * 1024
#: Attribute keys whose glob verdict is remembered, per glob list (keys seen beyond this are
#: matched every time: a stream of unique keys must not grow memory).
_GLOB_CACHE_SIZE = 4096
#: Spans with more attributes than this are matched key by key, their shape not remembered.
_GLOB_SHAPE_MAX_KEYS = 64

#: A glob dimension's matches for one span: (attribute key, typed value) in upstream's order.
_Pairs = list[tuple[str, AnyValue]]


class _Globs:
    """One dimension list's ``glob`` entries; a key matches when any of them matches it whole."""

    __slots__ = ("_matched", "_patterns", "_verdicts")

    def __init__(self, dimensions: Sequence[Dimension]) -> None:
        self._patterns: tuple[re.Pattern[str], ...] = tuple(
            compile_glob(d.glob) for d in dimensions if d.glob
        )
        self._verdicts: dict[str, bool] = {}
        #: a span's attribute keys (in map order) -> the matching ones, sorted: spans of one
        #: shape share it, so the sort and the matching run once per shape.
        self._matched: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def matches(self, key: str) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = any(p.fullmatch(key) for p in self._patterns)
            if len(self._verdicts) < _GLOB_CACHE_SIZE:
                self._verdicts[key] = verdict
        return verdict

    def pairs(self, span: Mapping[str, AnyValue], other: Sequence[tuple[str, AnyValue]]) -> _Pairs:
        """Upstream's order (connector.go matchDimensions): the span's matching keys sorted, then
        the matching keys of ``other`` (resource, or resource and event) the span lacks."""
        keys = tuple(span)
        matched = self._matched.get(keys)
        if matched is None:
            matched = tuple(sorted(key for key in keys if self.matches(key)))
            if len(self._matched) < _GLOB_CACHE_SIZE and len(keys) <= _GLOB_SHAPE_MAX_KEYS:
                self._matched[keys] = matched
        found = [(key, span[key]) for key in matched]
        if other:
            found.extend((key, value) for key, value in other if key not in span and self.matches(key))
        return found


@dataclass(slots=True)
class ConsumeStats:
    """What one ``consume`` call did, for the worker's self-metrics and logs."""

    spans: int = 0
    skipped_no_service: int = 0
    overflowed: int = 0

    def add_to(self, total: PipelineStats) -> None:
        total.spans += self.spans
        total.skipped_no_service += self.skipped_no_service
        total.overflowed += self.overflowed


@dataclass(slots=True)
class _Resource:
    """Per-resource work done once: identity, typed attributes, resource-level dimension values."""

    resource_id: str
    #: None when the resource has no service.name: its spans are skipped. A non-string one reads
    #: as "" (upstream's ``pcommon.Value.Str()``), and its spans are counted.
    service_name: str | None
    attributes: Attributes
    #: dimension name -> the resource's AnyValue for it (a copy: span attributes override these).
    values: dict[str, AnyValue]
    #: per span-dimension slot: the string form to use when the span lacks it (resource, default, None).
    fallback: list[str | None] = field(default_factory=list)
    #: (key, value) of the resource attributes some ``glob`` dimension matches, sorted by key.
    glob_values: tuple[tuple[str, AnyValue], ...] = ()


@dataclass(slots=True)
class _Accumulator:
    """One resource's series for the current flush interval, keyed by dimension-value tuples."""

    resource: _Resource
    calls: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    duration: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    events: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    #: The compiled fold's cache of raw span keys to this accumulator's series (see _native.fold).
    native: Any = None


#: The compiled ingest (None: pure path only); see :meth:`SpanMetricsProcessor.scan`.
_NATIVE = native.load()
_SAMPLE_SCOPE = BatchRequest().resource_spans.add().scope_spans.add()
#: The batch schema's Resource and Span classes: the native fold parses one when it needs the message.
_RESOURCE_CLASS: Any = type(BatchRequest().resource_spans.add().resource)
_SPAN_CLASS: Any = type(_SAMPLE_SCOPE.spans.add())


@dataclass(slots=True)
class Scanned:
    """Spans read by the compiled scanner, for :meth:`SpanMetricsProcessor.consume_scanned`."""

    data: bytes
    #: The scanner's ``SpanScan``: where the resources and spans lie, no objects per span.
    resources: Any


def _slow_key_string(value: bytes) -> str | None:
    """The scanner's fallback for the rarer value types: the pure path's key string, None if unparsable."""
    try:
        parsed = AnyValue.FromString(value)
    except Exception:
        return None
    return parsed.string_value or _value_string(parsed)


#: One scope's spans with what they are aggregated into: (accumulator, resource, scope key, spans).
_ScopeWork = tuple[_Accumulator, _Resource, tuple[str, ...], Sequence[BatchSpan]]


def resource_identity(
    attributes: Sequence[Any], key_attributes: frozenset[str]
) -> tuple[tuple[str, str], ...]:
    """Sorted (key, string value) pairs of the attributes that identify the resource."""
    pairs = [
        (kv.key, stringify_any_value(kv.value))
        for kv in attributes
        if not key_attributes or kv.key in key_attributes
    ]
    pairs.sort()
    return tuple(pairs)


def _resource_id(identity: tuple[tuple[str, str], ...]) -> str:
    text = SERIES_ID_SEPARATOR.join(f"{k}={v}" for k, v in identity)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _first(pair: tuple[str, AnyValue]) -> str:
    return pair[0]


def _key_part(pairs: _Pairs) -> tuple[str, ...]:
    """Glob matches in a series key: names included, since they vary from span to span."""
    part: list[str] = []
    for key, value in pairs:
        part.append(key)
        part.append(value.string_value or _value_string(value))
    return tuple(part)


def _value_string(value: AnyValue) -> str:
    """The key string of an attribute value (a non-empty ``string_value`` is checked first by callers)."""
    kind = value.WhichOneof("value")
    if kind == "int_value":
        return str(value.int_value)
    if kind == "string_value" or kind is None:
        return value.string_value
    return stringify_any_value(value)


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
        self._events_enabled = config.events.enabled
        self._limit = config.aggregation_cardinality_limit
        self._key_attributes = frozenset(config.resource_metrics_key_attributes)

        # Names that are not default dimensions are accepted and ignored (config warns once).
        excluded = set(config.exclude_dimensions).intersection(RESERVED_DIMENSIONS)
        self._include_service = _SERVICE_NAME not in excluded
        self._include_name = "span.name" not in excluded
        self._include_kind = "span.kind" not in excluded
        self._include_status = "status.code" not in excluded
        self._no_exclusions = not excluded

        # Named dimensions go through slots; ``glob`` entries match keys per span (see _Globs).
        self._dimensions = tuple(d for d in config.dimensions if d.name)
        self._calls_extra = tuple(d for d in config.calls_dimensions if d.name)
        self._histogram_extra = tuple(d for d in histogram.dimensions if d.name)
        self._event_dimensions = tuple(d for d in config.events.dimensions if d.name)
        self._base_globs = _Globs(config.dimensions)
        self._calls_globs = _Globs(config.calls_dimensions)
        self._histogram_globs = _Globs(histogram.dimensions)
        self._event_globs = _Globs(config.events.dimensions)
        self._any_globs = _Globs(
            (*config.dimensions, *config.calls_dimensions, *histogram.dimensions, *config.events.dimensions)
        )
        self._span_globs = bool(self._base_globs or self._calls_globs or self._histogram_globs)
        self._with_sampling_method = config.enable_metrics_sampling_method
        self._tracestate_adjusted: dict[str, bool] = {}
        # Every span-level (name, default) -> its slot in the per-span lookup. A name may be in
        # two lists (upstream validates each list on its own), with a default of its own in each.
        span_dimensions = [*self._dimensions, *self._calls_extra, *self._histogram_extra]
        self._dimension_index: dict[tuple[str, str | None], int] = {}
        for dimension in span_dimensions:
            self._dimension_index.setdefault((dimension.name, dimension.default), len(self._dimension_index))
        self._slot_names: tuple[str, ...] = tuple(name for name, _ in self._dimension_index)
        self._slot_encoded = tuple(name.encode("utf-8", "surrogatepass") for name in self._slot_names)
        self._dimension_defaults: list[AnyValue | None] = [
            None if default is None else AnyValue(string_value=default)
            for _, default in self._dimension_index
        ]
        self._base_slots = [self._slot(d) for d in self._dimensions]
        self._calls_slots = [self._slot(d) for d in self._calls_extra]
        self._histogram_slots = [self._slot(d) for d in self._histogram_extra]
        # Slots are numbered base dimensions first, so without per-metric extras every slot is a
        # base slot in order and the key is simply all the slots' strings.
        self._only_base_slots = not (
            self._calls_slots or self._histogram_slots or self._calls_globs or self._histogram_globs
        )
        self._scopes = frozenset(config.include_instrumentation_scope)

        self.calls_name = config.metric_name("calls")
        self.duration_name = config.metric_name("duration")
        self.events_name = config.metric_name("events")
        # With no per-metric dimensions both metrics share the key: then ``calls`` is no series of
        # its own but the companion of ``duration`` (see :attr:`Series.companion`).
        self._paired = self._histogram_enabled and self._only_base_slots
        self._companion = self.calls_name if self._paired else None

        #: (serialized resource bytes) -> the resource's cached work.
        self._resources: OrderedDict[bytes, _Resource] = OrderedDict()
        self._resource_cache_size = config.resource_metrics_cache_size
        self._pending: dict[tuple[str, str], _Accumulator] = {}
        self._tracestate_weights: dict[str, float] = {}
        #: (tenant, resource_id, metric) -> series keys admitted under the cardinality limit.
        self._admitted: dict[tuple[str, str, str], set[tuple[Any, ...]]] = {}
        #: (metric, resource_id, key) -> (series id, attributes): what a new series needs, kept
        #: across intervals so a series that recurs every interval is not rebuilt every interval.
        self._templates: OrderedDict[tuple[str, str, tuple[Any, ...]], tuple[str, Attributes]] = OrderedDict()
        self._template_cache_size = (
            config.dimensions_cache_size if config.dimensions_cache_size > 0 else _DEFAULT_TEMPLATE_CACHE_SIZE
        )
        self._native_ready = not self.native_unsupported()
        #: The compiled fold's additions not yet applied to their series (they stay in C across
        #: runs): applied before anything else reads or writes a series (:meth:`_apply_native`).
        self._native_active: list[Any] = []

    # ------------------------------------------------------------------ compiled ingest

    #: The exemplar time limit, for the compiled fold.
    _MAX_TIME_NS = _MAX_TIME_NS

    def native_unsupported(self) -> list[str]:
        """The configured options the compiled ingest does not implement (empty: it serves this
        configuration); ``["extension not built"]`` when it is missing or disabled."""
        if _NATIVE is None:
            return [f"extension not built or {native.NO_EXTENSIONS_ENV} set"]
        config = self.config
        found = []
        if config.events.enabled:
            found.append("events")
        if self._any_globs:
            found.append("glob dimensions")
        if self._scopes:
            found.append("include_instrumentation_scope")
        if self._with_sampling_method:
            found.append("enable_metrics_sampling_method")
        return found

    @property
    def native_ready(self) -> bool:
        """Whether :meth:`scan` may be used: the extension is loaded and covers the configuration."""
        return self._native_ready

    def scan(self, data: bytes) -> Scanned | None:
        """Serialized ``ExportTraceServiceRequest`` (one or several joined) read by the compiled
        scanner, or None when it does not handle them (the pure path then decodes the same bytes).

        Nothing is aggregated here; the caller has checked that protobuf parses ``data``.
        """
        if _NATIVE is None or not self.native_ready:
            return None
        names = self._slot_encoded
        resources = _NATIVE.scan(data, names)
        return None if resources is None else Scanned(data, resources)

    def scan_with_edges(
        self, data: bytes, keys: tuple[bytes, ...], slow: Callable[[bytes], str]
    ) -> tuple[Scanned | None, Any]:
        """:meth:`scan` and the service graphs' edge scan (``keys``, ``slow``: their
        ``scan_arguments``) in one walk of ``data``: (what :meth:`scan` returns, the edge scan
        or None when it declines); (None, None) when the span scan declines."""
        if _NATIVE is None or not self.native_ready:
            return None, None
        resources, edges = _NATIVE.scan_both(data, self._slot_encoded, keys, slow)
        return (None, None) if resources is None else (Scanned(data, resources), edges)

    def consume_scanned(self, scanned: Scanned, tenant: str) -> ConsumeStats:
        """:meth:`consume` of what :meth:`scan` read: the same deltas, through the compiled fold."""
        assert _NATIVE is not None
        stats = ConsumeStats()
        _NATIVE.fold(
            self, scanned.resources, tenant, stats, _SPAN_CLASS.FromString, self._divisor, _slow_key_string
        )
        return stats

    def _apply_native(self) -> None:
        """Apply the compiled fold's pending additions to their series."""
        assert _NATIVE is not None
        _NATIVE.flush_folds(self._native_active)

    def _resource_from_bytes(self, cache_key: bytes) -> _Resource | None:
        """:meth:`_resource` keyed by the resource's bytes as they came (parsed on a cache miss)."""
        cached = self._resources.get(cache_key)
        if cached is not None:
            self._resources.move_to_end(cache_key)
            return cached if cached.service_name is not None else None
        return self._resource(_RESOURCE_CLASS.FromString(cache_key), cache_key)

    @staticmethod
    def _new_accumulator(resource: _Resource) -> _Accumulator:
        return _Accumulator(resource)

    def _slot(self, dimension: Dimension) -> int:
        return self._dimension_index[(dimension.name, dimension.default)]

    # ------------------------------------------------------------------ descriptors

    def descriptors(self) -> list[MetricDescriptor]:
        """The metrics this processor emits, in output order. The counters are zero-initialised
        (CUMULATIVE), the histogram is not, as upstream (connector_test.go, PR #39052)."""
        result = [MetricDescriptor(self.calls_name, MetricKind.SUM, order=0, zero_init=True)]
        if self._histogram_enabled:
            kind = MetricKind.EXPONENTIAL_HISTOGRAM if self._exponential_size else MetricKind.HISTOGRAM
            result.append(
                MetricDescriptor(
                    self.duration_name,
                    kind,
                    unit=self.config.histogram.unit.value,
                    bounds=self._bounds,
                    order=1,
                )
            )
        if self._events_enabled:
            result.append(MetricDescriptor(self.events_name, MetricKind.SUM, order=2, zero_init=True))
        return result

    @property
    def temporality(self) -> Temporality:
        return self.config.aggregation_temporality

    @property
    def max_exemplars(self) -> int:
        return self._exemplars

    # ------------------------------------------------------------------ consume

    def consume(
        self,
        request: ExportTraceServiceRequest | SpanBatch,
        tenant: str,
        partition: int = 0,
        *,
        groups: list[ResourceGroup] | None = None,
    ) -> ConsumeStats:
        """Aggregate every span of one OTLP request into the current interval's deltas.

        ``partition`` does not matter here (nothing waits across requests); ``groups`` is
        ``group_request(request)`` when the caller already has it.
        """
        if self._native_active:
            self._apply_native()
        stats = ConsumeStats()
        now = self._clock()
        work: list[_ScopeWork] = []
        scopes_configured = bool(self._scopes)
        for resource_message, cache_key, scopes in group_request(request) if groups is None else groups:
            resource = self._resource(resource_message, cache_key)
            if resource is None:
                stats.skipped_no_service += sum(len(spans) for _, spans in scopes)
                continue
            # Resources that differ only outside resource_metrics_key_attributes share one
            # accumulator (and the first one's attributes), but keep their own service name and
            # dimension values.
            accumulator = self._pending.get((tenant, resource.resource_id))
            if accumulator is None:
                accumulator = self._pending[(tenant, resource.resource_id)] = _Accumulator(resource)
            for scope_spans, spans in scopes:
                scope_key = self._scope_key(scope_spans.scope) if scopes_configured else ()
                work.append((accumulator, resource, scope_key, spans))
                stats.spans += len(spans)
        if work:
            self._observe_spans(tenant, work, now, stats)
        return stats

    def _resource(self, resource: BatchResource, cache_key: bytes) -> _Resource | None:
        # ``cache_key`` is the serialized resource: one C call; the cached work below is dozens
        # of Python-level reads.
        cached = self._resources.get(cache_key)
        if cached is not None:
            self._resources.move_to_end(cache_key)
            return cached if cached.service_name is not None else None
        entry = self._build_resource(resource)
        if len(cache_key) <= _RESOURCE_CACHE_ENTRY_MAX_BYTES:
            self._resources[cache_key] = entry
            if len(self._resources) > self._resource_cache_size:
                self._resources.popitem(last=False)
        return entry if entry.service_name is not None else None

    def _build_resource(self, resource: BatchResource) -> _Resource:
        attributes = resource.attributes
        service_name: str | None = None
        values: dict[str, AnyValue] = {}
        wanted = {*self._slot_names, *(d.name for d in self._event_dimensions)}
        for kv in attributes:
            if kv.key == _SERVICE_NAME and service_name is None:
                # Upstream (connector.go aggregateMetrics): skip only when the attribute is absent;
                # ``serviceAttr.Str()`` is "" for an int, bool, ... value.
                service_name = kv.value.string_value if kv.value.WhichOneof("value") == "string_value" else ""
            if kv.key in wanted and kv.key not in values:
                # A copy: a sub-message would keep the whole request it came from alive.
                values[kv.key] = copy = type(kv.value)()
                copy.CopyFrom(kv.value)
        if self._key_attributes:
            identity = resource_identity(attributes, self._key_attributes)
            kept = [kv for kv in attributes if kv.key in self._key_attributes]
        else:
            identity = resource_identity(attributes, frozenset())
            kept = list(attributes)
        fallback: list[str | None] = []
        for slot, name in enumerate(self._slot_names):
            value = values.get(name)
            if value is None:
                value = self._dimension_defaults[slot]
            fallback.append(None if value is None else stringify_any_value(value))
        glob_values: dict[str, AnyValue] = {}
        if self._any_globs:
            for kv in attributes:
                if kv.key not in glob_values and self._any_globs.matches(kv.key):
                    glob_values[kv.key] = copy = type(kv.value)()
                    copy.CopyFrom(kv.value)
        return _Resource(
            resource_id=_resource_id(identity),
            service_name=service_name,
            attributes=tuple((kv.key, any_value_to_python(kv.value)) for kv in kept),
            values=values,
            fallback=fallback,
            glob_values=tuple(sorted(glob_values.items(), key=_first)),
        )

    def _scope_key(self, scope: BatchScope) -> tuple[str, ...]:
        if self._scopes and scope.name and scope.name in self._scopes:
            return (scope.name, scope.version)
        return ()

    def _weight(self, tracestate: str) -> int:
        weight = self._tracestate_weights.get(tracestate)
        if weight is None:
            weight = min(adjusted_count(tracestate), _MAX_WEIGHT)
            if len(self._tracestate_weights) < 1024:
                self._tracestate_weights[tracestate] = weight
        return stochastic_round(weight, self._uniform) if not weight.is_integer() else int(weight)

    def _adjusted(self, tracestate: str) -> bool:
        """Whether the tracestate carries a valid ``ot=th`` (upstream GetStochasticAdjustedCount's
        second result, ``th:0`` included): ``sampling.method`` is then ``extrapolated``."""
        adjusted = self._tracestate_adjusted.get(tracestate)
        if adjusted is None:
            adjusted = parse_threshold(tracestate) is not None
            if len(self._tracestate_adjusted) < 1024:
                self._tracestate_adjusted[tracestate] = adjusted
        return adjusted

    def _observe_spans(self, tenant: str, work: list[_ScopeWork], now: int, stats: ConsumeStats) -> None:
        """The hot loop: every name below is a local, every span field is read once.

        One call per request, not per scope: a request from an SDK holds many scopes of one or
        two spans each, and the setup below would cost more than the spans.
        """
        no_exclusions = self._no_exclusions
        include_service, include_name, include_kind, include_status = (
            self._include_service,
            self._include_name,
            self._include_kind,
            self._include_status,
        )
        slot_names = self._slot_names
        slot_count = len(slot_names)
        slot_range = range(slot_count)
        only_base_slots = self._only_base_slots
        base_slots, calls_slots, histogram_slots = self._base_slots, self._calls_slots, self._histogram_slots
        divisor = self._divisor
        histogram_enabled = self._histogram_enabled
        bounds = self._bounds
        max_exemplars = self._exemplars
        events_enabled = self._events_enabled
        weight_of = self._weight
        new_series = self._new_series
        calls_name, duration_name = self.calls_name, self.duration_name
        calls_extra, histogram_extra = self._calls_extra, self._histogram_extra
        # Per-span key parts beyond the slots: the sampling method and glob matches.
        with_sampling = self._with_sampling_method
        adjusted_of = self._adjusted
        base_globs, calls_globs, histogram_globs = self._base_globs, self._calls_globs, self._histogram_globs
        span_globs = self._span_globs
        sampled: str | None = None
        key_scope: tuple[Any, ...]
        counted_scope: tuple[Any, ...] = ()
        extrapolated_scope: tuple[Any, ...] = ()
        calls_part: tuple[tuple[str, ...], ...] = ()
        histogram_part: tuple[tuple[str, ...], ...] = ()

        # With no per-metric dimensions both metrics share the key, and the duration series
        # stands for both: one lookup and one series update per span.
        paired = self._paired
        name: str | None
        kind: int | None
        status: int | None
        series: Series | None
        histogram: Series | None

        for accumulator, resource, scope_key, spans in work:
            service = resource.service_name if include_service else None
            fallback = resource.fallback
            calls = accumulator.calls
            durations = accumulator.duration
            calls_get = calls.get
            durations_get = durations.get
            # The key's scope element carries the sampling method too: no tuple is rebuilt.
            key_scope = scope_key
            if with_sampling:
                counted_scope = (scope_key, "counted")
                extrapolated_scope = (scope_key, "extrapolated")
            for span in spans:
                name = span.name
                kind = span.kind
                status = span.status.code
                trace_state = span.trace_state
                if with_sampling:
                    if trace_state and adjusted_of(trace_state):
                        key_scope, sampled = extrapolated_scope, "extrapolated"
                    else:
                        key_scope, sampled = counted_scope, "counted"
                if not no_exclusions:
                    name = name if include_name else None
                    kind = kind if include_kind else None
                    status = status if include_status else None
                if slot_count:
                    lookup = span.attributes.get
                    strings: list[str | None] = fallback.copy()
                    for slot in slot_range:
                        value = lookup(slot_names[slot])
                        if value is not None:
                            strings[slot] = value.string_value or _value_string(value)
                    if only_base_slots:
                        key = (service, key_scope, name, kind, status, *strings)
                    else:
                        key = (service, key_scope, name, kind, status, *[strings[i] for i in base_slots])
                else:
                    key = (service, key_scope, name, kind, status)
                weight = weight_of(trace_state) if trace_state else 1
                if span_globs:
                    # Each variable-length glob part is one element of the key, so parts of
                    # different lists can never run into each other.
                    if base_globs:
                        key = (*key, _key_part(base_globs.pairs(span.attributes, resource.glob_values)))
                    if calls_globs:
                        calls_part = (_key_part(calls_globs.pairs(span.attributes, resource.glob_values)),)
                    if histogram_globs:
                        histogram_part = (
                            _key_part(histogram_globs.pairs(span.attributes, resource.glob_values)),
                        )
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                duration = (end - start) / divisor if end > start else 0.0

                if paired:
                    # The calls counter is this series' companion: nothing else to update.
                    series = None
                    histogram = durations_get(key) or new_series(tenant, accumulator, resource, durations,
                                                                 duration_name, key, span, scope_key,
                                                                 histogram_extra, histogram_globs, sampled,
                                                                 now, stats)  # fmt: skip
                else:
                    calls_key = key + tuple(strings[i] for i in calls_slots) if calls_slots else key
                    if calls_part:
                        calls_key = calls_key + calls_part
                    series = calls_get(calls_key) or new_series(tenant, accumulator, resource, calls,
                                                                calls_name, calls_key, span, scope_key,
                                                                calls_extra, calls_globs, sampled,
                                                                now, stats)  # fmt: skip
                    series.count += weight
                    series.last_ns = now
                    histogram = None
                    if histogram_enabled:
                        if histogram_slots:
                            key = key + tuple(strings[i] for i in histogram_slots)
                        if histogram_part:
                            key = key + histogram_part
                        histogram = durations_get(key) or new_series(tenant, accumulator, resource, durations,
                                                                     duration_name, key, span, scope_key,
                                                                     histogram_extra, histogram_globs,
                                                                     sampled, now, stats)  # fmt: skip

                if histogram is not None:
                    histogram.count += weight
                    histogram.sum += duration * weight
                    histogram.last_ns = now
                    buckets = histogram.buckets
                    if buckets is not None:
                        buckets[bisect_left(bounds, duration)] += weight
                    else:
                        exp = histogram.exp
                        if exp is not None:
                            exp.record(duration, weight)

                exemplar = None
                if max_exemplars:
                    trace_id = span.trace_id
                    if trace_id:
                        # Past 2255 a time no longer survives Redis (microseconds in Lua doubles).
                        exemplar = (trace_id, span.span_id, duration, end if 0 < end < _MAX_TIME_NS else now)
                        if histogram is not None and len(histogram.exemplars) < max_exemplars:
                            histogram.exemplars.append(exemplar)
                        if series is not None and len(series.exemplars) < max_exemplars:
                            series.exemplars.append(exemplar)

                if events_enabled and span.events:
                    self._observe_events(
                        tenant, accumulator, resource, span, scope_key, weight, sampled, exemplar, now, stats
                    )

    def _lookup(self, span: BatchSpan, resource: _Resource) -> list[AnyValue | None]:
        """Configured dimension values, typed: span attribute, else resource attribute, else default."""
        attributes = span.attributes
        found: list[AnyValue | None] = []
        for slot, name in enumerate(self._slot_names):
            value = attributes.get(name)
            if value is None:
                value = resource.values.get(name)
            found.append(value if value is not None else self._dimension_defaults[slot])
        return found

    def _observe_events(
        self,
        tenant: str,
        accumulator: _Accumulator,
        resource: _Resource,
        span: BatchSpan,
        scope_key: tuple[str, ...],
        weight: int,
        sampled: str | None,
        exemplar: tuple[bytes, bytes, float, int] | None,
        now: int,
        stats: ConsumeStats,
    ) -> None:
        """Events are rare next to spans, so this path favours clarity over speed."""
        span_attributes = span.attributes
        dimensions = (*self._dimensions, *self._event_dimensions)
        base_count = len(self._dimensions)
        base_globs, event_globs = self._base_globs, self._event_globs
        for event in span.events:
            event_attributes: dict[str, AnyValue] = {}
            for kv in event.attributes:
                event_attributes.setdefault(kv.key, kv.value)
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
            base_pairs: _Pairs = []
            event_pairs: _Pairs = []
            if base_globs or event_globs:
                # Upstream matches event-level globs against the span, then the resource
                # attributes overlaid by the event's (connector.go aggregateMetrics).
                merged = dict(resource.glob_values)
                merged.update(event_attributes)
                other = sorted(merged.items(), key=_first)
                if base_globs:
                    base_pairs = base_globs.pairs(span_attributes, other)
                if event_globs:
                    event_pairs = event_globs.pairs(span_attributes, other)
            key = (
                resource.service_name if self._include_service else None,
                span.name if self._include_name else None,
                span.kind if self._include_kind else None,
                span.status.code if self._include_status else None,
                scope_key,
                sampled,
                _key_part(base_pairs),
                _key_part(event_pairs),
                *(None if v is None else stringify_any_value(v) for v in values),
            )
            series = accumulator.events.get(key)
            if series is None:
                series = self._admit(
                    tenant, accumulator, accumulator.events, self.events_name, key, now, stats
                )
                if series is None:
                    named = [(d.name, v) for d, v in zip(dimensions, values, strict=True)]
                    pairs = [*named[:base_count], *base_pairs, *named[base_count:], *event_pairs]
                    attributes = self._attributes(resource, span, scope_key, pairs, sampled)
                    series = self._create(
                        accumulator, accumulator.events, self.events_name, key, attributes, now
                    )
            series.count += weight
            series.last_ns = now
            if exemplar is not None and len(series.exemplars) < self._exemplars:
                series.exemplars.append(exemplar)

    # ------------------------------------------------------------------ series creation

    def _new_series(
        self,
        tenant: str,
        accumulator: _Accumulator,
        resource: _Resource,
        target: dict[tuple[Any, ...], Series],
        metric: str,
        key: tuple[Any, ...],
        span: BatchSpan,
        scope_key: tuple[str, ...],
        extra: tuple[Dimension, ...],
        extra_globs: _Globs,
        sampled: str | None,
        now: int,
        stats: ConsumeStats,
    ) -> Series:
        """The first span of a series in this interval: apply the limit, then build or reuse."""
        overflow = self._admit(tenant, accumulator, target, metric, key, now, stats)
        if overflow is not None:
            return overflow
        template_key = (metric, accumulator.resource.resource_id, key)
        template = self._templates.get(template_key)
        if template is not None:
            self._templates.move_to_end(template_key)
        else:
            # Upstream's order (connector.go buildAttributes): the shared list (names, then glob
            # matches), then the metric's own list likewise.
            pairs: list[tuple[str, AnyValue | None]] = []
            found = self._lookup(span, resource) if self._dimension_index else []
            slot = self._slot
            pairs.extend((d.name, found[slot(d)]) for d in self._dimensions)
            if self._base_globs:
                pairs.extend(self._base_globs.pairs(span.attributes, resource.glob_values))
            pairs.extend((d.name, found[slot(d)]) for d in extra)
            if extra_globs:
                pairs.extend(extra_globs.pairs(span.attributes, resource.glob_values))
            attributes = self._attributes(resource, span, scope_key, pairs, sampled)
            template = (self._series_id(metric, accumulator.resource.resource_id, attributes), attributes)
            self._templates[template_key] = template
            if len(self._templates) > self._template_cache_size:
                self._templates.popitem(last=False)  # the least recently used
        return self._create(accumulator, target, metric, key, template[1], now, template[0])

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
        """Apply the cardinality limit: None admits ``key``, else the overflow series to use.

        A paired ``duration`` series (see :attr:`Series.companion`) is admitted or refused for
        both metrics at once, and a refusal counts for both, as for two separate series.
        """
        if not self._limit:
            return None
        admitted = self._admitted.setdefault((tenant, accumulator.resource.resource_id, metric), set())
        if key in admitted:
            return None
        if len(admitted) < self._limit:
            admitted.add(key)
            return None
        stats.overflowed += 2 if self._paired and metric == self.duration_name else 1
        series = target.get(_OVERFLOW_KEY)
        if series is None:
            series = self._create(
                accumulator, target, metric, _OVERFLOW_KEY, ((OVERFLOW_ATTRIBUTE, True),), now
            )
        # The overflow series stands in for the key from now on, so later spans skip this check.
        target[key] = series
        return series

    def _attributes(
        self,
        resource: _Resource,
        span: BatchSpan,
        scope_key: tuple[str, ...],
        dimensions: Sequence[tuple[str, AnyValue | None]],
        sampled: str | None = None,
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
        # A name given twice (a glob matching a name of another list, say) is written once, in
        # its first place, as upstream's attribute map does; the values agree.
        position: dict[str, int] = {}
        for name, value in dimensions:
            if value is not None:
                # Bounded: an output record must stay decodable whatever one span carries.
                at = position.get(name)
                if at is None:
                    position[name] = len(attributes)
                    attributes.append((name, label_value(value)))
                else:
                    attributes[at] = (name, label_value(value))
        # Upstream writes these before the dimensions, so a dimension of the same name wins.
        if scope_key:
            if SCOPE_NAME_ATTRIBUTE not in position:
                attributes.append((SCOPE_NAME_ATTRIBUTE, scope_key[0]))
            if scope_key[1] and SCOPE_VERSION_ATTRIBUTE not in position:
                attributes.append((SCOPE_VERSION_ATTRIBUTE, scope_key[1]))
        if sampled is not None and SAMPLING_METHOD_ATTRIBUTE not in position:
            attributes.append((SAMPLING_METHOD_ATTRIBUTE, sampled))
        return tuple(attributes)

    @staticmethod
    def _series_id(metric: str, resource_id: str, attributes: Attributes) -> str:
        # The canonical id names every dimension, so two configurations never share a series.
        body = SERIES_ID_SEPARATOR.join(
            f"{name}={value if isinstance(value, str) else stringify_python(value)}"
            for name, value in attributes
        )
        return make_series_id(metric, resource_id, body)

    def _create(
        self,
        accumulator: _Accumulator,
        target: dict[tuple[Any, ...], Series],
        metric: str,
        key: tuple[Any, ...],
        attributes: Attributes,
        now: int,
        series_id: str | None = None,
    ) -> Series:
        resource_id = accumulator.resource.resource_id
        series = Series(
            series_id=series_id or self._series_id(metric, resource_id, attributes),
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
            series.companion = self._companion
        target[key] = series
        return series

    # ------------------------------------------------------------------ hand over

    def expire(self, now_ns: int) -> None:
        """Nothing waits here: every span is counted when it is consumed."""

    def expire_all(self) -> None:
        """Nothing waits here: every span is counted when it is consumed."""

    def pending_series(self) -> int:
        """How many distinct metric series the current interval holds (memory bound check).

        A paired ``duration`` series counts twice: it stands for the ``calls`` series too.
        """
        per_duration = 2 if self._paired else 1
        return sum(
            len(a.calls) + per_duration * len(a.duration) + len(a.events) for a in self._pending.values()
        )

    def take_deltas(self) -> dict[str, TenantDeltas]:
        """Hand over this interval's deltas grouped by tenant, and start a new interval.

        Paired ``duration`` series are handed over as they are, standing for their ``calls``
        companions too (see :attr:`Series.companion`): where metrics are emitted,
        the OTLP encoder (or :func:`worker.model.series.with_companions`) writes the counters out.
        """
        if self._native_active:
            self._apply_native()
        pending, self._pending = self._pending, {}
        result: dict[str, TenantDeltas] = {}
        for (tenant, resource_id), accumulator in pending.items():
            deltas = result.get(tenant)
            if deltas is None:
                deltas = result[tenant] = TenantDeltas()
            deltas.resources[resource_id] = accumulator.resource.attributes
            for table in (accumulator.calls, accumulator.duration, accumulator.events):
                by_id: dict[str, Series] = {}
                for series in table.values():
                    first = by_id.get(series.series_id)
                    if first is None:
                        by_id[series.series_id] = series
                    elif first is not series:
                        # Two keys, one series: only invalid input (an attribute key repeated
                        # within a span) gets here. Merge rather than hand the series over twice.
                        merge_series(first, series, self._exemplars)
                # Overflow series are shared by many keys: the dict above keeps each once.
                deltas.series.extend(by_id.values())
        if len(self._admitted) > 4 * self._resource_cache_size:
            # The cardinality limit is per resource, as long as the resource is cached (as
            # upstream, whose per-resource state leaves with the resource): forget the series
            # admitted for evicted resources, or this grows with every resource ever seen.
            cached = {entry.resource_id for entry in self._resources.values()}
            self._admitted = {key: keys for key, keys in self._admitted.items() if key[1] in cached}
        return result
