"""The service graphs' compiled edge scan against the pure path: identical stats, deltas and
pending edges, or "not handled".

Every other service-graph test also runs through both (``helpers.TwinProcessor``); here random
traces and configurations (hypothesis) and a seeded corpus of mutated records through the
worker's entry point (``Pipeline.decode``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from tests.unit.processors.servicegraphs.helpers import TwinProcessor
from tests.unit.processors.spanmetrics.helpers import BASE_NS, FakeClock, same_deltas
from tests.unit.processors.spanmetrics.test_native import SCALE, _mutate, any_values, needs_native
from worker.config import ServiceGraphsConfig, Settings
from worker.model.errors import OtlpDecodeError
from worker.otlp.decode import decode_spans_proto
from worker.processors.pipeline import NativeRun, Pipeline
from worker.processors.servicegraphs import ServiceGraphsProcessor
from worker.processors.servicegraphs import processor as servicegraphs_processor
from worker.processors.servicegraphs.pending import Edge, encode_pending

#: The attributes the processor reads, and one it never does.
NAMES = [
    "peer.service",
    "db.name",
    "db.system",
    "db.namespace",
    "server.address",
    "network.peer.address",
    "network.peer.port",
    "messaging.system",
    "http.method",
    "other",
]

#: Mostly plain names (peers, servers, virtual nodes), else any value.
attribute_values = st.one_of(
    st.sampled_from(["peer-a", "peer-b", "10.0.0.1", ""]).map(lambda text: AnyValue(string_value=text)),
    any_values,
)
attributes = st.lists(
    st.builds(lambda k, v: KeyValue(key=k, value=v), st.sampled_from(NAMES), attribute_values), max_size=5
)
spans = st.builds(
    lambda trace, span, parent, kind, status, start, duration, attrs: Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=span.to_bytes(8, "big"),
        parent_span_id=b"" if parent is None else parent.to_bytes(8, "big"),
        name="op",
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=BASE_NS + start,
        end_time_unix_nano=BASE_NS + start + duration,
        attributes=attrs,
        status=Status(code=status),  # type: ignore[arg-type]
    ),
    # Few traces and span ids, so that clients and servers pair, repeat and collide.
    trace=st.integers(min_value=1, max_value=3),
    span=st.integers(min_value=1, max_value=6),
    parent=st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
    kind=st.integers(min_value=0, max_value=6),
    status=st.integers(min_value=0, max_value=3),
    start=st.integers(min_value=0, max_value=10**9),
    duration=st.one_of(st.integers(min_value=-(10**6), max_value=3 * 10**9)),
    attrs=attributes,
)
resources = st.builds(
    lambda service, attrs: [
        *([] if service is None else [KeyValue(key="service.name", value=service)]),
        *attrs,
    ],
    st.one_of(st.none(), any_values),
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

configs = st.fixed_dictionaries(
    {"enabled": st.just(True)},
    optional={
        "dimensions": st.lists(st.sampled_from(["http.method", "db.system", "other", "region"]), max_size=2),
        "enable_client_server_prefix": st.booleans(),
        "peer_attributes": st.lists(st.sampled_from(NAMES[:6]), max_size=3, unique=True),
        "database_name_attributes": st.lists(st.sampled_from(NAMES[:4]), max_size=2, unique=True),
        "enable_virtual_node_label": st.booleans(),
        "enable_messaging_system_latency_histogram": st.booleans(),
        "generate_native_histograms": st.sampled_from(["classic", "native", "both"]),
        "max_items": st.sampled_from([2, 10000]),
    },
)


@needs_native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=configs,
    batches=st.lists(st.tuples(requests, st.integers(min_value=0, max_value=1)), min_size=1, max_size=4),
)
def test_random_traces_and_configurations_give_identical_results(
    config: dict[str, Any], batches: list[tuple[ExportTraceServiceRequest, int]]
) -> None:
    clock = FakeClock()
    twin = TwinProcessor(ServiceGraphsConfig.model_validate(config), clock)
    assert twin.native is not None
    for request, partition in batches:
        assert twin.native.scan(request.SerializeToString()) is not None, "well-formed spans are handled"
        twin.consume(request, "t", partition)  # compares the stats
        twin.pending_count(partition)
        twin.export_pending(partition)
    twin.take_deltas()
    twin.expire(clock.advance(60))
    twin.take_deltas()
    twin.expired_edges  # noqa: B018 - compared by the twin
    twin.new_edges  # noqa: B018


@needs_native
def test_many_distinct_attribute_values_each_read_as_themselves() -> None:
    """The observe keeps recent attribute strings by a hash of their bytes (``EdgeContext``'s
    string slots): thousands of distinct peer and server values of one length, many sharing a
    slot, a database client's server beside them, each still reads as itself (virtual nodes
    and database edges named as the pure path names them)."""
    clock = FakeClock()
    twin = TwinProcessor(ServiceGraphsConfig.model_validate({"enabled": True}), clock)
    resource = {"attributes": [KeyValue(key="service.name", value=AnyValue(string_value="api"))]}
    for round_ in range(4):
        spans_ = []
        for n in range(1000):
            attrs = [
                KeyValue(
                    key="peer.service", value=AnyValue(string_value=f"peer-{(n * 7919 + round_) % 3000:04d}")
                )
            ]
            if n % 3 == 0:
                attrs = [
                    KeyValue(key="db.namespace", value=AnyValue(string_value=f"db-{n % 1500:04d}")),
                    KeyValue(
                        key="server.address", value=AnyValue(string_value=f"host-{(n + round_) % 2500:04d}")
                    ),
                ]
            spans_.append(
                Span(
                    trace_id=(round_ * 1000 + n + 1).to_bytes(16, "big"),
                    span_id=(n + 1).to_bytes(8, "big"),
                    name="call",
                    kind=Span.SPAN_KIND_CLIENT,
                    start_time_unix_nano=BASE_NS,
                    end_time_unix_nano=BASE_NS + 1000 * (n + 1),
                    attributes=attrs,
                )
            )
        request = ExportTraceServiceRequest(
            resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans_)])]
        )
        twin.consume(request, "t", 0)  # compares the stats
    twin.expire(clock.advance(60))
    twin.take_deltas()  # compares the deltas


# ------------------------------------------------------------------------------ state over time

#: Operations on both processors: consume a request (on the native one through the edge scan, or
#: through its pure path when the flag says so: both share its pending edges), let time pass and
#: expire, hand the deltas over, hand a partition's pending edges over (export, drop, restore,
#: as at a checkpoint and a rebalance), or restore an edge another configuration exported with a
#: span multiplier.
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("consume"), requests, st.integers(0, 1), st.sampled_from(["t", "u"]), st.booleans()
        ),
        st.tuples(st.just("expire"), st.integers(0, 12)),
        st.tuples(st.just("take")),
        st.tuples(st.just("handover"), st.integers(0, 1), st.integers(0, 1)),
        st.tuples(st.just("multiplier"), st.integers(1, 3), st.integers(1, 6), st.integers(0, 1)),
    ),
    min_size=1,
    max_size=14,
)


def _multiplier_blob(trace: int, span: int, now_ns: int) -> bytes:
    """An export of one waiting client side with a multiplier of 2 (a span-multiplier worker's)."""
    edge = Edge(now_ns + 5 * 10**9)
    edge.client = "elsewhere"
    edge.client_seconds = 0.25
    edge.multiplier = 2.0
    edge.span_kind = 3
    key = (trace.to_bytes(16, "big"), span.to_bytes(8, "big"))
    return encode_pending([("t", [(key, edge)], [])], now_ns)


@needs_native
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=configs.map(lambda c: {**c, "max_items": c.get("max_items", 3) % 4 + 1}),
    steps=operations,
)
def test_pending_edges_expiry_handover_and_limits_stay_identical(
    config: dict[str, Any], steps: list[tuple[Any, ...]]
) -> None:
    """Half-edges kept by the compiled observe (its own Edge class, its accumulators) against the
    pure processor over time: eviction and expiry order, ``max_items`` across partitions and
    tenants, dropped and expired counters, export and restore across a checkpoint."""
    clock = FakeClock()
    parsed = ServiceGraphsConfig.model_validate(config)
    pure = ServiceGraphsProcessor(parsed, clock=clock, compiled=False)
    native = ServiceGraphsProcessor(parsed, clock=clock)
    assert native.native_ready

    def same(name: str, *args: Any) -> None:
        expected = getattr(pure, name)(*args)
        assert repr(getattr(native, name)(*args)) == repr(expected), name

    for step in steps:
        if step[0] == "consume":
            _, request, partition, tenant, through_pure = step
            expected = pure.consume(request, tenant, partition)
            if through_pure:
                got = native.consume(request, tenant, partition)
            else:
                scanned = native.scan(request.SerializeToString())
                assert scanned is not None
                got = native.consume_scanned(scanned, tenant, partition)
            assert got == expected
        elif step[0] == "expire":
            now = clock.advance(step[1])
            pure.expire(now)
            native.expire(now)
        elif step[0] == "take":
            same("take_deltas")
        elif step[0] == "handover":
            _, source, target = step
            blob = pure.export_pending(source)
            assert native.export_pending(source) == blob
            pure.drop_partition(source)
            native.drop_partition(source)
            clock.advance(1)
            same("restore_pending", target, blob, clock())
        else:
            _, trace, span, partition = step
            same("restore_pending", partition, _multiplier_blob(trace, span, clock()), clock())
        for partition in (0, 1):
            same("pending_count", partition)
    for partition in (0, 1):
        same("export_pending", partition)
    same("take_deltas")
    now = clock.advance(60)
    pure.expire(now)
    native.expire(now)
    same("take_deltas")
    for counter in ("expired_edges", "new_edges", "dropped_edges", "marker_overflows"):
        assert getattr(native, counter) == getattr(pure, counter), counter


