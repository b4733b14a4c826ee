"""The compiled check that protobuf parses a record (``_native.valid``) against protobuf itself:
whatever it accepts, protobuf parses (hypothesis, edge cases, seeded mutation corpora), and the
records the load generator and the tests write are accepted, so the worker skips the parse."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from typing import Any

import pytest
from google.protobuf.descriptor_pb2 import SourceCodeInfo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from devtools.loadgen.model import TraceGenerator, build_model
from tests.unit import test_fuzz_ingest as ingest_fuzz
from tests.unit.processors.spanmetrics import test_native as spanmetrics_native
from worker.config import Settings
from worker.model.errors import OtlpDecodeError
from worker.model.wire import varint
from worker.otlp.batch import BatchRequest, parse_batch
from worker.processors import native, pipeline
from worker.processors.pipeline import NativeRun, Pipeline

SCALE = max(1, int(os.environ.get("SPANMETRICS_FUZZ_SCALE", "1")))
_NATIVE = native.load()
needs_native = pytest.mark.skipif(
    _NATIVE is None, reason="compiled ingest not built (or SPANMETRICS_NO_EXTENSIONS set)"
)
SCHEMA: Any = _NATIVE.Schema(BatchRequest.DESCRIPTOR) if _NATIVE is not None else None

#: Field kinds of the schema tables (``_native.pyx``: _F_*).
UNKNOWN, VARINT, FIXED64, FIXED32, BYTES, STRING, MESSAGE, REFUSE = range(8)
#: Nested messages the check follows (the request is level 1; protobuf stops past 100).
DEPTH = 64


def parses(data: bytes) -> bool:
    try:
        parse_batch(data)
    except OtlpDecodeError:
        return False
    return True


def checked(data: bytes) -> bool:
    """The check's answer, after asserting the property: accepted => protobuf parses it."""
    accepted = bool(_NATIVE.valid(data, SCHEMA))  # type: ignore[union-attr]
    if accepted:
        assert parses(data), data
    return accepted


def field(number: int, wire: int, body: bytes = b"") -> bytes:
    """A field: tag, then ``body`` as it is (wire types 0, 1, 5) or length-prefixed (2)."""
    tag = varint(number << 3 | wire)
    return tag + varint(len(body)) + body if wire == 2 else tag + body


def span_bytes(*extra: bytes) -> bytes:
    return field(1, 2, b"\x01" * 16) + field(2, 2, b"\x02" * 8) + b"".join(extra)


def request_with_span(*extra: bytes, resource: bytes = b"", scope: bytes = b"") -> bytes:
    scope_spans = (field(1, 2, scope) if scope else b"") + field(2, 2, span_bytes(*extra))
    resource_spans = (field(1, 2, resource) if resource else b"") + field(2, 2, scope_spans)
    return field(1, 2, resource_spans)


def nested_value(depth: int) -> bytes:
    """An AnyValue of ``depth`` nested arrays around a string."""
    value = field(1, 2, b"x")
    for _ in range(depth):
        value = field(5, 2, field(1, 2, value))
    return value


def attribute(key: bytes, value: bytes) -> bytes:
    return field(9, 2, field(1, 2, key) + field(2, 2, value))


# ------------------------------------------------------------------------------ the tables


@needs_native
def test_the_tables_follow_the_batch_schema() -> None:
    kinds = SCHEMA.kinds()
    assert kinds[0] == {1: MESSAGE}  # ExportTraceServiceRequest.resource_spans
    [span] = [k for k in kinds if k.get(16) == FIXED32]
    assert {n: span[n] for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15)} == {
        1: BYTES, 2: BYTES, 3: STRING, 4: BYTES, 5: STRING, 6: VARINT, 7: FIXED64, 8: FIXED64,
        9: MESSAGE, 10: VARINT, 11: MESSAGE, 13: MESSAGE, 15: MESSAGE,
    }  # fmt: skip
    # A repeated scalar may come packed or not: refused (protobuf decides).
    assert _NATIVE.Schema(SourceCodeInfo.Location.DESCRIPTOR).kinds()[0][1] == REFUSE  # type: ignore[union-attr]
    location = SourceCodeInfo.Location(path=[1, 2], span=[3, 4, 5, 6]).SerializeToString()
    assert not _NATIVE.valid(location, _NATIVE.Schema(SourceCodeInfo.Location.DESCRIPTOR))  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ edge cases

