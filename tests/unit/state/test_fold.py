"""Folding a slot's delta log into its records: the arithmetic and the decisions, without Redis.

The fold is the Python side of every emission; it must give what ``merge_series`` gives (the
one definition of "add this to that"), whatever the order and grouping of the rows.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state.codec import attributes_of_parts, delta_payload, encode_meta, unpack_meta
from state.fold import (
    ROW_OVERFLOW,
    FoldPlan,
    fold_log,
    overflow_series_id,
    pack_row,
    series_slot,
    zero_time_us,
)
from worker.model.exphistogram import ExpHistogram
from worker.model.series import (
    Series,
    merge_series,
    series_digest,
    with_companions,
)

US = 1_000
NOW_US = 1_800_000_000_000_000
SLOTS = 4


def _series(
    name: str, count: int, *, metric: str = "duration", last_us: int = NOW_US, **extra: Any
) -> Series:
    return Series(
        series_id=f"{metric}\x1er1\x1e{name}",
        metric=metric,
        resource_id="r1",
        attributes=(("span.name", name), ("http.status_code", 200)),
        start_ns=NOW_US * US,
        last_ns=last_us * US,
        count=count,
        sum=count * 2.5,
        **extra,
    )


def _row(series: Series, flags: int = 0) -> bytes:
    return pack_row(series.digest, delta_payload(series, encode_meta(series)), flags)


def _record(series: Series) -> bytes:
    return msgpack.packb(delta_payload(series, encode_meta(series)), use_bin_type=True)


def _fold(stored: dict[bytes, bytes], log: list[bytes], **options: Any) -> FoldPlan:
    settings_: dict[str, Any] = {
        "slots": SLOTS,
        "max_exemplars": 2,
        "exp_max_size": 20,
        "limit": 0,
        "delta_mode": False,
    }
    settings_.update(options)
    return fold_log(stored, log, **settings_)


def test_rows_of_one_series_add_up_into_its_record() -> None:
    held = _series("a", 2, buckets=[1, 1, 0])
    log = [
        _row(_series("a", 3, buckets=[0, 1, 2], last_us=NOW_US + 5))
        + _row(_series("b", 1, buckets=[1, 0, 0]))
    ]
    log.append(_row(_series("a", 1, buckets=[0, 0, 1], last_us=NOW_US + 9)))
    plan = _fold({held.digest: _record(held)}, log)
    assert plan.rows == 3
    assert [digest for digest, _ in plan.updates] == [held.digest]
    assert [new.digest for new in plan.created] == [_series("b", 1).digest]
    a, b = plan.live
    assert (a.count, a.buckets, a.sum, a.start_ns, a.last_ns) == (
        6,
        [1, 2, 3],
        15.0,
        held.start_ns,
        (NOW_US + 9) * US,
    )
    assert a.attributes == ()  # emitted from their OTLP encoding, which keeps the types:
    assert a.attribute_parts is not None and attributes_of_parts(a.attribute_parts) == held.attributes
    assert (b.count, b.buckets) == (1, [1, 0, 0])


def test_an_idle_series_is_emitted_without_being_rewritten_and_expires_after_the_cut_off() -> None:
    idle = _series("idle", 4, last_us=NOW_US - 100)
    plan = _fold({idle.digest: _record(idle)}, [])
    assert plan.updates == [] and plan.created == [] and [s.count for s in plan.live] == [4]
    plan = _fold({idle.digest: _record(idle)}, [], expire_before_us=NOW_US)
    assert plan.expired == [idle.digest] and plan.live == []
    # Fresh rows keep it alive whatever its old last time.
    plan = _fold({idle.digest: _record(idle)}, [_row(_series("idle", 1))], expire_before_us=NOW_US)
    assert plan.expired == [] and [s.count for s in plan.live] == [5]


def test_exemplars_are_capped_and_forgotten_once_published() -> None:
    exemplars = [(b"t" * 16, b"s" * 8, 1.0, NOW_US * US + i) for i in range(3)]
    plan = _fold({}, [_row(_series("a", 3, exemplars=exemplars))])
    (stored,) = [(new.digest, new.record) for new in plan.created]
    assert len(plan.live[0].exemplars) == 2  # max_exemplars
    plan = _fold(dict([stored]), [], reset_emitted_us=NOW_US + 1)
    assert plan.live[0].exemplars == [] and len(plan.updates) == 1
    plan = _fold(dict([stored]), [])  # publication not confirmed: they go out again
    assert len(plan.live[0].exemplars) == 2 and plan.updates == []


def test_delta_temporality_publishes_what_arrived_since_the_last_publication() -> None:
    held = _series("a", 5, buckets=[2, 3])
    stored = {held.digest: _record(held)}
    plan = _fold(stored, [], delta_mode=True, reset_emitted_us=NOW_US + 7)
    assert plan.live == []  # nothing new: no zero point goes out
    ((digest, record),) = plan.updates
    plan = _fold(
        {digest: record},
        [_row(_series("a", 2, buckets=[1, 1]))],
        delta_mode=True,
        reset_emitted_us=NOW_US + 7,
    )
    (series,) = plan.live
    assert (series.count, series.buckets, series.start_ns) == (2, [1, 1], (NOW_US + 7) * US)


def test_new_series_carry_where_they_go_if_the_tenant_limit_refuses_them() -> None:
    plan = _fold({}, [_row(_series("a", 3)) + _row(_series("b", 1))], limit=10)
    overflow_id = overflow_series_id("duration", "r1")
    assert plan.overflow_slots == [series_slot(overflow_id, SLOTS)]
    for new, name in zip(plan.created, "ab", strict=True):
        assert new.overflow_target == 0
        digest, record, flags = msgpack.unpackb(new.overflow_row, raw=True)
        assert (digest, flags) == (series_digest(overflow_id), ROW_OVERFLOW)
        assert record[3] == (3 if name == "a" else 1)  # the same delta, under the overflow series
        _, _, _, parts = unpack_meta(record[0])
        assert parts is not None and attributes_of_parts(parts) == (("otel.metric.overflow", True),)
    # An overflow series itself is never refused, and without a limit nothing is.
    (overflow,) = _fold({}, [plan.created[0].overflow_row], limit=10).created
    assert overflow.overflow_target == -1
    assert all(new.overflow_target == -1 for new in _fold({}, [_row(_series("a", 1))]).created)


def test_a_changed_bucket_layout_restarts_the_buckets() -> None:
    held = _series("a", 2, buckets=[1, 1])
    plan = _fold({held.digest: _record(held)}, [_row(_series("a", 1, buckets=[0, 1, 0]))])
    assert plan.live[0].buckets == [0, 1, 0]


def test_exponential_histograms_fold_exactly() -> None:
    total = ExpHistogram(max_size=20)
    log = []
    for round_number in range(5):
        delta = ExpHistogram(max_size=20)
        for index in range(40):
            delta.record(1.7 ** (index % 23) * (round_number + 1))
        total.merge(delta)
        log.append(_row(_series("e", delta.count, exp=delta)))
    (series,) = _fold({}, log).live
    assert series.exp is not None
    assert series.exp.to_state() == total.to_state()


_counts = st.lists(st.integers(0, 50), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(
    held=st.dictionaries(st.sampled_from("abcd"), _counts, max_size=4),
    rows=st.lists(st.tuples(st.sampled_from("abcde"), _counts), max_size=12),
    entries=st.integers(1, 4),
)
def test_folding_equals_merge_series_whatever_the_grouping(
    held: dict[str, list[int]], rows: list[tuple[str, list[int]]], entries: int
) -> None:
    stored = {}
    expected: dict[str, Series] = {}
    for name, buckets in held.items():
        series = _series(name, sum(buckets), buckets=buckets)
        stored[series.digest] = _record(series)
        expected[name] = series.copy()
    log: list[bytes] = [b"" for _ in range(entries)]
    for index, (name, buckets) in enumerate(rows):
        delta = _series(name, sum(buckets), buckets=buckets, last_us=NOW_US + index)
        log[index % entries] += _row(delta)
        if name in expected:
            merge_series(expected[name], delta, max_exemplars=2)
        else:
            expected[name] = delta.copy()
    plan = _fold(stored, [entry for entry in log if entry])
    folded = {dict(attributes_of_parts(s.attribute_parts or []))["span.name"]: s for s in plan.live}
    assert folded.keys() == expected.keys()
    for name, series in expected.items():
        got = folded[name]
        assert (got.count, got.buckets, got.sum, got.last_ns) == (
            series.count,
            series.buckets,
            series.sum,
            series.last_ns,
        )


def test_series_stored_by_earlier_versions_keep_their_typed_attributes() -> None:
    """Earlier versions stored ``[key, value]`` pairs in the meta: they still read, and emit."""
    old = _series("a", 2)
    meta = msgpack.packb(
        [old.metric, old.resource_id, [[k, v] for k, v in old.attributes]], use_bin_type=True
    )
    record = msgpack.packb(delta_payload(old, meta), use_bin_type=True)
    (series,) = _fold({old.digest: record}, []).live
    assert series.attributes == old.attributes and series.attribute_parts is None


def test_integral_doubles_written_by_earlier_lua_scripts_are_emitted_as_integers() -> None:
    """Lua numbers are doubles: state its scripts wrote may hold 3.0 where an int belongs."""
    old = _series("a", 3, buckets=[1, 2])
    payload = delta_payload(old, encode_meta(old))
    payload[1:4] = [float(payload[1]), float(payload[2]), 3.0]
    payload[5] = [1.0, 2.0]
    (series,) = _fold({old.digest: msgpack.packb(payload, use_bin_type=True)}, []).live
    assert (series.start_ns, series.last_ns, series.count) == (old.start_ns, old.last_ns, 3)
    assert series.buckets == [1, 2] and all(type(value) is int for value in series.buckets)
    assert type(series.count) is int and type(series.start_ns) is int


def test_a_stored_value_with_bytes_after_its_object_is_refused_not_misread() -> None:
    """Records are read through one reused unpacker: leftover bytes would become the start of
    the next record, so they are an error."""
    first, second = _series("a", 1), _series("b", 2)
    stored = {first.digest: _record(first) + b"\x01", second.digest: _record(second)}
    with pytest.raises(ValueError, match="1 bytes after its msgpack object"):
        _fold(stored, [])


# ------------------------------------------------------------------ paired calls + duration


def _legacy_record(series: Series, meta: bytes | None = None) -> bytes:
    """A record as earlier versions stored it: no companion field."""
    payload = delta_payload(series, meta or encode_meta(series))[:8]
    return msgpack.packb(payload, use_bin_type=True)


def _legacy_row(series: Series) -> bytes:
    return msgpack.packb(
        [series.digest, delta_payload(series, encode_meta(series))[:8], 0], use_bin_type=True
    )


def test_a_duration_record_with_a_companion_emits_the_counter_too_and_weighs_one() -> None:
    exemplars = [(b"t" * 16, b"s" * 8, 1.5, NOW_US * US)]
    paired = _series("a", 3, buckets=[1, 2], exemplars=exemplars, companion="traces.calls")
    plan = _fold({}, [_row(paired)])
    (new,) = plan.created
    assert (new.weight, new.live_index) == (1, 0)  # one label set for the tenant's limit
    assert plan.live_digests == [paired.digest]
    assert plan.live[0].companion == "traces.calls"
    histogram, counter = with_companions(plan.live)  # as the encoder writes them out
    assert (histogram.metric, histogram.companion, histogram.buckets) == ("duration", None, [1, 2])
    assert (counter.metric, counter.companion, counter.buckets) == ("traces.calls", None, None)
    assert (counter.count, counter.start_ns, counter.last_ns) == (3, histogram.start_ns, histogram.last_ns)
    assert counter.exemplars == histogram.exemplars == exemplars
    assert counter.attribute_parts == histogram.attribute_parts
    # Held, it keeps its companion through rows, and leaves the limit's count by one.
    stored = {new.digest: new.record}
    assert [s.companion for s in _fold(stored, [_row(paired)]).live] == ["traces.calls"]
    plan = _fold(stored, [], expire_before_us=NOW_US + 1)
    assert (plan.expired, plan.held_change, plan.live) == ([paired.digest], -1, [])


def test_rows_without_the_companion_field_keep_the_records_and_a_new_configuration_decides() -> None:
    paired = _series("a", 3, companion="calls")
    stored = {paired.digest: _record(paired)}
    # A row from an earlier version (rolling upgrade): the record keeps its companion.
    plan = _fold(stored, [_legacy_row(_series("a", 1))])
    assert [(s.companion, s.count) for s in plan.live] == [("calls", 4)] and plan.held_change == 0
    # A row written without a companion (calls got dimensions of its own): the record stops
    # standing for the counter; still one label set (the counter's own record counts itself).
    plan = _fold(stored, [_row(_series("a", 1))])
    assert [s.companion for s in plan.live] == [None] and plan.held_change == 0


def test_a_counter_stored_on_its_own_by_earlier_versions_gives_way_to_the_companion() -> None:
    """After an upgrade the duration record gains the companion; the old calls record would
    emit a frozen second copy of the counter, so it leaves (its count is the histogram's)."""
    duration = _series("a", 5, buckets=[2, 3])
    calls = _series("a", 5, metric="calls")
    other_calls = _series("b", 7, metric="calls")  # no histogram with these attributes: kept
    stored = {
        calls.digest: _legacy_record(calls),
        duration.digest: _legacy_record(duration),
        other_calls.digest: _legacy_record(other_calls),
    }
    # Before any new row nothing changes.
    plan = _fold(stored, [])
    assert sorted(s.metric for s in plan.live) == ["calls", "calls", "duration"] and plan.expired == []
    legacy_row = _legacy_row(_series("a", 1, metric="calls"))  # from a not yet upgraded worker
    plan = _fold(stored, [_row(_series("a", 2, buckets=[1, 1], companion="calls")) + legacy_row])
    assert plan.expired == [calls.digest] and plan.held_change == -1  # the old record leaves
    assert [digest for digest, _ in plan.updates] == [duration.digest]
    assert plan.created == []
    emitted = sorted((s.metric, s.count) for s in with_companions(plan.live))
    assert emitted == [("calls", 7), ("calls", 7), ("duration", 7)]
    assert plan.live_digests.count(other_calls.digest) == 1
    # A legacy counter row for a new series whose histogram arrives paired is not created either.
    plan = _fold(
        {}, [_legacy_row(_series("n", 1, metric="calls")) + _row(_series("n", 1, companion="calls"))]
    )
    assert [new.digest for new in plan.created] == [_series("n", 1).digest]
    assert [(s.metric, s.companion) for s in plan.live] == [("duration", "calls")]
    assert plan.created[0].live_index == 0


def test_a_refused_pair_overflows_as_a_pair() -> None:
    plan = _fold({}, [_row(_series("a", 3, companion="calls"))], limit=10)
    (new,) = plan.created
    _, record, flags = msgpack.unpackb(new.overflow_row, raw=True)
    assert record[8] == b"calls" and flags == ROW_OVERFLOW
    (overflow,) = _fold({}, [new.overflow_row], limit=10).created
    assert overflow.weight == 1 and overflow.overflow_target == -1


@settings(max_examples=60, deadline=None)
@given(
    rounds=st.lists(
        st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 5), st.booleans()), max_size=6),
        min_size=1,
        max_size=4,
    ),
    entries=st.integers(1, 3),
)
def test_folded_pairs_emit_what_merge_series_gives(
    rounds: list[list[tuple[str, int, bool]]], entries: int
) -> None:
    """Flush after flush, the records a fold commits emit the same calls and duration values as
    the deltas added up with ``merge_series``, whatever the grouping of the rows."""
    stored: dict[bytes, bytes] = {}
    reference: dict[str, Series] = {}

    def name(series: Series) -> str:
        attributes = series.attributes or attributes_of_parts(series.attribute_parts or [])
        return str(dict(attributes)["span.name"])

    for index, round_rows in enumerate(rounds):
        deltas = [
            _series(
                key,
                count,
                buckets=[count, 0] if late else [0, count],
                last_us=NOW_US + index,
                companion="calls",
            )
            for key, count, late in round_rows
        ]
        log = [b"".join(_row(delta) for delta in deltas[part::entries]) for part in range(entries)]
        plan = _fold(stored, [entry for entry in log if entry])
        stored.update(plan.updates)
        stored.update((new.digest, new.record) for new in plan.created)
        for delta in deltas:
            if delta.series_id in reference:
                merge_series(reference[delta.series_id], delta, max_exemplars=2)
            else:
                reference[delta.series_id] = delta.copy()
        emitted = sorted((s.metric, name(s), s.count, s.buckets) for s in with_companions(plan.live))
        expected = sorted(
            (s.metric, name(s), s.count, s.buckets) for s in with_companions(reference.values())
        )
        assert emitted == expected
        assert len(stored) == len({key for rows in rounds[: index + 1] for key, _, _ in rows})


