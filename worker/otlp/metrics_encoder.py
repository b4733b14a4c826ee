"""Series -> serialized ``ExportMetricsServiceRequest`` bytes, written straight in the wire format.

Byte for byte what tests/reference/metrics_builder.py's ``split_by_size`` then ``SerializeToString``
give (tests/unit/otlp/test_metrics_encoder.py compares them). This is the reference of the compiled
encoder ``worker.otlp._encode``, used when built (tests/unit/otlp/test_encode_native.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.model.extensions import load
from worker.model.series import Attributes, Exemplar, MetricDescriptor, MetricKind, Series, Temporality
from worker.model.values import key_value as _key_value
from worker.model.wire import length_prefix, varint
from worker.model.wire import length_prefix as _length
from worker.model.wire import message as _message

__all__ = ["EncodedRequest", "clear_caches", "encode_path", "encode_requests", "encode_slot", "fit_otlp"]

#: The compiled data point writer, or None: not built, or ``SPANMETRICS_NO_EXTENSIONS=1``.
_native = load("worker.otlp._encode")


def encode_path() -> str:
    """Which encoder writes data points: ``"native"`` (compiled) or ``"pure"``."""
    return "pure" if _native is None else "native"


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """One serialized ``ExportMetricsServiceRequest`` and what the producer needs alongside it."""

    data: bytes
    #: The first ResourceMetrics' serialized ``resource`` truncated to 64 bytes (``b""`` for a
    #: resource without attributes), as the Kafka sink keys records.
    key: bytes | None
    #: Data points carried (series of metrics missing from ``descriptors`` are not carried).
    series: int


# ---------------------------------------------------------------------------------- primitives

_AGGREGATION_TEMPORALITY = {Temporality.DELTA: 1, Temporality.CUMULATIVE: 2}
_UINT64_LIMIT = 1 << 64
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


#: ``0x0a`` (field 1, length-delimited) + the varint length, for bodies below 16384 bytes: the
#: prefix of every data point (``data_points`` is field 1 of Sum, Histogram, ExponentialHistogram).
_FIELD1_PREFIXES = tuple(b"\x0a" + length_prefix(n) for n in range(1 << 14))


def _field1(body: bytes) -> bytes:
    size = len(body)
    if size < 16384:
        return _FIELD1_PREFIXES[size] + body
    return b"\x0a" + varint(size) + body


def _zigzag32(value: int) -> int:
    if not -(1 << 31) <= value < 1 << 31:
        raise ValueError(f"value out of range: {value}")
    return value << 1 if value >= 0 else ((-value) << 1) - 1


_pack_double = struct.Struct("<d").pack
_pack_uint64 = struct.Struct("<Q").pack
_pack_int64 = struct.Struct("<q").pack


# ---------------------------------------------------------------------------------- attributes


#: Limits of the caches below; each is cleared when it reaches its limit.
#: Per attributes tuple: a flush of 100,000 series (calls + duration) holds 50,000 per metric
#: kind. Per (key, value) pair: far fewer, unless an attribute is high-cardinality, and then
#: those only pass through.
_TUPLE_CACHE_LIMIT = 1 << 16
_PAIR_CACHE_LIMIT = 1 << 14

#: (key, value) pairs with str/bytes values, or (key, type, value) for int/bool values -- the
#: type keeps ``1``, ``True`` and ``1.0`` apart, which compare equal -- to the length-prefixed
#: KeyValue body. Floats are not cached: ``-0.0 == 0.0`` would share an entry.
_pair_cache: dict[tuple[Any, ...], bytes] = {}

#: Per data point attributes tag: ``id(attributes)`` -> (the attributes tuple, its serialized
#: ``attributes`` fields). Keyed by identity because the store hands over the same tuple object
#: every flush (its meta cache), and an identity lookup touches neither the tuple's items nor
#: their hashes; the entry holds the tuple, so its id cannot be reused while cached. Only tuples
#: of immutable values (str, bytes, int, bool, float, None) are kept: a cached list could change.
_tuple_caches: dict[bytes, dict[int, tuple[Attributes, bytes]]] = {}
_IMMUTABLE = frozenset((str, bytes, int, bool, float, type(None)))


def _tuple_cache(tag: bytes) -> dict[int, tuple[Attributes, bytes]]:
    cache = _tuple_caches.get(tag)
    if cache is None:
        cache = _tuple_caches[tag] = {}
    return cache


def _encode_attributes(
    tag: bytes, attributes: Attributes, cache: dict[int, tuple[Attributes, bytes]]
) -> bytes:
    """A data point's ``attributes`` fields (``tag`` is the one-byte tag of that field)."""
    hit = cache.get(id(attributes))
    if hit is not None and hit[0] is attributes:
        return hit[1]
    parts = []
    immutable = True
    pairs = _pair_cache
    for pair in attributes:
        key, value = pair
        kind = type(value)
        if kind is str or kind is bytes:
            pair_key: tuple[Any, ...] | None = pair
        elif kind is int or kind is bool:
            pair_key = (key, kind, value)
        else:
            pair_key = None
            if kind not in _IMMUTABLE:
                immutable = False
        part = pairs.get(pair_key) if pair_key is not None else None
        if part is None:
            body = _key_value(key, value)
            part = _length(len(body)) + body
            if pair_key is not None:
                if len(pairs) >= _PAIR_CACHE_LIMIT:
                    pairs.clear()
                pairs[pair_key] = part
        parts.append(part)
    encoded = tag + tag.join(parts) if parts else b""
    if immutable and type(attributes) is tuple:
        if len(cache) >= _TUPLE_CACHE_LIMIT:
            cache.clear()
        cache[id(attributes)] = (attributes, encoded)
    return encoded


