"""``encode_requests`` writes what ``split_by_size`` builds: compared parsed, request by request,
through the pure encoder and through the compiled one (``worker.otlp._encode``) alike."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from tests.reference.metrics_builder import split_by_size
from worker.config import DEFAULT_HISTOGRAM_BUCKETS
from worker.model.exphistogram import ExpHistogram
from worker.model.extensions import load
from worker.model.series import Attributes, MetricDescriptor, MetricKind, Series, Temporality, with_companions
from worker.model.values import attribute_parts, encode_any_value, python_to_any_value
from worker.otlp import metrics_encoder
from worker.otlp.metrics_encoder import EncodedRequest, encode_requests

_COMPILED = load("worker.otlp._encode")


@pytest.fixture(autouse=True, params=["pure", "native"])
def encoder_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs through both encoders."""
    if request.param == "native":
        if _COMPILED is None:
            pytest.skip("compiled encoder not built (or SPANMETRICS_NO_EXTENSIONS=1)")
        monkeypatch.setattr(metrics_encoder, "_native", _COMPILED)
    else:
        monkeypatch.setattr(metrics_encoder, "_native", None)
    assert metrics_encoder.encode_path() == request.param
    return str(request.param)


NOW = 1_700_000_000_123_456_789
START = 1_699_999_000_000_000_000
TRACE = bytes(range(16))
SPAN = bytes(range(8))

CALLS = MetricDescriptor("traces.span.metrics.calls", MetricKind.SUM, order=0)
DURATION = MetricDescriptor(
    "traces.span.metrics.duration", MetricKind.HISTOGRAM, unit="ms", bounds=DEFAULT_HISTOGRAM_BUCKETS, order=1
)
EVENTS = MetricDescriptor("traces.span.metrics.events", MetricKind.SUM, order=2)
EXPONENTIAL = MetricDescriptor(
    "traces.span.metrics.duration", MetricKind.EXPONENTIAL_HISTOGRAM, unit="s", order=1
)
GRAPH_TOTAL = MetricDescriptor(
    "traces_service_graph_request_total", MetricKind.SUM, description="Total count", scope="graphs", order=0
)
GRAPH_SECONDS = MetricDescriptor(
    "traces_service_graph_request_server_seconds",
    MetricKind.HISTOGRAM,
    unit="s",
    description="Server side latency",
    bounds=(0.1, 1.0, 10.0),
    scope="graphs",
    order=1,
)
GRAPH_CONNECTION_INFO = MetricDescriptor(
    "traces_service_graph_connection_info", MetricKind.INFO, scope="graphs", order=2
)
SPAN_DESCRIPTORS = {d.name: d for d in (CALLS, DURATION, EVENTS)}
ALL_DESCRIPTORS = {
    **SPAN_DESCRIPTORS,
    "exp": MetricDescriptor("exp", MetricKind.EXPONENTIAL_HISTOGRAM, scope="exp-scope"),
    GRAPH_TOTAL.name: GRAPH_TOTAL,
    GRAPH_SECONDS.name: GRAPH_SECONDS,
    GRAPH_CONNECTION_INFO.name: GRAPH_CONNECTION_INFO,
}
#: The same metrics, each zero-initialised (Tempo mode does it for counters and histograms).
ZERO_DESCRIPTORS = {
    name: MetricDescriptor(d.name, d.kind, d.unit, d.description, d.bounds, d.scope, d.order, zero_init=True)
    for name, d in ALL_DESCRIPTORS.items()
}
RESOURCES: dict[str, Attributes] = {
    "r1": (("service.name", "frontend"), ("host.name", "node-1")),
    "r2": (("service.name", "cart"), ("k8s.pod.uid", b"\x00\x01"), ("replicas", 3), ("ratio", 0.5)),
    "r3": (("service.name", "x" * 100),),  # a key longer than 64 bytes, truncated
}
ATTRIBUTES: Attributes = (
    ("service.name", "frontend"),
    ("span.name", "GET /api"),
    ("span.kind", "SPAN_KIND_SERVER"),
    ("status.code", "STATUS_CODE_UNSET"),
)


