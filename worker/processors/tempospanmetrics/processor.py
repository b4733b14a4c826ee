"""Spans in, per-series deltas out: Tempo's metrics-generator span metrics, with Tempo's names and labels."""

from __future__ import annotations

import random
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from worker.config import MetricsGeneratorConfig, RegistryConfig, tempo_label_name
from worker.model.enums import SPAN_KIND_NAMES, STATUS_CODE_NAMES
from worker.model.exphistogram import ExpHistogram
from worker.model.series import (
    SERIES_ID_SEPARATOR,
    Attributes,
    Exemplar,
    MetricDescriptor,
    MetricKind,
    Series,
    TenantDeltas,
    make_series_id,
    merge_series,
)
from worker.otlp.batch import BatchResource, BatchSpan, ResourceGroup, SpanBatch, group_request
from worker.processors.base import PipelineStats
from worker.processors.multiplier import SpanMultiplier
from worker.processors.sampling import stochastic_round
from worker.processors.servicegraphs.labels import tempo_string
from worker.processors.spanfilter import SpanFilter

__all__ = [
    "CALLS_TOTAL",
    "LATENCY",
    "RESOURCE_ID",
    "SCOPE_NAME",
    "SIZE_TOTAL",
    "TARGET_INFO",
    "TempoConsumeStats",
    "TempoSpanMetricsProcessor",
    "build_labels",
    "minute_start_ns",
]

CALLS_TOTAL = "traces_spanmetrics_calls_total"
LATENCY = "traces_spanmetrics_latency"
SIZE_TOTAL = "traces_spanmetrics_size_total"
TARGET_INFO = "traces_target_info"
#: The series key of the native (exponential) latency histogram when classic ones are written too
#: (``generate_native_histograms: both``): both are written under :data:`LATENCY`.
LATENCY_NATIVE_KEY = LATENCY + SERIES_ID_SEPARATOR + "native"

#: The instrumentation scope of every Tempo-mode metric: unnamed, because the Collector's
#: prometheusremotewrite exporter (since contrib PR #45987) writes a scope's name and version as
#: ``otel_scope_name``/``otel_scope_version`` labels on every series, which Tempo's series lack.
SCOPE_NAME = ""
#: The one resource all Tempo-mode span-metrics series belong to, without attributes: Tempo's
#: series carry every label themselves, and a resource's ``service.name`` would become a ``job``
#: label downstream (the prometheusremotewrite exporter's rule) that Tempo does not write.
RESOURCE_ID = "tempo.spanmetrics"
RESOURCE_ATTRIBUTES: Attributes = ()


_SERVICE_NAME = "service.name"
_SERVICE_NAMESPACE = "service.namespace"
_SERVICE_INSTANCE_ID = "service.instance.id"
_JOB = "job"
_INSTANCE = "instance"
#: target_info's reserved names: a resource attribute sanitized to one of these gets ``__``.
_TARGET_INFO_INTRINSICS = frozenset(
    ("service", "span_name", "span_kind", "status_code", "status_message", _JOB, _INSTANCE)
)
#: The most one span counts for (as in the connector processor: beyond it counters overflow).
_MAX_WEIGHT = float(1 << 20)
#: Past 2255 a time no longer survives Redis (microseconds in Lua doubles).
_MAX_TIME_NS = (1 << 53) * 1000
_RESOURCE_CACHE_SIZE = 1000
_RESOURCE_CACHE_ENTRY_MAX_BYTES = 64 * 1024
_TEMPLATE_CACHE_SIZE = 10_000
_MINUTE_NS = 60_000_000_000


def minute_start_ns(now_ns: int) -> int:
    """A new series' start time: one second before the minute ``now_ns`` is in (Tempo's
    ``getEndOfLastMinuteMs``), where its zero sample goes."""
    return now_ns - now_ns % _MINUTE_NS - 1_000_000_000


