"""The unit of state: one series (metric + resource + attribute set), as a delta or cumulative value.

``merge_series`` merges deltas within a processor's interval; both stores fold with state/fold.py,
its field-for-field twin on stored records (tests/unit/state/test_fold.py checks they agree).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from worker.model.exphistogram import ExpHistogram
from worker.model.values import Attributes

__all__ = [
    "CONNECTOR_OVERFLOW",
    "OVERFLOW_ATTRIBUTE",
    "SERIES_ID_SEPARATOR",
    "TEMPO_OVERFLOW",
    "Attributes",
    "Exemplar",
    "MetricDescriptor",
    "MetricKind",
    "Series",
    "Temporality",
    "TenantDeltas",
    "companion_series",
    "emitted_count",
    "make_series_id",
    "merge_deltas",
    "merge_series",
    "series_digest",
    "with_companions",
]

#: The attribute that marks the series absorbing a tenant's new series past its active-series
#: limit (the connector's ``otel.metric.overflow``).
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
#: The overflow series' attributes: the connector's (a bool, rendered "true" by Prometheus) ...
CONNECTOR_OVERFLOW: tuple[tuple[str, bool | str], ...] = ((OVERFLOW_ATTRIBUTE, True),)
#: ... and Tempo's registry's (``metric_overflow="true"``, registry/overflow in Tempo's
#: modules/generator/registry, #5954), used in Tempo mode.
TEMPO_OVERFLOW: tuple[tuple[str, bool | str], ...] = (("metric_overflow", "true"),)

#: Separates the parts of a series id (metric, resource id, ``name=value`` attributes).
SERIES_ID_SEPARATOR = "\x1e"

#: (trace_id, span_id, value, time_unix_nano): plain tuples, because they are packed by the thousand.
Exemplar = tuple[bytes, bytes, float, int]


class Temporality(StrEnum):
    CUMULATIVE = "CUMULATIVE"
    DELTA = "DELTA"


class MetricKind(IntEnum):
    SUM = 1
    HISTOGRAM = 2
    EXPONENTIAL_HISTOGRAM = 3
    #: An OTLP Gauge whose int data point is 1 for every live series (Tempo's ``traces_target_info``
    #: and ``traces_service_graph_connection_info``): the series' count only says it was seen.
    INFO = 4


@dataclass(frozen=True, slots=True)
class MetricDescriptor:
    """What the OTLP builder needs to know about a metric beyond its data points."""

    name: str
    kind: MetricKind
    unit: str = ""
    description: str = ""
    bounds: tuple[float, ...] = ()
    scope: str = "spanmetricsconnector"
    #: Position within its scope, so output order is stable (calls, duration, events).
    order: int = 0
    #: CUMULATIVE only: a series' first emission writes a point of value 0 before its counted
    #: point (see :attr:`Series.zero_ns`), so that ``rate()`` sees the first increment.
    zero_init: bool = False
    #: The metric name its series carry, when that is not ``name``: one metric written twice
    #: under one name in two scopes (Tempo's classic and native histograms side by side).
    key: str = ""

    @property
    def series_metric(self) -> str:
        """What :attr:`Series.metric` says for this metric's series (the descriptors' map key)."""
        return self.key or self.name


@dataclass(slots=True)
class Series:
    """A series' values over some span of time: a delta from one flush, or the cumulative total.

    ``start_ns`` is when the series was created (cumulative) or when the covered interval began
    (delta); ``last_ns`` is when it last received data, which drives expiry.
    """

    series_id: str
    metric: str
    resource_id: str
    attributes: Attributes
    start_ns: int
    last_ns: int
    count: int = 0
    sum: float = 0.0
    buckets: list[int] | None = None
    exp: ExpHistogram | None = None
    exemplars: list[Exemplar] = field(default_factory=list)
    #: The attributes already serialized for an OTLP data point, one length-prefixed
    #: ``KeyValue`` each, as the Redis store keeps them: emission then writes them out as they
    #: are. ``attributes`` may be left empty when these are set (see ``state.codec``).
    attribute_parts: list[bytes] | None = None
    #: The name of a Sum metric this series also stands for, or None. Set on a ``duration``
    #: histogram whose ``calls`` counter has the same attributes (the default configuration):
    #: that counter's value, start and exemplars are the histogram's count, start and exemplars,
    #: so one series carries both through processing and storage (half the per-series work and
    #: memory); the counter is written out where metrics are emitted (by the OTLP encoder, or
    #: as a Series of its own by :func:`with_companions`).
    companion: str | None = None
    #: When the series has not been in a confirmed publication yet (CUMULATIVE): the time of
    #: the zero point written before its counted point, for metrics whose descriptor says
    #: ``zero_init``; 0 for none. Set by the fold (state.fold), pinned at the series' first
    #: emission.
    zero_ns: int = 0

    @property
    def digest(self) -> bytes:
        return series_digest(self.series_id)

    def copy(self) -> Series:
        return Series(
            series_id=self.series_id,
            metric=self.metric,
            resource_id=self.resource_id,
            attributes=self.attributes,
            start_ns=self.start_ns,
            last_ns=self.last_ns,
            count=self.count,
            sum=self.sum,
            buckets=list(self.buckets) if self.buckets is not None else None,
            exp=_copy_exp(self.exp),
            exemplars=list(self.exemplars),
            attribute_parts=self.attribute_parts,
            companion=self.companion,
            zero_ns=self.zero_ns,
        )


def _copy_exp(exp: ExpHistogram | None) -> ExpHistogram | None:
    if exp is None:
        return None
    return ExpHistogram.from_state(exp.to_state(), exp.max_size)


@dataclass(slots=True)
class TenantDeltas:
    """One tenant's deltas for one flush: resources by id, and the series that changed."""

    resources: dict[str, Attributes] = field(default_factory=dict)
    series: list[Series] = field(default_factory=list)