def series(
    metric: str,
    resource_id: str = "r1",
    attributes: Attributes = ATTRIBUTES,
    *,
    start_ns: int = START,
    count: int = 3,
    total: float = 12.5,
    buckets: list[int] | None = None,
    exp: ExpHistogram | None = None,
    exemplars: list[tuple[bytes, bytes, float, int]] | None = None,
    zero_ns: int = 0,
) -> Series:
    return Series(
        series_id=f"{metric}|{resource_id}|{attributes!r}",
        metric=metric,
        resource_id=resource_id,
        attributes=attributes,
        start_ns=start_ns,
        last_ns=start_ns,
        count=count,
        sum=total,
        buckets=buckets,
        exp=exp,
        exemplars=exemplars or [],
        zero_ns=zero_ns,
    )


def exp_histogram(*values: float, max_size: int = 160) -> ExpHistogram:
    histogram = ExpHistogram(max_size=max_size)
    for value in values:
        histogram.record(value)
    return histogram


def compare(
    items: Iterable[Series],
    descriptors: Mapping[str, MetricDescriptor] = SPAN_DESCRIPTORS,
    *,
    resources: Mapping[str, Attributes] = RESOURCES,
    temporality: Temporality = Temporality.CUMULATIVE,
    now_ns: int = NOW,
    max_bytes: int = 1 << 20,
) -> list[EncodedRequest]:
    """Both sides on the same input; every request parses equal, with the emitter's key."""
    items = list(items)
    expected = list(split_by_size(resources, items, descriptors, temporality, now_ns, max_bytes))
    encoded = list(encode_requests(resources, items, descriptors, temporality, now_ns, max_bytes))
    assert len(encoded) == len(expected)
    for old, new in zip(expected, encoded, strict=True):
        parsed = ExportMetricsServiceRequest.FromString(new.data)
        assert parsed == old
        assert new.key == old.resource_metrics[0].resource.SerializeToString()[:64]
        assert new.series == _data_points(old)
    return encoded


def _data_points(request: ExportMetricsServiceRequest) -> int:
    total = 0
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                total += len(getattr(metric, metric.WhichOneof("data")).data_points)
    return total


# ---------------------------------------------------------------------------------- hand-written


def test_sum() -> None:
    (request,) = compare([series(CALLS.name, count=7), series(CALLS.name, ATTRIBUTES[:2], count=1)])
    assert request.series == 2
    assert (
        request.key
        == ExportMetricsServiceRequest.FromString(request.data)
        .resource_metrics[0]
        .resource.SerializeToString()
    )


def test_histogram_with_and_without_buckets() -> None:
    compare(
        [
            series(DURATION.name, buckets=list(range(len(DEFAULT_HISTOGRAM_BUCKETS) + 1))),
            series(DURATION.name, ATTRIBUTES[:1], buckets=None),  # zeros, one more than the bounds
            series(DURATION.name, ATTRIBUTES[:2], buckets=[]),
            series(DURATION.name, ATTRIBUTES[:3], buckets=[1, 2, 3]),  # stale layout: written as is
            series(DURATION.name, ATTRIBUTES[1:], buckets=[2**64 - 1] * 17, total=-0.0),
        ]
    )


def test_histogram_without_bounds() -> None:
    descriptor = MetricDescriptor("d", MetricKind.HISTOGRAM)
    compare([series("d", buckets=None), series("d", ATTRIBUTES[:1], buckets=[4])], {"d": descriptor})


def test_exponential_histogram() -> None:
    wide = exp_histogram(*(1.5**i for i in range(-40, 40)), max_size=8)  # downscaled, negative scale
    big = exp_histogram(0.25)
    big.counts = [300, 2**40]  # multi-byte varints
    big.count = sum(big.counts)
    no_min = exp_histogram(3.0)
    no_min.min = None
    no_max = exp_histogram(3.0)
    no_max.max = None
    cases = [
        exp_histogram(0.0, 0.5, 3.0, 1000.0, 7.0),
        exp_histogram(0.0),  # zero bucket only: no positive buckets, offset 0
        exp_histogram(1.0, 1.0),  # offset -1 at scale 20
        wide,
        big,
        no_min,
        no_max,
        ExpHistogram(),  # empty: min/max unset
        None,
    ]
    items = [
        series(
            EXPONENTIAL.name,
            attributes=(("i", index),),
            exp=histogram,
            count=histogram.count if histogram else 0,
            total=histogram.sum if histogram else 0.0,
        )
        for index, histogram in enumerate(cases)
    ]
    compare(items, {EXPONENTIAL.name: EXPONENTIAL})