def _truncate(text: str, limit: int) -> str | None:
    """Tempo's byte slicing ``s[:limit]``; None when the cut splits a character (Tempo then has
    invalid UTF-8 and discards the span)."""
    if not limit or len(text) <= limit // 4:
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    try:
        return data[:limit].decode("utf-8")
    except UnicodeDecodeError:
        return None


def build_labels(pairs: Iterable[tuple[str, str]], name_limit: int, value_limit: int) -> Attributes | None:
    """Tempo's label builder: truncate, sort by name (stable), the last of a name wins, an empty
    value removes the label. None when a truncated name or value is not valid UTF-8."""
    truncated: list[tuple[str, str]] = []
    for name, value in pairs:
        short_name = _truncate(name, name_limit)
        short_value = _truncate(value, value_limit)
        if short_name is None or short_value is None:
            return None
        truncated.append((short_name, short_value))
    truncated.sort(key=lambda pair: pair[0])
    result: dict[str, str] = {}
    for name, value in truncated:
        result[name] = value
    return tuple((name, value) for name, value in result.items() if value)


@dataclass(slots=True)
class TempoConsumeStats:
    """What one ``consume`` call did, for the worker's self-metrics and logs."""

    spans: int = 0
    #: Spans whose label set Tempo would find invalid (a length limit cut a character).
    invalid_labels: int = 0
    #: Spans the filter policies left out.
    filtered: int = 0

    def add_to(self, total: PipelineStats) -> None:
        total.spans += self.spans
        total.filtered += self.filtered
        total.invalid_labels += self.invalid_labels


@dataclass(slots=True)
class _Resource:
    """Per-resource work done once: Tempo's service labels, attribute strings and target info."""

    uid: int
    service: str
    job: str
    instance: str
    #: key -> the first attribute of that key, typed (span filters and the multiplier read these).
    values: dict[str, AnyValue]
    #: per dimension: the resource's Tempo string for it, or None (then the span is asked).
    dimensions: list[str | None]
    #: per dimension mapping, per source: the resource's Tempo string, or None.
    mappings: list[list[str | None]]
    #: The ``traces_target_info`` labels, or None when Tempo registers none for this resource.
    target_info: Attributes | None


@dataclass(slots=True)
class _Accumulator:
    """One resource's series for the current interval, keyed by the span values that pick them."""

    resource: _Resource
    calls: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    latency: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    native: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    size: dict[tuple[Any, ...], Series] = field(default_factory=dict)
    #: latency key -> bucket -> the last span's exemplar (Tempo keeps one per bucket).
    exemplars: dict[tuple[Any, ...], dict[int, Exemplar]] = field(default_factory=dict)
    #: Whether a span of this resource was aggregated (then its target info is refreshed).
    seen: bool = False


