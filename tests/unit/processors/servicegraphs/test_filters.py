"""``filter_policies`` and the span multiplier in service graphs, as Tempo applies them (#6453)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import FilterPolicy
from worker.processors.servicegraphs import CONNECTION_INFO

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    TENANT,
    Harness,
    make_span,
    queue_database_trace,
    resource_spans,
)

REQUESTER_TO_SERVER = {"client": "mythical-requester", "server": "mythical-server"}
SERVER_TO_DATABASE = {"client": "mythical-server", "server": "postgres", "connection_type": "database"}
REQUESTER_TO_RECORDER = {
    "client": "mythical-requester",
    "server": "mythical-recorder",
    "connection_type": "messaging_system",
}


def service_policy(kind: str, service: str) -> tuple[FilterPolicy, ...]:
    return (
        FilterPolicy.model_validate(
            {
                kind: {
                    "match_type": "strict",
                    "attributes": [{"key": "resource.service.name", "value": service}],
                }
            }
        ),
    )


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ((), (1, 1, 1)),
        (service_policy("include", "mythical-requester"), (0, 0, 0)),
        (service_policy("include", "mythical-server"), (0, 1, 0)),
        (service_policy("exclude", "mythical-requester"), (0, 1, 0)),
    ],
    ids=["no_filters", "include_requester_only", "include_server_only", "exclude_requester"],
)
def test_filter_policies_on_the_queue_database_trace(
    policies: tuple[FilterPolicy, ...], expected: tuple
) -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_applyFilterPolicy (trace-with-queue-database.json)
    harness = Harness(
        histogram_buckets=(0.04,), enable_messaging_system_latency_histogram=True, filter_policies=policies
    )
    harness.consume(*queue_database_trace())
    found = tuple(
        harness.count(REQUEST_TOTAL, **labels)
        for labels in (REQUESTER_TO_SERVER, SERVER_TO_DATABASE, REQUESTER_TO_RECORDER)
    )
    assert found == expected


def filtered_pair(client_first: bool) -> tuple[Harness, Any]:
    harness = Harness(filter_policies=service_policy("exclude", "svc-a"))
    client = resource_spans("svc-a", make_span(CLIENT, trace=1, span=2))
    server = resource_spans("svc-b", make_span(SERVER, trace=1, span=3, parent=2))
    first, second = (client, server) if client_first else (server, client)
    harness.consume(first)
    return harness, harness.consume(second)


def test_a_counterpart_arriving_after_its_filtered_side_is_dropped() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_droppedEdgesMetric_fromFilteredCounterpart
    harness, stats = filtered_pair(client_first=True)
    assert (stats.dropped_edges, stats.new_edges) == (1, 0)
    assert harness.processor.dropped_edges == {TENANT: 1}
    assert harness.processor.pending_count() == 0
    harness.expire_after(10)
    assert harness.series() == {}
    assert harness.processor.expired_edges == {}


def test_a_filtered_side_drops_its_waiting_counterpart() -> None:
    # upstream: servicegraphs_test.go
    # TestServiceGraphs_droppedEdgesMetric_whenFilteredSpanDropsBufferedCounterpart
    harness, stats = filtered_pair(client_first=False)
    assert (stats.filtered, stats.dropped_edges) == (1, 1)
    assert harness.processor.dropped_edges == {TENANT: 1}
    assert harness.processor.pending_count() == 0
    harness.expire_after(10)
    assert harness.series() == {}


def test_a_filtered_root_server_span_leaves_no_marker() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_filteredRootServerSpanDoesNotAddDroppedCounterpart
    harness = Harness(filter_policies=service_policy("exclude", "svc-a"))
    stats = harness.consume(resource_spans("svc-a", make_span(SERVER, span=1)))
    assert (stats.filtered, harness.processor.marker_count()) == (1, 0)


def test_markers_are_capped_by_max_items_and_a_refresh_still_fits() -> None:
    # upstream: store_test.go TestStore_AddDroppedSpanSide_respectsMaxItems,
    # ..._overflowMetricIncrementsAtCapacity, ..._refreshAllowedAtMaxItems
    harness = Harness(max_items=2, filter_policies=service_policy("exclude", "svc-a"))
    for span in (1, 2, 1, 3):
        harness.consume(resource_spans("svc-a", make_span(CLIENT, trace=span, span=span)))
    assert harness.processor.marker_count() == 2
    assert harness.processor.marker_overflows == {TENANT: 1}
    # k3 was not remembered: its server pairs with nothing and waits; k1's is dropped.
    harness.consume(resource_spans("svc-b", make_span(SERVER, trace=3, span=9, parent=3)))
    stats = harness.consume(resource_spans("svc-b", make_span(SERVER, trace=1, span=9, parent=1)))
    assert stats.dropped_edges == 1
    assert harness.processor.pending_count() == 1


def test_markers_last_wait_and_a_refresh_extends_them() -> None:
    # upstream: store_test.go TestStore_AddDroppedSpanSide_expiresWithTTL, ..._refreshesTTL,
    # TestStore_ExpireDroppedSpanSide_mixedTTL
    harness = Harness(wait=1.0, filter_policies=service_policy("exclude", "svc-a"))
    harness.consume(resource_spans("svc-a", make_span(CLIENT, trace=1, span=1)))
    harness.clock.advance(0.5)
    harness.consume(resource_spans("svc-a", make_span(CLIENT, trace=1, span=1)))  # refreshed
    harness.consume(resource_spans("svc-a", make_span(CLIENT, trace=2, span=2)))
    harness.expire_after(0.7)
    assert harness.processor.marker_count() == 2
    harness.expire_after(0.5)
    assert harness.processor.marker_count() == 0
    # Once forgotten, a late counterpart waits like any half edge.
    stats = harness.consume(resource_spans("svc-b", make_span(SERVER, trace=1, span=9, parent=1)))
    assert (stats.dropped_edges, harness.processor.pending_count()) == (0, 1)


def test_markers_move_with_their_partition() -> None:
    # Not in Tempo (no handover there): a filtered side travels with the pending edges, so the
    # new owner drops the counterpart as the old one would have.
    old = Harness(filter_policies=service_policy("exclude", "svc-a"))
    old.consume(resource_spans("svc-a", make_span(CLIENT, trace=1, span=2)), partition=3)
    blob = old.processor.export_pending(3)
    new = Harness(filter_policies=service_policy("exclude", "svc-a"))
    assert new.processor.restore_pending(3, blob, new.clock()) == 0  # no edge, one marker
    assert new.processor.marker_count(3) == 1
    stats = new.consume(resource_spans("svc-b", make_span(SERVER, trace=1, span=3, parent=2)), partition=3)
    assert stats.dropped_edges == 1
    new.processor.drop_partition(3)
    assert new.processor.marker_count() == 0


def sampled(ratio: float, **attributes: Any) -> dict[str, Any]:
    return {"sampler.param": ratio, **attributes}


def test_the_multiplier_scales_counters_and_histogram_weights_not_connection_info() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_connectionInfo "connection_info stays at 1
    # regardless of multiplier": sampler.param 0.5 on every span counts each request twice.
    harness = Harness(
        histogram_buckets=(0.04,),
        span_multiplier_key="sampler.param",
        subprocessors=["service-graphs-request", "service-graphs-latency", "service-graphs-connection-info"],
    )
    harness.consume(
        resource_spans("a", make_span(CLIENT, span=1, duration_ms=50, attributes=sampled(0.5))),
        resource_spans("b", make_span(SERVER, span=2, parent=1, duration_ms=30, attributes=sampled(0.5))),
    )
    labels = {"client": "a", "server": "b"}
    assert harness.count(REQUEST_TOTAL, **labels) == 2
    server = harness.get(SERVER_SECONDS, **labels)
    client = harness.get(CLIENT_SECONDS, **labels)
    assert (server.count, server.sum, server.buckets) == (2, pytest.approx(0.060), [2, 0])
    assert (client.count, client.sum, client.buckets) == (2, pytest.approx(0.100), [0, 2])
    assert harness.get(CONNECTION_INFO, **labels) is not None


def test_the_span_processed_last_sets_the_multiplier() -> None:
    # upstream: servicegraphs.go consume sets e.SpanMultiplier on every client and server update.
    harness = Harness(span_multiplier_key="sampler.param")
    harness.consume(
        resource_spans("a", make_span(CLIENT, trace=1, span=1, attributes=sampled(0.5))),
        resource_spans("b", make_span(SERVER, trace=1, span=2, parent=1, attributes=sampled(0.25))),
        resource_spans("c", make_span(SERVER, trace=2, span=2, parent=1)),  # no attribute: 1
        resource_spans("d", make_span(CLIENT, trace=2, span=1, attributes=sampled(0.125))),
        resource_spans(
            "e", make_span(CLIENT, trace=3, span=1, attributes={"sampler.param": "0.5"})
        ),  # not a double
        resource_spans("f", make_span(SERVER, trace=3, span=2, parent=1)),
    )
    assert harness.count(REQUEST_TOTAL, client="a", server="b") == 4
    assert harness.count(REQUEST_TOTAL, client="d", server="c") == 8
    assert harness.count(REQUEST_TOTAL, client="e", server="f") == 1


def test_the_resource_attribute_is_the_fallback_and_tracestate_comes_first() -> None:
    # upstream: processor/util/util.go GetSpanMultiplier: tracestate ot=th (when enabled), then the
    # key among span attributes, then resource attributes.
    harness = Harness(span_multiplier_key="sampler.param", enable_tracestate_span_multiplier=True)
    client = make_span(CLIENT, trace=1, span=1)
    server = make_span(SERVER, trace=1, span=2, parent=1)
    server.trace_state = "ot=th:c"  # rejects 3/4: counts 4
    harness.consume(
        resource_spans("a", client, **{"sampler.param": 0.5}),
        resource_spans("b", server, **{"sampler.param": 0.5}),
        resource_spans("c", make_span(CLIENT, trace=2, span=1)),
        resource_spans("d", make_span(SERVER, trace=2, span=2, parent=1), **{"sampler.param": 0.5}),
    )
    assert harness.count(REQUEST_TOTAL, client="a", server="b") == 4
    assert harness.count(REQUEST_TOTAL, client="c", server="d") == 2


def test_a_fractional_multiplier_counts_unbiased_in_whole_requests() -> None:
    # Tempo adds 1/0.3 = 3.33 as a float; counts here are integers, rounded stochastically.
    harness = Harness(span_multiplier_key="sampler.param")
    for number in range(1, 3001):
        harness.consume(
            resource_spans("a", make_span(CLIENT, trace=number, span=1)),
            resource_spans("b", make_span(SERVER, trace=number, span=2, parent=1, attributes=sampled(0.3))),
        )
    total = harness.count(REQUEST_TOTAL, client="a", server="b")
    assert 9700 < total < 10300  # 10,000 expected; the standard deviation is about 26
    histogram = harness.get(SERVER_SECONDS, client="a", server="b")
    assert histogram.count == total == sum(histogram.buckets)
