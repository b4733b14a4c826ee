"""The batch schema (span attributes as a map) reads what the OTLP schema reads, and refuses the same."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from devtools.loadgen.model import TraceGenerator, build_model
from worker.model.errors import OtlpDecodeError
from worker.otlp.batch import BatchRequest, as_batch, is_batch, parse_batch
from worker.otlp.decode import decode_batch, decode_batch_proto, decode_traces, decode_traces_proto
from worker.otlp.ids import span_id_problem
from worker.otlp.json_codec import traces_to_json


def _records(count: int, seed: int = 3) -> list[bytes]:
    generator = TraceGenerator(build_model(services=6, seed=seed), seed=seed)
    return [generator.trace_request(1_700_000_000_000_000_000)[1].SerializeToString() for _ in range(count)]


def _span_attributes(span: Span) -> dict[str, bytes]:
    return {kv.key: kv.value.SerializeToString() for kv in span.attributes}


def _batch_attributes(span: object) -> dict[str, bytes]:
    return {key: value.SerializeToString() for key, value in span.attributes.items()}  # type: ignore[attr-defined]


def _spans(request: object) -> list[object]:
    return [
        span
        for resource_spans in request.resource_spans  # type: ignore[attr-defined]
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def _traces_with_valid_ids(data: bytes) -> None:
    for span in _spans(decode_traces(data)):
        problem = span_id_problem(span.trace_id, span.span_id)  # type: ignore[attr-defined]
        if problem:
            raise OtlpDecodeError(problem)


def _accepted(parse: object, data: bytes) -> bool:
    try:
        parse(data)  # type: ignore[operator]
    except OtlpDecodeError:
        return False
    return True


def test_every_field_reads_the_same() -> None:
    for record in _records(40):
        standard = decode_traces_proto(record)
        batch = decode_batch_proto(record)
        assert is_batch(batch) and not is_batch(standard)
        assert [rs.resource.SerializeToString() for rs in batch.resource_spans] == [
            rs.resource.SerializeToString() for rs in standard.resource_spans
        ]
        for ours, theirs in zip(_spans(batch), _spans(standard), strict=True):
            assert isinstance(theirs, Span)
            assert _batch_attributes(ours) == _span_attributes(theirs)
            theirs.ClearField("attributes")
            ours.ClearField("attributes")  # type: ignore[attr-defined]
            assert ours.SerializeToString() == theirs.SerializeToString()  # type: ignore[attr-defined]


def test_a_standard_request_converts() -> None:
    [record] = _records(1)
    standard = decode_traces_proto(record)
    converted = as_batch(standard)
    assert isinstance(converted, BatchRequest)
    assert converted == decode_batch_proto(record)
    assert as_batch(converted) is converted


def test_json_records_decode_to_the_batch_schema() -> None:
    [record] = _records(1)
    as_json = traces_to_json(decode_traces_proto(record)).encode()
    assert decode_batch(as_json) == decode_batch_proto(record)
    assert decode_batch(record) == decode_batch_proto(record)
    with pytest.raises(OtlpDecodeError):
        decode_batch(b'{"resourceSpans": 3}')


def test_a_repeated_key_keeps_its_last_occurrence() -> None:
    span = Span(
        name="s",
        attributes=[
            KeyValue(key="k", value=AnyValue(string_value="first")),
            KeyValue(key="k", value=AnyValue(string_value="second")),
        ],
    )
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )
    [parsed] = _spans(parse_batch(request.SerializeToString()))
    assert parsed.attributes["k"].string_value == "second"  # type: ignore[attr-defined]


def test_unknown_fields_are_kept() -> None:
    span = Span(name="s").SerializeToString() + b"\xf8\x07\x01"  # field 127, varint 1
    data = _field(0x0A, _field(0x12, _field(0x12, span)))  # resource_spans -> scope_spans -> spans
    assert _accepted(decode_traces_proto, data) and _accepted(parse_batch, data)
    assert parse_batch(data).SerializeToString() == decode_traces_proto(data).SerializeToString()


def test_damaged_records_are_refused_alike() -> None:
    """Bit flips and cuts anywhere, including inside attribute keys and values."""
    rng = random.Random(11)
    records = _records(20, seed=5)
    tried = refused = 0
    for record in records:
        for _ in range(40):
            damaged = bytearray(record)
            if rng.random() < 0.3:
                damaged = damaged[: rng.randrange(len(damaged))]
            else:
                for _ in range(rng.randint(1, 3)):
                    damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
            data = bytes(damaged)
            standard = _accepted(decode_traces_proto, data)
            assert _accepted(parse_batch, data) == standard, data.hex()
            # The record decode also refuses spans with invalid ids (worker.otlp.ids).
            assert _accepted(decode_batch, data) == _accepted(_traces_with_valid_ids, data), data.hex()
            tried += 1
            refused += not standard
    assert 0 < refused < tried


@pytest.mark.parametrize(
    ("key", "value"),
    [(b"k\xff", b"v"), (b"k", b"v\xff"), (b"\xc3", b"v"), (b"k", b"\xed\xa0\x80")],
    ids=["key", "value", "truncated-key", "surrogate-value"],
)
def test_invalid_utf8_in_span_attributes_is_refused_alike(key: bytes, value: bytes) -> None:
    marker_key, marker_value = b"K" * len(key), b"V" * len(value)
    span = Span(
        attributes=[KeyValue(key=marker_key.decode(), value=AnyValue(string_value=marker_value.decode()))]
    )
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )
    data = request.SerializeToString().replace(marker_key, key).replace(marker_value, value)
    with pytest.raises(DecodeError):
        ExportTraceServiceRequest.FromString(data)
    with pytest.raises(OtlpDecodeError):
        decode_batch_proto(data)


def _field(tag: int, body: bytes) -> bytes:
    """A length-delimited field (messages this deep cannot be built through the Python API)."""
    length = len(body)
    varint = bytearray()
    while length >= 0x80:
        varint.append((length & 0x7F) | 0x80)
        length >>= 7
    varint.append(length)
    return bytes([tag]) + bytes(varint) + body


def _deep_request(depth: int) -> bytes:
    """A request whose one span attribute is an AnyValue array nested ``depth`` times."""
    value = _field(0x0A, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(0x2A, _field(0x0A, value))  # AnyValue.array_value -> ArrayValue.values
    key_value = _field(0x0A, b"deep") + _field(0x12, value)
    span = _field(0x4A, key_value)  # Span.attributes
    return _field(0x0A, _field(0x12, _field(0x12, span)))  # resource_spans -> scope_spans -> spans


def test_nesting_limits_are_the_same() -> None:
    outcomes = set()
    for depth in range(20, 60):
        data = _deep_request(depth)
        accepted = _accepted(decode_traces_proto, data)
        assert _accepted(parse_batch, data) == accepted, depth
        outcomes.add(accepted)
    assert outcomes == {True, False}, "the range covers the parser's recursion limit"
