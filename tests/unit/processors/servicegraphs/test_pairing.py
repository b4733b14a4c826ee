"""CLIENT -> SERVER and PRODUCER -> CONSUMER pairing, and what counts as a failed request."""

from __future__ import annotations

import pytest

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    CONSUMER,
    ERROR,
    INTERNAL,
    MESSAGING_SECONDS,
    OK,
    PRODUCER,
    REQUEST_FAILED_TOTAL,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    TENANT,
    UNSPECIFIED,
    Harness,
    make_span,
    resource_spans,
)


def client_and_server(trace: int = 1, *, client_status: int = 0, server_status: int = 0) -> tuple:
    client = make_span(CLIENT, trace=trace, span=10, parent=1, duration_ms=50, status=client_status)
    server = make_span(
        SERVER, trace=trace, span=11, parent=10, start_ms=5, duration_ms=30, status=server_status
    )
    return resource_spans("frontend", client), resource_spans("checkout", server)


@pytest.mark.parametrize("server_first", [False, True])
def test_client_and_child_server_make_one_edge_at_once(server_first: bool) -> None:
    harness = Harness()
    client_side, server_side = client_and_server()
    first, second = (server_side, client_side) if server_first else (client_side, server_side)

    stats = harness.consume(first)
    assert (stats.spans, stats.edges) == (1, 0)
    assert harness.processor.pending_count() == 1

    stats = harness.consume(second)  # no expire needed: both sides known means recorded
    assert (stats.spans, stats.edges) == (1, 1)
    assert harness.processor.pending_count() == 0
    # Plain requests have no connection_type label (Tempo's empty value), and nothing else.
    assert harness.label_sets(REQUEST_TOTAL) == [{"client": "frontend", "server": "checkout"}]
    assert harness.count(REQUEST_TOTAL, client="frontend", server="checkout") == 1
    assert harness.get(REQUEST_FAILED_TOTAL, client="frontend", server="checkout") is None


def test_both_sides_in_one_request() -> None:
    harness = Harness()
    client_side, server_side = client_and_server()
    stats = harness.consume(client_side, server_side)
    assert stats.edges == 1
    assert harness.count(REQUEST_TOTAL, client="frontend", server="checkout") == 1


def test_latencies_are_each_sides_duration_in_seconds() -> None:
    harness = Harness(histogram_buckets=(0.01, 0.04, 0.1))
    harness.consume(*client_and_server())
    server = harness.get(SERVER_SECONDS, client="frontend", server="checkout")
    client = harness.get(CLIENT_SECONDS, client="frontend", server="checkout")
    assert server is not None and client is not None
    assert server.count == 1 and server.sum == pytest.approx(0.030)
    assert server.buckets == [0, 1, 0, 0]  # 0.03 <= 0.04
    assert client.count == 1 and client.sum == pytest.approx(0.050)
    assert client.buckets == [0, 0, 1, 0]  # 0.04 < 0.05 <= 0.1


def test_a_value_on_a_bucket_bound_falls_in_that_bucket() -> None:
    harness = Harness(histogram_buckets=(0.1, 0.2))
    client = make_span(CLIENT, span=10, duration_ms=100)
    server = make_span(SERVER, span=11, parent=10, duration_ms=200.000001)
    harness.consume(resource_spans("a", client), resource_spans("b", server))
    assert harness.get(CLIENT_SECONDS, client="a", server="b").buckets == [1, 0, 0]  # le="0.1"
    assert harness.get(SERVER_SECONDS, client="a", server="b").buckets == [0, 0, 1]  # above 0.2


def test_requests_of_one_edge_add_up() -> None:
    harness = Harness()
    for trace in range(1, 6):
        harness.consume(*client_and_server(trace))
    assert harness.count(REQUEST_TOTAL, client="frontend", server="checkout") == 5
    assert harness.get(SERVER_SECONDS, client="frontend", server="checkout").count == 5


@pytest.mark.parametrize(
    ("client_status", "server_status", "failed"),
    [(0, 0, 0), (OK, OK, 0), (ERROR, 0, 1), (0, ERROR, 1), (ERROR, ERROR, 1)],
)
def test_failed_when_either_side_has_status_error(
    client_status: int, server_status: int, failed: int
) -> None:
    harness = Harness()
    harness.consume(*client_and_server(client_status=client_status, server_status=server_status))
    assert harness.count(REQUEST_TOTAL, client="frontend", server="checkout") == 1
    assert harness.count(REQUEST_FAILED_TOTAL, client="frontend", server="checkout") == failed


def test_server_must_be_the_direct_child_of_the_client_span() -> None:
    harness = Harness()
    client = make_span(CLIENT, span=10, parent=1)
    grandchild = make_span(SERVER, span=12, parent=99)  # parent is some other span
    harness.consume(resource_spans("frontend", client), resource_spans("checkout", grandchild))
    assert harness.processor.pending_count() == 2
    assert harness.label_sets(REQUEST_TOTAL) == []


def test_the_trace_id_must_match() -> None:
    harness = Harness()
    client = make_span(CLIENT, trace=1, span=10)
    server = make_span(SERVER, trace=2, span=11, parent=10)
    harness.consume(resource_spans("frontend", client), resource_spans("checkout", server))
    assert harness.processor.pending_count() == 2
    assert harness.label_sets(REQUEST_TOTAL) == []