def _point_attributes(tag: bytes, item: Series, cache: dict[int, tuple[Attributes, bytes]]) -> bytes:
    """A data point's ``attributes`` fields: the stored encoding when the series carries it,
    else the cached encoding of its attributes tuple, else encoded now."""
    parts = item.attribute_parts
    if parts is not None:
        return tag + tag.join(parts) if parts else b""
    attributes = item.attributes
    hit = cache.get(id(attributes))
    if hit is not None and hit[0] is attributes:
        return hit[1]
    return _encode_attributes(tag, attributes, cache)


#: resource id -> (attributes it was encoded from, serialized Resource body).
_RESOURCE_CACHE_LIMIT = 4096
_resource_cache: dict[str, tuple[Attributes, bytes]] = {}


def _resource_body(resource_id: str, attributes: Attributes) -> bytes:
    """The ``Resource`` message body: its attributes (field 1), in order."""
    hit = _resource_cache.get(resource_id)
    if hit is not None and hit[0] is attributes:
        return hit[1]
    body = b"".join(_message(b"\x0a", _key_value(key, value)) for key, value in attributes)
    if len(_resource_cache) >= _RESOURCE_CACHE_LIMIT:
        _resource_cache.clear()
    _resource_cache[resource_id] = (attributes, body)
    return body


def clear_caches() -> None:
    """Drop every cached encoding (tests; or to release memory after a one-off large flush)."""
    _pair_cache.clear()
    _tuple_caches.clear()
    _resource_cache.clear()
    _metric_cache.clear()
    _bounds_cache.clear()


# ---------------------------------------------------------------------------------- data points


def _exemplars(tag: bytes, exemplars: list[Exemplar], time_field: bytes) -> bytes:
    """``exemplars`` fields: Exemplar{time_unix_nano=2 fixed64, as_double=3, span_id=4, trace_id=5}.
    Every exemplar is stamped with the flush time (``time_field``), as the connector stamps them
    (connector.go: exemplars get the timestamp of the metrics they are built with), not the
    span's end time the stored exemplar keeps."""
    out = []
    for trace_id, span_id, value, _ in exemplars:
        body = time_field + b"\x19" + _pack_double(value)
        if span_id:
            body += _message(b"\x22", span_id)
        if trace_id:
            body += _message(b"\x2a", trace_id)
        out.append(_message(tag, body))
    return b"".join(out)


_BOUNDS_CACHE_LIMIT = 256
_bounds_cache: dict[tuple[float, ...], bytes] = {}


