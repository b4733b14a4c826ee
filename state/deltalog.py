"""A flush's deltas -> per-slot delta-log entries (packed rows), as both stores append them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgpack

from state.codec import delta_payload, encode_attributes, encode_meta
from state.fold import row, series_slot
from worker.model.series import Series, TenantDeltas, series_digest

__all__ = ["LogPacker", "PackedTenant"]

#: Attribute value types whose string form in a series id identifies the value.
_SCALARS = frozenset((str, int, float, bool))
#: Entries of the per-series constants cache when no active-series limit is configured.
_CONSTANTS_CACHE_SIZE = 200_000


@dataclass(slots=True)
class PackedTenant:
    """One tenant's share of a flush, in the stored layout."""

    tenant: str
    #: (resource id, packed attributes, last seen in µs: the latest ``last_ns`` of its series
    #: here, 0 if none). The attributes are stored when the resource is first seen; the
    #: resource's last-seen time is raised to this one (``metrics_expiration``).
    resources: list[tuple[str, bytes, int]] = field(default_factory=list)
    #: (slot, log entry) in slot order: the entry is the slot's rows packed one after the other.
    entries: list[tuple[int, memoryview]] = field(default_factory=list)


class LogPacker:
    """Packs deltas into log entries; keeps a bounded cache of per-series constants."""

    def __init__(self, slots: int, active_series_limit: int = 0) -> None:
        self.slots = slots
        #: series_id -> slot, digest, packed meta and the value types it was packed for.
        self._cache: dict[str, tuple[int, bytes, bytes, tuple[type, ...] | None]] = {}
        self._signatures: dict[tuple[type, ...], tuple[type, ...]] = {}
        self._limit = max(active_series_limit, _CONSTANTS_CACHE_SIZE)

    def constants(self, series: Series) -> tuple[int, bytes, bytes]:
        """(slot, digest, packed meta) of a series, cached by series id and value types."""
        types = tuple([type(value) for _, value in series.attributes])
        found = self._cache.get(series.series_id)
        if found is not None:
            slot, digest, meta, packed_for = found
            return slot, digest, meta if packed_for == types else encode_meta(series)
        if len(self._cache) >= self._limit:
            self._cache.clear()
        slot = series_slot(series.series_id, self.slots)
        digest = series_digest(series.series_id)
        meta = encode_meta(series)
        packed_for = None  # never equal to a tuple of types: other values are packed again
        if _SCALARS.issuperset(types):
            if len(self._signatures) >= 4096:
                self._signatures.clear()
            packed_for = self._signatures.setdefault(types, types)
        self._cache[series.series_id] = (slot, digest, meta, packed_for)
        return slot, digest, meta

    def pack(self, deltas: Mapping[str, TenantDeltas]) -> list[PackedTenant]:
        """Every tenant's resources and per-slot log entries, rows packed straight into one
        buffer per slot (handed to Redis without a copy)."""
        packed = []
        for tenant, tenant_deltas in deltas.items():
            packers: dict[int, msgpack.Packer] = {}
            seen: dict[str, int] = {}
            for series in tenant_deltas.series:
                if series.last_ns > seen.get(series.resource_id, 0):
                    seen[series.resource_id] = series.last_ns
                slot, digest, meta = self.constants(series)
                packer = packers.get(slot)
                if packer is None:
                    packer = packers[slot] = msgpack.Packer(use_bin_type=True, autoreset=False)
                packer.pack(row(digest, delta_payload(series, meta)))
            packed.append(
                PackedTenant(
                    tenant,
                    [
                        (rid, encode_attributes(a), seen.get(rid, 0) // 1000)
                        for rid, a in tenant_deltas.resources.items()
                    ],
                    [(slot, packer.getbuffer()) for slot, packer in sorted(packers.items())],
                )
            )
        return packed
