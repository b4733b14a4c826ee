"""Tempo's ``filter_policies``: the configuration it accepts and the spans it keeps.

Cases mirror grafana/tempo pkg/spanfilter (spanfilter_test.go, splitpolicy_test.go,
policymatch/attribute_test.go, policymatch/intrinsic_test.go); each test names its upstream one.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydantic import BaseModel, ValidationError

from worker.config import FilterPolicy, PolicyAttribute, PolicyMatch, parse_policy_key
from worker.otlp.batch import BatchSpan, as_batch
from worker.processors.spanfilter import SpanFilter

SERVER = Span.SPAN_KIND_SERVER
CLIENT = Span.SPAN_KIND_CLIENT
INTERNAL = Span.SPAN_KIND_INTERNAL
OK = Status.STATUS_CODE_OK
ERROR = Status.STATUS_CODE_ERROR


def any_value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    assert isinstance(value, str)
    return AnyValue(string_value=value)


def make_span(
    *, name: str = "", kind: int = 0, status: int | None = None, attributes: dict[str, object] | None = None
) -> BatchSpan:
    """A span in the batch schema (attributes as a map), as the processors receive it."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(name=name, kind=kind)  # type: ignore[arg-type]
    if status is not None:
        span.status.code = status  # type: ignore[assignment]
    for key, value in (attributes or {}).items():
        span.attributes.add(key=key, value=any_value(value))
    return as_batch(request).resource_spans[0].scope_spans[0].spans[0]


def resource(**attributes: object) -> dict[str, AnyValue]:
    return {key.replace("_", "."): any_value(value) for key, value in attributes.items()}


def match(match_type: str, *pairs: tuple[str, object]) -> dict[str, Any]:
    return {"match_type": match_type, "attributes": [{"key": k, "value": v} for k, v in pairs]}


def policies(*items: dict[str, Any]) -> list[FilterPolicy]:
    return [FilterPolicy.model_validate(item) for item in items]


def keeps(items: list[FilterPolicy], res: dict[str, AnyValue], span: BatchSpan) -> bool:
    return SpanFilter(items).keep(res, span)


EARTH = {"name": "test", "location": "earth", "othervalue": "somethinginteresting"}


# ---------------------------------------------------------------------------------- filtering


def test_no_policies_keep_every_span_and_are_inactive() -> None:
    # upstream: spanfilter_test.go TestSpanFilter_NewSpanFilter, TestSpanMetrics_applyFilterPolicy
    # "no policies matches" / "nil policies matches"
    empty = SpanFilter([])
    assert empty.active is False
    assert empty.keep({}, make_span()) is True
    assert SpanFilter(policies({"exclude": match("strict", ("name", "x"))})).active is True