def _explicit_bounds(bounds: tuple[float, ...]) -> bytes:
    """HistogramDataPoint ``explicit_bounds`` (field 7, packed doubles); nothing when empty."""
    cacheable = 0.0 not in bounds  # -0.0 == 0.0 would share an entry with different bytes
    encoded = _bounds_cache.get(bounds) if cacheable else None
    if encoded is None:
        values = struct.pack(f"<{len(bounds)}d", *bounds)
        encoded = _message(b"\x3a", values) if values else b""
        if cacheable:
            if len(_bounds_cache) >= _BOUNDS_CACHE_LIMIT:
                _bounds_cache.clear()
            _bounds_cache[bounds] = encoded
    return encoded


_SUM_HEAD = struct.Struct("<BQBQBq")  # start_time (2), time (3), as_int (6)

PointEncoder = Callable[[Series], bytes]


def _sum_encoder(now_ns: int, cache: dict[int, tuple[Attributes, bytes]], zero_before: int) -> PointEncoder:
    """NumberDataPoint{start=2, time=3, exemplars=5, as_int=6, attributes=7}, as a data_points
    entry; preceded by the series' zero point (see :func:`_writes_zero`)."""
    head = _SUM_HEAD.pack
    prefixes = _FIELD1_PREFIXES
    point_attributes = _point_attributes
    time_field = b"\x19" + _pack_uint64(now_ns) if now_ns else b""
    exemplar_time = b"\x11" + _pack_uint64(now_ns) if now_ns else b""
    zero_value = b"\x31" + _pack_int64(0)

    def zero(item: Series, attributes: bytes) -> bytes:
        start = item.start_ns
        body = b"\x11" + _pack_uint64(start) if start else b""
        return _field1(body + b"\x19" + _pack_uint64(item.zero_ns) + zero_value + attributes)

    def general(item: Series, attributes: bytes) -> bytes:
        start = item.start_ns
        body = b"\x11" + _pack_uint64(start) if start else b""
        body += time_field
        if item.exemplars:
            body += _exemplars(b"\x2a", item.exemplars, exemplar_time)
        return _field1(body + b"\x31" + _pack_int64(item.count) + attributes)

    def encode(item: Series) -> bytes:
        blob = point_attributes(b"\x3a", item, cache)
        start = item.start_ns
        if start and now_ns and not item.exemplars:
            size = 27 + len(blob)
            if size < 16384:
                point = b"".join((prefixes[size], head(0x11, start, 0x19, now_ns, 0x31, item.count), blob))
                return zero(item, blob) + point if 0 < item.zero_ns < zero_before else point
        point = general(item, blob)
        return zero(item, blob) + point if 0 < item.zero_ns < zero_before else point

    return encode


def _info_encoder(now_ns: int, cache: dict[int, tuple[Attributes, bytes]]) -> PointEncoder:
    """NumberDataPoint{time=3, as_int=6 (always 1), attributes=7}: a gauge's point, no start time."""
    point_attributes = _point_attributes
    head = (b"\x19" + _pack_uint64(now_ns) if now_ns else b"") + b"\x31" + _pack_int64(1)

    def encode(item: Series) -> bytes:
        return _field1(head + point_attributes(b"\x3a", item, cache))

    return encode


