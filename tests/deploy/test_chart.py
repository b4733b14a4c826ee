"""helm/spanmetrics-worker: rendered by real helm (3 and 4), validated against Kubernetes schemas.

Built-in kinds are validated with kubernetes-validate (strict: unknown fields fail) for the
oldest Kubernetes the chart supports and the newest the package bundles; the KEDA ScaledObject
and the ServiceMonitor against strict JSON Schemas derived from their CRDs (see
tools/validate_chart.py). On top of that: the values schema and documentation, the ``fail``
guards, and what the workers need from the Deployment (probes, grace period, secrets, a config
file the real loader accepts).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.helpers import CHART, by_kind, render, validate_chart
from worker.config import load_config

CI_VALUES = {path.stem: path for path in validate_chart.ci_values_files()}
KEDA = CI_VALUES["keda-values"]
HPA = CI_VALUES["hpa-values"]
VARIANTS = {"default": (), **{name: (path,) for name, path in CI_VALUES.items()}}
RenderError = validate_chart.RenderError


def _values() -> dict[str, Any]:
    document = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(document, dict)
    return document


def _schema() -> dict[str, Any]:
    document = json.loads((CHART / "values.schema.json").read_text())
    assert isinstance(document, dict)
    return document


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _worker_config(docs: list[dict[str, Any]], tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(by_kind(docs)["ConfigMap"]["data"]["config.yaml"])
    return path


# --------------------------------------------------------------------------------------------------
# Values: schema and documentation
# --------------------------------------------------------------------------------------------------


def test_values_schema_is_a_valid_schema() -> None:
    jsonschema.Draft7Validator.check_schema(_schema())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_values_match_the_schema(variant: str) -> None:
    values = _values()
    for path in VARIANTS[variant]:
        values = _deep_merge(values, yaml.safe_load(path.read_text()))
    jsonschema.Draft7Validator(_schema()).validate(values)


def test_values_are_documented_helm_docs_style() -> None:
    """Every value has a `# --` comment, on itself or on the block it belongs to."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_at: dict[int, bool] = {}  # indent -> the enclosing key at that indent is documented
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match.group(1))
        for deeper in [i for i in documented_at if i >= indent]:
            del documented_at[deeper]
        comments = []
        for previous in reversed(lines[:number]):
            if previous.strip().startswith("#"):
                comments.append(previous.strip())
            else:
                break
        own = any(comment.startswith("# --") for comment in comments)
        inherited = any(documented_at.values())
        value = line.split(":", 1)[1].strip()
        is_leaf = bool(value) and not value.startswith("#")
        if is_leaf and not (own or inherited):
            undocumented.append(f"line {number + 1}: {match.group(2)}")
        documented_at[indent] = own or inherited
    assert undocumented == []


