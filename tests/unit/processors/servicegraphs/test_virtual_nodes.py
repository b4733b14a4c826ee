"""Virtual nodes and expired edges as Tempo's onExpire decides them, from the spans' own attributes.

The spans of Tempo's fixtures are rebuilt here (same services, kinds, parent links, durations and
attributes), not copied: upstream is modules/generator/processor/servicegraphs/testdata/*.json.
"""

from __future__ import annotations

import pytest

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    CONSUMER,
    PRODUCER,
    REQUEST_FAILED_TOTAL,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    TENANT,
    UNPAIRED,
    Harness,
    make_span,
    resource_spans,
)

VIRTUAL = "virtual_node"
MS_PER_NS = 1e-6


def virtual_nodes_trace() -> list:
    """testdata/trace-with-virtual-nodes.json: a root SERVER span with no peer attribute, a CLIENT
    span (child of it) calling an uninstrumented peer, and a root CONSUMER span fed from outside."""
    return [
        resource_spans(
            "mythical-server",
            make_span(
                SERVER,
                trace=1,
                span=0xD606579E57787587,
                duration_ms=45834496 * MS_PER_NS,
                attributes={"beast": "manticore"},
                name="requester",
            ),
        ),
        resource_spans(
            "mythical-requester",
            make_span(
                CLIENT,
                trace=1,
                span=0x53F3329B863DA95D,
                parent=0xD606579E57787587,
                duration_ms=705792 * MS_PER_NS,
                attributes={"peer.service": "external-payments-platform"},
                name="HTTP GET /ready",
            ),
        ),
        resource_spans(
            "internal-consumer",
            make_span(
                CONSUMER,
                trace=2,
                span=0x4D9B38BFB7504F8D,
                duration_ms=705792 * MS_PER_NS,
                attributes={"peer.service": "external-producer"},
                name="Consumed",
            ),
        ),
    ]


def test_virtual_nodes_fixture() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_virtualNodes (trace-with-virtual-nodes.json)
    harness = Harness(histogram_buckets=(0.04,), wait=1e-9)
    harness.consume(*virtual_nodes_trace())
    harness.expire_after(1)
    user = {"client": "user", "server": "mythical-server", "connection_type": VIRTUAL}
    payments = {
        "client": "mythical-requester",
        "server": "external-payments-platform",
        "connection_type": VIRTUAL,
    }
    producer = {"client": "external-producer", "server": "internal-consumer", "connection_type": VIRTUAL}
    assert harness.label_sets(REQUEST_TOTAL) == sorted(
        [user, payments, producer], key=lambda item: sorted(item.items())
    )
    for labels in (user, payments, producer):
        assert harness.count(REQUEST_TOTAL, **labels) == 1
        assert harness.count(REQUEST_FAILED_TOTAL, **labels) == 0
    # The virtual side's latency is 0 and is observed (Tempo observes the zero ClientLatencySec /
    # ServerLatencySec of the side that never came).
    server = harness.get(SERVER_SECONDS, **user)
    client = harness.get(CLIENT_SECONDS, **user)
    assert (server.count, server.sum, server.buckets) == (1, pytest.approx(0.045834496), [0, 1])
    assert (client.count, client.sum, client.buckets) == (1, 0.0, [1, 0])
    server = harness.get(SERVER_SECONDS, **payments)
    client = harness.get(CLIENT_SECONDS, **payments)
    assert (server.count, server.sum, server.buckets) == (1, 0.0, [1, 0])
    assert (client.count, client.sum, client.buckets) == (1, pytest.approx(0.000705792), [1, 0])
    assert harness.label_sets(UNPAIRED) == []
    assert harness.processor.expired_edges == {}