def _histogram_encoder(
    now_ns: int, bounds: tuple[float, ...], cache: dict[int, tuple[Attributes, bytes]], zero_before: int
) -> PointEncoder:
    """HistogramDataPoint{start=2, time=3, count=4, sum=5, bucket_counts=6, explicit_bounds=7,
    exemplars=8, attributes=9}, as a data_points entry; preceded by the series' zero point (see
    :func:`_writes_zero`): no count, no sum (Tempo writes no ``_sum`` zero sample), every bucket
    0, the same bounds."""
    bounds_field = _explicit_bounds(bounds)
    prefixes = _FIELD1_PREFIXES
    point_attributes = _point_attributes
    empty_buckets = [0] * (len(bounds) + 1)
    time_field = b"\x19" + _pack_uint64(now_ns) if now_ns else b""
    exemplar_time = b"\x11" + _pack_uint64(now_ns) if now_ns else b""
    #: number of buckets -> (packer of the counts, their field's tag and length)
    layouts: dict[int, tuple[Callable[..., bytes], bytes]] = {}

    def buckets_field(buckets: list[int]) -> bytes:
        layout = layouts.get(len(buckets))
        if layout is None:
            layout = layouts[len(buckets)] = (
                struct.Struct(f"<{len(buckets)}Q").pack,
                b"\x32" + _length(8 * len(buckets)),
            )
        pack, prefix = layout
        return prefix + pack(*buckets)

    def general(item: Series, attributes: bytes) -> bytes:
        start = item.start_ns
        count = item.count
        body = b"\x11" + _pack_uint64(start) if start else b""
        body += time_field
        if count:
            body += b"\x21" + _pack_uint64(count)
        body += b"\x29" + _pack_double(item.sum)
        body += buckets_field(item.buckets or empty_buckets) + bounds_field
        if item.exemplars:
            body += _exemplars(b"\x42", item.exemplars, exemplar_time)
        return _field1(body + attributes)

    def zero(item: Series, attributes: bytes) -> bytes:
        start = item.start_ns
        body = b"\x11" + _pack_uint64(start) if start else b""
        body += b"\x19" + _pack_uint64(item.zero_ns)
        body += buckets_field([0] * len(item.buckets or empty_buckets)) + bounds_field
        return _field1(body + attributes)

    # The common layout (as many counts as the bounds call for) in one struct: the fixed fields,
    # the counts' tag and length, the counts, and ``explicit_bounds`` as constant bytes.
    size = len(bounds) + 1
    counts_prefix = b"\x32" + _length(8 * size)
    fixed = struct.Struct(f"<BQBQBQBd{len(counts_prefix)}s{size}Q{len(bounds_field)}s")
    pack = fixed.pack
    fixed_size = fixed.size

    def encode(item: Series) -> bytes:
        blob = point_attributes(b"\x4a", item, cache)
        start = item.start_ns
        count = item.count
        buckets = item.buckets
        first = zero(item, blob) if 0 < item.zero_ns < zero_before else b""
        if start and now_ns and count and buckets and len(buckets) == size and not item.exemplars:
            length = fixed_size + len(blob)
            if length < 16384:
                return first + b"".join(
                    (
                        prefixes[length],
                        pack(
                            0x11,
                            start,
                            0x19,
                            now_ns,
                            0x21,
                            count,
                            0x29,
                            item.sum,
                            counts_prefix,
                            *buckets,
                            bounds_field,
                        ),
                        blob,
                    )
                )
        return first + general(item, blob)

    return encode


def _packed_uint64(values: list[int]) -> bytes:
    if values and max(values) < 0x80:
        return bytes(values)  # one byte each; ValueError on a negative count, as protobuf
    return b"".join(varint(value) for value in values)


def _exponential_encoder(
    now_ns: int, cache: dict[int, tuple[Attributes, bytes]], zero_before: int
) -> PointEncoder:
    """ExponentialHistogramDataPoint{attributes=1, start=2, time=3, count=4, sum=5, scale=6
    (sint32), zero_count=7, positive=8 (Buckets{offset=1 sint32, bucket_counts=2 packed}),
    exemplars=11, min=12, max=13}, as a data_points entry; preceded by the series' zero point
    (see :func:`_writes_zero`): an empty histogram of the same scale, without sum."""
    time_field = b"\x19" + _pack_uint64(now_ns) if now_ns else b""
    exemplar_time = b"\x11" + _pack_uint64(now_ns) if now_ns else b""

    def zero(item: Series, attributes: bytes) -> bytes:
        body = attributes
        if item.start_ns:
            body += b"\x11" + _pack_uint64(item.start_ns)
        body += b"\x19" + _pack_uint64(item.zero_ns)
        exp = item.exp
        if exp is not None:
            if exp.scale:
                body += b"\x30" + varint(_zigzag32(exp.scale))
            body += b"\x42\x00"
        return _field1(body)

    def encode(item: Series) -> bytes:
        attributes = _point_attributes(b"\x0a", item, cache)
        first = zero(item, attributes) if 0 < item.zero_ns < zero_before else b""
        body = attributes
        if item.start_ns:
            body += b"\x11" + _pack_uint64(item.start_ns)
        body += time_field
        if item.count:
            body += b"\x21" + _pack_uint64(item.count)
        body += b"\x29" + _pack_double(item.sum)
        exp = item.exp
        if exp is not None:
            if exp.scale:
                body += b"\x30" + varint(_zigzag32(exp.scale))
            if exp.zero_count:
                body += b"\x39" + _pack_uint64(exp.zero_count)
            positive = b"\x08" + varint(_zigzag32(exp.offset)) if exp.offset else b""
            if exp.counts:
                positive += _message(b"\x12", _packed_uint64(exp.counts))
            body += _message(b"\x42", positive)
        if item.exemplars:
            body += _exemplars(b"\x5a", item.exemplars, exemplar_time)
        if exp is not None and exp.min is not None and exp.max is not None:
            body += b"\x61" + _pack_double(exp.min) + b"\x69" + _pack_double(exp.max)
        return first + _field1(body)

    return encode


