"""Bad input, fuzzed: whatever a record holds, it is counted correctly or refused with a reason.

Every input goes the whole way a record goes in the worker, without the servers:
``decode_spans`` (protobuf or OTLP/JSON, span ids checked), both processors (span metrics with
dimensions, events, exemplars and a cardinality limit; service graphs), the expiry of waiting
half-edges, the msgpack rows the Redis merge sends, the pending half-edges saved with the
offsets, and the OTLP metrics the emitter publishes. The contract checked for every input:

* decoding either works or raises :class:`OtlpDecodeError` with a message (the record goes to
  the DLQ); nothing else may escape anywhere (another exception would stop the partition);
* a decoded request is counted exactly: every span is counted (``calls`` add up to the spans'
  weights) or dropped with a reason (``skipped_no_service``);
* the state built from it can always be stored and emitted (a value that fails there would
  fail every flush again: a poison pill), and every output record the worker's encoder writes
  decodes with the standard decoder (``ExportMetricsServiceRequest.FromString``).

Inputs: random bytes, truncated and bit-flipped protobuf, valid protobuf with absurd values
(end before start, 1970 and 2300 timestamps, the largest fixed64, kinds and status codes outside
their enums, empty and short IDs, spans that are their own parent, wrong tracestates), invalid
UTF-8 inside string fields, random and mutated OTLP/JSON; and, as fixed cases, a 10 MB attribute
value, 100,000 attributes, a 5,000-span-deep trace and 20,000 distinct resources (caches stay
bounded). Hypothesis drives it; with ``atheris`` installed a coverage-guided run is added.

How many inputs were tried is printed at the end of the module (``SPANMETRICS_FUZZ_SCALE=<n>``
runs n times more examples).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from state.codec import delta_payload, encode_attributes, encode_meta
from tests.reference.metrics_builder import split_by_size
from worker.config import Settings
from worker.model.errors import OtlpDecodeError
from worker.model.series import Temporality, with_companions
from worker.otlp.decode import decode_spans
from worker.otlp.ids import span_id_problem
from worker.otlp.json_codec import traces_to_json
from worker.otlp.metrics_encoder import encode_slot
from worker.processors.pipeline import Pipeline
from worker.processors.sampling import adjusted_count

SCALE = max(1, int(os.environ.get("SPANMETRICS_FUZZ_SCALE", "1")))
#: The per-span weight cap of the processor (a sampling probability of about one in a million).
MAX_WEIGHT = float(1 << 20)
YEAR_2300_NS = int((2300 - 1970) * 365.2425 * 86400) * 10**9
FIXED64_MAX = (1 << 64) - 1

TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()

_SPANMETRICS = {
    "dimensions": [{"name": "http.method", "default": "GET"}, "http.status_code", "region"],
    "calls_dimensions": ["peer.service"],
    "histogram": {"dimensions": ["db.system"]},
    "events": {"enabled": True, "dimensions": ["exception.type"]},
    "exemplars": {"enabled": True},
    "aggregation_cardinality_limit": 200,
    "resource_metrics_cache_size": 100,
}
_SERVICEGRAPHS = {
    "enabled": True,
    "dimensions": ["region"],
    "enable_virtual_node_label": True,
    "enable_messaging_system_latency_histogram": True,
    "max_items": 500,
}
EXPLICIT = Settings(spanmetrics=_SPANMETRICS, servicegraphs=_SERVICEGRAPHS)
EXPONENTIAL = Settings(
    spanmetrics={**_SPANMETRICS, "histogram": {"exponential": {"max_size": 20}}}, servicegraphs=_SERVICEGRAPHS
)
#: No per-metric dimensions: ``calls`` is the companion of each ``duration`` series.
PAIRED = Settings(
    spanmetrics={k: v for k, v in _SPANMETRICS.items() if k not in ("calls_dimensions", "histogram")},
    servicegraphs=_SERVICEGRAPHS,
)
PIPELINES = {"explicit": Pipeline(EXPLICIT), "exponential": Pipeline(EXPONENTIAL), "paired": Pipeline(PAIRED)}

FUZZ = settings(
    max_examples=150 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# ------------------------------------------------------------------------------------ the target


def _has_service(rs: object) -> bool:
    # Upstream: a service.name of any type counts (a non-string one reads as ""); only an absent
    # one skips the resource.
    return any(kv.key == "service.name" for kv in rs.resource.attributes)  # type: ignore[attr-defined]


def _expected_calls(request: ExportTraceServiceRequest) -> int | None:
    """The calls the spans of ``request`` must add up to (None when a weight is fractional)."""
    total = 0
    for rs in request.resource_spans:
        if not _has_service(rs):
            continue
        for ss in rs.scope_spans:
            for span in ss.spans:
                weight = min(adjusted_count(span.trace_state), MAX_WEIGHT) if span.trace_state else 1.0
                if not weight.is_integer():
                    return None
                total += int(weight)
    return total


def process(data: bytes, kind: str, pipeline: Pipeline | None = None) -> str:
    """One record through the whole worker path; returns "dlq" or "counted" (asserting the contract)."""
    TRIED[kind] += 1
    try:
        request = decode_spans(data).batch
    except OtlpDecodeError as exc:
        assert str(exc), "a refused record needs a reason for the DLQ header"
        OUTCOMES["dlq"] += 1
        return "dlq"
    for name, candidate in PIPELINES.items() if pipeline is None else [("given", pipeline)]:
        check_request(candidate, request, name)
    OUTCOMES["counted"] += 1
    return "counted"


def check_request(pipeline: Pipeline, request: Any, name: str = "") -> None:
    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    stats = pipeline.consume(request, "fuzz", 0)
    assert stats.spans + stats.skipped_no_service == spans, name
    now = time.time_ns()
    pending = pipeline.export_pending([0])  # saved with the offsets in the merge
    restored = Pipeline(EXPLICIT)
    restored.restore_pending(0, pending[0], now)
    pipeline.expire(now + 3600 * 10**9)  # every waiting half-edge resolves
    deltas = pipeline.take_deltas()
    calls = sum(s.count for d in deltas.values() for s in with_companions(d.series) if s.metric == "calls")
    expected = _expected_calls(request)
    if expected is not None:
        assert calls == expected, (name, calls, expected)
    descriptors = pipeline.descriptors()
    for tenant_deltas in deltas.values():
        for attributes in tenant_deltas.resources.values():
            encode_attributes(attributes)
        rows = [delta_payload(s, encode_meta(s)) for s in tenant_deltas.series]
        msgpack.packb(rows, use_bin_type=False)  # what store.merge hands to Lua
        for out in split_by_size(
            tenant_deltas.resources,
            with_companions(tenant_deltas.series),
            descriptors,
            Temporality.CUMULATIVE,
            now,
            1 << 20,
        ):
            out.SerializeToString()
        for encoded in encode_slot(
            tenant_deltas.resources, tenant_deltas.series, descriptors, Temporality.CUMULATIVE, now, 1 << 20
        ):
            ExportMetricsServiceRequest.FromString(encoded.data)


@pytest.fixture(scope="module", autouse=True)
def _print_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    line = (
        f"fuzz inputs tried: {sum(TRIED.values())} in {time.monotonic() - started:.1f} s "
        f"({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))}); "
        f"outcomes: {dict(OUTCOMES)}"
    )
    if reporter is None or capture is None:  # pragma: no cover - e.g. -p no:terminal
        print(line)
        return
    with capture.global_and_fixture_disabled():  # shown even though output is captured
        reporter.write_line("")
        reporter.write_line(line)


# ------------------------------------------------------------------------------------ strategies

ids = st.one_of(st.just(b""), st.binary(min_size=16, max_size=16), st.binary(min_size=1, max_size=20))
span_ids = st.one_of(st.just(b""), st.binary(min_size=8, max_size=8), st.binary(min_size=1, max_size=12))
#: Most requests have valid ids (or they only reach the DLQ): 16 and 8 bytes, not all zeros.
valid_ids = st.binary(min_size=16, max_size=16).filter(any)
valid_span_ids = st.binary(min_size=8, max_size=8).filter(any)
times = st.one_of(
    st.sampled_from([0, 1, 10**9, YEAR_2300_NS, FIXED64_MAX, FIXED64_MAX - 1, 1 << 63]),
    st.integers(min_value=0, max_value=FIXED64_MAX),
    st.just(time.time_ns()),
)
texts = st.one_of(st.sampled_from(["", "GET", "svc", "a:b*", "é", "\x00", "x" * 300]), st.text(max_size=20))
tracestates = st.sampled_from(
    ["", "ot=th:8", "ot=th:c", "ot=th:ffffffffffffff", "ot=th:", "ot=th:zz", "ot=rv:1;th:0", "garbage,,="]
)
keys = st.one_of(
    st.sampled_from(
        [
            "service.name",
            "http.method",
            "http.status_code",
            "region",
            "peer.service",
            "db.system",
            "db.name",
            "server.address",
            "network.peer.port",
            "exception.type",
            "",
        ]
    ),
    st.text(max_size=10),
)


def _any_value(depth: int = 2) -> st.SearchStrategy[AnyValue]:
    scalars = st.one_of(
        texts.map(lambda v: AnyValue(string_value=v)),
        st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1).map(lambda v: AnyValue(int_value=v)),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda v: AnyValue(double_value=v)),
        st.booleans().map(lambda v: AnyValue(bool_value=v)),
        st.binary(max_size=20).map(lambda v: AnyValue(bytes_value=v)),
        st.just(AnyValue()),
    )
    if depth <= 0:
        return scalars

    def array(values: list[AnyValue]) -> AnyValue:
        value = AnyValue()
        value.array_value.values.extend(values)
        return value

    def kvlist(pairs: list[tuple[str, AnyValue]]) -> AnyValue:
        value = AnyValue()
        for key, item in pairs:
            value.kvlist_value.values.add(key=key, value=item)
        return value

    inner = _any_value(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3).map(array),
        st.lists(st.tuples(keys, inner), max_size=3).map(kvlist),
    )


attributes = st.lists(st.tuples(keys, _any_value()), max_size=6)


def _fill(target: object, pairs: list[tuple[str, AnyValue]]) -> None:
    for key, value in pairs:
        target.add(key=key, value=value)  # type: ignore[attr-defined]


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    """Valid protobuf, absurd content."""
    request = ExportTraceServiceRequest()
    odd = draw(st.integers(min_value=0, max_value=4)) == 0
    trace_ids, own_ids = (ids, span_ids) if odd else (valid_ids, valid_span_ids)
    trace_id = draw(trace_ids)
    known_ids: list[bytes] = [b""]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        rs = request.resource_spans.add()
        if draw(st.booleans()):
            rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=draw(texts)))
        _fill(rs.resource.attributes, draw(attributes))
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(texts)
            for _ in range(draw(st.integers(min_value=0, max_value=5))):
                span = ss.spans.add()
                span.trace_id = trace_id if draw(st.booleans()) else draw(trace_ids)
                span.span_id = draw(own_ids)
                own_parent = draw(st.booleans())
                span.parent_span_id = span.span_id if own_parent else draw(st.sampled_from(known_ids))
                known_ids.append(span.span_id)
                span.name = draw(texts)
                span.kind = draw(st.integers(min_value=-3, max_value=9))  # open enum: unknown values too
                span.status.code = draw(st.integers(min_value=-1, max_value=5))
                span.start_time_unix_nano = draw(times)
                span.end_time_unix_nano = draw(times)
                span.trace_state = draw(tracestates)
                _fill(span.attributes, draw(attributes))
                for _ in range(draw(st.integers(min_value=0, max_value=2))):
                    event = span.events.add(name=draw(texts), time_unix_nano=draw(times))
                    _fill(event.attributes, draw(attributes))
                if draw(st.booleans()):
                    link = span.links.add(trace_id=draw(ids), span_id=draw(span_ids))
                    _fill(link.attributes, draw(attributes))
    return request


# ------------------------------------------------------------------------------------ properties


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    process(data, "random bytes")


@FUZZ
@given(requests())
def test_valid_protobuf_with_absurd_values(request: ExportTraceServiceRequest) -> None:
    valid_ids = all(
        span_id_problem(span.trace_id, span.span_id) is None
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    )
    assert process(request.SerializeToString(), "absurd protobuf") == ("counted" if valid_ids else "dlq")


@FUZZ
@given(requests(), st.data())
def test_truncated_protobuf(request: ExportTraceServiceRequest, data: st.DataObject) -> None:
    blob = request.SerializeToString()
    cut = data.draw(st.integers(min_value=0, max_value=max(0, len(blob) - 1)))
    process(blob[:cut], "truncated protobuf")


@FUZZ
@given(requests(), st.data())
def test_bit_flipped_protobuf(request: ExportTraceServiceRequest, data: st.DataObject) -> None:
    blob = bytearray(request.SerializeToString() or b"\x0a\x00")
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
        blob[index] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    process(bytes(blob), "bit-flipped protobuf")


def _with_raw_string(field_path: str, raw: bytes) -> bytes:
    """A valid request whose string field holds ``raw`` bytes (protobuf refuses to build that)."""
    marker = "\u2603MARK\u2603"
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    span = rs.scope_spans.add().spans.add(name="op", trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    if field_path == "span.name":
        span.name = marker
    elif field_path == "attribute.key":
        span.attributes.add(key=marker, value=AnyValue(string_value="v"))
    elif field_path == "attribute.value":
        span.attributes.add(key="http.method", value=AnyValue(string_value=marker))
    elif field_path == "service.name":
        rs.resource.attributes[0].value.string_value = marker
    blob = request.SerializeToString()
    encoded = marker.encode()
    assert len(raw) == len(encoded)  # same length: the enclosing lengths stay valid
    return blob.replace(encoded, raw)


@FUZZ
@given(
    st.sampled_from(["span.name", "attribute.key", "attribute.value", "service.name"]),
    st.binary(min_size=10, max_size=10).filter(lambda b: not _is_utf8(b)),
)
def test_invalid_utf8_in_string_fields(field_path: str, raw: bytes) -> None:
    assert process(_with_raw_string(field_path, raw), "invalid UTF-8") == "dlq"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=10),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@FUZZ
@given(json_values)
def test_random_json(document: object) -> None:
    process(json.dumps(document).encode(), "random JSON")


@FUZZ
@given(requests(), st.data())
def test_mutated_otlp_json(request: ExportTraceServiceRequest, data: st.DataObject) -> None:
    """Valid OTLP/JSON with one value replaced, one key renamed, or the text cut short."""
    document = json.loads(traces_to_json(request))
    paths: list[tuple[object, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append((node, key))
                walk(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                paths.append((node, index))
                walk(value)

    walk(document)
    how = data.draw(st.sampled_from(["replace", "rename", "cut"]))
    if how == "cut":
        text = json.dumps(document)
        process(text[: data.draw(st.integers(min_value=0, max_value=len(text)))].encode(), "mutated JSON")
        return
    if paths:
        container, key = data.draw(st.sampled_from(paths))
        if how == "replace":
            container[key] = data.draw(json_values)  # type: ignore[index]
        elif isinstance(container, dict):
            container[data.draw(st.text(max_size=12))] = container.pop(key)
    process(json.dumps(document).encode(), "mutated JSON")


# ------------------------------------------------------------------------------------ fixed cases


def _request(*spans: Span, resource: list[KeyValue] | None = None) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
    if resource:
        rs.resource.attributes.extend(resource)
    rs.scope_spans.add().spans.extend(spans)
    return request


def _span(name: str = "op", **fields: object) -> Span:
    base: dict[str, object] = {
        "trace_id": b"\x01" * 16,
        "span_id": b"\x02" * 8,
        "start_time_unix_nano": 1_000,
        "end_time_unix_nano": 2_000,
        "kind": Span.SPAN_KIND_SERVER,
    }
    base.update(fields)
    return Span(name=name, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "end"),
    [(2_000, 1_000), (0, 0), (1, YEAR_2300_NS), (YEAR_2300_NS, YEAR_2300_NS + 5), (0, FIXED64_MAX)],
    ids=["end-before-start", "epoch", "to-2300", "in-2300", "max-fixed64"],
)
def test_absurd_times_count_once_and_stay_storable(start: int, end: int) -> None:
    request = _request(_span(start_time_unix_nano=start, end_time_unix_nano=end))
    assert process(request.SerializeToString(), "fixed cases") == "counted"


def test_ten_megabyte_attribute_value_is_counted() -> None:
    huge = "x" * (10 * 1024 * 1024)
    request = _request(
        _span(attributes=[KeyValue(key="http.method", value=AnyValue(string_value=huge))]),
        _span(attributes=[KeyValue(key="note", value=AnyValue(string_value=huge))]),
        resource=[KeyValue(key="k8s.pod.name", value=AnyValue(string_value=huge))],
    )
    assert process(request.SerializeToString(), "fixed cases") == "counted"


def test_hundred_thousand_attributes_are_counted() -> None:
    many = [KeyValue(key=f"a{i}", value=AnyValue(int_value=i)) for i in range(100_000)]
    request = _request(_span(attributes=many), resource=many[:1000])
    started = time.monotonic()
    assert process(request.SerializeToString(), "fixed cases") == "counted"
    assert time.monotonic() - started < 10


def test_deep_trace_tree_and_own_parent() -> None:
    """A 5,000-level CLIENT/SERVER chain pairs into edges; a span that is its own parent is counted."""
    spans = []
    parent = b""
    for depth in range(5_000):
        span_id = (depth + 1).to_bytes(8, "big")  # not all zeros
        kind = Span.SPAN_KIND_CLIENT if depth % 2 else Span.SPAN_KIND_SERVER
        spans.append(_span(f"op{depth % 7}", span_id=span_id, parent_span_id=parent, kind=kind))
        parent = span_id
    spans.append(_span("self", span_id=b"\x09" * 8, parent_span_id=b"\x09" * 8, kind=Span.SPAN_KIND_SERVER))
    assert process(_request(*spans).SerializeToString(), "fixed cases") == "counted"


@pytest.mark.parametrize(
    "span",
    [
        _span(trace_id=b"", span_id=b""),
        _span(trace_id=b"\x01", span_id=b"\x02" * 3, parent_span_id=b"\x03"),
        _span(trace_id=b"\x00" * 16, span_id=b"\x00" * 8, kind=Span.SPAN_KIND_CLIENT),
    ],
    ids=["empty", "short", "zero"],
)
def test_empty_and_odd_ids_are_refused(span: Span) -> None:
    """The OTel spec calls them invalid; Tempo refuses such a push, the Collector a wrong length."""
    assert process(_request(_span(), span).SerializeToString(), "fixed cases") == "dlq"


def test_odd_parent_ids_are_counted() -> None:
    spans = [_span(parent_span_id=b"\x03"), _span(span_id=b"\x04" * 8, parent_span_id=b"\x00" * 8)]
    assert process(_request(*spans).SerializeToString(), "fixed cases") == "counted"


@pytest.mark.parametrize("depth", [16, 17, 30, 47])
def test_deep_attribute_values_stay_decodable_in_the_output(depth: int) -> None:
    """Nested as deep as the input parser takes: every output record still decodes."""
    value = AnyValue(string_value="leaf")
    for _ in range(depth):
        outer = AnyValue()
        outer.array_value.values.append(value)
        value = outer
    for key in ("http.method", "region", "exception.type"):
        span = _span(
            attributes=[KeyValue(key=key, value=value)],
            events=[{"name": "e", "attributes": [KeyValue(key=key, value=value)]}],
        )
        assert process(_request(span, _span("good")).SerializeToString(), "fixed cases") == "counted"


def test_memory_stays_bounded_under_distinct_resources_and_values() -> None:
    """Distinct resources and attribute values without end: memory stops growing once the
    caches are full (it depends on their configured sizes, not on the traffic)."""
    small_caches = Settings(
        spanmetrics={**_SPANMETRICS, "dimensions_cache_size": 500}, servicegraphs=_SERVICEGRAPHS
    )
    pipeline = Pipeline(small_caches)
    big = "v" * 1024

    def batch(offset: int) -> ExportTraceServiceRequest:
        request = ExportTraceServiceRequest()
        for i in range(offset, offset + 100):
            rs = request.resource_spans.add()
            rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="svc"))
            rs.resource.attributes.add(key="pod", value=AnyValue(string_value=f"{big}{i}"))
            span = rs.scope_spans.add().spans.add(
                name="op", trace_id=b"\x01" * 16, span_id=i.to_bytes(8, "big"), kind=Span.SPAN_KIND_CLIENT
            )
            span.attributes.add(key="http.method", value=AnyValue(string_value=f"{big}{i}"))
            span.attributes.add(key="peer.service", value=AnyValue(string_value=f"{big}{i}"))
        return request

    def phase(start: int, count: int) -> None:
        for offset in range(start, start + count, 100):
            pipeline.consume(batch(offset), "fuzz", 0)
            pipeline.expire(time.time_ns() + 3600 * 10**9)
            pipeline.take_deltas()
            TRIED["memory"] += 1

    tracemalloc.start()
    try:
        phase(0, 4_000)  # every cache fills (and turns over)
        filled, _ = tracemalloc.get_traced_memory()
        phase(4_000, 4_000)  # 4,000 more distinct resources and values: 12 MB of text
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    spanmetrics = pipeline.spanmetrics
    assert len(spanmetrics._resources) <= small_caches.spanmetrics.resource_metrics_cache_size
    assert after - filled < 2 * 1024 * 1024, f"grew {(after - filled) / 1e6:.1f} MB with the traffic"


# ------------------------------------------------------------------------------------ atheris


#: The atheris entry point, run in a subprocess (atheris.Fuzz() exits the process when done).
#: Only the project's own packages are instrumented for coverage; they must be imported inside
#: instrument_imports(), so this module is imported there.
ATHERIS_MAIN = """
import sys
import atheris
with atheris.instrument_imports(include=["worker", "state"]):
    from tests.unit import test_fuzz_inputs as target
