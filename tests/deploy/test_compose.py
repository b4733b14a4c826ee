"""docker-compose.yml: valid Compose, only files that exist, pinned images, and a wiring that works.

Docker is not needed (nor run): the file is checked against the Compose Specification's JSON
Schema (vendored in check-jsonschema), then its services are checked against each other, the
worker's real configuration loader and the real ``spanmetrics`` command line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from tests.deploy.helpers import COMPOSE_FILE, DEPLOY, REPO, WORKER_CONFIG
from worker.cli import cli
from worker.config import load_config

#: A release tag: a version number, never "latest" or a bare major.
PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+([.-][\w.]+)?$")


def _compose_schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _bind_sources(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts (short syntax)."""
    binds = []
    for volume in service.get("volumes", []):
        assert isinstance(volume, str), "use the short volume syntax"
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            binds.append((source, target))
    return binds


def _parse_cli(args: list[str]) -> click.Context:
    """Parse a ``spanmetrics`` command line the way the container's entrypoint will (without running it)."""
    command = cli.commands[args[0]]
    return command.make_context(args[0], list(args[1:]))


def test_compose_file_is_valid_compose_spec() -> None:
    result = _compose_schema_check(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_typo(tmp_path: Path, compose: dict[str, Any]) -> None:
    """The schema check is not vacuous: a misspelled service key fails it."""
    broken = dict(compose)
    broken["services"] = dict(compose["services"])
    broken["services"]["redis"] = {**compose["services"]["redis"], "dependz_on": ["kafka"]}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = _compose_schema_check(path)
    assert result.returncode != 0
    assert "dependz_on" in result.stdout + result.stderr


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka",
        "kafka-init",
        "redis",
        "worker",
        "loadgen",
        "otel-collector",
        "prometheus",
        "grafana",
    }


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name}: no image"
        if "build" in service:
            continue  # built from this repository
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert PINNED_TAG.match(tag), f"{name}: image {image!r} is not pinned to a release"


def test_referenced_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = REPO / build["context"]
            assert context.is_dir(), f"{name}: build context {build['context']} missing"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: Dockerfile missing"
        for source, _ in _bind_sources(service):
            assert not source.startswith("/"), f"{name}: {source} is outside the repository"
            path = (REPO / source).resolve()
            assert path.is_relative_to(REPO), f"{name}: {source} is outside the repository"
            assert path.exists(), f"{name}: bind mount source {source} does not exist"