def test_span_metrics_order_and_scopes() -> None:
    """Metrics ordered by (scope, order, name) whatever the input order; one ScopeMetrics per scope."""
    items = [
        series(EVENTS.name, count=2),
        series(GRAPH_SECONDS.name, buckets=[1, 0, 0, 1]),
        series(DURATION.name, buckets=None),
        series("exp", exp=exp_histogram(2.0), count=1, total=2.0),
        series(CALLS.name),
        series(GRAPH_TOTAL.name, count=9),
        series(CALLS.name, ATTRIBUTES[:1]),
    ]
    (request,) = compare(items, ALL_DESCRIPTORS)
    parsed = ExportMetricsServiceRequest.FromString(request.data)
    scopes = [scope.scope.name for scope in parsed.resource_metrics[0].scope_metrics]
    assert scopes == ["exp-scope", "graphs", "spanmetricsconnector"]


def test_several_resources_in_first_seen_order() -> None:
    items = [
        series(CALLS.name, "r2"),
        series(CALLS.name, "r1"),
        series(DURATION.name, "r2", buckets=None),
        series(CALLS.name, "r3"),
        series(DURATION.name, "r1", buckets=None),
    ]
    (request,) = compare(items)
    parsed = ExportMetricsServiceRequest.FromString(request.data)
    assert [rm.resource.attributes[0].value.string_value for rm in parsed.resource_metrics] == [
        "cart",
        "frontend",
        "x" * 100,
    ]


def test_missing_resource_has_no_attributes_and_an_empty_key() -> None:
    (request,) = compare([series(CALLS.name, "gone"), series(CALLS.name, "r1")])
    parsed = ExportMetricsServiceRequest.FromString(request.data)
    assert not parsed.resource_metrics[0].HasField("resource")
    assert request.key == b""  # as the emitter's expression gives: not None


def test_long_resource_key_is_truncated() -> None:
    (request,) = compare([series(CALLS.name, "r3")])
    assert request.key is not None and len(request.key) == 64


TYPED_VALUES: list[Any] = [
    "",
    "snow ☃ \u00e9",
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    True,
    False,
    0.0,
    -0.0,
    1.5,
    math.inf,
    1e-300,
    b"",
    b"\x00\xff",
    [],
    ["a", 1, 2.5, True, None, b"x", [1, [2]], {"k": "v"}],
    (1, "tuple"),
    {},
    {"a": 1, "b": [True, None], 3: {"nested": b"\x01"}, "none": None},
    None,
]


@pytest.mark.parametrize("value", TYPED_VALUES, ids=repr)
def test_typed_attribute_value(value: Any) -> None:
    attributes = (("service.name", "svc"), ("attr", value), ("", "empty key"))
    resources = {"typed": (("resource.attr", value),)}
    compare(
        [
            series(CALLS.name, "typed", attributes),
            series(DURATION.name, "typed", attributes, buckets=None),
            series("exp", "typed", attributes, exp=exp_histogram(1.0), count=1, total=1.0),
        ],
        ALL_DESCRIPTORS,
        resources=resources,
    )


@pytest.mark.parametrize("value", TYPED_VALUES, ids=repr)
def test_any_value_bytes(value: Any) -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    expected = AnyValue()
    python_to_any_value(value, expected)
    kv = KeyValue(key="k")
    python_to_any_value(value, kv.value)
    encoded = encode_any_value(value)
    if encoded is None:
        assert not kv.HasField("value")
    else:
        assert encoded == expected.SerializeToString()


def test_equal_values_of_different_types_stay_apart() -> None:
    """``1 == True == 1.0`` and ``0.0 == -0.0``: the caches must not hand one the other's bytes."""
    values: list[Any] = [1, True, 1.0, 0, False, 0.0, -0.0, "1", b"1"]
    items = []
    for round_ in range(3):  # later rounds hit the caches
        for index, value in enumerate(values):
            attributes = (("service.name", "svc"), ("code", value))
            items.append(series(CALLS.name, attributes=attributes, count=round_ * 100 + index))
    compare(items)


def test_nan_values_written_as_protobuf_writes_them() -> None:
    """NaN never compares equal, so compare the bytes (they are identical on every input)."""
    items = [
        series(CALLS.name, attributes=(("nan", math.nan),)),
        series(DURATION.name, attributes=(("nan", math.nan),), total=math.nan, buckets=None),
        series(CALLS.name, attributes=(("x", 1),), exemplars=[(TRACE, SPAN, math.nan, NOW)]),
    ]
    old = [
        r.SerializeToString()
        for r in split_by_size(RESOURCES, items, SPAN_DESCRIPTORS, Temporality.DELTA, NOW, 1 << 20)
    ]
    new = [
        r.data for r in encode_requests(RESOURCES, items, SPAN_DESCRIPTORS, Temporality.DELTA, NOW, 1 << 20)
    ]
    assert new == old