# ------------------------------------------------------------------ zero points (issue 16)

MINUTE_US = 60_000_000


def test_zero_time_is_tempos_end_of_the_last_minute_never_before_the_start() -> None:
    """upstream: tempo modules/generator/registry/counter.go getEndOfLastMinuteMs (floor to the
    minute, minus 1 s), as counter_test.go Test_counter expects the initial 0 sample."""
    minute = NOW_US - NOW_US % MINUTE_US
    now = minute + 20 * 1_000_000
    assert zero_time_us(minute - 10 * MINUTE_US, now) == minute - 1_000_000
    assert zero_time_us(minute - 1_000_000, now) == minute - 1_000_000  # a start floored as Tempo's
    assert zero_time_us(minute + 5, now) == minute + 5  # created within the minute: at its start
    assert zero_time_us(now - 1, now) == now - 1
    assert zero_time_us(now, now) == 0  # not strictly before the flush: none
    assert zero_time_us(now + 7, now) == 0


def test_a_new_cumulative_series_owes_its_zero_point_until_a_publication_is_confirmed() -> None:
    """upstream: connector_test.go (#38537 / PR #39052): a new cumulative series shows 0 before
    its first count; here in the same flush (Tempo's registry counter_test.go Test_counter)."""
    now = NOW_US + 15 * 1_000_000
    zero_us = zero_time_us(NOW_US, now)
    plan = _fold({}, [_row(_series("a", 2))], now_us=now)
    ((digest, record),) = [(new.digest, new.record) for new in plan.created]
    assert plan.live[0].zero_ns == zero_us * US and msgpack.unpackb(record, raw=True)[9] == zero_us
    # What the owner writes once the publication is confirmed: the record without its zero point.
    ((owed_digest, owed),) = plan.zero_owed
    assert owed_digest == digest and msgpack.unpackb(owed, raw=True) == [
        *msgpack.unpackb(record, raw=True)[:9],
        0,
    ]
    # The publication failed (no reset): the same zero point goes out again, at the pinned time.
    later = now + 15 * 1_000_000 + MINUTE_US
    plan = _fold({digest: record}, [_row(_series("a", 1))], now_us=later)
    assert plan.live[0].zero_ns == zero_us * US and plan.live[0].count == 3
    ((_, record),) = plan.updates
    # A confirmed publication: the record forgets it (a write once), no zero point from then on.
    plan = _fold({digest: record}, [], now_us=later + 1, reset_emitted_us=later)
    assert plan.live[0].zero_ns == 0 and len(plan.updates) == 1
    ((_, record),) = plan.updates
    assert msgpack.unpackb(record, raw=True)[9] == 0
    plan = _fold({digest: record}, [], now_us=later + 2, reset_emitted_us=later + 1)
    assert plan.live[0].zero_ns == 0 and plan.updates == []