def test_depends_on_known_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for dependency in depends:
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if isinstance(depends, dict) and depends[dependency].get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_kafka_is_single_node_kraft_reachable_as_kafka_9092(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["PLAINTEXT"] == "kafka:9092"
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listeners == set(protocol_map)
    assert set(advertised) <= listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners - set(advertised)
    # Single node: internal topics cannot have the default replication factor of 3.
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1
    assert "healthcheck" in kafka


def test_topic_creator(compose: dict[str, Any]) -> None:
    init = compose["services"]["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["environment"]["BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert init["environment"]["INPUT_PARTITIONS"] == "12"
    ((script_source, script_target),) = _bind_sources(init)
    assert script_target in init["entrypoint"]
    script = (REPO / script_source).read_text()
    created = dict(re.findall(r"^create (\S+) (\S+)", script, flags=re.MULTILINE))
    assert created == {"otlp_spans": '"$INPUT_PARTITIONS"', "otlp_metrics": "3", "otlp_spans_dlq": "1"}
    assert "--if-not-exists" in script
    worker = load_config(WORKER_CONFIG).kafka
    assert {worker.input_topic, worker.output_topic, worker.dlq_topic} == set(created)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell to syntax-check the script")
def test_topic_script_is_valid_sh() -> None:
    result = subprocess.run(
        ["sh", "-n", str(DEPLOY / "kafka" / "create-topics.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_workers(compose: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert worker["deploy"]["replicas"] == 3
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # The command parses as the real CLI's, and reads the mounted deploy/worker-config.yaml.
    context = _parse_cli(worker["command"])
    mounts = {target: source for source, target in _bind_sources(worker)}
    assert (REPO / mounts[context.params["config"]]).resolve() == WORKER_CONFIG
    settings = load_config(WORKER_CONFIG)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.redis.url.get_secret_value().startswith("redis://redis:6379/")
    assert settings.http.enabled and settings.http.port == 8080
    # The prometheusremotewrite exporter drops delta metrics.
    assert settings.spanmetrics.aggregation_temporality.value == "CUMULATIVE"
    # No more workers than input partitions.
    assert worker["deploy"]["replicas"] <= int(
        compose["services"]["kafka-init"]["environment"]["INPUT_PARTITIONS"]
    )
    # Docker's SIGKILL comes after the worker's own shutdown grace.
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    stop_grace = float(worker["stop_grace_period"].removesuffix("s"))
    assert stop_grace > settings.worker.shutdown_grace


def test_load_generator(compose: dict[str, Any]) -> None:
    loadgen = compose["services"]["loadgen"]
    assert loadgen["image"] == compose["services"]["worker"]["image"]
    context = _parse_cli(loadgen["command"])
    assert context.params["bootstrap_servers"] == "kafka:9092"
    assert context.params["topic"] == "otlp_spans"
    assert context.params["rate"] == 50
    assert loadgen["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def test_redis_persists_with_aof(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    named = [v.split(":") for v in redis["volumes"] if not v.startswith((".", "/"))]
    assert ["redis-data", "/data"] in [v[:2] for v in named]
    assert "redis-data" in compose["volumes"]


def test_collector_prometheus_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    collector = services["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    assert ("./deploy/otel-collector/config.yaml", "/etc/otelcol-contrib/config.yaml") in _bind_sources(
        collector
    )
    assert "--config=/etc/otelcol-contrib/config.yaml" in collector["command"]

    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert "--web.enable-remote-write-receiver" in prometheus["command"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    mounts = {target: source for source, target in _bind_sources(prometheus)}
    assert mounts[config_flag.split("=", 1)[1]] == "./deploy/prometheus/prometheus.yml"

    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = {target: source for source, target in _bind_sources(grafana)}
    assert mounts["/etc/grafana/provisioning/datasources"] == "./deploy/grafana/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./deploy/grafana/provisioning/dashboards"
    # The dashboard provider reads the directory the dashboards are mounted at.
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/spanmetrics.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == "./deploy/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (DEPLOY / "grafana/dashboards" / Path(home).name).is_file()


def test_prometheus_config(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_job = jobs["spanmetrics-worker"]
    (sd,) = worker_job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == load_config(WORKER_CONFIG).http.port
    assert "worker" in compose["services"]
    # The alert rules are loaded from where compose mounts them.
    mounts = {target: source for source, target in _bind_sources(compose["services"]["prometheus"])}
    assert [mounts[path] for path in config["rule_files"]] == ["./deploy/prometheus/alerts.yaml"]


def test_grafana_datasource() -> None:
    config = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["uid"] == "prometheus"


def test_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # The image's HEALTHCHECK polls the worker's /healthz; the load generator runs no HTTP server.
    assert services["loadgen"]["healthcheck"] == {"disable": True}
    assert "healthcheck" not in services["worker"]  # the image's own
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


# ---------------------------------------------------------------------------------- remote write variant

REMOTE_WRITE_FILE = REPO / "docker-compose.remote-write.yml"


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of mappings (enough for these files: maps merge, other values replace)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_remote_write_variant_is_valid_compose_spec() -> None:
    result = _compose_schema_check(REMOTE_WRITE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_remote_write_variant_feeds_prometheus_directly(
    compose: dict[str, Any], clean_env: pytest.MonkeyPatch
) -> None:
    override = yaml.safe_load(REMOTE_WRITE_FILE.read_text())
    assert override["name"] == compose["name"]
    assert set(override["services"]) <= set(compose["services"])
    stack = _merged(compose, override)
    services = stack["services"]
    # No Collector in the default profile set; the workers wait for Prometheus.
    assert services["otel-collector"]["profiles"] == ["collector"]
    worker = services["worker"]
    assert worker["depends_on"]["prometheus"]["condition"] == "service_started"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"  # kept from the base
    # The worker's configuration as the container gets it: file plus environment.
    for name, value in worker["environment"].items():
        clean_env.setenv(name, value)
    settings = load_config(WORKER_CONFIG)
    assert settings.kafka.output_topic == ""
    assert settings.remote_write is not None
    host_port, _, path = settings.remote_write.url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    assert host in services and host == "prometheus"
    assert "--web.enable-remote-write-receiver" in services["prometheus"]["command"]
    assert f"{port}:{port}" in services["prometheus"]["ports"] and path == "api/v1/write"
    # Remote write carries cumulative series only.
    assert settings.temporality.value == "CUMULATIVE"
