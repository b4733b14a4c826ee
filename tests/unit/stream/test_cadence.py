"""The emission schedule: fixed-rate due times, lateness and skipped emissions (pure)."""

from __future__ import annotations

import pytest

from worker.stream.cadence import EMIT, MERGE, Cadence


def test_due_times_are_start_plus_k_intervals_whatever_the_emissions_take() -> None:
    cadence = Cadence(5.0, start=100.0)
    assert not cadence.due(104.9)
    assert cadence.until_due(103.0) == pytest.approx(2.0)
    starts = []
    # Each emission begins at its due time (+0.1 s) and lasts 1.2 s: the next is still due at
    # start + k * interval, not 5 s after the previous ended (the drift of issue 18).
    now = 100.0
    for _ in range(4):
        now = cadence.next_due + 0.1
        assert cadence.due(now)
        slot = cadence.begin(now)
        starts.append(slot.due)
        assert not slot.late and slot.skipped == 0
        now += 1.2
        assert not cadence.due(now)
    assert starts == [105.0, 110.0, 115.0, 120.0]
    assert cadence.late_total == cadence.skipped_total == 0


def test_merge_only_flushes_do_not_move_the_schedule() -> None:
    cadence = Cadence(5.0, start=0.0)
    # Merge-only flushes never call begin(); the emission due at 5 s is due whenever they end.
    assert cadence.due(5.3)
    slot = cadence.begin(5.3)
    assert slot.due == 5.0 and slot.lateness == pytest.approx(0.3) and not slot.late
    assert cadence.next_due == 10.0


def test_a_late_emission_is_counted_and_the_schedule_resumes_on_the_grid() -> None:
    cadence = Cadence(10.0, start=0.0)
    slot = cadence.begin(12.5)  # due at 10, begins 2.5 s late (more than a tenth of 10 s)
    assert slot.late and slot.skipped == 0 and slot.lateness == pytest.approx(2.5)
    assert cadence.next_due == 20.0  # not 22.5
    slot = cadence.begin(20.5)
    assert not slot.late
    assert (cadence.late_total, cadence.skipped_total) == (1, 0)


def test_due_times_passed_without_an_emission_are_skipped() -> None:
    cadence = Cadence(5.0, start=0.0)
    # An emission (or a stall) held the loop from 4 s to 17 s: due times 5, 10, 15 passed.
    slot = cadence.begin(17.0)
    assert slot.due == 5.0 and slot.late
    assert slot.skipped == 2  # 10 and 15 had no emission of their own
    assert cadence.next_due == 20.0
    assert (cadence.late_total, cadence.skipped_total) == (1, 2)
    # The emission serves the oldest due time owed (its lateness counts from there); the due
    # times after it that passed, up to and including the start, are skipped.
    slot = cadence.begin(30.0)
    assert slot.due == 20.0 and slot.skipped == 2 and cadence.next_due == 35.0


def test_an_emission_before_it_is_due_does_not_advance_the_schedule() -> None:
    cadence = Cadence(5.0, start=0.0)
    slot = cadence.begin(3.0)
    assert slot.lateness == 0 and not slot.late and slot.skipped == 0
    assert cadence.next_due == 5.0


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        Cadence(0.0, start=0.0)


def _simulate(cadence: Cadence, steps: list[tuple[float, bool, float]]) -> list[tuple[str, float]]:
    """The run loop's decisions over (time, buffer full, flush duration) steps: (kind, start)."""
    flushes = []
    for now, full, duration in steps:
        kind = cadence.next_flush(now, buffer_full=full)
        if kind == MERGE:
            flushes.append((MERGE, now))
            now += duration
            kind = cadence.next_flush(now, buffer_full=False)
        if kind == EMIT:
            cadence.begin(now)
            flushes.append((EMIT, now))
    return flushes


def test_under_a_sustained_backlog_emissions_still_go_on_the_interval() -> None:
    """The buffer is full at every fetch and each merge-only flush takes 0.4 s: the emission due
    at 5 s goes when the merge that straddles it ends, the one at 10 s likewise (issue 18: a
    merge-only flush used to push the timer forward, and emission starved)."""
    cadence = Cadence(5.0, start=0.0)
    steps = [(0.3 + k / 2, True, 0.4) for k in range(25)]  # a fetch every 0.5 s, all full
    flushes = _simulate(cadence, steps)
    emissions = [start for kind, start in flushes if kind == EMIT]
    assert emissions == pytest.approx([5.2, 10.2])
    assert sum(1 for kind, _ in flushes if kind == MERGE) == len(steps)
    assert cadence.late_total == cadence.skipped_total == 0


def test_nothing_to_do_between_due_times_without_a_full_buffer() -> None:
    cadence = Cadence(5.0, start=0.0)
    assert cadence.next_flush(1.0, buffer_full=False) is None
    assert cadence.next_flush(1.0, buffer_full=True) == MERGE
    assert cadence.next_flush(5.0, buffer_full=True) == EMIT  # its checkpoint merges the buffer