def test_every_value_is_in_the_schema() -> None:
    def walk(values: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
        missing = []
        properties = schema.get("properties", {})
        for key, value in values.items():
            if key not in properties:
                if schema.get("additionalProperties") is False:
                    missing.append(f"{path}{key}")
                continue
            if isinstance(value, dict) and properties[key].get("properties"):
                missing += walk(value, properties[key], f"{path}{key}.")
        return missing

    assert walk(_values(), _schema(), "") == []


# --------------------------------------------------------------------------------------------------
# Lint, render, validate
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_strict(helm: Path, variant: str) -> None:
    validate_chart.lint(helm, VARIANTS[variant])


@pytest.mark.parametrize("kube_version", validate_chart.KUBE_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_validate(helm: Path, variant: str, kube_version: str) -> None:
    docs = render(helm, *VARIANTS[variant], kube_version=kube_version)
    assert validate_chart.validate_manifests(docs) == []


def test_validation_is_not_vacuous(helm: Path) -> None:
    docs = copy.deepcopy(render(helm, KEDA))
    kinds = by_kind(docs)
    kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    kinds["ScaledObject"]["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5
    kinds["ServiceMonitor"]["spec"]["endpoints"][0]["intervall"] = "30s"
    kinds["PodDisruptionBudget"]["spec"]["maxUnavailable"] = [1]
    problems = "\n".join(validate_chart.validate_manifests(docs))
    for expected in ("httpGett", "lagThreshold", "intervall", "maxUnavailable"):
        assert expected in problems


def test_default_render(helm: Path) -> None:
    kinds = by_kind(render(helm))
    assert set(kinds) == {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget"}
    assert kinds["Deployment"]["spec"]["replicas"] == 3


# --------------------------------------------------------------------------------------------------
# The Deployment the workers need
# --------------------------------------------------------------------------------------------------


def test_probes_on_the_http_port(helm: Path) -> None:
    container = _container(render(helm))
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["args"] == ["run", "--config", "/etc/spanmetrics/config.yaml"]
    assert (
        container["image"]
        == f"spanmetrics-worker:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    )


def test_http_port_follows_the_value(helm: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    docs = render(helm, sets=("http.port=9000",))
    assert _container(docs)["ports"][0]["containerPort"] == 9000
    assert load_config(_worker_config(docs, tmp_path)).http.port == 9000


@pytest.mark.parametrize(("grace", "extra"), [(25, 10), (40, 5)])
def test_termination_grace_exceeds_the_shutdown_grace(
    helm: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch, grace: int, extra: int
) -> None:
    docs = render(
        helm, sets=(f"worker.shutdownGraceSeconds={grace}", f"worker.terminationGraceExtraSeconds={extra}")
    )
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    settings = load_config(_worker_config(docs, tmp_path))
    assert settings.worker.shutdown_grace == grace
    assert pod["terminationGracePeriodSeconds"] == grace + extra > settings.worker.shutdown_grace


def test_security_context(helm: Path) -> None:
    docs = render(helm)
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    container = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 1000
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/etc/spanmetrics"]["readOnly"] is True
    assert "/tmp" in mounts  # writable scratch space on a read-only root
    assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_map_is_a_valid_worker_config(
    helm: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch, variant: str
) -> None:
    """The generated file passes the worker's own loader, with the secrets the pod gets from env."""
    docs = render(helm, *VARIANTS[variant])
    for env in _container(docs).get("env", []):
        if "secretKeyRef" in env.get("valueFrom", {}):
            clean_env.setenv(env["name"], "from-a-secret")
    settings = load_config(_worker_config(docs, tmp_path))
    values = _values()
    for path in VARIANTS[variant]:
        values = _deep_merge(values, yaml.safe_load(path.read_text()))
    assert settings.kafka.bootstrap_servers == values["kafka"]["bootstrapServers"]
    assert settings.kafka.input_topic == values["kafka"]["inputTopic"]
    assert settings.kafka.group_id == values["kafka"]["groupId"]
    assert settings.redis.url.get_secret_value() == values["redis"]["url"]
    assert settings.http.enabled


def test_secrets_come_from_existing_secrets(helm: Path) -> None:
    docs = render(helm, KEDA)
    env = {item["name"]: item for item in _container(docs)["env"]}
    assert env["SPANMETRICS_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "spanmetrics-kafka",
        "key": "sasl-password",
    }
    assert env["SPANMETRICS_REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "spanmetrics-redis",
        "key": "redis-password",
    }
    config = yaml.safe_load(by_kind(docs)["ConfigMap"]["data"]["config.yaml"])
    assert "sasl_password" not in config["kafka"] and "password" not in config["redis"]
    # Without secrets configured, no env at all.
    assert "env" not in _container(render(helm))


def test_config_checksum_rolls_pods_on_config_changes_only(helm: Path) -> None:
    def checksum(*sets: str) -> str:
        pod = by_kind(render(helm, sets=sets))["Deployment"]["spec"]["template"]
        value = pod["metadata"]["annotations"]["checksum/config"]
        assert re.fullmatch(r"[0-9a-f]{64}", value)
        return str(value)

    base = checksum()
    assert checksum("config.log.level=debug") != base
    assert checksum("kafka.groupId=other") != base
    assert checksum("resources.requests.cpu=1") == base
    assert checksum("podAnnotations.team=obs") == base


def test_labels_and_selectors(helm: Path) -> None:
    docs = render(helm, KEDA)
    kinds = by_kind(docs)
    standard = {
        "helm.sh/chart",
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
    }
    for doc in docs:
        assert standard <= set(doc["metadata"]["labels"]), doc["kind"]
        assert doc["metadata"]["namespace"] == "observability", doc["kind"]
    deployment = kinds["Deployment"]["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    selector = deployment["selector"]["matchLabels"]
    assert "app.kubernetes.io/version" not in selector  # immutable selector, stable across upgrades
    assert selector.items() <= pod_labels.items()
    assert kinds["Service"]["spec"]["selector"] == selector
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    monitor = kinds["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= kinds["Service"]["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == [p["name"] for p in kinds["Service"]["spec"]["ports"]]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert kinds["ServiceMonitor"]["metadata"]["labels"]["release"] == "prometheus"
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == "http"


# --------------------------------------------------------------------------------------------------
# Autoscaling
# --------------------------------------------------------------------------------------------------


def test_keda_scaled_object(helm: Path) -> None:
    kinds = by_kind(render(helm, KEDA))
    assert "HorizontalPodAutoscaler" not in kinds
    assert "replicas" not in kinds["Deployment"]["spec"], "KEDA owns the replica count"
    values = _deep_merge(_values(), yaml.safe_load(KEDA.read_text()))
    spec = kinds["ScaledObject"]["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": kinds["Deployment"]["metadata"]["name"],
    }
    assert spec["maxReplicaCount"] == values["autoscaling"]["keda"]["maxReplicaCount"]
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"] <= values["kafka"]["inputPartitions"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["bootstrapServers"] == values["kafka"]["bootstrapServers"]
    assert metadata["consumerGroup"] == values["kafka"]["groupId"]
    assert metadata["topic"] == values["kafka"]["inputTopic"]
    assert metadata["lagThreshold"] == str(values["autoscaling"]["keda"]["lagThreshold"])
    assert metadata["allowIdleConsumers"] == "false"
    assert all(isinstance(value, str) for value in metadata.values())
    assert trigger["authenticationRef"] == {"name": "kafka-sasl", "kind": "TriggerAuthentication"}


def test_hpa(helm: Path) -> None:
    kinds = by_kind(render(helm, HPA))
    assert "ScaledObject" not in kinds
    assert "replicas" not in kinds["Deployment"]["spec"], "the HPA owns the replica count"
    spec = kinds["HorizontalPodAutoscaler"]["spec"]
    assert spec["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 12)
    assert {m["resource"]["name"] for m in spec["metrics"]} == {"cpu", "memory"}
    assert kinds["PodDisruptionBudget"]["spec"] == {
        "minAvailable": 1,
        "selector": kinds["PodDisruptionBudget"]["spec"]["selector"],
    }


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("autoscaling.keda.enabled=true", "autoscaling.hpa.enabled=true"), "mutually exclusive"),
        (
            ("autoscaling.keda.enabled=true", "autoscaling.keda.maxReplicaCount=13"),
            "autoscaling.keda.maxReplicaCount (13) exceeds kafka.inputPartitions (12)",
        ),
        (
            ("autoscaling.keda.enabled=true", "kafka.inputPartitions=6"),
            "autoscaling.keda.maxReplicaCount (12) exceeds kafka.inputPartitions (6)",
        ),
        (
            (
                "autoscaling.keda.enabled=true",
                "autoscaling.keda.minReplicaCount=5",
                "autoscaling.keda.maxReplicaCount=4",
            ),
            "minReplicaCount (5) exceeds",
        ),
        (
            ("autoscaling.hpa.enabled=true", "autoscaling.hpa.maxReplicas=20"),
            "autoscaling.hpa.maxReplicas (20) exceeds kafka.inputPartitions (12)",
        ),
        (("replicaCount=13",), "replicaCount (13) exceeds kafka.inputPartitions (12)"),
        (("kafka.securityProtocol=SASL_SSL",), "needs kafka.sasl.mechanism"),
        (("kafka.bogus=1",), "bogus"),
        (("kafka.securityProtocol=TLS",), "securityProtocol"),
        (("kafka.inputPartitions=0",), "inputPartitions"),
        (("worker.terminationGraceExtraSeconds=0",), "terminationGraceExtraSeconds"),
    ],
)
def test_render_refuses(helm: Path, sets: tuple[str, ...], message: str) -> None:
    with pytest.raises(RenderError) as error:
        render(helm, sets=sets)
    assert message in error.value.stderr


def test_keda_at_the_partition_count_renders(helm: Path) -> None:
    kinds = by_kind(
        render(helm, sets=("autoscaling.keda.enabled=true", "autoscaling.keda.maxReplicaCount=12"))
    )
    assert kinds["ScaledObject"]["spec"]["maxReplicaCount"] == 12


def test_service_monitor_is_optional(helm: Path) -> None:
    assert "ServiceMonitor" not in by_kind(render(helm))
    assert "ServiceMonitor" in by_kind(render(helm, sets=("serviceMonitor.enabled=true",)))


# --------------------------------------------------------------------------------------------------
# Secrets never in the ConfigMap; the config passthrough checked by the worker's schema
# --------------------------------------------------------------------------------------------------


def test_a_password_in_the_redis_url_is_refused(helm: Path) -> None:
    with pytest.raises(RenderError) as error:
        render(helm, sets=("redis.url=redis://:hunter2@redis:6379/0",))
    assert "redis.url contains a password" in error.value.stderr
    assert "redis.existingSecret" in error.value.stderr and "redis.password" in error.value.stderr
    # A user name alone is no secret.
    render(helm, sets=("redis.url=redis://spanmetrics@redis:6379/0",))


def test_a_chart_made_secret_carries_the_redis_password(
    helm: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    docs = render(helm, sets=("redis.password=hunter2",))
    kinds = by_kind(docs)
    secret = kinds["Secret"]
    name = kinds["Deployment"]["metadata"]["name"] + "-redis"
    assert secret["metadata"]["name"] == name
    assert secret["data"] == {"redis-password": "aHVudGVyMg=="}  # base64 of hunter2
    env = {item["name"]: item for item in _container(docs)["env"]}
    assert env["SPANMETRICS_REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": name,
        "key": "redis-password",
    }
    for doc in docs:
        if doc["kind"] != "Secret":
            assert "hunter2" not in json.dumps(doc) and "aHVudGVyMg" not in json.dumps(doc), doc["kind"]
    # The worker reads it from the env the pod gets.
    clean_env.setenv("SPANMETRICS_REDIS__PASSWORD", "hunter2")
    settings = load_config(_worker_config(docs, tmp_path))
    assert settings.redis.password is not None and settings.redis.password.get_secret_value() == "hunter2"
    annotations = kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations  # a new password rolls the pods
    assert "Secret" not in by_kind(render(helm))


def test_redis_password_and_existing_secret_are_exclusive(helm: Path) -> None:
    with pytest.raises(RenderError) as error:
        render(helm, sets=("redis.password=x", "redis.existingSecret=mine"))
    assert "redis.password and redis.existingSecret are both set" in error.value.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("config.kafka.bogus=1",), "bogus"),
        (("config.redis.password=hunter2",), "password"),  # a secret: never in the ConfigMap
        (("config.kafka.sasl_password=hunter2",), "sasl_password"),
        (("config.spanmetrics.metrics_flush_interval=soon",), "metrics_flush_interval"),
        (("config.spanmetrics.histogram.explicit.buckets=2ms",), "buckets"),
        (("config.log.level=verbose",), "level"),
        (("config.worker.max_active_series_per_tenant=-1",), "max_active_series_per_tenant"),
    ],
)
def test_config_passthrough_is_checked_at_render_time(
    helm: Path, sets: tuple[str, ...], message: str
) -> None:
    with pytest.raises(RenderError) as error:
        render(helm, sets=sets)
    assert "values don't meet the specifications of the schema" in error.value.stderr
    assert message in error.value.stderr


def test_config_passthrough_accepts_what_the_worker_accepts(
    helm: Path, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Upstream spellings the worker normalises (durations, unit case, temporality prefix, bare
    dimension names) and the Tempo style both render, and the worker loads the result."""
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(
        yaml.safe_dump(
            {
                "config": {
                    "spanmetrics": {
                        "dimensions": ["http.method", {"name": "http.route", "default": "/"}],
                        "histogram": {"unit": "MS", "explicit": {"buckets": ["2ms", 0.5, "1m30s"]}},
                        "aggregation_temporality": "AGGREGATION_TEMPORALITY_CUMULATIVE",
                        "metrics_flush_interval": "1m30s",
                    },
                    "worker": {"shutdown_grace": 25, "max_active_series_per_tenant": 5000},
                }
            }
        )
    )
    settings = load_config(_worker_config(render(helm, lenient), tmp_path))
    assert settings.spanmetrics.metrics_flush_interval == 90.0
    tempo = tmp_path / "tempo.yaml"
    tempo_config = yaml.safe_load((CHART.parents[1] / "examples" / "tempo-mode.yaml").read_text())
    for section, options in (("kafka", ("bootstrap_servers", "group_id")), ("redis", ("url",))):
        for option in options:
            tempo_config.get(section, {}).pop(option, None)
    # null removes the chart's default connector-style sections (one style per file).
    tempo.write_text(yaml.safe_dump({"config": {**tempo_config, "spanmetrics": None, "servicegraphs": None}}))
    assert load_config(_worker_config(render(helm, tempo), tmp_path)).tempo_mode


# --------------------------------------------------------------------------------------------------
# KEDA agrees with the worker; the PrometheusRule
# --------------------------------------------------------------------------------------------------


async def test_keda_offset_reset_policy_agrees_with_the_worker(helm: Path) -> None:
    from worker.config import KafkaConfig
    from worker.stream.clients import make_consumer

    consumer = make_consumer(KafkaConfig())
    try:
        worker_policy = consumer._auto_offset_reset
    finally:
        await consumer.stop()
    (trigger,) = by_kind(render(helm, KEDA))["ScaledObject"]["spec"]["triggers"]
    assert trigger["metadata"]["offsetResetPolicy"] == worker_policy == "earliest"
    with pytest.raises(RenderError) as error:
        render(helm, sets=("autoscaling.keda.enabled=true", "autoscaling.keda.offsetResetPolicy=latest"))
    assert 'offsetResetPolicy "latest" disagrees with the worker' in error.value.stderr


def test_prometheus_rule_carries_the_repository_rules(helm: Path) -> None:
    assert "PrometheusRule" not in by_kind(render(helm))
    rule = by_kind(render(helm, KEDA))["PrometheusRule"]
    repository = yaml.safe_load((CHART.parents[1] / "deploy" / "prometheus" / "alerts.yaml").read_text())
    assert rule["spec"] == repository
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    annotations = rule["spec"]["groups"][0]["rules"][0]["annotations"]
    assert "{{ $labels.instance }}" in annotations["summary"]  # left for Prometheus, not templated by helm
