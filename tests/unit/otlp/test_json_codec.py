"""OTLP/JSON codec: hex IDs, camelCase out / both cases in, integer enums, int64 strings, errors."""

from __future__ import annotations

import contextlib
import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    Exemplar,
    Gauge,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from worker.model.errors import OtlpDecodeError
from worker.otlp.json_codec import (
    metrics_from_json,
    metrics_to_dict,
    metrics_to_json,
    traces_from_dict,
    traces_from_json,
    traces_to_json,
)

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")
LINK_TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
LINK_SPAN_ID = bytes.fromhex("b7ad6b7169203331")


def _attr(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def _trace_request() -> ExportTraceServiceRequest:
    server = Span(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        parent_span_id=PARENT_ID,
        name="GET /users/{id}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_250_000_000,
        attributes=[
            _attr("http.response.status_code", int_value=500),
            _attr("ratio", double_value=0.25),
            _attr("cached", bool_value=False),
            _attr("blob", bytes_value=b"\x00\xff"),
            _attr("tags", array_value=ArrayValue(values=[AnyValue(string_value="a")])),
        ],
        events=[Span.Event(time_unix_nano=1_700_000_000_100_000_000, name="exception")],
        links=[Span.Link(trace_id=LINK_TRACE_ID, span_id=LINK_SPAN_ID, trace_state="k=v")],
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
        flags=0x301,
    )
    root = Span(trace_id=TRACE_ID, span_id=PARENT_ID, name="root", kind=Span.SPAN_KIND_CLIENT)
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[_attr("service.name", string_value="users")]),
                scope_spans=[ScopeSpans(spans=[server, root])],
                schema_url="https://opentelemetry.io/schemas/1.26.0",
            )
        ]
    )


def _metrics_request() -> ExportMetricsServiceRequest:
    exemplar = Exemplar(
        time_unix_nano=1_700_000_000_000_000_001,
        as_double=0.2,
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        filtered_attributes=[_attr("http.route", string_value="/x")],
    )
    calls = Metric(name="traces.span.metrics.calls", unit="1")
    calls.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    calls.sum.is_monotonic = True
    calls.sum.data_points.append(
        NumberDataPoint(
            attributes=[_attr("service.name", string_value="users")],
            start_time_unix_nano=1_699_999_999_000_000_000,
            time_unix_nano=1_700_000_000_000_000_000,
            as_int=2,
            exemplars=[exemplar],
        )
    )
    duration = Metric(name="traces.span.metrics.duration", unit="s")
    duration.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    duration.histogram.data_points.append(
        HistogramDataPoint(
            start_time_unix_nano=1,
            time_unix_nano=2,
            count=3,
            sum=0.6,
            bucket_counts=[1, 2, 0],
            explicit_bounds=[0.1, 1.0],
            exemplars=[exemplar],
        )
    )
    expo = Metric(name="expo")
    expo.exponential_histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    point = expo.exponential_histogram.data_points.add(count=2, scale=3, zero_count=1)
    point.positive.offset = -2
    point.positive.bucket_counts.extend([1])
    point.exemplars.append(exemplar)
    gauge = Metric(name="gauge")
    gauge.gauge.data_points.append(NumberDataPoint(time_unix_nano=5, as_double=-1.5))
    summary = Metric(name="summary")
    summary.summary.data_points.append(
        SummaryDataPoint(
            count=1,
            sum=2.0,
            quantile_values=[SummaryDataPoint.ValueAtQuantile(quantile=0.5, value=2.0)],
        )
    )
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=[_attr("service.name", string_value="spanmetrics")]),
                scope_metrics=[ScopeMetrics(metrics=[calls, duration, expo, gauge, summary])],
            )
        ]
    )


def _one_span(**fields: Any) -> dict[str, Any]:
    """A trace document whose only span has ``fields``."""
    return {"resourceSpans": [{"scopeSpans": [{"spans": [fields]}]}]}


# --------------------------------------------------------------------------------------------
# Round trips and output format
# --------------------------------------------------------------------------------------------


def test_traces_round_trip() -> None:
    request = _trace_request()
    assert traces_from_json(traces_to_json(request)) == request
    assert traces_from_json(traces_to_json(request).encode()) == request


