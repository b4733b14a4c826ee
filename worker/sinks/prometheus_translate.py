"""Folded series -> Prometheus time series, as the Collector's ``prometheusremotewrite`` exporter writes them.

Pure: no I/O. The rules follow opentelemetry-collector-contrib with default settings
(``add_metric_suffixes: true``, target info on, no external labels, no ``_created`` series):

* names: pkg/translator/prometheus/normalize_name.go (``BuildCompliantName`` -> ``normalizeName``:
  tokens split on invalid characters, the unit appended through ``unitMap`` unless already a
  token, ``_total`` for monotonic sums), so ``calls`` -> ``calls_total``, ``duration`` (ms) ->
  ``duration_milliseconds_bucket/_sum/_count``; valid characters are ASCII letters, digits and
  ``:``, as in the otlptranslator package recent Collectors use with UTF-8 names off;
* label names: pkg/translator/prometheus/normalize_label.go (``NormalizeLabel``: invalid
  characters -> ``_`` (ASCII, as otlptranslator's ``LabelNamer``), ``key_`` before a leading
  digit, ``key`` before a single leading ``_``); attributes sorted by key first, values of keys
  colliding after sanitising joined with ``;``;
* labels: pkg/translator/prometheusremotewrite/helper.go (``createAttributes``: data point
  attributes only, ``job`` = ``service.namespace/service.name``, ``instance`` =
  ``service.instance.id``, then ``otel_scope_name``/``otel_scope_version``, then ``__name__`` and
  ``le``); ``addSingleHistogramDataPoint`` (cumulative buckets, ``le`` by Go's
  ``strconv.FormatFloat(bound, 'f', -1, 64)``, exemplars on the first bucket whose bound holds
  them); ``addResourceTargetInfo`` (``target_info`` only for a resource with attributes besides
  ``service.name``/``service.namespace``/``service.instance.id``, and with a job or instance);
* native histograms: pkg/translator/prometheusremotewrite/histograms.go
  (``exponentialToNativeHistogram``, ``convertBucketsLayout``: scale capped at 8 by merging
  buckets, indexes shifted by one, a new span after a gap of more than two buckets).

Differences on purpose: labels with an empty value are left out (Prometheus drops them anyway)
and, in Tempo mode, data point labels are written as they are, because the Tempo processors
already made them Tempo's label names (the exporter would prefix ``_x`` as ``key_x``).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache

from state.codec import attributes_of_parts
from worker.model.series import Attributes, Exemplar, MetricDescriptor, MetricKind, Series, companion_series
from worker.model.values import stringify_python

__all__ = [
    "NATIVE_ZERO_THRESHOLD",
    "NativeHistogram",
    "PromExemplar",
    "PromSeries",
    "Translator",
    "convert_buckets_layout",
    "format_le",
    "metric_name",
    "normalize_label",
]

#: Identifying resource attributes: they become ``job`` and ``instance``, never target_info labels.
SERVICE_NAME = "service.name"
SERVICE_NAMESPACE = "service.namespace"
SERVICE_INSTANCE_ID = "service.instance.id"
_IDENTIFYING = frozenset((SERVICE_NAME, SERVICE_NAMESPACE, SERVICE_INSTANCE_ID))

#: The exporter's ``defaultZeroThreshold`` for native histograms (histograms.go).
NATIVE_ZERO_THRESHOLD = 1e-128

#: normalize_name.go ``unitMap``: OTLP (UCUM) units -> Prometheus unit words.
_UNIT_WORDS: dict[str, str] = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
#: normalize_name.go ``perUnitMap``: the unit after ``/``.
_PER_UNIT_WORDS: dict[str, str] = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}


# ---------------------------------------------------------------------------------- names


_NAME_SEPARATORS = re.compile(r"[^a-zA-Z0-9:]+")
_UNIT_SEPARATORS = re.compile(r"[^a-zA-Z0-9]+")
_LABEL_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _tokens(text: str, separators: re.Pattern[str] = _NAME_SEPARATORS) -> list[str]:
    """The runs of valid characters: ASCII letters, digits (and ``:`` in metric names), as
    otlptranslator's ``normalizeName`` splits with UTF-8 names off. (The older
    normalize_name.go kept any Unicode letter, which a Prometheus without UTF-8 names refuses,
    failing the whole request.)"""
    return [token for token in separators.split(text) if token]


def metric_name(name: str, unit: str, kind: MetricKind) -> str:
    """``normalizeName`` of normalize_name.go with no namespace: the base name before ``_bucket``,
    ``_sum``, ``_count``."""
    tokens = _tokens(name)
    unit_parts = unit.split("/", 1)
    main = unit_parts[0].strip()
    if main and "{" not in main and "}" not in main:
        word = "_".join(_tokens(_UNIT_WORDS.get(main, main), _UNIT_SEPARATORS))
        if word and word not in tokens:
            tokens.append(word)
    if len(unit_parts) > 1 and unit_parts[1]:
        per = unit_parts[1].strip()
        if per and "{" not in per and "}" not in per:
            word = "_".join(_tokens(_PER_UNIT_WORDS.get(per, per), _UNIT_SEPARATORS))
            if word and word not in tokens:
                tokens += ["per", word]
    if kind is MetricKind.SUM:  # every Sum here is monotonic
        tokens = [token for token in tokens if token != "total"] + ["total"]
    # A Gauge with unit "1" gets "_ratio"; the only gauges here (INFO) have no unit.
    joined = "_".join(tokens)
    if joined and joined[0].isdigit():
        joined = "_" + joined
    return joined


def normalize_label(label: str) -> str:
    """``NormalizeLabel`` of normalize_label.go with its default feature gates, ASCII only
    (otlptranslator's ``LabelNamer`` with UTF-8 off): a Prometheus without UTF-8 label names
    refuses a whole request for one non-ASCII name."""
    if not label:
        return label
    label = _LABEL_INVALID.sub("_", label)
    if label[0].isdigit():
        return "key_" + label
    if label.startswith("_") and not label.startswith("__"):
        return "key" + label
    return label


def format_le(bound: float) -> str:
    """Go's ``strconv.FormatFloat(bound, 'f', -1, 64)``: the shortest digits that round-trip, in
    fixed notation ("2", "0.002", "1400"; never "2.0" or "1e-05")."""
    if bound != bound:
        return "NaN"
    if bound in (float("inf"), float("-inf")):
        return "+Inf" if bound > 0 else "-Inf"
    text = format(Decimal(repr(bound)).normalize(), "f")
    if text == "0" and str(bound).startswith("-"):
        return "-0"
    return text


# ---------------------------------------------------------------------------------- output types


@dataclass(slots=True)
class PromExemplar:
    labels: tuple[tuple[str, str], ...]
    value: float
    timestamp_ms: int


@dataclass(slots=True)
class NativeHistogram:
    """An integer native histogram (the ``prompb.Histogram`` the exporter builds)."""

    count: int
    sum: float
    schema: int
    zero_count: int
    positive_spans: list[tuple[int, int]]
    positive_deltas: list[int]
    timestamp_ms: int
    zero_threshold: float = NATIVE_ZERO_THRESHOLD


@dataclass(slots=True)
class PromSeries:
    """One remote-write time series: labels sorted by name (``__name__`` among them), unique,
    none empty; samples (milliseconds, value) or native histograms in time order."""

    labels: tuple[tuple[str, str], ...]
    samples: list[tuple[int, float]] = field(default_factory=list)
    histograms: list[NativeHistogram] = field(default_factory=list)
    exemplars: list[PromExemplar] = field(default_factory=list)

    @property
    def name(self) -> str:
        return dict(self.labels).get("__name__", "")

    @property
    def points(self) -> int:
        """Samples plus histograms: what the remote-write counters count."""
        return len(self.samples) + len(self.histograms)


# ---------------------------------------------------------------------------------- native histograms


def convert_buckets_layout(
    offset: int, counts: Sequence[int], scale_down: int
) -> tuple[list[tuple[int, int]], list[int]]:
    """``convertBucketsLayout`` of histograms.go, step for step: OTLP dense buckets (bucket i
    covers (base^(offset+i), base^(offset+i+1)]) -> Prometheus spans and count deltas (bucket
    index shifted by one), merging ``2**scale_down`` buckets into one."""
    if not counts:
        return [], []
    spans: list[list[int]] = []
    deltas: list[int] = []
    previous = 0

    def append_delta(value: int) -> None:
        nonlocal previous
        spans[-1][1] += 1
        deltas.append(value - previous)
        previous = value

    bucket_index = (offset >> scale_down) + 1
    spans.append([bucket_index, 0])
    count = 0
    for i, value in enumerate(counts):
        next_index = ((i + offset) >> scale_down) + 1
        if bucket_index == next_index:
            count += value
            continue
        if count == 0:
            count = value
            continue
        gap = next_index - bucket_index - 1
        if gap > 2:
            spans.append([gap, 0])
        else:
            for _ in range(gap):
                append_delta(0)
        append_delta(count)
        count = value
        bucket_index = next_index
    gap = ((len(counts) + offset - 1) >> scale_down) + 1 - bucket_index
    if gap > 2:
        spans.append([gap, 0])
    else:
        for _ in range(gap):
            append_delta(0)
    append_delta(count)
    return [(span[0], span[1]) for span in spans], deltas


def _native(series: Series | None, timestamp_ms: int, *, zero: bool) -> NativeHistogram | None:
    """``exponentialToNativeHistogram``; None for a scale below -4 (the exporter drops the point)."""
    exp = series.exp if series is not None else None
    scale = exp.scale if exp is not None else 0
    if scale < -4:
        return None
    scale_down = scale - 8 if scale > 8 else 0
    if zero or exp is None or series is None:
        return NativeHistogram(0, 0.0, scale - scale_down, 0, [], [], timestamp_ms)
    spans, deltas = convert_buckets_layout(exp.offset, exp.counts, scale_down)
    return NativeHistogram(
        series.count, series.sum, scale - scale_down, exp.zero_count, spans, deltas, timestamp_ms
    )


# ---------------------------------------------------------------------------------- translation


def _exemplar(exemplar: Exemplar, timestamp_ms: int) -> PromExemplar:
    """``getPromExemplars``: trace_id and span_id in hex when set. Stamped with the flush time,
    as the OTLP encoder stamps exemplars (worker/otlp/metrics_encoder.py ``_exemplars``)."""
    trace_id, span_id, value, _ = exemplar
    labels: list[tuple[str, str]] = []
    if trace_id and any(trace_id):
        labels.append(("trace_id", trace_id.hex()))
    if span_id and any(span_id):
        labels.append(("span_id", span_id.hex()))
    return PromExemplar(tuple(labels), value, timestamp_ms)


@dataclass(slots=True)
class _Resource:
    """A resource's ``job``/``instance`` and, when it has other attributes, its target_info labels."""

    identity: dict[str, str]
    target_info: tuple[tuple[str, str], ...] | None


#: Bounded memos of the two per-data-point conversions (label names and ``le`` values repeat).
_cached_label = lru_cache(maxsize=4096)(normalize_label)
_cached_le = lru_cache(maxsize=4096)(format_le)


class Translator:
    """Translates one slot's folded series (one tenant) into Prometheus time series.

    ``sanitize_labels`` False (Tempo mode): data point attribute names are written as they are.
    """

    def __init__(self, descriptors: Mapping[str, MetricDescriptor], *, sanitize_labels: bool = True) -> None:
        self.descriptors = dict(descriptors)
        self.sanitize_labels = sanitize_labels
        self._names: dict[str, str] = {}
        self._parts: dict[bytes, tuple[str, str]] = {}

    # ------------------------------------------------------------------ helpers

    def _base_name(self, descriptor: MetricDescriptor) -> str:
        key = descriptor.series_metric
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = metric_name(descriptor.name, descriptor.unit, descriptor.kind)
        return name

    def _point_attributes(self, series: Series) -> list[tuple[str, str]]:
        parts = series.attribute_parts
        if parts is None:
            return [(key, stringify_python(value)) for key, value in series.attributes]
        cache = self._parts
        out = []
        for part in parts:
            hit = cache.get(part)
            if hit is None:
                ((key, value),) = attributes_of_parts([part])
                if len(cache) > 16384:
                    cache.clear()
                hit = cache[part] = (key, stringify_python(value))
            out.append(hit)
        return out

    def _merge(self, attributes: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Attributes sorted by key (stable), sanitised, colliding values joined with ``;``."""
        if not self.sanitize_labels:
            return dict(attributes)
        return self._merge_resource(attributes)

    def _resource(self, attributes: Attributes) -> _Resource:
        values = {key: stringify_python(value) for key, value in attributes}
        identity: dict[str, str] = {}
        if SERVICE_NAME in values:
            name = values[SERVICE_NAME]
            namespace = values.get(SERVICE_NAMESPACE)
            identity["job"] = f"{namespace}/{name}" if namespace is not None else name
        if SERVICE_INSTANCE_ID in values:
            identity["instance"] = values[SERVICE_INSTANCE_ID]
        others = [(key, value) for key, value in values.items() if key not in _IDENTIFYING]
        target_info = None
        if others:
            labels = self._merge_resource(others)
            labels.update(identity)
            if "job" in labels or "instance" in labels:
                labels["__name__"] = "target_info"
                target_info = _finish(labels)
        return _Resource(identity, target_info)

    def _merge_resource(self, attributes: Iterable[tuple[str, str]]) -> dict[str, str]:
        labels: dict[str, str] = {}
        for key, value in sorted(attributes, key=lambda pair: pair[0]):
            name = _cached_label(key)
            existing = labels.get(name)
            labels[name] = value if existing is None else existing + ";" + value
        return labels

    # ------------------------------------------------------------------ translation

    def translate(
        self,
        resources: Mapping[str, Attributes],
        series: Iterable[Series],
        now_ns: int,
        *,
        info_sent: set[str] | None = None,
    ) -> list[PromSeries]:
        """The time series for ``series`` stamped ``now_ns`` (cumulative values), plus one
        target_info per resource that calls for it; series of unknown metrics are skipped.

        ``info_sent``: resource ids whose target_info this publication already carries (a slot
        translated in parts); updated."""
        now_ms = now_ns // 1_000_000
        out: dict[tuple[tuple[str, str], ...], PromSeries] = {}
        seen_resources: dict[str, _Resource] = {}
        for item in _expanded(series):
            descriptor = self.descriptors.get(item.metric)
            if descriptor is None:
                continue
            resource = seen_resources.get(item.resource_id)
            if resource is None:
                resource = seen_resources[item.resource_id] = self._resource(
                    resources.get(item.resource_id, ())
                )
            base = self._merge(self._point_attributes(item))
            base.update(resource.identity)
            if descriptor.scope:
                base["otel_scope_name"] = descriptor.scope
            self._add(out, descriptor, item, base, now_ns, now_ms)
        for resource_id, resource in seen_resources.items():
            if resource.target_info is not None:
                if info_sent is not None:
                    if resource_id in info_sent:
                        continue
                    info_sent.add(resource_id)
                _series_for(out, resource.target_info).samples.append((now_ms, 1.0))
        return list(out.values())

    def _add(
        self,
        out: dict[tuple[tuple[str, str], ...], PromSeries],
        descriptor: MetricDescriptor,
        item: Series,
        base: dict[str, str],
        now_ns: int,
        now_ms: int,
    ) -> None:
        name = self._base_name(descriptor)
        kind = descriptor.kind
        labels = _Labels(base)
        # The zero point the OTLP encoder writes first (metrics_encoder ``_writes_zero``).
        zero_ms = (
            item.zero_ns // 1_000_000
            if descriptor.zero_init and kind is not MetricKind.INFO and 0 < item.zero_ns < now_ns
            else None
        )
        if kind is MetricKind.SUM:
            target = _series_for(out, labels.named(name))
            if zero_ms is not None:
                target.samples.append((zero_ms, 0.0))
            target.samples.append((now_ms, float(item.count)))
            target.exemplars.extend(_exemplar(e, now_ms) for e in item.exemplars)
        elif kind is MetricKind.INFO:
            _series_for(out, labels.named(name)).samples.append((now_ms, 1.0))
        elif kind is MetricKind.HISTOGRAM:
            self._histogram(out, descriptor, item, labels, name, now_ms, zero_ms)
        else:
            target = _series_for(out, labels.named(name))
            if zero_ms is not None:
                zero = _native(item, zero_ms, zero=True)
                if zero is not None:
                    target.histograms.append(zero)
            point = _native(item, now_ms, zero=False)
            if point is not None:
                target.histograms.append(point)
                target.exemplars.extend(_exemplar(e, now_ms) for e in item.exemplars)

    def _histogram(
        self,
        out: dict[tuple[tuple[str, str], ...], PromSeries],
        descriptor: MetricDescriptor,
        item: Series,
        labels: _Labels,
        name: str,
        now_ms: int,
        zero_ms: int | None,
    ) -> None:
        bounds = descriptor.bounds
        buckets = item.buckets or [0] * (len(bounds) + 1)
        # _sum only for the counted point (the zero point has no sum), then _count, then buckets.
        _series_for(out, labels.named(name + "_sum")).samples.append((now_ms, item.sum))
        count = _series_for(out, labels.named(name + "_count"))
        if zero_ms is not None:
            count.samples.append((zero_ms, 0.0))
        count.samples.append((now_ms, float(item.count)))
        bucket_series: list[tuple[float, PromSeries]] = []
        bucket_name = name + "_bucket"
        cumulative = 0
        for index, bound in enumerate(bounds):
            if index >= len(buckets):
                break
            cumulative += buckets[index]
            target = _series_for(out, labels.bucket(bucket_name, _cached_le(bound)))
            if zero_ms is not None:
                target.samples.append((zero_ms, 0.0))
            target.samples.append((now_ms, float(cumulative)))
            bucket_series.append((bound, target))
        infinite = _series_for(out, labels.bucket(bucket_name, "+Inf"))
        if zero_ms is not None:
            infinite.samples.append((zero_ms, 0.0))
        infinite.samples.append((now_ms, float(item.count)))
        bucket_series.append((float("inf"), infinite))
        if item.exemplars:
            bucket_series.sort(key=lambda pair: pair[0])
            for exemplar in item.exemplars:
                converted = _exemplar(exemplar, now_ms)
                for bound, target in bucket_series:
                    if converted.value <= bound:
                        target.exemplars.append(converted)
                        break


class _Labels:
    """One data point's labels, sorted once; ``__name__`` (and ``le``) put in place per series.

    The extras override attributes of the same name, as ``createAttributes`` lets them."""

    __slots__ = ("_at_le", "_at_name", "_bucket_pairs", "_pairs")

    def __init__(self, base: dict[str, str]) -> None:
        base.pop("__name__", None)
        self._pairs = tuple(sorted((name, value) for name, value in base.items() if value != ""))
        names = [name for name, _ in self._pairs]
        self._at_name = bisect_left(names, "__name__")
        # Buckets: an attribute called "le" gives way to the bucket's bound.
        self._bucket_pairs = tuple(pair for pair in self._pairs if pair[0] != "le")
        self._at_le = bisect_left([name for name, _ in self._bucket_pairs], "le")

    def named(self, name: str) -> tuple[tuple[str, str], ...]:
        pairs, at = self._pairs, self._at_name
        return (*pairs[:at], ("__name__", name), *pairs[at:])

    def bucket(self, name: str, le: str) -> tuple[tuple[str, str], ...]:
        pairs, at, at_le = self._bucket_pairs, self._at_name, self._at_le
        return (*pairs[:at], ("__name__", name), *pairs[at:at_le], ("le", le), *pairs[at_le:])


def _expanded(series: Iterable[Series]) -> Iterator[Series]:
    """Each series, then the counter it stands for (as ``with_companions``)."""
    for item in series:
        yield item
        if item.companion is not None:
            yield companion_series(item)


def _finish(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Sorted by name, without empty values (names are unique: they are dict keys)."""
    return tuple(sorted((name, value) for name, value in labels.items() if value != ""))


def _series_for(
    out: dict[tuple[tuple[str, str], ...], PromSeries], labels: tuple[tuple[str, str], ...]
) -> PromSeries:
    """The series with these labels, created on first use: points of series whose labels
    collide after sanitising go into one, as the exporter's signature map does."""
    target = out.get(labels)
    if target is None:
        target = out[labels] = PromSeries(labels)
    return target