@pytest.mark.parametrize(
    ("name", "items", "res", "span", "expected"),
    [
        (
            "a matching policy",
            [{"include": match("strict", ("kind", "SPAN_KIND_SERVER"), ("resource.location", "earth"))}],
            EARTH,
            {"kind": SERVER, "status": OK, "name": "test"},
            True,
        ),
        (
            "a non-matching include policy",
            [{"include": match("strict", ("kind", "SPAN_KIND_CLIENT"), ("resource.location", "earth"))}],
            EARTH,
            {"kind": SERVER, "status": OK, "name": "test"},
            False,
        ),
        (
            "a matching include with rejecting exclude policy",
            [
                {
                    "include": match("strict", ("kind", "SPAN_KIND_SERVER"), ("resource.location", "earth")),
                    "exclude": match("regex", ("resource.othervalue", "something.*")),
                }
            ],
            EARTH,
            {"kind": SERVER, "status": OK, "name": "test"},
            False,
        ),
        (
            "a matching includeAny policy for internal span kind for allowed service",
            [
                {
                    "include": match("strict", ("kind", "SPAN_KIND_SERVER")),
                    "include_any": match(
                        "strict", ("kind", "SPAN_KIND_INTERNAL"), ("resource.service.name", "auth-service")
                    ),
                }
            ],
            {"service.name": "auth-service"},
            {"kind": INTERNAL, "name": "check-token"},
            True,
        ),
        (
            "a matching span across multiple includeAny policies",
            [
                {
                    "include_any": match(
                        "strict", ("kind", "SPAN_KIND_INTERNAL"), ("resource.service.name", "auth-service")
                    )
                },
                {
                    "include_any": match(
                        "strict",
                        ("kind", "SPAN_KIND_INTERNAL"),
                        ("resource.service.name", "payments-service"),
                    )
                },
            ],
            {"service.name": "payments-service"},
            {"kind": INTERNAL, "name": "charge-card"},
            True,
        ),
        (
            "a non matching includeAny policy with no other include policy",
            [
                {
                    "include_any": match(
                        "strict", ("kind", "SPAN_KIND_INTERNAL"), ("resource.service.name", "auth-service")
                    )
                }
            ],
            {"service.name": "distributor"},
            {"kind": INTERNAL, "name": "check-token"},
            False,
        ),
        (
            "a non matching includeAny policy rejects internal span for non-allowed service",
            [
                {
                    "include": match("strict", ("kind", "SPAN_KIND_SERVER")),
                    "include_any": match(
                        "strict", ("kind", "SPAN_KIND_INTERNAL"), ("resource.service.name", "auth-service")
                    ),
                }
            ],
            {"service.name": "noisy-service"},
            {"kind": INTERNAL, "name": "random-log"},
            False,
        ),
        (
            "a matching includeAny is excluded by a Exclude policy",
            [
                {
                    "include_any": match(
                        "strict", ("kind", "SPAN_KIND_INTERNAL"), ("resource.service.name", "auth-service")
                    ),
                    "exclude": match("strict", ("resource.env", "dev")),
                }
            ],
            {"service.name": "auth-service", "env": "dev"},
            {"kind": INTERNAL, "name": "check-token"},
            False,
        ),
        (
            "a matching includeAny policy with regex match type",
            [{"include_any": match("regex", ("kind", "SPAN_KIND_.*"), ("resource.service.name", "auth-.*"))}],
            {"service.name": "auth-service"},
            {"kind": INTERNAL, "name": "check-token"},
            True,
        ),
        (
            "include exclude and includeAny policy where includeAny matches",
            [
                {
                    "include": match("strict", ("kind", "SPAN_KIND_SERVER")),
                    "include_any": match(
                        "strict", ("kind", "SPAN_KIND_INTERNAL"), ("resource.service.name", "auth-service")
                    ),
                    "exclude": match("strict", ("resource.env", "dev")),
                }
            ],
            {"service.name": "auth-service", "env": "prod"},
            {"kind": INTERNAL, "name": "check-token"},
            True,
        ),
        (
            "allows server spans even if IncludeAny is present",
            [
                {
                    "include": match("strict", ("kind", "SPAN_KIND_SERVER")),
                    "include_any": match(
                        "strict", ("kind", "SPAN_KIND_INTERNAL"), ("resource.service.name", "auth-service")
                    ),
                }
            ],
            {"service.name": "any-service"},
            {"kind": SERVER, "name": "get-user"},
            True,
        ),
        (
            # Not upstream's: every include policy must match, not any (SpanFilter.isIncluded).
            "all include policies must match",
            [
                {"include": match("strict", ("kind", "SPAN_KIND_SERVER"))},
                {"include": match("strict", ("resource.env", "prod"))},
            ],
            {"env": "dev"},
            {"kind": SERVER},
            False,
        ),
    ],
)
def test_apply_filter_policy(
    name: str, items: list[dict[str, Any]], res: dict[str, object], span: dict[str, Any], expected: bool
) -> None:
    # upstream: spanfilter_test.go TestSpanMetrics_applyFilterPolicy (cases by name)
    attributes = {key: any_value(value) for key, value in res.items()}
    assert keeps(policies(*items), attributes, make_span(**span)) is expected, name