def test_records_of_earlier_versions_owe_no_zero_point_and_delta_none_at_all() -> None:
    """A record stored before the field existed was emitted already: a zero point now would read
    as a counter reset. DELTA: none (upstream #40139 / PR #40148)."""
    held = _series("a", 4)
    for stored in (_record(held), _legacy_record(held)):  # without the field; without companion too
        plan = _fold({held.digest: stored}, [_row(_series("a", 1))], now_us=NOW_US + 10)
        assert plan.live[0].zero_ns == 0 and plan.live[0].count == 5
    plan = _fold(
        {}, [_row(_series("b", 1)), _legacy_row(_series("c", 1))], now_us=NOW_US + 10, delta_mode=True
    )
    assert [s.zero_ns for s in plan.live] == [0, 0]
    assert all(msgpack.unpackb(new.record, raw=True)[9] == 0 for new in plan.created)
    plan = _fold({}, [_legacy_row(_series("c", 1))], now_us=NOW_US + 10)  # a row of an earlier version
    assert plan.live[0].zero_ns == NOW_US * US
    assert _fold({}, [_row(_series("d", 1))]).live[0].zero_ns == 0  # no emission time given


def test_an_overflow_series_is_zero_initialised_too() -> None:
    """upstream: connector_test.go / reference §2.8: overflow series are zero-initialised like the
    others; tempo counter_test.go Test_counter_cantAdd (the metric_overflow series gets its 0)."""
    plan = _fold({}, [_row(_series("a", 3))], limit=10)
    row_record = msgpack.unpackb(plan.created[0].overflow_row, raw=True)[1]
    assert len(row_record) == 9  # a row: the zero field belongs to the record
    overflow = _fold({}, [plan.created[0].overflow_row], now_us=NOW_US + 10)
    assert overflow.live[0].zero_ns == NOW_US * US


