"""Folding a slot's delta log into its records (pure, no I/O): every change of one fold, and what
is emitted. A log entry is rows ``[digest, record, flags]`` packed back to back (see state.codec);
a stored record has one more field than a row: ``zero_us`` (see :func:`zero_time_us`)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import add
from typing import Any, cast

import msgpack

from state.codec import PartInterner, exp_from_state, exp_state, meta_fields, pack_meta
from worker.model.extensions import load
from worker.model.series import (
    CONNECTOR_OVERFLOW,
    SERIES_ID_SEPARATOR,
    Attributes,
    Series,
    make_series_id,
    series_digest,
)
from worker.model.values import attribute_parts, stringify_python

__all__ = [
    "ROW_OVERFLOW",
    "FoldPlan",
    "Kept",
    "NewSeries",
    "Quiet",
    "Rows",
    "fold_log",
    "fold_rows",
    "overflow_series_id",
    "pack_row",
    "revive",
    "row",
    "series_slot",
    "slot_of",
    "zero_time_us",
]

#: Row flag: an overflow series' delta, created whatever the tenant's limit says.
ROW_OVERFLOW = 1

_META, _START, _LAST, _COUNT, _SUM, _BUCKETS, _EXP, _EXEMPLARS, _COMPANION, _ZERO = range(10)
_MINUTE_US = 60_000_000
_SECOND_US = 1_000_000
_packb = msgpack.Packer(use_bin_type=True).pack
#: The compiled twins (``state._fold``) of the walk over a slot's held records and of reading a
#: quiet record's series, or None: not built, or ``SPANMETRICS_NO_EXTENSIONS=1``.
_compiled = load("state._fold")
#: Largest stored value (record or meta) a fold reads: far above any real one.
_MAX_BLOB = 64 << 20


def slot_of(digest: bytes, slots: int) -> int:
    """The emission slot of a series: stable across processes, spread evenly."""
    return int.from_bytes(digest[:8], "big") % slots


def series_slot(series_id: str, slots: int) -> int:
    """Slot by resource and attributes, not metric: ``calls`` and ``duration`` of one span
    series share a slot (one read of the slot sees both at one point in time)."""
    _, _, without_metric = series_id.partition("\x1e")
    return slot_of(series_digest(without_metric), slots)


def zero_time_us(start_us: int, now_us: int) -> int:
    """When the zero point of a series first emitted at ``now_us`` goes: Tempo's
    ``getEndOfLastMinuteMs`` (the end of the previous minute, so a downsampler keeping one sample
    a minute keeps it), not before the series' start; 0 (no zero point) when that is not strictly
    before ``now_us`` (a start not before the flush: another worker's clock ahead)."""
    zero = max(start_us, now_us - now_us % _MINUTE_US - _SECOND_US)
    return zero if zero < now_us else 0


def overflow_series_id(metric: str, resource_id: str, attributes: Attributes = CONNECTOR_OVERFLOW) -> str:
    """The id of the series that absorbs a tenant's new series past its active-series limit."""
    # Spelled as the processors spell series ids (a bool as "true"), so the ids are unchanged.
    body = SERIES_ID_SEPARATOR.join(
        f"{key}={value if isinstance(value, str) else stringify_python(value)}" for key, value in attributes
    )
    return make_series_id(metric, resource_id, body)


def row(digest: bytes, record: Sequence[Any], flags: int = 0) -> list[Any]:
    """A log row, as packed into a slot's log entry (see the module docstring)."""
    return [digest, record, flags]


def pack_row(digest: bytes, record: Sequence[Any], flags: int = 0) -> bytes:
    return cast(bytes, _packb(row(digest, record, flags)))


#: A quiet series as kept between folds: ``(last_us, metric, resource_id, attributes, start_ns,
#: count, sum, buckets, exp, attribute_parts, companion)``, buckets and parts as tuples. A tuple
#: of immutable values, which the garbage collector stops scanning (a million kept ``Series``
#: objects and their lists made each full collection last about a second); :func:`revive`
#: makes the series back.
Kept = tuple[Any, ...]
#: digest -> the held records that a fold with no rows for them emits exactly as they are (no
#: zero point owed, no exemplars, CUMULATIVE), kept (:data:`Kept`), so that a fold that is given
#: them (``quiet=``) needs neither to read nor to decode their records.
Quiet = dict[bytes, Kept]
#: Rows of a log added up per series: digest -> (delta, flags); and how many rows there were.
Rows = tuple[dict[bytes, tuple[list[Any], int]], int]


@dataclass(slots=True)
class NewSeries:
    """A series the log brings that the slot does not hold yet."""

    digest: bytes
    record: bytes
    #: Index into :attr:`FoldPlan.overflow_slots` of where the series goes if the limit refuses
    #: it, or -1 when it is itself an overflow series (never refused) or no limit applies.
    overflow_target: int
    #: The row to append to that slot's log instead (the same delta under the overflow series).
    overflow_row: bytes
    #: Position in :attr:`FoldPlan.live` (-1: not emitted, e.g. a zero DELTA).
    live_index: int
    #: Active series it is for the tenant's limit (one label set: 1; see ``_weight``).
    weight: int = 1


@dataclass(slots=True)
class FoldPlan:
    """What one fold changes, and what the owner emits once the change is committed."""

    #: (digest, packed record) of held series whose record changed.
    updates: list[tuple[bytes, bytes]] = field(default_factory=list)
    created: list[NewSeries] = field(default_factory=list)
    expired: list[bytes] = field(default_factory=list)
    #: Slots whose logs receive refused new series (indexes of NewSeries.overflow_target).
    overflow_slots: list[int] = field(default_factory=list)
    #: Series to emit, in slot order (a series with a companion is written out as two by the
    #: encoder); a refused new series is removed by the store.
    live: list[Series] = field(default_factory=list)
    #: The record each series of ``live`` comes from.
    live_digests: list[bytes] = field(default_factory=list)
    #: Positions in ``live`` of series without a companion: where counters stored on their own
    #: by earlier versions can be (see :func:`_drop_superseded_counters`).
    plain: list[int] = field(default_factory=list)
    #: How the tenant's active-series count changes through held records: expired ones leave.
    held_change: int = 0
    #: Log rows folded (a diagnostic: several rows of one series add up before the fold).
    rows: int = 0
    #: (digest, record without its zero point) of each emitted series that owes one: what the
    #: owner writes once this publication is confirmed (``confirm_zero``), over records that
    #: still exist only (a refused, expired or superseded one is not brought back).
    zero_owed: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: The quiet series of this fold's outcome (see :data:`Quiet`), collected when the fold was
    #: given ``quiet`` (a refused, expired or superseded one is the caller's to leave out).
    quiet: Quiet = field(default_factory=dict)
    #: id -> attribute part: what this fold adds to the slot's dictionary of parts (when it was
    #: given one), for the metas of its new records; committed with them.
    parts: dict[int, bytes] = field(default_factory=dict)


def _iter_rows(log: Iterable[bytes]) -> Iterable[list[Any]]:
    for entry in log:
        unpacker = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=max(len(entry), 1 << 20))
        unpacker.feed(entry)
        yield from unpacker


