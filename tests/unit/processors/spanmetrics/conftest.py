"""Fixtures shared by the span metrics tests; the builders live in :mod:`.helpers`."""

from __future__ import annotations

import pytest

from tests.unit.processors.spanmetrics.helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
