"""Tempo-mode span metrics: Tempo's series names, labels and values, through the worker's store and encoder.

Each test names the upstream test it restates (grafana/tempo
modules/generator/processor/spanmetrics/spanmetrics_test.go unless said otherwise). Tempo's tests
build their input with ``pkg/util/test.MakeBatch(n, nil)``: ``n`` CLIENT spans named ``test``, 1 s
long, status OK with message "OK", resource ``service.name=test-service`` plus a random
``random.res.attr``; :func:`make_batch` rebuilds that here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.unit.processors.spanmetrics.helpers import (
    BASE_NS,
    CLIENT,
    SECOND,
    FakeClock,
    make_request,
    make_resource_spans,
    make_span,
)
from tests.unit.processors.tempospanmetrics.helpers import (
    Labels,
    TempoRun,
    labels,
    resources,
    scopes,
    series,
    values,
)
from worker.processors.tempospanmetrics.processor import minute_start_ns

CALLS = "traces_spanmetrics_calls_total"
LATENCY = "traces_spanmetrics_latency"
SIZE = "traces_spanmetrics_size_total"
TARGET_INFO = "traces_target_info"

#: MakeBatch's span labels with the default intrinsic dimensions.
BASE = {
    "service": "test-service",
    "span_name": "test",
    "span_kind": "SPAN_KIND_CLIENT",
    "status_code": "STATUS_CODE_OK",
}


def make_batch(
    n: int,
    *,
    span_attributes: Mapping[str, Any] | None = None,
    resource: Iterable[tuple[str, Any]] | None = None,
    **span_options: Any,
) -> ExportTraceServiceRequest:
    """pkg/util/test MakeBatch(n, nil): n CLIENT spans ``test`` of 1 s, status OK "OK"."""
    spans = []
    for _ in range(n):
        span = make_span(
            "test", kind=CLIENT, duration_ms=1000, attributes=span_attributes or {}, **span_options
        )
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_OK, message="OK"))
        spans.append(span)
    attributes = (
        list(resource)
        if resource is not None
        else [("random.res.attr", "x1y2z3"), ("service.name", "test-service")]
    )
    return make_request(make_resource_spans(attributes, spans))


def generator(**span_metrics: Any) -> dict[str, Any]:
    return {
        "processors": ["span-metrics"],
        "processor": {"span_metrics": {"histogram_buckets": [0.5, 1], **span_metrics}},
    }


def buckets(point: Any) -> list[int]:
    return list(point.bucket_counts)


def gauge_value(point: Any) -> float:
    return float(point.as_double if point.HasField("as_double") else point.as_int)


def test_calls_latency_and_size_of_ten_client_spans() -> None:
    # upstream: TestSpanMetrics (buckets [0.5, 1]; le is inclusive: 1 s spans fall in le=1).
    out = TempoRun(generator()).run(make_batch(10))
    key = labels(**BASE)
    assert values(out, CALLS) == {key: 10}
    [point] = series(out, LATENCY).values()
    assert (point.count, point.sum, buckets(point), list(point.explicit_bounds)) == (
        10,
        10.0,
        [0, 10, 0],
        [0.5, 1.0],
    )
    assert list(series(out, SIZE)) == [key]


def test_size_is_the_proto_size_of_each_span_without_the_multiplier() -> None:
    # upstream: spanmetrics.go aggregateMetricsForSpan (IncBorrowed(..., float64(span.Size()))):
    # the size counter adds each span's proto-encoded size; the span multiplier is not applied.
    request = make_batch(3, span_attributes={"ratio": 0.5})
    expected = sum(span.ByteSize() for span in request.resource_spans[0].scope_spans[0].spans)
    out = TempoRun(generator(span_multiplier_key="ratio")).run(request)
    assert values(out, SIZE) == {labels(**BASE): expected}
    assert values(out, CALLS) == {labels(**BASE): 6}


def test_output_has_an_empty_resource_and_an_unnamed_scope() -> None:
    # Every label is on the data points. The resource stays empty, so that the Collector's
    # prometheusremotewrite exporter adds no job/instance from service.name and
    # service.instance.id (Tempo adds them only with target info), and the scope has no name, so
    # that it adds no otel_scope_name label; no unit, so that it adds no _seconds suffix.
    out = TempoRun({**generator(), "processors": ["span-metrics", "service-graphs"]}).run(make_batch(1))
    assert resources(out) == [{}]
    assert scopes(out) == {""}
    latency = [
        m for rm in out.resource_metrics for sm in rm.scope_metrics for m in sm.metrics if m.name == LATENCY
    ]
    assert latency[0].unit == "" and latency[0].histogram.aggregation_temporality == 2


@pytest.mark.parametrize(
    ("dimensions", "expected"),
    [
        # upstream: TestSpanMetrics_dimensions "All dimensions present" (a missing one is absent).
        (["foo", "bar", "does-not-exist"], {"foo": "foo-value", "bar": "bar-value"}),
        # "Valid labels": names kept, absent values give no label.
        (["valid_label_123", "_underscore_first"], {}),
        # "Invalid labels are sanitized".
        (["label-name", "foo.name", "foo bar"], {}),
    ],
)
def test_dimensions(dimensions: list[str], expected: dict[str, str]) -> None:
    # upstream: TestSpanMetrics_dimensions (span_kind off, status_message on).
    config = generator(
        dimensions=dimensions, intrinsic_dimensions={"span_kind": False, "status_message": True}
    )
    out = TempoRun(config).run(make_batch(10, span_attributes={"foo": "foo-value", "bar": "bar-value"}))
    key = labels(
        service="test-service",
        span_name="test",
        status_code="STATUS_CODE_OK",
        status_message="OK",
        **expected,
    )
    assert values(out, CALLS) == {key: 10}
    assert values(out, LATENCY) == {key: 10}


def test_sanitized_dimension_names() -> None:
    # upstream: TestSpanMetrics_dimensions "Invalid labels are sanitized", with the attributes present.
    config = generator(dimensions=["label-name", "foo.name", "foo bar"])
    attributes = {"label-name": "a", "foo.name": "b", "foo bar": "c"}
    out = TempoRun(config).run(make_batch(2, span_attributes=attributes))
    assert values(out, CALLS) == {labels(**BASE, label_name="a", foo_name="b", foo_bar="c"): 2}


def test_dimension_colliding_with_an_intrinsic_gets_a_double_underscore() -> None:
    # upstream: TestSpanMetrics_collisions (the prefix applies although span_kind is disabled).
    config = generator(dimensions=["span.kind", "span_name"], intrinsic_dimensions={"span_kind": False})
    request = make_batch(10, span_attributes={"span.kind": "colliding_kind", "span_name": "colliding_name"})
    out = TempoRun(config).run(request)
    key = labels(
        service="test-service",
        span_name="test",
        status_code="STATUS_CODE_OK",
        __span_kind="colliding_kind",
        __span_name="colliding_name",
    )
    assert values(out, CALLS) == {key: 10}
    [point] = series(out, LATENCY).values()
    assert (point.count, point.sum, buckets(point)) == (10, 10.0, [0, 10, 0])


def test_resource_attribute_shadows_the_span_attribute() -> None:
    # upstream: processor/util FindAttributeValue(key, rs.Attributes, span.Attributes): the
    # resource is searched first; the first match wins, even an empty one (which removes the label).
    config = generator(dimensions=["region", "zone"])
    resource = [("service.name", "test-service"), ("region", "from-resource"), ("zone", "")]
    out = TempoRun(config).run(
        make_batch(1, resource=resource, span_attributes={"region": "span", "zone": "z1"})
    )
    assert values(out, CALLS) == {labels(**BASE, region="from-resource"): 1}


def test_two_dimensions_sanitized_to_one_name_the_last_wins() -> None:
    # upstream: spanmetrics.go ("if there is a collision ... we just take the last one configured", #6288).
    config = generator(dimensions=["deployment.environment", "deployment_environment"])
    attributes = {"deployment.environment": "first", "deployment_environment": "last"}
    out = TempoRun(config).run(make_batch(1, span_attributes=attributes))
    assert values(out, CALLS) == {labels(**BASE, deployment_environment="last"): 1}


def test_values_are_stringified_as_tempo_does() -> None:
    # upstream: pkg/util/attributes.go StringifyAnyValue (bool, int, 'f' doubles, [..] arrays
    # without separators, {k:v} maps).
    config = generator(dimensions=["b", "i", "d", "small", "arr", "map"])
    attributes = {"b": True, "i": -42, "d": 1.5, "small": 1e-7, "arr": ["x", 2, False], "map": {"k": "v"}}
    out = TempoRun(config).run(make_batch(1, span_attributes=attributes))
    expected = labels(**BASE, b="true", i="-42", d="1.5", small="0.0000001", arr="[x2false]", map="{k:v}")
    assert values(out, CALLS) == {expected: 1}


def test_dimension_mapping_joins_present_values() -> None:
    # upstream: TestSpanMetricsDimensionMapping.
    config = generator(
        intrinsic_dimensions={"span_kind": False, "status_message": True},
        dimension_mappings=[{"name": "foo.bar", "source_labels": ["foo", "bar"], "join": "/"}],
    )
    out = TempoRun(config).run(make_batch(10, span_attributes={"foo": "foo-value", "bar": "bar-value"}))
    key = labels(
        service="test-service",
        span_name="test",
        status_code="STATUS_CODE_OK",
        status_message="OK",
        foo_bar="foo-value/bar-value",
    )
    assert values(out, CALLS) == {key: 10}


def test_dimension_mapping_skips_missing_sources() -> None:
    # upstream: TestSpanMetricsDimensionMappingMissingLabels.
    config = generator(
        intrinsic_dimensions={"span_kind": False, "status_message": True},
        dimension_mappings=[
            {"name": "first_only", "source_labels": ["first", "second"], "join": "/"},
            {"name": "world_only", "source_labels": ["hello", "world"], "join": "/"},
            {"name": "first/last", "source_labels": ["first", "middle", "last"], "join": "->"},
        ],
    )
    attributes = {"first": "first-value", "world": "world-value", "last": "last-value"}
    out = TempoRun(config).run(make_batch(10, span_attributes=attributes))
    key = labels(
        service="test-service",
        span_name="test",
        status_code="STATUS_CODE_OK",
        status_message="OK",
        first_only="first-value",
        world_only="world-value",
        first_last="first-value->last-value",
    )
    assert values(out, CALLS) == {key: 10}


def test_degenerate_span_counts_with_zero_latency_and_no_service_or_name() -> None:
    # upstream: TestSpanMetricsNegativeLatency: no resource attributes, no name, end < start.
    # Empty values remove their labels; the latency is 0 (every bucket counts it).
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x01" * 8, start_time_unix_nano=1, end_time_unix_nano=0)
    out = TempoRun(generator()).run(make_request(make_resource_spans([], [span])))
    key = labels(span_kind="SPAN_KIND_UNSPECIFIED", status_code="STATUS_CODE_UNSET")
    assert values(out, CALLS) == {key: 1}
    [point] = series(out, LATENCY).values()
    assert (point.count, point.sum, buckets(point)) == (1, 0.0, [1, 0, 0])


def test_resource_without_service_name_is_counted_without_service_or_job() -> None:
    # upstream: TestJobLabelWithNamespaceAndNoServiceName (target info on; a namespace alone
    # makes no job, and the service label is absent).
    config = generator(enable_target_info=True)
    resource = [("random.res.attr", "x"), ("service.namespace", "test-namespace")]
    out = TempoRun(config).run(make_batch(10, resource=resource))
    key = labels(span_name="test", span_kind="SPAN_KIND_CLIENT", status_code="STATUS_CODE_OK")
    assert values(out, CALLS) == {key: 10}
    assert series(out, TARGET_INFO) == {}


@pytest.mark.parametrize("kind", range(6))
def test_every_span_kind_is_counted(kind: int) -> None:
    # upstream: spanmetrics.go spanKindString (all kinds, INTERNAL included).
    names = ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"]
    request = make_request(make_resource_spans({"service.name": "svc"}, [make_span("op", kind=kind)]))
    out = TempoRun(generator()).run(request)
    assert values(out, CALLS) == {
        labels(
            service="svc",
            span_name="op",
            span_kind=f"SPAN_KIND_{names[kind]}",
            status_code="STATUS_CODE_UNSET",
        ): 1
    }


def test_status_message_is_opt_in() -> None:
    # upstream: config.go (status_message defaults to false).
    out = TempoRun(generator(intrinsic_dimensions={"status_message": True})).run(make_batch(1))
    assert values(out, CALLS) == {labels(**BASE, status_message="OK"): 1}


# ---------------------------------------------------------------------------------- multiplier


def test_span_multiplier_key_weights_counts_and_histograms() -> None:
    # upstream: processor/util GetSpanMultiplier (1/ratio from a double attribute, span first) and
    # the reference's A7 (a ratio of 0.5 counts a span twice).
    out = TempoRun(generator(span_multiplier_key="ratio")).run(make_batch(1, span_attributes={"ratio": 0.5}))
    assert values(out, CALLS) == {labels(**BASE): 2}
    [point] = series(out, LATENCY).values()
    assert (point.count, point.sum, buckets(point)) == (2, 2.0, [0, 2, 0])


def test_tracestate_multiplier() -> None:
    # upstream: TestSpanMetricsTraceStateMultiplier (ot=th:8 is a 50% sample: each span counts 2).
    config = generator(enable_tracestate_span_multiplier=True)
    out = TempoRun(config).run(make_batch(1, trace_state="ot=th:8"))
    assert values(out, CALLS) == {labels(**BASE): 2}


def test_multiplier_ignores_non_double_values() -> None:
    # upstream: processor/util GetSpanMultiplier (GetDoubleValue: a string or int counts as 1).
    out = TempoRun(generator(span_multiplier_key="ratio")).run(
        make_batch(1, span_attributes={"ratio": "0.5"})
    )
    assert values(out, CALLS) == {labels(**BASE): 1}


# ---------------------------------------------------------------------------------- target info


def test_target_info_with_job_and_instance() -> None:
    # upstream: TestSpanMetricsTargetInfoEnabled (reference A10): the resource's own job and
    # instance become __job and __instance; random.res.attr is excluded.
    config = generator(enable_target_info=True, target_info_excluded_dimensions=["random.res.attr"])
    resource = [
        ("random.res.attr", "x"),
        ("service.name", "test-service"),
        ("job", "dummy-job"),
        ("service.instance.id", "instance"),
        ("instance", "dummy-instance"),
    ]
    out = TempoRun(config).run(make_batch(10, resource=resource))
    key = labels(**BASE, job="test-service", instance="instance")
    assert values(out, CALLS) == {key: 10}
    info = series(out, TARGET_INFO)
    assert list(info) == [
        labels(job="test-service", instance="instance", __job="dummy-job", __instance="dummy-instance")
    ]
    assert [gauge_value(p) for p in info.values()] == [1.0]


def test_job_has_the_namespace() -> None:
    # upstream: TestJobLabelWithNamespaceAndInstanceID.
    config = generator(enable_target_info=True)
    resource = [
        ("service.name", "test-service"),
        ("service.namespace", "test-namespace"),
        ("service.instance.id", "abc-instance-id-test-def"),
        ("cluster", "eu-west-0"),
    ]
    out = TempoRun(config).run(make_batch(1, resource=resource))
    job = "test-namespace/test-service"
    assert values(out, CALLS) == {labels(**BASE, job=job, instance="abc-instance-id-test-def"): 1}
    assert list(series(out, TARGET_INFO)) == [
        labels(job=job, instance="abc-instance-id-test-def", cluster="eu-west-0")
    ]


@pytest.mark.parametrize(
    ("resource", "excluded", "expected"),
    [
        # TestTargetInfoWithEmptyKey: an empty key is skipped.
        (
            [("service.name", "s"), ("", "skip"), ("service.instance.id", "i"), ("cluster", "eu")],
            [],
            [labels(job="s", instance="i", cluster="eu")],
        ),
        # TestTargetInfoWithEmptyValue: an empty value removes its label.
        ([("service.name", "s"), ("host.id", ""), ("cluster", "eu")], [], [labels(job="s", cluster="eu")]),
        # TestTargetInfoWithAllEmptyValues: nothing but job and instance left: no target info.
        (
            [("service.name", "s"), ("service.instance.id", "i"), ("host.id", ""), ("container.id", "")],
            [],
            [],
        ),
        # TestTargetInfoWithExclusion.
        (
            [
                ("service.name", "s"),
                ("service.instance.id", "i"),
                ("cluster", "eu"),
                ("ip", "1.1.1.1"),
                ("container", "c"),
                ("container.id", "xyz"),
            ],
            ["container", "container.id"],
            [labels(job="s", instance="i", cluster="eu", ip="1.1.1.1")],
        ),
        # TestTargetInfoSanitizeLabelName.
        (
            [
                ("service.name", "s"),
                ("service.instance.id", "i"),
                ("cluster-id", "eu"),
                ("target.ip", "1.1.1.1"),
            ],
            [],
            [labels(job="s", instance="i", cluster_id="eu", target_ip="1.1.1.1")],
        ),
        # TestTargetInfoWithJobAndInstanceOnly: no other attribute: no target info.
        ([("service.name", "s"), ("service.instance.id", "i")], [], []),
        # TestTargetInfoNoJobAndNoInstance: neither job nor instance: no target info.
        ([("cluster", "eu"), ("ip", "1.1.1.1")], [], []),
        # TestTargetInfoSkipsLabelsStartingWithNumber.
        ([("service.name", "s"), ("0digit", "x"), ("ok", "y")], [], [labels(job="s", ok="y")]),
    ],
)
def test_target_info_rules(
    resource: list[tuple[str, str]], excluded: list[str], expected: list[Labels]
) -> None:
    config = generator(enable_target_info=True, target_info_excluded_dimensions=excluded)
    out = TempoRun(config).run(make_batch(1, resource=resource))
    assert list(series(out, TARGET_INFO)) == expected


def test_instance_label_can_be_disabled() -> None:
    # upstream: TestEnableInstanceLabelFalse: neither the span series nor target info get instance.
    config = generator(enable_target_info=True, enable_instance_label=False)
    resource = [("service.name", "test-service"), ("service.instance.id", "i"), ("cluster", "eu")]
    out = TempoRun(config).run(make_batch(1, resource=resource))
    assert values(out, CALLS) == {labels(**BASE, job="test-service"): 1}
    assert list(series(out, TARGET_INFO)) == [labels(job="test-service", cluster="eu")]


def test_without_target_info_no_job_or_instance() -> None:
    # upstream: TestTargetInfoDisabled.
    resource = [("service.name", "test-service"), ("service.instance.id", "i"), ("cluster", "eu")]
    out = TempoRun(generator()).run(make_batch(1, resource=resource))
    assert values(out, CALLS) == {labels(**BASE): 1}
    assert series(out, TARGET_INFO) == {}


def test_target_info_with_only_the_size_subprocessor() -> None:
    # upstream: TestSpanMetricsTargetInfoWithDisabledSubprocessors.
    config = generator(enable_target_info=True)
    config["processors"] = ["span-metrics-size"]
    resource = [("service.name", "s"), ("cluster", "eu")]
    out = TempoRun(config).run(make_batch(1, resource=resource))
    assert list(series(out, TARGET_INFO)) == [labels(job="s", cluster="eu")]
    assert series(out, CALLS) == {} and series(out, LATENCY) == {}
    assert list(series(out, SIZE)) == [labels(**{**BASE, "service": "s"}, job="s")]


# ---------------------------------------------------------------------------------- sub-processors


@pytest.mark.parametrize(
    ("processors", "expected"),
    [
        (["span-metrics"], {CALLS, LATENCY, SIZE}),
        (["span-metrics-count"], {CALLS}),
        (["span-metrics-latency"], {LATENCY}),
        (["span-metrics-size"], {SIZE}),
        (["span-metrics-count", "span-metrics-size"], {CALLS, SIZE}),
        (["span-metrics", "span-metrics-count"], {CALLS, LATENCY, SIZE}),
    ],
)
def test_subprocessors(processors: list[str], expected: set[str]) -> None:
    # upstream: modules/generator/instance.go updateSpanMetricsSubprocessors (instance_test.go
    # TestInstanceWithSubprocessors...).
    config = generator()
    config["processors"] = processors
    out = TempoRun(config).run(make_batch(1))
    names = {m.name for rm in out.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names == expected


def test_latency_subprocessor_alone_resets_the_buckets() -> None:
    # upstream: instance.go updateSpanMetricsSubprocessors: with only sub-processors listed the
    # latency histogram gets ExponentialBuckets(0.002, 2, 14) whatever histogram_buckets says.
    config = generator()
    config["processors"] = ["span-metrics-latency"]
    out = TempoRun(config).run(make_batch(1))
    [point] = series(out, LATENCY).values()
    assert list(point.explicit_bounds) == [0.002 * 2**i for i in range(14)]


# ---------------------------------------------------------------------------------- native histograms


def test_native_histograms_are_exponential() -> None:
    # upstream: registry/native_histogram.go (generate_native_histograms: native; bucket factor
    # 1.1 is schema 3).
    config = generator()
    config["generate_native_histograms"] = "native"
    out = TempoRun(config).run(make_batch(4))
    assert series(out, LATENCY, "histogram") == {}
    [point] = series(out, LATENCY, "exponential_histogram").values()
    assert (point.count, point.sum, point.scale) == (4, 4.0, 3)
    assert sum(point.positive.bucket_counts) == 4


def test_both_histograms_under_one_name() -> None:
    # upstream: registry/native_histogram.go (both: classic buckets and the native histogram).
    config = generator()
    config["generate_native_histograms"] = "both"
    out = TempoRun(config).run(make_batch(2))
    [classic] = series(out, LATENCY, "histogram").values()
    [native] = series(out, LATENCY, "exponential_histogram").values()
    assert (classic.count, buckets(classic), native.count) == (2, [0, 2, 0], 2)


# ---------------------------------------------------------------------------------- registry


def test_external_labels_and_tenant_label() -> None:
    # upstream: registry/registry.go New (external_labels, inject_tenant_id_as) and
    # registry/util.go getSeriesLabels (external labels set over the series' labels).
    config = generator(enable_target_info=True)
    config["registry"] = {
        "external_labels": {"cluster": "c1", "service": "overridden"},
        "inject_tenant_id_as": "tenant",
    }
    resource = [("service.name", "test-service"), ("k", "v")]
    run = TempoRun(config, tenant="team-a")
    out = run.run(make_batch(1, resource=resource))
    expected = {**BASE, "service": "overridden", "job": "test-service", "cluster": "c1", "tenant": "team-a"}
    assert values(out, CALLS) == {labels(**expected): 1}
    assert list(series(out, TARGET_INFO)) == [
        labels(job="test-service", k="v", cluster="c1", service="overridden", tenant="team-a")
    ]


def test_label_length_limits_truncate() -> None:
    # upstream: registry/builder.go Add (names and values cut to max_label_name_length and
    # max_label_value_length bytes).
    config = generator(dimensions=["long.dimension.name"])
    config["registry"] = {"max_label_name_length": 8, "max_label_value_length": 5}
    out = TempoRun(config).run(make_batch(1, span_attributes={"long.dimension.name": "abcdefgh"}))
    expected = {
        "service": "test-",
        "span_nam": "test",
        "span_kin": "SPAN_",
        "status_c": "STATU",
        "long_dim": "abcde",
    }
    assert values(out, CALLS) == {labels(**expected): 1}


def test_a_cut_inside_a_character_discards_the_span() -> None:
    # upstream: registry/builder.go CloseAndBorrowLabels (a byte cut that leaves invalid UTF-8
    # makes the label set invalid; spanmetrics.go then drops the span, counted as invalid_utf8).
    config = generator(dimensions=["d"])
    config["registry"] = {"max_label_value_length": 2}
    run = TempoRun(config)
    stats = run.pipeline.consume(
        make_batch(1, span_attributes={"d": "aé"}, resource=[("service.name", "ab")]), run.tenant
    )
    out = run.flush()
    assert series(out, CALLS) == {}
    assert (stats.spans, stats.invalid_labels) == (1, 1)


def test_new_series_start_one_second_before_the_minute() -> None:
    # upstream: registry/counter.go (getEndOfLastMinuteMs): a new series' 0 sample is written at
    # the end of the previous minute; here that time is the series' start time.
    minute = BASE_NS - BASE_NS % (60 * SECOND)
    clock = FakeClock(minute + 65 * SECOND + 7)
    out = TempoRun(generator(), clock=clock).run(make_batch(1))
    [point] = series(out, CALLS).values()
    assert point.start_time_unix_nano == minute_start_ns(minute + 65 * SECOND) == minute + 59 * SECOND


def test_stale_series_stop_after_stale_duration() -> None:
    # upstream: registry/registry.go removeStaleSeries (stale_duration, default 15m).
    config = generator()
    config["registry"] = {"stale_duration": "30s", "collection_interval": "15s"}
    run = TempoRun(config)
    assert values(run.run(make_batch(1)), CALLS) == {labels(**BASE): 1}
    assert values(run.flush(), CALLS) == {labels(**BASE): 1}
    assert values(run.flush(advance_s=60), CALLS) == {}


def test_resources_with_the_same_labels_share_a_series() -> None:
    # upstream: a Tempo series is its label set; two resources that differ only in attributes
    # that are not labels add up in one series.
    first = make_resource_spans(
        [("service.name", "test-service"), ("pod", "a")], [make_span("op", kind=CLIENT)]
    )
    second = make_resource_spans(
        [("service.name", "test-service"), ("pod", "b")], [make_span("op", kind=CLIENT)]
    )
    out = TempoRun(generator()).run(make_request(first, second))
    key = labels(
        service="test-service", span_name="op", span_kind="SPAN_KIND_CLIENT", status_code="STATUS_CODE_UNSET"
    )
    assert values(out, CALLS) == {key: 2}


def test_classic_exemplars_carry_the_trace_id() -> None:
    # upstream: registry/histogram.go (the last trace id per bucket is an exemplar of that bucket).
    request = make_batch(3)
    out = TempoRun(generator()).run(request)
    [point] = series(out, LATENCY).values()
    last = request.resource_spans[0].scope_spans[0].spans[-1]
    assert [(e.trace_id, e.as_double) for e in point.exemplars] == [(last.trace_id, 1.0)]


# ---------------------------------------------------------------------------------- filter policies


def _policy(kind: str, match_type: str, key: str, value: str) -> dict[str, Any]:
    return {kind: {"match_type": match_type, "attributes": [{"key": key, "value": value}]}}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (_policy("include", "strict", "span.foo", "foo-value"), 10),
        (_policy("include", "strict", "span.nope", "nothere"), 0),
        (_policy("exclude", "strict", "status", "STATUS_CODE_OK"), 0),
        (_policy("include", "regex", "kind", "SPAN_KIND_.*"), 10),
    ],
)
def test_filter_policies(policy: dict[str, Any], expected: int) -> None:
    # upstream: TestSpanMetrics_applyFilterPolicy (filtered spans count nothing; Tempo counts them
    # in spans_discarded_total{reason="span_metrics_filtered"}).
    config = generator(
        dimensions=["foo", "bar", "does-not-exist"],
        intrinsic_dimensions={"span_kind": False, "status_message": True},
        filter_policies=[policy],
    )
    run = TempoRun(config)
    request = make_batch(10, span_attributes={"foo": "foo-value", "bar": "bar-value"})
    assert run.pipeline.tempo is not None
    stats = run.pipeline.tempo.consume(request, run.tenant)
    out = run.flush()
    key = labels(
        service="test-service",
        span_name="test",
        status_code="STATUS_CODE_OK",
        status_message="OK",
        foo="foo-value",
        bar="bar-value",
    )
    assert values(out, CALLS) == ({key: expected} if expected else {})
    assert (stats.spans, stats.filtered) == (10, 10 - expected)


def test_filtered_spans_register_no_target_info() -> None:
    # upstream: spanmetrics.go aggregateMetrics (a filtered span `continue`s before target info).
    config = generator(
        enable_target_info=True, filter_policies=[_policy("exclude", "strict", "name", "test")]
    )
    out = TempoRun(config).run(make_batch(2, resource=[("service.name", "s"), ("cluster", "eu")]))
    assert series(out, TARGET_INFO) == {} and series(out, CALLS) == {}


# ---------------------------------------------------------------------------------- host info


def test_host_info() -> None:
    # upstream: modules/generator/processor/hostinfo/processor_test.go (the first identifier with a
    # non-empty string value; default identifiers k8s.node.name, host.id).
    config = {"processors": ["host-info"]}
    first = make_resource_spans([("service.name", "a"), ("host.id", "h-1")], [make_span("op")])
    second = make_resource_spans([("k8s.node.name", "node-7"), ("host.id", "h-2")], [make_span("op")])
    empty = make_resource_spans([("k8s.node.name", ""), ("service.name", "c")], [make_span("op")])
    out = TempoRun(config).run(make_request(first, second, empty))
    info = series(out, "traces_host_info")
    assert list(info) == [
        labels(grafana_host_id="h-1", host_source="host.id"),
        labels(grafana_host_id="node-7", host_source="k8s.node.name"),
    ]
    assert [gauge_value(p) for p in info.values()] == [1.0, 1.0]
    assert series(out, CALLS) == {}


def test_host_info_metric_name() -> None:
    config = {
        "processors": ["host-info"],
        "processor": {"host_info": {"metric_name": "my_hosts", "host_identifiers": ["x"]}},
    }
    out = TempoRun(config).run(make_request(make_resource_spans([("x", "1")], [make_span("op")])))
    assert list(series(out, "my_hosts")) == [labels(grafana_host_id="1", host_source="x")]


def _all_points(out: Any, name: str, kind: str) -> list[Any]:
    return [
        point
        for resource_metrics in out.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == name and metric.WhichOneof("data") == kind
        for point in getattr(metric, kind).data_points
    ]


def test_counters_and_histograms_get_tempos_initial_zero_sample() -> None:
    # upstream: registry/counter_test.go Test_counter, histogram_test.go Test_histogram,
    # native_histogram_test.go: at the first collection of a new series a 0 at
    # getEndOfLastMinuteMs (for a histogram: _count and every _bucket, not _sum; native: an
    # empty histogram), then the value at the collection time; from the next collection the
    # value only.
    clock = FakeClock()
    run = TempoRun({**generator(), "generate_native_histograms": "both"}, clock=clock)
    run.consume(make_batch(3))
    out = run.flush(advance_s=75)
    zero_time = minute_start_ns(clock.now)
    for name, kind in (
        (CALLS, "sum"),
        (SIZE, "sum"),
        (LATENCY, "histogram"),
        (LATENCY, "exponential_histogram"),
    ):
        zero, counted = _all_points(out, name, kind)
        assert (zero.time_unix_nano, counted.time_unix_nano) == (zero_time, clock.now)
        assert zero.start_time_unix_nano == counted.start_time_unix_nano
        assert zero.attributes == counted.attributes and not zero.exemplars
        if kind == "sum":
            assert (zero.as_int, counted.as_int > 0) == (0, True)
        else:
            assert (zero.count, counted.count, zero.HasField("sum")) == (0, 3, False)
        if kind == "histogram":
            assert buckets(zero) == [0, 0, 0] and list(zero.explicit_bounds) == [0.5, 1.0]
        if kind == "exponential_histogram":
            assert zero.scale == counted.scale
    run.consume(make_batch(1))
    out = run.flush(advance_s=15)
    for name, kind in ((CALLS, "sum"), (LATENCY, "histogram"), (LATENCY, "exponential_histogram")):
        [counted] = _all_points(out, name, kind)
        assert counted.time_unix_nano == clock.now


def test_series_past_the_active_series_limit_fold_into_tempos_overflow_series() -> None:
    # upstream: registry/registry_test.go TestManagedRegistry_maxSeries and #5954: past
    # max_active_series a new label set counts into one series per metric labelled
    # metric_overflow="true" (here worker.max_active_series_per_tenant, shared by every worker),
    # while the admitted series keep counting.
    run = TempoRun({"processors": ["span-metrics-count"]}, worker={"max_active_series_per_tenant": 2})
    names = ["first", "second", "third", "fourth", "first"]
    request = make_request(
        make_resource_spans(
            [("service.name", "test-service")],
            [make_span(name, kind=CLIENT, duration_ms=1000) for name in names],
        )
    )
    run.run(request)
    out = run.flush()  # refused rows reach the overflow series' slot at the next fold
    base = {"service": "test-service", "span_kind": "SPAN_KIND_CLIENT", "status_code": "STATUS_CODE_UNSET"}
    counted = values(out, CALLS)
    overflow = labels(metric_overflow="true")
    assert counted[overflow] == 2
    admitted = {key: value for key, value in counted.items() if key != overflow}
    assert len(admitted) == 2
    assert sum(admitted.values()) == 3
    assert all(dict(key).items() >= base.items() for key in admitted)
    assert not any(key == "otel.metric.overflow" for labelset in counted for key, _ in labelset)