# ---------------------------------------------------------------------------------- metrics

_METRIC_CACHE_LIMIT = 1024
#: (descriptor, temporality) -> (Metric fields before the data, the data field's tag, the data
#: message's fields after its data points).
_metric_cache: dict[tuple[MetricDescriptor, int], tuple[bytes, bytes, bytes]] = {}


def _metric_parts(descriptor: MetricDescriptor, temporality: int) -> tuple[bytes, bytes, bytes]:
    key = (descriptor, temporality)
    parts = _metric_cache.get(key)
    if parts is None:
        header = b""
        for tag, text in (
            (b"\x0a", descriptor.name),
            (b"\x12", descriptor.description),
            (b"\x1a", descriptor.unit),
        ):
            if text:
                header += _message(tag, text.encode("utf-8"))
        trailer = b"\x10" + varint(temporality)
        if descriptor.kind is MetricKind.SUM:
            data_tag, trailer = b"\x3a", trailer + b"\x18\x01"  # sum (7), is_monotonic
        elif descriptor.kind is MetricKind.INFO:
            data_tag, trailer = b"\x2a", b""  # gauge (5): no temporality
        elif descriptor.kind is MetricKind.HISTOGRAM:
            data_tag = b"\x4a"  # histogram (9)
        else:
            data_tag = b"\x52"  # exponential_histogram (10)
        parts = (header, data_tag, trailer)
        if len(_metric_cache) >= _METRIC_CACHE_LIMIT:
            _metric_cache.clear()
        _metric_cache[key] = parts
    return parts


@dataclass(slots=True)
class _Plan:
    """How one metric of ``descriptors`` is written during one call."""

    sort_key: tuple[str, int, str]
    scope: str
    header: bytes
    data_tag: bytes
    trailer: bytes
    encode: PointEncoder
    #: Zero points are written for series whose ``zero_ns`` is below this (0: none).
    zero_before: int = 0
    #: What the compiled encoder (``worker.otlp._encode``) needs to write this metric's points:
    #: (kind, attributes tag, attributes cache, ``explicit_bounds`` field, bucket count when a
    #: series has none); None for a kind it leaves to :attr:`encode`.
    native: tuple[int, bytes, dict[int, tuple[Attributes, bytes]], bytes, int] | None = None

    def points(self, item: Series) -> int:
        """Data points written for ``item``: 2 when its zero point goes first."""
        return 2 if 0 < item.zero_ns < self.zero_before else 1


