"""Series -> Prometheus time series as the Collector's prometheusremotewrite exporter writes them."""

from __future__ import annotations

import math

import pytest

from state.codec import encode_attributes
from worker.config import Settings
from worker.model.exphistogram import ExpHistogram
from worker.model.series import MetricDescriptor, MetricKind, Series
from worker.model.values import attribute_parts
from worker.processors.pipeline import Pipeline
from worker.sinks.prometheus_translate import (
    NativeHistogram,
    PromExemplar,
    PromSeries,
    Translator,
    convert_buckets_layout,
    format_le,
    metric_name,
    normalize_label,
)
from worker.sinks.prompb.remote_write_pb2 import WriteRequest
from worker.sinks.remote_write import encode_write_request, split_requests

NOW_NS = 1_700_000_000_123_456_789
NOW_MS = 1_700_000_000_123
TRACE = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
SPAN = bytes.fromhex("a1a2a3a4a5a6a7a8")

RESOURCE = (("service.name", "checkout"), ("service.namespace", "shop"), ("k8s.pod.name", "pod-1"))


def _by_labels(series: list[PromSeries]) -> dict[tuple[tuple[str, str], ...], PromSeries]:
    return {one.labels: one for one in series}


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _connector_descriptors() -> dict[str, MetricDescriptor]:
    return Pipeline(Settings()).descriptors()


def _span_series(**extra: object) -> Series:
    attributes = (
        ("service.name", "checkout"),
        ("span.name", "GET /cart"),
        ("span.kind", "SPAN_KIND_SERVER"),
        ("status.code", "STATUS_CODE_UNSET"),
    )
    fields: dict[str, object] = {
        "series_id": "duration\x1er1\x1ex",
        "metric": "duration",
        "resource_id": "r1",
        "attributes": attributes,
        "start_ns": NOW_NS - 60_000_000_000,
        "last_ns": NOW_NS,
        "count": 3,
        "sum": 1403.5,
        "buckets": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
        "companion": "calls",
    }
    fields.update(extra)
    return Series(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("calls", "", MetricKind.SUM, "calls_total"),
        ("duration", "ms", MetricKind.HISTOGRAM, "duration_milliseconds"),
        ("duration", "s", MetricKind.HISTOGRAM, "duration_seconds"),
        ("duration", "ms", MetricKind.EXPONENTIAL_HISTOGRAM, "duration_milliseconds"),
        ("events", "", MetricKind.SUM, "events_total"),
        ("ns.calls", "", MetricKind.SUM, "ns_calls_total"),
        ("traces.span.metrics.calls", "", MetricKind.SUM, "traces_span_metrics_calls_total"),
        ("traces_spanmetrics_calls_total", "", MetricKind.SUM, "traces_spanmetrics_calls_total"),
        ("traces_spanmetrics_latency", "", MetricKind.HISTOGRAM, "traces_spanmetrics_latency"),
        (
            "traces_service_graph_request_server_seconds",
            "s",
            MetricKind.HISTOGRAM,
            "traces_service_graph_request_server_seconds",
        ),
        ("traces_target_info", "", MetricKind.INFO, "traces_target_info"),
        ("size", "By", MetricKind.SUM, "size_bytes_total"),
        ("rate", "By/s", MetricKind.SUM, "rate_bytes_per_second_total"),
        ("queue", "{requests}", MetricKind.SUM, "queue_total"),
        ("1st", "", MetricKind.SUM, "_1st_total"),
        ("ns:calls", "", MetricKind.SUM, "ns:calls_total"),
        ("ünit.calls", "", MetricKind.SUM, "nit_calls_total"),
    ],
)
def test_metric_names(name: str, unit: str, kind: MetricKind, expected: str) -> None:
    assert metric_name(name, unit, kind) == expected


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("http.method", "http_method"),
        ("span.name", "span_name"),
        ("k8s.pod.name", "k8s_pod_name"),
        ("2xx", "key_2xx"),
        ("_private", "key_private"),
        ("__reserved", "__reserved"),
        ("a-b/c", "a_b_c"),
        ("ünïcode", "key_n_code"),  # ASCII only: "_n_code", then the single "_" rule
        ("a:b", "a_b"),
    ],
)
def test_label_names(label: str, expected: str) -> None:
    assert normalize_label(label) == expected


