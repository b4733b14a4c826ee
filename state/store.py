"""The Redis state store: the single source of truth for cumulative series and applied offsets.

Three operations carry the invariants (see DESIGN.md):

* :meth:`RedisStateStore.claim` takes ownership of input partitions by bumping their fencing
  tokens; a worker that lost a partition (evicted while paused, say) can no longer write for it.
* :meth:`RedisStateStore.merge` is the flush: in one Lua script it checks the tokens, moves the
  applied offsets, and merges every series delta. All or nothing, so a span counts exactly once.
  A merge whose reply was lost (a timeout while Redis hung, a dropped connection) may have been
  applied; its retry is recognised by its content (the batch digest, kept per partition under
  ``P:batch:<topic>``) and not applied twice.
* :meth:`RedisStateStore.read_slot` / :meth:`RedisStateStore.after_emit` let the owner of a slot
  emit its series and then trim exemplars, subtract DELTA emissions and expire idle series.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgpack
from redis.asyncio import Redis

from state.codec import (
    decode_attributes,
    decode_record,
    delta_payload,
    encode_attributes,
    encode_meta,
    exp_state,
)
from state.keys import KeySpace, escape_tenant, unescape_tenant
from worker.exceptions import StateError
from worker.series import SERIES_ID_SEPARATOR, Attributes, Series, make_series_id, series_digest
from worker.spanmetrics.processor import OVERFLOW_ATTRIBUTE, TenantDeltas

__all__ = ["FencedError", "MergeResult", "RedisStateStore", "StoredSeries", "series_slot", "slot_of"]


#: Entries of the per-series constants cache when no active-series limit is configured.
_CONSTANTS_CACHE_SIZE = 200_000


class FencedError(StateError):
    """Another worker owns the partition now; this worker's deltas for it must be dropped."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition} is owned by another worker (fencing token changed)")
        self.partition = partition


@dataclass(frozen=True, slots=True)
class MergeResult:
    created: int
    overflowed: int
    series: int


@dataclass(slots=True)
class StoredSeries:
    """A series read back for emission, with the digest needed to update it afterwards."""

    digest: bytes
    series: Series


def slot_of(digest: bytes, slots: int) -> int:
    """The emission slot of a series: stable across processes, spread evenly."""
    return int.from_bytes(digest[:8], "big") % slots


def series_slot(series_id: str, slots: int) -> int:
    """Slot by resource and attributes, not metric: ``calls`` and ``duration`` of one span
    series share a slot, so one read of the slot gives a consistent point in time for both."""
    _, _, without_metric = series_id.partition(SERIES_ID_SEPARATOR)
    return slot_of(series_digest(without_metric), slots)


def _script(name: str) -> str:
    folder = resources.files("state") / "lua"
    common = (folder / "common.lua").read_text(encoding="utf-8")
    return common + "\n" + (folder / name).read_text(encoding="utf-8")


