"""The Redis state store: the single source of truth for cumulative series and applied offsets.

Three operations carry the invariants (see DESIGN.md):

* :meth:`RedisStateStore.claim` takes ownership of input partitions by bumping their fencing
  tokens; a worker that lost a partition (evicted while paused, say) can no longer write for it.
* :meth:`RedisStateStore.merge` is the flush: in one Lua script it checks the tokens, moves the
  applied offsets, and appends every series delta to the delta log of the series' slot. All or
  nothing, so a span counts exactly once. A merge whose reply was lost (a timeout while Redis
  hung, a dropped connection) may have been applied; its retry is recognised by its content
  (the batch digest, kept per partition under ``P:batch:<topic>``) and not applied twice.
* :meth:`RedisStateStore.fold_slot` is emission's first half: the owner of a slot folds the
  slot's delta log into its records (:mod:`state.fold`) and commits that, fenced by its token,
  before publishing what it folded. Only the owner writes a slot's records.

A series' cumulative value is its record plus the rows still in its slot's log;
:meth:`RedisStateStore.read_slot` shows exactly that, without changing anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgpack
from redis.asyncio import Redis

from state.codec import attributes_of_parts, decode_attributes, delta_payload, encode_attributes, encode_meta
from state.fold import FoldPlan, fold_log, row, series_slot, slot_of
from state.keys import KeySpace, escape_tenant, unescape_tenant
from worker.model.errors import StateError
from worker.model.series import (
    Attributes,
    Series,
    TenantDeltas,
    emitted_count,
    series_digest,
    with_companions,
)

__all__ = [
    "FencedError",
    "FoldResult",
    "RedisStateStore",
    "StoredSeries",
    "series_slot",
    "slot_of",
]


#: Attribute value types whose string form in a series id identifies the value.
_SCALARS = frozenset((str, int, float, bool))
#: Entries of the per-series constants cache when no active-series limit is configured.
_CONSTANTS_CACHE_SIZE = 200_000


class FencedError(StateError):
    """Another worker owns the partition now; this worker's deltas for it must be dropped."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition} is owned by another worker (fencing token changed)")
        self.partition = partition


@dataclass(slots=True)
class StoredSeries:
    """A series as stored (record plus unfolded log rows), with its Redis field."""

    digest: bytes
    series: Series


@dataclass(slots=True)
class FoldResult:
    """One committed fold of a slot: what to publish, and what changed."""

    #: False when the slot's token was stale: nothing was committed, nothing must be published.
    committed: bool
    #: What to publish: a series with a companion is written out as two (see state.fold).
    live: list[Series] = field(default_factory=list)
    #: New series the tenant's active-series limit refused: folded into the overflow series.
    overflowed: int = 0
    expired: int = 0

    @property
    def emitted(self) -> int:
        """How many series ``live`` publishes."""
        return emitted_count(self.live)


def _script(name: str) -> str:
    return (resources.files("state") / "lua" / name).read_text(encoding="utf-8")