def fold_rows(log: Iterable[bytes], max_exemplars: int, exp_max_size: int) -> Rows:
    """The rows of ``log`` added up per series (every row of one series adds up into one delta
    before it meets the record), and how many rows there were."""
    deltas: dict[bytes, tuple[list[Any], int]] = {}
    rows = 0
    for digest, delta, flags in _iter_rows(log):
        rows += 1
        found = deltas.get(digest)
        if found is None:
            deltas[digest] = (delta, flags)
        else:
            _add(found[0], delta, max_exemplars, exp_max_size)
    return deltas, rows


def _add(record: list[Any], delta: Sequence[Any], max_exemplars: int, exp_max_size: int) -> None:
    """Add a delta into a record in place (the Python twin of ``worker.model.series.merge_series``)."""
    if delta[_LAST] > record[_LAST]:
        record[_LAST] = delta[_LAST]
    record[_COUNT] += delta[_COUNT]
    record[_SUM] += delta[_SUM]
    added = delta[_BUCKETS]
    if added:
        buckets = record[_BUCKETS]
        if len(buckets) != len(added):
            # The bucket layout changed (reconfigured bounds): restart from the delta.
            record[_BUCKETS] = list(added)
        else:
            record[_BUCKETS] = list(map(add, buckets, added))
    if delta[_EXP]:
        if record[_EXP]:
            merged = exp_from_state(record[_EXP], exp_max_size)
            merged.merge(exp_from_state(delta[_EXP], exp_max_size))
            record[_EXP] = exp_state(merged)
        else:
            record[_EXP] = list(delta[_EXP])
    exemplars = delta[_EXEMPLARS]
    if exemplars:
        kept = record[_EXEMPLARS]
        room = max_exemplars - len(kept)
        if room > 0:
            record[_EXEMPLARS] = [*kept, *exemplars[:room]]
    if len(delta) > _COMPANION:
        # The latest writer's configuration decides; rows of earlier versions keep the record's.
        if len(record) > _COMPANION:
            record[_COMPANION] = delta[_COMPANION]
        else:
            record.append(delta[_COMPANION])


