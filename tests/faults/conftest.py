"""Fixtures of the fault scenarios: their own servers (they kill, freeze and restart them), reports.

Every scenario starts its own embedded Tansu broker and Valkey server (function scope), so
freezing or crashing one never disturbs another test. With ``KAFKA_BOOTSTRAP_SERVERS`` /
``REDIS_URL`` set, the scenarios that only disturb workers use those servers, and the ones that
must stop or pause a server are skipped (we never stop a server we did not start).

``pytest tests/faults --soak`` (or ``SPANMETRICS_SOAK=<factor>``) multiplies the durations and
kill counts (default factor with ``--soak``: 5). The option is registered here; pytest only
reads it when this directory is named on the command line (``pytest --soak`` from the root
does not know it - use the environment variable there).

At the end of the run a "fault scenarios" section prints what every scenario did: kills,
rebalances, recovery times, and produced versus counted totals.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.servers import (
    KAFKA_ENV_VAR,
    REDIS_ENV_VAR,
    EmbeddedKafka,
    EmbeddedRedis,
    ExternalKafka,
    ExternalRedis,
    KafkaEndpoint,
    RedisEndpoint,
    free_port,
)

from .harness import ScenarioReport

_HERE = Path(__file__).parent
SOAK_ENV = "SPANMETRICS_SOAK"
DEFAULT_SOAK_FACTOR = 5
MARKER = "faults: fault-injection scenarios against their own servers (SIGKILL, SIGSTOP, outages)"

_reports = pytest.StashKey[list[ScenarioReport]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help=f"run the fault scenarios {DEFAULT_SOAK_FACTOR}x longer, with {DEFAULT_SOAK_FACTOR}x the kills",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Until pyproject lists the marker (with --strict-markers an unknown marker is an error).
    config.addinivalue_line("markers", MARKER)
    config.stash[_reports] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test here ``faults`` and ``integration`` (real servers; ``-m "not faults"`` skips them)."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    reports = config.stash.get(_reports, [])
    if not reports:
        return
    terminalreporter.section("fault scenarios")
    for report in reports:
        for line in report.lines():
            terminalreporter.write_line(line)


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> int:
    """How much longer than the default the scenario runs (1: the CI default)."""
    from_env = os.environ.get(SOAK_ENV, "").strip()
    if from_env:
        return max(1, int(from_env))
    return DEFAULT_SOAK_FACTOR if request.config.getoption("--soak", default=False) else 1


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[ScenarioReport]:
    """The scenario's report; printed in the terminal summary whatever the outcome."""
    scenario = ScenarioReport(request.node.name)
    request.config.stash.setdefault(_reports, []).append(scenario)
    yield scenario
    scenario.seconds = time.monotonic() - scenario.started


@pytest.fixture
def kafka() -> Iterator[KafkaEndpoint]:
    """A broker for scenarios that leave the broker alone: the external one, else our own."""
    external = os.environ.get(KAFKA_ENV_VAR, "").strip()
    if external:
        yield ExternalKafka(external)
        return
    with EmbeddedKafka() as server:
        yield server


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisEndpoint]:
    """A Redis for scenarios that leave Redis alone: the external one, else our own."""
    external = os.environ.get(REDIS_ENV_VAR, "").strip()
    if external:
        yield ExternalRedis(external)
        return
    with EmbeddedRedis(data_dir=tmp_path / "valkey") as server:
        yield server


@pytest.fixture
def own_kafka() -> Iterator[EmbeddedKafka]:
    """A broker this scenario may freeze: always embedded (skipped when an external one is set)."""
    if os.environ.get(KAFKA_ENV_VAR, "").strip():
        pytest.skip(f"pauses the broker; not done to the external {KAFKA_ENV_VAR}")
    with EmbeddedKafka() as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis this scenario may crash and restart (same port, same AOF directory)."""
    if os.environ.get(REDIS_ENV_VAR, "").strip():
        pytest.skip(f"stops Redis; not done to the external {REDIS_ENV_VAR}")
    with EmbeddedRedis(port=free_port(), data_dir=tmp_path / "valkey") as server:
        yield server
