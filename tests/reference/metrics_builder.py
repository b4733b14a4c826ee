"""Series -> ``ExportMetricsServiceRequest`` through protobuf objects: the reference the byte
encoder (worker.otlp.metrics_encoder) is tested and benchmarked against; not used in production."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Metric,
    ResourceMetrics,
)

from worker.model.series import Attributes, MetricDescriptor, MetricKind, Series, Temporality
from worker.model.values import AttributeValue, fill_key_values, python_to_any_value
from worker.model.wire import varint

__all__ = ["build_metrics_request", "build_resource_metrics", "split_by_size"]

_TEMPORALITY = {
    Temporality.CUMULATIVE: AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
    Temporality.DELTA: AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA,
}


#: Data points' ``attributes`` field numbers (NumberDataPoint, HistogramDataPoint,
#: ExponentialHistogramDataPoint).
_NUMBER_ATTRIBUTES = 7
_HISTOGRAM_ATTRIBUTES = 9
_EXPONENTIAL_ATTRIBUTES = 1
#: Serialized attributes kept per field number; cleared when full. Most series share most of
#: their attributes (service, span name, kind, status), so a small cache serves nearly all;
#: small, because a high-cardinality attribute (a user id) only passes through it.
#: Floats are not cached: ``-0.0 == 0.0`` would share an entry.
_ENCODED_LIMIT = 4096
_CACHED_TYPES = (str, bool, int, bytes)
_encoded: dict[int, dict[tuple[str, type, object], bytes]] = {
    _NUMBER_ATTRIBUTES: {},
    _HISTOGRAM_ATTRIBUTES: {},
    _EXPONENTIAL_ATTRIBUTES: {},
}


def _encode_key_value(field_number: int, key: str, value: AttributeValue) -> bytes:
    """One ``attributes`` entry of a data point, serialized (tag, length, KeyValue)."""
    kv = KeyValue(key=key)
    python_to_any_value(value, kv.value)
    body: bytes = kv.SerializeToString()
    return varint(field_number << 3 | 2) + varint(len(body)) + body


def _encoded_attributes(field_number: int, attributes: Attributes) -> bytes:
    """A data point's attributes serialized, for ``MergeFromString``: the same bytes and the
    same parsed message as filling them field by field, at a fraction of the cost."""
    cache = _encoded[field_number]
    parts = []
    for key, value in attributes:
        kind = type(value)
        if kind not in _CACHED_TYPES:
            parts.append(_encode_key_value(field_number, key, value))
            continue
        cache_key = (key, kind, value)
        part = cache.get(cache_key)
        if part is None:
            if len(cache) >= _ENCODED_LIMIT:
                cache.clear()
            part = cache[cache_key] = _encode_key_value(field_number, key, value)
        parts.append(part)
    return b"".join(parts)


def _zero_point(descriptor: MetricDescriptor, item: Series, temporality: int, now_ns: int) -> bool:
    """Whether ``item``'s zero point goes before its counted point: a ``zero_init`` metric,
    CUMULATIVE, a zero time strictly before the flush."""
    cumulative = temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    return descriptor.zero_init and cumulative and 0 < item.zero_ns < now_ns


def _fill_metric(
    metric: Metric, descriptor: MetricDescriptor, series: list[Series], temporality: int, now_ns: int
) -> None:
    metric.name = descriptor.name
    if descriptor.unit:
        metric.unit = descriptor.unit
    if descriptor.description:
        metric.description = descriptor.description
    if descriptor.kind is MetricKind.SUM:
        metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]
        metric.sum.is_monotonic = True
        points = metric.sum.data_points
        for item in series:
            if _zero_point(descriptor, item, temporality, now_ns):
                zero = points.add(start_time_unix_nano=item.start_ns, time_unix_nano=item.zero_ns, as_int=0)
                zero.MergeFromString(_encoded_attributes(_NUMBER_ATTRIBUTES, item.attributes))
            point = points.add(start_time_unix_nano=item.start_ns, time_unix_nano=now_ns, as_int=item.count)
            point.MergeFromString(_encoded_attributes(_NUMBER_ATTRIBUTES, item.attributes))
            for trace_id, span_id, value, _ in item.exemplars:
                point.exemplars.add(
                    trace_id=trace_id, span_id=span_id, as_double=value, time_unix_nano=now_ns
                )
    elif descriptor.kind is MetricKind.INFO:
        gauge_points = metric.gauge.data_points
        for item in series:
            gauge_point = gauge_points.add(time_unix_nano=now_ns, as_int=1)
            gauge_point.MergeFromString(_encoded_attributes(_NUMBER_ATTRIBUTES, item.attributes))
    elif descriptor.kind is MetricKind.HISTOGRAM:
        metric.histogram.aggregation_temporality = temporality  # type: ignore[assignment]
        histogram_points = metric.histogram.data_points
        bounds = list(descriptor.bounds)
        for item in series:
            if _zero_point(descriptor, item, temporality, now_ns):
                zero = histogram_points.add(
                    start_time_unix_nano=item.start_ns,
                    time_unix_nano=item.zero_ns,
                    bucket_counts=[0] * len(item.buckets or [0] * (len(bounds) + 1)),
                    explicit_bounds=bounds,
                )
                zero.MergeFromString(_encoded_attributes(_HISTOGRAM_ATTRIBUTES, item.attributes))
            histogram_point = histogram_points.add(
                start_time_unix_nano=item.start_ns,
                time_unix_nano=now_ns,
                count=item.count,
                sum=item.sum,
                bucket_counts=item.buckets or [0] * (len(bounds) + 1),
                explicit_bounds=bounds,
            )
            histogram_point.MergeFromString(_encoded_attributes(_HISTOGRAM_ATTRIBUTES, item.attributes))
            for trace_id, span_id, value, _ in item.exemplars:
                histogram_point.exemplars.add(
                    trace_id=trace_id, span_id=span_id, as_double=value, time_unix_nano=now_ns
                )
    else:
        metric.exponential_histogram.aggregation_temporality = temporality  # type: ignore[assignment]
        exp_points = metric.exponential_histogram.data_points
        for item in series:
            if _zero_point(descriptor, item, temporality, now_ns):
                zero_exp = exp_points.add(start_time_unix_nano=item.start_ns, time_unix_nano=item.zero_ns)
                if item.exp is not None:
                    zero_exp.scale = item.exp.scale
                    zero_exp.positive.SetInParent()
                zero_exp.MergeFromString(_encoded_attributes(_EXPONENTIAL_ATTRIBUTES, item.attributes))
            exp_point = exp_points.add(
                start_time_unix_nano=item.start_ns, time_unix_nano=now_ns, count=item.count, sum=item.sum
            )
            exp = item.exp
            if exp is not None:
                exp_point.scale = exp.scale
                exp_point.zero_count = exp.zero_count
                exp_point.positive.offset = exp.offset
                exp_point.positive.bucket_counts.extend(exp.counts)
                if exp.min is not None and exp.max is not None:
                    exp_point.min = exp.min
                    exp_point.max = exp.max
            exp_point.MergeFromString(_encoded_attributes(_EXPONENTIAL_ATTRIBUTES, item.attributes))
            for trace_id, span_id, value, _ in item.exemplars:
                exp_point.exemplars.add(
                    trace_id=trace_id, span_id=span_id, as_double=value, time_unix_nano=now_ns
                )


def build_resource_metrics(
    resource_attributes: Attributes,
    series: Iterable[Series],
    descriptors: Mapping[str, MetricDescriptor],
    temporality: Temporality,
    now_ns: int,
) -> ResourceMetrics:
    """One ResourceMetrics for one resource; series of unknown metrics are skipped."""
    by_metric: dict[str, list[Series]] = {}
    for item in series:
        if item.metric in descriptors:
            by_metric.setdefault(item.metric, []).append(item)
    resource_metrics = ResourceMetrics()
    fill_key_values(resource_metrics.resource.attributes, resource_attributes)
    scopes: dict[str, object] = {}
    ordered = sorted(by_metric, key=lambda name: (descriptors[name].scope, descriptors[name].order, name))
    for name in ordered:
        descriptor = descriptors[name]
        scope_metrics = scopes.get(descriptor.scope)
        if scope_metrics is None:
            scope_metrics = resource_metrics.scope_metrics.add()
            scope_metrics.scope.name = descriptor.scope
            scopes[descriptor.scope] = scope_metrics
        metric = scope_metrics.metrics.add()  # type: ignore[attr-defined]
        _fill_metric(metric, descriptor, by_metric[name], _TEMPORALITY[temporality], now_ns)
    return resource_metrics


def _group_by_resource(series: Iterable[Series]) -> dict[str, list[Series]]:
    grouped: dict[str, list[Series]] = {}
    for item in series:
        grouped.setdefault(item.resource_id, []).append(item)
    return grouped


def build_metrics_request(
    resources: Mapping[str, Attributes],
    series: Iterable[Series],
    descriptors: Mapping[str, MetricDescriptor],
    temporality: Temporality,
    now_ns: int,
) -> ExportMetricsServiceRequest:
    """All series in one request, one ResourceMetrics per resource (in first-seen order)."""
    request = ExportMetricsServiceRequest()
    for resource_id, items in _group_by_resource(series).items():
        attributes = resources.get(resource_id, ())
        request.resource_metrics.append(
            build_resource_metrics(attributes, items, descriptors, temporality, now_ns)
        )
    return request


def split_by_size(
    resources: Mapping[str, Attributes],
    series: Iterable[Series],
    descriptors: Mapping[str, MetricDescriptor],
    temporality: Temporality,
    now_ns: int,
    max_bytes: int,
) -> Iterator[ExportMetricsServiceRequest]:
    """Requests of at most ``max_bytes`` serialized, grouped by resource.

    A resource whose series alone exceed the limit is split into several ResourceMetrics with
    the same resource (receivers merge them); a single series larger than the limit still goes
    out alone rather than being dropped.
    """
    request = ExportMetricsServiceRequest()
    size = 0
    for resource_id, items in _group_by_resource(series).items():
        attributes = resources.get(resource_id, ())
        chunks = [items]
        while chunks:
            chunk = chunks.pop(0)
            built = build_resource_metrics(attributes, chunk, descriptors, temporality, now_ns)
            built_size = built.ByteSize() + 8
            if built_size > max_bytes and len(chunk) > 1:
                # Straight into pieces of about 80% of the limit (not halves, which built every
                # series ~log2(size/limit) times); a piece still too large is split again.
                parts = min(len(chunk), max(2, -(-built_size * 5 // (max_bytes * 4))))
                step, extra = divmod(len(chunk), parts)
                pieces, start = [], 0
                for index in range(parts):
                    end = start + step + (1 if index < extra else 0)
                    pieces.append(chunk[start:end])
                    start = end
                chunks[:0] = pieces
                continue
            if size and size + built_size > max_bytes:
                yield request
                request = ExportMetricsServiceRequest()
                size = 0
            request.resource_metrics.append(built)
            size += built_size
    if size:
        yield request