def _reset(record: list[Any], delta_mode: bool, emitted_us: int) -> bool:
    """Forget what the previous, confirmed emission published: its exemplars, its zero point
    (the series was in that publication: every held record is emitted at every fold but a
    DELTA one at 0, which owes none), and for DELTA its values. Returns whether the record
    changed."""
    changed = False
    if record[_ZERO]:
        record[_ZERO] = 0
        changed = True
    if record[_EXEMPLARS]:
        record[_EXEMPLARS] = []
        changed = True
    if delta_mode and (record[_COUNT] or record[_START] != emitted_us):
        record[_START] = emitted_us
        record[_COUNT] = 0
        record[_SUM] = 0.0
        if record[_BUCKETS]:
            record[_BUCKETS] = [0] * len(record[_BUCKETS])
        record[_EXP] = []
        changed = True
    return changed


#: Companion names as stored (bytes) -> as emitted: a handful of distinct values.
_COMPANION_NAMES: dict[bytes, str | None] = {b"": None}


def _companion_name(raw: bytes) -> str | None:
    name = _COMPANION_NAMES.get(raw)
    if name is None and raw:
        name = _COMPANION_NAMES[raw] = bytes(raw).decode("utf-8", "surrogateescape")
    return name


def _complete(record: list[Any]) -> list[Any]:
    """A record (or row) of an earlier version gains the fields added since: no companion, and
    no zero point owed (a stored one was emitted by that version already)."""
    if len(record) <= _COMPANION:
        record.append(b"")
    if len(record) <= _ZERO:
        record.append(0)
    return record


def _weight(record: Sequence[Any]) -> int:
    """Active series a record is for the tenant's limit: one label set, so one, also when it
    stands for its companion counter (``calls`` and ``duration`` of one dimension set are kept
    or overflow together; README, "max_active_series_per_tenant"). Earlier versions counted 2."""
    return 1


def _reader(*, raw: bool) -> Callable[[bytes], Any]:
    """Read one msgpack object per blob through a single, reused Unpacker (``unpackb`` per
    blob was most of a fold's cost); a blob holding more than one object is an error."""
    unpacker = msgpack.Unpacker(raw=raw, strict_map_key=False, max_buffer_size=_MAX_BLOB)
    feed, unpack, tell = unpacker.feed, unpacker.unpack, unpacker.tell
    consumed = 0

    def read(blob: bytes) -> Any:
        nonlocal consumed
        feed(blob)
        consumed += len(blob)
        value = unpack()
        if tell() != consumed:
            raise ValueError(f"a stored value holds {consumed - tell()} bytes after its msgpack object")
        return value

    return read


def _series(
    record: Sequence[Any],
    exp_max_size: int,
    read_meta: Callable[[bytes], Any],
    dictionary: Mapping[int, bytes] | None = None,
) -> Series:
    """The series to emit (hot: positional arguments; integral doubles written by earlier Lua
    scripts become ints, as the encoder's fixed-width fields need). ``dictionary``: the slot's
    attribute parts, which interned metas refer to."""
    meta, start, last, count, total, buckets, exp, exemplars, companion, zero = record
    metric, resource_id, attributes, parts = meta_fields(read_meta(meta), dictionary)
    return Series(
        "",
        metric,
        resource_id,
        attributes,
        (start if type(start) is int else int(start)) * 1000,
        (last if type(last) is int else int(last)) * 1000,
        count if type(count) is int else int(count),
        total if type(total) is float else float(total),
        # (the sum of the counts is a float exactly when one of them is)
        (buckets if type(sum(buckets)) is int else list(map(int, buckets))) if buckets else None,
        exp_from_state(exp, exp_max_size) if exp else None,
        [(bytes(t), bytes(s), float(v), int(ts) * 1000) for t, s, v, ts in exemplars] if exemplars else [],
        parts,
        _companion_name(companion),
        (zero if type(zero) is int else int(zero)) * 1000,
    )