def test_exemplars() -> None:
    exemplars = [
        (TRACE, SPAN, 12.5, NOW - 5),
        (b"", b"", 0.0, 0),  # empty ids and time: left out, value still written
        (TRACE, SPAN, -1.0, NOW),
    ]
    compare(
        [
            series(CALLS.name, exemplars=exemplars),
            series(DURATION.name, buckets=None, exemplars=exemplars),
            series("exp", exp=exp_histogram(4.0), count=1, total=4.0, exemplars=exemplars),
        ],
        ALL_DESCRIPTORS,
    )


def test_info_is_a_gauge_of_one_per_series() -> None:
    # Tempo's traces_service_graph_connection_info / traces_target_info: a gauge whose value is 1
    # while the series lives, whatever its count; no start time, no exemplars, no temporality.
    items = [
        series(GRAPH_CONNECTION_INFO.name, count=7, exemplars=[(TRACE, SPAN, 1.0, NOW)]),
        series(GRAPH_CONNECTION_INFO.name, attributes=ATTRIBUTES[:1], count=1),
    ]
    [encoded] = compare(items, ALL_DESCRIPTORS)
    [metric] = (
        ExportMetricsServiceRequest.FromString(encoded.data).resource_metrics[0].scope_metrics[0].metrics
    )
    assert metric.name == "traces_service_graph_connection_info"
    assert metric.WhichOneof("data") == "gauge"
    assert [
        (p.as_int, p.start_time_unix_nano, p.time_unix_nano, len(p.exemplars))
        for p in metric.gauge.data_points
    ] == [
        (1, 0, NOW, 0),
        (1, 0, NOW, 0),
    ]
    assert [len(p.attributes) for p in metric.gauge.data_points] == [4, 1]


def test_info_without_a_time() -> None:
    compare([series(GRAPH_CONNECTION_INFO.name, attributes=())], ALL_DESCRIPTORS, now_ns=0)


def test_delta_temporality() -> None:
    compare(
        [
            series(CALLS.name),
            series(DURATION.name, buckets=None),
            series("exp", exp=exp_histogram(1.0)),
            series(GRAPH_CONNECTION_INFO.name),
        ],
        ALL_DESCRIPTORS,
        temporality=Temporality.DELTA,
    )


def test_zero_values_are_left_out_as_protobuf_does() -> None:
    """start 0, count 0, now 0: the slow paths, proto3 defaults not written."""
    items = [
        series(CALLS.name, start_ns=0, count=0),
        series(DURATION.name, start_ns=0, count=0, total=0.0, buckets=None),
        series("exp", start_ns=0, count=0, total=0.0, exp=ExpHistogram()),
        series(CALLS.name, ATTRIBUTES[:1], count=-5),  # sfixed64: negative is fine
    ]
    for now_ns in (NOW, 0):
        compare(items, ALL_DESCRIPTORS, now_ns=now_ns)


def test_unknown_metrics_are_skipped_but_keep_their_resource() -> None:
    """A resource whose series are all of unknown metrics still gets an (empty) ResourceMetrics."""
    requests = compare([series("unknown", "r2"), series(CALLS.name, "r1"), series("unknown", "r1")])
    assert requests[0].series == 1
    (only_unknown,) = compare([series("unknown", "r2")])
    assert only_unknown.series == 0
    assert compare([]) == []


@pytest.mark.parametrize("max_bytes", [1, 120, 300, 700, 2000, 10_000])
def test_splitting_at_small_limits(max_bytes: int) -> None:
    items = []
    for index in range(60):
        attributes = (*ATTRIBUTES, ("n", index))
        resource_id = ("r1", "r2", "r3", "gone")[index % 4 if index < 40 else 0]
        items.append(series(CALLS.name, resource_id, attributes, count=index))
        items.append(series(DURATION.name, resource_id, attributes, buckets=None))
        if index % 7 == 0:
            items.append(series("unknown", resource_id, attributes))
    requests = compare(items, max_bytes=max_bytes)
    assert sum(request.series for request in requests) == 120
    if max_bytes < 10_000:
        assert len(requests) > 1


