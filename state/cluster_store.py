"""The SeriesStore on a Redis Cluster: merges into a control hash tag (fences, offsets, outboxes),
folds pulled into one hash tag per emission slot (records, versions, cursors), so series state
shards over the masters; every script declares its keys, all in one hash slot (see README)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from state.keys import KeySpace, escape_tenant
from state.protocol import FoldResult, Ownership, StoredSeries, fold_result, stored_series
from state.redis_store import RedisStateStore, _script, _text
from worker.model.series import CONNECTOR_OVERFLOW, Attributes

__all__ = ["ClusterKeys", "ClusterStateStore", "NotReplicatedError"]


#: Reads of a slot and its outbox before giving up on a moment without a fold in between.
_READ_ATTEMPTS = 20


class NotReplicatedError(RedisError):
    """No replica acknowledged a step in time: the step may be lost by a failover, so what
    depends on it (the Kafka commit, trimming the outbox) waits; the step is retried like any
    Redis error (a merge's retry is answered "seen", or applies again if the step was lost)."""


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """The cluster layout: one control tag per topic, one tag per emission slot."""

    prefix: str
    topic: str

    @property
    def control(self) -> KeySpace:
        """Fences, offsets, watermarks, half-edges, tenants, resources and the slots' outboxes
        (``<control>:t:<tenant>:d:<slot>``): merge.lua's keys, all under one hash tag."""
        return KeySpace(f"{{{self.prefix}:{self.topic}}}", self.topic)

    def base(self, escaped: str, slot: int) -> str:
        """string (control tag): entries trimmed from the slot's outbox so far."""
        return f"{self.control.tenant_root(escaped)}:b:{slot}"

    def delivered(self, escaped: str, slot: int) -> str:
        """string (control tag): the last fold version of the slot whose overflow was delivered."""
        return f"{self.control.tenant_root(escaped)}:od:{slot}"

    def tag(self, slot: int) -> str:
        return f"{{{self.prefix}:{self.topic}:s{slot}}}"

    def token(self, slot: int) -> str:
        """string: the slot owner's fencing token, copied from the control tag by claims."""
        return f"{self.tag(slot)}:token"

    def marker(self, slot: int) -> str:
        """string: the generation marker the slot's records belong to."""
        return f"{self.tag(slot)}:gen"

    def slot_tenants(self, slot: int) -> str:
        """set: escaped tenants holding records in the slot."""
        return f"{self.tag(slot)}:tenants"

    def records(self, escaped: str, slot: int) -> str:
        return f"{self.tag(slot)}:t:{escaped}:s"

    def version(self, escaped: str, slot: int) -> str:
        return f"{self.tag(slot)}:t:{escaped}:v"

    def cursor(self, escaped: str, slot: int) -> str:
        """string: how many entries of the slot's outbox (absolute count) are folded in."""
        return f"{self.tag(slot)}:t:{escaped}:c"

    def active(self, escaped: str, slot: int) -> str:
        """string: the tenant's active series held in this slot."""
        return f"{self.tag(slot)}:t:{escaped}:n"

    def overflow(self, escaped: str, slot: int) -> str:
        """string: msgpack ``[version, [[target slot, rows], ...]]``, not yet delivered maybe."""
        return f"{self.tag(slot)}:t:{escaped}:o"

    def slot_keys(self, escaped: str, slot: int) -> list[str]:
        return [
            self.records(escaped, slot),
            self.version(escaped, slot),
            self.cursor(escaped, slot),
            self.active(escaped, slot),
            self.overflow(escaped, slot),
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
        self._cluster_fold = client.register_script(_script("cluster_fold.lua"))
        self._overflow = client.register_script(_script("cluster_overflow.lua"))
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

    async def _merged(self) -> None:
        """The merge's offsets go to Kafka only once a replica holds the step (README: a failover
        that lost it would otherwise leave Kafka ahead of Redis)."""
        await self.replicated(self.keys.fence)

    def _merge_keys(
        self, fences: Mapping[int, tuple[int, int]], tenants: list[list[Any]], pending: Mapping[int, bytes]
    ) -> list[str]:
        control = self.keys
        keys = [control.fence, control.offsets, control.applied, control.tenants]
        keys += [control.pending_edges(p) for p in sorted(pending) if p in fences]
        for escaped, _, logs in tenants:
            keys += [control.resources(escaped), control.resource_seen(escaped)]
            keys += [control.log(escaped, slot) for slot, _ in logs]
        return keys

    # ------------------------------------------------------------------ ownership

    async def claim(self, partitions: Iterable[int]) -> dict[int, int]:
        """New tokens in the control tag, then copied into each slot's tag (only ever raised),
        before the new owner folds; an older owner's folds are refused from then on."""
        tokens = await super().claim(partitions)
        for slot, token in tokens.items():
            await self._sync(keys=[self.layout.token(slot), self.layout.marker(slot)], args=[str(token), ""])
        return tokens

    async def generation(self, candidate: str) -> str:
        """The control tag's marker (generation.lua), then every slot's tag brought in line: its
        marker set (its records dropped when they belong to an earlier generation) and its token
        copy raised to the control tag's."""
        marker = await super().generation(candidate)
        fence = await self.client.hgetall(self.keys.fence)
        tokens = {int(_text(p)): _text(t) for p, t in fence.items()}
        for slot in range(self.slots):
            escaped = [_text(t) for t in await self.cluster.smembers(self.layout.slot_tenants(slot))]  # type: ignore[misc]
            keys = [self.layout.token(slot), self.layout.marker(slot), self.layout.slot_tenants(slot)]
            for tenant in escaped:
                keys += self.layout.slot_keys(tenant, slot)
            await self._sync(keys=keys, args=[tokens.get(slot, ""), marker])
        return marker

    async def ownership(self, partitions: Iterable[int]) -> Ownership:
        """As on one node, plus the marker of each of these partitions' slots: a slot whose tag
        lost its data (a failover to a stale replica) shows as a missing marker, one left from
        another generation as that marker."""
        seen = await super().ownership(partitions)
        if seen.generation is None:
            return seen
        ordered = sorted(set(partitions))
        async with self.cluster.pipeline(transaction=False) as pipe:
            for slot in ordered:
                pipe.get(self.layout.marker(slot))
            markers = await pipe.execute()
        for value in markers:
            if value is None:
                return Ownership(None, seen.tokens, seen.applied)
            if _text(value) != seen.generation:
                return Ownership(_text(value), seen.tokens, seen.applied)
        return seen

    # ------------------------------------------------------------------ emission

    async def active_series(self, tenant: str) -> int:
        """The sum of every slot's count (read one after the other: a moment's view per slot)."""
        escaped = escape_tenant(tenant)
        async with self.cluster.pipeline(transaction=False) as pipe:
            for slot in range(self.slots):
                pipe.get(self.layout.active(escaped, slot))
            values = await pipe.execute()
        return sum(int(value or 0) for value in values)

    async def _read(
        self, escaped: str, slot: int
    ) -> tuple[dict[bytes, bytes], list[bytes], str, int, int, bytes | None]:
        """The slot's records, version, cursor and pending overflow (its tag, one point in time),
        then the outbox entries past the cursor (the control tag); the new cursor."""
        layout = self.layout
        for attempt in range(_READ_ATTEMPTS):
            async with self.cluster.pipeline(transaction=True) as pipe:
                pipe.hgetall(layout.records(escaped, slot))
                pipe.get(layout.version(escaped, slot))
                pipe.get(layout.cursor(escaped, slot))
                pipe.get(layout.overflow(escaped, slot))
                stored, version, cursor, overflow = await pipe.execute()
            async with self.cluster.pipeline(transaction=True) as pipe:
                pipe.get(layout.base(escaped, slot))
                pipe.lrange(self.keys.log(escaped, slot), 0, -1)
                base, log = await pipe.execute()
            version_text = "0" if version is None else _text(version)
            now = await self.cluster.get(layout.version(escaped, slot))
            if ("0" if now is None else _text(now)) != version_text and attempt < _READ_ATTEMPTS - 1:
                continue  # a fold committed (and maybe trimmed) in between: read again
            # (Past the attempts: a fold from this read is refused by its version check.)
            at = int(cursor or 0)
            first = int(base or 0)
            entries = log[max(0, at - first) :]
            return stored, entries, version_text, at, first + len(log), overflow
        raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover

    async def read_slot(self, tenant: str, slot: int) -> list[StoredSeries]:
        stored, log, *_ = await self._read(escape_tenant(tenant), slot)
        return stored_series(self._fold_plan(stored, log, limit=0, delta_mode=False))

    async def _deliver(self, escaped: str, slot: int, pending: bytes | None) -> None:
        """Hand a fold's refused rows to their slots' outboxes (cluster_overflow.lua: once)."""
        if not pending:
            return
        version, targets = msgpack.unpackb(pending, raw=True)
        keys = [self.layout.delivered(escaped, slot)] + [self.keys.log(escaped, int(t)) for t, _ in targets]
        await self._overflow(keys=keys, args=[str(version), *(rows for _, rows in targets)])

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
        """Pull the slot's outbox into its records as the owner (cluster_fold.lua, a compare-and-
        set on version and cursor), once the outbox entries read are on a replica; then deliver
        refused rows and trim the outbox up to the new cursor once the fold is on a replica."""
        escaped = escape_tenant(tenant)
        layout = self.layout
        stored, log, version, cursor, new_cursor, pending = await self._read(escaped, slot)
        if pending:  # an earlier fold's refusals, maybe not delivered yet: once a replica holds it
            await self.replicated(layout.records(escaped, slot))
            await self._deliver(escaped, slot, pending)
        limit = self.active_series_limit
        plan = await self._plan_off_loop(
            stored,
            log,
            delta_mode=delta_mode,
            expire_before_ns=expire_before_ns,
            reset_emitted_ns=reset_emitted_ns,
            now_ns=now_ns,
            resource_expire_before_ns=resource_expire_before_ns,
            resource_seen_ns=resource_seen_ns,
        )
        if not (plan.updates or plan.created or plan.expired or log or new_cursor != cursor):
            return FoldResult(committed=True, live=plan.live, version=int(version), zero_owed=plan.zero_owed)
        # What this fold counts must survive a failover of the control tag's master.
        await self.replicated(self.keys.log(escaped, slot))
        others = 0
        if limit and plan.created:
            others = await self.active_series(tenant) - int(
                await self.cluster.get(layout.active(escaped, slot)) or 0
            )
        header = msgpack.packb(
            [
                str(token),
                version,
                str(cursor),
                str(new_cursor),
                limit,
                others,
                plan.expired,
                plan.held_change,
                plan.overflow_slots,
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
            layout.cursor(escaped, slot),
            layout.active(escaped, slot),
            layout.overflow(escaped, slot),
            layout.slot_tenants(slot),
        ]
        reply = await self._cluster_fold(
            keys=keys, args=[header, pack(updates), pack(created), pack(overflow)]
        )
        if _text(reply[0]) != "OK":
            return fold_result(plan, None)
        refused = [int(n) for n in reply[1]]
        # Only a commit a replica holds may hand rows on: a commit lost by a failover is folded
        # again from the outbox (left untrimmed), and its refusals delivered once from the new one.
        try:
            await self.replicated(layout.records(escaped, slot))
        except NotReplicatedError:
            return fold_result(plan, refused, int(version) + 1)  # the next fold delivers and trims
        if refused:
            kept = await self.cluster.get(layout.overflow(escaped, slot))
            await self._deliver(escaped, slot, kept.encode() if isinstance(kept, str) else kept)
        await self._trim(
            keys=[self.keys.log(escaped, slot), layout.base(escaped, slot)], args=[str(new_cursor)]
        )
        return fold_result(plan, refused, int(version) + 1)

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