def test_traces_to_json_is_compact_one_line_otlp_json() -> None:
    text = traces_to_json(_trace_request())
    assert "\n" not in text
    assert ", " not in text.replace("GET /users/{id}", "")
    span = json.loads(text)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "5b8efff798038103d269b633813fc60c"
    assert span["spanId"] == "eee19b7ec3c1b174"
    assert span["parentSpanId"] == "eee19b7ec3c1b173"
    assert span["links"][0] == {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": "b7ad6b7169203331",
        "traceState": "k=v",
    }
    assert span["kind"] == 2
    assert span["status"] == {"code": 2, "message": "boom"}
    assert span["startTimeUnixNano"] == "1700000000000000000"
    assert span["attributes"][0] == {"key": "http.response.status_code", "value": {"intValue": "500"}}
    # Only the IDs are hex; other bytes fields stay base64 as in the protobuf JSON mapping.
    assert span["attributes"][3] == {"key": "blob", "value": {"bytesValue": "AP8="}}
    # A root span has no parentSpanId at all (default values are left out).
    assert "parentSpanId" not in json.loads(text)["resourceSpans"][0]["scopeSpans"][0]["spans"][1]


def test_metrics_round_trip() -> None:
    request = _metrics_request()
    assert metrics_from_json(metrics_to_json(request)) == request
    assert metrics_from_json(metrics_to_json(request, indent=2).encode()) == request


def test_metrics_to_dict_uses_hex_ids_camel_case_integer_enums_and_int64_strings() -> None:
    document = metrics_to_dict(_metrics_request())
    metrics = document["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
    calls = metrics[0]["sum"]
    assert calls["aggregationTemporality"] == 2
    assert calls["isMonotonic"] is True
    point = calls["dataPoints"][0]
    assert point["asInt"] == "2"
    assert point["startTimeUnixNano"] == "1699999999000000000"
    assert point["timeUnixNano"] == "1700000000000000000"
    exemplar = point["exemplars"][0]
    assert exemplar["traceId"] == TRACE_ID.hex()
    assert exemplar["spanId"] == SPAN_ID.hex()
    assert exemplar["filteredAttributes"] == [{"key": "http.route", "value": {"stringValue": "/x"}}]
    histogram = metrics[1]["histogram"]
    assert histogram["aggregationTemporality"] == 2
    assert histogram["dataPoints"][0]["bucketCounts"] == ["1", "2", "0"]
    assert histogram["dataPoints"][0]["exemplars"][0]["spanId"] == SPAN_ID.hex()
    expo_point = metrics[2]["exponentialHistogram"]["dataPoints"][0]
    assert expo_point["exemplars"][0]["traceId"] == TRACE_ID.hex()
    assert expo_point["positive"] == {"offset": -2, "bucketCounts": ["1"]}


def test_metrics_to_json_compact_by_default_and_indented_on_request() -> None:
    request = _metrics_request()
    compact = metrics_to_json(request)
    assert "\n" not in compact
    assert '"asInt":"2"' in compact
    assert '"startTimeUnixNano":"1699999999000000000"' in compact
    assert '"aggregationTemporality":2' in compact
    indented = metrics_to_json(request, indent=2)
    assert '\n  "resourceMetrics": [' in indented
    assert json.loads(indented) == json.loads(compact) == metrics_to_dict(request)


def test_empty_requests() -> None:
    assert traces_to_json(ExportTraceServiceRequest()) == "{}"
    assert traces_from_json("{}") == ExportTraceServiceRequest()
    assert metrics_to_dict(ExportMetricsServiceRequest()) == {}
    assert metrics_from_json(b"{}") == ExportMetricsServiceRequest()


# --------------------------------------------------------------------------------------------
# Input variants
# --------------------------------------------------------------------------------------------

# Shaped like the Grafana documentation's example: snake_case IDs, intValue as a string.
GRAFANA_EXAMPLE = """
{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [
          {"key": "service.name", "value": {"stringValue": "test-service"}},
          {"key": "k8s.pod.name", "value": {"stringValue": "test-pod-7d4f9"}}
        ]
      },
      "scopeSpans": [
        {
          "scope": {"name": "test-scope"},
          "spans": [
            {
              "trace_id": "5B8EFFF798038103D269B633813FC60C",
              "span_id": "EEE19B7EC3C1B174",
              "name": "TestSpan",
              "kind": 2,
              "startTimeUnixNano": "1544712660000000000",
              "endTimeUnixNano": "1544712661000000000",
              "attributes": [
                {"key": "http.response.status_code", "value": {"intValue": "200"}}
              ]
            }
          ]
        }
      ]
    }
  ]
}
"""


def test_parses_the_grafana_documentation_example() -> None:
    request = traces_from_json(GRAFANA_EXAMPLE)
    resource_spans = request.resource_spans[0]
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource == {"service.name": "test-service", "k8s.pod.name": "test-pod-7d4f9"}
    (span,) = resource_spans.scope_spans[0].spans
    assert span.name == "TestSpan"
    assert span.trace_id == bytes.fromhex("5b8efff798038103d269b633813fc60c")
    assert span.span_id == bytes.fromhex("eee19b7ec3c1b174")
    assert span.parent_span_id == b""
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.attributes[0].value.int_value == 200


def test_accepts_all_snake_case_keys() -> None:
    document = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": TRACE_ID.hex(),
                                "span_id": SPAN_ID.hex(),
                                "parent_span_id": PARENT_ID.hex(),
                                "start_time_unix_nano": 7,
                                "links": [{"trace_id": LINK_TRACE_ID.hex(), "span_id": LINK_SPAN_ID.hex()}],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    span = traces_from_dict(document).resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE_ID, SPAN_ID, PARENT_ID)
    assert (span.links[0].trace_id, span.links[0].span_id) == (LINK_TRACE_ID, LINK_SPAN_ID)
    assert span.start_time_unix_nano == 7