def test_one_series_above_the_limit_goes_out_alone() -> None:
    huge = series(CALLS.name, attributes=(("blob", "x" * 5000),))
    items = [series(CALLS.name), huge, series(CALLS.name, ATTRIBUTES[:1])]
    requests = compare(items, max_bytes=1000)
    assert [request.series for request in requests] == [1, 1, 1]
    assert len(requests[1].data) > 5000


def test_out_of_range_values_raise_value_error_like_protobuf() -> None:
    for bad in (
        series(DURATION.name, count=-1, buckets=None),
        series(DURATION.name, buckets=[-1] * 17),
        series(CALLS.name, count=2**63),
        series(CALLS.name, start_ns=2**64),
        series(CALLS.name, attributes=(("big", 2**63),)),
    ):
        with pytest.raises(ValueError):
            list(split_by_size(RESOURCES, [bad], SPAN_DESCRIPTORS, Temporality.CUMULATIVE, NOW, 1 << 20))
        with pytest.raises(ValueError):
            list(encode_requests(RESOURCES, [bad], SPAN_DESCRIPTORS, Temporality.CUMULATIVE, NOW, 1 << 20))


# ---------------------------------------------------------------------------------- caches


def test_mutable_attribute_values_are_not_cached() -> None:
    values = ["a"]
    attributes = (("list", values),)
    compare([series(CALLS.name, attributes=attributes)])
    values.append("b")  # the same tuple object, different content
    compare([series(CALLS.name, attributes=attributes)])


def test_resource_cache_follows_new_attributes() -> None:
    compare([series(CALLS.name, "r9")], resources={"r9": (("service.name", "old"),)})
    compare([series(CALLS.name, "r9")], resources={"r9": (("service.name", "new"),)})
    compare([series(CALLS.name, "r9")], resources={})


def test_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics_encoder.clear_caches()
    monkeypatch.setattr(metrics_encoder, "_TUPLE_CACHE_LIMIT", 50)
    monkeypatch.setattr(metrics_encoder, "_PAIR_CACHE_LIMIT", 30)
    monkeypatch.setattr(metrics_encoder, "_RESOURCE_CACHE_LIMIT", 5)
    items = [
        series(CALLS.name, f"r{index}", (("user.id", f"user-{index}"), ("n", index)), count=index)
        for index in range(400)
    ]
    compare(items, resources={f"r{index}": (("service.name", f"s{index}"),) for index in range(400)})
    assert all(len(cache) <= 50 for cache in metrics_encoder._tuple_caches.values())
    assert len(metrics_encoder._pair_cache) <= 30
    assert len(metrics_encoder._resource_cache) <= 5
    metrics_encoder.clear_caches()


def test_bytes_identical_to_serialize_to_string() -> None:
    """Stronger than required (parsed equality): today the bytes are the very same."""
    items = [
        series(CALLS.name, "r2", exemplars=[(TRACE, SPAN, 1.0, NOW)]),
        series(DURATION.name, "r2", buckets=None),
        series("exp", "r1", exp=exp_histogram(0.0, 2.0, 9.0), count=3, total=11.0),
        series(GRAPH_SECONDS.name, "gone", buckets=[1, 2, 3, 4]),
        series(GRAPH_CONNECTION_INFO.name, "r1"),
    ]
    for max_bytes in (100, 1 << 20):
        old = split_by_size(RESOURCES, items, ALL_DESCRIPTORS, Temporality.CUMULATIVE, NOW, max_bytes)
        new = encode_requests(RESOURCES, items, ALL_DESCRIPTORS, Temporality.CUMULATIVE, NOW, max_bytes)
        assert [r.data for r in new] == [r.SerializeToString() for r in old]


# ---------------------------------------------------------------------------------- property

_UINT64 = st.integers(0, 2**64 - 1)
_scalars = st.one_of(
    st.text(max_size=8),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.none(),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)
_attributes = st.lists(st.tuples(st.sampled_from(["a", "b", "service.name", ""]), _values), max_size=4).map(
    tuple
)
_shared_attributes = st.sampled_from([ATTRIBUTES, ATTRIBUTES[:1], (("code", 200),), (("code", "200"),), ()])
_exemplars = st.lists(
    st.tuples(st.binary(max_size=16), st.binary(max_size=8), st.floats(allow_nan=False), _UINT64), max_size=2
)


