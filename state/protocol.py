"""The SeriesStore protocol the stream worker drives, and the types both stores share."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from state.codec import attributes_of_parts
from state.fold import FoldPlan
from worker.model.errors import StateError
from worker.model.series import Attributes, Series, TenantDeltas, emitted_count, with_companions

__all__ = [
    "FencedError",
    "FoldResult",
    "Ownership",
    "Sequences",
    "SeriesStore",
    "StateBehindError",
    "StoredSeries",
    "fold_result",
    "stored_series",
]


class FencedError(StateError):
    """Another worker owns the partition now; this worker's deltas for it must be dropped."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition} is owned by another worker (fencing token changed)")
        self.partition = partition


class StateBehindError(FencedError):
    """Redis holds less of the partition than this writer saw applied: the state went back (a
    failover to a replica that was behind). Nothing was written; the worker's state check recovers."""

    def __init__(self, partition: int) -> None:
        StateError.__init__(
            self,
            f"partition {partition}: Redis holds less than this worker saw applied (the state went back)",
        )
        self.partition = partition


@dataclass(frozen=True, slots=True)
class Ownership:
    """The store's generation marker, fencing tokens and applied offsets, read at one point in time."""

    #: None: the marker is missing (the state was lost, or never created).
    generation: str | None
    #: partition -> current fencing token (absent: none).
    tokens: dict[int, int]
    #: partition -> next offset to apply (absent: nothing applied).
    applied: dict[int, int]


class Sequences:
    """A store's numbering of merges made without an explicit sequence: strictly increasing,
    except that a call with the same content as the one before is taken for its retry."""

    def __init__(self) -> None:
        self.last = 0
        self._previous: tuple[bytes, int] | None = None

    def number(self, digest: bytes) -> int:
        """The sequence of a merge whose content has this digest."""
        if self._previous is not None and self._previous[0] == digest:
            return self._previous[1]
        self.last += 1
        self._previous = (digest, self.last)
        return self.last

    def saw(self, sequence: int) -> None:
        """A merge numbered by its caller: numbers given later stay above it."""
        self.last = max(self.last, sequence)
        self._previous = None


@dataclass(slots=True)
class StoredSeries:
    """A series as stored (record plus unfolded log rows), with its record's digest."""

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
    #: The slot's version once this fold is committed, and the records to write once its
    #: publication is confirmed (:meth:`SeriesStore.confirm_zero`): emitted series owing a zero
    #: point, without it.
    version: int = 0
    zero_owed: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def emitted(self) -> int:
        """How many series ``live`` publishes."""
        return emitted_count(self.live)


def fold_result(plan: FoldPlan, refused: list[int] | None, version: int = 0) -> FoldResult:
    """The outcome of committing ``plan``: ``refused`` holds the 1-based positions of the new
    series the limit refused (as fold.lua returns them), None when the token was stale;
    ``version``: the slot's version after the commit."""
    if refused is None:
        return FoldResult(committed=False)
    live = plan.live
    if refused:
        dropped = {plan.created[n - 1].live_index for n in refused}
        live = [series for index, series in enumerate(live) if index not in dropped]
    return FoldResult(
        committed=True,
        live=live,
        overflowed=len(refused),
        expired=len(plan.expired),
        version=version,
        zero_owed=plan.zero_owed,
    )


def stored_series(plan: FoldPlan) -> list[StoredSeries]:
    """``read_slot``'s answer from a read-only plan: typed attributes, companions written out."""
    result: list[StoredSeries] = []
    for digest, series in zip(plan.live_digests, plan.live, strict=True):
        if series.attribute_parts is not None:
            series.attributes = attributes_of_parts(series.attribute_parts)
        result.extend(StoredSeries(digest, one) for one in with_companions([series]))
    return result


class SeriesStore(Protocol):
    """Cumulative series of one input topic: fenced merges of deltas with their offsets, and
    folds of a slot's delta log by its owner (see DESIGN.md, invariants 1, 2, 7)."""

    slots: int

    async def check_layout(self) -> None:
        """Refuse state written for another slot count."""

    async def claim(self, partitions: Iterable[int]) -> dict[int, int]:
        """A new fencing token per partition, which stales every older owner."""

    async def owns(self, tokens: Mapping[int, int]) -> set[int]:
        """The partitions among ``tokens`` whose token is still current."""

    async def applied_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """Next offset to apply per partition (absent: nothing applied yet)."""

    async def generation(self, candidate: str) -> str:
        """The store's generation marker: created as ``candidate`` when missing (and then every
        partition without a token gets one above any handed out before), else the one stored."""

    async def ownership(self, partitions: Iterable[int]) -> Ownership:
        """The generation marker, these partitions' tokens and applied offsets, in one round trip."""

    async def merge(
        self,
        deltas: Mapping[str, TenantDeltas],
        fences: Mapping[int, tuple[int, int]],
        pending: Mapping[int, bytes] | None = None,
        *,
        sequence: int | None = None,
        applied: Mapping[int, int] | None = None,
    ) -> bool:
        """Append the deltas to their slots' logs and advance the fenced partitions' offsets in
        one step; FencedError on a stale token. Applied (True) only if ``sequence`` (strictly
        increasing per writer and token, the same for a retry) is above what every fenced
        partition has applied; else nothing changes (False). Without ``sequence`` the store
        numbers its calls, a call repeating the previous one being its retry. ``applied``: the
        offsets this writer saw applied per partition; StateBehindError (nothing written) where
        the store holds less."""

    async def read_pending(self, partitions: Iterable[int]) -> dict[int, bytes]:
        """The service-graph half-edges saved with each partition's offsets."""

    async def tenants(self) -> list[str]: ...

    async def resources(self, tenant: str) -> dict[str, Attributes]: ...

    async def active_series(self, tenant: str) -> int: ...

    async def resource_seen(self, tenant: str) -> dict[str, int]:
        """Resource id -> when a span of it was last seen (ns): the largest ``last_ns`` of its
        series any merge carried (a missing resource: none since it was forgotten)."""

    async def forget_resources(self, tenant: str, resource_ids: Iterable[str], before_ns: int) -> int:
        """Remove the named resources from the last-seen times if still last seen before
        ``before_ns`` (those ``metrics_expiration`` dropped); how many were removed."""

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
        """Fold the slot's log into its records and commit that as the slot's owner, if the slot
        is still as read (a compare-and-set on its version); else not committed. ``now_ns``:
        the emission's time (new CUMULATIVE series owe a zero point; 0: none). Held series
        without new rows expire when last seen before ``expire_before_ns`` (not emitted), or
        when their resource was last seen (``resource_seen_ns``) before
        ``resource_expire_before_ns`` (emitted one last time); 0: never."""

    async def confirm_zero(
        self, tenant: str, slot: int, token: int, version: int, records: list[tuple[bytes, bytes]]
    ) -> bool:
        """After a confirmed publication of a fold (at slot ``version``, committed with
        ``token``): write ``records`` (its ``zero_owed``) over those that still exist, if the
        token is current and the slot still at that version (bumping it); else nothing."""

    async def read_slot(self, tenant: str, slot: int) -> list[StoredSeries]:
        """Every series of the slot with its cumulative value; read only."""

    def hold(self, slots: Collection[int]) -> None:
        """What the store keeps in memory of folded slots (to fold them again without reading
        every record), it keeps for these slots only: the ones its owner folds now."""