def test_accepts_enum_names_numbers_for_int64_and_empty_ids() -> None:
    document = _one_span(
        traceId="",
        spanId=SPAN_ID.hex().upper(),
        parentSpanId="",
        kind="SPAN_KIND_CONSUMER",
        status={"code": "STATUS_CODE_OK"},
        startTimeUnixNano=1_700_000_000_000_000_000,
        endTimeUnixNano="1700000000000000001",
    )
    span = traces_from_dict(document).resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == b""
    assert span.span_id == SPAN_ID
    assert span.parent_span_id == b""
    assert span.kind == Span.SPAN_KIND_CONSUMER
    assert span.status.code == Status.STATUS_CODE_OK
    assert span.start_time_unix_nano == 1_700_000_000_000_000_000
    assert span.end_time_unix_nano == 1_700_000_000_000_000_001


def test_accepts_metric_enum_names_and_exemplar_ids() -> None:
    document = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "calls",
                                "sum": {
                                    "aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA",
                                    "dataPoints": [
                                        {
                                            "asInt": 3,
                                            "exemplars": [
                                                {"trace_id": TRACE_ID.hex(), "spanId": SPAN_ID.hex()}
                                            ],
                                        }
                                    ],
                                },
                            }
                        ]
                    }
                ]
            }
        ]
    }
    metric = metrics_from_json(json.dumps(document)).resource_metrics[0].scope_metrics[0].metrics[0]
    assert metric.sum.aggregation_temporality == 1
    assert metric.sum.data_points[0].as_int == 3
    exemplar = metric.sum.data_points[0].exemplars[0]
    assert (exemplar.trace_id, exemplar.span_id) == (TRACE_ID, SPAN_ID)


def test_unknown_fields_are_ignored() -> None:
    document = {
        "resourceSpans": [
            {
                "futureField": {"anything": [1, 2]},
                "scopeSpans": [{"spans": [{"name": "s", "spanId": SPAN_ID.hex(), "newThing": "x"}]}],
            }
        ],
        "partialSuccess": 5,
        "instrumentationLibrarySpans": [],
    }
    request = traces_from_dict(document)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert (span.name, span.span_id) == ("s", SPAN_ID)


def test_null_means_default() -> None:
    span = traces_from_dict(_one_span(name="s", spanId=None, kind=None, links=None, status=None))
    assert span.resource_spans[0].scope_spans[0].spans[0] == Span(name="s")


def test_traces_from_dict_does_not_modify_its_argument() -> None:
    document = json.loads(traces_to_json(_trace_request()))
    before = copy.deepcopy(document)
    assert traces_from_dict(document) == _trace_request()
    assert document == before


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

SPAN1 = "resourceSpans[0].scopeSpans[0].spans[1]"