# ------------------------------------------------------------------ expiry (issue 16)


def _in(resource: str, name: str, count: int, last_us: int) -> Series:
    series = _series(name, count, last_us=last_us)
    series.resource_id = resource
    series.series_id = f"duration\x1e{resource}\x1e{name}"
    return series


def test_metrics_expiration_drops_a_resource_idle_that_long_after_one_last_export() -> None:
    """upstream: connector.go buildMetrics (PR #31106): each flush exports, then removes the
    resources last seen at least metrics_expiration ago; a busy resource keeps its idle series."""
    busy_idle = _in("busy", "idle", 2, NOW_US - 100)
    busy_fresh = _in("busy", "fresh", 1, NOW_US)
    gone = _in("gone", "x", 3, NOW_US - 90)
    unknown = _in("unknown", "y", 4, NOW_US - 80)  # no last-seen time: its own counts
    recent = _in("unknown", "z", 5, NOW_US + 10)
    stored = {s.digest: _record(s) for s in (busy_idle, busy_fresh, gone, unknown, recent)}
    seen = {"busy": NOW_US + 20, "gone": NOW_US - 50}
    plan = _fold(stored, [], resource_expire_before_us=NOW_US, resource_seen_us=seen)
    assert sorted(plan.expired) == sorted([gone.digest, unknown.digest])
    assert plan.held_change == -2
    # Exported one last time in this fold, then gone.
    assert sorted(s.count for s in plan.live) == [1, 2, 3, 4, 5]
    # Rows keep a series of an idle resource (they are newer than the last-seen time read).
    plan = _fold(stored, [_row(_in("gone", "x", 1, NOW_US - 60))], resource_expire_before_us=NOW_US,
                 resource_seen_us=seen)  # fmt: skip
    assert sorted(plan.expired) == [unknown.digest]


