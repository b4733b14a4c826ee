"""Records decoded together: which qualify, and that the joined parse equals the records' parses."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from worker.config import Settings
from worker.model.errors import OtlpDecodeError
from worker.model.series import with_companions
from worker.model.wire import read_varint, varint
from worker.otlp.batch import group_request
from worker.otlp.decode import decode_traces, decode_traces_proto, is_plain_request
from worker.processors.pipeline import Pipeline


def _record(service: str, spans: int, seed: int) -> bytes:
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    resource_spans = ResourceSpans()
    resource_spans.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    items = [
        Span(
            trace_id=rng.randbytes(16),
            span_id=rng.randbytes(8),
            name=f"op{i}",
            kind=Span.SPAN_KIND_CLIENT if i % 2 else Span.SPAN_KIND_SERVER,
            start_time_unix_nano=1,
            end_time_unix_nano=2 + i,
        )
        for i in range(spans)
    ]
    resource_spans.scope_spans.append(ScopeSpans(spans=items))
    request.resource_spans.append(resource_spans)
    return bytes(request.SerializeToString())


def test_plain_records_join_to_their_concatenation() -> None:
    records = [_record(f"svc{i % 3}", 1 + i % 4, i) for i in range(10)]
    assert all(is_plain_request(r) for r in records)
    joined = decode_traces_proto(b"".join(records))
    one_by_one = [rs for r in records for rs in decode_traces(r).resource_spans]
    assert list(joined.resource_spans) == one_by_one


@pytest.mark.parametrize(
    "data",
    [
        b"{}",  # JSON
        b' \n{"resourceSpans": []}',  # JSON after whitespace
        b"\x0a",  # a tag without a length
        b"\x0a\x05abc",  # a length past the end
        b"\x12\x00",  # another field
        b"\x0a\x7b" + b"\x00" * 123,  # framed, but "\n{" is tried as JSON first
    ],
)
def test_not_plain(data: bytes) -> None:
    assert not is_plain_request(data)


def test_empty_record_is_plain() -> None:
    assert is_plain_request(b"")


def test_a_damaged_plain_record_fails_the_joined_parse_too() -> None:
    rng = random.Random(5)
    good = [_record("svc", 3, i) for i in range(4)]
    checked = 0
    for _ in range(2000):
        damaged = bytearray(rng.choice(good))
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if not is_plain_request(bytes(damaged)):
            continue
        try:
            decode_traces(bytes(damaged))
        except OtlpDecodeError:
            checked += 1
            with pytest.raises(OtlpDecodeError):
                decode_traces_proto(b"".join([good[0], bytes(damaged), good[1]]))
    assert checked


def test_group_request_matches_the_request() -> None:
    request = decode_traces_proto(b"".join(_record("svc", 2, i) for i in range(3)))
    request.resource_spans[0].scope_spans.add()  # an empty scope is left out
    groups = group_request(request)
    assert [key for _, key, _ in groups] == [rs.resource.SerializeToString() for rs in request.resource_spans]
    assert sum(len(spans) for _, _, scopes in groups for _, spans in scopes) == 6


def test_pipeline_counts_the_same_joined_or_not() -> None:
    settings = Settings.model_validate({"servicegraphs": {"enabled": True}})
    records = [_record(f"svc{i % 2}", 1 + i % 3, i) for i in range(12)]
    one, joined = Pipeline(settings, clock=lambda: 10), Pipeline(settings, clock=lambda: 10)
    for record in records:
        one.consume(decode_traces(record), "t", 0)
    joined.consume(decode_traces_proto(b"".join(records)), "t", 0)

    def counts(pipeline: Pipeline) -> dict[str, float]:
        pipeline.expire_all()
        return {
            s.series_id: s.count
            for deltas in pipeline.take_deltas().values()
            for s in with_companions(deltas.series)
        }

    assert counts(one) == counts(joined)


def _plain_reference(data: bytes) -> bool:
    """is_plain_request as first written: every length read by read_varint, JSON checked by lstrip."""
    size = len(data)
    position = 0
    while position < size:
        if data[position] != 0x0A:
            return False
        try:
            length, position = read_varint(data, position + 1, max_bytes=5)
        except ValueError:
            return False
        position += length
    return position == size and not data.lstrip().startswith(b"{")


_BYTES = st.lists(st.sampled_from([0x0A, 0x7B, 0x20, 0x09, 0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xFF]))


@settings(max_examples=2000)
@given(st.one_of(_BYTES.map(bytes), st.binary(max_size=40)))
def test_is_plain_request_matches_the_reference(data: bytes) -> None:
    assert is_plain_request(data) == _plain_reference(data)


def test_is_plain_request_matches_the_reference_on_long_fields() -> None:
    rng = random.Random(7)
    for size in (0, 1, 126, 127, 128, 300, 16383, 16384, 70000):
        field = b"\x0a" + varint(size) + bytes(rng.randrange(256) for _ in range(size))
        for data in (field, field + field, field[:-1], b"\x0a\x7b" + field[2:], b" " + field):
            assert is_plain_request(data) == _plain_reference(data)
