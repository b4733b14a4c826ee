"""Cumulative series held in memory: the store behind ``spanmetrics process`` and the unit tests.

It has the same semantics as the Redis store (merge deltas, keep start times, expire idle
series, clear exemplars after each emission, DELTA emits only the change), so the pure pipeline
can be checked end to end without servers. Like the Redis store it keeps a paired ``duration``
series as one series and writes its ``calls`` companion out when it emits (see
:attr:`worker.model.series.Series.companion`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.model.series import (
    Attributes,
    Series,
    Temporality,
    TenantDeltas,
    emitted_count,
    merge_series,
    with_companions,
)

__all__ = ["Collected", "MemoryStore"]


@dataclass(slots=True)
class Collected:
    """What one tenant emits at one flush."""

    resources: dict[str, Attributes] = field(default_factory=dict)
    series: list[Series] = field(default_factory=list)


class MemoryStore:
    def __init__(self, temporality: Temporality, max_exemplars: int, expiration_s: float = 0.0) -> None:
        self.temporality = temporality
        self.max_exemplars = max_exemplars
        self.expiration_ns = int(expiration_s * 1e9)
        self._series: dict[str, dict[str, Series]] = {}
        self._resources: dict[str, dict[str, Attributes]] = {}

    def apply(self, deltas: Mapping[str, TenantDeltas]) -> None:
        """Merge one flush's deltas; a new series starts at the delta's start time."""
        for tenant, tenant_deltas in deltas.items():
            resources = self._resources.setdefault(tenant, {})
            for resource_id, attributes in tenant_deltas.resources.items():
                resources.setdefault(resource_id, attributes)
            table = self._series.setdefault(tenant, {})
            for delta in tenant_deltas.series:
                current = table.get(delta.series_id)
                if current is None:
                    table[delta.series_id] = delta.copy()
                    if len(delta.exemplars) > self.max_exemplars:
                        del table[delta.series_id].exemplars[self.max_exemplars :]
                else:
                    merge_series(current, delta, self.max_exemplars)

    def series_count(self, tenant: str) -> int:
        """Active series, as emitted: a series with a companion counter is two."""
        return emitted_count(self._series.get(tenant, {}).values())

    def collect(self, now_ns: int) -> dict[str, Collected]:
        """Snapshot what to emit now, then expire, clear exemplars and (DELTA) reset.

        A paired series is emitted followed by its companion counter, derived from the emitted
        copy (so it is not touched by the reset or the exemplar clearing that follow).
        """
        result: dict[str, Collected] = {}
        for tenant, table in self._series.items():
            collected = Collected(resources=dict(self._resources.get(tenant, {})))
            for series_id, series in list(table.items()):
                if self.expiration_ns and now_ns - series.last_ns >= self.expiration_ns:
                    del table[series_id]
                    continue
                if self.temporality is Temporality.DELTA and series.count == 0:
                    continue
                collected.series.extend(with_companions([series.copy()]))
                series.exemplars.clear()
                if self.temporality is Temporality.DELTA:
                    _reset(series, now_ns)
            if collected.series:
                result[tenant] = collected
        return result


def _reset(series: Series, now_ns: int) -> None:
    """After a DELTA emission the next interval starts now, from zero."""
    series.start_ns = now_ns
    series.count = 0
    series.sum = 0.0
    if series.buckets is not None:
        series.buckets = [0] * len(series.buckets)
    if series.exp is not None:
        series.exp = type(series.exp)(max_size=series.exp.max_size)