def test_series_and_metrics_expiration_together() -> None:
    """Both may be set (upstream PR #48270 keeps metrics_expiration): a series goes when either
    says so; series expiration drops without a last export (as before)."""
    busy_idle = _in("busy", "idle", 2, NOW_US - 100)
    gone = _in("gone", "x", 3, NOW_US - 10)
    stored = {s.digest: _record(s) for s in (busy_idle, gone)}
    plan = _fold(
        stored,
        [],
        expire_before_us=NOW_US - 50,
        resource_expire_before_us=NOW_US,
        resource_seen_us={"busy": NOW_US + 20, "gone": NOW_US - 10},
    )
    assert sorted(plan.expired) == sorted([busy_idle.digest, gone.digest])
    assert [s.count for s in plan.live] == [3]


def test_an_info_series_folds_like_a_sum_its_count_saying_it_was_seen() -> None:
    # MetricKind.INFO (traces_target_info, traces_service_graph_connection_info): the state layer
    # knows no kinds; the count adds up, and the encoder writes 1 whatever it is.
    def info(count: int, last_us: int = NOW_US) -> Series:
        return Series(
            series_id="traces_target_info\x1er1\x1e",
            metric="traces_target_info",
            resource_id="r1",
            attributes=(("job", "checkout"),),
            start_ns=NOW_US * US,
            last_ns=last_us * US,
            count=count,
        )

    plan = _fold({}, [_row(info(1)) + _row(info(1, NOW_US + 3))])
    ((new,),) = [plan.created]
    (live,) = plan.live
    assert (live.count, live.sum, live.buckets, live.last_ns) == (2, 0.0, None, (NOW_US + 3) * US)
    plan = _fold({new.digest: new.record}, [])  # idle: still emitted, as a cumulative SUM is
    assert [s.count for s in plan.live] == [2]
    plan = _fold({new.digest: new.record}, [], expire_before_us=NOW_US + 4)
    assert plan.expired == [new.digest] and plan.live == []
    plan = _fold({}, [_row(info(1))], delta_mode=True, reset_emitted_us=NOW_US + 7)
    assert [s.count for s in plan.live] == [1]


