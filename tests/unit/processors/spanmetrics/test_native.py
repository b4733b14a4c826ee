"""The compiled span-metrics ingest against the pure path: identical deltas, or "not handled".

Every other span-metrics test also runs through both paths (``helpers.Pipeline``); here random
spans and configurations (hypothesis) and a seeded corpus of mutated records.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from tests.unit.processors.spanmetrics.helpers import BASE_NS, FakeClock, consume_native, same_deltas
from worker.config import Settings, SpanMetricsConfig
from worker.model.errors import OtlpDecodeError
from worker.otlp.decode import decode_spans_proto
from worker.processors import native
from worker.processors.pipeline import NativeRun, Pipeline
from worker.processors.spanmetrics.processor import SpanMetricsProcessor

#: SPANMETRICS_FUZZ_SCALE=N runs N times the mutants (as tests/unit/test_fuzz_inputs.py), with N seeds.
SCALE = max(1, int(os.environ.get("SPANMETRICS_FUZZ_SCALE", "1")))

needs_native = pytest.mark.skipif(
    native.load() is None, reason="compiled ingest not built (or SPANMETRICS_NO_EXTENSIONS set)"
)

NAMES = ["http.method", "region", "code", "peer", "service.name", "n"]

# ------------------------------------------------------------------------------ random inputs

scalar_values = st.one_of(
    st.builds(
        lambda s: AnyValue(string_value=s), st.sampled_from(["GET", "POST", "", "eu", "ü<&>", "x" * 40])
    ),
    st.builds(lambda i: AnyValue(int_value=i), st.sampled_from([0, 1, -1, 200, 2**63 - 1, -(2**63)])),
    st.builds(lambda b: AnyValue(bool_value=b), st.booleans()),
    st.builds(
        lambda d: AnyValue(double_value=d), st.sampled_from([0.0, 2.0, 0.5, -1e300, 1e-7, float("inf")])
    ),
    st.builds(lambda b: AnyValue(bytes_value=b), st.sampled_from([b"", b"\x00\xff", b"abc"])),
    st.just(AnyValue()),
)
any_values = st.one_of(
    scalar_values,
    st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)), st.lists(scalar_values, max_size=3)),
    st.builds(
        lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs])),
        st.lists(st.tuples(st.sampled_from(["a", "b"]), scalar_values), max_size=3),
    ),
)
attributes = st.lists(
    st.builds(lambda k, v: KeyValue(key=k, value=v), st.sampled_from([*NAMES, "other"]), any_values),
    max_size=6,
)
trace_states = st.sampled_from(["", "", "ot=th:8", "ot=th:c", "ot=th:0", "ot=th:zz", "vendor=x,ot=th:fff"])
spans = st.builds(
    lambda name, kind, status, duration, attrs, state, end_zero, ids: Span(
        trace_id=ids.to_bytes(16, "big"),
        span_id=(ids % (1 << 64) or 1).to_bytes(8, "big"),
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=BASE_NS,
        end_time_unix_nano=0 if end_zero else BASE_NS + duration,
        attributes=attrs,
        trace_state=state,
        status=Status(code=status),  # type: ignore[arg-type]
    ),
    name=st.sampled_from(["a", "b", "GET /", ""]),
    kind=st.integers(min_value=0, max_value=6),
    status=st.integers(min_value=0, max_value=3),
    duration=st.one_of(st.integers(min_value=0, max_value=20 * 10**9), st.just((1 << 64) - 1 - BASE_NS)),
    attrs=attributes,
    state=trace_states,
    end_zero=st.booleans(),
    ids=st.integers(min_value=1, max_value=(1 << 128) - 1),
)
resources = st.builds(
    lambda service, attrs: [
        *([] if service is None else [KeyValue(key="service.name", value=service)]),
        *attrs,
    ],
    st.one_of(
        st.none(), st.builds(lambda s: AnyValue(string_value=s), st.sampled_from(["a", "b"])), scalar_values
    ),
    attributes,
)
requests = st.lists(
    st.builds(
        lambda resource, scopes: ResourceSpans(
            resource={"attributes": resource}, scope_spans=[ScopeSpans(spans=s) for s in scopes]
        ),
        resources,
        st.lists(st.lists(spans, max_size=5), max_size=3),
    ),
    min_size=1,
    max_size=3,
).map(lambda rs: ExportTraceServiceRequest(resource_spans=rs))

dimension = st.one_of(
    st.sampled_from(NAMES),
    st.builds(
        lambda n, d: {"name": n, "default": d}, st.sampled_from(NAMES), st.sampled_from(["x", "", "7"])
    ),
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "dimensions": st.lists(dimension, max_size=3),
        "calls_dimensions": st.lists(dimension, max_size=2),
        "exclude_dimensions": st.lists(
            st.sampled_from(["span.name", "span.kind", "status.code"]), max_size=2
        ),
        "histogram": st.one_of(
            st.builds(
                lambda unit, buckets, dims: {
                    "unit": unit,
                    "explicit": {"buckets": buckets},
                    "dimensions": dims,
                },
                st.sampled_from(["ms", "s"]),
                st.sampled_from([["2ms", "100ms", "1s"], ["1ms"]]),
                st.lists(dimension, max_size=2),
            ),
            st.just({"exponential": {"max_size": 10}}),
            st.just({"disable": True}),
        ),
        "exemplars": st.builds(
            lambda on, most: {"enabled": on, "max_per_data_point": most},
            st.booleans(),
            st.sampled_from([1, 3]),
        ),
        "resource_metrics_key_attributes": st.lists(st.sampled_from(["service.name", "region"]), max_size=2),
        "aggregation_cardinality_limit": st.sampled_from([0, 1, 3]),
    },
)


def _valid_config(raw: dict[str, Any]) -> SpanMetricsConfig | None:
    try:
        return SpanMetricsConfig.model_validate(raw)
    except ValueError:
        return None  # a dimension list upstream refuses (a name twice): not this test's subject


def _twins(config: SpanMetricsConfig) -> tuple[SpanMetricsProcessor, SpanMetricsProcessor]:
    clock = FakeClock()
    return (
        SpanMetricsProcessor(config, clock=clock, uniform=random.Random(7).random),
        SpanMetricsProcessor(config, clock=clock, uniform=random.Random(7).random),
    )


@needs_native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, batches=st.lists(requests, min_size=1, max_size=3))
def test_random_spans_and_configurations_give_identical_deltas(
    config: dict[str, Any], batches: list[ExportTraceServiceRequest]
) -> None:
    parsed = _valid_config(config)
    if parsed is None:
        return
    pure, compiled = _twins(parsed)
    assert compiled.native_ready
    for request in batches:
        data = request.SerializeToString()
        assert compiled.scan(data) is not None, "well-formed spans must be handled natively"
        assert consume_native(compiled, data, "t") == pure.consume(request, "t")
    assert same_deltas(compiled.take_deltas(), pure.take_deltas())


# ------------------------------------------------------------------------------ repeated span keys


def _repeated_request(count: int, trace_state: str, method: AnyValue) -> ExportTraceServiceRequest:
    """``count`` spans of one shape (one raw key), durations 1 ms apart."""
    spans_ = [
        Span(
            trace_id=(n + 1).to_bytes(16, "big"),
            span_id=(n + 1).to_bytes(8, "big"),
            name="GET /",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=BASE_NS,
            end_time_unix_nano=BASE_NS + (n + 1) * 1_000_000 + 333,
            attributes=[KeyValue(key="http.method", value=method)],
            trace_state=trace_state,
        )
        for n in range(count)
    ]
    resource = {"attributes": [KeyValue(key="service.name", value=AnyValue(string_value="svc"))]}
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans_)])]
    )


@needs_native
@pytest.mark.parametrize(
    "config",
    [
        {"dimensions": ["http.method"]},
        {"dimensions": ["http.method"], "calls_dimensions": ["region"]},
        {"dimensions": ["http.method"], "exemplars": {"enabled": True, "max_per_data_point": 2}},
        {"dimensions": ["http.method"], "histogram": {"exponential": {"max_size": 10}}},
        {"dimensions": ["http.method"], "histogram": {"disable": True}},
        {"dimensions": ["http.method"], "aggregation_cardinality_limit": 1},
    ],
)
def test_repeated_span_keys_accumulate_as_the_pure_path(config: dict[str, Any]) -> None:
    """Spans whose raw key was counted before add up in C (per series, sums in span order): the
    same counts, buckets, sums (to the bit), exemplars and stats as the pure path, across runs,
    with sampling weights, and with a key spelled two ways (string and int) for one series."""
    pure, compiled = _twins(SpanMetricsConfig.model_validate(config))
    requests_ = [
        _repeated_request(40, "", AnyValue(string_value="200")),
        _repeated_request(30, "ot=th:8", AnyValue(string_value="200")),  # weight 2
        _repeated_request(20, "", AnyValue(int_value=200)),  # the same key string, other bytes
        _repeated_request(10, "ot=th:c", AnyValue(string_value="404")),  # weight 4
    ]
    for request in requests_ * 2:
        data = request.SerializeToString()
        assert compiled.scan(data) is not None
        assert consume_native(compiled, data, "t") == pure.consume(request, "t")
    assert same_deltas(compiled.take_deltas(), pure.take_deltas())


# ------------------------------------------------------------------------------ runs across calls

#: Resources runs draw from, so that they repeat within and across runs: two spell one
#: resource_id two ways (they differ outside the key attributes), one has no service name.
_POOL = [
    [KeyValue(key="service.name", value=AnyValue(string_value="a"))],
    [KeyValue(key="service.name", value=AnyValue(string_value="b"))],
    [
        KeyValue(key="service.name", value=AnyValue(string_value="a")),
        KeyValue(key="host", value=AnyValue(string_value="h1")),
    ],
    [KeyValue(key="region", value=AnyValue(string_value="eu"))],
    [KeyValue(key="service.name", value=AnyValue(string_value="c"))],
]
#: Few span shapes (raw keys repeat, so most spans add up in C), random durations.
_run_spans = st.lists(
    st.builds(
        lambda name, kind, method, duration: Span(
            trace_id=b"\x01" * 16,
            span_id=b"\x02" * 8,
            name=name,
            kind=kind,  # type: ignore[arg-type]
            start_time_unix_nano=BASE_NS,
            end_time_unix_nano=BASE_NS + duration,
            attributes=[KeyValue(key="http.method", value=AnyValue(string_value=method))],
        ),
        st.just("a"),
        st.sampled_from([1, 2]),
        st.sampled_from(["GET", "POST"]),
        st.integers(min_value=0, max_value=3 * 10**9),
    ),
    max_size=4,
)
_run = st.lists(
    st.tuples(st.integers(min_value=0, max_value=len(_POOL) - 1), _run_spans), min_size=1, max_size=6
)


def _pooled_request(parts: list[tuple[int, list[Span]]]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(resource={"attributes": _POOL[index]}, scope_spans=[ScopeSpans(spans=spans_)])
            for index, spans_ in parts
        ]
    )


@needs_native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cache_size=st.integers(min_value=1, max_value=4),
    key_attributes=st.sampled_from([[], ["service.name"]]),
    steps=st.lists(
        st.tuples(_run, st.sampled_from(["native", "native", "pure", "take"])), min_size=1, max_size=8
    ),
)
def test_runs_across_calls_keep_the_pure_paths_cache_order_and_sums(
    cache_size: int, key_attributes: list[str], steps: list[tuple[list[tuple[int, list[Span]]], str]]
) -> None:
    """Runs with repeated resources, through the compiled fold, the pure path (a record the
    scanner declines) and hand-overs, the clock moving between runs: after every run the
    resource cache holds the same resources in the same LRU order as the pure path's (one
    look-up per distinct resource when all are cached), and the deltas are the same to the bit
    and the nanosecond (the fold's additions stay in C across runs, applied before the pure path
    or a hand-over reads a series, each series' ``last_ns`` the clock of the last run adding to it)."""
    config = SpanMetricsConfig.model_validate(
        {
            "dimensions": ["http.method"],
            "resource_metrics_cache_size": cache_size,
            "resource_metrics_key_attributes": key_attributes,
        }
    )
    clock = FakeClock()
    pure = SpanMetricsProcessor(config, clock=clock)
    compiled = SpanMetricsProcessor(config, clock=clock)
    for parts, how in steps:
        clock.advance(0.25)
        request = _pooled_request(parts)
        if how == "native":
            scanned = compiled.scan(request.SerializeToString())
            assert scanned is not None
            assert compiled.consume_scanned(scanned, "t") == pure.consume(request, "t")
        elif how == "pure":
            assert compiled.consume(request, "t") == pure.consume(request, "t")
        else:
            assert same_deltas(compiled.take_deltas(), pure.take_deltas())
        assert list(compiled._resources) == list(pure._resources)
    assert same_deltas(compiled.take_deltas(), pure.take_deltas())


# ------------------------------------------------------------------------------ mutated records

_SETTINGS = Settings(
    spanmetrics={
        "dimensions": [{"name": "http.method", "default": "GET"}, "code", "region"],
        "calls_dimensions": ["peer"],
        "exemplars": {"enabled": True},
        "aggregation_cardinality_limit": 50,
    }
)


def _seed_records(rng: random.Random) -> list[bytes]:
    """Realistic records: a few resources, spans with ids, typed attributes, events and links."""
    records = []
    for index in range(12):
        request = ExportTraceServiceRequest()
        for r in range(rng.randint(1, 3)):
            rs = request.resource_spans.add()
            rs.resource.attributes.add(key="service.name").value.string_value = f"svc-{r}"
            rs.resource.attributes.add(key="region").value.int_value = r
            scope = rs.scope_spans.add()
            scope.scope.name = "lib"
            for s in range(rng.randint(1, 6)):
                span = scope.spans.add(
                    trace_id=rng.randbytes(16),
                    span_id=rng.randbytes(8),
                    name=f"op-{s % 3}",
                    kind=s % 4,  # type: ignore[arg-type]
                    start_time_unix_nano=BASE_NS,
                    end_time_unix_nano=BASE_NS + rng.randint(0, 10**9),
                    trace_state="ot=th:8" if s == 2 else "",
                )
                span.status.code = s % 3  # type: ignore[assignment]
                span.attributes.add(key="http.method").value.string_value = "POST"
                span.attributes.add(key="code").value.int_value = 200 + index
                span.attributes.add(key="peer").value.double_value = 1.5
                span.events.add(name="e").attributes.add(key="k").value.bool_value = True
                span.links.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8))
        records.append(request.SerializeToString())
    return records


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        choice = rng.randrange(5)
        if not buffer:
            break
        at = rng.randrange(len(buffer))
        if choice == 0:  # a bit flip
            buffer[at] ^= 1 << rng.randrange(8)
        elif choice == 1:  # truncation
            del buffer[at:]
        elif choice == 2:  # a length (or any byte) set to something large or small
            buffer[at] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF])
        elif choice == 3:  # bytes inserted
            buffer[at:at] = rng.randbytes(rng.randint(1, 4))
        else:  # a run deleted
            del buffer[at : at + rng.randint(1, 8)]
    return bytes(buffer)