def test_tenants_never_pair_with_each_other() -> None:
    harness = Harness()
    client_side, server_side = client_and_server()
    harness.consume(client_side, tenant="a")
    harness.consume(server_side, tenant="b")
    assert harness.processor.pending_count() == 2
    assert harness.label_sets(REQUEST_TOTAL, tenant="a") == []
    harness.consume(server_side, tenant="a")
    assert harness.count(REQUEST_TOTAL, tenant="a", client="frontend", server="checkout") == 1
    assert harness.label_sets(REQUEST_TOTAL, tenant="b") == []


@pytest.mark.parametrize("kind", [INTERNAL, UNSPECIFIED])
def test_other_span_kinds_are_ignored(kind: int) -> None:
    harness = Harness()
    stats = harness.consume(resource_spans("frontend", make_span(kind, span=10)))
    assert stats.spans == 0
    assert harness.processor.pending_count() == 0
    assert harness.processor.take_deltas() == {}


def test_resources_without_service_name_are_skipped() -> None:
    harness = Harness()
    client = make_span(CLIENT, span=10)
    server = make_span(SERVER, span=11, parent=10)
    stats = harness.consume(resource_spans(None, client, **{"host.name": "h"}), resource_spans("b", server))
    assert stats.skipped_no_service == 1
    assert stats.spans == 1
    assert harness.processor.pending_count() == 1  # the server side waits for a client that never comes


def test_a_non_string_service_name_is_used_as_tempo_prints_it() -> None:
    harness = Harness()
    client = make_span(CLIENT, span=10)
    server = make_span(SERVER, span=11, parent=10)
    harness.consume(resource_spans(None, client, **{"service.name": 42}), resource_spans("b", server))
    assert harness.count(REQUEST_TOTAL, client="42", server="b") == 1


def test_producer_and_consumer_make_a_messaging_system_edge() -> None:
    harness = Harness()
    producer = make_span(PRODUCER, span=20, parent=1, duration_ms=2)
    consumer = make_span(CONSUMER, span=21, parent=20, start_ms=50, duration_ms=8)
    stats = harness.consume(resource_spans("shipping", producer), resource_spans("email", consumer))
    assert stats.edges == 1
    labels = {"client": "shipping", "server": "email", "connection_type": "messaging_system"}
    assert harness.count(REQUEST_TOTAL, **labels) == 1
    assert harness.get(SERVER_SECONDS, **labels).sum == pytest.approx(0.008)
    assert harness.get(CLIENT_SECONDS, **labels).sum == pytest.approx(0.002)
    assert harness.get(MESSAGING_SECONDS, **labels) is None  # only with the option on


def test_messaging_system_latency_is_consumer_start_minus_producer_end() -> None:
    harness = Harness(enable_messaging_system_latency_histogram=True, histogram_buckets=(0.01, 0.1))
    assert MESSAGING_SECONDS in harness.descriptors
    producer = make_span(PRODUCER, span=20, start_ms=0, duration_ms=2)  # ends at 2 ms
    consumer = make_span(CONSUMER, span=21, parent=20, start_ms=50, duration_ms=8)
    harness.consume(resource_spans("email", consumer), resource_spans("shipping", producer))
    labels = {"client": "shipping", "server": "email", "connection_type": "messaging_system"}
    messaging = harness.get(MESSAGING_SECONDS, **labels)
    assert messaging is not None
    assert messaging.count == 1
    assert messaging.sum == pytest.approx(0.048)
    assert messaging.buckets == [0, 1, 0]


@pytest.mark.parametrize("consumer_start_ms", [2.0, 1.0])
def test_messaging_latency_is_skipped_when_not_positive(consumer_start_ms: float) -> None:
    # Tempo logs "maybe the peers clocks are not synced" and observes nothing.
    harness = Harness(enable_messaging_system_latency_histogram=True)
    producer = make_span(PRODUCER, span=20, start_ms=0, duration_ms=2)
    consumer = make_span(CONSUMER, span=21, parent=20, start_ms=consumer_start_ms)
    harness.consume(resource_spans("shipping", producer), resource_spans("email", consumer))
    labels = {"client": "shipping", "server": "email", "connection_type": "messaging_system"}
    assert harness.count(REQUEST_TOTAL, **labels) == 1
    assert harness.get(MESSAGING_SECONDS, **labels) is None


def test_plain_request_has_no_messaging_latency() -> None:
    harness = Harness(enable_messaging_system_latency_histogram=True)
    harness.consume(*client_and_server())
    assert harness.get(MESSAGING_SECONDS, client="frontend", server="checkout") is None


def test_the_side_seen_last_sets_the_connection_type() -> None:
    # Tempo's update callbacks each overwrite ConnectionType: a CLIENT span answered by a
    # CONSUMER span is a messaging edge when the consumer comes last, a plain one otherwise.
    harness = Harness()
    client = make_span(CLIENT, trace=1, span=10)
    consumer = make_span(CONSUMER, trace=1, span=11, parent=10)
    harness.consume(resource_spans("a", client))
    harness.consume(resource_spans("b", consumer))
    client2 = make_span(CLIENT, trace=2, span=10)
    consumer2 = make_span(CONSUMER, trace=2, span=11, parent=10)
    harness.consume(resource_spans("b", consumer2))
    harness.consume(resource_spans("a", client2))
    assert harness.count(REQUEST_TOTAL, client="a", server="b", connection_type="messaging_system") == 1
    assert harness.count(REQUEST_TOTAL, client="a", server="b") == 1


def test_deltas_are_handed_over_once() -> None:
    harness = Harness()
    harness.consume(*client_and_server())
    deltas = harness.processor.take_deltas()
    assert set(deltas) == {TENANT}
    assert harness.processor.take_deltas() == {}
