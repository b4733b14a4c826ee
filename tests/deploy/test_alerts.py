"""deploy/prometheus/alerts.yaml: promtool checks it and runs its unit tests (alerts.test.yaml, among
them the stall of a worker alive with no partitions), the chart ships the same rules, and every
metric they read is one the worker exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.helpers import CHART, DEPLOY
from worker.observability.selfmetrics import WorkerMetrics

RULES = DEPLOY / "prometheus" / "alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)")
    return path


def _run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    out = _run(_promtool(), "check", "rules", str(RULES))
    assert "SUCCESS: 13 rules found" in out


def test_promtool_test_rules() -> None:
    """The unit tests pass; among them the stall: worker w2 alive, owning no partition."""
    out = _run(_promtool(), "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    stall = next(test for test in tests if test["name"] == "a worker alive with no partitions")
    fired = [
        case
        for case in stall["alert_rule_test"]
        if case["alertname"] == "SpanmetricsWorkerWithoutPartitions" and case["exp_alerts"]
    ]
    assert fired and fired[0]["exp_alerts"][0]["exp_labels"]["instance"] == "w2"


def test_promtool_rule_tests_can_fail(tmp_path: Path) -> None:
    """The same stall test, expecting silence, fails: the fixtures do make the alert fire."""
    promtool = _promtool()
    document = yaml.safe_load(RULE_TESTS.read_text())
    stall = next(test for test in document["tests"] if test["name"] == "a worker alive with no partitions")
    for case in stall["alert_rule_test"]:
        case["exp_alerts"] = []
    document["tests"] = [stall]
    document["rule_files"] = [str(RULES)]
    broken = tmp_path / "alerts.test.yaml"
    broken.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [promtool, "test", "rules", str(broken)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "SpanmetricsWorkerWithoutPartitions" in result.stdout + result.stderr


def test_the_chart_ships_the_same_rules() -> None:
    assert (CHART / "files" / "alerts.yaml").read_bytes() == RULES.read_bytes(), (
        "cp deploy/prometheus/alerts.yaml helm/spanmetrics-worker/files/alerts.yaml"
    )


def test_every_rule_reads_exported_metrics() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    exported = set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        exported.add(family.name)
        if family.type == "counter":
            exported.add(family.name + "_total")
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) == 13
    for rule in rules:
        for name in re.findall(r"spanmetrics_[a-z_]+", str(rule["expr"])):
            assert name in exported, f"{rule['alert']}: {name} is not exported"