@needs_native
@pytest.mark.parametrize("seed", [17 + n for n in range(SCALE)])
def test_mutated_records_give_identical_deltas_or_go_to_the_pure_path(seed: int) -> None:
    """The production entry point (Pipeline.decode): the same OtlpDecodeError verdicts, the same
    deltas; and the scanner alone never raises or crashes on the mutants."""
    rng = random.Random(seed)
    seeds = _seed_records(rng)
    clock = FakeClock()
    compiled = Pipeline(_SETTINGS, clock=clock)
    pure = Pipeline(_SETTINGS, clock=clock)
    assert compiled.ingest_path == "native"
    assert compiled.spanmetrics is not None
    outcomes = {"native": 0, "declined": 0, "undecodable": 0}
    for round_ in range(4000):
        # A run of records as the worker joins them, one of them mutated.
        run = [rng.choice(seeds) for _ in range(rng.randint(1, 3))]
        run[rng.randrange(len(run))] = _mutate(rng, run[-1])
        data = b"".join(run)
        compiled.spanmetrics.scan(data)  # never raises, whatever the bytes
        try:
            expected = decode_spans_proto(data)
        except OtlpDecodeError:
            with pytest.raises(OtlpDecodeError):
                compiled.decode(data)
            outcomes["undecodable"] += 1
            continue
        decoded = compiled.decode(data)
        outcomes["native" if isinstance(decoded, NativeRun) else "declined"] += 1
        assert compiled.consume_decoded(decoded, "t") == pure.consume(
            expected.batch, "t", groups=expected.groups
        )
        if round_ % 50 == 0:
            assert same_deltas(compiled.take_deltas(), pure.take_deltas())
    assert same_deltas(compiled.take_deltas(), pure.take_deltas())
    assert outcomes["native"] > 500 and outcomes["declined"] > 5, outcomes