@st.composite
def _exp(draw: st.DrawFn) -> ExpHistogram | None:
    if draw(st.booleans()):
        return None
    counts = draw(st.lists(st.integers(0, 2**64 - 1), max_size=6))
    minimum = draw(st.none() | st.floats(0, 10))
    return ExpHistogram(
        scale=draw(st.integers(-10, 20)),
        zero_count=draw(_UINT64),
        offset=draw(st.integers(-(2**31), 2**31 - 1)),
        counts=counts,
        min=minimum,
        max=None if minimum is None else minimum + 1,
    )


@st.composite
def _series(draw: st.DrawFn) -> Series:
    metric = draw(st.sampled_from([*ALL_DESCRIPTORS, "unknown"]))
    bounds_size = len(ALL_DESCRIPTORS[metric].bounds) + 1 if metric in ALL_DESCRIPTORS else 1
    return series(
        metric,
        draw(st.sampled_from(["r1", "r2", "r3", "gone"])),
        draw(_shared_attributes | _attributes),
        start_ns=draw(st.just(START) | _UINT64),
        count=draw(st.integers(0, 2**63 - 1)),
        total=draw(st.floats(allow_nan=False)),
        buckets=draw(
            st.none()
            | st.lists(_UINT64, min_size=bounds_size, max_size=bounds_size)
            | st.lists(_UINT64, max_size=3)
        ),
        exp=draw(_exp()),
        exemplars=draw(_exemplars),
        zero_ns=draw(st.just(0) | st.just(NOW - 60 * 10**9) | _UINT64),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(_series(), max_size=25),
    temporality=st.sampled_from(list(Temporality)),
    now_ns=st.just(NOW) | _UINT64,
    max_bytes=st.sampled_from([1, 200, 600, 2000, 1 << 20]),
    zero_init=st.booleans(),
)
def test_property_same_requests_as_split_by_size(
    items: list[Series], temporality: Temporality, now_ns: int, max_bytes: int, zero_init: bool
) -> None:
    descriptors = ZERO_DESCRIPTORS if zero_init else ALL_DESCRIPTORS
    compare(items, descriptors, temporality=temporality, now_ns=now_ns, max_bytes=max_bytes)


def test_split_points_match_at_every_limit() -> None:
    """Every limit in a range, so each boundary (the ``ByteSize() + 8`` estimate) is crossed."""
    items = [
        series(metric, resource_id, (*ATTRIBUTES[:2], ("n", index)), buckets=None)
        for index in range(3)
        for resource_id in ("r1", "r2", "r3", "gone")
        for metric in (CALLS.name, DURATION.name)
    ]
    for max_bytes in range(100, 1500):
        compare(items, max_bytes=max_bytes)


def test_fresh_attribute_tuples_give_the_same_bytes_and_are_not_kept() -> None:
    """The emitter decodes attributes afresh at every fold: caching them per tuple would only
    keep tuples alive that never come back."""
    items = [
        series(CALLS.name, attributes=(*ATTRIBUTES, ("user", f"u{i}")), count=i + 1) for i in range(50)
    ] + [series(DURATION.name, buckets=[1] * (len(DEFAULT_HISTOGRAM_BUCKETS) + 1))]
    metrics_encoder.clear_caches()
    reused = list(encode_requests(RESOURCES, items, SPAN_DESCRIPTORS, Temporality.CUMULATIVE, NOW, 1 << 20))
    metrics_encoder.clear_caches()
    fresh = list(
        encode_requests(
            RESOURCES,
            items,
            SPAN_DESCRIPTORS,
            Temporality.CUMULATIVE,
            NOW,
            1 << 20,
            reuse_attribute_tuples=False,
        )
    )
    assert fresh == reused
    assert sum(len(cache) for cache in metrics_encoder._tuple_caches.values()) == 0


def test_pre_encoded_attribute_parts_give_the_same_bytes() -> None:
    """The store keeps attributes in their OTLP encoding and emits them as they are."""
    typed: Attributes = (
        *ATTRIBUTES,
        ("http.status_code", 200),
        ("ok", True),
        ("ratio", 0.5),
        ("raw", b"\x00"),
    )
    items = [
        series(CALLS.name, attributes=typed),
        series(DURATION.name, attributes=typed, buckets=[1] * (len(DEFAULT_HISTOGRAM_BUCKETS) + 1)),
        series("exp", attributes=typed, exp=exp_histogram(0.5, 2.0, 8.0)),
        series(EVENTS.name, attributes=()),
    ]
    encoded = []
    for one in items:
        encoded.append(series(one.metric, attributes=(), buckets=one.buckets, exp=one.exp))
        encoded[-1].attribute_parts = attribute_parts(one.attributes)
    args = (RESOURCES, ALL_DESCRIPTORS, Temporality.CUMULATIVE, NOW, 1 << 20)
    assert list(encode_requests(args[0], encoded, *args[1:])) == list(
        encode_requests(args[0], items, *args[1:])
    )


