"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest

#: Variables that change what load_config returns; tests must not depend on the caller's shell.
_CONFIG_ENV = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove every environment variable that load_config reads, for this test only."""
    for name in list(os.environ):
        if name.upper().startswith("SPANMETRICS_") or name in _CONFIG_ENV:
            monkeypatch.delenv(name)
    return monkeypatch