def _second_span(**fields: Any) -> dict[str, Any]:
    return {"resourceSpans": [{"scopeSpans": [{"spans": [{}, fields]}]}]}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"not json", "not valid JSON", id="not-json"),
        pytest.param(b"\xff\xfe\xfa", "not valid JSON", id="not-utf8"),
        pytest.param("", "not valid JSON", id="empty"),
        pytest.param("[]", "must be a JSON object, not an array", id="array"),
        pytest.param('"x"', "must be a JSON object, not a string", id="string"),
        pytest.param("null", "must be a JSON object, not null", id="null"),
        pytest.param("[" * 100_000, "not valid JSON", id="deep-json"),
    ],
)
def test_rejects_documents_that_are_not_json_objects(data: bytes | str, expected: str) -> None:
    with pytest.raises(OtlpDecodeError, match=expected):
        traces_from_json(data)
    with pytest.raises(OtlpDecodeError, match=expected):
        metrics_from_json(data)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            _second_span(spanId="eee19b7ec3c1b1"),
            f"{SPAN1}.spanId: not a 16-digit hex string",
            id="span-id-short",
        ),
        pytest.param(
            _second_span(spanId="7rsbfsPBsXQ="),
            f"{SPAN1}.spanId: not a 16-digit hex string",
            id="span-id-base64",
        ),
        pytest.param(
            _second_span(span_id="eee19b7ec3c1b1zz"),
            f"{SPAN1}.span_id: not a 16-digit hex string",
            id="span-id-not-hex",
        ),
        pytest.param(
            _second_span(parentSpanId="eee19b7e c3c1b17"),
            f"{SPAN1}.parentSpanId: not a 16-digit hex string",
            id="parent-id-with-space",
        ),
        pytest.param(
            _second_span(traceId=SPAN_ID.hex()),
            f"{SPAN1}.traceId: not a 32-digit hex string",
            id="trace-id-wrong-length",
        ),
        pytest.param(
            _second_span(traceId=12345),
            f"{SPAN1}.traceId: not a 32-digit hex string",
            id="trace-id-number",
        ),
        pytest.param(
            _second_span(links=[{"traceId": TRACE_ID.hex(), "spanId": "xyz"}]),
            f"{SPAN1}.links[0].spanId: not a 16-digit hex string",
            id="link-span-id",
        ),
        pytest.param(
            _second_span(kind="SERVER"),
            f"{SPAN1}.kind: not a name or number of enum SpanKind",
            id="unknown-enum-name",
        ),
        pytest.param(
            _second_span(kind=1.5),
            f"{SPAN1}.kind: not a name or number of enum SpanKind",
            id="enum-float",
        ),
        pytest.param(
            _second_span(status={"code": True}),
            f"{SPAN1}.status.code: not a name or number of enum StatusCode",
            id="enum-bool",
        ),
        pytest.param(
            _second_span(startTimeUnixNano=1.5),
            f"{SPAN1}.startTimeUnixNano: Couldn't parse integer",
            id="int64-fraction",
        ),
        pytest.param(
            _second_span(startTimeUnixNano="soon"),
            "spans.startTimeUnixNano: invalid literal",
            id="int64-not-a-number",
        ),
        pytest.param(
            _second_span(endTimeUnixNano=-1),
            "spans.endTimeUnixNano: Value out of range",
            id="uint64-negative",
        ),
        pytest.param(_second_span(name=5), "spans.name: expected string", id="string-field-number"),
        pytest.param({"resourceSpans": {}}, "resourceSpans: expected a JSON array", id="object-for-array"),
        pytest.param(
            {"resourceSpans": [{"scopeSpans": [{"spans": [{}, "span"]}]}]},
            f"{SPAN1}: expected a JSON object, got a string",
            id="string-for-message",
        ),
        pytest.param(
            {"resourceSpans": [{"resource": ["service.name"]}]},
            "resourceSpans[0].resource: expected a JSON object, got an array",
            id="array-for-message",
        ),
        pytest.param(
            {"resourceSpans": [None]},
            "resourceSpans[0]: expected a JSON object, got null",
            id="null-in-array",
        ),
        pytest.param(
            {
                "resourceSpans": [
                    {"resource": {"attributes": [{"key": "k", "value": {"doubleValue": 10**400}}]}}
                ]
            },
            "invalid OTLP/JSON",
            id="double-overflow",
        ),
    ],
)
def test_invalid_traces_raise_otlp_decode_error_with_the_path(
    document: dict[str, Any], expected: str
) -> None:
    with pytest.raises(OtlpDecodeError) as info:
        traces_from_dict(document)
    assert expected in str(info.value)
    # Same through the JSON entry point (10**400 is exactly representable as a JSON number).
    with pytest.raises(OtlpDecodeError):
        traces_from_json(json.dumps(document))