@pytest.mark.parametrize("max_bytes", [1, 300, 2000, 1 << 20])
def test_a_paired_series_is_written_as_its_histogram_and_its_companion_counter(max_bytes: int) -> None:
    """A duration series with a companion (Series.companion) goes out exactly as the two series
    ``with_companions`` expands it into: same bytes, same split into requests."""
    exemplars = [(TRACE, SPAN, 4.5, NOW - 1000)]
    items = []
    for index in range(30):
        attributes = (*ATTRIBUTES, ("n", index))
        paired = series(
            DURATION.name,
            ("r1", "r2", "gone")[index % 3],
            attributes,
            count=index + 1,
            buckets=[index] + [0] * len(DEFAULT_HISTOGRAM_BUCKETS),
            exemplars=exemplars if index % 2 else None,
        )
        paired.companion = CALLS.name
        items.append(paired)
        if index % 5 == 0:
            items.append(series(EVENTS.name, paired.resource_id, attributes))
    items[3].companion = "not described"  # skipped, as an unknown metric is
    expanded = with_companions(items)
    encoded = list(
        encode_requests(RESOURCES, items, SPAN_DESCRIPTORS, Temporality.CUMULATIVE, NOW, max_bytes)
    )
    expected = compare(expanded, max_bytes=max_bytes)
    assert [(r.data, r.key, r.series) for r in encoded] == [(r.data, r.key, r.series) for r in expected]
    assert sum(r.series for r in encoded) == 30 + 29 + 6


# ---------------------------------------------------------------------------------- zero points

ZERO_NS = 1_699_999_979_000_000_000  # the end of the minute before NOW (NOW is 20.12 s into one)


def _points(request: ExportMetricsServiceRequest, name: str) -> list[Any]:
    for resource_metrics in request.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    return list(getattr(metric, metric.WhichOneof("data")).data_points)
    return []


def _parsed(encoded: list[EncodedRequest]) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest.FromString(b"".join(r.data for r in encoded))


def test_a_zero_initialised_series_gets_a_zero_point_before_its_counted_one() -> None:
    """upstream: tempo modules/generator/registry/counter_test.go Test_counter (a 0 sample at
    getEndOfLastMinuteMs, then the value, in the same collection), histogram_test.go
    Test_histogram (the same for _count and every _bucket, none for _sum) and
    native_histogram_test.go (an empty histogram of the same schema)."""
    buckets = [1] + [0] * len(DEFAULT_HISTOGRAM_BUCKETS)
    items = [
        series(CALLS.name, count=3, zero_ns=ZERO_NS),
        series(DURATION.name, count=1, total=2.5, buckets=buckets, zero_ns=ZERO_NS),
        series("exp", count=1, total=4.0, exp=exp_histogram(4.0), zero_ns=ZERO_NS),
        series(EVENTS.name, "r2", count=2),  # already published: no zero point
    ]
    encoded = compare(items, ZERO_DESCRIPTORS)
    assert sum(r.series for r in encoded) == 7
    request = _parsed(encoded)
    zero, counted = _points(request, CALLS.name)
    assert (zero.start_time_unix_nano, zero.time_unix_nano, zero.as_int) == (START, ZERO_NS, 0)
    assert zero.HasField("as_int") and list(zero.exemplars) == []
    assert (counted.start_time_unix_nano, counted.time_unix_nano, counted.as_int) == (START, NOW, 3)
    assert zero.attributes == counted.attributes
    zero, counted = _points(request, DURATION.name)
    assert (zero.start_time_unix_nano, zero.time_unix_nano, zero.count) == (START, ZERO_NS, 0)
    assert not zero.HasField("sum")  # Tempo appends no zero sample to _sum
    assert list(zero.bucket_counts) == [0] * len(buckets)
    assert list(zero.explicit_bounds) == list(counted.explicit_bounds) == list(DEFAULT_HISTOGRAM_BUCKETS)
    assert (counted.time_unix_nano, counted.count, list(counted.bucket_counts)) == (NOW, 1, buckets)
    zero, counted = _points(request, "exp")
    assert (zero.time_unix_nano, zero.count, zero.scale, zero.zero_count) == (ZERO_NS, 0, counted.scale, 0)
    assert zero.HasField("positive") and list(zero.positive.bucket_counts) == []
    assert not zero.HasField("sum") and not zero.HasField("min")
    assert counted.count == 1
    (only,) = _points(request, EVENTS.name)
    assert only.time_unix_nano == NOW