# ------------------------------------------------------------------------------ coverage and loading


def test_no_extensions_env_forces_the_pure_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.NO_EXTENSIONS_ENV, "1")
    assert native.load() is None


@needs_native
@pytest.mark.parametrize(
    ("spanmetrics", "reason"),
    [
        ({"events": {"enabled": True, "dimensions": ["exception.type"]}}, "events"),
        ({"dimensions": [{"glob": "http.*"}]}, "glob dimensions"),
        ({"include_instrumentation_scope": ["lib"]}, "include_instrumentation_scope"),
        ({"enable_metrics_sampling_method": True}, "enable_metrics_sampling_method"),
    ],
)
def test_options_the_scanner_lacks_keep_span_metrics_pure(spanmetrics: dict[str, Any], reason: str) -> None:
    pipeline = Pipeline(Settings(spanmetrics=spanmetrics))
    assert (pipeline.ingest_path, pipeline.native_unsupported) == ("pure", [reason])


@needs_native
def test_service_graphs_run_pure_beside_native_span_metrics() -> None:
    """With an option the edge scanner lacks, the service graphs read protobuf's decode."""
    clock = FakeClock()
    settings_ = Settings(servicegraphs={"enabled": True, "span_multiplier_key": "ratio"})
    compiled, pure = Pipeline(settings_, clock=clock), Pipeline(settings_, clock=clock)
    assert (compiled.ingest_path, compiled.edges_path) == ("native", "pure")
    data = _seed_records(random.Random(3))[0]
    decoded = compiled.decode(data)
    assert isinstance(decoded, NativeRun) and decoded.decoded is not None and decoded.edges is None
    expected = decode_spans_proto(data)
    assert compiled.consume_decoded(decoded, "t") == pure.consume(expected.batch, "t", groups=expected.groups)
    assert same_deltas(compiled.take_deltas(), pure.take_deltas())
    tempo = Settings(metrics_generator={"processors": ["span-metrics"]})
    assert Pipeline(tempo).native_unsupported == ["metrics_generator mode"]
