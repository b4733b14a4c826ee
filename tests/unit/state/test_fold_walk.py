"""The compiled walk over a slot's held records (``state._fold.walk_held``) against its pure
reference (``state.fold._walk_held``): over random slots of quiet series kept by the owner,
records to decode, rows, series and resource expiry, the same plan (live series field by field
and in order, plain positions, expired, the active-series change, quiet series), the same rows
left, and the same records handed to the decoding callback, in the same order; and a whole fold
(``fold_log``) plans the same with the compiled walk and without it."""

from __future__ import annotations

from dataclasses import astuple
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import state.fold as fold_module
from state.codec import delta_payload, encode_meta
from state.fold import FoldPlan, Kept, _walk_held, fold_log, pack_row, revive
from worker.model.extensions import load
from worker.model.series import Series

compiled = load("state._fold")
pytestmark = pytest.mark.skipif(
    compiled is None, reason="state._fold not built (or SPANMETRICS_NO_EXTENSIONS=1)"
)

RESOURCES = ("r0", "r1", "r2")

_kept = st.tuples(
    st.integers(0, 60),  # last_us
    st.sampled_from(["duration", "calls", "events"]),
    st.sampled_from(RESOURCES),
    st.sampled_from([(), (("a", 1),)]),
    st.integers(0, 10**18),
    st.integers(0, 2**63 - 1),
    st.floats(allow_nan=False),
    st.one_of(st.none(), st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple)),
    st.none(),
    st.one_of(st.none(), st.lists(st.binary(max_size=6), max_size=3).map(tuple)),
    st.sampled_from([None, "calls"]),
)
_held = st.lists(
    st.tuples(
        st.sampled_from(["quiet", "record", "quiet-with-rows"]),
        _kept,
    ),
    max_size=30,
)


Slot = tuple[dict[bytes, bytes | None], dict[bytes, Kept], dict[bytes, Any]]


def _slot(held: list[tuple[str, Kept]]) -> Slot:
    stored: dict[bytes, bytes | None] = {}
    known: dict[bytes, Kept] = {}
    deltas: dict[bytes, Any] = {}
    for index, (kind, kept) in enumerate(held):
        digest = index.to_bytes(4, "big") * 4
        if kind == "record":
            stored[digest] = b"record-%d" % index
            continue
        stored[digest] = None
        known[digest] = kept
        if kind == "quiet-with-rows":
            deltas[digest] = ([index], 0)
    deltas[b"new-series-digest"] = (["new"], 0)  # rows of a series the slot does not hold
    return stored, known, deltas


def _walk(
    walk: Any,
    held: list[tuple[str, Kept]],
    expire: int,
    resource_expire: int,
    seen: dict[str, int],
    empty_known: bool,
) -> tuple[Any, ...]:
    stored, known, deltas = _slot(held)
    if empty_known:
        known = {}
    plan = FoldPlan()
    handed: list[tuple[bytes, bytes | None, Any]] = []

    def other(digest: bytes, blob: bytes | None, pending: Any) -> None:
        handed.append((digest, blob, pending))
        plan.held_change += 100  # the callback's own changes stay where it made them

    walk(stored, deltas, known, expire, resource_expire, seen, plan, other)
    return (
        [astuple(one) for one in plan.live],
        [type(one.buckets) for one in plan.live],
        plan.live_digests,
        plan.plain,
        plan.expired,
        plan.held_change,
        plan.quiet,
        deltas,
        handed,
    )


@settings(max_examples=300, deadline=None)
@given(
    held=_held,
    expire=st.sampled_from([0, 10, 30, 61]),
    resource_expire=st.sampled_from([0, 15, 35]),
    seen=st.dictionaries(st.sampled_from(RESOURCES), st.integers(0, 60)),
    empty_known=st.booleans(),
)
@example(  # expired by series expiration
    held=[("quiet", (5, "calls", "r0", (), 1, 2, 3.0, None, None, None, None))],
    expire=10,
    resource_expire=0,
    seen={},
    empty_known=False,
)
@example(  # emitted one last time, its resource stale
    held=[("quiet", (20, "duration", "r1", (), 1, 2, 3.0, (1, 2), None, (b"x",), "calls"))],
    expire=0,
    resource_expire=35,
    seen={"r1": 10},
    empty_known=False,
)
def test_the_compiled_walk_plans_what_the_pure_walk_plans(
    held: list[tuple[str, Kept]], expire: int, resource_expire: int, seen: dict[str, int], empty_known: bool
) -> None:
    assert compiled is not None
    assert _walk(compiled.walk_held, held, expire, resource_expire, seen, empty_known) == _walk(
        _walk_held, held, expire, resource_expire, seen, empty_known
    )


