"""Named attributes of a span, found as Tempo's ``FindAttributeValue`` finds them (one map lookup each)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from worker.processors.servicegraphs.labels import tempo_string

__all__ = ["AttributeMap", "find_attribute", "span_attribute"]

#: A span's attributes in the batch schema: key -> ``AnyValue`` (a protobuf map, read-only here).
AttributeMap = Mapping[str, Any]


def find_attribute(
    names: Iterable[str], resource_values: Mapping[str, str], attributes: AttributeMap
) -> tuple[str, str] | None:
    """The first of ``names`` found, resource first then span, as ``(name, Tempo string)``.

    ``resource_values`` holds the resource's attributes already as Tempo strings; it is usually
    empty (peer and database attributes belong to spans), and then only the span is asked.
    """
    get = attributes.get
    if not resource_values:
        for name in names:
            found = get(name)
            if found is not None:
                return name, found.string_value or tempo_string(found)
        return None
    for name in names:
        value = resource_values.get(name)
        if value is not None:
            return name, value
        found = get(name)
        if found is not None:
            return name, found.string_value or tempo_string(found)
    return None


def span_attribute(names: Iterable[str], attributes: AttributeMap) -> str | None:
    """The first of ``names`` among the span's attributes (never the resource's), as a Tempo string."""
    get = attributes.get
    for name in names:
        found = get(name)
        if found is not None:
            return found.string_value or tempo_string(found)
    return None
