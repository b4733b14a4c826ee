"""The load generator's traffic model: determinism, trace shape, timing, errors and grouping."""

from __future__ import annotations

import statistics
from collections import Counter
from functools import cache

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from devtools.loadgen.model import (
    MAX_SERVICES,
    NAMED_SERVICES,
    TraceGenerator,
    TrafficModel,
    build_model,
)
from worker.model.errors import ConfigError

NOW = 1_700_000_000_000_000_000
SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
PRODUCER = Span.SpanKind.SPAN_KIND_PRODUCER
CONSUMER = Span.SpanKind.SPAN_KIND_CONSUMER
ERROR = Status.StatusCode.STATUS_CODE_ERROR

Trace = list[tuple[str, Span]]  # (service.name, span)


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


def resource_attrs(resource: object) -> dict[str, object]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in resource.attributes}  # type: ignore[attr-defined]


@cache
def traces(services: int, count: int, seed: int = 3) -> tuple[Trace, ...]:
    gen = TraceGenerator(build_model(services=services, seed=seed))
    names: dict[int, str] = {}  # resources are shared objects, so look each up once
    out: list[Trace] = []
    for _ in range(count):
        trace: Trace = []
        for resource, _, span in gen.next_trace(NOW):
            name = names.get(id(resource))
            if name is None:
                name = names[id(resource)] = str(resource_attrs(resource)["service.name"])
            trace.append((name, span))
        out.append(trace)
    return tuple(out)


# -- model ---------------------------------------------------------------------------------------


def test_default_model_is_the_classic_shop() -> None:
    model = build_model()
    assert model == TrafficModel()
    assert model.service_names == ("frontend", "checkout", "payment", "inventory", "shipping", "email")
    assert model.entry == "frontend"
    edges = model.edges()
    assert {("frontend", "checkout"), ("checkout", "payment"), ("checkout", "inventory")} <= edges
    assert {("checkout", "shipping"), ("shipping", "email")} <= edges


def test_model_is_deterministic_for_a_seed() -> None:
    assert build_model(services=30, seed=5).topology == build_model(services=30, seed=5).topology
    assert build_model(services=30, seed=5).topology != build_model(services=30, seed=6).topology


@pytest.mark.parametrize("services", [2, 3, 6, 15, 16, 20, 37, MAX_SERVICES])
def test_topology_has_the_requested_services_and_is_acyclic(services: int) -> None:
    model = build_model(services=services)
    names = model.service_names
    assert len(names) == len(set(names)) == services
    named = min(services, len(NAMED_SERVICES))
    assert names[:named] == NAMED_SERVICES[:named]
    assert names[named:] == tuple(f"svc-{i}" for i in range(named, services))
    graph: dict[str, set[str]] = {}
    for caller, callee in model.edges():
        assert callee in names and caller != callee
        graph.setdefault(caller, set()).add(callee)
    state: dict[str, int] = {}

    def visit(node: str) -> None:  # depth-first search for a back edge
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"cycle through {node} -> {nxt}"
            if nxt not in state:
                visit(nxt)
        state[node] = 2

    for node in names:
        if node not in state:
            visit(node)
    for svc in model.topology:
        assert svc.operations, svc.name
        assert 1 <= len(svc.instances) <= 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"services": 1}, "services"),
        ({"services": 51}, "services"),
        ({"error_rate": -0.1}, "error_rate"),
        ({"error_rate": 0.9}, "error_rate"),
    ],
)
def test_invalid_parameters_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(**kwargs)  # type: ignore[arg-type]


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes() -> None:
    model = build_model(services=20, seed=11)
    a, b = TraceGenerator(model), TraceGenerator(build_model(services=20, seed=11))
    for _ in range(50):
        key_a, req_a = a.trace_request(NOW)
        key_b, req_b = b.trace_request(NOW)
        assert key_a == key_b
        assert req_a.SerializeToString() == req_b.SerializeToString()
    assert a.batch_request(20, NOW).SerializeToString() == b.batch_request(20, NOW).SerializeToString()


def test_generator_seed_overrides_model_seed() -> None:
    model = build_model(seed=1)
    same = TraceGenerator(model).trace_request(NOW)[1].SerializeToString()
    assert TraceGenerator(model, seed=1).trace_request(NOW)[1].SerializeToString() == same
    assert TraceGenerator(model, seed=2).trace_request(NOW)[1].SerializeToString() != same


# -- trace shape ---------------------------------------------------------------------------------