# ------------------------------------------------------------------ the slot's dictionary of parts


def _meta_of(record: bytes) -> list[Any]:
    return msgpack.unpackb(msgpack.unpackb(record, raw=True)[0], raw=False)  # type: ignore[no-any-return]


def test_new_records_intern_the_parts_they_share_and_keep_their_own_inline() -> None:
    a, b = _series("a", 1), _series("b", 2)
    plan = _fold({}, [_row(a) + _row(b)], parts={})
    shared = attributes_of_parts([*plan.parts.values()])
    assert shared == (("http.status_code", 200),)  # span.name differs: inline in each
    for new in plan.created:
        metric, resource_id, items, marker = _meta_of(new.record)
        assert (metric, resource_id, marker) == ("duration", "r1", 1)
        assert [type(item) for item in items] == [bytes, int]
    # Read back with the dictionary: the same series as from records holding every part inline.
    stored = {new.digest: new.record for new in plan.created}
    inline = _fold({}, [_row(a) + _row(b)])
    assert (
        _fold(stored, [], parts=plan.parts).live
        == _fold({new.digest: new.record for new in inline.created}, []).live
    )
    # A record referring to a part its slot's dictionary does not hold is an error, never a guess.
    with pytest.raises(ValueError, match="dictionary"):
        _fold(stored, [], parts={})
    with pytest.raises(ValueError, match="dictionary"):
        _fold(stored, [])


