"""The worker process's garbage-collector settings (worker.runtime)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from worker.runtime import GC_THRESHOLDS, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tuning_freezes_what_exists_and_collects_less_often(restored_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_garbage_collector()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_freeze_count() > 1000  # the modules, classes and configuration loaded so far
    assert gc.isenabled()  # reference cycles are still collected, only less often
