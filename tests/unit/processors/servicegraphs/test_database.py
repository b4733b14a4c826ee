"""A CLIENT span with a database attribute is a ``database`` edge on its own (upsertDatabaseRequest)."""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    ERROR,
    PRODUCER,
    REQUEST_FAILED_TOTAL,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    Harness,
    make_span,
    resource_spans,
)


def database_call(harness: Harness, attributes: dict[str, Any], **resource: Any) -> list[dict[str, Any]]:
    span = make_span(CLIENT, span=30, parent=1, duration_ms=12, attributes=attributes)
    stats = harness.consume(resource_spans("inventory", span, **resource))
    assert stats.spans == 1
    return harness.label_sets(REQUEST_TOTAL)


def db(server: str) -> list[dict[str, str]]:
    return [{"client": "inventory", "server": server, "connection_type": "database"}]


@pytest.mark.parametrize(
    ("attributes", "server"),
    [
        # Named by peer.service first...
        (
            {
                "db.system": "postgresql",
                "db.namespace": "shop",
                "peer.service": "orders-db",
                "server.address": "pg.internal",
                "network.peer.address": "10.0.0.5",
                "network.peer.port": 5432,
            },
            "orders-db",
        ),
        # ...then server.address (without server.port: Tempo does not append it)...
        (
            {
                "db.system": "postgresql",
                "server.address": "pg.internal",
                "server.port": 5432,
                "network.peer.address": "10.0.0.5",
            },
            "pg.internal",
        ),
        # ...then network.peer.address, with :network.peer.port when present...
        (
            {"db.system": "postgresql", "network.peer.address": "10.0.0.5", "network.peer.port": 5432},
            "10.0.0.5:5432",
        ),
        ({"db.system": "postgresql", "network.peer.address": "10.0.0.5"}, "10.0.0.5"),
        # ...and last the database attribute's own value.
        ({"db.system": "postgresql", "db.namespace": "shop"}, "shop"),
        ({"db.system": "postgresql"}, "postgresql"),
        ({"db.name": "legacy"}, "legacy"),
        ({"db.system.name": "mysql"}, "mysql"),
    ],
)
def test_database_server_name_order(attributes: dict[str, Any], server: str) -> None:
    assert database_call(Harness(), attributes) == db(server)


def test_database_attributes_are_tried_in_configured_order() -> None:
    # Default order: db.namespace, db.name, db.system, db.system.name; the first found names it.
    attributes = {"db.system": "postgresql", "db.name": "old", "db.namespace": "new"}
    assert database_call(Harness(), attributes) == db("new")
    assert database_call(Harness(database_name_attributes=("db.system",)), attributes) == db("postgresql")


def test_only_configured_database_attributes_make_a_database_edge() -> None:
    harness = Harness(database_name_attributes=("db.namespace",))
    assert database_call(harness, {"db.system": "postgresql", "server.address": "pg"}) == []
    assert harness.processor.pending_count() == 1  # an ordinary client span waiting for its server


def test_database_edge_is_recorded_without_waiting() -> None:
    harness = Harness()
    span = make_span(
        CLIENT, span=30, duration_ms=12, attributes={"db.system": "redis", "server.address": "cache"}
    )
    stats = harness.consume(resource_spans("frontend", span))
    assert stats.edges == 1
    assert harness.processor.pending_count() == 0
    labels = {"client": "frontend", "server": "cache", "connection_type": "database"}
    # The server latency is the client span's: there is no server span.
    assert harness.get(SERVER_SECONDS, **labels).sum == pytest.approx(0.012)
    assert harness.get(CLIENT_SECONDS, **labels).sum == pytest.approx(0.012)


def test_resource_attributes_come_before_span_attributes() -> None:
    # Tempo calls FindAttributeValue(key, resource, span): the resource wins for these lookups.
    labels = database_call(
        Harness(), {"db.system": "postgresql", "peer.service": "span-peer"}, **{"peer.service": "res-peer"}
    )
    assert labels == db("res-peer")
    labels = database_call(Harness(), {"server.address": "span-host"}, **{"db.system": "postgresql"})
    assert labels == db("span-host")


def test_a_failed_database_call_is_a_failed_request() -> None:
    harness = Harness()
    span = make_span(
        CLIENT, span=30, status=ERROR, attributes={"db.system": "postgresql", "server.address": "pg"}
    )
    harness.consume(resource_spans("inventory", span))
    labels = {"client": "inventory", "server": "pg", "connection_type": "database"}
    assert harness.count(REQUEST_TOTAL, **labels) == 1
    assert harness.count(REQUEST_FAILED_TOTAL, **labels) == 1


def test_producer_spans_are_checked_too() -> None:
    # The PRODUCER case falls through to the CLIENT case in Tempo, database check included.
    harness = Harness()
    span = make_span(PRODUCER, span=30, attributes={"db.system": "redis", "server.address": "queue-cache"})
    harness.consume(resource_spans("shipping", span))
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "shipping", "server": "queue-cache", "connection_type": "database"}
    ]


def test_an_empty_database_name_leaves_the_edge_waiting() -> None:
    # isDatabase, but no name to give the server: like Tempo, the edge stays incomplete.
    harness = Harness()
    span = make_span(CLIENT, span=30, attributes={"db.system": ""})
    stats = harness.consume(resource_spans("inventory", span))
    assert stats.edges == 0
    assert harness.processor.pending_count() == 1


def test_non_string_database_values_are_stringified_like_tempo() -> None:
    labels = database_call(
        Harness(), {"db.system": "redis", "network.peer.address": "10.0.0.9", "network.peer.port": 6379}
    )
    assert labels == db("10.0.0.9:6379")
    labels = database_call(Harness(), {"db.name": 0})
    assert labels == db("0")


def test_a_server_span_below_a_database_client_span_is_named_by_the_database() -> None:
    # An instrumented database proxy: the client update names the server after the database
    # (Tempo overwrites ServerService), whichever side came first.
    harness = Harness()
    server = make_span(SERVER, span=31, parent=30)
    client = make_span(CLIENT, span=30, attributes={"db.system": "postgresql", "peer.service": "pg"})
    harness.consume(resource_spans("pgbouncer", server))
    harness.consume(resource_spans("inventory", client))
    assert harness.label_sets(REQUEST_TOTAL) == [
        {"client": "inventory", "server": "pg", "connection_type": "database"}
    ]
    assert harness.processor.pending_count() == 0
