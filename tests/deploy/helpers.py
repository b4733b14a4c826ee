"""Shared helpers for the deployment tests: paths, the chart tool, memoized renders, PromQL naming."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "helm" / "spanmetrics-worker"
COMPOSE_FILE = REPO / "docker-compose.yml"
WORKER_CONFIG = DEPLOY / "worker-config.yaml"
COLLECTOR_CONFIG = DEPLOY / "otel-collector" / "config.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "spanmetrics.json"


def _load_tool() -> ModuleType:
    path = REPO / "tools" / "validate_chart.py"
    spec = importlib.util.spec_from_file_location("validate_chart", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_chart"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


#: tools/validate_chart.py, imported by path (tools/ is not a package).
validate_chart = sys.modules.get("validate_chart") or _load_tool()


@cache
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


_renders: dict[tuple[Any, ...], list[dict[str, Any]]] = {}


def render(
    helm: Path,
    *values_files: Path,
    sets: tuple[str, ...] = (),
    kube_version: str | None = None,
) -> list[dict[str, Any]]:
    """``helm template`` of the chart (memoized); raises validate_chart.RenderError on failure."""
    kube = kube_version or validate_chart.KUBE_VERSIONS[-1]
    key = (helm, values_files, sets, kube)
    if key not in _renders:
        _renders[key] = validate_chart.render(helm, values_files, sets, kube_version=kube)
    return _renders[key]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Manifests keyed by kind (the chart renders at most one of each)."""
    kinds = [doc["kind"] for doc in docs]
    assert len(kinds) == len(set(kinds)), f"more than one manifest of a kind: {kinds}"
    return {doc["kind"]: doc for doc in docs}