def _emit(plan: FoldPlan, digest: bytes, series: Series, record: list[Any]) -> int:
    """Add a record's series to what is emitted; its position there."""
    if record[_ZERO]:
        plan.zero_owed.append((digest, _packb([*record[:_ZERO], 0, *record[_ZERO + 1 :]])))
    if series.companion is None:
        plan.plain.append(len(plan.live))
    plan.live.append(series)
    plan.live_digests.append(digest)
    return len(plan.live) - 1


def _emit_quiet(plan: FoldPlan, digest: bytes, series: Series) -> None:
    """:func:`_emit` of a quiet series (it owes no zero point)."""
    if series.companion is None:
        plan.plain.append(len(plan.live))
    plan.live.append(series)
    plan.live_digests.append(digest)


def _is_quiet(record: list[Any]) -> bool:
    """Whether a fold without rows for this record would emit it as it is: no zero point owed
    and no exemplars (nothing a reset forgets), a last-seen time as stored by merges (an int)."""
    return not record[_ZERO] and not record[_EXEMPLARS] and type(record[_LAST]) is int


#: Entries of the tables of shared attribute parts and bucket counts (each cleared when full).
_SHARED_PARTS = 1 << 16
_shared_parts: dict[bytes, bytes] = {}
_SHARED_BUCKETS = 1 << 14
_shared_buckets: dict[tuple[int, ...], tuple[int, ...]] = {}


def _keep(series: Series) -> Kept:
    """A quiet series as kept between folds, small: its names, the attribute parts it has in
    common with others (service, operation, status...) and its bucket counts when others have
    the same are one shared object each."""
    buckets = series.buckets
    kept_buckets = None
    if buckets is not None:
        key = tuple(buckets)
        kept_buckets = _shared_buckets.get(key)
        if kept_buckets is None:
            if len(_shared_buckets) >= _SHARED_BUCKETS:
                _shared_buckets.clear()
            kept_buckets = _shared_buckets[key] = key
    parts = series.attribute_parts
    kept_parts = None
    if parts is not None:
        shared = _shared_parts
        if len(shared) >= _SHARED_PARTS:
            shared.clear()
        kept_parts = tuple([shared.setdefault(part, part) for part in parts])
    return (
        series.last_ns // 1000,
        sys.intern(series.metric),
        sys.intern(series.resource_id),
        series.attributes,
        series.start_ns,
        series.count,
        series.sum,
        kept_buckets,
        series.exp,
        kept_parts,
        series.companion,
    )


def revive(kept: Kept) -> Series:
    """The series a kept quiet series stands for: what decoding its record gives."""
    last_us, metric, resource_id, attributes, start_ns, count, total, buckets, exp, parts, companion = kept
    return Series(
        "",
        metric,
        resource_id,
        attributes,
        start_ns,
        last_us * 1000,
        count,
        total,
        None if buckets is None else list(buckets),
        exp,
        [],
        None if parts is None else list(parts),
        companion,
        0,
    )


def _overflow(
    metric: str, resource_id: str, slots: int, targets: list[int], attributes: Attributes
) -> tuple[int, bytes, bytes]:
    """Where the overflow series of (metric, resource) lives: its index in ``targets`` (the slots
    receiving overflow rows, appended to when new), its digest and its packed meta."""
    overflow_id = overflow_series_id(metric, resource_id, attributes)
    slot = series_slot(overflow_id, slots)
    if slot not in targets:
        targets.append(slot)
    meta = pack_meta(metric, resource_id, attributes)
    return targets.index(slot), series_digest(overflow_id), meta