def _plans(
    descriptors: Mapping[str, MetricDescriptor], temporality: int, now_ns: int, reuse_tuples: bool
) -> dict[str, _Plan]:
    def cache(tag: bytes) -> dict[int, tuple[Attributes, bytes]]:
        # Without reuse the per-tuple cache would only keep dead tuples alive: a dict for this
        # call, dropped with it.
        return _tuple_cache(tag) if reuse_tuples else {}

    plans = {}
    for name, descriptor in descriptors.items():
        header, data_tag, trailer = _metric_parts(descriptor, temporality)
        zero_before = _writes_zero(descriptor, temporality, now_ns)
        native: tuple[int, bytes, dict[int, tuple[Attributes, bytes]], bytes, int] | None = None
        if descriptor.kind is MetricKind.SUM:
            tuples = cache(b"\x3a")
            encode = _sum_encoder(now_ns, tuples, zero_before)
            native = (int(MetricKind.SUM), b"\x3a", tuples, b"", 0)
        elif descriptor.kind is MetricKind.INFO:
            tuples = cache(b"\x3a")
            encode = _info_encoder(now_ns, tuples)
            native = (int(MetricKind.INFO), b"\x3a", tuples, b"", 0)
        elif descriptor.kind is MetricKind.HISTOGRAM:
            bounds = tuple(descriptor.bounds)
            tuples = cache(b"\x4a")
            encode = _histogram_encoder(now_ns, bounds, tuples, zero_before)
            native = (int(MetricKind.HISTOGRAM), b"\x4a", tuples, _explicit_bounds(bounds), len(bounds) + 1)
        else:
            encode = _exponential_encoder(now_ns, cache(b"\x0a"), zero_before)
        plans[name] = _Plan(
            (descriptor.scope, descriptor.order, name),
            descriptor.scope,
            header,
            data_tag,
            trailer,
            encode,
            zero_before,
            native,
        )
    return plans


def _writes_zero(descriptor: MetricDescriptor, temporality: int, now_ns: int) -> int:
    """Below which ``zero_ns`` a series of this metric gets its zero point first: only for a
    ``zero_init`` metric, only CUMULATIVE (the connector's #40139/#40148: none for DELTA), and
    only strictly before the counted point (a skewed clock of another owner could put it after)."""
    cumulative = temporality == _AGGREGATION_TEMPORALITY[Temporality.CUMULATIVE]
    counted = descriptor.kind is not MetricKind.INFO  # a gauge: Tempo zero-initialises none
    return now_ns if descriptor.zero_init and cumulative and counted else 0


def _resource_metrics(resource: bytes, by_metric: dict[str, list[bytes]], plans: dict[str, _Plan]) -> bytes:
    """A ResourceMetrics body: ``resource`` (1) when it has attributes, then one ScopeMetrics (2)
    per scope, metrics ordered by (scope, order, name) as ``build_resource_metrics`` does."""
    out = [_message(b"\x0a", resource)] if resource else []
    scope: str | None = None
    metrics: list[bytes] = []
    for name in sorted(by_metric, key=lambda metric: plans[metric].sort_key):
        plan = plans[name]
        if plan.scope != scope:
            if scope is not None:
                out.append(_scope_metrics(scope, metrics))
            scope, metrics = plan.scope, []
        points = b"".join(by_metric[name])
        data = plan.data_tag + _length(len(points) + len(plan.trailer)) + points + plan.trailer
        metrics.append(_message(b"\x12", plan.header + data))
    if scope is not None:
        out.append(_scope_metrics(scope, metrics))
    return b"".join(out)


def _scope_metrics(scope: str, metrics: list[bytes]) -> bytes:
    # ``scope`` is always present (its name is assigned), even with an empty name.
    body = _message(b"\x0a", _message(b"\x0a", scope.encode("utf-8")) if scope else b"")
    return _message(b"\x12", body + b"".join(metrics))


# ---------------------------------------------------------------------------------- requests


