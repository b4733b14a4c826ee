"""``max_items``: the bound on waiting half-edges, and the dropped-spans counter."""

from __future__ import annotations

from .helpers import (
    CLIENT,
    CONSUMER,
    DROPPED,
    PRODUCER,
    REQUEST_TOTAL,
    SERVER,
    Harness,
    make_span,
    resource_spans,
)


def client(trace: int, **attributes: str) -> object:
    return make_span(CLIENT, trace=trace, span=10, attributes=attributes)


def test_new_half_edges_beyond_max_items_are_dropped_and_counted() -> None:
    harness = Harness(max_items=2)
    stats = harness.consume(resource_spans("frontend", client(1), client(2), client(3)))
    assert (stats.spans, stats.dropped) == (3, 1)
    assert harness.processor.pending_count() == 2
    stats = harness.consume(resource_spans("checkout", make_span(SERVER, trace=4, span=11, parent=10)))
    assert stats.dropped == 1
    # Labelled with the dropped span's own side, like the Grafana Agent processor's counter.
    assert harness.label_sets(DROPPED) == [{"client": "frontend"}, {"server": "checkout"}]
    assert harness.count(DROPPED, client="frontend") == 1
    assert harness.count(DROPPED, server="checkout") == 1


def test_producer_and_consumer_count_as_client_and_server() -> None:
    harness = Harness(max_items=1)
    harness.consume(resource_spans("a", make_span(CLIENT, trace=1, span=10)))
    harness.consume(
        resource_spans("shipping", make_span(PRODUCER, trace=2, span=10)),
        resource_spans("email", make_span(CONSUMER, trace=3, span=11, parent=10)),
    )
    assert harness.label_sets(DROPPED) == [{"client": "shipping"}, {"server": "email"}]


def test_a_full_store_still_completes_waiting_edges_and_database_calls() -> None:
    harness = Harness(max_items=1)
    harness.consume(resource_spans("frontend", client(1)))
    stats = harness.consume(
        resource_spans(
            "checkout", make_span(SERVER, trace=1, span=11, parent=10)
        ),  # completes the waiting one
        resource_spans("inventory", client(2, **{"db.system": "redis", "server.address": "cache"})),
    )
    assert (stats.edges, stats.dropped) == (2, 0)
    assert harness.count(REQUEST_TOTAL, client="frontend", server="checkout") == 1
    assert harness.count(REQUEST_TOTAL, client="inventory", server="cache", connection_type="database") == 1


def test_room_frees_up_when_edges_complete_or_expire() -> None:
    harness = Harness(max_items=1)
    harness.consume(resource_spans("frontend", client(1)))
    assert harness.consume(resource_spans("frontend", client(2))).dropped == 1
    harness.expire_after(10)
    assert harness.consume(resource_spans("frontend", client(3))).dropped == 0


def test_the_limit_is_per_tenant() -> None:
    harness = Harness(max_items=1)
    assert harness.consume(resource_spans("a", client(1)), tenant="t1").dropped == 0
    assert harness.consume(resource_spans("a", client(2)), tenant="t2").dropped == 0
    assert harness.consume(resource_spans("a", client(3)), tenant="t1").dropped == 1
    assert harness.label_sets(DROPPED, tenant="t1") == [{"client": "a"}]
    assert harness.label_sets(DROPPED, tenant="t2") == []


def test_the_limit_covers_all_partitions_of_a_tenant() -> None:
    harness = Harness(max_items=2)
    assert harness.consume(resource_spans("a", client(1)), partition=0).dropped == 0
    assert harness.consume(resource_spans("a", client(2)), partition=1).dropped == 0
    assert harness.consume(resource_spans("a", client(3)), partition=2).dropped == 1
    assert harness.processor.pending_count() == 2
    harness.processor.drop_partition(0)
    assert harness.consume(resource_spans("a", client(4)), partition=2).dropped == 0