atheris.Setup(sys.argv, lambda data: target.process(data, "atheris"))
atheris.Fuzz()
"""


def test_atheris_coverage_guided(tmp_path: Path) -> None:
    """libFuzzer mutations guided by coverage of worker/ and state/, from a seed corpus of real
    requests (protobuf and OTLP/JSON, the load generator's traces and the absurd fixed cases)."""
    pytest.importorskip("atheris")
    from devtools.loadgen.model import TraceGenerator, build_model

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    generator = TraceGenerator(build_model(services=6, seed=1), seed=1)
    seeds = [generator.trace_request(time.time_ns())[1] for _ in range(5)]
    seeds.append(_request(_span(start_time_unix_nano=5, end_time_unix_nano=1, trace_state="ot=th:8")))
    for index, seed in enumerate(seeds):
        (corpus / f"proto-{index}").write_bytes(seed.SerializeToString())
        (corpus / f"json-{index}").write_text(traces_to_json(seed))
    runs = 20_000 * SCALE
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            ATHERIS_MAIN,
            str(corpus),
            f"-runs={runs}",
            "-max_len=8192",
            "-rss_limit_mb=2048",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    done = [line for line in output.splitlines() if line.startswith("Done ")]
    TRIED["atheris"] += int(done[-1].split()[1]) if done else 0
