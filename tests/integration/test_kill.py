"""Invariant 1 under SIGKILL: worker processes killed at random moments, totals exact."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from devtools.servers import create_topics

from .helpers import produce, read_until, span_count, traces


def _start_worker(config: Path, log_dir: Path, name: str) -> subprocess.Popen[bytes]:
    with (log_dir / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def test_sigkill_at_random_moments_counts_every_span_once(
    kafka_bootstrap: str, redis_url: str, unique_name: str, tmp_path: Path
) -> None:
    name = unique_name
    await create_topics(kafka_bootstrap, {f"{name}-in": 4, f"{name}-out": 2, f"{name}-dlq": 1})
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap_servers": kafka_bootstrap,
                    "input_topic": f"{name}-in",
                    "output_topic": f"{name}-out",
                    "dlq_topic": f"{name}-dlq",
                    "group_id": f"{name}-group",
                    "session_timeout": "6s",
                    "heartbeat_interval": "1s",
                    "max_poll_records": 20,
                },
                "redis": {"url": redis_url, "key_prefix": name},
                "spanmetrics": {"metrics_flush_interval": "500ms"},
                "http": {"enabled": False},
                "log": {"format": "json"},
            }
        )
    )
    rng = random.Random(11)
    workers = [_start_worker(config, tmp_path, f"w{i}") for i in range(2)]
    produced = 0
    kills = 0
    try:
        for round_number in range(5):
            batch = traces(80, seed=100 + round_number)
            produced += span_count(r for _, r in batch)
            await produce(kafka_bootstrap, f"{name}-in", [(k, r.SerializeToString()) for k, r in batch])
            await asyncio.sleep(rng.uniform(0.3, 2.5))
            victim = rng.randrange(len(workers))
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            kills += 1
            workers[victim] = _start_worker(config, tmp_path, f"w{victim}-{round_number}")
        observed = await read_until(
            kafka_bootstrap, f"{name}-out", lambda o: o.total() >= produced, timeout=120
        )
        await asyncio.sleep(2)  # a little longer: totals must not overshoot later
        observed = await read_until(
            kafka_bootstrap, f"{name}-out", lambda o: False, timeout=3, observed=observed
        )
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in workers:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log"))
    assert kills == 5
    assert observed.total("calls") == produced, logs