def test_virtual_nodes_fixture_with_the_virtual_node_label() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_virtualNodesExtraLabelsForUninstrumentedServices
    harness = Harness(enable_virtual_node_label=True, wait=1e-9)
    harness.consume(*virtual_nodes_trace())
    harness.expire_after(1)
    assert (
        harness.count(
            REQUEST_TOTAL,
            client="user",
            server="mythical-server",
            connection_type=VIRTUAL,
            virtual_node="client",
        )
        == 1
    )
    assert (
        harness.count(
            REQUEST_TOTAL,
            client="mythical-requester",
            server="external-payments-platform",
            connection_type=VIRTUAL,
            virtual_node="server",
        )
        == 1
    )
    assert (
        harness.count(
            REQUEST_TOTAL,
            client="external-producer",
            server="internal-consumer",
            connection_type=VIRTUAL,
            virtual_node="client",
        )
        == 1
    )


def test_virtual_nodes_fixture_has_no_database_edge() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_databaseVirtualNodes "virtualNodesWithoutDatabase"
    harness = Harness(histogram_buckets=(0.04,), enable_messaging_system_latency_histogram=True)
    harness.consume(*virtual_nodes_trace())
    assert harness.label_sets(REQUEST_TOTAL) == []


def expired_edges_trace() -> list:
    """testdata/trace-with-expired-edges.json: a root SERVER span; a CLIENT/SERVER pair; a CLIENT
    span with db.system (a database edge at once); a SERVER span whose parent never comes."""
    return [
        resource_spans(
            "mythical-server",
            make_span(SERVER, span=0xDA06579E57787587, duration_ms=45.834496, name="server-root"),
            make_span(
                CLIENT,
                span=0xD606579E57787587,
                parent=0xDA06579E57787587,
                duration_ms=45.834496,
                name="client-matched",
            ),
        ),
        resource_spans(
            "mythical-requester",
            make_span(
                SERVER,
                span=0x53F3329B863DA95D,
                parent=0xD606579E57787587,
                duration_ms=0.705792,
                name="server-matched",
            ),
            make_span(
                CLIENT,
                span=0xDE06579E57787587,
                parent=0xD606579E57787587,
                duration_ms=0.705792,
                attributes={"db.system": "mysql"},
                name="db-access",
            ),
            make_span(
                SERVER,
                span=0xE206579E57787587,
                parent=0xE606579E57787587,
                duration_ms=0.705792,
                name="unmatched",
            ),
        ),
    ]


def test_expired_edges_fixture() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_expiredEdges (trace-with-expired-edges.json):
    # edges 4, expired 1 under SPAN_KIND_SERVER, dropped 0.
    harness = Harness(enable_virtual_node_label=True, wait=1e-9)
    stats = harness.consume(*expired_edges_trace())
    assert (stats.new_edges, stats.dropped) == (4, 0)
    harness.expire_after(1)
    assert harness.processor.expired_edges == {(TENANT, "SPAN_KIND_SERVER"): 1}
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "mythical-requester", "server": "mysql", "connection_type": "database"},
        {"client": "mythical-server", "server": "mythical-requester"},
        {"client": "user", "server": "mythical-server", "connection_type": VIRTUAL, "virtual_node": "client"},
    ]
    assert harness.label_sets(UNPAIRED) == [{"server": "mythical-requester"}]


def test_each_unmatched_kind_expires_under_its_own_name() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_expiredEdgesByUnmatchedSpanKind
    harness = Harness(wait=1e-9)
    harness.consume(
        resource_spans("client", make_span(CLIENT, trace=1, span=1)),
        resource_spans("server", make_span(SERVER, trace=2, span=2, parent=0x10)),
        resource_spans("producer", make_span(PRODUCER, trace=3, span=3)),
        resource_spans("consumer", make_span(CONSUMER, trace=4, span=4, parent=0x11)),
    )
    harness.expire_after(1)
    assert harness.processor.expired_edges == {
        (TENANT, "SPAN_KIND_CLIENT"): 1,
        (TENANT, "SPAN_KIND_SERVER"): 1,
        (TENANT, "SPAN_KIND_PRODUCER"): 1,
        (TENANT, "SPAN_KIND_CONSUMER"): 1,
    }
    assert harness.label_sets(REQUEST_TOTAL) == []


