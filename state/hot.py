"""A slot owner's folded state kept between folds (issue 18): the slot's records as its last
committed fold left them, tied to the slot's version and the owner's fencing token, so the next
fold reads only the log and the version from Redis, and decodes only the records it changes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from state.fold import FoldPlan, Quiet

__all__ = ["HotSlot"]


@dataclass(slots=True)
class HotSlot:
    """The records of one (tenant, slot) as they are in Redis at ``version``, while ``token`` (the
    owner that wrote them) is current; trusted only while Redis still says ``version`` and holds
    as many records (anything else: another writer, lost state, a new owner; then dropped)."""

    token: int
    version: str
    #: digest -> packed record: exactly the slot's hash, but that the record of a quiet series
    #: is not kept (None): a fold reads it from Redis only if rows for it come.
    records: dict[bytes, bytes | None] = field(default_factory=dict)
    #: The series a fold without rows for them emits as they are (see state.fold.Quiet).
    quiet: Quiet = field(default_factory=dict)
    #: The slot's dictionary of attribute parts as of ``version`` (only folds add to it).
    parts: dict[int, bytes] = field(default_factory=dict)

    def missing(self, digests: Iterable[bytes]) -> list[bytes]:
        """Which of these series are held without their record in memory."""
        records = self.records
        return [digest for digest in digests if digest in records and records[digest] is None]

    def read(self, digests: list[bytes], values: list[bytes | None]) -> bool:
        """Records read back from Redis; False (the kept state is wrong) if one is missing."""
        records = self.records
        for digest, value in zip(digests, values, strict=True):
            if value is None:
                return False
            records[digest] = value
        return True

    def matches(self, token: int, version: str, count: int) -> bool:
        """Whether Redis (``version``, ``count`` records) is still what this holds, for ``token``."""
        return self.token == token and self.version == version and len(self.records) == count

    def committed(self, plan: FoldPlan, refused: list[int], version: str) -> None:
        """Apply what fold.lua wrote for ``plan`` (its new series but the ``refused`` ones, 1-based):
        the slot is now at ``version``."""
        records = self.records
        records.update(plan.updates)
        self.parts.update(plan.parts)
        for digest in plan.expired:
            records.pop(digest, None)
        dropped = set(refused)
        for n, new in enumerate(plan.created, start=1):
            if n not in dropped:
                records[new.digest] = new.record
        self.unchanged(plan)
        self.version = version

    def unchanged(self, plan: FoldPlan) -> None:
        """After a fold (committed, or nothing to commit): the records of its quiet series are
        let go."""
        self.quiet = records_quiet = plan.quiet
        records = self.records
        for digest in records_quiet:
            records[digest] = None

    def confirmed(self, records: list[tuple[bytes, bytes]], version: str) -> None:
        """Apply what confirm.lua wrote: ``records`` over those that exist; now at ``version``."""
        held = self.records
        for digest, record in records:
            if digest in held:
                held[digest] = record
                self.quiet.pop(digest, None)
        self.version = version