@pytest.mark.parametrize(
    ("name", "policy", "res", "span", "expected"),
    [
        (
            "most basic span kind matching",
            match("strict", ("span.kind", "SPAN_KIND_CLIENT")),
            {},
            {"attributes": {"kind": "SPAN_KIND_CLIENT"}},
            True,
        ),
        (
            "most basic intrinsic kind matching",
            match("strict", ("kind", "SPAN_KIND_CLIENT")),
            {},
            {"kind": CLIENT},
            True,
        ),
        (
            "simple matching",
            match(
                "strict",
                ("kind", "SPAN_KIND_CLIENT"),
                ("span.status.code", "STATUS_CODE_OK"),
                ("resource.location", "earth"),
                ("resource.name", "test"),
                ("resource.othervalue", "somethinginteresting"),
            ),
            EARTH,
            {"kind": CLIENT, "attributes": {"status.code": "STATUS_CODE_OK"}},
            True,
        ),
        (
            "kind and status intrinsics",
            match("strict", ("kind", "SPAN_KIND_CLIENT"), ("status", "STATUS_CODE_OK")),
            {},
            {"kind": CLIENT, "status": OK},
            True,
        ),
        (
            "resource matching",
            match("strict", ("resource.location", "earth"), ("resource.othervalue", "somethinginteresting")),
            EARTH,
            {},
            True,
        ),
        ("a missing span attribute does not match", match("strict", ("span.foo", "bar")), {}, {}, False),
        ("no attributes match every span", match("strict"), {}, {}, True),
    ],
)
def test_split_policy_match(
    name: str, policy: dict[str, Any], res: dict[str, object], span: dict[str, Any], expected: bool
) -> None:
    # upstream: spanfilter_test.go Test_splitPolicy_Match (cases by name)
    attributes = {key: any_value(value) for key, value in res.items()}
    assert keeps(policies({"include": policy}), attributes, make_span(**span)) is expected, name


@pytest.mark.parametrize(
    ("name", "pairs", "attributes", "expected"),
    [
        ("single string match", [("foo", "bar")], {"foo": "bar"}, True),
        (
            "multiple string match",
            [("foo", "bar"), ("otherfoo", "notbar")],
            {"foo": "bar", "otherfoo": "notbar"},
            True,
        ),
        (
            "multiple string non match",
            [("foo", "bar"), ("otherfoo", "nope")],
            {"foo": "bar", "otherfoo": "notbar"},
            False,
        ),
        (
            "combination match",
            [("one", "1"), ("oneone", 11), ("oneonepointone", 11.1), ("matching", True)],
            {"one": "1", "oneone": 11, "oneonepointone": 11.1, "matching": True},
            True,
        ),
        ("value type mismatch string", [("dd", True)], {"dd": "11xxxxx"}, False),
        ("value type mismatch string/int", [("dd", "value")], {"dd": 11}, False),
        ("value type mismatch string/float", [("11", "eleven")], {"11": 11.1}, False),
        ("value type mismatch string/bool", [("11", "eleven")], {"11": False}, False),
        ("value type mismatch int/string", [("11", 11)], {"11": "11"}, False),
        ("value mismatch int", [("11", 11)], {"11": 12}, False),
        ("value mismatch bool", [("11", True)], {"11": False}, False),
        ("value mismatch float", [("11", 11.0)], {"11": 11.1}, False),
        # Tempo reads the typed getter, which gives the zero value for another type: a strict ""
        # matches an int attribute, a strict 0 a string one, a strict false a missing-type one.
        ("typed getter zero value string", [("a", "")], {"a": 5}, True),
        ("typed getter zero value int", [("a", 0)], {"a": "x"}, True),
        ("an int never equals a double", [("a", 11)], {"a": 11.0}, False),
    ],
)
def test_strict_attribute_filter(
    name: str, pairs: list[tuple[str, object]], attributes: dict[str, object], expected: bool
) -> None:
    # upstream: policymatch/attribute_test.go Test_strictAttributeFilter_Matches (cases by name),
    # on span attributes and on resource attributes alike.
    on_span = match("strict", *((f"span.{k}", v) for k, v in pairs))
    assert keeps(policies({"include": on_span}), {}, make_span(attributes=attributes)) is expected, name
    on_resource = match("strict", *((f"resource.{k}", v) for k, v in pairs))
    res = {key: any_value(value) for key, value in attributes.items()}
    assert keeps(policies({"include": on_resource}), res, make_span()) is expected, name


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [
        ("foo", "foo", True),
        ("foo", "bar", False),
        ("11xxxxx", r"\d\d\w{5}", True),
        ("prefix-foo-suffix", "foo", True),  # Go's MatchString searches, unanchored
        ("foo", "^o", False),
    ],
)
def test_regex_attribute_filter(value: str, pattern: str, expected: bool) -> None:
    # upstream: policymatch/attribute_test.go Test_regexpAttributeFilter_Matches and
    # Test_strictAttributeFilter_Matches "regex basic match"
    policy = policies({"include": match("regex", ("span.server", pattern))})
    assert keeps(policy, {}, make_span(attributes={"server": value})) is expected


