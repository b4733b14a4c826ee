"""Reading a few named attributes of a span, as Tempo's ``FindAttributeValue`` does.

Spans arrive in the batch schema (:mod:`worker.otlp.batch`), where a span's attributes are a map
of key to ``AnyValue``: the service-graph processor wants a handful of keys (peer and database
attributes, dimensions) out of the ten or so a span carries, and usually finds one or none, so
each is one C-level map lookup instead of a walk over the attribute messages.

The values the processor keeps per resource are already Tempo strings (looked up once per
resource); the span's are turned into strings only when found.
"""

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
