"""Half-edges whose other side never came: virtual nodes (Tempo's onExpire) or unpaired spans."""

from __future__ import annotations

import pytest

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    CONSUMER,
    ERROR,
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


def test_nothing_expires_before_the_wait_is_over() -> None:
    harness = Harness(wait=10.0)
    harness.consume(resource_spans("frontend", make_span(SERVER, span=1)))  # a root span
    harness.expire_after(9.999)
    assert harness.processor.pending_count() == 1
    assert harness.label_sets(REQUEST_TOTAL) == []
    harness.expire_after(0.001)  # exactly `wait` after it arrived: expired (Tempo: now >= expiration)
    assert harness.processor.pending_count() == 0
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "user", "server": "frontend", "connection_type": VIRTUAL}
    ]


def test_the_wait_starts_when_the_span_arrives() -> None:
    harness = Harness(wait=10.0)
    harness.consume(resource_spans("a", make_span(SERVER, trace=1, span=1)))
    harness.clock.advance(6)
    harness.consume(resource_spans("b", make_span(SERVER, trace=2, span=1)))
    harness.expire_after(5)  # 11 s after the first, 5 s after the second
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "user", "server": "a", "connection_type": VIRTUAL}
    ]
    assert harness.processor.pending_count() == 1
    harness.expire_after(5)
    assert harness.processor.pending_count() == 0


def test_a_pair_completed_in_time_does_not_expire() -> None:
    harness = Harness(wait=10.0)
    harness.consume(resource_spans("a", make_span(CLIENT, span=10)))
    harness.clock.advance(9)
    harness.consume(resource_spans("b", make_span(SERVER, span=11, parent=10)))
    harness.expire_after(60)
    assert harness.label_sets(REQUEST_TOTAL) == [{"client": "a", "server": "b"}]
    assert harness.label_sets(UNPAIRED) == []


def test_root_server_span_becomes_an_edge_from_user() -> None:
    harness = Harness()
    root = make_span(SERVER, span=1, duration_ms=40, attributes={"server.address": "shop.example"})
    harness.consume(resource_spans("frontend", root))
    harness.expire_after(10)
    labels = {"client": "user", "server": "frontend", "connection_type": VIRTUAL}
    assert harness.count(REQUEST_TOTAL, **labels) == 1
    # Only the server side exists: its latency is the span's, the client latency is 0 (as Tempo).
    assert harness.get(SERVER_SECONDS, **labels).sum == pytest.approx(0.040)
    client = harness.get(CLIENT_SECONDS, **labels)
    assert (client.count, client.sum, client.buckets[0]) == (1, 0.0, 1)


@pytest.mark.parametrize(
    ("attributes", "client"),
    [
        ({"peer.service": "mobile-app"}, "mobile-app"),
        ({"db.system": "postgresql", "peer.service": "later-in-span"}, "later-in-span"),
        ({"db.system.name": "mysql"}, "mysql"),
    ],
)
def test_root_server_span_client_is_named_by_its_first_peer_attribute(attributes: dict, client: str) -> None:
    # peer_attributes order (peer.service, db.name, db.system, db.system.name) decides, not the span's.
    harness = Harness()
    harness.consume(resource_spans("frontend", make_span(SERVER, span=1, attributes=attributes)))
    harness.expire_after(10)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": client, "server": "frontend", "connection_type": VIRTUAL}
    ]


def test_root_consumer_span_with_peer_attribute() -> None:
    # Tempo's "external-producer -> internal-consumer" fixture.
    harness = Harness()
    consumer = make_span(CONSUMER, span=5, attributes={"peer.service": "external-producer"})
    harness.consume(resource_spans("internal-consumer", consumer))
    harness.expire_after(10)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "external-producer", "server": "internal-consumer", "connection_type": VIRTUAL}
    ]


def test_peer_attributes_on_the_resource_do_not_count() -> None:
    harness = Harness()
    harness.consume(resource_spans("frontend", make_span(SERVER, span=1), **{"peer.service": "nope"}))
    harness.expire_after(10)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "user", "server": "frontend", "connection_type": VIRTUAL}
    ]