def test_revived_series_are_those_revive_builds() -> None:
    assert compiled is not None
    assert compiled.fields_at_slots()  # else every quiet series would go through Python
    kept = (7, "duration", "r0", (), 123, 4, 2.5, (1, 2, 1), None, (b"\x0aab",), "calls")
    plan = FoldPlan()
    compiled.walk_held({b"d": None}, {}, {b"d": kept}, 0, 0, {}, plan, lambda *_: None)
    (series,) = plan.live
    assert type(series) is Series
    assert series == revive(kept)
    # Lists of their own, as revive makes: an emission changing one changes no kept tuple.
    assert type(series.buckets) is list and type(series.attribute_parts) is list and series.exemplars == []
    assert plan.quiet == {b"d": kept}


def test_a_kept_value_of_another_shape_is_revived_in_python() -> None:
    assert compiled is not None
    odd = [7, "calls", "r0", (), 1, 2, 3.0, [1], None, [b"p"], None]  # a list, lists inside
    plan = FoldPlan()
    compiled.walk_held({b"d": None}, {}, {b"d": odd}, 0, 0, {}, plan, lambda *_: None)
    assert plan.live == [revive(tuple(odd))]
    with pytest.raises(ValueError):
        compiled.walk_held({b"d": None}, {}, {b"d": (1, 2)}, 0, 0, {}, FoldPlan(), lambda *_: None)


def _series(index: int, count: int, last_us: int) -> Series:
    histogram = index % 2 == 0
    return Series(
        series_id=f"{'duration' if histogram else 'calls'}\x1e{RESOURCES[index % 3]}\x1eop{index}",
        metric="duration" if histogram else "calls",
        resource_id=RESOURCES[index % 3],
        attributes=(("span.name", f"op{index}"),),
        start_ns=1_000_000,
        last_ns=last_us * 1000,
        count=count,
        sum=count * 2.5,
        buckets=[count, 0, 1] if histogram else None,
        companion="calls" if histogram else None,
    )


_spec = st.tuples(st.integers(0, 11), st.integers(1, 5), st.integers(1, 50))  # series, count, last seen


@settings(max_examples=60, deadline=None)
@given(
    first=st.lists(_spec, min_size=1, max_size=12),
    second=st.lists(_spec, max_size=6),
    expire=st.sampled_from([0, 20, 45]),
    resource_expire=st.sampled_from([0, 25]),
    kept=st.booleans(),
)
def test_a_fold_plans_the_same_with_and_without_the_compiled_module(
    first: list[tuple[int, int, int]],
    second: list[tuple[int, int, int]],
    expire: int,
    resource_expire: int,
    kept: bool,
) -> None:
    """With its quiet series kept (the walk) or not (every record read: quiet ones by
    ``quiet_series``), over interned parts."""

    def rows(spec: list[tuple[int, int, int]]) -> list[bytes]:
        out = []
        for index, count, last in spec:
            one = _series(index, count, last)
            out.append(pack_row(one.digest, delta_payload(one, encode_meta(one))))
        return out

    options: dict[str, Any] = {
        "slots": 4,
        "max_exemplars": 2,
        "exp_max_size": 160,
        "limit": 0,
        "delta_mode": False,
    }
    created = fold_log({}, rows(first), quiet={}, parts={}, **options)
    dictionary = dict(created.parts)  # the slot's attribute parts: metas refer to them by id
    every: dict[bytes, bytes | None] = {new.digest: new.record for new in created.created}
    quiet = fold_log(every, [], quiet={}, parts=dictionary, **options).quiet  # the next fold keeps them
    assert quiet
    stored = dict(every)
    needed = {_series(index, 1, 1).digest for index, _, _ in second}
    for digest in quiet:
        if kept and digest not in needed:
            stored[digest] = None  # the owner keeps quiet series without rows without their records

    def plan(walk: Any) -> tuple[Any, ...]:
        saved = fold_module._compiled
        fold_module._compiled = walk
        try:
            got = fold_log(
                stored,
                rows(second),
                quiet=dict(quiet) if kept else None,
                expire_before_us=expire,
                resource_expire_before_us=resource_expire,
                resource_seen_us={"r1": 30},
                reset_emitted_us=1,
                parts=dictionary,
                **options,
            )
        finally:
            fold_module._compiled = saved
        return (
            [astuple(one) for one in got.live],
            got.live_digests,
            got.plain,
            got.expired,
            got.held_change,
            got.updates,
            [astuple(new) for new in got.created],
            got.quiet,
        )

    assert plan(compiled) == plan(None)