def _overflow_first(item: tuple[bytes, tuple[list[Any], int]]) -> bool:
    """Sort key (stable): the overflow series' rows before the others."""
    return not item[1][1] & ROW_OVERFLOW


def _already(meta: list[Any]) -> Callable[[bytes], Any]:
    """A meta reader that gives the meta already unpacked."""
    return lambda _blob: meta


def _interner(
    parts: Mapping[int, bytes],
    deltas: Mapping[bytes, tuple[list[Any], int]],
    read_meta: Callable[[bytes], Any],
) -> tuple[PartInterner, dict[bytes, list[Any]]]:
    """What interns the parts of the new records' metas: those the slot's dictionary holds, and
    those two or more of them share (a part of one series only stays inline); and their metas,
    unpacked (digest -> meta)."""
    metas: dict[bytes, list[Any]] = {}
    every: list[Any] = []
    for digest, (record, _) in deltas.items():
        meta = metas[digest] = read_meta(record[_META])
        every += meta[2]
    try:
        counts = Counter(every)
    except TypeError:  # typed [key, value] pairs of an earlier version among them
        counts = Counter(part for part in every if type(part) is bytes)
    # Most used first, then in byte order: the same ids whatever order the rows came in.
    shared = sorted((part for part, count in counts.items() if count > 1), key=lambda p: (-counts[p], p))
    return PartInterner(parts, shared), metas


def _attribute_key(series: Series) -> tuple[bytes, ...]:
    parts = series.attribute_parts
    return tuple(parts if parts is not None else attribute_parts(series.attributes))


def _drop_superseded_counters(plan: FoldPlan, held: Mapping[bytes, bytes | None]) -> None:
    """Drop ``calls`` records (and rows) of earlier versions that a ``duration`` record with
    that companion now stands for: they would emit a second, frozen copy of the counter."""
    if not plan.plain or len(plan.plain) == len(plan.live):
        return
    names = {series.companion for series in plan.live if series.companion is not None}
    candidates = [index for index in plan.plain if plan.live[index].metric in names]
    if not candidates:
        return
    paired = {
        (series.companion, series.resource_id, _attribute_key(series))
        for series in plan.live
        if series.companion is not None
    }
    superseded = {
        plan.live_digests[index]
        for index in candidates
        if (plan.live[index].metric, plan.live[index].resource_id, _attribute_key(plan.live[index])) in paired
    }
    if not superseded:
        return
    plan.updates = [(digest, record) for digest, record in plan.updates if digest not in superseded]
    expiring = set(plan.expired)
    for digest in sorted(superseded):
        if digest not in held or digest in expiring:
            continue  # a row only: it is not created; or it expires anyway
        plan.expired.append(digest)
        plan.held_change -= 1
    kept = [index for index, digest in enumerate(plan.live_digests) if digest not in superseded]
    moved = {old: new for new, old in enumerate(kept)}
    plan.live = [plan.live[index] for index in kept]
    plan.live_digests = [plan.live_digests[index] for index in kept]
    plan.plain = [moved[index] for index in plan.plain if index in moved]
    created = []
    for new in plan.created:
        if new.digest not in superseded:
            new.live_index = moved.get(new.live_index, -1)
            created.append(new)
    plan.created = created


def _walk_held(
    stored: Mapping[bytes, bytes | None],
    deltas: dict[bytes, tuple[list[Any], int]],
    known: Mapping[bytes, Kept],
    expire_before_us: int,
    resource_expire_before_us: int,
    resource_seen: Mapping[str, int],
    plan: FoldPlan,
    other: Callable[[bytes, bytes | None, tuple[list[Any], int] | None], None],
) -> None:
    """:func:`fold_log`'s walk over the held records, in slot order: a quiet series without rows
    (in ``known``) is expired, or emitted as kept without reading its record; any other record
    goes to ``other`` (digest, stored blob, its rows or None), and its rows leave ``deltas``.
    The reference of the compiled ``state._fold.walk_held``, which runs this for every series of
    a slot at every flush."""
    found_quiet = plan.quiet
    for digest, blob in stored.items():
        digest = bytes(digest)
        pending = deltas.pop(digest, None)
        if pending is None and known:
            kept = known.get(digest)
            if kept is not None:
                # As the record would go, without decoding it: its reset changes nothing.
                last_us = kept[0]
                if expire_before_us and last_us < expire_before_us:
                    plan.expired.append(digest)
                    plan.held_change -= 1  # _weight
                    continue
                if (
                    resource_expire_before_us
                    and max(resource_seen.get(kept[2], 0), last_us) < resource_expire_before_us
                ):
                    _emit_quiet(plan, digest, revive(kept))
                    plan.expired.append(digest)
                    plan.held_change -= 1  # _weight
                    continue
                _emit_quiet(plan, digest, revive(kept))
                found_quiet[digest] = kept
                continue
        other(digest, blob, pending)