def test_regex_reads_the_string_value_of_other_types() -> None:
    # attribute.go matchesAnyFilter: regex.MatchString(attr.Value.GetStringValue()): "" for an int.
    assert keeps(
        policies({"include": match("regex", ("span.code", "^$"))}), {}, make_span(attributes={"code": 200})
    )
    assert not keeps(
        policies({"include": match("regex", ("span.code", "200"))}), {}, make_span(attributes={"code": 200})
    )


SPAN_SERVER_OK = {"kind": SERVER, "status": OK, "name": "test"}


@pytest.mark.parametrize(
    ("name", "policy", "span", "expected"),
    [
        (
            "match on name, kind and status",
            match("strict", ("kind", "SPAN_KIND_SERVER"), ("status", "STATUS_CODE_OK"), ("name", "test")),
            SPAN_SERVER_OK,
            True,
        ),
        (
            "unmatched name",
            match("strict", ("kind", "SPAN_KIND_SERVER"), ("status", "STATUS_CODE_OK"), ("name", "test")),
            {**SPAN_SERVER_OK, "name": "test2"},
            False,
        ),
        (
            "unmatched status",
            match("strict", ("kind", "SPAN_KIND_SERVER"), ("status", "STATUS_CODE_OK"), ("name", "test")),
            {"kind": CLIENT, "status": ERROR, "name": "test"},
            False,
        ),
        (
            "unmatched kind",
            match("strict", ("kind", "SPAN_KIND_SERVER"), ("status", "STATUS_CODE_OK"), ("name", "test")),
            {**SPAN_SERVER_OK, "kind": CLIENT},
            False,
        ),
        (
            "matched regex kind and status",
            match("regex", ("kind", ".*_KIND_.*"), ("status", ".*_CODE_.*")),
            SPAN_SERVER_OK,
            True,
        ),
        (
            "unmatched regex kind",
            match("regex", ("kind", ".*_CLIENT"), ("status", ".*_OK")),
            SPAN_SERVER_OK,
            False,
        ),
        (
            "unmatched regex status",
            match("regex", ("kind", ".*_SERVER"), ("status", ".*_ERROR")),
            SPAN_SERVER_OK,
            False,
        ),
        ("regex name", match("regex", ("name", "^te")), SPAN_SERVER_OK, True),
        ("an unset status is STATUS_CODE_UNSET", match("strict", ("status", "STATUS_CODE_UNSET")), {}, True),
        ("span:kind is kind", match("strict", ("span:kind", "SPAN_KIND_SERVER")), SPAN_SERVER_OK, True),
        # Go's String() of an enum value it does not know is the number.
        ("an unknown kind reads as its number", match("regex", ("kind", "^9$")), {"kind": 9}, True),
        ("an unknown status reads as its number", match("regex", ("status", "^7$")), {"status": 7}, True),
    ],
)
def test_intrinsic_policy_match(
    name: str, policy: dict[str, Any], span: dict[str, Any], expected: bool
) -> None:
    # upstream: policymatch/intrinsic_test.go TestIntrinsicPolicyMatch_Matches (cases by name)
    assert keeps(policies({"include": policy}), {}, make_span(**span)) is expected, name


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        *((kind, True) for kind in (SERVER, CLIENT, Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_CONSUMER)),
        *((kind, False) for kind in (INTERNAL, Span.SPAN_KIND_UNSPECIFIED)),
    ],
)
def test_the_default_service_graph_kind_regex(kind: int, expected: bool) -> None:
    # upstream: policymatch/intrinsic_test.go "optimized regex kind matches SERVER" ... "rejects
    # UNSPECIFIED" and "non-canonical regex kind falls back to engine and matches SERVER"
    for pattern in (
        "SPAN_KIND_(SERVER|CONSUMER|CLIENT|PRODUCER)",
        "SPAN_KIND_(CLIENT|SERVER|PRODUCER|CONSUMER)",
    ):
        assert (
            keeps(policies({"include": match("regex", ("kind", pattern))}), {}, make_span(kind=kind))
            is expected
        )


