"""Span ids: a record whose spans lack a valid trace id or span id is refused with a reason that names one."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devtools.loadgen.model import TraceGenerator, build_model
from worker.model.errors import OtlpDecodeError
from worker.model.wire import message
from worker.otlp import ids
from worker.otlp.decode import decode_spans, decode_spans_proto
from worker.otlp.json_codec import traces_to_json

TRACE = b"\x01" * 16
SPAN = b"\x02" * 8


def metrics_request() -> ExportMetricsServiceRequest:
    """What a Collector's Kafka exporter writes for metrics (the traces topic by mistake)."""
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    metric = resource.scope_metrics.add().metrics.add(name="http.server.request.duration", unit="s")
    metric.sum.data_points.add(as_int=3, time_unix_nano=5)
    return request


def logs_request() -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource = request.resource_logs.add()
    resource.resource.attributes.add(key="service.name", value=AnyValue(string_value="checkout"))
    record = resource.scope_logs.add().log_records.add(severity_text="INFO", severity_number=9)
    record.body.string_value = "payment accepted"
    return request


def traces(*spans: Span, resources: int = 1) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(resources):
        rs = request.resource_spans.add()
        rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
        rs.scope_spans.add().spans.extend(spans)
    return request


def test_a_metrics_request_parses_as_traces_but_is_refused() -> None:
    data = metrics_request().SerializeToString()
    # The premise: protobuf reads it as a traces request with one phantom span.
    phantom = ExportTraceServiceRequest.FromString(data)
    assert phantom.resource_spans[0].scope_spans[0].spans[0].trace_id == b"http.server.request.duration"
    with pytest.raises(OtlpDecodeError) as refused:
        decode_spans(data)
    assert str(refused.value) == (
        "span 0 of resource 0: trace_id of 28 bytes (want 16) (1 of 1 spans have invalid ids); "
        "is this an OTLP traces request?"
    )


def test_a_logs_request_parses_as_traces_but_is_refused() -> None:
    data = logs_request().SerializeToString()
    assert len(ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans) == 1
    with pytest.raises(OtlpDecodeError, match=r"^span 0 of resource 0: trace_id of 0 bytes \(want 16\)"):
        decode_spans(data)


@pytest.mark.parametrize(
    ("trace_id", "span_id", "reason"),
    [
        (b"", SPAN, "trace_id of 0 bytes (want 16)"),
        (b"\x01" * 8, SPAN, "trace_id of 8 bytes (want 16)"),
        (bytes(16), SPAN, "trace_id is all zeros"),
        (TRACE, b"", "span_id of 0 bytes (want 8)"),
        (TRACE, b"\x02" * 16, "span_id of 16 bytes (want 8)"),
        (TRACE, bytes(8), "span_id is all zeros"),
    ],
)
def test_each_invalid_id_is_named(trace_id: bytes, span_id: bytes, reason: str) -> None:
    good = Span(name="ok", trace_id=TRACE, span_id=SPAN)
    bad = Span(name="bad", trace_id=trace_id, span_id=span_id)
    data = traces(good, good, good, bad, resources=2).SerializeToString()
    with pytest.raises(OtlpDecodeError) as refused:
        decode_spans(data)
    assert str(refused.value).startswith(f"span 3 of resource 0: {reason} (2 of 8 spans have invalid ids)")
    # The same through OTLP/JSON (its codec refuses a hex id of the wrong length itself).
    with pytest.raises(OtlpDecodeError, match=r"span 3 of resource 0|spans\[3\]"):
        decode_spans(traces_to_json(traces(good, good, good, bad)).encode())


def test_a_joined_run_fails_when_one_record_fails() -> None:
    good = traces(Span(name="ok", trace_id=TRACE, span_id=SPAN)).SerializeToString()
    bad = metrics_request().SerializeToString()
    with pytest.raises(OtlpDecodeError):
        decode_spans_proto(good + bad + good)
    assert len(decode_spans_proto(good + good).groups) == 2


def test_a_record_without_spans_is_accepted() -> None:
    assert decode_spans(b"").groups == []
    assert decode_spans(traces().SerializeToString()).groups[0][2] == []


def test_real_records_pass_the_bulk_check_without_a_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The load generator's records are valid, and the bulk check alone says so."""
    generator = TraceGenerator(build_model(services=6, seed=3), seed=3)
    records = [generator.trace_request(time.time_ns())[1].SerializeToString() for _ in range(50)]

    def walked(trace_id: bytes, span_id: bytes) -> str | None:
        raise AssertionError("walked span by span")

    monkeypatch.setattr(ids, "span_id_problem", walked)
    decode_spans_proto(b"".join(records))
    for record in records:
        decode_spans(record)


def test_a_repeated_id_field_is_read_as_protobuf_reads_it() -> None:
    """A span that writes trace_id twice (no serializer does) has the last value: valid here."""
    span = message(b"\x0a", b"\x03" * 16) + Span(name="ok", trace_id=TRACE, span_id=SPAN).SerializeToString()
    resource = traces().resource_spans[0].resource.SerializeToString()
    data = message(b"\x0a", message(b"\x0a", resource) + message(b"\x12", message(b"\x12", span)))
    decoded = decode_spans(data)
    [[(_, [read])]] = [scopes for _, _, scopes in decoded.groups]
    assert read.trace_id == TRACE


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([TRACE, b"", bytes(16), b"\x05" * 15, b"\x06" * 17]),
            st.sampled_from([SPAN, b"", bytes(8), b"\x07" * 7]),
        ),
        max_size=6,
    ),
    st.integers(min_value=1, max_value=3),
)
def test_accepted_exactly_when_every_span_is_valid(pairs: list[tuple[bytes, bytes]], resources: int) -> None:
    spans = [Span(name="s", trace_id=t, span_id=s) for t, s in pairs]
    request = traces(*spans, resources=resources)
    valid = all(ids.span_id_problem(t, s) is None for t, s in pairs)
    for data in (request.SerializeToString(), traces_to_json(request).encode()):
        try:
            decode_spans(data)
            accepted = True
        except OtlpDecodeError:
            accepted = False
        assert accepted == valid, (pairs, json.dumps([[t.hex(), s.hex()] for t, s in pairs]))
