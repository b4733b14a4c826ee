"""The wire-format attribute lookup must agree with walking the attribute messages."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from worker.servicegraphs.attributes import attribute_token, find_attribute, walk_attribute

from .helpers import any_value, make_span

KEYS = ("peer.service", "db.system", "db.name", "server.address", "network.peer.port", "x" * 200)


def lookup(span: Span, name: str) -> str | None:
    return find_attribute(span, span.SerializeToString(), attribute_token(name), name)


def test_first_occurrence_wins() -> None:
    span = make_span(3, span=1, attributes=[("peer.service", "first"), ("peer.service", "second")])
    assert lookup(span, "peer.service") == "first"


def test_keys_of_events_and_links_do_not_count() -> None:
    span = make_span(3, span=1, attributes={"other": "x"})
    span.events.add(name="e").attributes.append(KeyValue(key="peer.service", value=any_value("event")))
    span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8).attributes.append(
        KeyValue(key="peer.service", value=any_value("link"))
    )
    assert lookup(span, "peer.service") is None
    span.attributes.append(KeyValue(key="peer.service", value=any_value("span")))
    assert lookup(span, "peer.service") == "span"


def test_key_bytes_inside_values_and_names_do_not_count() -> None:
    token = attribute_token("peer.service").decode()
    span = make_span(
        3, span=1, name="J" + token + "x", attributes={"db.statement": "J\x10" + token + "\x12\x02\n\x00"}
    )
    assert lookup(span, "peer.service") is None


def test_prefix_keys_are_told_apart() -> None:
    span = make_span(3, span=1, attributes={"db.system.name": "mysql"})
    assert lookup(span, "db.system") is None
    assert lookup(span, "db.system.name") == "mysql"


@pytest.mark.parametrize(
    "value",
    ["", "ascii", "ünïcödé", "x" * 300, 5432, -1, True, 2.5, ["a", 2], {"k": "v"}, b"\x00"],
)
def test_values_of_every_type(value: object) -> None:
    span = make_span(3, span=1, attributes=[("before", "b"), ("server.address", value), ("after", 1)])
    assert lookup(span, "server.address") == walk_attribute(span.attributes, "server.address")


def test_a_key_without_value_reads_as_empty() -> None:
    span = make_span(3, span=1)
    span.attributes.append(KeyValue(key="peer.service"))
    span.attributes.append(KeyValue(key="db.system", value=AnyValue()))
    assert lookup(span, "peer.service") == ""
    assert lookup(span, "db.system") == ""


def test_random_spans_agree_with_the_walk() -> None:
    rng = random.Random(7)
    values: list[object] = ["v", "", "é" * 70, 1, 2**40, -(2**40), False, 0.25, [1, "a"], b"\x4a\x0a"]
    for _ in range(500):
        attributes = [
            (rng.choice((*KEYS, "k", "kk", "J")), rng.choice(values)) for _ in range(rng.randint(0, 12))
        ]
        span = make_span(rng.choice((2, 3, 4, 5)), span=rng.randint(1, 1 << 60), attributes=attributes)
        if rng.random() < 0.3:
            span.events.add(name="peer.service").attributes.append(
                KeyValue(key=rng.choice(KEYS), value=any_value("event"))
            )
        for name in KEYS:
            assert lookup(span, name) == walk_attribute(span.attributes, name), (name, attributes)