def merge_deltas(*parts: dict[str, TenantDeltas]) -> dict[str, TenantDeltas]:
    """One tenant -> deltas map out of several processors' (their series ids never collide)."""
    merged: dict[str, TenantDeltas] = {}
    for part in parts:
        for tenant, deltas in part.items():
            target = merged.get(tenant)
            if target is None:
                merged[tenant] = deltas
                continue
            target.resources.update(deltas.resources)
            target.series.extend(deltas.series)
    return merged


def make_series_id(metric: str, resource_id: str, body: str) -> str:
    """The canonical id every processor and the store agree on: metric, resource, attributes.

    The store slots series by everything after the metric (``calls`` and ``duration`` of one
    span series share a slot), so the metric must come first.
    """
    return f"{metric}{SERIES_ID_SEPARATOR}{resource_id}{SERIES_ID_SEPARATOR}{body}"


def series_digest(series_id: str) -> bytes:
    """A stable 16-byte identity (never Python's salted ``hash()``): Redis field and slot source."""
    return hashlib.blake2b(series_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def companion_series(series: Series) -> Series:
    """The Sum series a paired histogram stands for (see :attr:`Series.companion`).

    Its count is the histogram's count; it shares the histogram's times, attributes and
    exemplars (the same exemplar went to both before they were paired). The exemplar list is
    shared, not copied: emitted series are read, never changed.
    """
    assert series.companion is not None
    _, _, rest = series.series_id.partition(SERIES_ID_SEPARATOR)
    return Series(
        f"{series.companion}{SERIES_ID_SEPARATOR}{rest}" if rest else "",
        series.companion,
        series.resource_id,
        series.attributes,
        series.start_ns,
        series.last_ns,
        series.count,
        0.0,
        None,
        None,
        series.exemplars,
        series.attribute_parts,
        None,
        series.zero_ns,
    )


def with_companions(series: Iterable[Series]) -> list[Series]:
    """The series as they are emitted: each paired histogram (a shallow copy without its
    companion) followed by the counter it stands for. Handing the result to the encoder, which
    writes companions itself, therefore writes each counter once."""
    result: list[Series] = []
    for one in series:
        if one.companion is None:
            result.append(one)
            continue
        histogram = copy.copy(one)
        histogram.companion = None
        result.append(histogram)
        result.append(companion_series(one))
    return result


def emitted_count(series: Iterable[Series]) -> int:
    """How many series these are as emitted: one with a companion counter is two."""
    return sum(1 if one.companion is None else 2 for one in series)


def merge_series(target: Series, delta: Series, max_exemplars: int) -> None:
    """Add ``delta`` into ``target`` in place.

    A bucket layout that no longer matches (the bounds were reconfigured) restarts the series'
    buckets from the delta, because adding counts of different buckets would be a lie.
    """
    if delta.companion is not None:
        target.companion = delta.companion
    target.count += delta.count
    target.sum += delta.sum
    if delta.last_ns > target.last_ns:
        target.last_ns = delta.last_ns
    if delta.buckets is not None:
        if target.buckets is None or len(target.buckets) != len(delta.buckets):
            target.buckets = list(delta.buckets)
        else:
            buckets = target.buckets
            for index, value in enumerate(delta.buckets):
                if value:
                    buckets[index] += value
    if delta.exp is not None:
        if target.exp is None:
            target.exp = _copy_exp(delta.exp)
        else:
            target.exp.merge(delta.exp)
    if delta.exemplars and len(target.exemplars) < max_exemplars:
        room = max_exemplars - len(target.exemplars)
        target.exemplars.extend(delta.exemplars[:room])


def describe(series: Series) -> dict[str, Any]:
    """A readable view for logs and test failures."""
    return {"metric": series.metric, "attributes": dict(series.attributes), "count": series.count}
