"""The alert rules (deploy/prometheus/alerts.yaml) as README documents them: valid rule YAML over
metrics the worker exports, every alert in README's table and back, and the stall after a loss of
Redis state is covered (owned below assigned, a worker owning nothing, no emission, state lost).
promtool runs them in tests/deploy/test_alerts.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.observability.selfmetrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"


def _rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def _exported() -> set[str]:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    names = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_every_alert_uses_exported_metrics() -> None:
    exported = _exported()
    rules = _rules()
    assert rules
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        for name in re.findall(r"spanmetrics_[a-z_]+", str(rule["expr"])):
            assert name in exported, f"{rule['alert']}: {name} is not exported"


def test_readme_lists_exactly_the_rules() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Alerts") : text.index("## Benchmarks")]
    documented = set(re.findall(r"^\| `(Spanmetrics\w+)` \|", section, re.MULTILINE))
    assert documented == {str(rule["alert"]) for rule in _rules()}
    assert "promtool test rules deploy/prometheus/alerts.test.yaml" in section


def test_the_alerts_cover_a_worker_that_owns_nothing_after_a_loss() -> None:
    expressions = {str(rule["alert"]): str(rule["expr"]) for rule in _rules()}
    joined = "\n".join(expressions.values())
    assert "spanmetrics_assigned_partitions > spanmetrics_owned_partitions" in joined
    assert "spanmetrics_owned_partitions == 0" in expressions["SpanmetricsWorkerWithoutPartitions"]
    assert "spanmetrics_last_emission_timestamp_seconds" in joined
    assert "increase(spanmetrics_state_lost_total" in joined