@pytest.mark.parametrize("services", [2, 6, 20, MAX_SERVICES])
def test_call_tree_structure(services: int) -> None:
    kinds: Counter[int] = Counter()
    for trace in traces(services, 400):
        by_id = {span.span_id: (svc, span) for svc, span in trace}
        assert len(by_id) == len(trace), "span ids are unique within a trace"
        roots = [span for _, span in trace if not span.parent_span_id]
        assert len(roots) == 1 and roots[0].kind == SERVER
        assert trace[0][1] is roots[0] and trace[0][0] == "frontend"
        trace_id = roots[0].trace_id
        for svc, span in trace:
            kinds[span.kind] += 1
            assert span.trace_id == trace_id and len(trace_id) == 16 and len(span.span_id) == 8
            if span is roots[0]:
                continue
            parent_svc, parent = by_id[span.parent_span_id]
            if span.kind == SERVER:
                assert parent.kind == CLIENT
                assert parent_svc != svc
            elif span.kind == CONSUMER:
                assert parent.kind == PRODUCER
                assert parent_svc != svc
            else:  # client, producer and internal spans hang off a span of their own service
                assert parent_svc == svc
                assert parent.kind in (SERVER, CONSUMER)
    assert kinds[SERVER] and kinds[CLIENT]
    if services >= 5:
        assert kinds[PRODUCER] and kinds[CONSUMER] and kinds[Span.SpanKind.SPAN_KIND_INTERNAL]


@pytest.mark.parametrize("services", [6, 20])
def test_database_client_spans(services: int) -> None:
    systems: Counter[str] = Counter()
    new, legacy = 0, 0
    for trace in traces(services, 400):
        for _, span in trace:
            a = attrs(span)
            if not any(k.startswith("db.") for k in a):
                continue
            assert span.kind == CLIENT
            assert a["db.system"] in ("postgresql", "redis")
            assert isinstance(a["server.address"], str) and a["server.address"]
            assert "db.namespace" in a or "db.name" in a
            new += "db.namespace" in a
            legacy += "db.name" in a
            systems[str(a["db.system"])] += 1
    assert systems["postgresql"] > 0 and systems["redis"] > 0
    if services >= 6:
        assert new > 0 and legacy > 0


def test_messaging_and_rpc_attributes() -> None:
    seen_producer = seen_consumer = seen_http_client = seen_rpc_client = False
    for trace in traces(20, 400):
        for _, span in trace:
            a = attrs(span)
            if span.kind in (PRODUCER, CONSUMER):
                assert a["messaging.system"] == "kafka"
                assert a["messaging.destination.name"] in ("orders", "shipments")
                seen_producer |= span.kind == PRODUCER
                seen_consumer |= span.kind == CONSUMER
            if span.kind == CONSUMER:
                assert isinstance(a["messaging.kafka.offset"], int)
            if span.kind == CLIENT and "http.request.method" in a:
                assert isinstance(a["http.response.status_code"], int)
                assert "server.address" in a and ("url.path" in a)
                seen_http_client = True
            if span.kind == CLIENT and "rpc.method" in a:
                assert a["rpc.system"] == "grpc" and "server.address" in a
                seen_rpc_client = True
            if span.kind == SERVER and "http.request.method" in a:
                assert isinstance(a["http.response.status_code"], int)
                assert "url.path" in a and "http.route" in a
                if not span.parent_span_id:  # browsers send a user agent (.NET's HttpClient does not)
                    assert "user_agent.original" in a
    assert seen_producer and seen_consumer and seen_http_client and seen_rpc_client


def test_about_six_attributes_per_span_and_peer_service_on_some() -> None:
    counts = [len(span.attributes) for trace in traces(20, 300) for _, span in trace]
    assert min(counts) >= 4
    assert 5.5 <= statistics.mean(counts) <= 8.5
    client_spans = [attrs(span) for trace in traces(20, 300) for _, span in trace if span.kind == CLIENT]
    with_peer = sum("peer.service" in a for a in client_spans)
    assert 0 < with_peer < len(client_spans)


def test_resources() -> None:
    gen = TraceGenerator(build_model(services=20))
    required = {
        "service.name",
        "service.version",
        "service.instance.id",
        "k8s.pod.name",
        "deployment.environment.name",
        "telemetry.sdk.language",
    }
    by_instance: dict[object, object] = {}
    pods_per_service: dict[object, set[object]] = {}
    for _ in range(300):
        for resource, _, _ in gen.next_trace(NOW):
            ra = resource_attrs(resource)
            assert required <= ra.keys()
            assert ra["k8s.pod.name"].startswith(f"{ra['service.name']}-")  # type: ignore[attr-defined]
            # One Resource object per instance, reused across traces.
            assert by_instance.setdefault(ra["service.instance.id"], resource) is resource
            pods_per_service.setdefault(ra["service.name"], set()).add(ra["k8s.pod.name"])
    assert max(len(p) for p in pods_per_service.values()) >= 2


# -- timing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("services", [6, 20])
def test_children_nest_in_parent_window_and_trace_ends_now(services: int) -> None:
    for trace in traces(services, 400):
        by_id = {span.span_id: span for _, span in trace}
        assert max(span.end_time_unix_nano for _, span in trace) == NOW
        root = trace[0][1]
        assert NOW - root.start_time_unix_nano < 120 * 10**9
        for _, span in trace:
            assert span.start_time_unix_nano < span.end_time_unix_nano
            if not span.parent_span_id:
                continue
            parent = by_id[span.parent_span_id]
            if span.kind == CONSUMER:
                assert span.start_time_unix_nano > parent.end_time_unix_nano
            else:
                assert parent.start_time_unix_nano <= span.start_time_unix_nano
                assert span.end_time_unix_nano <= parent.end_time_unix_nano
            for event in span.events:
                assert span.start_time_unix_nano <= event.time_unix_nano <= span.end_time_unix_nano


