"""DELTA series -> cumulative series for remote write, in memory (as the Collector's deltatocumulative).

With ``aggregation_temporality: DELTA`` the state keeps only what changed since the slot's last
confirmed publication, so remote write (cumulative only) adds the deltas up itself. A delta's
start time says which publication it follows (state.fold ``_reset``: after a confirmed
publication at E the next delta starts at E): the same start as the previous delta means that one
was not confirmed and is contained in this one (it replaces it); a new start means it was, so it
joins the total. Exact while a slot stays with this worker; a restart or a slot that moved here
starts its series again from 0 (a counter reset, which ``rate()``/``increase()`` handle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.model.series import Series, merge_series
from worker.model.values import attribute_parts

__all__ = ["DeltaToCumulative"]


@dataclass(slots=True)
class _Entry:
    #: The start of the last delta seen, and that delta.
    start_ns: int
    pending: Series
    #: Every delta before ``pending``, added up (None: none yet).
    base: Series | None
    #: The cumulative series' start: its first delta's.
    first_ns: int
    seen_ns: int


class DeltaToCumulative:
    """Running totals per tenant and series (metric, resource, attributes); a series not seen for
    ``idle_s`` is forgotten."""

    def __init__(self, idle_s: float) -> None:
        self.idle_ns = int(idle_s * 1e9)
        self._entries: dict[tuple[str, str, str, tuple[bytes, ...]], _Entry] = {}
        self._next_sweep = 0

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, tenant: str, series: Sequence[Series], now_ns: int) -> list[Series]:
        """The cumulative series for these deltas (new objects: the deltas are not changed)."""
        out = []
        entries = self._entries
        for item in series:
            # Folded series carry no series id (the store keys them by digest): their identity
            # is the metric, the resource and the attributes as encoded.
            parts = item.attribute_parts
            encoded = tuple(parts) if parts is not None else tuple(attribute_parts(item.attributes))
            key = (tenant, item.metric, item.resource_id, encoded)
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = _Entry(item.start_ns, item.copy(), None, item.start_ns, now_ns)
            elif item.start_ns == entry.start_ns:
                entry.pending = item.copy()  # the previous delta was not confirmed: this one holds it
            else:
                base = entry.base
                if base is None:
                    base = entry.base = entry.pending
                else:
                    merge_series(base, entry.pending, 0)
                base.exemplars = []
                entry.pending = item.copy()
                entry.start_ns = item.start_ns
            entry.seen_ns = now_ns
            total = entry.base.copy() if entry.base is not None else None
            if total is None:
                total = entry.pending.copy()
            else:
                merge_series(total, entry.pending, 0)
            total.start_ns = entry.first_ns
            total.exemplars = list(item.exemplars)
            total.zero_ns = 0
            total.attributes = item.attributes
            total.attribute_parts = item.attribute_parts
            total.companion = item.companion
            out.append(total)
        if now_ns >= self._next_sweep:
            self._sweep(now_ns)
        return out

    def _sweep(self, now_ns: int) -> None:
        horizon = now_ns - self.idle_ns
        stale = [key for key, entry in self._entries.items() if entry.seen_ns < horizon]
        for key in stale:
            del self._entries[key]
        self._next_sweep = now_ns + min(self.idle_ns, 60_000_000_000)