#: Byte sequences at the edges of UTF-8: overlong forms, surrogates, beyond U+10FFFF, truncated.
_EDGES = [b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xe0\x80\x80", b"\xe0\xa0\x80", b"\xed\x9f\xbf"]
_EDGES += [b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xee\x80\x80", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80"]
_EDGES += [b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xe2\x82", b"\xf0\x9f\x98"]
#: A peer attribute's value bytes: text of any code point (surrogates too), any bytes, or one of
#: the sequences above between ASCII; one byte overwritten or not.
_TEXT_SIZE = 12
value_bytes = st.one_of(
    st.text(st.characters(exclude_categories=()), min_size=_TEXT_SIZE).map(
        lambda text: text.encode("utf-8", "surrogatepass")[:_TEXT_SIZE]
    ),
    st.binary(min_size=_TEXT_SIZE, max_size=_TEXT_SIZE),
    st.builds(
        lambda before, edge: (b"a" * before + edge).ljust(_TEXT_SIZE, b"z")[:_TEXT_SIZE],
        st.integers(0, 8),
        st.sampled_from(_EDGES),
    ),
).filter(lambda raw: len(raw) == _TEXT_SIZE)


@needs_native
@settings(max_examples=500, deadline=None)
@given(raw=value_bytes, at=st.integers(0, _TEXT_SIZE - 1), byte=st.one_of(st.none(), st.integers(0, 255)))
def test_the_edge_scan_reads_exactly_the_strings_python_decodes(
    raw: bytes, at: int, byte: int | None
) -> None:
    """The scan checks string values in C (overlong forms, surrogates, beyond U+10FFFF): it must
    decline exactly the bytes Python's strict UTF-8 decoder refuses, and read the others."""
    if byte is not None:
        raw = raw[:at] + bytes([byte]) + raw[at + 1 :]
    processor = ServiceGraphsProcessor(ServiceGraphsConfig(enabled=True))
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, kind=Span.SPAN_KIND_CLIENT)
    span.attributes.add(key="peer.service").value.string_value = "@" * _TEXT_SIZE
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )
    data = request.SerializeToString()
    data = data.replace(b"@" * _TEXT_SIZE, raw)
    try:
        raw.decode()
        decodes = True
    except UnicodeDecodeError:
        decodes = False
    assert (processor.scan(data) is not None) == decodes