def encode_requests(
    resources: Mapping[str, Attributes],
    series: Iterable[Series],
    descriptors: Mapping[str, MetricDescriptor],
    temporality: Temporality,
    now_ns: int,
    max_bytes: int,
    *,
    reuse_attribute_tuples: bool = True,
) -> Iterator[EncodedRequest]:
    """Serialized requests of at most ``max_bytes``, grouped by resource: what
    ``split_by_size(...)`` followed by ``SerializeToString()`` gives, request for request, for
    the series expanded with their companion counters (``with_companions``).

    ``reuse_attribute_tuples``: whether the caller hands over the same attributes tuple objects
    flush after flush (then their encoding is cached per tuple). A caller that decodes fresh
    tuples every time says False, or the cache would fill with tuples that never come back.

    Resources in first-seen order, a missing resource written without attributes, series of
    unknown metrics skipped; a resource whose series exceed the limit is split into several
    ResourceMetrics of the same resource, with the same pieces as ``split_by_size``; a single
    series above the limit goes out alone. Values outside their protobuf field (a negative
    count, a time beyond uint64) raise ``ValueError``, as filling the protobuf objects does --
    but before the first request is yielded, since every series is encoded up front.
    """
    if not 0 <= now_ns < _UINT64_LIMIT:
        raise ValueError(f"now_ns out of range: {now_ns}")
    plans = _plans(descriptors, _AGGREGATION_TEMPORALITY[temporality], now_ns, reuse_attribute_tuples)
    if _native is not None:
        # The same in C: Sum, Histogram and Gauge points written there (any other series, or
        # an unusual value, by its plan's pure encoder), requests assembled there. None: a call
        # it leaves to the code below.
        try:
            compiled = _native.encode(
                series,
                plans,
                now_ns,
                max_bytes,
                lambda resource_id: _resource_body(resource_id, resources.get(resource_id, ())),
                _point_attributes,
            )
        except struct.error as error:  # a value outside its fixed-width field
            raise ValueError(str(error)) from error
        if compiled is not None:
            for request in compiled:
                yield EncodedRequest(*request)
            return
    try:
        pending = _group_points(series, plans)
    except struct.error as error:  # a value outside its fixed-width field
        raise ValueError(str(error)) from error

    parts: list[bytes] = []
    size = 0
    carried = 0
    key: bytes | None = None
    for resource_id, group in pending.items():
        resource = _resource_body(resource_id, resources.get(resource_id, ()))
        for body, count in _resource_pieces(resource, group, plans, max_bytes):
            built_size = len(body) + 8  # split_by_size's estimate: ByteSize() + 8
            if size and size + built_size > max_bytes:
                yield EncodedRequest(b"".join(parts), key, carried)
                parts, size, carried = [], 0, 0
            if not parts:
                key = resource[:64]
            parts.append(_message(b"\x0a", body))
            size += built_size
            carried += count
    if size:
        yield EncodedRequest(b"".join(parts), key, carried)


def _group_points(series: Iterable[Series], plans: dict[str, _Plan]) -> dict[str, _Resource]:
    """Resource id -> its encoded data points, resources in first-seen order: one pass that
    encodes each series as it is met, so each Series object is read once (at 100,000 series,
    reading them is mostly cache misses). The reference of ``_encode.group_points``."""
    pending: dict[str, _Resource] = {}
    plan_of = plans.get
    for item in series:
        group = pending.get(item.resource_id)
        if group is None:
            group = pending[item.resource_id] = _Resource()
        group.add(item.metric, plan_of(item.metric), item)
        if item.companion is not None:
            # The counter this series stands for, right after it: as if it were expanded
            # with ``with_companions`` (its point reads the same count, times, exemplars
            # and attributes), without building a Series for it.
            group.add(item.companion, plan_of(item.companion), item)
    return pending


@dataclass(slots=True)
class _Resource:
    """One resource's data points, encoded: per known metric in arrival order, plus the metric
    of every series in arrival order (read only to split a resource too large for a request)."""

    names: list[str] = field(default_factory=list)
    by_metric: dict[str, list[bytes]] = field(default_factory=dict)
    #: Data points of each series in arrival order (2 with a zero point, 0 when not described).
    weights: list[int] = field(default_factory=list)

    def add(self, name: str, plan: _Plan | None, item: Series) -> None:
        """Encode ``item`` as a data point of metric ``name`` (``plan`` None: not described,
        skipped); a zero point stays in one entry with the point it precedes."""
        self.names.append(name)
        if plan is None:
            self.weights.append(0)
            return
        self.weights.append(plan.points(item))
        point = plan.encode(item)
        points = self.by_metric.get(name)
        if points is None:
            self.by_metric[name] = [point]
        else:
            points.append(point)

    def known(self) -> int:
        """Data points of described metrics."""
        return sum(self.weights)

    def in_arrival_order(self) -> list[bytes | None]:
        """Every series' data point in arrival order (None for metrics not described): the
        k-th series of a metric is the k-th point in its list."""
        cursors = {name: iter(points) for name, points in self.by_metric.items()}
        return [next(cursors[name]) if name in cursors else None for name in self.names]


