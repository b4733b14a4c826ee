"""Tempo's service-graph sub-processors: request counters, latency histograms, connection info."""

from __future__ import annotations

from worker.model.series import MetricKind
from worker.processors.servicegraphs import CONNECTION_INFO

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    DROPPED,
    REQUEST_FAILED_TOTAL,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    UNPAIRED,
    Harness,
    make_span,
    queue_database_trace,
    resource_spans,
)

ALL = ("service-graphs-request", "service-graphs-latency", "service-graphs-connection-info")


REQUESTER_TO_SERVER = {"client": "mythical-requester", "server": "mythical-server"}
SERVER_TO_DATABASE = {"client": "mythical-server", "server": "postgres", "connection_type": "database"}
REQUESTER_TO_RECORDER = {
    "client": "mythical-requester",
    "server": "mythical-recorder",
    "connection_type": "messaging_system",
}


def gauge_points(harness: Harness) -> dict[tuple[tuple[str, str], ...], int]:
    request = harness.metrics_request()
    result = {}
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == CONNECTION_INFO:
                    assert metric.WhichOneof("data") == "gauge"
                    for point in metric.gauge.data_points:
                        labels = tuple(sorted((kv.key, kv.value.string_value) for kv in point.attributes))
                        result[labels] = point.as_int
    return result


def key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_connection_info_is_a_gauge_of_one_per_edge_when_enabled() -> None:
    # upstream: servicegraphs_test.go TestServiceGraphs_connectionInfo "emits connection_info when
    # subprocessor enabled" (trace-with-queue-database.json): 1 for each edge, RED metrics as usual.
    harness = Harness(histogram_buckets=(0.04,), subprocessors=ALL)
    harness.consume(*queue_database_trace())
    harness.consume(*queue_database_trace())  # twice seen: still 1
    assert gauge_points(harness) == {
        key(REQUESTER_TO_SERVER): 1,
        key(SERVER_TO_DATABASE): 1,
        key(REQUESTER_TO_RECORDER): 1,
    }
    assert harness.count(REQUEST_TOTAL, **REQUESTER_TO_SERVER) == 2
    descriptor = harness.descriptors[CONNECTION_INFO]
    assert (descriptor.kind, descriptor.unit) == (MetricKind.INFO, "")


def test_connection_info_is_off_by_default() -> None:
    # upstream: TestServiceGraphs_connectionInfo "not emitted when subprocessor disabled"
    harness = Harness(histogram_buckets=(0.04,))
    harness.consume(*queue_database_trace())
    assert CONNECTION_INFO not in harness.descriptors
    assert gauge_points(harness) == {}


def test_connection_info_alone() -> None:
    # upstream: TestServiceGraphs_connectionInfo "RED disabled, connection_info only"
    harness = Harness(histogram_buckets=(0.04,), subprocessors=["service-graphs-connection-info"])
    harness.consume(*queue_database_trace())
    assert gauge_points(harness) == {
        key(REQUESTER_TO_SERVER): 1,
        key(SERVER_TO_DATABASE): 1,
        key(REQUESTER_TO_RECORDER): 1,
    }
    assert {name for name, _ in harness.series()} == {CONNECTION_INFO}
    assert set(harness.descriptors) == {CONNECTION_INFO, UNPAIRED, DROPPED}


def test_virtual_node_connection_info() -> None:
    # upstream: TestServiceGraphs_connectionInfo "virtual node connection_info"
    harness = Harness(subprocessors=ALL, wait=1e-9)
    harness.consume(
        resource_spans("mythical-server", make_span(SERVER, trace=1, span=0xD6)),
        resource_spans(
            "mythical-requester",
            make_span(
                CLIENT,
                trace=1,
                span=0x53,
                parent=0xD6,
                attributes={"peer.service": "external-payments-platform"},
            ),
        ),
    )
    harness.expire_after(1)
    assert gauge_points(harness) == {
        key({"client": "user", "server": "mythical-server", "connection_type": "virtual_node"}): 1,
        key(
            {
                "client": "mythical-requester",
                "server": "external-payments-platform",
                "connection_type": "virtual_node",
            }
        ): 1,
    }


def test_request_and_latency_separately() -> None:
    # upstream: servicegraphs.go New registers the counters only with Request and the histograms
    # only with Latency; onComplete updates only what is registered.
    requests = Harness(subprocessors=["service-graphs-request"])
    requests.consume(*queue_database_trace())
    assert {name for name, _ in requests.series()} == {REQUEST_TOTAL}
    assert requests.processor.max_exemplars == 0
    latency = Harness(subprocessors=["service-graphs-latency"])
    latency.consume(*queue_database_trace())
    assert {name for name, _ in latency.series()} == {SERVER_SECONDS, CLIENT_SECONDS}
    assert REQUEST_FAILED_TOTAL not in latency.descriptors
