"""The in-memory SeriesStore (``spanmetrics process``, tests): the Redis store's layout in dicts,
with merge.lua and fold.lua written out in Python over the same fold."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import msgpack

from state.codec import decode_attributes
from state.deltalog import LogPacker, PackedTenant
from state.fold import FoldPlan, fold_log
from state.protocol import (
    FencedError,
    FoldResult,
    Ownership,
    Sequences,
    StateBehindError,
    StoredSeries,
    fold_result,
    stored_series,
)
from worker.model.series import CONNECTOR_OVERFLOW, Attributes, TenantDeltas

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Slot:
    """``P:t:<T>:s:<slot>``, ``P:t:<T>:d:<slot>``, ``P:t:<T>:v:<slot>`` and ``P:t:<T>:p:<slot>``."""

    records: dict[bytes, bytes] = field(default_factory=dict)
    log: list[bytes] = field(default_factory=list)
    version: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class _Tenant:
    """``P:t:<T>:r``, ``P:t:<T>:seen`` and ``P:t:<T>:n``, and the tenant's slots."""

    resources: dict[str, bytes] = field(default_factory=dict)
    #: resource id -> last seen (µs).
    seen: dict[str, int] = field(default_factory=dict)
    active: int = 0
    slots: dict[int, _Slot] = field(default_factory=dict)

    def slot(self, slot: int) -> _Slot:
        found = self.slots.get(slot)
        if found is None:
            found = self.slots[slot] = _Slot()
        return found


