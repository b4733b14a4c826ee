"""Configured dimensions, label names and label values, as Tempo writes them."""

from __future__ import annotations

import math

import pytest

from worker.processors.servicegraphs.labels import format_go_fixed, sanitize_label_name, tempo_string

from .helpers import (
    CLIENT,
    CLIENT_SECONDS,
    REQUEST_FAILED_TOTAL,
    REQUEST_TOTAL,
    SERVER,
    SERVER_SECONDS,
    UNPAIRED,
    Harness,
    any_value,
    make_span,
    resource_spans,
)


def pair(harness: Harness, client_attributes: dict, server_attributes: dict, **resources: dict) -> None:
    client = make_span(CLIENT, span=10, status=2, attributes=client_attributes)
    server = make_span(SERVER, span=11, parent=10, attributes=server_attributes)
    harness.consume(
        resource_spans("frontend", client, **resources.get("client", {})),
        resource_spans("checkout", server, **resources.get("server", {})),
    )


def test_dimensions_become_labels_on_every_edge_metric() -> None:
    harness = Harness(dimensions=("http.request.method",))
    pair(harness, {"http.request.method": "GET"}, {})
    labels = {"client": "frontend", "server": "checkout", "http_request_method": "GET"}
    assert harness.label_sets(REQUEST_TOTAL) == [labels]
    for metric in (REQUEST_FAILED_TOTAL, SERVER_SECONDS, CLIENT_SECONDS):
        assert harness.get(metric, **labels) is not None, metric


def test_without_prefix_the_side_seen_last_wins() -> None:
    # "If client and server spans have the same attribute, behaviour is undetermined": Tempo
    # keeps whichever side's update ran last. The server span is consumed second here.
    harness = Harness(dimensions=("god",))
    pair(harness, {"god": "ares"}, {"god": "zeus"})
    assert harness.label_sets(REQUEST_TOTAL) == [{"client": "frontend", "server": "checkout", "god": "zeus"}]


def test_a_side_without_the_attribute_keeps_the_other_sides_value() -> None:
    harness = Harness(dimensions=("god",))
    pair(harness, {"god": "ares"}, {})
    assert harness.label_sets(REQUEST_TOTAL) == [{"client": "frontend", "server": "checkout", "god": "ares"}]


def test_client_server_prefix_keeps_both_sides() -> None:
    harness = Harness(dimensions=("beast", "god"), enable_client_server_prefix=True)
    pair(harness, {"beast": "manticore", "god": "ares"}, {"beast": "manticore", "god": "zeus"})
    assert harness.label_sets(REQUEST_TOTAL) == [
        {
            "client": "frontend",
            "server": "checkout",
            "client_beast": "manticore",
            "server_beast": "manticore",
            "client_god": "ares",
            "server_god": "zeus",
        }
    ]


def test_label_order_is_client_server_connection_type_dimensions() -> None:
    harness = Harness(
        dimensions=("b.dim", "a.dim"), enable_client_server_prefix=True, enable_virtual_node_label=True
    )
    call = make_span(CLIENT, span=10, attributes={"a.dim": "1", "b.dim": "2", "peer.service": "ext"})
    harness.consume(resource_spans("frontend", call))
    harness.expire_after(10)
    (series,) = [s for (metric, _), s in harness.series().items() if metric == REQUEST_TOTAL]
    assert [name for name, _ in series.attributes] == [
        "client",
        "server",
        "connection_type",
        "client_b_dim",
        "client_a_dim",
        "virtual_node",
    ]


def test_dimensions_are_looked_up_on_the_resource_first() -> None:
    # Tempo: FindAttributeValue(dim, resourceAttr, spanAttr).
    harness = Harness(dimensions=("deployment.environment",), enable_client_server_prefix=True)
    pair(
        harness,
        {"deployment.environment": "span-value"},
        {"deployment.environment": "server-span"},
        client={"deployment.environment": "prod"},
    )
    assert harness.label_sets(REQUEST_TOTAL) == [
        {
            "client": "frontend",
            "server": "checkout",
            "client_deployment_environment": "prod",
            "server_deployment_environment": "server-span",
        }
    ]


