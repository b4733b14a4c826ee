"""deploy/otel-collector/config.yaml: documented keys of the pinned Collector, wired to the stack.

The keys are checked against tests/deploy/collector_schema.py (the documented options of the
pinned contrib version, unknown keys rejected as the Collector does); the values against the
worker's configuration (topic) and the compose services (broker, Prometheus endpoint).
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from tests.deploy.collector_schema import COLLECTOR_CONFIG, COLLECTOR_VERSION
from tests.deploy.helpers import COLLECTOR_CONFIG as COLLECTOR_CONFIG_FILE
from tests.deploy.helpers import WORKER_CONFIG, load_yaml
from worker.config import load_config


@pytest.fixture
def config() -> dict[str, Any]:
    return copy.deepcopy(load_yaml(COLLECTOR_CONFIG_FILE))


def _errors(config: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(COLLECTOR_CONFIG)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    ]


def test_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(COLLECTOR_CONFIG)


def test_config_has_only_documented_keys(config: dict[str, Any]) -> None:
    assert _errors(config) == []


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [
        (("receivers", "kafka"), "topic_name", "otlp_metrics"),
        (("receivers", "kafka", "metrics"), "encodings", "otlp_proto"),
        (("exporters", "prometheusremotewrite"), "translation_strategy", "UnderscoreEscapingWithSuffixes"),
        (("exporters", "prometheusremotewrite", "tls"), "insecure_skip", True),
    ],
)
def test_schema_rejects_unknown_keys(
    config: dict[str, Any], path: tuple[str, ...], key: str, value: Any
) -> None:
    """The check is not vacuous: misspelled keys, and keys the pinned version lacks, fail it."""
    node = config
    for part in path:
        node = node[part]
    node[key] = value
    assert any(key in error for error in _errors(config))


def test_pinned_collector_version_matches_compose(compose: dict[str, Any]) -> None:
    image = compose["services"]["otel-collector"]["image"]
    assert image == f"otel/opentelemetry-collector-contrib:{COLLECTOR_VERSION}"


def test_kafka_receiver_reads_the_workers_output(config: dict[str, Any], compose: dict[str, Any]) -> None:
    receiver = config["receivers"]["kafka"]
    worker = load_config(WORKER_CONFIG).kafka
    assert receiver["metrics"]["topics"] == [worker.output_topic]
    # The workers publish one serialized ExportMetricsServiceRequest per record.
    assert receiver["metrics"]["encoding"] == "otlp_proto"
    advertised = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert receiver["brokers"] == [worker.bootstrap_servers]
    assert f"PLAINTEXT://{worker.bootstrap_servers}" in advertised.split(",")
    # Its own consumer group, never the workers'.
    assert receiver["group_id"] != worker.group_id
    assert "topic" not in receiver["metrics"], "use the list form `topics` (topic is deprecated)"


def test_remote_write_to_the_compose_prometheus(config: dict[str, Any], compose: dict[str, Any]) -> None:
    exporter = config["exporters"]["prometheusremotewrite"]
    url = urlsplit(exporter["endpoint"])
    assert (url.scheme, url.hostname, url.port, url.path) == ("http", "prometheus", 9090, "/api/v1/write")
    prometheus = compose["services"]["prometheus"]
    assert "--web.enable-remote-write-receiver" in prometheus["command"]
    assert "9090:9090" in prometheus["ports"]
    # The dashboard's names assume the default translation (type and unit suffixes, underscores).
    assert "add_metric_suffixes" not in exporter
    assert "translation_strategy" not in exporter
    assert exporter.get("namespace", "") == ""


def test_pipeline_wiring(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"metrics"}
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline in pipelines.values():
        for kind in used:
            for component in pipeline.get(kind, []):
                assert component in config.get(kind, {}), f"pipeline uses undefined {kind[:-1]} {component}"
                used[kind].add(component)
    for kind, names in used.items():
        assert set(config.get(kind) or {}) == names, f"defined but unused {kind}"
    assert pipelines["metrics"]["receivers"] == ["kafka"]
    assert pipelines["metrics"]["exporters"] == ["prometheusremotewrite"]