@pytest.mark.parametrize(
    ("bound", "expected"),
    [
        (2.0, "2"),
        (1400.0, "1400"),
        (0.002, "0.002"),
        (0.1, "0.1"),
        (16.384, "16.384"),
        (1e-05, "0.00001"),
        (1e21, "1000000000000000000000"),
        (15000.0, "15000"),
        (math.inf, "+Inf"),
    ],
)
def test_le_is_gos_shortest_fixed_format(bound: float, expected: str) -> None:
    assert format_le(bound) == expected


# ---------------------------------------------------------------------------------- connector mode


def test_connector_histogram_and_companion_counter() -> None:
    translator = Translator(_connector_descriptors())
    out = _by_labels(translator.translate({"r1": RESOURCE}, [_span_series()], NOW_NS))
    common = {
        "job": "shop/checkout",
        "otel_scope_name": "spanmetricsconnector",
        "service_name": "checkout",
        "span_name": "GET /cart",
        "span_kind": "SPAN_KIND_SERVER",
        "status_code": "STATUS_CODE_UNSET",
    }
    calls = out[_labels(__name__="calls_total", **common)]
    assert calls.samples == [(NOW_MS, 3.0)]
    assert out[_labels(__name__="duration_milliseconds_sum", **common)].samples == [(NOW_MS, 1403.5)]
    assert out[_labels(__name__="duration_milliseconds_count", **common)].samples == [(NOW_MS, 3.0)]
    cumulative = {
        "2": 1,
        "4": 1,
        "800": 1,
        "1000": 1,
        "1400": 2,
        "2000": 2,
        "15000": 2,
        "+Inf": 3,
    }
    for le, value in cumulative.items():
        bucket = out[_labels(__name__="duration_milliseconds_bucket", le=le, **common)]
        assert bucket.samples == [(NOW_MS, float(value))], le
    # No instance: the resource has no service.instance.id. No resource attribute on the series.
    for one in out.values():
        names = dict(one.labels)
        assert "instance" not in names
        assert "k8s_pod_name" not in names or names["__name__"] == "target_info"
    # target_info: the resource has an attribute besides the identifying ones.
    info = out[_labels(__name__="target_info", job="shop/checkout", k8s_pod_name="pod-1")]
    assert info.samples == [(NOW_MS, 1.0)]
    assert len(out) == 1 + 1 + 1 + 17 + 1  # calls, _sum, _count, 17 buckets, target_info


def test_labels_sorted_unique_and_without_empty_values() -> None:
    translator = Translator(_connector_descriptors())
    item = _span_series(
        attributes=(("b.x", "1"), ("a", ""), ("b_x", "2"), ("Z", "z"), ("service.name", "checkout")),
        companion=None,
    )
    out = translator.translate({"r1": (("service.name", "checkout"),)}, [item], NOW_NS)
    for one in out:
        names = [name for name, _ in one.labels]
        assert names == sorted(names)
        assert len(set(names)) == len(names)
        assert all(value for _, value in one.labels)
    # "b.x" and "b_x" collide after sanitising: values joined with ";" in key order.
    assert dict(out[0].labels)["b_x"] == "1;2"
    assert "a" not in dict(out[0].labels)
    # Only identifying attributes: no target_info.
    assert not [one for one in out if one.name == "target_info"]


def test_instance_and_job_without_namespace() -> None:
    resource = (("service.name", "cart"), ("service.instance.id", "i-1"))
    out = Translator(_connector_descriptors()).translate(
        {"r1": resource}, [_span_series(companion=None, metric="calls", buckets=None)], NOW_NS
    )
    (calls,) = out
    assert dict(calls.labels)["job"] == "cart"
    assert dict(calls.labels)["instance"] == "i-1"


def test_attributes_from_stored_parts() -> None:
    """The Redis store hands series with their attributes serialized (attribute_parts)."""
    attributes = (("service.name", "checkout"), ("http.status_code", 200), ("ok", True), ("ratio", 0.5))
    item = _span_series(metric="calls", companion=None, buckets=None, attributes=(), count=1)
    item.attribute_parts = attribute_parts(attributes)
    assert encode_attributes(attributes)  # the same values the store keeps
    (calls,) = Translator(_connector_descriptors()).translate({}, [item], NOW_NS)
    labels = dict(calls.labels)
    assert labels["http_status_code"] == "200"
    assert labels["ok"] == "true"
    assert labels["ratio"] == "0.5"


