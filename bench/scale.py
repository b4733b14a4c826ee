"""N active series through one real worker process: per flush its duration, series emitted, RSS,
the event loop's worst stall; Redis bytes per series; checks its own result (issue 18).

``python bench/scale.py --series 100000`` starts the embedded broker and Valkey (or uses
``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL``), pre-produces spans that each start their own
``calls`` + ``duration`` series (a unique ``enduser.id``; service graphs on add a few edge series),
then runs one worker (``python -m worker run``) from an empty consumer group:

1. catch-up: the worker consumes the backlog (``--buffered``: its ``max_buffered_spans``, small
   so that merge-only flushes happen while it catches up, as under a real backlog);
2. ``--steady`` + 1 emissions after the backlog is applied, with nothing new (idle flushes:
   every series emitted again); the last ``--steady`` are the steady figures.

Per flush it prints the worker's flush log line (duration, series emitted, Redis step, fold,
encode + send), the worker's RSS at that time, and the event loop's worst stall during the flush:
measured from outside as the worst lateness of a ``/healthz`` probe sent every 50 ms (works on
any version), and, when the worker reports it, the worker's own ``loop_max_stall_seconds``.
It also prints the times between emissions against the interval.

Checks (exit status 1 when one fails): every steady flush emitted the N series the worker holds
in Redis (``calls`` + ``duration`` per span series, plus the service-graph series), and the
output topic's latest cumulative ``calls`` points add up to exactly the spans produced.
``--code DIR`` runs the worker of another checkout (for before/after figures).

    python bench/scale.py --series 100000
    python bench/scale.py --series 300000 --json bench/results/scale-300k.json
    python bench/scale.py --series 100000 --code /tmp/base   # the same with older code
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from e2e import (
    BASELINE,
    DIMENSIONS,
    INPUT_PARTITIONS,
    OUTPUT_PARTITIONS,
    PATH_ENV,
    RESULTS_DIR,
    SERIES_DIMENSION,
    Context,
    OutputReader,
    _flushes,
    _redis_series_figures,
    event_time,
    generate_series_load,
    machine_description,
    proc_status,
    produce,
    source_state,
    spawn_worker,
    stop_workers,
    write_config,
)
from redis.asyncio import Redis

from devtools.servers import create_topics, kafka_from_env_or_embedded, redis_from_env_or_embedded

#: How often /healthz is probed; a probe's lateness beyond its own round trip is a loop stall.
PROBE_PERIOD = 0.05


def say(message: str) -> None:
    print(f"[scale {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Probe:
    """GETs /healthz every PROBE_PERIOD; keeps (send time, latency) and the RSS of the worker."""

    def __init__(self, port: int, pid: int) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.rss: list[tuple[float, int]] = []

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            while True:
                sent = time.time()
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(self.url) as response:
                        await response.read()
                    self.samples.append((sent, time.time() - sent))
                status = proc_status(self.pid)
                if status:
                    self.rss.append((time.time(), status["VmRSS"]))
                await asyncio.sleep(PROBE_PERIOD)

    def worst_latency(self, begin: float, end: float) -> float:
        """The slowest answer to a probe sent in [begin, end] (or answered in it)."""
        return max((lat for sent, lat in self.samples if begin <= sent + lat and sent <= end), default=0.0)

    def rss_mib(self, at: float) -> float:
        before = [kib for t, kib in self.rss if t <= at]
        return round((before[-1] if before else 0) / 1024, 1)


async def _wait(predicate: Any, worker: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if not worker.alive():
            raise RuntimeError(f"worker exited while waiting for {what}")
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


async def run(args: argparse.Namespace, bootstrap: str, redis_url: str, log_dir: Path) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    name = f"scale-{run_id}"
    topic = f"{name}-in"
    if args.code:
        BASELINE["base"] = Path(args.code).resolve()
        PATH_ENV["base"] = PATH_ENV["pure" if args.pure else "native"]
    path = "base" if args.code else ("pure" if args.pure else "native")
    say(f"generating spans for {args.series:,} series")
    load = await asyncio.to_thread(generate_series_load, args.series, 6)
    topics = {topic: INPUT_PARTITIONS, f"{name}-out": OUTPUT_PARTITIONS, f"{name}-dlq": 1}
    await create_topics(bootstrap, topics)
    say(f"producing {load.spans:,} spans in {len(load.records):,} records")
    await produce(bootstrap, topic, load.records)
    client = Redis.from_url(redis_url)
    info_before = await client.info("memory")
    port = _free_port()
    ctx = Context(bootstrap, redis_url, None, None, run_id, log_dir, topic, load, args.interval, args.timeout)
    config = log_dir / "config.yaml"
    write_config(
        config,
        ctx,
        name=name,
        input_topic=topic,
        dimensions=[*DIMENSIONS, {"name": SERIES_DIMENSION}],
        flush_interval=args.interval,
        worker={
            "max_active_series_per_tenant": 10 * args.series,
            "max_buffered_spans": args.buffered,
            **({} if args.kept is None else {"max_kept_series": args.kept}),
        },
    )
    text = config.read_text().replace("http:\n  enabled: false", f"http:\n  enabled: true\n  port: {port}")
    config.write_text(text)
    reader = OutputReader(bootstrap, f"{name}-out", load.spans)
    await reader.start()
    started = time.time()
    worker = spawn_worker(1, config, log_dir, None, path)
    say(f"worker pid {worker.pid} ({path}), flush interval {args.interval:g}s, logs in {log_dir}")
    probe = Probe(port, worker.pid)
    probing = asyncio.create_task(probe.run())
    try:

        def applied() -> bool:
            return any(int(f.get("spans", 0)) >= load.spans for f in _flushes(worker.events()))

        await _wait(applied, worker, args.timeout, "backlog applied")
        caught_up = len(_flushes(worker.events()))

        def steady() -> bool:
            emitting = [f for f in _flushes(worker.events())[caught_up:] if int(f.get("emitted_series", 0))]
            # One more: the first after catch-up may still miss service-graph edges that expire
            # (complete) a little later; the last ``--steady`` are checked.
            return len(emitting) >= args.steady + 1

        await _wait(steady, worker, args.timeout, f"{args.steady} steady emissions")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.matched.wait(), timeout=30)
        await asyncio.sleep(0.3)
        info_after = await client.info("memory")
        figures = await _redis_series_figures(client, name, topic)
        status = proc_status(worker.pid)
    finally:
        probing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probing
        await asyncio.to_thread(stop_workers, [worker])
        await reader.stop()
        await client.aclose()
    series = sum(figures["series_by_metric"].values())
    flushes = _flushes(worker.events())
    rows: list[dict[str, Any]] = []
    for index, flush in enumerate(flushes):
        end = event_time(flush)
        begin = end - float(flush["seconds"])
        rows.append(
            {
                "at": round(end - started, 2),
                "seconds": float(flush["seconds"]),
                "emitted_series": int(flush.get("emitted_series", 0)),
                "redis_seconds": float(flush.get("redis_seconds", 0)),
                "fold_seconds": float(flush.get("fold_seconds", 0)),
                "send_seconds": float(flush.get("send_seconds", 0)),
                "rss_mib": probe.rss_mib(end),
                "probe_worst_seconds": round(probe.worst_latency(begin, end), 3),
                "loop_max_stall_seconds": flush.get("loop_max_stall_seconds"),
                "steady": index >= caught_up,
            }
        )
    emitting = [r for r in rows if r["emitted_series"]]
    # Between the starts of emitting flushes: what the fixed-rate schedule governs.
    gaps = [
        round((b["at"] - b["seconds"]) - (a["at"] - a["seconds"]), 2) for a, b in itertools.pairwise(emitting)
    ]
    steady_rows = [r for r in rows if r["steady"] and r["emitted_series"]][-args.steady :]
    used_delta = int(info_after["used_memory"]) - int(info_before["used_memory"])
    failures = []
    for r in steady_rows:
        if r["emitted_series"] != series:
            failures.append(f"a steady flush emitted {r['emitted_series']:,} series, Redis holds {series:,}")
    if reader.total != load.spans:
        failures.append(f"output calls total {reader.total:,} != {load.spans:,} spans produced")
    first_emission = next((r["at"] for r in emitting), None)
    return {
        "machine": machine_description(),
        "source": source_state(),
        "code": args.code or "this checkout",
        "path": path,
        "target_series": args.series,
        "spans": load.spans,
        "series": series,
        "interval_s": args.interval,
        "max_buffered_spans": args.buffered,
        "max_kept_series": args.kept,
        "flushes": rows,
        "emission_gaps_s": gaps,
        "first_emission_at_s": first_emission,
        "applied_at_s": rows[caught_up - 1]["at"] if caught_up else None,
        "redis_used_memory_delta": used_delta,
        "redis_bytes_per_series": round(used_delta / series, 1) if series else None,
        "redis_slot_hash_bytes_per_series": round(figures["slot_hashes_memory_usage_bytes"] / series, 1)
        if series
        else None,
        "worker_peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
        "probe_worst_seconds": round(max((lat for _, lat in probe.samples), default=0.0), 3),
        "steady_flush_seconds": [r["seconds"] for r in steady_rows],
        "output_calls_total": reader.total,
        "failures": failures,
        "log_dir": str(log_dir),
    }


def print_report(result: dict[str, Any]) -> None:
    machine = result["machine"]
    print(
        f"\nmachine: {machine['nproc']} cores ({machine['cpu_model']}), Python {machine['python']}; "
        f"code: {result['code']} ({result['source']['commit']}), ingest {result['path']}"
    )
    print(
        f"{result['series']:,} active series ({result['spans']:,} spans), flush interval "
        f"{result['interval_s']:g}s, max_buffered_spans {result['max_buffered_spans']:,}, max_kept_series "
        f"{'default' if result.get('max_kept_series') is None else format(result['max_kept_series'], ',')}"
    )
    print(f"{'at s':>7} {'flush s':>8} {'series':>9} {'redis s':>8} {'fold s':>7} {'send s':>7} "
          f"{'RSS MiB':>8} {'probe s':>8} {'stall s':>8}")  # fmt: skip
    for r in result["flushes"]:
        stall = r["loop_max_stall_seconds"]
        print(
            f"{r['at']:>7.2f} {r['seconds']:>8.3f} {r['emitted_series']:>9,} {r['redis_seconds']:>8.3f} "
            f"{r['fold_seconds']:>7.3f} {r['send_seconds']:>7.3f} {r['rss_mib']:>8.1f} "
            f"{r['probe_worst_seconds']:>8.3f} {'-' if stall is None else f'{float(stall):.3f}':>8}"
            f"{'' if r['steady'] else '  (catch-up)'}"
        )
    print(
        f"first emission {result['first_emission_at_s']}s after start, "
        f"backlog applied at {result['applied_at_s']}s"
    )
    print(f"times between the starts of emitting flushes (s): {result['emission_gaps_s']}")
    print(
        f"steady flushes (s): {result['steady_flush_seconds']}; "
        f"worker peak RSS {result['worker_peak_rss_mib']} MiB; "
        f"Redis {result['redis_bytes_per_series']} B/series (INFO used_memory delta), slot hashes "
        f"{result['redis_slot_hash_bytes_per_series']} B/series (MEMORY USAGE); worst /healthz answer "
        f"{result['probe_worst_seconds']}s"
    )
    if result["failures"]:
        for failure in result["failures"]:
            print(f"  [FAIL] {failure}")
    else:
        print(f"  [ok] every steady flush emitted {result['series']:,} series; calls total exact")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=100_000, help="active series (default 100,000)")
    parser.add_argument("--interval", type=float, default=5.0, help="metrics_flush_interval, s (default 5)")
    parser.add_argument("--steady", type=int, default=3, help="idle emissions after catch-up (default 3)")
    parser.add_argument("--buffered", type=int, default=20_000, help="max_buffered_spans (default 20,000)")
    parser.add_argument(
        "--kept",
        type=int,
        help="worker.max_kept_series, label sets (default: the worker's, 100,000; a span series here is one)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="per phase, s (default 900)")
    parser.add_argument("--pure", action="store_true", help="SPANMETRICS_NO_EXTENSIONS=1")
    parser.add_argument("--code", help="run the worker of this checkout (before/after comparisons)")
    parser.add_argument("--json", type=Path, help="default bench/results/scale-<time>.json")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="spanmetrics-scale-"))
    kafka = kafka_from_env_or_embedded()
    redis = redis_from_env_or_embedded()
    try:
        result = asyncio.run(run(args, kafka.bootstrap_servers, redis.url, log_dir))
    finally:
        for server in (redis, kafka):
            with contextlib.suppress(Exception):
                server.stop()
    print_report(result)
    path = args.json or RESULTS_DIR / f"scale-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON: {path}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
