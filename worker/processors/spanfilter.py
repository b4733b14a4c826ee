"""Tempo's ``filter_policies`` (pkg/spanfilter): whether a span feeds a processor, decided per span."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from worker.config import FilterPolicy, PolicyAttribute, PolicyMatch
from worker.otlp.batch import BatchSpan

__all__ = ["SpanFilter"]

#: One condition of a policy: (resource attributes, span) -> does it hold.
_Check = Callable[[Mapping[str, AnyValue], BatchSpan], bool]

_KIND_NAMES: dict[int, str] = {v.number: v.name for v in trace_pb2.Span.SpanKind.DESCRIPTOR.values}
_STATUS_NAMES: dict[int, str] = {v.number: v.name for v in trace_pb2.Status.StatusCode.DESCRIPTOR.values}


def _enum_regex(pattern: re.Pattern[str], names: Mapping[int, str]) -> Callable[[int], bool]:
    """A regex over an enum's name, precomputed for the known values; an unknown value reads as its
    number, as Go's generated ``String()`` writes it."""
    known = {number: pattern.search(name) is not None for number, name in names.items()}

    def matches(number: int) -> bool:
        found = known.get(number)
        return found if found is not None else pattern.search(str(number)) is not None

    return matches


def _intrinsic_check(name: str, regex: bool, value: str) -> _Check:
    # policymatch/intrinsic.go: strict compares name / the enum value, regex searches the name or
    # the enum's name (span.Kind.String(), span.GetStatus().GetCode().String()).
    if name == "name":
        if regex:
            search = re.compile(value).search
            return lambda _resource, span: search(span.name) is not None
        return lambda _resource, span: bool(span.name == value)
    if name == "kind":
        if regex:
            kind_matches = _enum_regex(re.compile(value), _KIND_NAMES)
            return lambda _resource, span: kind_matches(span.kind)
        kind = trace_pb2.Span.SpanKind.Value(value)
        return lambda _resource, span: bool(span.kind == kind)
    if regex:
        status_matches = _enum_regex(re.compile(value), _STATUS_NAMES)
        return lambda _resource, span: status_matches(span.status.code)
    code = trace_pb2.Status.StatusCode.Value(value)
    return lambda _resource, span: bool(span.status.code == code)


def _value_test(regex: bool, value: bool | int | float | str) -> Callable[[AnyValue], bool]:
    # policymatch/attribute.go matchesAnyFilter: the typed getter of the configured value's type,
    # which reads a zero value when the attribute holds another type (GetStringValue() of an int
    # is "", so a strict "" matches it, as in Tempo); regex searches GetStringValue().
    if regex:
        search = re.compile(str(value)).search
        return lambda found: search(found.string_value) is not None
    if isinstance(value, bool):
        return lambda found: found.bool_value == value
    if isinstance(value, int):
        return lambda found: found.int_value == value
    if isinstance(value, float):
        return lambda found: found.double_value == value
    return lambda found: found.string_value == value


def _attribute_check(scope: str, key: str, regex: bool, value: bool | int | float | str) -> _Check:
    test = _value_test(regex, value)
    if scope == "resource":

        def resource_check(resource: Mapping[str, AnyValue], _span: BatchSpan) -> bool:
            found = resource.get(key)
            return found is not None and test(found)

        return resource_check

    def span_check(_resource: Mapping[str, AnyValue], span: BatchSpan) -> bool:
        found = span.attributes.get(key)
        return found is not None and test(found)

    return span_check


def _check(match: PolicyMatch, attribute: PolicyAttribute) -> _Check:
    scope, name = attribute.target
    regex = match.match_type == "regex"
    if scope == "intrinsic":
        return _intrinsic_check(name, regex, str(attribute.value))
    return _attribute_check(scope, name, regex, attribute.value)


def _policy(match: PolicyMatch) -> _Check:
    """All of a policy's conditions (splitpolicy.go Match); no condition matches every span."""
    checks = tuple(_check(match, attribute) for attribute in match.attributes)
    if len(checks) == 1:
        return checks[0]
    return lambda resource, span: all(check(resource, span) for check in checks)


class SpanFilter:
    """Tempo's SpanFilter.ApplyFilterPolicy: an ``exclude`` that matches rejects, then an
    ``include_any`` that matches accepts, then every ``include`` must match; with only
    ``include_any`` policies, a span none of them matches is rejected."""

    __slots__ = ("_exclude", "_include", "_include_any")

    def __init__(self, policies: Sequence[FilterPolicy]) -> None:
        self._include = tuple(_policy(p.include) for p in policies if p.include is not None)
        self._include_any = tuple(_policy(p.include_any) for p in policies if p.include_any is not None)
        self._exclude = tuple(_policy(p.exclude) for p in policies if p.exclude is not None)

    @property
    def active(self) -> bool:
        """False with no policies: every span is kept, so callers may skip :meth:`keep`."""
        return bool(self._include or self._include_any or self._exclude)

    def keep(self, resource: Mapping[str, AnyValue], span: BatchSpan) -> bool:
        """Whether ``span`` (with its resource's attributes) passes the policies."""
        for policy in self._exclude:
            if policy(resource, span):
                return False
        for policy in self._include_any:
            if policy(resource, span):
                return True
        if self._include:
            return all(policy(resource, span) for policy in self._include)
        return not self._include_any