_BAD_UTF8 = b"a\xc3("
#: (name, bytes, accepted by the check, parsed by protobuf).
EDGE_CASES: list[tuple[str, bytes, bool, bool]] = [
    ("empty request", b"", True, True),
    ("a whole span", request_with_span(), True, True),
    ("5-byte tag", b"\x8a\x80\x80\x80\x00" + varint(0), True, True),
    ("6-byte tag", b"\x8a\x80\x80\x80\x80\x00\x00", False, False),
    ("tag of 2^32", b"\x80\x80\x80\x80\x10\x00", False, False),
    ("field number 0", field(0, 0, b"\x01"), False, False),
    ("field number 2^29-1", field((1 << 29) - 1, 0, b"\x01"), True, True),
    ("unknown fixed64 and fixed32", field(7, 1, b"\x00" * 8) + field(8, 5, b"\x00" * 4), True, True),
    ("unknown fixed64 cut", field(7, 1, b"\x00" * 7), False, False),
    ("unknown fixed32 cut", field(7, 5, b"\x00" * 3), False, False),
    ("unknown group", field(7, 3) + field(1, 0, b"\x01") + field(7, 4), False, True),
    ("end group alone", field(7, 4), False, False),
    ("wire type 6", field(7, 6), False, False),
    ("wire type 7", field(7, 7), False, False),
    ("10-byte varint", field(7, 0, b"\xff" * 9 + b"\x01"), True, True),
    ("10-byte varint, last byte 0x7f", field(7, 0, b"\xff" * 9 + b"\x7f"), True, True),
    ("11-byte varint", field(7, 0, b"\xff" * 10 + b"\x00"), False, False),
    ("varint cut", field(7, 0, b"\xff"), False, False),
    ("span kind beyond int32", request_with_span(field(6, 0, varint(1 << 40))), True, True),
    ("span kind negative", request_with_span(field(6, 0, varint((1 << 64) - 1))), True, True),
    ("bool of 7", request_with_span(attribute(b"k", field(2, 0, varint(7)))), True, True),
    ("dropped count beyond uint32", request_with_span(field(10, 0, varint(1 << 63))), True, True),
    ("length past the end", b"\x0a\x05\x12\x00", False, False),
    ("length varint cut", b"\x0a\x80", False, False),
    ("5-byte length", b"\x0a\x80\x80\x80\x80\x00", True, True),
    ("6-byte length", b"\x0a\x80\x80\x80\x80\x80\x00", False, False),
    ("known field, another wire type", field(1, 0, b"\x01"), False, True),
    ("span kind as length-delimited", request_with_span(field(6, 2, b"\x01")), False, True),
    ("span start cut", request_with_span(field(7, 1, b"\x00" * 4)), False, False),
    ("span name not UTF-8", request_with_span(field(5, 2, _BAD_UTF8)), False, False),
    ("trace state not UTF-8", request_with_span(field(3, 2, _BAD_UTF8)), False, False),
    ("status message not UTF-8", request_with_span(field(15, 2, field(2, 2, _BAD_UTF8))), False, False),
    ("event name not UTF-8", request_with_span(field(11, 2, field(2, 2, _BAD_UTF8))), False, False),
    ("link trace state not UTF-8", request_with_span(field(13, 2, field(3, 2, _BAD_UTF8))), False, False),
    ("attribute key not UTF-8", request_with_span(attribute(_BAD_UTF8, field(1, 2, b"v"))), False, False),
    ("attribute value not UTF-8", request_with_span(attribute(b"k", field(1, 2, _BAD_UTF8))), False, False),
    (
        "kvlist key not UTF-8",
        request_with_span(attribute(b"k", field(6, 2, field(1, 2, field(1, 2, _BAD_UTF8))))),
        False,
        False,
    ),
    ("bytes value not UTF-8", request_with_span(attribute(b"k", field(7, 2, _BAD_UTF8))), True, True),
    ("scope name not UTF-8", request_with_span(scope=field(1, 2, _BAD_UTF8)), False, False),
    (
        "resource attribute not UTF-8",
        request_with_span(resource=field(1, 2, field(1, 2, b"k") + field(2, 2, field(1, 2, _BAD_UTF8)))),
        False,
        False,
    ),
    (
        "entity ref key not UTF-8",
        request_with_span(resource=field(3, 2, field(3, 2, _BAD_UTF8))),
        False,
        False,
    ),
    ("schema url not UTF-8", field(1, 2, field(3, 2, _BAD_UTF8)), False, False),
    ("status a sub-message cut", request_with_span(field(15, 2, b"\x12\x05ab")), False, False),
    ("event cut inside", request_with_span(field(11, 2, b"\x09\x00")), False, False),
    ("link group inside", request_with_span(field(13, 2, field(9, 3) + field(9, 4))), False, True),
    (
        "unknown field in a map entry",
        request_with_span(field(9, 2, field(1, 2, b"k") + field(3, 0, b"\x01"))),
        True,
        True,
    ),
    ("unknown length-delimited garbage", request_with_span(field(99, 2, b"\xff\xff")), True, True),
    (
        "nesting at the check's limit",
        request_with_span(attribute(b"k", nested_value((DEPTH - 6) // 2))),
        True,
        True,
    ),
    (
        "nesting past the check's limit",
        request_with_span(attribute(b"k", nested_value((DEPTH - 4) // 2))),
        False,
        True,
    ),
    ("nesting past protobuf's limit", request_with_span(attribute(b"k", nested_value(48))), False, False),
]


@needs_native
@pytest.mark.parametrize(
    ("data", "accepted", "parsed"), [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES]
)
def test_edge_cases(data: bytes, accepted: bool, parsed: bool) -> None:
    assert parses(data) == parsed
    assert checked(data) == accepted


# ------------------------------------------------------------------------------ realistic records


def _loadgen_records(count: int, seed: int = 3) -> list[bytes]:
    generator = TraceGenerator(build_model(services=6, seed=seed), seed=seed)
    now = time.time_ns()
    return [generator.trace_request(now)[1].SerializeToString() for _ in range(count)]


def _rich_request(rng: random.Random) -> bytes:
    """Every part of the schema the scanners skip, filled: scope, events, links, status message,
    schema URLs, entity refs, nested arrays and maps, non-ASCII text."""
    value = AnyValue(string_value="ü€😀")
    value = AnyValue(kvlist_value={"values": [KeyValue(key="ключ", value=value)]})
    value = AnyValue(
        array_value={"values": [value, AnyValue(bytes_value=b"\xff"), AnyValue(double_value=1.5)]}
    )
    span = Span(
        trace_id=rng.randbytes(16),
        span_id=rng.randbytes(8),
        parent_span_id=rng.randbytes(8),
        trace_state="ot=th:8",
        name="GET /ü",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1,
        end_time_unix_nano=2,
        attributes=[KeyValue(key="deep", value=value), KeyValue(key="n", value=AnyValue(int_value=-1))],
        dropped_attributes_count=3,
        events=[Span.Event(time_unix_nano=5, name="exception", attributes=[KeyValue(key="x", value=value)])],
        links=[Span.Link(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), trace_state="a=b", flags=1)],
        status=Status(code=Status.STATUS_CODE_ERROR, message="bad ü"),
        flags=0x100,
    )
    resource_spans = ResourceSpans(
        resource={
            "attributes": [KeyValue(key="service.name", value=AnyValue(string_value="svc"))],
            "entity_refs": [{"type": "service", "id_keys": ["service.name"], "schema_url": "u"}],
        },
        scope_spans=[
            ScopeSpans(scope=InstrumentationScope(name="lib", version="1"), spans=[span], schema_url="s")
        ],
        schema_url="r",
    )
    return ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString()


@needs_native
def test_realistic_records_are_accepted() -> None:
    """The fast path is really taken: what the load generator and the tests write passes the check."""
    rng = random.Random(5)
    records = _loadgen_records(300)
    records += spanmetrics_native._seed_records(rng)
    records += [_rich_request(rng) for _ in range(20)]
    # The ingest fuzz test's traces (not its metrics and logs), but for the deep attributes.
    records += [s for s in ingest_fuzz._seeds(rng)[:40] if b"deep" not in s]
    for record in records:
        assert checked(record), record
    for start in range(0, len(records), 64):  # joined runs, as the worker parses them
        assert checked(b"".join(records[start : start + 64]))


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=spanmetrics_native.requests)
def test_generated_requests_are_accepted(request: ExportTraceServiceRequest) -> None:
    assert checked(request.SerializeToString())


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=text, message_=text, key=text, state=text, scope=text)
def test_any_text_in_the_skipped_parts_is_accepted(
    name: str, message_: str, key: str, state: str, scope: str
) -> None:
    span = Span(
        trace_id=b"\x01" * 16,
        span_id=b"\x02" * 8,
        name=name,
        trace_state=state,
        status=Status(message=message_),
        events=[Span.Event(name=name, attributes=[KeyValue(key=key, value=AnyValue(string_value=message_))])],
        links=[Span.Link(trace_state=state)],
        attributes=[KeyValue(key=key, value=AnyValue(string_value=name))],
    )
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(scope_spans=[ScopeSpans(scope=InstrumentationScope(name=scope), spans=[span])])
        ]
    )
    assert checked(request.SerializeToString())


# ------------------------------------------------------------------------------ random bytes


def _wire_fields(depth: int) -> st.SearchStrategy[bytes]:
    """Fields of any number the schema uses (and others), any wire type, bodies that are nested
    fields, text, invalid UTF-8 or random bytes; sometimes cut or with a wrong length."""
    leaf = st.one_of(
        st.binary(max_size=6), st.sampled_from([b"", b"ab", _BAD_UTF8, "é".encode(), b"\xed\xa0\x80"])
    )
    body = leaf if depth == 0 else st.one_of(leaf, _wire_fields(depth - 1))
    number = st.one_of(st.integers(1, 16), st.sampled_from([0, 99, (1 << 29) - 1, 1 << 29]))
    one = st.one_of(
        st.builds(lambda n, b: field(n, 2, b), number, body),
        st.builds(lambda n, v: field(n, 0, varint(v)), number, st.integers(0, (1 << 64) - 1)),
        st.builds(lambda n, b: field(n, 1, b), number, st.binary(min_size=6, max_size=8)),
        st.builds(lambda n, b: field(n, 5, b), number, st.binary(min_size=3, max_size=4)),
        st.builds(lambda n, w: field(n, w), number, st.sampled_from([3, 4, 6, 7])),
        st.binary(max_size=3),
    )
    return st.lists(one, max_size=4).map(b"".join)


@needs_native
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_wire_fields(4))
def test_random_wire_bytes(data: bytes) -> None:
    checked(data)