def test_zero_point_goes_first_and_histogram_zero_has_no_sum() -> None:
    descriptors = {
        "calls": MetricDescriptor("calls", MetricKind.SUM, zero_init=True, scope=""),
        "lat": MetricDescriptor("lat", MetricKind.HISTOGRAM, bounds=(1.0,), zero_init=True, scope=""),
    }
    zero_ns = NOW_NS - 30_000_000_000
    calls = _span_series(metric="calls", companion=None, buckets=None, zero_ns=zero_ns, attributes=())
    lat = _span_series(metric="lat", companion=None, buckets=[2, 1], zero_ns=zero_ns, attributes=())
    out = {
        one.name + dict(one.labels).get("le", ""): one
        for one in Translator(descriptors).translate({}, [calls, lat], NOW_NS)
    }
    zero_ms = zero_ns // 1_000_000
    assert out["calls_total"].samples == [(zero_ms, 0.0), (NOW_MS, 3.0)]
    assert out["lat_sum"].samples == [(NOW_MS, 1403.5)]
    assert out["lat_count"].samples == [(zero_ms, 0.0), (NOW_MS, 3.0)]
    assert out["lat_bucket1"].samples == [(zero_ms, 0.0), (NOW_MS, 2.0)]
    assert out["lat_bucket+Inf"].samples == [(zero_ms, 0.0), (NOW_MS, 3.0)]
    # A zero point at or after the flush time is not written (a skewed clock).
    late = _span_series(metric="calls", companion=None, buckets=None, zero_ns=NOW_NS, attributes=())
    (only,) = Translator(descriptors).translate({}, [late], NOW_NS)
    assert only.samples == [(NOW_MS, 3.0)]


def test_exemplars_on_counter_and_on_the_first_bucket_that_holds_them() -> None:
    exemplars = [(TRACE, SPAN, 3.0, 1), (TRACE, b"", 1200.0, 2), (b"", SPAN, 99999.0, 3)]
    out = Translator(_connector_descriptors()).translate(
        {"r1": RESOURCE}, [_span_series(exemplars=exemplars)], NOW_NS
    )
    with_exemplars = {(one.name, dict(one.labels).get("le")): one.exemplars for one in out if one.exemplars}
    assert set(with_exemplars) == {
        ("calls_total", None),
        ("duration_milliseconds_bucket", "4"),
        ("duration_milliseconds_bucket", "1400"),
        ("duration_milliseconds_bucket", "+Inf"),
    }
    (first,) = with_exemplars[("duration_milliseconds_bucket", "4")]
    assert first.labels == (("trace_id", TRACE.hex()), ("span_id", SPAN.hex()))
    assert first.value == 3.0
    assert first.timestamp_ms == NOW_MS
    (last,) = with_exemplars[("duration_milliseconds_bucket", "+Inf")]
    assert last.labels == (("span_id", SPAN.hex()),)
    assert len(with_exemplars[("calls_total", None)]) == 3


def test_unknown_metric_is_skipped() -> None:
    assert (
        Translator(_connector_descriptors()).translate(
            {}, [_span_series(metric="nope", companion=None)], NOW_NS
        )
        == []
    )


# ---------------------------------------------------------------------------------- native histograms


def test_buckets_layout_matches_the_exporter() -> None:
    # Contiguous buckets: one span, index shifted by one.
    assert convert_buckets_layout(0, [1, 2, 3], 0) == ([(1, 3)], [1, 1, 1])
    # A gap of two zero buckets stays in the span; a longer gap starts a new one.
    assert convert_buckets_layout(-2, [4, 0, 0, 1], 0) == ([(-1, 4)], [4, -4, 0, 1])
    assert convert_buckets_layout(5, [2, 0, 0, 0, 3], 0) == ([(6, 1), (3, 1)], [2, 1])
    # Scale down by one: pairs of buckets merged (indexes 0,1 -> 1; 2,3 -> 2).
    assert convert_buckets_layout(0, [1, 1, 2, 2], 1) == ([(1, 2)], [2, 2])
    assert convert_buckets_layout(0, [], 0) == ([], [])


def test_exponential_histogram_becomes_native_histogram() -> None:
    descriptors = {"duration": MetricDescriptor("duration", MetricKind.EXPONENTIAL_HISTOGRAM, unit="ms")}
    exp = ExpHistogram(max_size=160)
    for value in (3.0, 3.0, 700.0):
        exp.record(value)
    item = _span_series(
        companion=None, buckets=None, exp=exp, sum=706.0, count=3, exemplars=[(TRACE, SPAN, 3.0, 1)]
    )
    (series,) = Translator(descriptors).translate({}, [item], NOW_NS)
    assert series.name == "duration_milliseconds"
    assert dict(series.labels)["otel_scope_name"] == "spanmetricsconnector"
    assert series.samples == []
    (native,) = series.histograms
    assert native.count == 3
    assert native.sum == 706.0
    assert native.schema == min(exp.scale, 8)
    assert native.timestamp_ms == NOW_MS
    assert native.zero_threshold == 1e-128
    assert sum(length for _, length in native.positive_spans) == len(native.positive_deltas)
    # Deltas add up to the bucket counts: 3 observations in buckets.
    counts, running = [], 0
    for delta in native.positive_deltas:
        running += delta
        counts.append(running)
    assert sum(counts) == 3
    assert len(series.exemplars) == 1