# ---------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("key", "target"),
    [
        ("kind", ("intrinsic", "kind")),
        ("name", ("intrinsic", "name")),
        ("status", ("intrinsic", "status")),
        ("span:status", ("intrinsic", "status")),
        ("resource.service.name", ("resource", "service.name")),
        ("span.http.route", ("span", "http.route")),
        ('span."foo bar"', ("span", "foo bar")),
        ('resource."a\\"b"', ("resource", 'a"b')),
    ],
)
def test_policy_keys(key: str, target: tuple[str, str]) -> None:
    # upstream: splitpolicy.go newSplitPolicy over traceql.ParseIdentifier
    assert parse_policy_key(key) == target
    assert PolicyAttribute(key=key, value="x").target == target


@pytest.mark.parametrize(
    "key",
    [
        "unsupported",
        "span:childCount",
        "duration",
        ".foo",
        "event.x",
        "link.x",
        "span.",
        "span.a b",
        'span."x',
        "",
    ],
)
def test_unsupported_keys_are_refused_naming_the_allowed_ones(key: str) -> None:
    # upstream: splitpolicy_test.go Test_newSplitPolicy "invalid intrinsic", "unsupported intrinsic";
    # config.go ValidatePolicyMatch (scopes other than resource and span are unsupported)
    with pytest.raises(ValidationError) as error:
        PolicyAttribute(key=key, value="foo")
    assert "use resource.<attribute>, span.<attribute> or an intrinsic (name, status, kind)" in str(
        error.value
    )


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (match("strict", ("kind", "foo")), "kind: unsupported value 'foo' (allowed: SPAN_KIND_UNSPECIFIED, "),
        (
            match("strict", ("status", "foo")),
            "status: unsupported value 'foo' (allowed: STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR)",
        ),
        (match("strict", ("status", True)), "status: the value must be a string (got True)"),
        (match("strict", ("kind", True)), "kind: the value must be a string (got True)"),
        (match("strict", ("name", True)), "name: the value must be a string (got True)"),
        (match("regex", ("span.foo", ".*(")), "span.foo: invalid regular expression '.*('"),
        (match("regex", ("kind", ".*(")), "kind: invalid regular expression '.*('"),
        (match("regex", ("span.foo", 5)), "span.foo: the value must be a regular expression (got 5)"),
        (match("Strict", ("span.foo", "x")), "Input should be 'strict' or 'regex'"),
        ({"attributes": []}, "match_type\n  Field required"),
        ({"match_type": "strict", "attributes": [{"key": "span.foo"}]}, "value\n  Field required"),
        (match("strict", ("span.foo", 1 << 63)), "an integer value must fit in 64 bits"),
    ],
)
def test_invalid_values_are_refused(policy: dict[str, Any], message: str) -> None:
    # upstream: splitpolicy_test.go Test_newSplitPolicy ("invalid regex span attribute matching",
    # "invalid regex kind intrinsic matching", "unsupported kind intrinsic string value",
    # "unsupported status intrinsic string value", "unsupported status/kind/name intrinsic value");
    # config.go ValidatePolicyMatch (invalid match type); attribute.go NewRegexpAttributeFilter
    with pytest.raises(ValidationError) as error:
        PolicyMatch.model_validate(policy)
    assert message in str(error.value)


def test_a_policy_needs_include_include_any_or_exclude() -> None:
    # upstream: spanfilter_test.go "non nil policy with nil include/includeAny/exclude fails"
    with pytest.raises(ValidationError, match="at least one of include, include_any, exclude"):
        FilterPolicy.model_validate({})


def test_typed_values_keep_their_yaml_type() -> None:
    # attribute.go NewStrictAttributeFilter: string, int, float64, bool
    values = [PolicyAttribute(key="span.a", value=v).value for v in ("1", 1, 1.0, True)]
    assert [(type(v), v) for v in values] == [(str, "1"), (int, 1), (float, 1.0), (bool, True)]


def test_a_bad_policy_names_its_location() -> None:
    # The models nest where the processors' options will put them (``filter_policies``).
    class Holder(BaseModel):
        filter_policies: tuple[FilterPolicy, ...] = ()

    with pytest.raises(ValidationError) as error:
        Holder.model_validate({"filter_policies": [{"include": match("strict", ("kind", "SERVER"))}]})
    [problem] = error.value.errors()
    assert problem["loc"] == ("filter_policies", 0, "include")
    assert problem["msg"].startswith("Value error, kind: unsupported value 'SERVER' (allowed: SPAN_KIND_")