def test_now_ns_must_be_a_unix_time() -> None:
    with pytest.raises(ValueError, match="now_ns"):
        TraceGenerator(build_model()).next_trace(1_000)


def test_latencies_are_realistic() -> None:
    durations: dict[str, list[float]] = {"redis": [], "postgresql": [], "stripe": [], "all": []}
    for trace in traces(20, 1000):
        for _, span in trace:
            ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
            a = attrs(span)
            durations["all"].append(ms)
            if a.get("db.system") in ("redis", "postgresql"):
                durations[a["db.system"]].append(ms)  # type: ignore[index]
            if a.get("peer.service") == "stripe":
                durations["stripe"].append(ms)
    assert 0.3 < statistics.median(durations["redis"]) < 3
    assert 5 < statistics.median(durations["postgresql"]) < 40
    assert 150 < statistics.median(durations["stripe"]) < 500
    assert max(durations["all"]) > 1000, "occasional multi-second outliers"


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("services", "rate"), [(6, 0.02), (20, 0.02), (20, 0.01), (MAX_SERVICES, 0.03)])
def test_error_rate_is_near_the_configured_rate(services: int, rate: float) -> None:
    gen = TraceGenerator(build_model(services=services, error_rate=rate, seed=9))
    total = errors = propagated = 0
    for _ in range(2000):
        trace = gen.next_trace(NOW)
        by_id = {span.span_id: span for _, _, span in trace}
        for _, _, span in trace:
            total += 1
            if span.status.code == ERROR:
                errors += 1
                parent = by_id.get(span.parent_span_id)
                propagated += parent is not None and parent.status.code == ERROR
    assert 0.6 * rate <= errors / total <= 1.5 * rate
    assert propagated > 0, "errors propagate to parents sometimes"


def test_zero_error_rate_gives_no_errors() -> None:
    gen = TraceGenerator(build_model(services=20, error_rate=0.0))
    for _ in range(200):
        assert all(span.status.code != ERROR for _, _, span in gen.next_trace(NOW))


def test_failed_server_makes_its_client_span_fail_with_the_same_code() -> None:
    gen = TraceGenerator(build_model(services=20, error_rate=0.1))
    checked = 0
    for _ in range(300):
        trace = gen.next_trace(NOW)
        by_id = {span.span_id: span for _, _, span in trace}
        for _, _, span in trace:
            if span.kind == SERVER and span.parent_span_id:
                client = by_id[span.parent_span_id]
                assert (client.status.code == ERROR) == (span.status.code == ERROR)
                a, b = attrs(span), attrs(client)
                for key in ("http.response.status_code", "rpc.grpc.status_code"):
                    assert a.get(key) == b.get(key)
                checked += 1
    assert checked > 100


# -- coverage of services ------------------------------------------------------------------------


def test_twenty_services_all_show_up() -> None:
    names = {svc for trace in traces(20, 2000) for svc, _ in trace}
    assert len(names) == 20


def test_fifty_services_all_show_up() -> None:
    names = {svc for trace in traces(MAX_SERVICES, 800) for svc, _ in trace}
    assert len(names) == MAX_SERVICES


def test_expected_spans_per_trace_matches_generation() -> None:
    for services in (6, 20):
        observed = statistics.mean(len(t) for t in traces(services, 2000))
        expected = build_model(services=services, seed=3).expected_spans_per_trace()
        assert abs(observed - expected) / expected < 0.15


# -- requests ------------------------------------------------------------------------------------


def test_trace_request_groups_by_resource_and_scope() -> None:
    gen = TraceGenerator(build_model(services=20))
    for _ in range(100):
        key, request = gen.trace_request(NOW)
        resources = [rs.resource.SerializeToString() for rs in request.resource_spans]
        assert len(resources) == len(set(resources))
        spans = 0
        for rs in request.resource_spans:
            scopes = [(ss.scope.name, ss.scope.version) for ss in rs.scope_spans]
            assert len(scopes) == len(set(scopes))
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans += 1
                    # The Collector's kafka exporter keys by the trace ID in hex.
                    assert key == span.trace_id.hex().encode()
        assert spans >= 1
        # The request round-trips through the wire format.
        assert type(request).FromString(request.SerializeToString()) == request


def test_batch_request_holds_many_traces_grouped_by_resource() -> None:
    gen = TraceGenerator(build_model(services=20))
    request = gen.batch_request(200, NOW)
    resources = [rs.resource.SerializeToString() for rs in request.resource_spans]
    assert len(resources) == len(set(resources))
    trace_ids = {span.trace_id for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans}
    assert len(trace_ids) == 200
    roots = sum(
        1
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
        if not span.parent_span_id
    )
    assert roots == 200
