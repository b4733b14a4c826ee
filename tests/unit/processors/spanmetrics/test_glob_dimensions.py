"""``dimensions[].glob``: attribute keys matched by pattern become dimensions under their own name.

Upstream: PR #48312, connector/spanmetricsconnector connector.go ``matchDimensions`` / ``buildKey``
/ ``buildAttributes`` and config.go ``validateDimensions``. The newest upstream main could not be
read here; the code read is the glob-era copy in a code owner's fork
(iblancasa/opentelemetry-collector-contrib@a78b08dc), which matches config.schema.yaml@36ee7b2b.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.processors.spanmetrics.helpers import (
    Pipeline,
    attribute_types,
    counts_by,
    make_request,
    make_resource_spans,
    make_span,
    points,
    simple_request,
)
from worker.config import compile_glob

DEFAULTS = ["service.name", "span.name", "span.kind", "status.code"]


def keys_of(point: Any) -> list[str]:
    return [kv.key for kv in point.proto.attributes]


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        # gobwas/glob compiled with '.' as the separator (connector.go newDimensions).
        ("http.*", "http.method", True),
        ("http.*", "http.request.method", False),
        ("http.**", "http.request.method", True),
        ("*", "region", True),
        ("*", "cloud.region", False),
        ("**", "cloud.region", True),
        ("http.?oute", "http.route", True),
        ("a?b", "a.b", False),
        ("db.[ns]*", "db.name", True),
        ("db.[ns]*", "db.system", True),
        ("db.[ns]*", "db.user", False),
        ("db.[!ns]*", "db.user", True),
        ("x[a-c]", "xb", True),
        ("x[a-c]", "xd", False),
        ("{http,rpc}.method", "rpc.method", True),
        ("{http,rpc}.method", "db.method", False),
        ("{app.*,tier}", "app.team", True),
        ("{app.*,tier}", "tier", True),
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("http.*", "http.", True),
        ("http.*", "xhttp.method", False),  # the whole key must match
    ],
)
def test_glob_syntax(pattern: str, key: str, matches: bool) -> None:
    assert bool(compile_glob(pattern).fullmatch(key)) is matches


def test_glob_takes_span_keys_sorted_then_resource_keys_the_span_lacks() -> None:
    # upstream: connector.go matchDimensions (sortedKeys of the span, then of the resource,
    # skipping keys the span has: the span wins).
    pipeline = Pipeline({"dimensions": [{"glob": "http.*"}]})
    span = make_span(
        attributes={"http.route": "/x", "http.method": "GET", "http.request.size": 5, "other": 1}
    )
    out = pipeline.run(simple_request(span, **{"http.scheme": "https", "http.method": "POST"}))
    [point] = points(out, "calls")
    assert keys_of(point) == [*DEFAULTS, "http.method", "http.route", "http.scheme"]
    assert point.attributes["http.method"] == "GET"
    assert point.attributes["http.scheme"] == "https"
    assert point.value == 1


def test_glob_matched_keys_make_their_own_series_with_their_names() -> None:
    # Series identity includes the matched names (upstream's key holds "name:value").
    pipeline = Pipeline({"dimensions": [{"glob": "app.*"}]})
    out = pipeline.run(
        simple_request(
            make_span(attributes={"app.team": "x"}),
            make_span(attributes={"app.tier": "x"}),
            make_span(attributes={"app.team": "x"}),
            make_span(attributes={"unrelated": "x"}),
        )
    )
    found = sorted(
        (tuple((k, v) for k, v in p.attributes.items() if k not in DEFAULTS), p.value)
        for p in points(out, "calls")
    )
    assert found == [((), 1), ((("app.team", "x"),), 2), ((("app.tier", "x"),), 1)]
    assert sorted(p.value for p in points(out, "duration")) == [1, 1, 2]


def test_named_dimensions_come_before_glob_matches() -> None:
    # upstream: matchDimensions applies every named dimension first, then the globs, whatever
    # the order of the entries in the list.
    pipeline = Pipeline({"dimensions": [{"glob": "b.*"}, {"name": "a", "default": "none"}]})
    out = pipeline.run(simple_request(make_span(attributes={"b.y": 2, "b.x": 1, "a": "v"})))
    [point] = points(out, "calls")
    assert keys_of(point) == [*DEFAULTS, "a", "b.x", "b.y"]
    # The value keeps its type, as for named dimensions.
    assert attribute_types(point.proto.attributes)["b.x"] == "int_value"


def test_glob_in_calls_and_histogram_dimensions_applies_to_that_metric_only() -> None:
    # upstream: buildKey/buildAttributes with p.callsDimensions for calls and
    # p.durationDimensions for duration.
    pipeline = Pipeline(
        {
            "dimensions": [{"glob": "shared.*"}],
            "calls_dimensions": [{"glob": "c.*"}],
            "histogram": {"dimensions": [{"glob": "h.*"}]},
        }
    )
    out = pipeline.run(
        simple_request(
            make_span(attributes={"shared.k": "s", "c.k": "c1", "h.k": "h1"}),
            make_span(attributes={"shared.k": "s", "c.k": "c2", "h.k": "h1"}),
        )
    )
    assert counts_by(out, "calls", "shared.k", "c.k", "h.k") == {("s", "c1", None): 1, ("s", "c2", None): 1}
    assert counts_by(out, "duration", "shared.k", "c.k", "h.k") == {("s", None, "h1"): 2}
    [duration] = points(out, "duration")
    assert keys_of(duration) == [*DEFAULTS, "shared.k", "h.k"]


def test_a_glob_matching_a_name_of_another_list_writes_it_once() -> None:
    # Upstream's attribute map overwrites the key in place: one attribute, first position.
    pipeline = Pipeline({"dimensions": [{"name": "http.method"}], "calls_dimensions": [{"glob": "http.*"}]})
    out = pipeline.run(simple_request(make_span(attributes={"http.method": "GET", "http.route": "/r"})))
    [point] = points(out, "calls")
    assert keys_of(point) == [*DEFAULTS, "http.method", "http.route"]
    assert point.attributes == {
        "service.name": "checkout",
        "span.name": "GET /users",
        "span.kind": "SPAN_KIND_SERVER",
        "status.code": "STATUS_CODE_UNSET",
        "http.method": "GET",
        "http.route": "/r",
    }


def test_event_globs_match_the_span_then_the_resource_overlaid_by_the_event() -> None:
    # upstream: aggregateMetrics builds rscAndEventAttrs (resource, then the event's attributes
    # over it) and matches p.dimensions and p.eDimensions against the span and that map.
    pipeline = Pipeline({"events": {"enabled": True, "dimensions": [{"glob": "exception.*"}]}})
    span = make_span(
        attributes={"exception.escaped": True},
        events=[
            {"exception.type": "IOError", "exception.message": "disk"},
            {"exception.type": "IOError", "exception.message": "disk", "exception.escaped": False},
        ],
    )
    out = pipeline.run(simple_request(span, **{"exception.source": "res", "exception.type": "ResType"}))
    events = points(out, "events")
    assert [keys_of(p) for p in events] == [
        [*DEFAULTS, "exception.escaped", "exception.message", "exception.source", "exception.type"]
    ]
    [point] = events
    assert point.value == 2  # the span's exception.escaped wins over the event's: one series
    assert point.attributes["exception.type"] == "IOError"  # the event wins over the resource
    assert point.attributes["exception.escaped"] is True
    assert point.attributes["exception.source"] == "res"


def test_globs_across_resources_keep_each_resources_values() -> None:
    pipeline = Pipeline({"dimensions": [{"glob": "k8s.*"}]})
    out = pipeline.run(
        make_request(
            make_resource_spans({"service.name": "a", "k8s.namespace": "n1"}, [make_span()]),
            make_resource_spans({"service.name": "b", "k8s.namespace": "n2", "k8s.pod": "p"}, [make_span()]),
        )
    )
    assert counts_by(out, "calls", "service.name", "k8s.namespace", "k8s.pod") == {
        ("a", "n1", None): 1,
        ("b", "n2", "p"): 1,
    }