class TempoSpanMetricsProcessor:
    """Aggregates spans into Tempo's span-metrics series; :meth:`take_deltas` hands them over.

    Not thread-safe; one instance per worker event loop. ``clock`` returns unix nanoseconds and
    ``uniform`` a float in [0, 1) (a fractional span multiplier is rounded stochastically).
    """

    def __init__(
        self,
        generator: MetricsGeneratorConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        config = generator.span_metrics
        self.config = config
        self.registry: RegistryConfig = generator.registry
        self._clock = clock
        self._uniform = uniform
        parts = generator.span_metrics_subprocessors
        self._count = "count" in parts
        self._size = "size" in parts
        mode = generator.generate_native_histograms.value if "latency" in parts else ""
        self._classic = mode in ("classic", "both")
        self._native = mode in ("native", "both")
        self._native_key = LATENCY_NATIVE_KEY if self._classic else LATENCY
        self._native_scale = generator.native_initial_scale
        self._native_size = generator.native_histogram_max_bucket_number
        self._bounds: tuple[float, ...] = tuple(config.histogram_buckets)
        self._target_info = config.enable_target_info
        self._instance_label = config.enable_instance_label
        self._excluded = frozenset(config.target_info_excluded_dimensions)
        intrinsic = config.intrinsic_dimensions
        self._intrinsics = (
            intrinsic.service,
            intrinsic.span_name,
            intrinsic.span_kind,
            intrinsic.status_code,
            intrinsic.status_message,
        )
        self._dimensions: tuple[str, ...] = config.dimensions
        self._dimension_labels = tuple(tempo_label_name(d) for d in config.dimensions)
        self._mappings = config.dimension_mappings
        self._mapping_labels = tuple(tempo_label_name(m.name) for m in config.dimension_mappings)
        self._multiplier = SpanMultiplier(
            config.span_multiplier_key, config.enable_tracestate_span_multiplier
        )
        self._filter = SpanFilter(config.filter_policies)
        self._name_limit = self.registry.max_label_name_length
        self._value_limit = self.registry.max_label_value_length
        self._external = tuple(self.registry.external_labels.items())
        self._tenant_label = self.registry.inject_tenant_id_as

        self._resources: OrderedDict[bytes, _Resource] = OrderedDict()
        self._next_uid = 0
        self._pending: dict[tuple[str, int], _Accumulator] = {}
        #: (tenant, metric key, resource uid, key) -> (series id, labels), across intervals.
        self._templates: OrderedDict[tuple[Any, ...], tuple[str, Attributes] | None] = OrderedDict()

    # ------------------------------------------------------------------ descriptors

    def descriptors(self) -> list[MetricDescriptor]:
        """The metrics this processor emits, in output order. With ``both`` the native histogram
        has a series key of its own (``key``) and the classic one's name. No unit: the latency
        is in seconds, but a unit would make exporters that add unit suffixes write
        ``traces_spanmetrics_latency_seconds``, which is not Tempo's name."""
        # Counters and histograms are zero-initialised as Tempo's registry does it (counter.go,
        # histogram.go, native_histogram.go collectMetrics: a 0 at getEndOfLastMinuteMs first).
        found: list[MetricDescriptor] = []
        if self._count:
            found.append(
                MetricDescriptor(CALLS_TOTAL, MetricKind.SUM, scope=SCOPE_NAME, order=0, zero_init=True)
            )
        if self._classic:
            found.append(
                MetricDescriptor(
                    LATENCY,
                    MetricKind.HISTOGRAM,
                    bounds=self._bounds,
                    scope=SCOPE_NAME,
                    order=1,
                    zero_init=True,
                )
            )
        if self._native:
            key = self._native_key if self._native_key != LATENCY else ""
            found.append(
                MetricDescriptor(
                    LATENCY,
                    MetricKind.EXPONENTIAL_HISTOGRAM,
                    scope=SCOPE_NAME,
                    order=2,
                    key=key,
                    zero_init=True,
                )
            )
        if self._size:
            found.append(
                MetricDescriptor(SIZE_TOTAL, MetricKind.SUM, scope=SCOPE_NAME, order=3, zero_init=True)
            )
        if self._target_info:
            found.append(MetricDescriptor(TARGET_INFO, MetricKind.INFO, scope=SCOPE_NAME, order=4))
        return found

    @property
    def max_exemplars(self) -> int:
        """Exemplars a latency series keeps per flush: one per classic bucket (Tempo's rule)."""
        if self._classic:
            return len(self._bounds) + 1
        return 1 if self._native else 0

    # ------------------------------------------------------------------ consume

    def consume(
        self,
        request: ExportTraceServiceRequest | SpanBatch,
        tenant: str,
        partition: int = 0,
        *,
        groups: list[ResourceGroup] | None = None,
    ) -> TempoConsumeStats:
        """Aggregate every span of one OTLP request (``partition`` does not matter here)."""
        stats = TempoConsumeStats()
        now = self._clock()
        for resource_message, cache_key, scopes in group_request(request) if groups is None else groups:
            resource = self._resource(resource_message, cache_key)
            accumulator = self._pending.get((tenant, resource.uid))
            if accumulator is None:
                accumulator = self._pending[(tenant, resource.uid)] = _Accumulator(resource)
            for _, spans in scopes:
                stats.spans += len(spans)
                self._observe(tenant, accumulator, spans, now, stats)
        return stats

    def _resource(self, resource: BatchResource, cache_key: bytes) -> _Resource:
        cached = self._resources.get(cache_key)
        if cached is not None:
            self._resources.move_to_end(cache_key)
            return cached
        entry = self._build_resource(resource)
        if len(cache_key) <= _RESOURCE_CACHE_ENTRY_MAX_BYTES:
            self._resources[cache_key] = entry
            if len(self._resources) > _RESOURCE_CACHE_SIZE:
                self._resources.popitem(last=False)
        return entry

    def _build_resource(self, resource: BatchResource) -> _Resource:
        values: dict[str, AnyValue] = {}
        strings: dict[str, str] = {}
        for kv in resource.attributes:
            if kv.key not in values:
                # A copy: a sub-message would keep the whole request it came from alive.
                values[kv.key] = copy = type(kv.value)()
                copy.CopyFrom(kv.value)
                strings[kv.key] = tempo_string(kv.value)
        # processor/util FindServiceLabels: first occurrence of each, any type stringified.
        service = strings.get(_SERVICE_NAME, "")
        namespace = strings.get(_SERVICE_NAMESPACE, "")
        instance = strings.get(_SERVICE_INSTANCE_ID, "")
        job = "" if not service else f"{namespace}/{service}" if namespace else service
        self._next_uid += 1
        return _Resource(
            uid=self._next_uid,
            service=service,
            job=job,
            instance=instance,
            values=values,
            dimensions=[strings.get(name) for name in self._dimensions],
            mappings=[[strings.get(source) for source in m.source_labels] for m in self._mappings],
            target_info=self._target_info_labels(resource, job, instance) if self._target_info else None,
        )

    def _target_info_labels(self, resource: BatchResource, job: str, instance: str) -> Attributes | None:
        """spanmetrics.go buildAndSetTargetInfoLabels: every resource attribute but the service
        ones and the excluded, plus job and instance; None when Tempo registers nothing."""
        pairs: list[tuple[str, str]] = []
        for kv in resource.attributes:
            key = kv.key
            if not key or (key[0].isdigit() and key[0] in "0123456789"):
                continue
            if key in (_SERVICE_NAME, _SERVICE_NAMESPACE, _SERVICE_INSTANCE_ID) or key in self._excluded:
                continue
            pairs.append((tempo_label_name(key, _TARGET_INFO_INTRINSICS), tempo_string(kv.value)))
        identifying = 0
        if job:
            pairs.append((_JOB, job))
            identifying += 1
        if instance and self._instance_label:
            pairs.append((_INSTANCE, instance))
            identifying += 1
        labels = build_labels(pairs, self._name_limit, self._value_limit)
        if labels is None or not identifying or len(labels) <= identifying:
            return None
        return labels

    def _weight(self, resource: _Resource, span: BatchSpan) -> int:
        """processor/util GetSpanMultiplier, rounded stochastically to whole spans."""
        multiplier = min(self._multiplier(resource.values, span), _MAX_WEIGHT)
        return int(multiplier) if multiplier.is_integer() else stochastic_round(multiplier, self._uniform)

    def _observe(
        self,
        tenant: str,
        accumulator: _Accumulator,
        spans: Sequence[BatchSpan],
        now: int,
        stats: TempoConsumeStats,
    ) -> None:
        resource = accumulator.resource
        _, name_on, kind_on, code_on, message_on = self._intrinsics
        dimensions = self._dimensions
        mappings = self._mappings
        weighted = self._multiplier.active
        filtering = self._filter.active
        keep = self._filter.keep
        bounds = self._bounds
        for span in spans:
            if filtering and not keep(resource.values, span):
                # spanmetrics.go: counted as spans_discarded{reason="span_metrics_filtered"}.
                stats.filtered += 1
                continue
            attributes = span.attributes
            key: list[Any] = [
                span.name if name_on else None,
                span.kind if kind_on else None,
                span.status.code if code_on else None,
                span.status.message if message_on else None,
            ]
            for index, name in enumerate(dimensions):
                value = resource.dimensions[index]
                if value is None:
                    found = attributes.get(name)
                    value = "" if found is None else found.string_value or tempo_string(found)
                key.append(value)
            for index, mapping in enumerate(mappings):
                joined: list[str] = []
                for position, source in enumerate(mapping.source_labels):
                    value = resource.mappings[index][position]
                    if value is None:
                        found = attributes.get(source)
                        value = "" if found is None else found.string_value or tempo_string(found)
                    if value:
                        joined.append(value)
                key.append(mapping.join.join(joined))
            series_key = tuple(key)
            labels = self._labels(tenant, resource, series_key, span)
            if labels is None:
                stats.invalid_labels += 1
                continue
            accumulator.seen = True
            weight = self._weight(resource, span) if weighted else 1
            if self._count:
                series = accumulator.calls.get(series_key) or self._create(
                    accumulator.calls, CALLS_TOTAL, series_key, labels, now
                )
                series.count += weight
                series.last_ns = now
            start = span.start_time_unix_nano
            end = span.end_time_unix_nano
            latency = (end - start) / 1e9 if start < end else 0.0
            exemplar: Exemplar | None = None
            if (self._classic or self._native) and span.trace_id:
                exemplar = (span.trace_id, span.span_id, latency, end if 0 < end < _MAX_TIME_NS else now)
            if self._classic:
                series = accumulator.latency.get(series_key) or self._create(
                    accumulator.latency, LATENCY, series_key, labels, now, histogram="classic"
                )
                bucket = bisect_left(bounds, latency)
                if weight:
                    series.count += weight
                    series.sum += latency * weight
                    assert series.buckets is not None
                    series.buckets[bucket] += weight
                series.last_ns = now
                if exemplar is not None:
                    accumulator.exemplars.setdefault(series_key, {})[bucket] = exemplar
            if self._native:
                series = accumulator.native.get(series_key) or self._create(
                    accumulator.native, self._native_key, series_key, labels, now, histogram="native"
                )
                if weight:
                    assert series.exp is not None
                    series.exp.record(latency, weight)
                    series.count += weight
                    series.sum += latency * weight
                series.last_ns = now
                if exemplar is not None and not self._classic:
                    series.exemplars[:] = [exemplar]
            if self._size:
                series = accumulator.size.get(series_key) or self._create(
                    accumulator.size, SIZE_TOTAL, series_key, labels, now
                )
                # The multiplier is not applied to the size (spanmetrics.go).
                series.count += span.ByteSize()
                series.last_ns = now

    # ------------------------------------------------------------------ series

    def _labels(
        self, tenant: str, resource: _Resource, key: tuple[Any, ...], span: BatchSpan
    ) -> Attributes | None:
        """The span series' labels for ``key`` (cached across intervals), None when invalid."""
        template_key = (tenant, resource.uid, key)
        cached = self._templates.get(template_key, False)
        if cached is not False:
            self._templates.move_to_end(template_key)
            return cached[1] if cached is not None else None  # type: ignore[index]
        name, kind, code, message = key[:4]
        pairs: list[tuple[str, str]] = []
        if self._intrinsics[0]:
            pairs.append(("service", resource.service))
        if name is not None:
            pairs.append(("span_name", name))
        if kind is not None:
            pairs.append(("span_kind", SPAN_KIND_NAMES.get(kind, str(kind))))
        if code is not None:
            pairs.append(("status_code", STATUS_CODE_NAMES.get(code, str(code))))
        if message is not None:
            pairs.append(("status_message", message))
        values = key[4:]
        labels = (*self._dimension_labels, *self._mapping_labels)
        pairs.extend(zip(labels, values, strict=True))
        if self._target_info and resource.job:
            pairs.append((_JOB, resource.job))
        if self._target_info and self._instance_label and resource.instance:
            pairs.append((_INSTANCE, resource.instance))
        built = build_labels(pairs, self._name_limit, self._value_limit)
        template = None if built is None else self._with_external(tenant, built)
        self._templates[template_key] = template
        if len(self._templates) > _TEMPLATE_CACHE_SIZE:
            self._templates.popitem(last=False)
        return template[1] if template is not None else None

    def _with_external(self, tenant: str, labels: Attributes) -> tuple[str, Attributes]:
        """The labels with the registry's external labels set over them (registry/util.go), and
        their series body."""
        if self._external or self._tenant_label:
            merged = dict(labels)
            for name, value in self._external:
                merged[name] = value
            if self._tenant_label:
                merged[self._tenant_label] = tenant
            labels = tuple(sorted((n, v) for n, v in merged.items() if v))
        body = SERIES_ID_SEPARATOR.join(f"{name}={value}" for name, value in labels)
        return body, labels

    def _create(
        self,
        target: dict[tuple[Any, ...], Series],
        metric: str,
        key: tuple[Any, ...],
        labels: Attributes,
        now: int,
        *,
        histogram: str = "",
    ) -> Series:
        body = SERIES_ID_SEPARATOR.join(f"{name}={value}" for name, value in labels)
        series = Series(
            series_id=make_series_id(metric, RESOURCE_ID, body),
            metric=metric,
            resource_id=RESOURCE_ID,
            attributes=labels,
            start_ns=minute_start_ns(now),
            last_ns=now,
        )
        if histogram == "native":
            series.exp = ExpHistogram(max_size=self._native_size, scale=self._native_scale)
        elif histogram == "classic":
            series.buckets = [0] * (len(self._bounds) + 1)
        target[key] = series
        return series

    def _target_info_series(self, tenant: str, resource: _Resource, now: int) -> Series | None:
        labels = resource.target_info
        if labels is None:
            return None
        _, labels = self._with_external(tenant, labels)
        body = SERIES_ID_SEPARATOR.join(f"{name}={value}" for name, value in labels)
        series = Series(
            series_id=make_series_id(TARGET_INFO, RESOURCE_ID, body),
            metric=TARGET_INFO,
            resource_id=RESOURCE_ID,
            attributes=labels,
            start_ns=minute_start_ns(now),
            last_ns=now,
            count=1,
        )
        return series

    # ------------------------------------------------------------------ hand over

    def expire(self, now_ns: int) -> None:
        """Nothing waits here: every span is counted when it is consumed."""

    def expire_all(self) -> None:
        """Nothing waits here: every span is counted when it is consumed."""

    def take_deltas(self) -> dict[str, TenantDeltas]:
        """Hand over this interval's deltas by tenant, and start a new interval.

        Resources whose spans give the same labels share a series (as in Tempo, whose series are
        their label sets): their deltas are merged here.
        """
        pending, self._pending = self._pending, {}
        now = self._clock()
        merged: dict[str, dict[str, Series]] = {}
        for (tenant, _), accumulator in pending.items():
            by_id = merged.setdefault(tenant, {})
            for key, exemplars in accumulator.exemplars.items():
                accumulator.latency[key].exemplars = list(exemplars.values())
            tables: list[Iterable[Series]] = [
                accumulator.calls.values(),
                accumulator.latency.values(),
                accumulator.native.values(),
                accumulator.size.values(),
            ]
            if accumulator.seen and self._target_info:
                info = self._target_info_series(tenant, accumulator.resource, now)
                if info is not None:
                    tables.append((info,))
            for table in tables:
                for series in table:
                    first = by_id.get(series.series_id)
                    if first is None:
                        by_id[series.series_id] = series
                    elif first is not series:
                        merge_series(first, series, self.max_exemplars)
        return {
            tenant: TenantDeltas(resources={RESOURCE_ID: RESOURCE_ATTRIBUTES}, series=list(series.values()))
            for tenant, series in merged.items()
            if series
        }