def overflow_series_id(metric: str, resource_id: str) -> str:
    """The id of the series that absorbs a tenant's new series past its active-series limit."""
    return make_series_id(metric, resource_id, f"{OVERFLOW_ATTRIBUTE}=true")


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
        #: series_id -> slot, digest and packed meta (see _constants): constant per series, and
        #: computing them was a third of the Python side of a flush. Bounded; emptied when full.
        self._constants_cache: dict[str, bytes] = {}
        self._constants_limit = max(active_series_limit, _CONSTANTS_CACHE_SIZE)
        self._merge = client.register_script(_script("merge.lua"))
        self._post_emit = client.register_script(_script("post_emit.lua"))

    def _constants(self, series: Series) -> tuple[int, bytes, bytes]:
        """(slot, digest, packed meta) of a series, cached by series id.

        Slot and digest are functions of the id. The meta is reused only when every attribute
        value is a string, in the cached series and in this one: the id holds values in their
        string form, so ``200`` and ``"200"`` share an id but not a meta. An entry is one bytes
        object (4-byte slot, 16-byte digest, meta): ~200 B per series rather than ~350 B.
        """
        cache = self._constants_cache
        found = cache.get(series.series_id)
        plain = all(type(value) is str for _, value in series.attributes)
        if found is None:
            if len(cache) >= self._constants_limit:
                cache.clear()
            slot = series_slot(series.series_id, self.slots)
            digest = series_digest(series.series_id)
            meta = encode_meta(series)
            cache[series.series_id] = slot.to_bytes(4, "big") + digest + (meta if plain else b"")
            return slot, digest, meta
        slot = int.from_bytes(found[:4], "big")
        if plain and len(found) > 20:
            return slot, found[4:20], found[20:]
        return slot, found[4:20], encode_meta(series)

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
    ) -> MergeResult:
        """Merge all deltas and advance offsets in one atomic step.

        ``fences`` maps partition -> (fencing token, next offset to apply); ``pending`` holds
        each partition's service-graph half-edges as of those offsets. Raises FencedError (and
        changes nothing) when any token is stale. Idempotent: calling it again with the same
        arguments (a retry after a lost reply) applies nothing more.
        """
        # Packed row by row into one buffer (byte for byte what packing the whole nested list
        # would give): at 100k series the nested rows were the flush's memory peak.
        packer = msgpack.Packer(use_bin_type=False, autoreset=False)  # Lua's cmsgpack: no bin type
        pack = packer.pack
        packer.pack_array_header(7)
        pack(self.keys.prefix)
        pack(self.keys.topic)
        pack([[str(p), str(token), str(offset)] for p, (token, offset) in sorted(fences.items())])
        packer.pack_array_header(len(deltas))
        total = 0
        for tenant, tenant_deltas in deltas.items():
            packer.pack_array_header(5)
            pack(escape_tenant(tenant))
            pack([[rid, encode_attributes(attrs)] for rid, attrs in tenant_deltas.resources.items()])
            overflow_rows: list[list[Any]] = []
            overflow_index: dict[tuple[str, str], int] = {}
            packer.pack_array_header(len(tenant_deltas.series))
            for series in tenant_deltas.series:
                slot, digest, meta = self._constants(series)
                index = 0
                if self.active_series_limit:
                    slot_key = (series.metric, series.resource_id)
                    index = overflow_index.get(slot_key, 0)
                    if not index:
                        overflow_id = overflow_series_id(series.metric, series.resource_id)
                        overflow_digest = series_digest(overflow_id)
                        overflow_meta = msgpack.packb(
                            [series.metric, series.resource_id, [[OVERFLOW_ATTRIBUTE, True]]],
                            use_bin_type=True,
                        )
                        overflow_rows.append(
                            [series_slot(overflow_id, self.slots), overflow_digest, overflow_meta]
                        )
                        index = overflow_index[slot_key] = len(overflow_rows)
                pack([slot, digest, index, delta_payload(series, meta)])
            total += len(tenant_deltas.series)
            pack(overflow_rows)
            pack(self.active_series_limit)
        pack(self.max_exemplars)
        pack(self.exp_max_size)
        pack([[str(p), blob] for p, blob in sorted((pending or {}).items()) if p in fences])
        batch = packer.bytes()
        del packer
        # The digest of the batch identifies a retry: one worker merges one batch at a time for
        # the partitions it fences, so the previous batch recorded for them is this one only if
        # this call repeats a merge that was applied but whose reply never arrived.
        batch_id = hashlib.blake2b(batch, digest_size=16).hexdigest()
        reply = await self._merge(args=[batch, batch_id])
        status = _text(reply[0])
        if status == "FENCED":
            raise FencedError(int(_text(reply[1])))
        if status != "OK":
            raise StateError(f"unexpected reply from the merge script: {reply!r}")
        return MergeResult(created=int(reply[1]), overflowed=int(reply[2]), series=total)

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

    async def read_slot(self, tenant: str, slot: int) -> list[StoredSeries]:
        raw = await self.client.hgetall(self.keys.slot(escape_tenant(tenant), slot))
        return [
            StoredSeries(
                digest=_bytes(digest), series=decode_record(_bytes(blob), max_size=self.exp_max_size)
            )
            for digest, blob in raw.items()
        ]

    async def after_emit(
        self,
        tenant: str,
        slot: int,
        emitted: Sequence[StoredSeries],
        *,
        expire_before_ns: int,
        delta_mode: bool,
        now_ns: int,
    ) -> tuple[int, int]:
        """Trim sent exemplars, subtract DELTA emissions, expire idle series. Returns (updated, expired)."""
        entries: list[list[Any]] = []
        for stored in emitted:
            series = stored.series
            expired = expire_before_ns > 0 and series.last_ns < expire_before_ns
            if not (expired or series.exemplars or delta_mode):
                continue
            entries.append(
                [
                    stored.digest,
                    len(series.exemplars),
                    series.count if delta_mode else 0,
                    float(series.sum) if delta_mode else 0.0,
                    (series.buckets or []) if delta_mode else [],
                    exp_state(series.exp) if delta_mode else [],
                ]
            )
        if not entries:
            return 0, 0
        escaped = escape_tenant(tenant)
        payload = msgpack.packb(
            [
                self.keys.slot(escaped, slot),
                self.keys.active(escaped),
                expire_before_ns // 1000,
                1 if delta_mode else 0,
                now_ns // 1000,
                entries,
            ],
            use_bin_type=False,
        )
        updated, expired_count = await self._post_emit(args=[payload])
        return int(updated), int(expired_count)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