def _resource_pieces(
    resource: bytes, group: _Resource, plans: dict[str, _Plan], max_bytes: int
) -> Iterator[tuple[bytes, int]]:
    """One resource's ResourceMetrics bodies (with their number of data points), split as
    ``split_by_size`` splits them: a piece whose ``ByteSize() + 8`` exceeds ``max_bytes`` is cut
    into ``ceil(size * 5 / (max_bytes * 4))`` (at least 2) near-equal runs of series, again and
    again, until each fits or holds one series. Series are encoded once; pieces only join."""
    body = _resource_metrics(resource, group.by_metric, plans)
    total = len(group.names)
    if len(body) + 8 <= max_bytes or total <= 1:
        yield body, group.known()
        return
    metrics, points = group.names, group.in_arrival_order()

    def build(start: int, end: int) -> tuple[bytes, int]:
        grouped: dict[str, list[bytes]] = {}
        carried = 0
        for index in range(start, end):
            point = points[index]
            if point is None:
                continue
            carried += group.weights[index]
            name = metrics[index]
            same = grouped.get(name)
            if same is None:
                grouped[name] = [point]
            else:
                same.append(point)
        return _resource_metrics(resource, grouped, plans), carried

    chunks: list[tuple[int, int]] = [(0, total)]
    built: tuple[bytes, int] | None = (body, group.known())
    while chunks:
        start, end = chunks.pop(0)
        if built is None:
            built = build(start, end)
        chunk_body, carried = built
        built = None
        built_size = len(chunk_body) + 8
        length = end - start
        if built_size > max_bytes and length > 1:
            parts = min(length, max(2, -(-built_size * 5 // (max_bytes * 4))))
            step, extra = divmod(length, parts)
            pieces = []
            for index in range(parts):
                stop = start + step + (1 if index < extra else 0)
                pieces.append((start, stop))
                start = stop
            chunks[:0] = pieces
            continue
        yield chunk_body, carried


_UINT64_MAX = _UINT64_LIMIT - 1


def fit_otlp(series: Series) -> None:
    """Keep every value within its OTLP field (int64 counts, uint64 buckets and times).

    State written before a limit existed, or pushed past one (counts and times come back from
    Lua doubles), must never fail the emission: one value out of range would fail it again at
    every flush, for every series after it.
    Cumulative counts never go below zero, so they are clamped to [0, int64 max].
    """
    if not 0 <= series.count <= _INT64_MAX:
        series.count = min(max(series.count, 0), _INT64_MAX)
        if series.buckets:
            series.buckets = [min(max(b, 0), _UINT64_MAX) for b in series.buckets]
        exp = series.exp
        if exp is not None:
            exp.zero_count = min(max(exp.zero_count, 0), _UINT64_MAX)
            exp.counts = [min(max(c, 0), _UINT64_MAX) for c in exp.counts]
    if series.exemplars and any(not 0 <= exemplar[3] <= _UINT64_MAX for exemplar in series.exemplars):
        series.exemplars = [
            (trace_id, span_id, value, min(max(time_ns, 0), _UINT64_MAX))
            for trace_id, span_id, value, time_ns in series.exemplars
        ]


def encode_slot(
    resources: Mapping[str, Attributes],
    series: Sequence[Series],
    descriptors: Mapping[str, MetricDescriptor],
    temporality: Temporality,
    now_ns: int,
    max_bytes: int,
) -> Iterator[EncodedRequest]:
    """One emission slot's folded series as OTLP requests, each within ``max_bytes``: what every
    OTLP sink publishes (series are fitted to their OTLP fields in place first)."""
    if _native is not None:
        _native.fit_all(series, fit_otlp)  # calls fit_otlp where a value may be out of range
    else:
        for one in series:
            fit_otlp(one)
    return encode_requests(
        resources,
        series,
        descriptors,
        temporality,
        now_ns,
        max_bytes,
        reuse_attribute_tuples=False,  # folded series are decoded afresh at every fold
    )