# ------------------------------------------------------------------------------ mutated records

_SETTINGS = Settings(
    spanmetrics={"dimensions": ["http.method"], "exemplars": {"enabled": True}},
    servicegraphs={"enabled": True, "dimensions": ["http.method"], "enable_virtual_node_label": True},
)


def _seed_records(rng: random.Random) -> list[bytes]:
    """Realistic records: client and server spans of shared traces, peer and database attributes."""
    records = []
    for index in range(12):
        request = ExportTraceServiceRequest()
        trace = rng.randbytes(16)
        for r in range(rng.randint(1, 3)):
            rs = request.resource_spans.add()
            rs.resource.attributes.add(key="service.name").value.string_value = f"svc-{r}"
            scope = rs.scope_spans.add()
            scope.scope.name = "lib"
            for s in range(rng.randint(1, 6)):
                span = scope.spans.add(
                    trace_id=trace,
                    span_id=(r * 10 + s + 1).to_bytes(8, "big"),
                    parent_span_id=((r - 1) * 10 + s + 1).to_bytes(8, "big") if r else b"",
                    name=f"op-{s % 3}",
                    kind=(Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER, Span.SPAN_KIND_INTERNAL)[s % 3],
                    start_time_unix_nano=BASE_NS,
                    end_time_unix_nano=BASE_NS + rng.randint(0, 10**9),
                )
                span.status.code = s % 3  # type: ignore[assignment]
                span.attributes.add(key="http.method").value.string_value = "POST"
                if s % 2:
                    span.attributes.add(key="peer.service").value.string_value = f"peer-{index}"
                    span.attributes.add(key="db.system").value.int_value = index
                span.events.add(name="e").attributes.add(key="k").value.bool_value = True
        records.append(request.SerializeToString())
    return records


