"""values.schema.json's `config` is generated from the worker's config model and up to date; it
accepts what the worker's loader accepts and refuses what it refuses (without helm: jsonschema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devtools import chart_schema
from tests.deploy.helpers import CHART, REPO, WORKER_CONFIG
from worker.config import load_config
from worker.model.errors import ConfigError


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads((CHART / "values.schema.json").read_text())
    return jsonschema.Draft7Validator({"$defs": schema["$defs"], **schema["properties"]["config"]})


def _passthrough(config: dict[str, Any]) -> dict[str, Any]:
    """What a user would put under the chart's `config` (the chart sets the managed options)."""
    result = json.loads(json.dumps(config))
    for section, managed in chart_schema.CHART_MANAGED.items():
        for option in managed:
            (result.get(section) or {}).pop(option, None)
    return result


def test_the_checked_in_schema_is_up_to_date() -> None:
    text = chart_schema.CHART_SCHEMA.read_text(encoding="utf-8")
    assert text == chart_schema.render(json.loads(text)), "run `python -m devtools.chart_schema`"
    assert chart_schema.main(["--check"]) == 0


def test_a_stale_schema_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "values.schema.json"
    document = json.loads(chart_schema.CHART_SCHEMA.read_text())
    document["properties"]["config"]["properties"].pop("metrics_generator")
    stale.write_text(json.dumps(document))
    monkeypatch.setattr(chart_schema, "CHART_SCHEMA", stale)
    assert chart_schema.main(["--check"]) == 1


@pytest.mark.parametrize(
    "path", [WORKER_CONFIG, REPO / "examples" / "config.yaml", REPO / "examples" / "tempo-mode.yaml"]
)
def test_shipped_configs_pass(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    load_config(path)
    errors = list(_validator().iter_errors(_passthrough(yaml.safe_load(path.read_text()))))
    assert errors == []


LENIENT = {
    "spanmetrics": {
        "dimensions": ["http.method", {"name": "http.route", "default": "/"}, {"glob": "app.*"}],
        "histogram": {"unit": "S", "explicit": {"buckets": ["2ms", 0.5, "1m30s"]}},
        "aggregation_temporality": "AGGREGATION_TEMPORALITY_DELTA",
        "metrics_flush_interval": "1m30s",
        "series_expiration": 0,
    },
    "worker": {"shutdown_grace": "25s", "max_active_series_per_tenant": 0},
    "log": {"level": "debug", "format": "json"},
}


def test_what_the_worker_normalises_passes(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(LENIENT))
    load_config(path)
    assert list(_validator().iter_errors(LENIENT)) == []


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ({"spanmetrics": {"metrics_flush_interval": "soon"}}, "metrics_flush_interval"),
        ({"spanmetrics": {"bogus": 1}}, "bogus"),
        ({"spanmetrics": {"dimensions": [{"name": "a", "colour": "red"}]}}, "colour"),
        ({"worker": {"max_active_series_per_tenant": -1}}, "max_active_series_per_tenant"),
        ({"log": {"level": "verbose"}}, "level"),
        ({"kafka": {"fetch_min_bytes": "many"}}, "fetch_min_bytes"),
    ],
)
def test_what_the_worker_refuses_is_refused(tmp_path: Path, config: dict[str, Any], option: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError):
        load_config(path)
    errors = list(_validator().iter_errors(config))
    assert errors and option in " ".join(str(list(e.absolute_path)) + e.message for e in errors)


@pytest.mark.parametrize(
    "config",
    [{"redis": {"password": "x"}}, {"kafka": {"sasl_password": "x"}}, {"redis": {"url": "redis://r"}}],
)
def test_secrets_and_chart_managed_options_are_refused(config: dict[str, Any]) -> None:
    assert list(_validator().iter_errors(config))