def fold_log(
    stored: Mapping[bytes, bytes | None],
    log: Sequence[bytes],
    *,
    slots: int,
    max_exemplars: int,
    exp_max_size: int,
    limit: int,
    delta_mode: bool,
    expire_before_us: int = 0,
    reset_emitted_us: int | None = None,
    now_us: int = 0,
    resource_expire_before_us: int = 0,
    resource_seen_us: Mapping[str, int] | None = None,
    overflow_attributes: Attributes = CONNECTOR_OVERFLOW,
    quiet: Mapping[bytes, Kept] | None = None,
    rows: Rows | None = None,
    parts: Mapping[int, bytes] | None = None,
) -> FoldPlan:
    """Fold ``log`` (entries of packed rows) into the slot's ``stored`` records.
    ``reset_emitted_us``: this owner's previous, confirmed emission of the slot (None: none).
    ``now_us``: the emission's time; a new CUMULATIVE series owes a zero point (0: none).
    ``expire_before_us``: a held series without rows last seen before it is dropped (series
    expiration). ``resource_expire_before_us``: a held series without rows whose resource was
    last seen before it (``resource_seen_us``, by resource id; a resource missing there counts
    as last seen when the series was) is emitted one last time and dropped (metrics
    expiration). ``quiet``: the quiet series (:data:`Quiet`) of the previous fold's outcome,
    which ``stored`` holds unchanged since (CUMULATIVE only; ignored for DELTA); given (even
    empty), the plan collects those of this fold's outcome in :attr:`FoldPlan.quiet`. The plan
    is the same with or without them; ``stored`` need not hold the records of the quiet series
    without rows (None). ``rows``: the log's rows as :func:`fold_rows` added them up (then
    ``log`` is not read). ``parts``: the slot's dictionary of attribute parts (id -> part), which
    stored metas may refer to; given (even empty), the metas of new records intern the parts
    that the dictionary holds or that several of them share (new ids in :attr:`FoldPlan.parts`);
    None: stored metas hold their parts inline and new ones are written so."""
    plan = FoldPlan()
    deltas, plan.rows = rows if rows is not None else fold_rows(log, max_exemplars, exp_max_size)

    # The loop below runs for every series of the slot at every flush: names are locals.
    read_record, read_meta = _reader(raw=True), _reader(raw=False)
    packb, series_of, updates = _packb, _series, plan.updates
    resource_seen = resource_seen_us or {}
    collect = quiet is not None and not delta_mode
    known: Mapping[bytes, Kept] = quiet if collect and quiet is not None else {}
    keep = _keep if collect else None
    found_quiet = plan.quiet

    # The compiled reading of a quiet record's series (no list, no meta object), or None.
    quick = None if _compiled is None or delta_mode else _compiled.quiet_series

    def other(digest: bytes, blob: bytes | None, pending: tuple[list[Any], int] | None) -> None:
        """A held record that is not a quiet one without rows: decoded, reset, its rows added."""
        if blob is None:
            raise ValueError("a record the fold needs was not read")
        if pending is None and quick is not None:
            # A quiet record (see _is_quiet) goes below as read here: nothing to reset, no
            # update, no zero point owed, weight 1. None: read it in Python as any other.
            quiet_series = quick(blob, parts, _companion_name)
            if quiet_series is not None:
                last_us = quiet_series.last_ns // 1000
                if expire_before_us and last_us < expire_before_us:
                    plan.expired.append(digest)
                    plan.held_change -= 1
                    return
                if resource_expire_before_us and (
                    max(resource_seen.get(quiet_series.resource_id, 0), last_us) < resource_expire_before_us
                ):
                    _emit_quiet(plan, digest, quiet_series)
                    plan.expired.append(digest)
                    plan.held_change -= 1
                    return
                _emit_quiet(plan, digest, quiet_series)
                if keep is not None:
                    found_quiet[digest] = keep(quiet_series)
                return
        record = _complete(read_record(blob))
        changed = reset_emitted_us is not None and _reset(record, delta_mode, reset_emitted_us)
        if pending is not None:
            delta = pending[0]
            # Gaining or losing its companion leaves its weight as it is (see _weight).
            _add(record, delta, max_exemplars, exp_max_size)
            changed = True
        elif expire_before_us and record[_LAST] < expire_before_us:
            plan.expired.append(digest)
            plan.held_change -= _weight(record)
            return
        elif resource_expire_before_us:
            series = series_of(record, exp_max_size, read_meta, parts)
            # A resource's last-seen time is at least each of its series' (merges write both).
            seen = resource_seen.get(series.resource_id, 0)
            if max(seen, record[_LAST]) < resource_expire_before_us:
                # Exported one last time, then dropped, as the connector does with a stale resource.
                if not (delta_mode and record[_COUNT] == 0):
                    _emit(plan, digest, series, record)
                plan.expired.append(digest)
                plan.held_change -= _weight(record)
                return
            if changed:
                updates.append((digest, packb(record)))
            if not (delta_mode and record[_COUNT] == 0):
                _emit(plan, digest, series, record)
                if keep is not None and _is_quiet(record):
                    found_quiet[digest] = keep(series)
            return
        if changed:
            updates.append((digest, packb(record)))
        if not (delta_mode and record[_COUNT] == 0):
            series = series_of(record, exp_max_size, read_meta, parts)
            _emit(plan, digest, series, record)
            if keep is not None and _is_quiet(record):
                found_quiet[digest] = keep(series)

    walk = _walk_held if _compiled is None else _compiled.walk_held
    walk(stored, deltas, known, expire_before_us, resource_expire_before_us, resource_seen, plan, other)

    # (metric, resource id) -> (index into overflow_slots, overflow digest, overflow meta)
    overflows: dict[tuple[str, str], tuple[int, bytes, bytes]] = {}
    interner, metas = _interner(parts, deltas, read_meta) if parts is not None and deltas else (None, {})
    # New series meet the tenant's limit in the order their rows came, but the overflow series
    # (never refused) first: where refused rows sit among the others depends on the layout (one
    # node appends them to the slot's log, a cluster pulls them from the slot's own outbox).
    for digest, (record, flags) in sorted(deltas.items(), key=_overflow_first):
        _complete(record)
        # A new series owes its zero point until a publication of it is confirmed, at the time
        # pinned now: sent again, it is the same sample (see docs/internals.md).
        record[_ZERO] = zero_time_us(int(record[_START]), now_us) if now_us and not delta_mode else 0
        if len(record[_EXEMPLARS]) > max_exemplars:
            record[_EXEMPLARS] = record[_EXEMPLARS][:max_exemplars]
        if interner is None:
            series = _series(record, exp_max_size, read_meta)
        else:
            meta = metas.pop(digest)
            series = _series(record, exp_max_size, _already(meta))
            record[_META] = interner.meta(meta) or record[_META]
        target, overflow_row = -1, b""
        if limit and not flags & ROW_OVERFLOW:
            overflow = overflows.get((series.metric, series.resource_id))
            if overflow is None:
                overflow = overflows[series.metric, series.resource_id] = _overflow(
                    series.metric, series.resource_id, slots, plan.overflow_slots, overflow_attributes
                )
            target = overflow[0]
            overflow_row = pack_row(overflow[1], [overflow[2], *record[1:_ZERO]], ROW_OVERFLOW)
        live_index = -1 if delta_mode and record[_COUNT] == 0 else _emit(plan, digest, series, record)
        plan.created.append(
            NewSeries(digest, _packb(record), target, overflow_row, live_index, _weight(record))
        )
    if interner is not None:
        plan.parts = interner.added
    _drop_superseded_counters(plan, stored)
    for digest in plan.expired if collect else ():
        found_quiet.pop(digest, None)
    return plan
