"""Dockerfile and .dockerignore, read as text (no Docker engine here).

Multi-stage with the build in the builder only, slim Python 3.11, non-root, exec-form entrypoint
that is the project's console script, and a build context that holds every file the COPYs need.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.helpers import REPO
from worker.config import HttpConfig, load_config

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "dangling line continuation"
    result = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _stages() -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in _instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.IGNORECASE)
            assert match, rest
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            stages.append(Stage(base, match.group(2)))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def _dockerignore_included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        pattern = pattern.strip("/")
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        compiled = regex(pattern.removeprefix("!"))
        if any(compiled.match(candidate) for candidate in candidates):
            included = negated
    return included


def _ignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_multi_stage_slim_python_311() -> None:
    _, stages = _stages()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    for stage in (builder, final):
        assert re.fullmatch(r"python:3\.11[\w.]*-slim(-\w+)?", stage.base), stage.base
    # The wheel is built in the builder; the final stage only copies the virtualenv.
    builder_runs = " ".join(rest for keyword, rest in builder.instructions if keyword == "RUN")
    assert "pip wheel" in builder_runs
    final_runs = " ".join(rest for keyword, rest in final.instructions if keyword == "RUN")
    for tool in ("pip ", "apt-get", "gcc", "build-essential", "wheel"):
        assert tool not in final_runs, f"final stage runs {tool!r}"
    copies = [rest for keyword, rest in final.instructions if keyword == "COPY"]
    assert any(rest.startswith("--from=builder /opt/venv") for rest in copies)


def test_non_root_user() -> None:
    _, stages = _stages()
    final = stages[-1]
    users = [rest for keyword, rest in final.instructions if keyword == "USER"]
    assert users, "no USER in the final stage"
    stage_args = dict(rest.partition("=")[::2] for keyword, rest in final.instructions if keyword == "ARG")
    user = re.sub(r"\$\{(\w+)\}", lambda m: stage_args[m.group(1)], users[-1])
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, "run as a numeric non-root UID (Kubernetes runAsNonRoot)"
    assert gid.isdigit() and int(gid) >= 1000
    # The chart's pod security context uses the same numeric IDs.
    values = (REPO / "helm/spanmetrics-worker/values.yaml").read_text()
    assert f"runAsUser: {uid}" in values and f"runAsGroup: {gid}" in values


def test_exec_form_entrypoint_runs_the_console_script() -> None:
    _, stages = _stages()
    final = dict(stages[-1].instructions)
    entrypoint = json.loads(final["ENTRYPOINT"])
    command = json.loads(final["CMD"])
    assert entrypoint == ["spanmetrics"]
    assert command == ["run", "--config", "/etc/spanmetrics/config.yaml"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["spanmetrics"] == "worker.cli:main"
    builder_runs = " ".join(rest for keyword, rest in stages[0].instructions if keyword == "RUN")
    assert f"install --no-index --find-links /wheels {pyproject['project']['name']}" in builder_runs
    assert pyproject["project"]["requires-python"] == ">=3.11"


def test_expose_and_healthcheck_use_the_http_port() -> None:
    _, stages = _stages()
    final = stages[-1].instructions
    port = HttpConfig().port
    assert ("EXPOSE", str(port)) in final
    (healthcheck,) = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck
    assert "CMD [" in healthcheck  # exec form: no shell needed in the image


def test_default_config_in_the_image_is_valid(clean_env: pytest.MonkeyPatch) -> None:
    _, stages = _stages()
    copies = [rest.split() for keyword, rest in stages[-1].instructions if keyword == "COPY"]
    (source,) = [args[0] for args in copies if args[-1] == "/etc/spanmetrics/config.yaml"]
    load_config(REPO / source)


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    patterns = _ignore_patterns()
    _, stages = _stages()
    sources: list[str] = []
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword == "COPY" and not rest.startswith("--from"):
                sources += [s for s in rest.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        # The compiled ingest's build outputs (pip install -e leaves them in the tree) are
        # left out on purpose: the image builds its own.
        needed = [
            f for f in files if "__pycache__" not in f.parts and f.suffix != ".so" and f.name != "_native.c"
        ]
        assert needed
        for file in needed:
            relative = file.relative_to(REPO).as_posix()
            assert _dockerignore_included(relative, patterns), f"{relative} is excluded by .dockerignore"


def test_build_outputs_of_the_compiled_ingest_stay_out_of_the_context() -> None:
    patterns = _ignore_patterns()
    for built in ("worker/processors/_native.cpython-311-x86_64-linux-gnu.so",
                  "worker/processors/_native.c"):  # fmt: skip
        assert not _dockerignore_included(built, patterns)
    assert _dockerignore_included("worker/processors/_native.pyx", patterns)
    assert _dockerignore_included("setup.py", patterns)


def test_builder_copies_every_package_of_the_wheel() -> None:
    """devtools included: the compose stack runs ``spanmetrics loadgen`` from this image."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert "devtools" in packages
    _, stages = _stages()
    copied = {rest.split()[0].rstrip("/") for keyword, rest in stages[0].instructions if keyword == "COPY"}
    missing = [package for package in packages if package not in copied]
    assert not missing, f"the builder does not COPY {missing}"


def test_package_data_reaches_the_build_context() -> None:
    patterns = _ignore_patterns()
    lua = sorted((REPO / "state" / "lua").glob("*.lua"))
    assert lua
    for file in lua:
        assert _dockerignore_included(file.relative_to(REPO).as_posix(), patterns)


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "tests/unit/test_config.py",
        "helm/spanmetrics-worker/values.yaml",
        "worker/__pycache__/cli.cpython-311.pyc",
        "spanmetrics_worker.egg-info/PKG-INFO",
        "deploy/grafana/dashboards/spanmetrics.json",
    ],
)
def test_dockerignore_keeps_the_rest_out(path: str) -> None:
    assert not _dockerignore_included(path, _ignore_patterns())


def test_dockerignore_matcher() -> None:
    patterns = ["*", "!worker/", "**/__pycache__"]
    assert _dockerignore_included("worker/cli.py", patterns)
    assert not _dockerignore_included("worker/__pycache__/x.pyc", patterns)
    assert not _dockerignore_included("README.md", patterns)
    assert not _dockerignore_included(str(Path("docs") / "x.md"), patterns)