class RedisStateStore:
    """Async access to the state of one input topic. Cheap to create; holds no series values in
    memory (only a bounded cache of per-series constants)."""

    def __init__(
        self,
        client: Redis,
        keys: KeySpace,
        *,
        slots: int,
        max_exemplars: int,
        exp_max_size: int = 160,
        active_series_limit: int = 0,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1 (the input topic's partition count)")
        self.client = client
        self.keys = keys
        self.slots = slots
        self.max_exemplars = max_exemplars
        self.exp_max_size = exp_max_size
        self.active_series_limit = active_series_limit
        #: series_id -> slot, digest, packed meta and the value types it was packed for (see
        #: _constants): constant per series, and computing them was a third of the Python side
        #: of a flush. Bounded; emptied when full.
        self._constants_cache: dict[str, tuple[int, bytes, bytes, tuple[type, ...] | None]] = {}
        self._signatures: dict[tuple[type, ...], tuple[type, ...]] = {}
        self._constants_limit = max(active_series_limit, _CONSTANTS_CACHE_SIZE)
        self._merge = client.register_script(_script("merge.lua"))
        self._fold = client.register_script(_script("fold.lua"))

    def _constants(self, series: Series) -> tuple[int, bytes, bytes]:
        """(slot, digest, packed meta) of a series, cached by series id.

        Slot and digest are functions of the id. The meta also depends on the attribute values'
        types: the id holds values in their string form, so ``200`` and ``"200"`` share an id but
        not a meta. For scalar values the id and the types together fix the meta, so it is
        cached with the types it was packed for; other values (bytes, arrays, maps) are packed
        again. (The entry must not hold the attributes themselves: that would keep alive every
        tuple the processors' bounded caches let go, ~1.3 KB per series.)
        """
        types = tuple([type(value) for _, value in series.attributes])
        found = self._constants_cache.get(series.series_id)
        if found is not None:
            slot, digest, meta, packed_for = found
            return slot, digest, meta if packed_for == types else encode_meta(series)
        if len(self._constants_cache) >= self._constants_limit:
            self._constants_cache.clear()
        slot = series_slot(series.series_id, self.slots)
        digest = series_digest(series.series_id)
        meta = encode_meta(series)
        # Reused only for the same scalar types (None never equals a tuple of types); one shared
        # tuple per distinct signature, not one per series (~100 bytes each at 100k series).
        packed_for = None
        if _SCALARS.issuperset(types):
            if len(self._signatures) >= 4096:
                self._signatures.clear()
            packed_for = self._signatures.setdefault(types, types)
        self._constants_cache[series.series_id] = (slot, digest, meta, packed_for)
        return slot, digest, meta

    # ------------------------------------------------------------------ ownership and offsets

    async def check_layout(self) -> None:
        """Refuse to run with a slot count other than the one the state was written with.

        Slots are ``hash mod partitions``; with another partition count the same series would
        land in another slot hash and be emitted twice. Changing the input topic's partition
        count therefore needs a fresh key prefix (or a migration), never a silent re-slotting.
        """
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

    # ------------------------------------------------------------------ the flush

    async def merge(
        self,
        deltas: Mapping[str, TenantDeltas],
        fences: Mapping[int, tuple[int, int]],
        pending: Mapping[int, bytes] | None = None,
    ) -> None:
        """Append all deltas to their slots' logs and advance offsets in one atomic step.

        ``fences`` maps partition -> (fencing token, next offset to apply); ``pending`` holds
        each partition's service-graph half-edges as of those offsets. Raises FencedError (and
        changes nothing) when any token is stale. Idempotent: calling it again with the same
        arguments (a retry after a lost reply) applies nothing more.
        """
        entries: list[memoryview] = []
        tenants: list[list[Any]] = []
        for tenant, tenant_deltas in deltas.items():
            # Rows are packed straight into one buffer per slot (the log entry), which Redis
            # receives without a copy: at 100k series, separate row objects joined afterwards
            # were two copies of the batch at the flush's memory peak.
            packers: dict[int, msgpack.Packer] = {}
            for series in tenant_deltas.series:
                slot, digest, meta = self._constants(series)
                packer = packers.get(slot)
                if packer is None:
                    packer = packers[slot] = msgpack.Packer(use_bin_type=True, autoreset=False)
                packer.pack(row(digest, delta_payload(series, meta)))
            logs = []
            for slot, packer in sorted(packers.items()):
                entries.append(packer.getbuffer())
                logs.append([slot, len(entries) + 2])  # ARGV index (1-based, after header and id)
            resource_rows = [[rid, encode_attributes(a)] for rid, a in tenant_deltas.resources.items()]
            tenants.append([escape_tenant(tenant), resource_rows, logs])
        header = msgpack.packb(
            [
                self.keys.prefix,
                self.keys.topic,
                [[str(p), str(token), str(offset)] for p, (token, offset) in sorted(fences.items())],
                tenants,
                [[str(p), blob] for p, blob in sorted((pending or {}).items()) if p in fences],
            ],
            use_bin_type=False,  # Lua's cmsgpack knows no bin type
        )
        # The digest of the batch identifies a retry: one worker merges one batch at a time for
        # the partitions it fences, so the previous batch recorded for them is this one only if
        # this call repeats a merge that was applied but whose reply never arrived.
        batch_id = hashlib.blake2b(header, digest_size=16)
        for entry in entries:
            batch_id.update(entry)
        reply = await self._merge(args=[header, batch_id.hexdigest(), *entries])
        status = _text(reply[0])
        if status == "FENCED":
            raise FencedError(int(_text(reply[1])))
        if status != "OK":
            raise StateError(f"unexpected reply from the merge script: {reply!r}")

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

    async def active_series(self, tenant: str) -> int:
        value = await self.client.get(self.keys.active(escape_tenant(tenant)))
        return int(value or 0)

    async def _read_slot_and_log(self, escaped: str, slot: int) -> tuple[dict[bytes, bytes], list[bytes]]:
        """The slot's records and its whole log, read at one point in time."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.slot(escaped, slot))
            pipe.lrange(self.keys.log(escaped, slot), 0, -1)
            stored, log = await pipe.execute()
        return stored, log

    def _fold_plan(self, stored: Mapping[bytes, bytes], log: Sequence[bytes], **options: Any) -> FoldPlan:
        return fold_log(
            stored,
            log,
            slots=self.slots,
            max_exemplars=self.max_exemplars,
            exp_max_size=self.exp_max_size,
            **options,
        )

    async def read_slot(self, tenant: str, slot: int) -> list[StoredSeries]:
        """Every series of the slot with its cumulative value (record + unfolded rows); read only."""
        stored, log = await self._read_slot_and_log(escape_tenant(tenant), slot)
        plan = self._fold_plan(stored, log, limit=0, delta_mode=False)
        result: list[StoredSeries] = []
        for digest, series in zip(plan.live_digests, plan.live, strict=True):
            if series.attribute_parts is not None:
                series.attributes = attributes_of_parts(series.attribute_parts)
            result.extend(StoredSeries(digest, one) for one in with_companions([series]))
        return result

    async def fold_slot(
        self,
        tenant: str,
        slot: int,
        token: int,
        *,
        expire_before_ns: int = 0,
        delta_mode: bool = False,
        reset_emitted_ns: int | None = None,
    ) -> FoldResult:
        """Fold the slot's log into its records and commit that, as the slot's owner (``token``).

        Returns the series to publish. ``reset_emitted_ns``: when this owner last published the
        slot successfully (see :func:`state.fold.fold_log`). Not committed (``committed`` False)
        when the token is stale: then nothing may be published either.
        """
        escaped = escape_tenant(tenant)
        stored, log = await self._read_slot_and_log(escaped, slot)
        plan = self._fold_plan(
            stored,
            log,
            limit=self.active_series_limit,
            delta_mode=delta_mode,
            expire_before_us=expire_before_ns // 1000,
            reset_emitted_us=None if reset_emitted_ns is None else reset_emitted_ns // 1000,
        )
        if not (plan.updates or plan.created or plan.expired or log):
            return FoldResult(committed=True, live=plan.live)
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
            ],
            use_bin_type=False,
        )
        updates = [part for pair in plan.updates for part in pair]
        created = [part for new in plan.created for part in (new.digest, new.record)]
        overflow = [
            part for new in plan.created for part in (new.overflow_target, new.overflow_row, new.weight)
        ]
        pack = msgpack.Packer(use_bin_type=False).pack  # Lua's cmsgpack knows no bin type
        args = [header, pack(updates), pack(created), pack(overflow)]
        reply = await self._fold(args=args)
        if _text(reply[0]) != "OK":
            return FoldResult(committed=False)
        live = plan.live
        refused = [int(n) for n in reply[1]]
        if refused:
            dropped = {plan.created[n - 1].live_index for n in refused}
            live = [series for index, series in enumerate(live) if index not in dropped]
        return FoldResult(
            committed=True,
            live=live,
            overflowed=len(refused),
            expired=len(plan.expired),
        )


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
