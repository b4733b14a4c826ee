"""The SeriesStore on a Redis Cluster, sharded by index: input partition i and emission slot i
share hash tag i. A merge is one atomic step per input partition under its tag (its offsets,
pending half-edges and outboxes); the owner of slot i pulls every partition's outbox for i and
folds it into tag i; every script declares its keys, all in one hash slot (see README)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from state.codec import decode_attributes, parts_of
from state.keys import KeySpace, escape_tenant, unescape_tenant
from state.protocol import (
    FencedError,
    FoldResult,
    Ownership,
    StateBehindError,
    StoredSeries,
    fold_result,
    stored_series,
)
from state.redis_store import RedisStateStore, _bytes, _script, _text
from worker.model.errors import StateError
from worker.model.series import CONNECTOR_OVERFLOW, Attributes, TenantDeltas

__all__ = ["ClusterKeys", "ClusterStateStore", "NotReplicatedError", "PartitionSteps"]


#: Reads of a slot and its outboxes before giving up on a moment without a fold in between.
_READ_ATTEMPTS = 20

#: One partition's merge step: its keys and its arguments after the sequence (header, entries).
_Request = tuple[list[str], bytes, list[memoryview]]
#: A multi-partition merge's outcome: per partition, applied now (True), applied before (False),
#: or the error its step ended with (nothing of that partition's step applied, or unknown).
PartitionSteps = dict[int, "bool | BaseException"]


class NotReplicatedError(RedisError):
    """No replica acknowledged a step in time: the step may be lost by a failover, so what
    depends on it (the Kafka commit, trimming the outbox) waits; the step is retried like any
    Redis error (a merge's retry is answered "seen", or applies again if the step was lost)."""


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """The cluster layout: a control tag per topic (generation marker, the fencing counters that
    claims draw from), and one tag per index i holding input partition i and emission slot i."""

    prefix: str
    topic: str

    @property
    def control(self) -> KeySpace:
        """The generation marker and the fencing hash (claims' counters), under one hash tag."""
        return KeySpace(f"{{{self.prefix}:{self.topic}}}", self.topic)

    def tag(self, index: int) -> str:
        return f"{{{self.prefix}:{self.topic}:s{index}}}"

    # -- the index as a whole

    def token(self, index: int) -> str:
        """string: the owner's fencing token, copied from the control tag by claims (only
        raised); merges of partition i and folds of slot i are fenced by it."""
        return f"{self.tag(index)}:token"

    def marker(self, index: int) -> str:
        """string: the generation marker the tag's state belongs to."""
        return f"{self.tag(index)}:gen"

    def epoch(self, index: int) -> str:
        """string: when the tag's outboxes began (µs, server clock; remade if the tag lost its
        data): a slot's cursor into an outbox holds it with the count."""
        return f"{self.tag(index)}:epoch"

    def slot_tenants(self, index: int) -> str:
        """set: escaped tenants with keys under the tag (merged through it, or folded in it)."""
        return f"{self.tag(index)}:tenants"

    # -- input partition i

    def offset(self, partition: int) -> str:
        """string: the next input offset of the partition to apply."""
        return f"{self.tag(partition)}:offset"

    def watermark(self, partition: int) -> str:
        """string: ``<token>:<sequence>`` of the partition's last applied merge step."""
        return f"{self.tag(partition)}:applied"

    def edges(self, partition: int) -> str:
        """string: the partition's pending service-graph half-edges, as of its offset."""
        return f"{self.tag(partition)}:edges"

    def resources(self, escaped: str, partition: int) -> str:
        """hash: resource id -> attributes, of the resources merged through the partition."""
        return f"{self.tag(partition)}:t:{escaped}:r"

    def seen(self, escaped: str, partition: int) -> str:
        """hash: resource id -> last seen (µs) through the partition; the store's is the max."""
        return f"{self.tag(partition)}:t:{escaped}:seen"

    def outbox(self, escaped: str, source: int, slot: int) -> str:
        """list: the source partition's rows for the slot (and the source slot's refused rows
        for the overflow series' slot), not yet trimmed; read by the slot's owner only."""
        return f"{self.tag(source)}:t:{escaped}:d:{slot}"

    def base(self, escaped: str, source: int, slot: int) -> str:
        """string: entries trimmed from that outbox so far (its first entry's absolute index)."""
        return f"{self.tag(source)}:t:{escaped}:b:{slot}"

    # -- emission slot i

    def records(self, escaped: str, slot: int) -> str:
        return f"{self.tag(slot)}:t:{escaped}:s"

    def version(self, escaped: str, slot: int) -> str:
        return f"{self.tag(slot)}:t:{escaped}:v"

    def parts(self, escaped: str, slot: int) -> str:
        """hash: the slot's dictionary of attribute parts (state.keys.KeySpace.parts)."""
        return f"{self.tag(slot)}:t:{escaped}:p"

    def cursors(self, escaped: str, slot: int) -> str:
        """hash: source partition -> ``<epoch>:<count>``, how many entries of its outbox for the
        slot (in that epoch of the source's tag) are folded in."""
        return f"{self.tag(slot)}:t:{escaped}:c"

    def active(self, escaped: str, slot: int) -> str:
        """string: the tenant's active series held in this slot."""
        return f"{self.tag(slot)}:t:{escaped}:n"

    def slot_keys(self, escaped: str, slot: int) -> list[str]:
        return [
            self.records(escaped, slot),
            self.version(escaped, slot),
            self.cursors(escaped, slot),
            self.active(escaped, slot),
            self.parts(escaped, slot),
        ]


class ClusterStateStore(RedisStateStore):
    """The state of one input topic on a Redis Cluster (see the module docstring and README)."""

    def __init__(
        self,
        client: RedisCluster,
        keys: ClusterKeys,
        *,
        slots: int,
        max_exemplars: int,
        exp_max_size: int = 160,
        active_series_limit: int = 0,
        overflow_attributes: Attributes = CONNECTOR_OVERFLOW,
        replica_wait_s: float = 1.0,
    ) -> None:
        super().__init__(
            client,  # type: ignore[arg-type]  # the same commands, routed by key
            keys.control,
            slots=slots,
            max_exemplars=max_exemplars,
            exp_max_size=exp_max_size,
            active_series_limit=active_series_limit,
            overflow_attributes=overflow_attributes,
        )
        self.cluster = client
        self.layout = keys
        self.replica_wait_s = replica_wait_s
        self._cluster_merge = client.register_script(_script("cluster_merge.lua"))
        self._pull = client.register_script(_script("cluster_pull.lua"))
        self._cluster_fold = client.register_script(_script("cluster_fold.lua"))
        self._trim = client.register_script(_script("cluster_trim.lua"))
        self._cluster_confirm = client.register_script(_script("cluster_confirm.lua"))
        self._sync = client.register_script(_script("cluster_sync.lua"))

    # ------------------------------------------------------------------ replication

    async def replicated(self, key: str) -> None:
        """Until a replica of the master holding ``key`` has every write that master acknowledged
        before this call: a write under ``key``'s hash tag, then WAIT 1 on the same connection (a
        replica acknowledging it has everything before it). A failover to that replica then
        cannot lose them. NotReplicatedError after ``replica_wait_s``; no wait at 0, nor when the
        master has no replica."""
        if self.replica_wait_s <= 0:
            return
        node = self.cluster.get_node_from_key(key)
        if node is None:
            raise NotReplicatedError(f"no Redis master serves the hash slot of {key!r} now")
        marker = f"{key[: key.index('}') + 1]}:sync"
        connection = node.acquire_connection()
        try:
            await connection.send_command("INCR", marker)
            await node.parse_response(connection, "INCR")
            await connection.send_command("WAIT", 1, max(1, int(self.replica_wait_s * 1000)))
            acknowledged = int(await node.parse_response(connection, "WAIT"))
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            node.release(connection)
        if acknowledged >= 1:
            return
        # A master without any replica (connected or not) cannot fail over: nothing to wait for.
        # One whose replica is merely disconnected can, to that replica: that is not safe.
        myself = await self.cluster.execute_command("CLUSTER", "MYID", target_nodes=node)
        replicas = await self.cluster.execute_command("CLUSTER", "REPLICAS", _text(myself), target_nodes=node)
        if not replicas:
            return
        raise NotReplicatedError(
            f"no replica of the Redis master {node.name} acknowledged within {self.replica_wait_s:g} s"
        )

    async def _replicated_each(self, keys: Iterable[str]) -> None:
        """:meth:`replicated` for each key's master, once per master (a replica acknowledging
        a write has every write its master made before it, whatever the tag)."""
        by_master: dict[str, str] = {}
        for key in keys:
            node = self.cluster.get_node_from_key(key)
            by_master.setdefault(key if node is None else node.name, key)
        await asyncio.gather(*(self.replicated(key) for key in by_master.values()))

    # ------------------------------------------------------------------ ownership and offsets

    async def claim(self, partitions: Iterable[int]) -> dict[int, int]:
        """New tokens from the control tag, then copied into each index's tag (only ever
        raised) before the new owner reads or writes there: from then on an older owner's merges
        and folds are refused."""
        tokens = await super().claim(partitions)
        for index, token in tokens.items():
            await self._sync(
                keys=[self.layout.token(index), self.layout.marker(index)], args=[str(token), ""]
            )
        return tokens

    async def _get_each(self, keys: list[str]) -> list[Any]:
        """GET of each key (any tags), in one pipeline per master."""
        if not keys:
            return []
        async with self.cluster.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            return list(await pipe.execute())

    async def owns(self, tokens: Mapping[int, int]) -> set[int]:
        """The partitions among ``tokens`` whose tag holds that token (what merges check)."""
        ordered = sorted(tokens)
        current = await self._get_each([self.layout.token(p) for p in ordered])
        return {
            p
            for p, value in zip(ordered, current, strict=True)
            if value is not None and int(value) == tokens[p]
        }

    async def applied_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        ordered = sorted(set(partitions))
        values = await self._get_each([self.layout.offset(p) for p in ordered])
        return {p: int(v) for p, v in zip(ordered, values, strict=True) if v is not None}

    async def read_pending(self, partitions: Iterable[int]) -> dict[int, bytes]:
        ordered = sorted(set(partitions))
        values = await self._get_each([self.layout.edges(p) for p in ordered])
        return {p: _bytes(v) for p, v in zip(ordered, values, strict=True) if v}

    async def generation(self, candidate: str) -> str:
        """The control tag's marker (generation.lua), then every index's tag brought in line: its
        marker set (its records dropped when they belong to an earlier generation) and its token
        copy raised to the control tag's."""
        marker = await super().generation(candidate)
        fence = await self.client.hgetall(self.keys.fence)
        tokens = {int(_text(p)): _text(t) for p, t in fence.items()}
        for index in range(self.slots):
            escaped = [_text(t) for t in await self.cluster.smembers(self.layout.slot_tenants(index))]  # type: ignore[misc]
            keys = [self.layout.token(index), self.layout.marker(index), self.layout.slot_tenants(index)]
            for tenant in escaped:
                keys += self.layout.slot_keys(tenant, index)
            await self._sync(keys=keys, args=[tokens.get(index, ""), marker])
        return marker

    async def ownership(self, partitions: Iterable[int]) -> Ownership:
        """The control tag's marker, and each partition's token, applied offset and marker from
        its own tag (a moment's view per tag): a tag that lost its data (a failover to a stale
        replica) shows as a missing marker or a token or offset gone back."""
        ordered = sorted(set(partitions))
        layout = self.layout
        keys = [self.keys.generation]
        for p in ordered:
            keys += [layout.token(p), layout.offset(p), layout.marker(p)]
        values = await self._get_each(keys)
        generation = None if values[0] is None else _text(values[0])
        tokens: dict[int, int] = {}
        applied: dict[int, int] = {}
        for n, p in enumerate(ordered):
            token, offset, marker = values[1 + 3 * n : 4 + 3 * n]
            if token is not None:
                tokens[p] = int(token)
            if offset is not None:
                applied[p] = int(offset)
            if generation is not None and (marker is None or _text(marker) != generation):
                generation = None if marker is None else _text(marker)
        return Ownership(generation, tokens, applied)

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
        """The protocol's merge, as one step per fenced partition (:meth:`merge_partitions`),
        with every delta in the lowest partition's step: exactly once for deltas of that
        partition alone (the checkpoint hands each partition's own). True if any step applied;
        the first error otherwise (a fenced step before any other), after every step ran."""
        by_partition = {min(fences): deltas} if fences and deltas else {}
        steps = await self.merge_partitions(by_partition, fences, pending, sequence=sequence, applied=applied)
        failures = [result for result in steps.values() if isinstance(result, BaseException)]
        if failures:
            raise next((f for f in failures if isinstance(f, FencedError)), failures[0])
        return any(result is True for result in steps.values())

    async def merge_partitions(
        self,
        deltas: Mapping[int, Mapping[str, TenantDeltas]],
        fences: Mapping[int, tuple[int, int]],
        pending: Mapping[int, bytes] | None = None,
        *,
        sequence: int | None = None,
        applied: Mapping[int, int] | None = None,
    ) -> PartitionSteps:
        """One atomic step per fenced partition under its own tag (cluster_merge.lua): its
        ``deltas`` into its outboxes, its offset, watermark and half-edges; the steps run
        concurrently, each then waits for a replica of its master (:meth:`replicated`). Each
        partition's outcome apart: applied now, seen before, or the error of its step (a
        FencedError or StateBehindError when refused; a Redis error when unknown)."""
        requests = await asyncio.to_thread(
            self._partition_requests, deltas, fences, pending or {}, applied or {}
        )
        if sequence is None:
            digest = hashlib.blake2b(digest_size=16)
            for partition, (_, header, entries) in sorted(requests.items()):
                digest.update(str(partition).encode())
                digest.update(header)
                for entry in entries:
                    digest.update(entry)
            sequence = self.sequences.number(digest.digest())
        else:
            self.sequences.saw(sequence)
        ordered = sorted(requests)
        results = await asyncio.gather(
            *(self._merge_step(p, *requests[p], sequence) for p in ordered), return_exceptions=True
        )
        return dict(zip(ordered, results, strict=True))

    def _partition_requests(
        self,
        deltas: Mapping[int, Mapping[str, TenantDeltas]],
        fences: Mapping[int, tuple[int, int]],
        pending: Mapping[int, bytes],
        applied: Mapping[int, int],
    ) -> dict[int, _Request]:
        """cluster_merge.lua's keys, header and entries per fenced partition (pure CPU work: in a
        thread, as the single-node merge request)."""
        layout = self.layout
        requests: dict[int, _Request] = {}
        for partition, (token, offset) in sorted(fences.items()):
            keys = [
                layout.token(partition),
                layout.offset(partition),
                layout.watermark(partition),
                layout.edges(partition),
                layout.slot_tenants(partition),
                layout.epoch(partition),
            ]
            entries: list[memoryview] = []
            tenants: list[list[Any]] = []
            for packed in self.packer.pack(deltas.get(partition, {})):
                escaped = escape_tenant(packed.tenant)
                keys += [layout.resources(escaped, partition), layout.seen(escaped, partition)]
                logs = []
                for slot, entry in packed.entries:
                    keys.append(layout.outbox(escaped, partition, slot))
                    entries.append(entry)
                    logs.append([len(keys), len(entries) + 2])  # 1-based KEYS and ARGV indexes
                rows = [[rid, blob, str(seen)] for rid, blob, seen in packed.resources]
                tenants.append([escaped, len(keys) - len(logs) - 1, len(keys) - len(logs), rows, logs])
            header = msgpack.packb(
                [
                    str(token),
                    str(offset),
                    str(applied.get(partition, -1)),
                    [pending[partition]] if partition in pending else [],
                    tenants,
                ],
                use_bin_type=False,  # Lua's cmsgpack knows no bin type
            )
            requests[partition] = (keys, header, entries)
        return requests

    async def _merge_step(
        self, partition: int, keys: list[str], header: bytes, entries: list[memoryview], sequence: int
    ) -> bool:
        """One partition's step, then a replica's acknowledgement of it (also when seen: the
        step it repeats may not be on a replica yet)."""
        args: list[bytes | str | memoryview] = [header, str(sequence), *entries]
        reply = await self._cluster_merge(keys=keys, args=args)
        status = _text(reply[0])
        if status == "FENCED":
            raise FencedError(partition)
        if status == "BEHIND":
            raise StateBehindError(partition)
        if status not in ("OK", "SEEN"):
            raise StateError(f"unexpected reply from the merge script: {reply!r}")
        await self.replicated(self.layout.token(partition))
        return status == "OK"

    # ------------------------------------------------------------------ emission

    async def _each_tag(self, command: str, keys: list[str]) -> list[Any]:
        async with self.cluster.pipeline(transaction=False) as pipe:
            for key in keys:
                getattr(pipe, command)(key)
            return list(await pipe.execute())

    async def tenants(self) -> list[str]:
        """Every tag's tenants, together."""
        found = await self._each_tag("smembers", [self.layout.slot_tenants(i) for i in range(self.slots)])
        return sorted({unescape_tenant(_text(m)) for members in found for m in members})

    async def resources(self, tenant: str) -> dict[str, Attributes]:
        """The resources every partition merged (the same id: the same attributes)."""
        escaped = escape_tenant(tenant)
        found = await self._each_tag(
            "hgetall", [self.layout.resources(escaped, i) for i in range(self.slots)]
        )
        blobs: dict[str, bytes] = {}
        for raw in found:
            for rid, blob in raw.items():
                blobs.setdefault(_text(rid), _bytes(blob))
        return {rid: decode_attributes(blob) for rid, blob in blobs.items()}

    async def resource_seen(self, tenant: str) -> dict[str, int]:
        """The latest last-seen time any partition holds."""
        escaped = escape_tenant(tenant)
        found = await self._each_tag("hgetall", [self.layout.seen(escaped, i) for i in range(self.slots)])
        seen: dict[str, int] = {}
        for raw in found:
            for rid, at in raw.items():
                key, value = _text(rid), int(_text(at)) * 1000
                if value > seen.get(key, -1):
                    seen[key] = value
        return seen

    async def forget_resources(self, tenant: str, resource_ids: Iterable[str], before_ns: int) -> int:
        """forget.lua in every partition's tag; how many of the ids left some tag."""
        ids = list(resource_ids)
        if not ids:
            return 0
        escaped = escape_tenant(tenant)
        counts = await asyncio.gather(
            *(
                self._forget(keys=[self.layout.seen(escaped, i)], args=[str(before_ns // 1000), *ids])
                for i in range(self.slots)
            )
        )
        return min(len(ids), sum(int(count) for count in counts))

    async def active_series(self, tenant: str) -> int:
        """The sum of every slot's count (read one after the other: a moment's view per slot)."""
        escaped = escape_tenant(tenant)
        values = await self._get_each([self.layout.active(escaped, slot) for slot in range(self.slots)])
        return sum(int(value or 0) for value in values)

    async def _read(
        self, escaped: str, slot: int
    ) -> tuple[
        dict[bytes, bytes], list[bytes], str, dict[int, str], dict[int, tuple[str, int]], dict[int, bytes]
    ]:
        """The slot's records, version and cursors (its tag, one point in time), then what every
        partition's outbox for the slot holds past its cursor (cluster_pull.lua, each at one
        point in time); the cursors and where each outbox pulled ends (its epoch, its count)."""
        layout = self.layout
        for attempt in range(_READ_ATTEMPTS):
            async with self.cluster.pipeline(transaction=True) as pipe:
                pipe.hgetall(layout.records(escaped, slot))
                pipe.get(layout.version(escaped, slot))
                pipe.hgetall(layout.cursors(escaped, slot))
                pipe.hgetall(layout.parts(escaped, slot))
                stored, version, raw_cursors, parts = await pipe.execute()
            cursors = {int(_text(p)): _text(at) for p, at in raw_cursors.items()}
            # Only the outboxes holding entries are pulled (an entry appended after its LLEN is
            # pulled by the next fold: its cursor does not move before).
            lengths = await self._each_tag(
                "llen", [layout.outbox(escaped, p, slot) for p in range(self.slots)]
            )
            sources = [source for source, length in enumerate(lengths) if length]
            pulled = await asyncio.gather(
                *(
                    self._pull(
                        keys=[
                            layout.outbox(escaped, source, slot),
                            layout.base(escaped, source, slot),
                            layout.epoch(source),
                        ],
                        args=[cursors.get(source, "")],
                    )
                    for source in sources
                )
            )
            version_text = "0" if version is None else _text(version)
            now = await self.cluster.get(layout.version(escaped, slot))
            if ("0" if now is None else _text(now)) != version_text and attempt < _READ_ATTEMPTS - 1:
                continue  # a fold committed (and maybe trimmed) in between: read again
            # (Past the attempts: a fold from this read is refused by its version check.)
            log: list[bytes] = []
            ends: dict[int, tuple[str, int]] = {}
            for source, (epoch, base, length, entries) in zip(sources, pulled, strict=True):
                log += entries
                ends[source] = (_text(epoch), int(base) + int(length))
            return stored, log, version_text, cursors, ends, parts_of(parts)
        raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover

    async def read_slot(self, tenant: str, slot: int) -> list[StoredSeries]:
        stored, log, *_, parts = await self._read(escape_tenant(tenant), slot)
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
        """Pull every partition's outbox for the slot into its records as the owner
        (cluster_fold.lua, a compare-and-set on the version, cursors per source partition), once
        the sources' masters have the entries read on a replica; then trim those outboxes up to
        the new cursors once the fold itself is on a replica."""
        escaped = escape_tenant(tenant)
        layout = self.layout
        stored, log, version, cursors, ends, parts = await self._read(escaped, slot)
        moved = {
            source: (epoch, end)
            for source, (epoch, end) in ends.items()
            if f"{epoch}:{end}" != cursors.get(source, "") and (end or source in cursors)
        }
        limit = self.active_series_limit
        plan = await self._plan_off_loop(
            stored,
            log,
            parts=parts,
            delta_mode=delta_mode,
            expire_before_ns=expire_before_ns,
            reset_emitted_ns=reset_emitted_ns,
            now_ns=now_ns,
            resource_expire_before_ns=resource_expire_before_ns,
            resource_seen_ns=resource_seen_ns,
        )
        if not (plan.updates or plan.created or plan.expired or log or moved):
            return FoldResult(committed=True, live=plan.live, version=int(version), zero_owed=plan.zero_owed)
        # What this fold counts must survive a failover of the masters it was read from: else
        # the cursor would point past entries the outbox no longer has, and skip new ones.
        await self._replicated_each(layout.token(source) for source in moved)
        # New series' resources, copied into the slot's tag with the fold: the slot's records
        # never depend on a partition tag that may lose its data (README: Redis Cluster).
        needed = sorted(
            {plan.live[new.live_index].resource_id for new in plan.created if new.live_index >= 0}
        )
        copies = await self._resource_copies(escaped, needed, sorted(moved)) if needed else []
        others = 0
        if limit and plan.created:
            others = await self.active_series(tenant) - int(
                await self.cluster.get(layout.active(escaped, slot)) or 0
            )
        header = msgpack.packb(
            [
                str(token),
                version,
                [
                    part
                    for source, (epoch, end) in sorted(moved.items())
                    for part in (str(source), f"{epoch}:{end}")
                ],
                limit,
                others,
                plan.expired,
                plan.held_change,
                escaped,
            ],
            use_bin_type=False,
        )
        updates = [part for pair in plan.updates for part in pair]
        created = [part for new in plan.created for part in (new.digest, new.record)]
        overflow = [
            part for new in plan.created for part in (new.overflow_target, new.overflow_row, new.weight)
        ]
        pack = msgpack.Packer(use_bin_type=False).pack
        keys = [
            layout.token(slot),
            layout.version(escaped, slot),
            layout.records(escaped, slot),
            layout.cursors(escaped, slot),
            layout.active(escaped, slot),
            layout.slot_tenants(slot),
            layout.epoch(slot),
            layout.resources(escaped, slot),
            layout.parts(escaped, slot),
            *(layout.outbox(escaped, slot, target) for target in plan.overflow_slots),
        ]
        added = [part for pair in plan.parts.items() for part in pair]
        reply = await self._cluster_fold(
            keys=keys, args=[header, pack(updates), pack(created), pack(overflow), pack(copies), pack(added)]
        )
        if _text(reply[0]) != "OK":
            return fold_result(plan, None)
        refused = [int(n) for n in reply[1]]
        result = fold_result(plan, refused, int(version) + 1)
        # Only a commit a replica holds may trim: a commit lost by a failover is folded again
        # from the outboxes (left untrimmed; a later fold trims them).
        try:
            await self.replicated(layout.records(escaped, slot))
        except NotReplicatedError:
            return result
        await asyncio.gather(
            *(
                self._trim(
                    keys=[
                        layout.outbox(escaped, source, slot),
                        layout.base(escaped, source, slot),
                        layout.epoch(source),
                    ],
                    args=[str(end), epoch],
                )
                for source, (epoch, end) in moved.items()
            )
        )
        return result

    async def _resource_copies(
        self, escaped: str, needed: list[str], sources: list[int]
    ) -> list[bytes | str]:
        """``[id, attributes, ...]`` of the ``needed`` resources, as the partitions the fold
        pulled from (where their merges stored them) hold them."""
        found: dict[str, bytes] = {}
        async with self.cluster.pipeline(transaction=False) as pipe:
            for source in sources:
                pipe.hmget(self.layout.resources(escaped, source), needed)
            replies = await pipe.execute()
        for values in replies:
            for rid, blob in zip(needed, values, strict=True):
                if blob is not None:
                    found.setdefault(rid, _bytes(blob))
        return [part for rid, blob in sorted(found.items()) for part in (rid, blob)]

    async def confirm_zero(
        self, tenant: str, slot: int, token: int, version: int, records: list[tuple[bytes, bytes]]
    ) -> bool:
        if not records:
            return True
        escaped = escape_tenant(tenant)
        layout = self.layout
        keys = [layout.token(slot), layout.version(escaped, slot), layout.records(escaped, slot)]
        pairs = [part for pair in records for part in pair]
        reply = await self._cluster_confirm(keys=keys, args=[str(token), str(version), *pairs])
        return _text(reply) == "OK"
