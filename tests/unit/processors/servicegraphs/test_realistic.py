"""Whole traces: a hand-built shop request, and the load generator's traffic model."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devtools.loadgen.model import TraceGenerator, build_model

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    CONSUMER,
    DROPPED,
    ERROR,
    INTERNAL,
    MESSAGING_SECONDS,
    PRODUCER,
    REQUEST_FAILED_TOTAL,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    UNPAIRED,
    Harness,
    make_span,
    resource_spans,
)

VIRTUAL = "virtual_node"


def shop_trace() -> dict[str, list[Span]]:
    """One checkout request, by service; span ids: 1 root, 2x frontend, 3x checkout, 4x others."""
    t = 7
    return {
        "frontend": [
            make_span(
                SERVER,
                trace=t,
                span=1,
                duration_ms=400,
                name="POST /checkout",
                attributes={"http.request.method": "POST", "server.address": "shop.example"},
            ),
            make_span(
                CLIENT,
                trace=t,
                span=21,
                parent=1,
                start_ms=10,
                duration_ms=380,
                name="POST",
                attributes={"http.request.method": "POST", "server.address": "checkout", "server.port": 8080},
            ),
        ],
        "checkout": [
            make_span(
                SERVER,
                trace=t,
                span=30,
                parent=21,
                start_ms=12,
                duration_ms=370,
                status=ERROR,
                name="POST /api/orders",
            ),
            make_span(
                CLIENT,
                trace=t,
                span=31,
                parent=30,
                start_ms=20,
                duration_ms=8,
                name="INSERT shop.orders",
                attributes={
                    "db.system": "postgresql",
                    "db.namespace": "shop",
                    "server.address": "pg-primary",
                    "server.port": 5432,
                },
            ),
            make_span(
                PRODUCER,
                trace=t,
                span=32,
                parent=30,
                start_ms=30,
                duration_ms=2,
                name="orders publish",
                attributes={"messaging.system": "kafka", "messaging.destination.name": "orders"},
            ),
            make_span(
                CLIENT,
                trace=t,
                span=33,
                parent=30,
                start_ms=40,
                duration_ms=300,
                name="POST",
                attributes={"peer.service": "stripe", "server.address": "api.stripe.com"},
            ),
            make_span(
                CLIENT,
                trace=t,
                span=34,
                parent=30,
                start_ms=350,
                duration_ms=20,
                name="GET",
                attributes={"server.address": "legacy.internal"},
            ),
        ],
        "fraud-detection": [
            make_span(
                CONSUMER,
                trace=t,
                span=40,
                parent=32,
                start_ms=52,
                duration_ms=15,
                name="orders process",
                attributes={"messaging.system": "kafka"},
            ),
            make_span(INTERNAL, trace=t, span=41, parent=40, start_ms=55, duration_ms=5, name="score"),
        ],
        "audit": [
            # Its caller (span 99) was never exported: nothing to pair with.
            make_span(SERVER, trace=t, span=50, parent=99, start_ms=60, duration_ms=3, name="POST /audit"),
        ],
    }


@pytest.mark.parametrize("order", ["by_service", "reversed", "one_request"])
def test_shop_trace(order: str) -> None:
    harness = Harness(enable_messaging_system_latency_histogram=True, histogram_buckets=(0.01, 0.1, 1.0))
    trace = shop_trace()
    items = [resource_spans(service, *spans) for service, spans in trace.items()]
    if order == "one_request":
        stats = harness.consume(*items)
        assert stats.spans == 9  # the INTERNAL span does not count
    else:
        for item in items if order == "by_service" else reversed(items):
            harness.consume(item)

    # Recorded as soon as both sides were there: the HTTP hop, the database call, the queue hop.
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "checkout", "server": "pg-primary", "connection_type": "database"},
        {"client": "checkout", "server": "fraud-detection", "connection_type": "messaging_system"},
        {"client": "frontend", "server": "checkout"},
    ]
    assert harness.count(REQUEST_FAILED_TOTAL, client="frontend", server="checkout") == 1
    assert harness.get(SERVER_SECONDS, client="frontend", server="checkout").sum == pytest.approx(0.370)
    assert harness.get(CLIENT_SECONDS, client="frontend", server="checkout").sum == pytest.approx(0.380)
    queue = {"client": "checkout", "server": "fraud-detection", "connection_type": "messaging_system"}
    assert harness.get(MESSAGING_SECONDS, **queue).sum == pytest.approx(0.020)  # 52 ms - (30 + 2) ms
    # Waiting: the root span, the call to stripe, the call to legacy, the orphan audit span.
    assert harness.processor.pending_count() == 4

    harness.expire_after(10)
    assert harness.processor.pending_count() == 0
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "checkout", "server": "pg-primary", "connection_type": "database"},
        {"client": "checkout", "server": "fraud-detection", "connection_type": "messaging_system"},
        {"client": "checkout", "server": "stripe", "connection_type": VIRTUAL},
        {"client": "frontend", "server": "checkout"},
        {"client": "user", "server": "frontend", "connection_type": VIRTUAL},
    ]
    assert harness.label_sets(UNPAIRED) == [{"client": "checkout"}, {"server": "audit"}]
    assert harness.label_sets(DROPPED) == []


# ------------------------------------------------------------------------------ the traffic model

_DATABASE_ATTRIBUTES = ("db.namespace", "db.name", "db.system", "db.system.name")


def _attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        out.setdefault(kv.key, getattr(kv.value, kind) if kind else None)
    return out


def _expected(requests: list[ExportTraceServiceRequest]) -> tuple[Counter, Counter, Counter]:
    """Edges, failed edges and unpaired spans, worked out from whole traces (parent links)."""
    requests_by_edge: Counter = Counter()
    failed_by_edge: Counter = Counter()
    unpaired: Counter = Counter()
    for request in requests:
        spans: dict[bytes, tuple[str, Span, dict[str, Any]]] = {}
        children: dict[bytes, list[bytes]] = {}
        for rs in request.resource_spans:
            service = _attributes(rs.resource.attributes)["service.name"]
            for ss in rs.scope_spans:
                for span in ss.spans:
                    spans[span.span_id] = (service, span, _attributes(span.attributes))
                    children.setdefault(span.parent_span_id, []).append(span.span_id)
        for span_id, (service, span, attributes) in spans.items():
            failed = span.status.code == ERROR
            if span.kind in (CLIENT, PRODUCER):
                database = next((attributes[a] for a in _DATABASE_ATTRIBUTES if a in attributes), None)
                servers = [c for c in children.get(span_id, []) if spans[c][1].kind in (SERVER, CONSUMER)]
                assert len(servers) <= 1, "a model where one client span has one server child"
                if database is not None:
                    name = attributes.get("peer.service") or attributes.get("server.address") or database
                    edge = (service, str(name), "database")
                elif servers:
                    server_service, server_span, _ = spans[servers[0]]
                    kind = "messaging_system" if server_span.kind == CONSUMER else ""
                    edge = (service, server_service, kind)
                    failed = failed or server_span.status.code == ERROR
                elif "peer.service" in attributes:
                    edge = (service, attributes["peer.service"], VIRTUAL)
                else:
                    unpaired[("client", service)] += 1
                    continue
                requests_by_edge[edge] += 1
                failed_by_edge[edge] += failed
            elif span.kind in (SERVER, CONSUMER):
                if not span.parent_span_id:
                    requests_by_edge[("user", service, VIRTUAL)] += 1
                    failed_by_edge[("user", service, VIRTUAL)] += failed
                elif span.parent_span_id not in spans or spans[span.parent_span_id][1].kind not in (
                    CLIENT,
                    PRODUCER,
                ):
                    unpaired[("server", service)] += 1
    return requests_by_edge, failed_by_edge, unpaired


def _observed(harness: Harness, metric: str) -> Counter:
    out: Counter = Counter()
    for (name, labels), series in harness.series().items():
        if name == metric:
            label = dict(labels)
            out[(label["client"], label["server"], label.get("connection_type", ""))] += series.count
    return out


def test_load_generator_traffic() -> None:
    model = build_model(6)
    generator = TraceGenerator(model, seed=11)
    harness = Harness(enable_messaging_system_latency_histogram=True)
    requests = []
    for _ in range(400):
        _, request = generator.trace_request(harness.clock())
        requests.append(request)
        stats = harness.consume(*request.resource_spans)
        assert stats.dropped == 0 and stats.skipped_no_service == 0
        harness.clock.advance(0.01)
    harness.processor.expire_all()
    assert harness.processor.pending_count() == 0

    requests_by_edge = _observed(harness, REQUEST_TOTAL)
    # Every service-to-service edge of the model shows up as a plain or messaging edge.
    seen = {(client, server) for client, server, kind in requests_by_edge if kind in ("", "messaging_system")}
    assert model.edges() <= seen, model.edges() - seen
    assert seen <= model.edges(), seen - model.edges()

    expected_requests, expected_failed, expected_unpaired = _expected(requests)
    assert requests_by_edge == expected_requests
    assert _observed(harness, REQUEST_FAILED_TOTAL) == +expected_failed
    # One root span per trace: every trace is one request from "user".
    assert requests_by_edge[("user", model.entry, VIRTUAL)] == 400
    # Each edge's latency histograms count its requests.
    assert _observed(harness, SERVER_SECONDS) == requests_by_edge
    assert _observed(harness, CLIENT_SECONDS) == requests_by_edge
    # Every queue hop has a positive lag in the model.
    messaging = _observed(harness, MESSAGING_SECONDS)
    assert messaging == Counter({k: v for k, v in requests_by_edge.items() if k[2] == "messaging_system"})
    assert messaging

    unpaired: Counter = Counter()
    for (name, labels), series in harness.series().items():
        if name == UNPAIRED:
            ((side, service),) = labels
            unpaired[(side, service)] += series.count
    assert unpaired == expected_unpaired


def test_load_generator_traffic_split_over_partitions_and_moved() -> None:
    """Traces keyed by trace id over 3 partitions, one request per resource; partition 2 changes
    owner after the first half of each of its traces: the new owner pairs the second halves."""
    model = build_model(6)
    generator = TraceGenerator(model, seed=5)
    first, second = Harness(), Harness()
    requests = [generator.trace_request(first.clock())[1] for _ in range(150)]
    later = []
    for number, request in enumerate(requests):
        partition = number % 3
        items = list(request.resource_spans)
        if partition == 2:
            half = len(items) // 2
            items, rest = items[:half], items[half:]
            later.append(rest)
        for item in items:
            first.consume(item, partition=partition)
    moved = first.processor.export_pending(2)
    waiting = first.processor.pending_count(2)
    first.processor.drop_partition(2)
    assert second.processor.restore_pending(2, moved, second.clock()) == waiting > 0
    for rest in later:
        for item in rest:
            second.consume(item, partition=2)
    first.processor.expire_all()
    second.processor.expire_all()
    total = _observed(first, REQUEST_TOTAL) + _observed(second, REQUEST_TOTAL)
    expected_requests, _, _ = _expected(requests)
    assert total == expected_requests