@needs_native
@pytest.mark.parametrize("seed", [29 + n for n in range(SCALE)])
def test_mutated_records_give_identical_results_or_go_to_the_pure_path(seed: int) -> None:
    """The production entry point: the same OtlpDecodeError verdicts, stats, deltas and pending
    edges; and the edge scanner alone never raises or crashes on the mutants."""
    rng = random.Random(seed)
    seeds = _seed_records(rng)
    clock = FakeClock()
    compiled = Pipeline(_SETTINGS, clock=clock)
    with pytest.MonkeyPatch.context() as patch:
        # The reference: service graphs without the extension (its edges, its expiry).
        patch.setattr(servicegraphs_processor, "_NATIVE", None)
        pure = Pipeline(_SETTINGS, clock=clock)
    assert pure.servicegraphs is not None and not pure.servicegraphs.native_ready
    assert (compiled.ingest_path, compiled.edges_path) == ("native", "native")
    assert compiled.servicegraphs is not None and pure.servicegraphs is not None
    outcomes = {"native": 0, "declined": 0, "undecodable": 0}
    for round_ in range(3000):
        run = [rng.choice(seeds) for _ in range(rng.randint(1, 3))]
        run[rng.randrange(len(run))] = _mutate(rng, run[-1])
        data = b"".join(run)
        compiled.servicegraphs.scan(data)  # never raises, whatever the bytes
        partition = round_ % 2
        try:
            expected = decode_spans_proto(data)
        except OtlpDecodeError:
            with pytest.raises(OtlpDecodeError):
                compiled.decode(data)
            outcomes["undecodable"] += 1
            continue
        decoded = compiled.decode(data)
        native = isinstance(decoded, NativeRun) and decoded.edges is not None
        outcomes["native" if native else "declined"] += 1
        assert compiled.consume_decoded(decoded, "t", partition) == pure.consume(
            expected.batch, "t", partition, groups=expected.groups
        )
        if round_ % 50 == 0:
            assert same_deltas(compiled.take_deltas(), pure.take_deltas())
            for one in (0, 1):
                assert compiled.servicegraphs.export_pending(one) == pure.servicegraphs.export_pending(one)
    assert same_deltas(compiled.take_deltas(), pure.take_deltas())
    assert outcomes["native"] > 300 and outcomes["declined"] > 5, outcomes


# ------------------------------------------------------------------------------ coverage


@needs_native
@pytest.mark.parametrize(
    ("servicegraphs", "reason"),
    [
        (
            {
                "filter_policies": [
                    {
                        "include": {
                            "match_type": "strict",
                            "attributes": [{"key": "kind", "value": "SPAN_KIND_SERVER"}],
                        }
                    }
                ]
            },
            "service graphs filter_policies",
        ),
        ({"span_multiplier_key": "X-SampleRatio"}, "service graphs span multiplier"),
        ({"enable_tracestate_span_multiplier": True}, "service graphs span multiplier"),
    ],
)
def test_options_the_edge_scanner_lacks_keep_service_graphs_pure(
    servicegraphs: dict[str, Any], reason: str
) -> None:
    pipeline = Pipeline(Settings(servicegraphs={"enabled": True, **servicegraphs}))
    assert pipeline.ingest_path == "native"
    assert (pipeline.edges_path, pipeline.edges_unsupported) == ("pure", [reason])


def test_service_graphs_off_or_behind_pure_span_metrics() -> None:
    assert Pipeline(Settings()).edges_path == "off"
    glob = Settings(spanmetrics={"dimensions": [{"glob": "http.*"}]}, servicegraphs={"enabled": True})
    assert Pipeline(glob).edges_path == "pure"
    tempo = Settings(metrics_generator={"processors": ["service-graphs"]})
    assert Pipeline(tempo).edges_path == "pure"
