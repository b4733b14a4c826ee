"""The owner's folded state kept between folds (state.hot) against the pure fold over every record:
over random sequences of merges, folds (idle or not, expiries, exemplars, DELTA, zero points, the
series limit), confirmations and a cache dropped mid-way, a fold over the kept records and quiet
series plans exactly what the fold over the slot's records plans, and the kept records stay the
slot's records; and with the slot's dictionary of attribute parts (interned metas), the same
series are emitted as by a slot whose records hold their parts inline."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from state.codec import delta_payload, encode_meta
from state.fold import FoldPlan, fold_log, fold_rows, pack_row, revive
from state.hot import HotSlot
from worker.model.series import Series

US = 1_000
NOW_US = 1_800_000_000_000_000
SLOTS = 4
RESOURCES = ("r1", "r2")


def _series(index: int, count: int, last_us: int, exemplar: bool) -> Series:
    name = f"op{index}"
    # Even indexes: a duration histogram standing for its calls counter; odd: a plain counter.
    histogram = index % 2 == 0
    return Series(
        series_id=f"{'duration' if histogram else 'calls'}\x1e{RESOURCES[index % 2]}\x1e{name}",
        metric="duration" if histogram else "calls",
        resource_id=RESOURCES[(index // 2) % 2],
        attributes=(("span.name", name), ("http.status_code", 200)),
        start_ns=NOW_US * US,
        last_ns=last_us * US,
        count=count,
        sum=count * 2.5,
        buckets=[count, 0, 1] if histogram else None,
        exemplars=[(b"t" * 16, b"s" * 8, 1.5, last_us * US)] if exemplar else [],
        companion="calls" if histogram else None,
    )


def _row(series: Series) -> bytes:
    return pack_row(series.digest, delta_payload(series, encode_meta(series)))


_rows = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 3), st.integers(0, 40), st.booleans()), min_size=1, max_size=6
)
_fold = st.fixed_dictionaries(
    {
        "expire": st.sampled_from([0, 10, 30]),
        "resource_expire": st.sampled_from([0, 15, 35]),
        "r1_seen": st.integers(0, 40),
        "reset": st.booleans(),
        "now": st.booleans(),
        "limit": st.sampled_from([0, 3, 6]),
    }
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("rows"), _rows),
        st.tuples(st.just("fold"), _fold),
        st.tuples(st.just("confirm"), st.just(None)),
        st.tuples(st.just("drop"), st.just(None)),
    ),
    max_size=25,
)


def _plan_fields(plan: FoldPlan) -> dict[str, Any]:
    return {f.name: getattr(plan, f.name) for f in fields(plan) if f.name != "quiet"}


class _Slot:
    """The slot as Redis holds it, with fold.lua's and confirm.lua's writes in Python."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}
        self.log: list[bytes] = []
        self.version = 0
        self.active = 0
        self.parts: dict[int, bytes] = {}

    def commit(self, plan: FoldPlan, limit: int) -> list[int]:
        assert not plan.parts.keys() & self.parts.keys()  # fold.lua's check: new ids only
        self.version += 1
        self.parts.update(plan.parts)
        self.records.update(plan.updates)
        for digest in plan.expired:
            self.records.pop(digest, None)
        self.active = max(self.active + plan.held_change, 0)
        refused, overflow_rows = [], []
        for n, new in enumerate(plan.created, start=1):
            if new.overflow_target < 0 or limit == 0 or self.active + new.weight <= limit:
                self.records[new.digest] = new.record
                self.active += new.weight
            else:
                refused.append(n)
                overflow_rows.append(new.overflow_row)
        self.log = [b"".join(overflow_rows)] if overflow_rows else []  # (every slot is this one)
        return refused

    def confirm(self, records: list[tuple[bytes, bytes]]) -> None:
        self.version += 1
        for digest, record in records:
            if digest in self.records:
                self.records[digest] = record