def test_missing_or_empty_dimension_values_are_left_out() -> None:
    # Tempo emits them as "" which Prometheus treats as an absent label.
    harness = Harness(dimensions=("missing", "empty"))
    pair(harness, {"empty": ""}, {})
    assert harness.label_sets(REQUEST_TOTAL) == [{"client": "frontend", "server": "checkout"}]


def test_values_are_stringified_like_tempo() -> None:
    harness = Harness(dimensions=("n", "flag", "ratio", "list"), enable_client_server_prefix=True)
    pair(harness, {"n": 7, "flag": True, "ratio": 0.5, "list": ["a", 1]}, {})
    assert harness.label_sets(REQUEST_TOTAL) == [
        {
            "client": "frontend",
            "server": "checkout",
            "client_n": "7",
            "client_flag": "true",
            "client_ratio": "0.5",
            "client_list": "[a1]",
        }
    ]


def test_dimensions_ride_along_to_database_and_virtual_edges() -> None:
    harness = Harness(dimensions=("k8s.namespace.name",))
    db = make_span(CLIENT, trace=1, span=10, attributes={"db.system": "redis", "server.address": "cache"})
    root = make_span(SERVER, trace=2, span=1)
    harness.consume(resource_spans("frontend", db, root, **{"k8s.namespace.name": "shop"}))
    harness.expire_after(10)
    assert harness.label_sets(REQUEST_TOTAL) == [
        {
            "client": "frontend",
            "server": "cache",
            "connection_type": "database",
            "k8s_namespace_name": "shop",
        },
        {
            "client": "user",
            "server": "frontend",
            "connection_type": "virtual_node",
            "k8s_namespace_name": "shop",
        },
    ]


def test_unpaired_spans_carry_no_dimensions() -> None:
    harness = Harness(dimensions=("k8s.namespace.name",))
    harness.consume(resource_spans("frontend", make_span(CLIENT, span=10), **{"k8s.namespace.name": "shop"}))
    harness.expire_after(10)
    assert harness.label_sets(UNPAIRED) == [{"client": "frontend"}]


def test_colliding_label_names_are_not_emitted_twice() -> None:
    # "client" would collide with the edge label; "a.b" and "a_b" both sanitize to "a_b".
    harness = Harness(dimensions=("client", "a.b", "a_b"))
    pair(harness, {"client": "x", "a.b": "first", "a_b": "second"}, {})
    assert harness.label_sets(REQUEST_TOTAL) == [{"client": "frontend", "server": "checkout", "a_b": "first"}]


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("db.system", "db_system"),
        ("http.request.method", "http_request_method"),
        ("client_k8s.pod-name", "client_k8s_pod_name"),
        ("already_fine_1", "already_fine_1"),
        ("名前", "__"),
        ("1st", "1st"),
    ],
)
def test_sanitize_label_name_matches_prometheus_strutil(name: str, label: str) -> None:
    assert sanitize_label_name(name) == label


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (42, "42"),
        (-7, "-7"),
        (True, "true"),
        (False, "false"),
        (2.0, "2"),
        (0.1, "0.1"),
        (1e21, "1000000000000000000000"),
        (1.5e-7, "0.00000015"),
        (["a", 1, True], "[a1true]"),
        ({"k": "v", "n": 1}, "{k:vn:1}"),
        (b"\x00\x01", ""),
    ],
)
def test_tempo_string(value: object, text: str) -> None:
    assert tempo_string(any_value(value)) == text


def test_go_fixed_special_values() -> None:
    assert format_go_fixed(math.nan) == "NaN"
    assert format_go_fixed(math.inf) == "+Inf"
    assert format_go_fixed(-math.inf) == "-Inf"
    assert format_go_fixed(-0.0) == "-0"