def test_scale_below_minus_four_is_dropped() -> None:
    descriptors = {"d": MetricDescriptor("d", MetricKind.EXPONENTIAL_HISTOGRAM)}
    exp = ExpHistogram(max_size=160, scale=-5)
    item = _span_series(metric="d", companion=None, buckets=None, exp=exp)
    (series,) = Translator(descriptors).translate({}, [item], NOW_NS)
    assert series.histograms == []


# ---------------------------------------------------------------------------------- Tempo mode


def test_tempo_mode_series_are_tempos() -> None:
    settings = Settings(
        metrics_generator={"processors": ["span-metrics"], "generate_native_histograms": "both"}
    )
    descriptors = Pipeline(settings).descriptors()
    attributes = (
        ("service", "checkout"),
        ("span_name", "GET /cart"),
        ("span_kind", "SPAN_KIND_SERVER"),
        ("status_code", "STATUS_CODE_UNSET"),
        ("__span_kind", "x"),
        ("_private", "kept as Tempo wrote it"),
    )
    zero_ns = NOW_NS - 30_000_000_000
    calls = _span_series(
        metric="traces_spanmetrics_calls_total",
        companion=None,
        buckets=None,
        attributes=attributes,
        zero_ns=zero_ns,
    )
    latency = _span_series(
        metric="traces_spanmetrics_latency",
        companion=None,
        buckets=[1] + [0] * 13 + [2],
        attributes=attributes,
        sum=1.5,
        zero_ns=zero_ns,
    )
    exp = ExpHistogram(max_size=100, scale=3)
    exp.record(0.5)
    native = _span_series(
        metric=next(key for key in descriptors if key.endswith("native")),
        companion=None,
        buckets=None,
        exp=exp,
        count=1,
        sum=0.5,
        attributes=attributes,
        zero_ns=zero_ns,
    )
    out = Translator(descriptors, sanitize_labels=False).translate({"": ()}, [calls, latency, native], NOW_NS)
    names = sorted({one.name for one in out})
    assert names == [
        "traces_spanmetrics_calls_total",
        "traces_spanmetrics_latency",
        "traces_spanmetrics_latency_bucket",
        "traces_spanmetrics_latency_count",
        "traces_spanmetrics_latency_sum",
    ]
    for one in out:
        labels = dict(one.labels)
        assert "otel_scope_name" not in labels and "job" not in labels and "instance" not in labels
        assert labels["__span_kind"] == "x"
        assert labels["_private"] == "kept as Tempo wrote it"
        assert labels["service"] == "checkout"
    les = sorted(
        (dict(one.labels)["le"] for one in out if one.name.endswith("_bucket")), key=lambda le: float(le)
    )
    assert les == [format_le(b) for b in descriptors["traces_spanmetrics_latency"].bounds] + ["+Inf"]
    assert "0.002" in les and "16.384" in les
    (counter,) = [one for one in out if one.name == "traces_spanmetrics_calls_total"]
    assert counter.samples == [(zero_ns // 1_000_000, 0.0), (NOW_MS, 3.0)]
    (histogram,) = [one for one in out if one.histograms]
    assert histogram.name == "traces_spanmetrics_latency"
    assert [h.count for h in histogram.histograms] == [0, 1]  # Tempo's zero sample, then the count
    assert histogram.histograms[0].schema == histogram.histograms[1].schema == 3


# ---------------------------------------------------------------------------------- wire


def test_write_request_round_trip_and_split() -> None:
    out = Translator(_connector_descriptors()).translate(
        {"r1": RESOURCE}, [_span_series(exemplars=[(TRACE, SPAN, 3.0, 1)])], NOW_NS
    )
    batches = list(split_requests(out, 5))
    assert all(sum(one.points for one in batch) <= 5 for batch in batches)
    assert sum(len(batch) for batch in batches) == len(out)
    request = WriteRequest.FromString(encode_write_request(out))
    assert len(request.timeseries) == len(out)
    by_name = {
        (
            next(label.value for label in ts.labels if label.name == "__name__"),
            next((label.value for label in ts.labels if label.name == "le"), None),
        ): ts
        for ts in request.timeseries
    }
    calls = by_name[("calls_total", None)]
    assert [(s.timestamp, s.value) for s in calls.samples] == [(NOW_MS, 3.0)]
    assert calls.exemplars[0].labels[0].name == "trace_id"
    assert [label.name for label in calls.labels] == sorted(label.name for label in calls.labels)


def _reference_encoding(series: list[PromSeries]) -> bytes:
    """The same request through the generated protobuf classes."""
    request = WriteRequest()
    for one in series:
        ts = request.timeseries.add()
        for name, text in one.labels:
            ts.labels.add(name=name, value=text)
        for timestamp, value in one.samples:
            ts.samples.add(value=value, timestamp=timestamp)
        for exemplar in one.exemplars:
            converted = ts.exemplars.add(value=exemplar.value, timestamp=exemplar.timestamp_ms)
            for name, text in exemplar.labels:
                converted.labels.add(name=name, value=text)
        for histogram in one.histograms:
            native = ts.histograms.add(
                count_int=histogram.count,
                sum=histogram.sum,
                schema=histogram.schema,
                zero_threshold=histogram.zero_threshold,
                zero_count_int=histogram.zero_count,
                timestamp=histogram.timestamp_ms,
            )
            for offset, length in histogram.positive_spans:
                native.positive_spans.add(offset=offset, length=length)
            native.positive_deltas.extend(histogram.positive_deltas)
    data: bytes = request.SerializeToString()
    return data


def test_hand_encoding_is_byte_for_byte_the_generated_code() -> None:
    exp = ExpHistogram(max_size=160)
    for value in (0.0, 0.001, 3.0, 3.0, 700.0, 1e9):
        exp.record(value)
    series = [
        *Translator(_connector_descriptors()).translate(
            {"r1": RESOURCE}, [_span_series(exemplars=[(TRACE, SPAN, 3.0, 1), (TRACE, b"", 0.0, 2)])], NOW_NS
        ),
        *Translator({"d": MetricDescriptor("d", MetricKind.EXPONENTIAL_HISTOGRAM, zero_init=True)}).translate(
            {}, [_span_series(metric="d", companion=None, buckets=None, exp=exp, zero_ns=NOW_NS - 1)], NOW_NS
        ),
        PromSeries(
            (("__name__", "edge"), ("é", "ünïcode")),
            samples=[(0, 0.0), (-5, -0.0), (1, float("inf")), (2, -1.5)],
            histograms=[
                NativeHistogram(0, 0.0, -4, 0, [], [], 0),
                NativeHistogram(7, -2.5, 8, 3, [(-3, 2), (0, 0), (5, 1)], [2, -1, 3], -1),
            ],
            exemplars=[PromExemplar((), 0.0, 0)],
        ),
    ]
    assert encode_write_request(series) == _reference_encoding(series)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {
            "spanmetrics": {
                "namespace": "traces.span.metrics",
                "events": {"enabled": True, "dimensions": [{"name": "exception.type"}]},
            }
        },
        {"spanmetrics": {"histogram": {"unit": "s", "exponential": {"max_size": 160}}}},
        {"servicegraphs": {"enabled": True, "generate_native_histograms": "both"}},
        {
            "metrics_generator": {
                "processors": ["span-metrics", "service-graphs", "host-info"],
                "generate_native_histograms": "both",
            }
        },
    ],
)
def test_names_agree_with_the_dashboards_model(config: dict[str, object]) -> None:
    """The dashboard tests' model of the exporter's names (tests/deploy/test_dashboard.py) and
    this translator name every metric the pipeline describes alike."""
    from tests.deploy.test_dashboard import OtlpMetric, prometheus_name

    kinds = {
        MetricKind.SUM: "counter",
        MetricKind.HISTOGRAM: "histogram",
        MetricKind.EXPONENTIAL_HISTOGRAM: "histogram",
        MetricKind.INFO: "gauge",
    }
    for descriptor in Pipeline(Settings(**config)).descriptors().values():  # type: ignore[arg-type]
        expected = prometheus_name(OtlpMetric(descriptor.name, kinds[descriptor.kind], descriptor.unit))
        assert metric_name(descriptor.name, descriptor.unit, descriptor.kind) == expected, descriptor