def test_client_span_with_peer_attribute_becomes_an_edge_to_the_peer() -> None:
    harness = Harness()
    call = make_span(CLIENT, span=10, parent=1, duration_ms=280, attributes={"peer.service": "stripe"})
    harness.consume(resource_spans("payment", call))
    harness.expire_after(10)
    labels = {"client": "payment", "server": "stripe", "connection_type": VIRTUAL}
    assert harness.label_sets(REQUEST_TOTAL) == [labels]
    assert harness.get(CLIENT_SECONDS, **labels).sum == pytest.approx(0.280)
    assert harness.get(SERVER_SECONDS, **labels).sum == 0.0
    assert harness.label_sets(UNPAIRED) == []


def test_producer_without_consumer_but_with_peer_attribute() -> None:
    harness = Harness()
    producer = make_span(PRODUCER, span=10, attributes={"peer.service": "kafka"})
    harness.consume(resource_spans("checkout", producer))
    harness.expire_after(10)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "checkout", "server": "kafka", "connection_type": VIRTUAL}
    ]


def test_virtual_edge_keeps_its_failure() -> None:
    harness = Harness()
    call = make_span(CLIENT, span=10, status=ERROR, attributes={"peer.service": "stripe"})
    harness.consume(resource_spans("payment", call))
    harness.expire_after(10)
    assert (
        harness.count(REQUEST_FAILED_TOTAL, client="payment", server="stripe", connection_type=VIRTUAL) == 1
    )


def test_virtual_node_label_says_which_side_is_virtual() -> None:
    harness = Harness(enable_virtual_node_label=True)
    harness.consume(
        resource_spans("frontend", make_span(SERVER, trace=1, span=1)),
        resource_spans("payment", make_span(CLIENT, trace=2, span=10, attributes={"peer.service": "stripe"})),
        resource_spans(
            "a", make_span(CLIENT, trace=3, span=10), make_span(SERVER, trace=3, span=11, parent=10)
        ),
    )
    harness.expire_after(10)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "a", "server": "a"},
        {"client": "payment", "server": "stripe", "connection_type": VIRTUAL, "virtual_node": "server"},
        {"client": "user", "server": "frontend", "connection_type": VIRTUAL, "virtual_node": "client"},
    ]


def test_lone_client_span_without_peer_attribute_is_unpaired() -> None:
    harness = Harness()
    harness.consume(
        resource_spans("checkout", make_span(CLIENT, span=10, attributes={"server.address": "x"}))
    )
    harness.expire_after(10)
    assert harness.label_sets(REQUEST_TOTAL) == []
    assert harness.label_sets(UNPAIRED) == [{"client": "checkout"}]
    assert harness.count(UNPAIRED, client="checkout") == 1


def test_lone_non_root_server_span_is_unpaired() -> None:
    # Its caller's client span never came (or its parent is not a client span): no virtual node.
    harness = Harness()
    harness.consume(
        resource_spans("checkout", make_span(SERVER, span=11, parent=10, attributes={"peer.service": "x"}))
    )
    harness.consume(resource_spans("checkout", make_span(CONSUMER, trace=2, span=11, parent=10)))
    harness.expire_after(10)
    assert harness.label_sets(REQUEST_TOTAL) == []
    assert harness.label_sets(UNPAIRED) == [{"server": "checkout"}]
    assert harness.count(UNPAIRED, server="checkout") == 2


def test_expire_all_ends_every_wait_now() -> None:
    harness = Harness(wait=3600.0)
    harness.consume(
        resource_spans("frontend", make_span(SERVER, trace=1, span=1)),
        resource_spans("checkout", make_span(CLIENT, trace=2, span=10)),
    )
    harness.processor.expire(harness.clock())
    assert harness.processor.pending_count() == 2
    harness.processor.expire_all()
    assert harness.processor.pending_count() == 0
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "user", "server": "frontend", "connection_type": VIRTUAL}
    ]
    assert harness.label_sets(UNPAIRED) == [{"client": "checkout"}]


def test_expiry_covers_every_partition_and_tenant() -> None:
    harness = Harness()
    root = make_span(SERVER, span=1)
    harness.consume(resource_spans("a", root), tenant="t1", partition=0)
    harness.consume(resource_spans("b", root), tenant="t2", partition=3)
    harness.expire_after(10)
    assert harness.processor.pending_count() == 0
    assert harness.count(REQUEST_TOTAL, tenant="t1", client="user", server="a", connection_type=VIRTUAL) == 1
    assert harness.count(REQUEST_TOTAL, tenant="t2", client="user", server="b", connection_type=VIRTUAL) == 1