class MemoryStore:
    """The state of one input topic, in this process."""

    def __init__(
        self,
        *,
        slots: int,
        max_exemplars: int,
        exp_max_size: int = 160,
        active_series_limit: int = 0,
        overflow_attributes: Attributes = CONNECTOR_OVERFLOW,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1 (the input topic's partition count)")
        self.slots = slots
        self.max_exemplars = max_exemplars
        self.exp_max_size = exp_max_size
        self.active_series_limit = active_series_limit
        self.overflow_attributes = overflow_attributes
        self.packer = LogPacker(slots, active_series_limit)
        self._generation: str | None = None
        self._fence: dict[int, int] = {}
        self._offsets: dict[int, int] = {}
        #: partition -> (token, sequence) of the last merge applied (``P:applied:<topic>``).
        self._marks: dict[int, tuple[int, int]] = {}
        self.sequences = Sequences()
        self._pending: dict[int, bytes] = {}
        self._tenants: dict[str, _Tenant] = {}

    # ------------------------------------------------------------------ ownership and offsets

    async def check_layout(self) -> None:
        """Nothing to check: this state was written for this store's slots."""

    async def claim(self, partitions: Iterable[int]) -> dict[int, int]:
        tokens = {}
        for partition in sorted(set(partitions)):
            tokens[partition] = self._fence[partition] = self._fence.get(partition, 0) + 1
        return tokens

    async def owns(self, tokens: Mapping[int, int]) -> set[int]:
        return {partition for partition, token in tokens.items() if self._fence.get(partition) == token}

    async def applied_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        return {p: self._offsets[p] for p in sorted(set(partitions)) if p in self._offsets}

    async def generation(self, candidate: str) -> str:
        """generation.lua: create the marker when missing, with tokens above any handed out before."""
        if self._generation is None:
            self._generation = candidate
            floor = time.time_ns() // 1000
            for partition in range(self.slots):
                self._fence.setdefault(partition, floor)
        return self._generation

    async def ownership(self, partitions: Iterable[int]) -> Ownership:
        ordered = sorted(set(partitions))
        tokens = {p: self._fence[p] for p in ordered if p in self._fence}
        return Ownership(self._generation, tokens, await self.applied_offsets(ordered))

    # ------------------------------------------------------------------ the flush

    async def merge(
        self,
        deltas: Mapping[str, TenantDeltas],
        fences: Mapping[int, tuple[int, int]],
        pending: Mapping[int, bytes] | None = None,
        *,
        sequence: int | None = None,
        applied: Mapping[int, int] | None = None,
    ) -> bool:
        """merge.lua: fence check, sequence watermark, offsets, half-edges, then the log entries."""
        packed = self.packer.pack(deltas)
        ordered = sorted(fences.items())
        half_edges = [(p, blob) for p, blob in sorted((pending or {}).items()) if p in fences]
        if sequence is None:
            sequence = self.sequences.number(_batch_id(ordered, half_edges, packed))
        else:
            self.sequences.saw(sequence)
        for partition, (token, _) in ordered:
            if self._fence.get(partition) != token:
                raise FencedError(partition)
        for partition, _ in ordered:
            seen = (applied or {}).get(partition, -1)
            current = self._offsets.get(partition)
            if seen != -1 and (current is None or current < seen):
                raise StateBehindError(partition)
        for partition, (token, _) in ordered:
            mark = self._marks.get(partition)
            if mark is not None and mark[0] == token and mark[1] >= sequence:
                return False  # a retry, a duplicate or a late request: applied or overtaken
        for partition, (token, _) in ordered:
            self._marks[partition] = (token, sequence)
        for partition, (_, offset) in ordered:
            current = self._offsets.get(partition)
            if offset != -1 and (current is None or current < offset):
                self._offsets[partition] = offset
        for partition, blob in half_edges:
            if blob:
                self._pending[partition] = bytes(blob)
            else:
                self._pending.pop(partition, None)
        for one in packed:
            tenant = self._tenants.setdefault(one.tenant, _Tenant())
            for resource_id, blob, seen in one.resources:
                tenant.resources.setdefault(resource_id, blob)
                if seen and tenant.seen.get(resource_id, -1) < seen:
                    tenant.seen[resource_id] = seen
            for slot, entry in one.entries:
                tenant.slot(slot).log.append(bytes(entry))
        return True

    async def read_pending(self, partitions: Iterable[int]) -> dict[int, bytes]:
        return {p: self._pending[p] for p in sorted(set(partitions)) if p in self._pending}

    # ------------------------------------------------------------------ emission

    async def tenants(self) -> list[str]:
        return sorted(self._tenants)

    async def resources(self, tenant: str) -> dict[str, Attributes]:
        found = self._tenants.get(tenant, _Tenant())
        return {rid: decode_attributes(blob) for rid, blob in found.resources.items()}

    async def resource_seen(self, tenant: str) -> dict[str, int]:
        found = self._tenants.get(tenant)
        return {} if found is None else {rid: seen * 1000 for rid, seen in found.seen.items()}

    async def forget_resources(self, tenant: str, resource_ids: Iterable[str], before_ns: int) -> int:
        """forget.lua: the named resources still last seen before ``before_ns`` leave the hash."""
        found = self._tenants.get(tenant)
        if found is None:
            return 0
        removed = 0
        for rid in resource_ids:
            seen = found.seen.get(rid)
            if seen is not None and seen < before_ns // 1000:
                del found.seen[rid]
                removed += 1
        return removed

    async def active_series(self, tenant: str) -> int:
        found = self._tenants.get(tenant)
        return 0 if found is None else found.active

    async def read_slot(self, tenant: str, slot: int) -> list[StoredSeries]:
        stored = self._tenants.get(tenant, _Tenant()).slot(slot)
        return stored_series(self._plan(stored, limit=0, delta_mode=False))

    async def fold_slot(
        self,
        tenant: str,
        slot: int,
        token: int,
        *,
        expire_before_ns: int = 0,
        delta_mode: bool = False,
        reset_emitted_ns: int | None = None,
        now_ns: int = 0,
        resource_expire_before_ns: int = 0,
        resource_seen_ns: Mapping[str, int] | None = None,
    ) -> FoldResult:
        """Fold the slot's log into its records and commit that as the slot's owner (``token``)."""
        state = self._tenants.get(tenant, _Tenant())  # (nothing to fold: left unregistered)
        stored = state.slot(slot)
        plan = self._plan(
            stored,
            limit=self.active_series_limit,
            delta_mode=delta_mode,
            expire_before_us=expire_before_ns // 1000,
            reset_emitted_us=None if reset_emitted_ns is None else reset_emitted_ns // 1000,
            now_us=now_ns // 1000,
            resource_expire_before_us=resource_expire_before_ns // 1000,
            resource_seen_us=_micros(resource_seen_ns),
        )
        if not (plan.updates or plan.created or plan.expired or stored.log):
            return FoldResult(
                committed=True, live=plan.live, version=stored.version, zero_owed=plan.zero_owed
            )
        refused = self._commit_fold(state, slot, token, plan, folded=len(stored.log), version=stored.version)
        return fold_result(plan, refused, stored.version)

    def hold(self, slots: Collection[int]) -> None:
        """Nothing to drop: every record is in memory anyway."""

    async def confirm_zero(
        self, tenant: str, slot: int, token: int, version: int, records: list[tuple[bytes, bytes]]
    ) -> bool:
        """confirm.lua: the records, over those still held, while ``token`` and ``version`` hold."""
        if not records:
            return True  # (the Redis store sends nothing)
        state = self._tenants.get(tenant)
        if state is None or self._fence.get(slot) != token:
            return False
        stored = state.slot(slot)
        if stored.version != version:
            return False
        stored.version += 1
        for digest, record in records:
            if digest in stored.records:
                stored.records[digest] = record
        return True

    def _commit_fold(
        self, tenant: _Tenant, slot: int, token: int, plan: FoldPlan, folded: int, version: int
    ) -> list[int] | None:
        """fold.lua: commit ``plan`` (decided over the first ``folded`` log entries of the slot
        at ``version``) while ``token`` is current and the slot is at ``version``; the 1-based
        positions of the new series refused, None if fenced or stale."""
        if self._fence.get(slot) != token:
            return None
        stored = tenant.slot(slot)
        if stored.version != version or any(ident in stored.parts for ident in plan.parts):
            return None
        stored.version += 1
        stored.parts.update(plan.parts)
        stored.records.update(plan.updates)
        for digest in plan.expired:
            stored.records.pop(digest, None)
        active = max(tenant.active + plan.held_change, 0)
        # New series are admitted in order while the tenant is under its limit; the rest go to
        # the overflow series (never refused themselves), whose rows go to their slots' logs.
        limit = self.active_series_limit
        admitted: dict[bytes, bytes] = {}
        refused: list[int] = []
        rows_by_log: dict[int, list[bytes]] = {}
        for n, new in enumerate(plan.created, start=1):
            if new.overflow_target < 0 or limit == 0 or active + new.weight <= limit:
                admitted[new.digest] = new.record
                active += new.weight
            else:
                refused.append(n)
                rows_by_log.setdefault(new.overflow_target, []).append(new.overflow_row)
        stored.records.update(admitted)
        for target, rows in rows_by_log.items():
            tenant.slot(plan.overflow_slots[target]).log.append(b"".join(rows))
        tenant.active = active
        del stored.log[:folded]
        return refused

    # ------------------------------------------------------------------ helpers

    def _plan(
        self,
        stored: _Slot,
        *,
        limit: int,
        delta_mode: bool,
        expire_before_us: int = 0,
        reset_emitted_us: int | None = None,
        now_us: int = 0,
        resource_expire_before_us: int = 0,
        resource_seen_us: Mapping[str, int] | None = None,
    ) -> FoldPlan:
        return fold_log(
            stored.records,
            list(stored.log),
            parts=dict(stored.parts),
            slots=self.slots,
            max_exemplars=self.max_exemplars,
            exp_max_size=self.exp_max_size,
            limit=limit,
            delta_mode=delta_mode,
            expire_before_us=expire_before_us,
            reset_emitted_us=reset_emitted_us,
            now_us=now_us,
            resource_expire_before_us=resource_expire_before_us,
            resource_seen_us=resource_seen_us,
            overflow_attributes=self.overflow_attributes,
        )


def _micros(seen_ns: Mapping[str, int] | None) -> dict[str, int] | None:
    return None if seen_ns is None else {rid: seen // 1000 for rid, seen in seen_ns.items()}


def _batch_id(
    fences: list[tuple[int, tuple[int, int]]], pending: list[tuple[int, bytes]], packed: list[PackedTenant]
) -> bytes:
    """What identifies a merge's content (the Redis store digests its script arguments)."""
    digest = hashlib.blake2b(msgpack.packb([fences, pending], use_bin_type=True), digest_size=16)
    for tenant in packed:
        digest.update(msgpack.packb([tenant.tenant, tenant.resources], use_bin_type=True))
        for slot, entry in tenant.entries:
            digest.update(slot.to_bytes(4, "big"))
            digest.update(entry)
    return digest.digest()