@needs_native
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=spanmetrics_native.requests,
    edits=st.lists(
        st.tuples(st.integers(0, 1 << 16), st.integers(0, 4), st.integers(0, 255)), min_size=1, max_size=3
    ),
)
def test_mutated_generated_requests(
    request: ExportTraceServiceRequest, edits: list[tuple[int, int, int]]
) -> None:
    data = bytearray(request.SerializeToString() or b"\x0a\x00")
    for at, how, byte in edits:
        at %= len(data) or 1
        if how == 0:
            data[at:at] = bytes([byte])
        elif how == 1 and data:
            del data[at]
        elif how == 2 and data:
            data[at] = byte
        elif how == 3:
            del data[at:]
        elif data:
            data[at] ^= 1 << (byte % 8)
    checked(bytes(data))


@needs_native
@pytest.mark.parametrize("seed", [41 + n for n in range(SCALE)])
def test_seeded_mutation_corpora(seed: int) -> None:
    """The two mutation corpora of the ingest fuzz tests: accepted => protobuf parses; most of
    what protobuf parses is accepted."""
    rng = random.Random(seed)
    seeds = ingest_fuzz._seeds(rng)
    span_seeds = spanmetrics_native._seed_records(rng)
    outcomes: Counter[str] = Counter()
    for _ in range(6000):
        if rng.random() < 0.5:
            data = ingest_fuzz._mutate(rng.choice(seeds), seeds, rng)
        else:
            run = [rng.choice(span_seeds) for _ in range(rng.randint(1, 3))]
            run[rng.randrange(len(run))] = spanmetrics_native._mutate(rng, run[-1])
            data = b"".join(run)
        accepted = checked(data)
        outcomes[
            ("accepted" if accepted else "asked protobuf") + (", parses" if parses(data) else ", refused")
        ] += 1
    assert outcomes["accepted, parses"] > 400 and outcomes["asked protobuf, refused"] > 1000, outcomes
    # Declined although protobuf parses: the rare shapes above (deep values, groups, wrong wire types).
    assert outcomes["asked protobuf, parses"] < outcomes["accepted, parses"] / 5, outcomes


# ------------------------------------------------------------------------------ in the pipeline


@needs_native
def test_the_pipeline_skips_protobuf_for_accepted_records(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bytes] = []

    def spy(data: bytes) -> Any:
        asked.append(data)
        return parse_batch(data)

    monkeypatch.setattr(pipeline, "parse_batch", spy)
    records = _loadgen_records(64)
    compiled = Pipeline(
        Settings(spanmetrics={"dimensions": ["http.request.method"]}, servicegraphs={"enabled": True})
    )
    assert compiled.ingest_path == "native" and compiled.edges_path == "native"
    decoded = compiled.decode(b"".join(records))
    assert isinstance(decoded, NativeRun) and decoded.edges is not None
    assert asked == []
    # What the check declines goes to protobuf, which decides; the scanners still read it.
    deep = records[0] + request_with_span(attribute(b"deep", nested_value(DEPTH // 2)))
    assert isinstance(compiled.decode(deep), NativeRun)
    assert asked == [deep]
    broken = records[0] + field(1, 2, field(3, 2, _BAD_UTF8))  # a schema URL
    with pytest.raises(OtlpDecodeError):
        compiled.decode(broken)
    assert asked[-1] == broken
