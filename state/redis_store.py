"""The Redis SeriesStore: merges and folds as atomic Lua scripts (state/lua) over the key layout
of state.keys; the single source of truth for cumulative series and applied offsets."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import msgpack
from redis.asyncio import Redis

from state.codec import decode_attributes, parts_of
from state.deltalog import LogPacker
from state.fold import FoldPlan, Quiet, Rows, fold_log, fold_rows
from state.hot import HotSlot
from state.keys import KeySpace, escape_tenant, unescape_tenant
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
from worker.model.errors import StateError
from worker.model.series import CONNECTOR_OVERFLOW, Attributes, TenantDeltas

__all__ = ["RedisStateStore"]


def _script(name: str) -> str:
    return (resources.files("state") / "lua" / name).read_text(encoding="utf-8")


class RedisStateStore:
    """The state of one input topic in Redis; holds no series values in memory."""

    def __init__(
        self,
        client: Redis,
        keys: KeySpace,
        *,
        slots: int,
        max_exemplars: int,
        exp_max_size: int = 160,
        active_series_limit: int = 0,
        overflow_attributes: Attributes = CONNECTOR_OVERFLOW,
        max_kept_series: int = 100_000,
    ) -> None:
        """``max_kept_series``: how many records (label sets) of the slots it owns the store keeps
        folded in memory between folds at most (:class:`HotSlot`; up to ~1 KiB of RSS each); a slot
        that would take the total past it is read from Redis at every fold. 0: none kept."""
        if slots < 1:
            raise ValueError("slots must be at least 1 (the input topic's partition count)")
        self.client = client
        self.keys = keys
        self.slots = slots
        self.max_exemplars = max_exemplars
        self.exp_max_size = exp_max_size
        self.active_series_limit = active_series_limit
        #: The attributes of the series new ones fold into past the limit (Tempo mode: Tempo's).
        self.overflow_attributes = overflow_attributes
        self.packer = LogPacker(slots, active_series_limit)
        self._merge = client.register_script(_script("merge.lua"))
        self._fold = client.register_script(_script("fold.lua"))
        self._generation = client.register_script(_script("generation.lua"))
        self._forget = client.register_script(_script("forget.lua"))
        self._confirm = client.register_script(_script("confirm.lua"))
        self.sequences = Sequences()
        #: (escaped tenant, slot) -> the slot's folded state as this owner last committed it.
        self._hot: dict[tuple[str, int], HotSlot] = {}
        self.max_kept_series = max_kept_series

    # ------------------------------------------------------------------ ownership and offsets

    async def check_layout(self) -> None:
        """Refuse to run with a slot count other than the one the state was written with."""
        key = f"{self.keys.prefix}:slots:{self.keys.topic}"
        await self.client.setnx(key, self.slots)
        stored = int(await self.client.get(key) or self.slots)
        if stored != self.slots:
            raise StateError(
                f"the state under key prefix {self.keys.prefix!r} was written for {stored} partitions of "
                f"{self.keys.topic!r}, the topic now has {self.slots}: use a new redis.key_prefix after "
                "changing the partition count"
            )

    async def claim(self, partitions: Iterable[int]) -> dict[int, int]:
        """Take ownership: a new fencing token per partition, which stales every older owner."""
        ordered = sorted(set(partitions))
        if not ordered:
            return {}
        async with self.client.pipeline(transaction=True) as pipe:
            for partition in ordered:
                pipe.hincrby(self.keys.fence, str(partition), 1)
            tokens = await pipe.execute()
        return {partition: int(token) for partition, token in zip(ordered, tokens, strict=True)}

    async def owns(self, tokens: Mapping[int, int]) -> set[int]:
        """The partitions among ``tokens`` whose token is still current."""
        if not tokens:
            return set()
        ordered = sorted(tokens)
        current = await self.client.hmget(self.keys.fence, [str(p) for p in ordered])
        return {
            partition
            for partition, value in zip(ordered, current, strict=True)
            if value is not None and int(value) == tokens[partition]
        }

    async def applied_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """Next offset to apply per partition (absent: nothing applied yet)."""
        ordered = sorted(set(partitions))
        if not ordered:
            return {}
        values = await self.client.hmget(self.keys.offsets, [str(p) for p in ordered])
        return {p: int(v) for p, v in zip(ordered, values, strict=True) if v is not None}

    async def generation(self, candidate: str) -> str:
        """The generation marker (generation.lua): created as ``candidate`` when missing, and then
        every partition without a token gets one above any handed out before; else the stored one."""
        keys = [self.keys.generation, self.keys.fence]
        return _text(await self._generation(keys=keys, args=[candidate, self.slots]))

    async def ownership(self, partitions: Iterable[int]) -> Ownership:
        """The generation marker, these partitions' tokens and applied offsets, in one round trip."""
        ordered = sorted(set(partitions))
        fields = [str(p) for p in ordered]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.keys.generation)
            if ordered:
                pipe.hmget(self.keys.fence, fields)
                pipe.hmget(self.keys.offsets, fields)
            replies = await pipe.execute()
        marker = None if replies[0] is None else _text(replies[0])
        tokens, applied = (replies[1], replies[2]) if ordered else ([], [])
        return Ownership(
            marker,
            {p: int(v) for p, v in zip(ordered, tokens, strict=True) if v is not None},
            {p: int(v) for p, v in zip(ordered, applied, strict=True) if v is not None},
        )

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
        """Append all deltas to their slots' logs and advance offsets in one atomic step
        (merge.lua); FencedError on a stale token. False (nothing applied) when the partitions
        already applied this ``sequence`` or a later one: a retry, a duplicate, a late request.
        Without ``sequence`` the store numbers the call, reusing the number of a repeated call."""
        # Building the rows is CPU work per series: off the event loop (see _merge_request).
        header, entries = await asyncio.to_thread(self._merge_request, deltas, fences, pending, applied)
        if sequence is None:
            digest = hashlib.blake2b(header, digest_size=16)
            for entry in entries:
                digest.update(entry)
            sequence = self.sequences.number(digest.digest())
        else:
            self.sequences.saw(sequence)
        args: list[bytes | str | memoryview] = [header, str(sequence), *entries]
        reply = await self._merge(args=args)
        status = _text(reply[0])
        if status == "FENCED":
            raise FencedError(int(_text(reply[1])))
        if status == "BEHIND":
            raise StateBehindError(int(_text(reply[1])))
        if status not in ("OK", "SEEN"):
            raise StateError(f"unexpected reply from the merge script: {reply!r}")
        return status == "OK"

    def _merge_request(
        self,
        deltas: Mapping[str, TenantDeltas],
        fences: Mapping[int, tuple[int, int]],
        pending: Mapping[int, bytes] | None,
        applied: Mapping[int, int] | None,
    ) -> tuple[bytes, list[memoryview]]:
        """merge.lua's header, log entries and tenant rows (pure CPU work; run in a thread so that a flush of
        many series does not hold the event loop: the GIL is handed over every few ms)."""
        entries: list[memoryview] = []
        tenants: list[list[Any]] = []
        for packed in self.packer.pack(deltas):
            logs = []
            for slot, entry in packed.entries:
                entries.append(entry)
                logs.append([slot, len(entries) + 2])  # ARGV index (1-based, after header and sequence)
            resource_rows = [[rid, blob, str(seen)] for rid, blob, seen in packed.resources]
            tenants.append([escape_tenant(packed.tenant), resource_rows, logs])
        header = msgpack.packb(
            [
                self.keys.prefix,
                self.keys.topic,
                [
                    [str(p), str(token), str(offset), str((applied or {}).get(p, -1))]
                    for p, (token, offset) in sorted(fences.items())
                ],
                tenants,
                [[str(p), blob] for p, blob in sorted((pending or {}).items()) if p in fences],
            ],
            use_bin_type=False,  # Lua's cmsgpack knows no bin type
        )
        return header, entries

    async def read_pending(self, partitions: Iterable[int]) -> dict[int, bytes]:
        """The half-edges saved with each partition's offsets (absent: none pending)."""
        ordered = sorted(set(partitions))
        if not ordered:
            return {}
        values = await self.client.mget([self.keys.pending_edges(p) for p in ordered])
        return {p: _bytes(v) for p, v in zip(ordered, values, strict=True) if v}

    # ------------------------------------------------------------------ emission

    async def tenants(self) -> list[str]:
        members = await self.client.smembers(self.keys.tenants)
        return sorted(unescape_tenant(_text(m)) for m in members)

    async def resources(self, tenant: str) -> dict[str, Attributes]:
        raw = await self.client.hgetall(self.keys.resources(escape_tenant(tenant)))
        return {_text(rid): decode_attributes(_bytes(blob)) for rid, blob in raw.items()}

    async def resource_seen(self, tenant: str) -> dict[str, int]:
        """Resource id -> when a span of it was last seen (ns), as merges raised it."""
        raw = await self.client.hgetall(self.keys.resource_seen(escape_tenant(tenant)))
        return {_text(rid): int(_text(seen)) * 1000 for rid, seen in raw.items()}

    async def forget_resources(self, tenant: str, resource_ids: Iterable[str], before_ns: int) -> int:
        """The named resources still last seen before ``before_ns`` leave the hash (forget.lua)."""
        ids = list(resource_ids)
        if not ids:
            return 0
        key = self.keys.resource_seen(escape_tenant(tenant))
        return int(await self._forget(keys=[key], args=[str(before_ns // 1000), *ids]))

    async def active_series(self, tenant: str) -> int:
        value = await self.client.get(self.keys.active(escape_tenant(tenant)))
        return int(value or 0)

    async def _read_slot_and_log(
        self, escaped: str, slot: int
    ) -> tuple[dict[bytes, bytes], list[bytes], str, dict[int, bytes]]:
        """The slot's records, its whole log, its version and its dictionary of attribute parts,
        read at one point in time."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.slot(escaped, slot))
            pipe.lrange(self.keys.log(escaped, slot), 0, -1)
            pipe.get(self.keys.version(escaped, slot))
            pipe.hgetall(self.keys.parts(escaped, slot))
            stored, log, version, parts = await pipe.execute()
        return stored, log, "0" if version is None else _text(version), parts_of(parts)

    async def _read_log(self, escaped: str, slot: int) -> tuple[list[bytes], str, int]:
        """The slot's whole log, its version and how many records it holds, at one point in time:
        what a fold over the records kept in memory (:class:`HotSlot`) reads."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lrange(self.keys.log(escaped, slot), 0, -1)
            pipe.get(self.keys.version(escaped, slot))
            pipe.hlen(self.keys.slot(escaped, slot))
            log, version, count = await pipe.execute()
        return log, "0" if version is None else _text(version), int(count)

    async def _read_records(
        self, escaped: str, slot: int, hot: HotSlot, digests: list[bytes], version: str
    ) -> bool:
        """Read these records into ``hot``; False if the slot is no longer at ``version`` or
        one of them is missing (the kept state is wrong)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hmget(self.keys.slot(escaped, slot), digests)
            pipe.get(self.keys.version(escaped, slot))
            values, now = await pipe.execute()
        return ("0" if now is None else _text(now)) == version and hot.read(digests, values)

    def hold(self, slots: Collection[int]) -> None:
        """Keep the folded state of these slots only (the ones this worker owns now)."""
        for key in [key for key in self._hot if key[1] not in slots]:
            del self._hot[key]

    async def _plan_off_loop(
        self,
        stored: Mapping[bytes, bytes | None],
        log: Sequence[bytes],
        *,
        quiet: Quiet | None = None,
        rows: Rows | None = None,
        parts: Mapping[int, bytes] | None = None,
        delta_mode: bool,
        expire_before_ns: int,
        reset_emitted_ns: int | None,
        now_ns: int,
        resource_expire_before_ns: int,
        resource_seen_ns: Mapping[str, int] | None,
    ) -> FoldPlan:
        """:meth:`_fold_plan` for :meth:`fold_slot`'s arguments (times in µs, as the records),
        under the store's series limit. CPU work per series of the slot: in a thread, so that the
        event loop keeps running (heartbeats, probes) while a large slot folds; nothing else
        touches its inputs."""
        return await asyncio.to_thread(
            self._fold_plan,
            stored,
            log,
            quiet=quiet,
            rows=rows,
            parts=parts,
            limit=self.active_series_limit,
            delta_mode=delta_mode,
            expire_before_us=expire_before_ns // 1000,
            reset_emitted_us=None if reset_emitted_ns is None else reset_emitted_ns // 1000,
            now_us=now_ns // 1000,
            resource_expire_before_us=resource_expire_before_ns // 1000,
            resource_seen_us=None
            if resource_seen_ns is None
            else {rid: seen // 1000 for rid, seen in resource_seen_ns.items()},
        )

    def _fold_plan(
        self, stored: Mapping[bytes, bytes | None], log: Sequence[bytes], **options: Any
    ) -> FoldPlan:
        return fold_log(
            stored,
            log,
            slots=self.slots,
            max_exemplars=self.max_exemplars,
            exp_max_size=self.exp_max_size,
            overflow_attributes=self.overflow_attributes,
            **options,
        )

    async def read_slot(self, tenant: str, slot: int) -> list[StoredSeries]:
        """Every series of the slot with its cumulative value (record + unfolded rows); read only."""
        stored, log, _, parts = await self._read_slot_and_log(escape_tenant(tenant), slot)
        return stored_series(self._fold_plan(stored, log, parts=parts, limit=0, delta_mode=False))

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
        """Fold the slot's log into its records and commit that (fold.lua) as the slot's owner
        (``token``) if the slot is still as read; not committed, and nothing to publish, when the
        token is stale or another fold committed in between.

        The records this owner committed last are kept (:class:`HotSlot`): when the slot's
        version and size in Redis are still those, only the log is read. Anything else (a new
        token, another writer, lost state, a refused commit, an error) drops them and the fold
        reads the whole slot again."""
        escaped = escape_tenant(tenant)
        hot = self._hot.pop((escaped, slot), None)  # back in only once this fold succeeded
        rows: Rows | None = None
        if hot is not None and delta_mode and hot.quiet:
            hot = None  # (kept by a CUMULATIVE fold: without the records of its quiet series)
        if hot is not None:
            log, version, count = await self._read_log(escaped, slot)
            if not hot.matches(token, version, count):
                hot = None
            elif log and hot.quiet:
                # The records of quiet series the log has rows for: read from Redis, at the
                # version read with the log.
                rows = await asyncio.to_thread(fold_rows, log, self.max_exemplars, self.exp_max_size)
                needed = hot.missing(rows[0])
                if needed and not await self._read_records(escaped, slot, hot, needed, version):
                    hot, rows = None, None
        records: Mapping[bytes, bytes | None]
        if hot is None:
            stored, log, version, parts = await self._read_slot_and_log(escaped, slot)
            records = stored
            # Kept from this fold on only if there is room (else the fold works as without).
            if self._room_for(len(stored)):
                hot = HotSlot(token, version, dict(stored), parts=parts)
        else:
            records, parts = hot.records, hot.parts
        plan = await self._plan_off_loop(
            records,
            log,
            rows=rows,
            quiet=None if hot is None else hot.quiet,
            parts=parts,
            delta_mode=delta_mode,
            expire_before_ns=expire_before_ns,
            reset_emitted_ns=reset_emitted_ns,
            now_ns=now_ns,
            resource_expire_before_ns=resource_expire_before_ns,
            resource_seen_ns=resource_seen_ns,
        )
        if not (plan.updates or plan.created or plan.expired or log):
            if hot is not None:
                hot.unchanged(plan)
                self._keep(escaped, slot, hot)
            return FoldResult(committed=True, live=plan.live, version=int(version), zero_owed=plan.zero_owed)
        header = msgpack.packb(
            [
                self.keys.fence,
                str(slot),
                str(token),
                self.keys.slot(escaped, slot),
                self.keys.log(escaped, slot),
                self.keys.active(escaped),
                len(log),
                self.active_series_limit,
                plan.expired,
                plan.held_change,
                [self.keys.log(escaped, target) for target in plan.overflow_slots],
                self.keys.version(escaped, slot),
                version,
                self.keys.parts(escaped, slot),
            ],
            use_bin_type=False,
        )
        updates = [part for pair in plan.updates for part in pair]
        created = [part for new in plan.created for part in (new.digest, new.record)]
        overflow = [
            part for new in plan.created for part in (new.overflow_target, new.overflow_row, new.weight)
        ]
        pack = msgpack.Packer(use_bin_type=False).pack  # Lua's cmsgpack knows no bin type
        added = [part for pair in plan.parts.items() for part in pair]
        reply = await self._fold(args=[header, pack(updates), pack(created), pack(overflow), pack(added)])
        if _text(reply[0]) != "OK":
            return fold_result(plan, None)
        refused = [int(n) for n in reply[1]]
        if hot is not None:
            hot.committed(plan, refused, str(int(version) + 1))
            self._keep(escaped, slot, hot)
        return fold_result(plan, refused, int(version) + 1)

    def _room_for(self, records: int) -> bool:
        """Whether a slot of this many records fits beside the kept ones in ``max_kept_series``."""
        return sum(len(hot.records) for hot in self._hot.values()) + records <= self.max_kept_series

    def _keep(self, escaped: str, slot: int, hot: HotSlot) -> None:
        """Keep a slot's folded state for its next fold, within ``max_kept_series`` in all."""
        if self._room_for(len(hot.records)):
            self._hot[escaped, slot] = hot

    async def confirm_zero(
        self, tenant: str, slot: int, token: int, version: int, records: list[tuple[bytes, bytes]]
    ) -> bool:
        """The records without their zero points, over those still held (confirm.lua), while
        ``token`` is current and the slot still at ``version``."""
        if not records:
            return True
        escaped = escape_tenant(tenant)
        keys = [self.keys.fence, self.keys.version(escaped, slot), self.keys.slot(escaped, slot)]
        pairs = [part for pair in records for part in pair]
        hot = self._hot.pop((escaped, slot), None)
        reply = await self._confirm(keys=keys, args=[str(slot), str(token), str(version), *pairs])
        if _text(reply) != "OK":
            return False
        if hot is not None and hot.token == token and hot.version == str(version):
            hot.confirmed(records, str(version + 1))
            self._keep(escaped, slot, hot)
        return True


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