def test_invalid_metrics_raise_otlp_decode_error_with_the_path() -> None:
    base = re.escape("resourceMetrics[0].scopeMetrics[0].metrics[0]")
    bad_temporality = {
        "resourceMetrics": [{"scopeMetrics": [{"metrics": [{"sum": {"aggregationTemporality": "DELTA"}}]}]}]
    }
    expected = rf"^{base}\.sum\.aggregationTemporality: not a name or number of enum AggregationTemporality"
    with pytest.raises(OtlpDecodeError, match=expected):
        metrics_from_json(json.dumps(bad_temporality))
    bad_exemplar = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {"metrics": [{"histogram": {"dataPoints": [{"exemplars": [{"traceId": "00"}]}]}}]}
                ]
            }
        ]
    }
    with pytest.raises(
        OtlpDecodeError,
        match=rf"^{base}\.histogram\.dataPoints\[0\]\.exemplars\[0\]\.traceId: not a 32-digit hex string",
    ):
        metrics_from_json(json.dumps(bad_exemplar))


def test_error_messages_stay_short() -> None:
    with pytest.raises(OtlpDecodeError) as info:
        traces_from_dict(_one_span(spanId="ab" * 10_000))
    assert len(str(info.value)) < 300


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_trace_ids = st.one_of(st.just(b""), st.binary(min_size=16, max_size=16))
_span_ids = st.one_of(st.just(b""), st.binary(min_size=8, max_size=8))


@settings(max_examples=50, deadline=None)
@given(trace_id=_trace_ids, span_id=_span_ids, parent_id=_span_ids, exemplar_span=_span_ids)
def test_ids_round_trip(trace_id: bytes, span_id: bytes, parent_id: bytes, exemplar_span: bytes) -> None:
    traces = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=trace_id,
                                span_id=span_id,
                                parent_span_id=parent_id,
                                links=[Span.Link(trace_id=trace_id, span_id=parent_id)],
                            )
                        ]
                    )
                ]
            )
        ]
    )
    text = traces_to_json(traces)
    assert traces_from_json(text) == traces
    document = json.loads(text)  # hex IDs are case-insensitive on input
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for key in ("traceId", "spanId", "parentSpanId"):
        if key in span:
            span[key] = span[key].upper()
    assert traces_from_dict(document) == traces

    metrics = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                scope_metrics=[
                    ScopeMetrics(
                        metrics=[
                            Metric(
                                name="m",
                                gauge=Gauge(
                                    data_points=[
                                        NumberDataPoint(
                                            as_int=1,
                                            exemplars=[Exemplar(trace_id=trace_id, span_id=exemplar_span)],
                                        )
                                    ]
                                ),
                            )
                        ]
                    )
                ]
            )
        ]
    )
    assert metrics_from_json(metrics_to_json(metrics)) == metrics


_FIELD_NAMES = [
    "resourceSpans",
    "resource_spans",
    "scopeSpans",
    "spans",
    "resource",
    "attributes",
    "key",
    "value",
    "intValue",
    "doubleValue",
    "arrayValue",
    "kvlistValue",
    "values",
    "traceId",
    "spanId",
    "parentSpanId",
    "kind",
    "status",
    "code",
    "links",
    "name",
    "startTimeUnixNano",
    "unknown",
]
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", TRACE_ID.hex(), SPAN_ID.hex(), "SPAN_KIND_SERVER", "1"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(_FIELD_NAMES), children)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(document=st.dictionaries(st.sampled_from(_FIELD_NAMES), _json_values, max_size=4))
def test_garbage_only_ever_raises_otlp_decode_error(document: dict[str, Any]) -> None:
    # Any exception other than OtlpDecodeError fails the test.
    with contextlib.suppress(OtlpDecodeError):
        traces_from_dict(document)
    with contextlib.suppress(OtlpDecodeError):
        traces_from_json(json.dumps(document))