def test_server_peer_survives_the_client_database_update() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_serverPeerSurvivesClientDatabaseUpdate. The
    # server span comes first with a peer attribute; the client span's database attributes then set
    # the server to its empty server.address: the edge waits, and on expiry the server span's peer
    # names the server. Nothing counts as expired.
    harness = Harness(wait=1e-9)
    harness.consume(
        resource_spans(
            "svc-b", make_span(SERVER, span=0x2C, parent=0x2B, attributes={"peer.service": "external-peer"})
        ),
        resource_spans(
            "svc-a",
            make_span(CLIENT, span=0x2B, attributes={"db.namespace": "database", "server.address": ""}),
        ),
    )
    assert harness.label_sets(REQUEST_TOTAL) == []
    harness.expire_after(1)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "svc-a", "server": "external-peer", "connection_type": VIRTUAL}
    ]
    assert harness.processor.expired_edges == {}
    assert harness.label_sets(UNPAIRED) == []


@pytest.mark.parametrize("order", ["client before server", "server before client", "producer and consumer"])
def test_empty_server_service_name_takes_the_server_spans_peer(order: str) -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_emptyServiceNameServerSpanInfersVirtualNodeFromPeer
    client_kind, server_kind = (PRODUCER, CONSUMER) if order == "producer and consumer" else (CLIENT, SERVER)
    client = resource_spans("svc-a", make_span(client_kind, span=0x1B))
    server = resource_spans(
        "", make_span(server_kind, span=0x1C, parent=0x1B, attributes={"peer.service": "external-peer"})
    )
    harness = Harness(wait=1e-9)
    harness.consume(*((server, client) if order == "server before client" else (client, server)))
    harness.expire_after(1)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "svc-a", "server": "external-peer", "connection_type": VIRTUAL}
    ]


def test_peer_attribute_of_a_non_root_server_span_changes_no_completed_series() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_nonRootServerSpanPeerAttributesDoNotChangeSeries
    harness = Harness(wait=1e-9)
    harness.consume(
        resource_spans("svc-a", make_span(CLIENT, span=0x0B)),
        resource_spans(
            "svc-b", make_span(SERVER, span=0x0C, parent=0x0B, attributes={"peer.service": "external-peer"})
        ),
    )
    harness.expire_after(1)
    assert harness.label_sets(REQUEST_TOTAL) == [{"client": "svc-a", "server": "svc-b"}]
    assert all("external-peer" not in dict(labels).values() for _, labels in harness.series())


@pytest.mark.parametrize("attribute", ["db.system", "db.system.name"])
def test_database_system_names_the_virtual_server_when_not_a_database_attribute(attribute: str) -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_dbSystemNamePeerAttribute
    harness = Harness(wait=1e-9, database_name_attributes=())
    harness.consume(
        resource_spans("svc-a", make_span(CLIENT, span=0x3B, attributes={attribute: "postgresql"}))
    )
    harness.expire_after(1)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "svc-a", "server": "postgresql", "connection_type": VIRTUAL}
    ]


def test_a_client_peer_replaces_an_earlier_server_peer_and_no_peer_keeps_it() -> None:
    # upstream: servicegraphs.go upsertPeerNode runs on every CLIENT/SERVER update and returns at
    # the first peer attribute found, so the span processed last wins only when it has one.
    harness = Harness(wait=1e-9, database_name_attributes=())
    harness.consume(
        resource_spans(
            "", make_span(SERVER, trace=1, span=2, parent=1, attributes={"peer.service": "from-server"})
        ),
        resource_spans("svc-a", make_span(CLIENT, trace=1, span=1, attributes={"db.name": "from-client"})),
        resource_spans("", make_span(SERVER, trace=2, span=2, parent=1, attributes={"peer.service": "kept"})),
        resource_spans("svc-a", make_span(CLIENT, trace=2, span=1)),
    )
    harness.expire_after(1)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "svc-a", "server": "from-client", "connection_type": VIRTUAL},
        {"client": "svc-a", "server": "kept", "connection_type": VIRTUAL},
    ]
