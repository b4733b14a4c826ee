"""Start-up errors an operator meets first, and ``spanmetrics dev``'s stop: one line naming the
option and env var (and how long it tried), exit 1, no traceback; Ctrl-C stops within seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.servers import EmbeddedRedis, free_port

pytestmark = pytest.mark.timeout(240)


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL") and not k.startswith("SPANMETRICS_")
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _run(config: dict[str, Any], tmp_path: Path) -> tuple[int, str, float]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"log": {"format": "json"}, **config}))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    return result.returncode, result.stderr, time.monotonic() - started


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("spanmetrics: error:")]
    return line


def test_http_port_in_use_names_the_option_and_env(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr, _ = _run(
            {"http": {"host": "127.0.0.1", "port": port}, "kafka": {"bootstrap_servers": "127.0.0.1:1"}},
            tmp_path,
        )
    assert code == 1
    line = _error_line(stderr)
    assert f"http port 127.0.0.1:{port}: address already in use" in line
    assert "http.port" in line and "SPANMETRICS_HTTP__PORT" in line


def test_unreachable_redis_names_the_address_option_env_and_time(tmp_path: Path) -> None:
    port = free_port()
    code, stderr, _ = _run(
        {"http": {"enabled": False}, "redis": {"url": f"redis://127.0.0.1:{port}/0"}}, tmp_path
    )
    assert code == 1
    line = _error_line(stderr)
    assert f"cannot start: Redis at redis://127.0.0.1:{port}/0" in line
    assert "redis.url" in line and "REDIS_URL" in line and "SPANMETRICS_REDIS__URL" in line
    assert "(tried 0." in line or "(tried 1." in line


def test_unreachable_kafka_names_the_address_option_env_and_time(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    code, stderr, _ = _run(
        {
            "http": {"enabled": False},
            "redis": {"url": redis_url, "key_prefix": "edges"},
            "kafka": {"bootstrap_servers": f"127.0.0.1:{port}"},
        },
        tmp_path,
    )
    assert code == 1
    line = _error_line(stderr)
    assert f"cannot start: Kafka at 127.0.0.1:{port} (PLAINTEXT): KafkaConnectionError: Unable to" in line
    assert "kafka.bootstrap_servers" in line and "KAFKA_BOOTSTRAP_SERVERS" in line
    assert "(tried " in line


def test_dev_with_a_bad_kafka_bootstrap_prints_one_line() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "worker", "dev", "--duration", "5"],
        capture_output=True,
        text=True,
        env=_env(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}"),
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert f"Kafka at 127.0.0.1:{port} (from KAFKA_BOOTSTRAP_SERVERS) did not answer within 10 s" in line
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # aiokafka's own lines silenced


def test_embedded_redis_is_out_of_our_process_group() -> None:
    """A terminal's Ctrl-C (SIGINT to the foreground group) must not kill it before the workers'
    final flush."""
    server = EmbeddedRedis()
    server.start()
    try:
        assert server.pid is not None
        assert os.getpgid(server.pid) != os.getpgid(0)
    finally:
        server.stop()


def test_dev_ctrl_c_says_it_stops_and_stops_within_seconds(tmp_path: Path) -> None:
    """`--duration 0` runs until interrupted; SIGINT to the whole group, as a terminal sends it."""
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "dev", "--duration", "0", "--workers", "2"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=_env(),
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while "workers 2/2 running" not in out_path.read_text(errors="replace"):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "the table never showed both workers"
                time.sleep(0.5)
            time.sleep(8)  # a few flushes: the workers hold state to flush on the way out
            assert proc.poll() is None, "--duration 0 must run until interrupted"
            sent = time.monotonic()
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(timeout=60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stderr = err_path.read_text(errors="replace")
    assert code == 0, stderr
    assert "spanmetrics dev: stopping" in stderr
    assert took < 8, f"{took:.1f} s from Ctrl-C to exit"