def test_no_zero_point_for_delta_nor_without_zero_init_nor_at_or_after_the_flush() -> None:
    """upstream: connector_test.go (#40139 / PR #40148): delta sums are not zero-initialised; and
    the connector zero-initialises no histogram (TestBuildMetrics... histogram count 1 at the
    first flush)."""
    items = [series(CALLS.name, zero_ns=ZERO_NS), series(DURATION.name, buckets=None, zero_ns=ZERO_NS)]
    for descriptors, temporality in (
        (ZERO_DESCRIPTORS, Temporality.DELTA),
        (ALL_DESCRIPTORS, Temporality.CUMULATIVE),
    ):
        encoded = compare(items, descriptors, temporality=temporality)
        assert sum(r.series for r in encoded) == 2
    # A zero time not strictly before the flush (another owner's clock behind): left out.
    for zero_ns in (NOW, NOW + 1):
        encoded = compare([series(CALLS.name, zero_ns=zero_ns)], ZERO_DESCRIPTORS)
        assert [p.time_unix_nano for p in _points(_parsed(encoded), CALLS.name)] == [NOW]


def test_the_companion_counter_gets_its_zero_point_and_the_histogram_none() -> None:
    """Connector mode: a paired duration series stands for its calls counter; the counter is
    zero-initialised, the histogram is not (connector_test.go, PR #39052: calls 0 while the
    duration count is 1)."""
    calls = MetricDescriptor(CALLS.name, MetricKind.SUM, order=0, zero_init=True)
    descriptors = {**SPAN_DESCRIPTORS, calls.name: calls}
    paired = series(
        DURATION.name, count=2, buckets=[2] + [0] * len(DEFAULT_HISTOGRAM_BUCKETS), zero_ns=ZERO_NS
    )
    paired.companion = CALLS.name
    encoded = list(encode_requests(RESOURCES, [paired], descriptors, Temporality.CUMULATIVE, NOW, 1 << 20))
    assert encoded == compare(with_companions([paired]), descriptors)
    request = _parsed(encoded)
    assert [(p.time_unix_nano, p.as_int) for p in _points(request, CALLS.name)] == [(ZERO_NS, 0), (NOW, 2)]
    assert [(p.time_unix_nano, p.count) for p in _points(request, DURATION.name)] == [(NOW, 2)]
    assert encoded[0].series == 3


@pytest.mark.parametrize("max_bytes", [1, 150, 400])
def test_a_zero_point_is_never_split_from_its_counted_point(max_bytes: int) -> None:
    items = [series(CALLS.name, attributes=(("n", index),), zero_ns=ZERO_NS) for index in range(20)]
    encoded = compare(items, ZERO_DESCRIPTORS, max_bytes=max_bytes)
    assert len(encoded) > 1
    for one in encoded:
        points = _points(ExportMetricsServiceRequest.FromString(one.data), CALLS.name)
        assert [p.time_unix_nano for p in points] == [ZERO_NS, NOW] * (len(points) // 2)


def test_exemplars_carry_the_flush_time() -> None:
    """upstream: connector_test.go (exemplars are stamped with the flush timestamp, not the span's
    end; reference §2.7): the value is the span duration, on the calls sum too."""
    exemplars = [(TRACE, SPAN, 12.5, NOW - 5_000_000_000), (TRACE, SPAN, 1.0, -1)]
    items = [
        series(CALLS.name, exemplars=exemplars),
        series(DURATION.name, buckets=None, exemplars=exemplars),
        series("exp", exp=exp_histogram(4.0), count=1, total=4.0, exemplars=exemplars),
    ]
    request = _parsed(compare(items, ALL_DESCRIPTORS))
    for name in (CALLS.name, DURATION.name, "exp"):
        (point,) = _points(request, name)
        assert [(e.time_unix_nano, e.as_double) for e in point.exemplars] == [(NOW, 12.5), (NOW, 1.0)]
        assert [e.trace_id for e in point.exemplars] == [TRACE, TRACE]
