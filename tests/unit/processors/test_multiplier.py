"""Tempo's span multiplier: ``span_multiplier_key`` and ``enable_tracestate_span_multiplier``.

upstream: modules/generator/processor/util/util.go GetSpanMultiplier and util_test.go;
pkg/sampling/multiplier.go MultiplierFromTraceState and multiplier_test.go.
"""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from worker.otlp.batch import BatchSpan, as_batch
from worker.processors.multiplier import SpanMultiplier
from worker.processors.sampling import multiplier_from_tracestate

RATIO = "sampling.ratio"


def make_span(trace_state: str = "", **attributes: AnyValue) -> BatchSpan:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(trace_state=trace_state)
    for key, value in attributes.items():
        span.attributes.add(key=key.replace("_", "."), value=value)
    return as_batch(request).resource_spans[0].scope_spans[0].spans[0]


def double(value: float) -> AnyValue:
    return AnyValue(double_value=value)


@pytest.mark.parametrize(
    ("tracestate", "expected"),
    [
        ("", 0.0),  # empty tracestate
        ("ot=th:0", 1.0),  # th:0 means always sampled
        ("ot=th:8", 2.0),  # th:8 means 50% sampling, multiplier 2
        ("ot=th:c", 4.0),  # th:c means 25% sampling, multiplier 4
        ("ot=th:fd70a4", 100.0),  # th:fd70a4 means ~1% sampling, multiplier ~100
        ("vendor1=value1,ot=th:8,vendor2=value2", 2.0),  # multiple vendors in tracestate
        ("ot=rv:00112233445566;th:8", 2.0),  # ot value with multiple subkeys
        ("ot=th:xyz", 0.0),  # invalid hex in threshold
        ("vendor1=value1,vendor2=value2", 0.0),  # no ot key
        ("ot=rv:00112233445566", 0.0),  # ot without th subkey
        ("ot=th:123456789abcdef", 0.0),  # threshold too long
        ("ot=th:", 0.0),  # empty threshold value
        ("not=foo:bar", 0.0),  # vendor key ending with ot
        ("not=th:c", 0.0),  # vendor key ending with ot with th
        ("not=th:8,ot=th:c", 4.0),  # not and ot vendor keys each with th
        ("not=th:8, ot=th:c", 4.0),  # ... and whitespace
        # Not upstream's cases: OTel's validation (oteltracestate.go) spoils the whole value.
        ("ot=th:8;rv:0011", 0.0),  # an R-value must have 14 hex digits
        ("ot=th:8;", 0.0),  # a trailing separator
        ("ot=th:8;x:a b", 0.0),  # a character an OTel value may not hold
        ("ot=th:8 ,x=y", 0.0),  # the member is not trimmed at its end
        ("ot=th:8;th:c", 4.0),  # the last th wins
    ],
)
def test_multiplier_from_tracestate(tracestate: str, expected: float) -> None:
    # upstream: pkg/sampling/multiplier_test.go TestMultiplierFromTraceState (comments: case names)
    assert multiplier_from_tracestate(tracestate) == pytest.approx(expected, abs=0.001)


def test_an_integer_multiplier_with_an_r_value_is_unchanged() -> None:
    # upstream: multiplier_test.go "integer multiplier with rv is unchanged"
    assert multiplier_from_tracestate("ot=th:8;rv:12345678901234") == 2.0
    assert multiplier_from_tracestate("ot=th:c;rv:12345678901234") == 4.0


def test_a_fractional_multiplier_is_rounded_by_the_r_value_without_bias() -> None:
    # upstream: multiplier_test.go "fractional multiplier is stochastically rounded and unbiased"
    assert multiplier_from_tracestate("ot=th:4") == pytest.approx(4 / 3, abs=1e-9)
    results = [
        multiplier_from_tracestate(f"ot=th:4;rv:{(i << 44) & ((1 << 56) - 1):014x}") for i in range(4096)
    ]
    assert set(results) == {1.0, 2.0}
    assert sum(results) / len(results) == pytest.approx(4 / 3, abs=0.02)
    # The R-value's top 53 bits against the fraction 1/3: below rounds up, above rounds down.
    assert multiplier_from_tracestate("ot=th:4;rv:00000000000000") == 2.0
    assert multiplier_from_tracestate("ot=th:4;rv:ffffffffffffff") == 1.0


def test_the_same_r_value_gives_the_same_rounding() -> None:
    # upstream: multiplier_test.go "deterministic for a given rv"
    assert {multiplier_from_tracestate("ot=th:4;rv:0123456789abcd") for _ in range(10)} == {2.0}


@pytest.mark.parametrize(
    ("name", "tracestate_enabled", "trace_state", "ratio", "key", "expected"),
    [
        ("tracestate disabled, uses attribute", False, "ot=th:8", 0.5, RATIO, 2.0),
        ("tracestate enabled, tracestate wins over attribute", True, "ot=th:c", 0.5, RATIO, 4.0),
        ("tracestate enabled but empty, falls back to attribute", True, "", 0.5, RATIO, 2.0),
        ("tracestate enabled but invalid, falls back to attribute", True, "ot=th:xyz", 0.25, RATIO, 4.0),
        ("tracestate enabled, no attribute, no tracestate", True, "", 0.0, "", 1.0),
        ("tracestate disabled, ignores tracestate", False, "ot=th:8", 0.0, "", 1.0),
    ],
)
def test_get_span_multiplier_with_tracestate(
    name: str, tracestate_enabled: bool, trace_state: str, ratio: float, key: str, expected: float
) -> None:
    # upstream: util_test.go TestGetSpanMultiplier_WithTraceState (cases by name)
    attributes = {"sampling_ratio": double(ratio)} if ratio > 0 else {}
    multiplier = SpanMultiplier(key, tracestate_enabled)
    assert multiplier({}, make_span(trace_state, **attributes)) == pytest.approx(expected, abs=0.001), name


@pytest.mark.parametrize(
    ("span_value", "resource_value", "expected"),
    [
        (double(0.25), double(0.5), 4.0),  # the span's attribute first
        (None, double(0.5), 2.0),  # then the resource's
        (AnyValue(int_value=2), double(0.5), 2.0),  # not a double: read as 0, the resource decides
        (AnyValue(string_value="0.5"), None, 1.0),
        (AnyValue(int_value=1), None, 1.0),
        (double(0.0), None, 1.0),
        (double(-0.5), double(-1.0), 1.0),
        (double(float("nan")), None, 1.0),
        (double(2.0), None, 0.5),  # a ratio above 1 is taken as it is
        (double(float("inf")), None, 0.0),  # as Go divides: 1 / +Inf
    ],
)
def test_the_ratio_key(span_value: AnyValue | None, resource_value: AnyValue | None, expected: float) -> None:
    # upstream: util.go GetSpanMultiplier (span attributes, then resource attributes; GetDoubleValue)
    span = make_span(**({"sampling_ratio": span_value} if span_value is not None else {}))
    resource = {RATIO: resource_value} if resource_value is not None else {}
    assert SpanMultiplier(RATIO, tracestate=False)(resource, span) == expected


def test_active_only_with_a_key_or_the_tracestate() -> None:
    assert SpanMultiplier("", tracestate=False).active is False
    assert SpanMultiplier(RATIO, tracestate=False).active is True
    assert SpanMultiplier("", tracestate=True).active is True
    assert SpanMultiplier("", tracestate=False)({}, make_span("ot=th:8")) == 1.0