def test_a_part_the_dictionary_holds_is_interned_even_for_one_new_series() -> None:
    first = _fold({}, [_row(_series("a", 1)) + _row(_series("b", 1))], parts={})
    stored = {new.digest: new.record for new in first.created}
    second = _fold(stored, [_row(_series("c", 1))], parts=first.parts)
    assert second.parts == {}  # nothing new: its shared part has an id already
    (created,) = second.created
    assert _meta_of(created.record)[2][1] in first.parts
    # A part of one new series alone, not in the dictionary, stays inline: no entry for it.
    only = _fold({}, [_row(_series("z", 1))], parts={})
    assert only.parts == {} and len(_meta_of(only.created[0].record)) == 3


def test_new_ids_follow_the_highest_in_the_dictionary() -> None:
    plan = _fold({}, [_row(_series("a", 1)) + _row(_series("b", 1))], parts={7: b"\x00unrelated"})
    assert list(plan.parts) == [8]


def test_metas_of_earlier_versions_are_read_with_or_without_a_dictionary() -> None:
    series = _series("a", 3)
    pairs = [["span.name", "a"], ["http.status_code", 200]]
    typed = msgpack.packb(["duration", "r1", pairs], use_bin_type=True)
    record = msgpack.packb([typed, *delta_payload(series, encode_meta(series))[1:]], use_bin_type=True)
    for parts in (None, {}, {0: b"x"}):
        (live,) = _fold({series.digest: record}, [], parts=parts).live
        assert live.attributes == series.attributes
