"""Dimension values as labels: bounded in depth and length, so every output record decodes, and a
bad span changes only its own series."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from worker.config import Settings
from worker.model.values import (
    MAX_LABEL_DEPTH,
    MAX_LABEL_LENGTH,
    any_value_to_python,
    label_value,
    stringify_any_value,
)
from worker.offline import process_documents
from worker.otlp.decode import decode_spans

SETTINGS = Settings(
    spanmetrics={
        "dimensions": ["deep"],
        "events": {"enabled": True, "dimensions": ["event.deep"]},
        "exemplars": {"enabled": True},
        "aggregation_temporality": "DELTA",  # counters are not zero at their first flush
    }
)


def nested(depth: int, kind: str = "array") -> AnyValue:
    value = AnyValue(string_value="leaf")
    for _ in range(depth):
        outer = AnyValue()
        if kind == "array":
            outer.array_value.values.append(value)
        else:
            outer.kvlist_value.values.add(key="k", value=value)
        value = outer
    return value


def request(*values: AnyValue | None, event_value: AnyValue | None = None) -> ExportTraceServiceRequest:
    """One span per value (``None``: without the dimension), all of one service."""
    out = ExportTraceServiceRequest()
    rs = out.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    scope = rs.scope_spans.add()
    for index, value in enumerate(values):
        span = scope.spans.add(
            name="op",
            trace_id=b"\x01" * 16,
            span_id=(index + 1).to_bytes(8, "big"),
            start_time_unix_nano=1_000,
            end_time_unix_nano=2_000,
        )
        if value is not None:
            span.attributes.add(key="deep", value=value)
        if event_value is not None:
            span.events.add(name="exception").attributes.add(key="event.deep", value=event_value)
    return out


def calls_by_label(data: bytes, metric: str = "calls", label: str = "deep") -> dict[object, int]:
    """Decoded with the standard decoder: ``repr`` of the value of ``label`` -> count."""
    decoded = ExportMetricsServiceRequest.FromString(data)
    found: dict[object, int] = {}
    for rm in decoded.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name != metric:
                    continue
                for point in m.sum.data_points:
                    labels = {kv.key: any_value_to_python(kv.value) for kv in point.attributes}
                    key = repr(labels.get(label))
                    found[key] = found.get(key, 0) + point.as_int
    return found


@pytest.mark.parametrize("kind", ["array", "kvlist"])
def test_the_deepest_value_input_accepts_still_gives_decodable_output(kind: str) -> None:
    """Before the bound, an array 47 deep made the whole flush undecodable (upb's limit is 100)."""
    deepest = 47 if kind == "array" else 31  # the deepest a traces request itself may carry
    deep = nested(deepest, kind)
    document = request(deep, AnyValue(string_value="GET"), None)
    decode_spans(document.SerializeToString())  # the input is valid
    result = process_documents(SETTINGS, [document], clock=lambda: 10**18)
    calls = calls_by_label(result.data)  # decodes (process_documents decoded it too)
    # The deep value's label is its key string; the other spans keep theirs; every span counted.
    assert calls == {repr(stringify_any_value(deep)): 1, repr("GET"): 1, repr(None): 1}


def test_a_deep_event_dimension_is_bounded_too() -> None:
    document = request(AnyValue(string_value="GET"), event_value=nested(47))
    result = process_documents(SETTINGS, [document], clock=lambda: 10**18)
    events = calls_by_label(result.data, "events", "event.deep")
    assert events == {repr(stringify_any_value(nested(47))): 1}


def test_the_depth_bound_is_exact() -> None:
    within, beyond = nested(MAX_LABEL_DEPTH), nested(MAX_LABEL_DEPTH + 1)
    assert label_value(within) == any_value_to_python(within)
    assert label_value(beyond) == stringify_any_value(beyond)
    assert label_value(nested(3, "kvlist")) == {"k": {"k": {"k": "leaf"}}}


def test_the_length_bound_cuts_and_merges_the_series() -> None:
    long_a = "a" * MAX_LABEL_LENGTH + "-first"
    long_b = "a" * MAX_LABEL_LENGTH + "-second"
    assert label_value(AnyValue(string_value=long_a)) == "a" * MAX_LABEL_LENGTH
    assert label_value(AnyValue(bytes_value=b"b" * (MAX_LABEL_LENGTH + 5))) == b"b" * MAX_LABEL_LENGTH
    wide = AnyValue()
    wide.array_value.values.extend(AnyValue(int_value=i) for i in range(2_000))
    assert label_value(wide) == stringify_any_value(wide)[:MAX_LABEL_LENGTH]
    values = (AnyValue(string_value=long_a), AnyValue(string_value=long_b), AnyValue(string_value="x"))
    document = request(*values)
    result = process_documents(SETTINGS, [document], clock=lambda: 10**18)
    # Cut to the same label, the two are one series (counted twice), never two equal ones.
    assert calls_by_label(result.data) == {repr("a" * MAX_LABEL_LENGTH): 2, repr("x"): 1}


def test_values_within_the_bounds_are_unchanged() -> None:
    for value in (
        AnyValue(string_value="GET"),
        AnyValue(int_value=7),
        AnyValue(double_value=1.5),
        AnyValue(bool_value=True),
        AnyValue(bytes_value=b"\x00\x01"),
        nested(2),
        nested(2, "kvlist"),
        AnyValue(),
    ):
        assert label_value(value) == any_value_to_python(value)