@settings(max_examples=150, deadline=None)
@given(delta_mode=st.booleans(), steps=_steps)
def test_a_fold_over_the_kept_state_plans_what_the_fold_over_every_record_plans(
    delta_mode: bool, steps: list[tuple[str, Any]]
) -> None:
    slot = _Slot()
    inline = _Slot()  # the same slot, folded without a dictionary of parts
    hot: HotSlot | None = None
    clock = 0
    published: int | None = None
    zero_owed: list[tuple[bytes, bytes]] = []
    inline_zero_owed: list[tuple[bytes, bytes]] = []
    for kind, arguments in steps:
        if kind == "rows":
            entry = b"".join(
                _row(_series(index, count, NOW_US + offset * 1_000_000, exemplar))
                for index, count, offset, exemplar in arguments
            )
            slot.log.append(entry)
            inline.log.append(entry)
        elif kind == "drop":
            hot = None
        elif kind == "confirm":
            if zero_owed:
                slot.confirm(zero_owed)
                inline.confirm(inline_zero_owed)
                if hot is not None:
                    hot.confirmed(zero_owed, str(slot.version))
            zero_owed = inline_zero_owed = []
        else:
            clock += 5
            now_us = NOW_US + clock * 1_000_000
            options: dict[str, Any] = {
                "slots": SLOTS,
                "max_exemplars": 2,
                "exp_max_size": 20,
                "limit": arguments["limit"],
                "delta_mode": delta_mode,
                "expire_before_us": NOW_US + arguments["expire"] * 1_000_000 if arguments["expire"] else 0,
                "reset_emitted_us": published if arguments["reset"] else None,
                "now_us": now_us if arguments["now"] else 0,
                "resource_expire_before_us": NOW_US + arguments["resource_expire"] * 1_000_000
                if arguments["resource_expire"]
                else 0,
                "resource_seen_us": {"r1": NOW_US + arguments["r1_seen"] * 1_000_000},
            }
            if hot is None or not hot.matches(1, str(slot.version), len(slot.records)):
                hot = HotSlot(1, str(slot.version), dict(slot.records), parts=dict(slot.parts))
            log = list(slot.log)
            reference = fold_log(dict(slot.records), log, parts=dict(slot.parts), **options)
            # As the Redis store does: the records of quiet series with rows read back.
            rows = fold_rows(log, 2, 20)
            needed = hot.missing(rows[0])
            assert hot.read(needed, [slot.records[digest] for digest in needed])
            kept = fold_log(hot.records, log, rows=rows, quiet=hot.quiet, parts=hot.parts, **options)
            assert _plan_fields(kept) == _plan_fields(reference)
            plain = fold_log(dict(inline.records), list(inline.log), **options)
            assert reference.live == plain.live and reference.expired == plain.expired
            if reference.updates or reference.created or reference.expired or log:
                refused = slot.commit(reference, arguments["limit"])
                assert inline.commit(plain, arguments["limit"]) == refused
                hot.committed(kept, refused, str(slot.version))
            else:
                hot.unchanged(kept)
            assert hot.parts == slot.parts
            assert hot.records.keys() == slot.records.keys()
            for digest, record in hot.records.items():
                assert record == slot.records[digest] or (record is None and digest in hot.quiet)
            for digest, kept in hot.quiet.items():
                stored = msgpack.unpackb(slot.records[digest], raw=True)
                assert stored[2] == kept[0] and stored[7] == [] and stored[9] == 0
                assert revive(kept) in reference.live
            zero_owed, inline_zero_owed = reference.zero_owed, plain.zero_owed
            published = now_us


def test_a_quiet_series_is_emitted_without_its_record_being_read() -> None:
    series = _series(0, 2, NOW_US, False)
    log = [_row(series)]
    options: dict[str, Any] = {"slots": SLOTS, "max_exemplars": 2, "exp_max_size": 20, "limit": 0}
    first = fold_log({}, log, delta_mode=False, **options)
    records = {first.created[0].digest: first.created[0].record}
    second = fold_log(records, [], delta_mode=False, quiet={}, **options)
    assert list(second.quiet) == [series.digest] and revive(second.quiet[series.digest]) == second.live[0]
    # No record at all: the kept series stands for it.
    third = fold_log({series.digest: None}, [], delta_mode=False, quiet=second.quiet, **options)
    assert third.live == second.live
    # DELTA: nothing is quiet (every idle record is reset at every fold).
    assert fold_log(records, [], delta_mode=True, quiet={}, **options).quiet == {}
