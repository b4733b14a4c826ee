"""Attribute lookups in a span's attribute map must agree with walking the attribute messages."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from worker.otlp.batch import as_batch
from worker.processors.servicegraphs.attributes import find_attribute, span_attribute
from worker.processors.servicegraphs.labels import tempo_string

from .helpers import any_value, make_request, make_span, resource_spans

KEYS = ("peer.service", "db.system", "db.name", "server.address", "network.peer.port", "x" * 200)


def batch_attributes(span: Span) -> Any:
    """The span's attributes as the processor sees them: the batch schema's map."""
    request = as_batch(make_request(resource_spans("svc", span)))
    return request.resource_spans[0].scope_spans[0].spans[0].attributes


def walk(span: Span, name: str) -> str | None:
    """Tempo's ``FindAttributeValue`` on the span alone, the plain way (first occurrence)."""
    for kv in span.attributes:
        if kv.key == name:
            return tempo_string(kv.value)
    return None


def lookup(span: Span, name: str) -> str | None:
    return span_attribute((name,), batch_attributes(span))


def test_the_first_name_found_wins() -> None:
    span = make_span(3, span=1, attributes={"db.system": "redis", "db.name": "cache"})
    attributes = batch_attributes(span)
    assert span_attribute(("db.namespace", "db.name", "db.system"), attributes) == "cache"
    assert find_attribute(("db.namespace", "db.system", "db.name"), {}, attributes) == ("db.system", "redis")
    assert find_attribute(("db.namespace",), {}, attributes) is None


def test_resource_values_come_before_the_span() -> None:
    attributes = batch_attributes(make_span(3, span=1, attributes={"db.name": "span"}))
    assert find_attribute(("db.name",), {"db.name": "resource"}, attributes) == ("db.name", "resource")
    # Per name: an earlier name on the span beats a later one on the resource (Tempo's order).
    assert find_attribute(("db.name", "db.system"), {"db.system": "r"}, attributes) == ("db.name", "span")


def test_a_repeated_key_reads_as_its_last_occurrence() -> None:
    """Invalid OTLP (keys must be unique); the map keeps the last one (see worker.otlp.batch)."""
    span = make_span(3, span=1, attributes=[("peer.service", "first"), ("peer.service", "second")])
    assert lookup(span, "peer.service") == "second"


def test_keys_of_events_and_links_do_not_count() -> None:
    span = make_span(3, span=1, attributes={"other": "x"})
    span.events.add(name="e").attributes.append(KeyValue(key="peer.service", value=any_value("event")))
    span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8).attributes.append(
        KeyValue(key="peer.service", value=any_value("link"))
    )
    assert lookup(span, "peer.service") is None
    span.attributes.append(KeyValue(key="peer.service", value=any_value("span")))
    assert lookup(span, "peer.service") == "span"


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
    assert lookup(span, "server.address") == walk(span, "server.address")


def test_a_key_without_value_reads_as_empty() -> None:
    span = make_span(3, span=1)
    span.attributes.append(KeyValue(key="peer.service"))
    span.attributes.append(KeyValue(key="db.system", value=AnyValue()))
    assert lookup(span, "peer.service") == ""
    assert lookup(span, "db.system") == ""


def test_random_spans_agree_with_the_walk() -> None:
    rng = random.Random(7)
    values: list[object] = ["v", "", "é" * 70, 1, 2**40, -(2**40), False, 0.25, [1, "a"], b"\x4a\x0a"]
    for _ in range(300):
        keys = rng.sample((*KEYS, "k", "kk", "J"), rng.randint(0, 9))  # unique, as OTLP requires
        attributes = [(key, rng.choice(values)) for key in keys]
        span = make_span(rng.choice((2, 3, 4, 5)), span=rng.randint(1, 1 << 60), attributes=attributes)
        if rng.random() < 0.3:
            span.events.add(name="peer.service").attributes.append(
                KeyValue(key=rng.choice(KEYS), value=any_value("event"))
            )
        for name in KEYS:
            assert lookup(span, name) == walk(span, name), (name, attributes)
