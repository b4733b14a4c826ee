"""End-to-end throughput, scaling, memory and flush cost of the stream worker, on real servers.

``python bench/e2e.py`` runs against the embedded Tansu broker and Valkey (or against
``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL``) and

1. pre-produces a realistic load (default 1,000,000 spans from the load generator's traffic
   model; 2 configured dimensions, service graphs on unless ``--no-service-graphs``) into an
   input topic with 8 partitions, once per record shape: A, one record per trace keyed by trace
   id (the Collector's Kafka exporter with ``partition_traces_by_id``), and B, keyless batches
   of about 1,000 spans; each shape also gets its decode-only rate and a bare aiokafka
   consumer's (with and without ``check_crcs``), and the workers run on the pure path
   (``SPANMETRICS_NO_EXTENSIONS=1``) and, when the compiled extension is installed, on the
   native path;
2. runs 1 worker process (``python -m worker run --config FILE``) from an empty consumer group
   until every span is applied - verified on the output topic: the sum of the latest cumulative
   ``calls`` data points must equal the spans produced - and reports spans/s;
3. in the same run times the bare protobuf decode of the same records (interleaved rounds
   between the phases, median) and prints the ratio end-to-end / decode-only;
4. repeats with 2 workers (fresh group, key prefix and output topic; same input records) and
   prints the scaling factor, with the machine's core count: with broker and Redis on the same
   cores the figure is indicative only;
5. builds >= 100,000 active series (a high-cardinality dimension), then reports Redis memory per
   series (``INFO memory`` delta / the series in the slot hashes, a record with a ``calls``
   companion counting as two), the worker's peak RSS (VmHWM), and
   the duration of one flush (Redis step + emission) from the worker's own flush log line.

It prints a table and writes the same figures as JSON (``bench/results/e2e-<time>.json`` or
``--json PATH``) so runs can be compared. ``--profile`` adds two untimed runs under ``py-spy
record`` (a 1-worker throughput run and a series phase) and summarises where their time goes.

Timing notes: spans/s = spans / (worker processes started -> totals matched on the output
topic). That includes process start-up and the group join (Tansu answers a first JoinGroup
after about half the session timeout; session timeout here 6 s), so the time to the first
partition assignment is reported too, with a "net" rate that subtracts it. Totals become
visible at a flush, so the figure is quantised by the flush interval (``--flush-interval``,
default 2 s); the time the last span was merged into Redis (from the flush log lines) is
reported as well. "Steady" is the workers' combined rate between their first flush and their
last flush before running out of input: the rate without start-up, join and tail, which is the
fairest basis for the scaling factor of a short run.

    python bench/e2e.py                     # 1M spans, workers 1,2, 100k series
    python bench/e2e.py --quick             # 100k spans, 10k series: a smoke run for CI/dev
    python bench/e2e.py --spans 300000 --workers-list 1,2 --series 100000 --json out.json
    python bench/e2e.py --profile           # plus a py-spy profile of one worker
    python bench/e2e.py --profile --profile-native   # the profile with C frames (py-spy --native)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from redis.asyncio import Redis

import worker as worker_package
from devtools.loadgen.model import TraceGenerator, build_model
from devtools.servers import (
    KafkaEndpoint,
    RedisEndpoint,
    create_topics,
    kafka_from_env_or_embedded,
    redis_from_env_or_embedded,
)
from state.keys import KeySpace, escape_tenant
from worker.config import DEFAULT_HISTOGRAM_BUCKETS, KafkaConfig
from worker.otlp.decode import decode_traces

INPUT_PARTITIONS = 8
OUTPUT_PARTITIONS = 4
DEFAULT_TENANT = "single-tenant"
DIMENSIONS: list[dict[str, str]] = [
    {"name": "http.request.method", "default": "GET"},
    {"name": "http.response.status_code"},
]
#: The high-cardinality dimension of the series phase (a classic: a user id as a label).
SERIES_DIMENSION = "enduser.id"
SESSION_TIMEOUT = "6s"
#: py-spy samples per second.
PROFILE_RATE = 100
#: ``--profile-native``: py-spy also samples C frames (the compiled scanners), for a raw profile
#: read by hand (the summary below groups Python frames only).
PROFILE_NATIVE = False

# Targets from the issue.
#: Issue 17: one worker's steady rate against the decode-only rate and the bare consumer's.
TARGET_DECODE_RATIO = 0.3
TARGET_BARE_RATIO = 0.6
TARGET_BYTES_PER_SERIES = 400
TARGET_RSS_MIB = 300
TARGET_FLUSH_S = 1.0
TARGET_SCALING_PER_WORKER = 0.8
#: Shape B: spans per record.
BATCH_SPANS = 1000

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Machine and processes
# --------------------------------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total_kib = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0
    )
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "")
    try:
        from google.protobuf import __version__ as protobuf_version
        from google.protobuf.internal import api_implementation

        protobuf = f"{protobuf_version} ({api_implementation.Type()})"
    except ImportError:  # pragma: no cover
        protobuf = "unknown"
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_mib": round(total_kib / 1024),
        "loadavg_at_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "protobuf": protobuf,
    }


def source_state() -> dict[str, Any]:
    """The commit and the uncommitted files the workers ran with, so runs can be compared."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "worker", "state").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_worker_and_state_files": dirty}


def relevant_environment() -> dict[str, str]:
    names = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "PYTHONPATH")
    return {k: v for k, v in os.environ.items() if k in names or k.startswith("SPANMETRICS_")}


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in KiB from /proc (empty when the process is gone)."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return values
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return values


def proc_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (None when unknown or gone)."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return hook


@dataclass
class WorkerProcess:
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    #: The worker's own pid (differs from proc.pid when py-spy launched it).
    pid: int

    def alive(self) -> bool:
        return self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        return read_log(self.log_path)


def native_extensions() -> list[str]:
    """The compiled modules of the installed worker package (empty: the native path is not built)."""
    root = Path(worker_package.__file__).resolve().parent
    return sorted(
        str(path.relative_to(root.parent)) for pattern in ("*.so", "*.pyd") for path in root.rglob(pattern)
    )


#: The environment of each worker path: the pure path is forced with the issue's switch.
PATH_ENV: dict[str, dict[str, str | None]] = {
    "pure": {"SPANMETRICS_NO_EXTENSIONS": "1"},
    "native": {"SPANMETRICS_NO_EXTENSIONS": None},
}


#: ``--baseline DIR``: the path "base" runs the pure path of the code in DIR (another checkout).
BASELINE: dict[str, Path] = {}


def worker_env(path: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key, value in PATH_ENV.get(path, PATH_ENV["pure"]).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if path in BASELINE:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(BASELINE[path]), *env.get("PYTHONPATH", "").split(os.pathsep)]
        )
    return env


def spawn_worker(
    index: int, config: Path, log_dir: Path, profile: Path | None = None, path: str = "pure"
) -> WorkerProcess:
    log_path = log_dir / f"worker-{index}.log"
    command = [sys.executable, "-m", "worker", "run", "--config", str(config)]
    if profile is not None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [
            py_spy, "record", "--idle", "--threads", "--function", "--format", "raw",
            *(["--native"] if PROFILE_NATIVE else []),
            "--rate", str(PROFILE_RATE), "-o", str(profile), "--", *command,
        ]  # fmt: skip
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=worker_env(path),
            cwd=BASELINE.get(path),  # ``-m`` puts the working directory first on sys.path
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    pid = proc.pid
    if profile is not None:
        pid = _child_pid(proc.pid) or proc.pid
    return WorkerProcess(index, proc, log_path, pid)


def _child_pid(parent: int, timeout: float = 10.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                children = (task / "children").read_text().split()
                if children:
                    return int(children[0])
        time.sleep(0.05)
    return None


def stop_workers(workers: Sequence[WorkerProcess], grace: float = 40.0) -> None:
    """SIGTERM each worker (it flushes and leaves the group), SIGKILL what is left after ``grace``."""
    for worker in workers:
        if worker.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for worker in workers:
        try:
            worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"worker {worker.index} did not stop in {grace:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            if worker.proc.pid != worker.pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout=10)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()


def read_log(path: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return events
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "<no log>"


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------


@dataclass
class Load:
    records: list[tuple[bytes | None, bytes]]
    spans: int
    size: int
    seconds: float

    @property
    def values(self) -> list[bytes]:
        return [value for _, value in self.records]


def _spans_with_service(request: ExportTraceServiceRequest) -> int:
    count = 0
    for resource_spans in request.resource_spans:
        if any(
            kv.key == "service.name" and kv.value.string_value for kv in resource_spans.resource.attributes
        ):
            count += sum(len(ss.spans) for ss in resource_spans.scope_spans)
    return count


def generate(
    spans: int,
    *,
    services: int,
    seed: int,
    unique_attribute: str | None = None,
    batch_spans: int = 0,
) -> Load:
    """Traces from the traffic model until ``spans``: one record per trace, keyed by trace id
    (shape A), or with ``batch_spans`` keyless records of about that many spans (shape B).

    With ``unique_attribute`` every span gets that attribute with a value no other span has,
    so every span starts its own series (the high-cardinality load of the series phase).
    """
    started = time.perf_counter()
    model = build_model(services=services, seed=seed)
    generator = TraceGenerator(model, seed=seed)
    traces_per_batch = max(1, round(batch_spans / model.expected_spans_per_trace())) if batch_spans else 0
    now = time.time_ns()
    records: list[tuple[bytes | None, bytes]] = []
    total = size = 0
    unique = 0
    while total < spans:
        key: bytes | None
        if traces_per_batch:
            key, request = None, generator.batch_request(traces_per_batch, now)
        else:
            key, request = generator.trace_request(now)
        if unique_attribute is not None:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        kv = span.attributes.add()
                        kv.key = unique_attribute
                        kv.value.string_value = f"user-{unique:08d}"
                        unique += 1
        value = request.SerializeToString()
        records.append((key, value))
        total += _spans_with_service(request)
        size += len(value)
    return Load(records, total, size, time.perf_counter() - started)


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> float:
    started = time.perf_counter()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, max_request_size=8 << 20
    )
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# Decode-only timing
# --------------------------------------------------------------------------------------------------


@dataclass
class DecodeTimer:
    values: list[bytes]
    spans: int
    bare: list[float] = field(default_factory=list)
    wrapper: list[float] = field(default_factory=list)

    def rounds(self, count: int) -> None:
        """``count`` interleaved rounds of bare FromString and the worker's decode_traces."""
        from_string = ExportTraceServiceRequest.FromString
        for index in range(count):
            order: list[tuple[Callable[[bytes], object], list[float]]] = [
                (from_string, self.bare),
                (decode_traces, self.wrapper),
            ]
            if index % 2:
                order.reverse()
            for function, rates in order:
                started = time.perf_counter()
                for value in self.values:
                    function(value)
                rates.append(self.spans / (time.perf_counter() - started))

    def summary(self) -> dict[str, Any]:
        return {
            "spans_per_s": round(statistics.median(self.bare)),
            "spans_per_s_min": round(min(self.bare)),
            "spans_per_s_max": round(max(self.bare)),
            "rounds": len(self.bare),
            "all": [round(r) for r in self.bare],
            "decode_traces_spans_per_s": round(statistics.median(self.wrapper)),
            "decode_traces_all": [round(r) for r in self.wrapper],
        }


@dataclass
class BareConsumerTimer:
    """A plain AIOKafkaConsumer reading every record value of the input topic, no processing:
    the ceiling aiokafka sets (with its default CRC check, and with ``check_crcs=False``)."""

    bootstrap: str
    topic: str
    records: int
    spans: int
    rates: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})

    async def rounds(self, count: int) -> None:
        for index in range(count):
            order = [True, False] if index % 2 == 0 else [False, True]
            for check_crcs in order:
                self.rates[check_crcs].append(self.spans / await self._once(check_crcs))

    async def _once(self, check_crcs: bool) -> float:
        """Seconds from the first getmany to the last record (fetch options as the worker's;
        start-up and the offset look-ups are left out)."""
        defaults = KafkaConfig()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            check_crcs=check_crcs,
            fetch_max_bytes=defaults.fetch_max_bytes,
            max_partition_fetch_bytes=defaults.max_partition_fetch_bytes,
            fetch_max_wait_ms=int(defaults.fetch_max_wait * 1000),
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in range(INPUT_PARTITIONS)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            for tp in partitions:
                await consumer.position(tp)  # the offset look-ups are done before the clock starts
            seen = 0
            size = 0
            started = time.perf_counter()
            deadline = time.monotonic() + 300
            while seen < self.records:
                batch = await consumer.getmany(timeout_ms=1000, max_records=defaults.max_poll_records)
                for records in batch.values():
                    for record in records:
                        size += len(record.value or b"")
                    seen += len(records)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bare consumer read {seen} of {self.records} records in 300 s")
            return time.perf_counter() - started
        finally:
            await consumer.stop()

    def summary(self) -> dict[str, Any]:
        def one(rates: list[float]) -> dict[str, Any]:
            if not rates:
                return {"spans_per_s": None}
            return {"spans_per_s": round(statistics.median(rates)), "all": [round(r) for r in rates]}

        crc, no_crc = one(self.rates[True]), one(self.rates[False])
        crc_share = (
            round(1 - crc["spans_per_s"] / no_crc["spans_per_s"], 3)
            if crc["spans_per_s"] and no_crc["spans_per_s"]
            else None
        )
        # crc_share: the part of the bare consumer's time the CRC32C check takes.
        return {"check_crcs": crc, "no_check_crcs": no_crc, "crc_share_of_time": crc_share}


# --------------------------------------------------------------------------------------------------
# The output topic: latest cumulative ``calls`` per series
# --------------------------------------------------------------------------------------------------


class OutputReader:
    """Reads the output topic from the start; ``matched`` is set when the calls total == expected."""

    def __init__(self, bootstrap: str, topic: str, expected: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.expected = expected
        self.latest: dict[bytes, tuple[int, int]] = {}
        self.records = 0
        self.total = 0
        self.max_total = 0
        self.matched = asyncio.Event()
        self.matched_at: float | None = None
        self.matched_emit_ns: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 << 20,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def _feed(self, value: bytes) -> None:
        request = ExportMetricsServiceRequest.FromString(value)
        latest = self.latest
        for resource_metrics in request.resource_metrics:
            resource = resource_metrics.resource.SerializeToString()
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != "calls":
                        continue
                    for point in metric.sum.data_points:
                        key = resource + b"\x00" + b"".join(kv.SerializeToString() for kv in point.attributes)
                        previous = latest.get(key)
                        if previous is None or point.time_unix_nano >= previous[0]:
                            latest[key] = (point.time_unix_nano, point.as_int)

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=250)
            if not batch:
                continue
            for records in batch.values():
                for record in records:
                    self.records += 1
                    self._feed(record.value or b"")
            self.total = sum(value for _, value in self.latest.values())
            self.max_total = max(self.max_total, self.total)
            if self.total == self.expected and not self.matched.is_set():
                self.matched_at = time.time()
                self.matched_emit_ns = max(t for t, _ in self.latest.values())
                self.matched.set()


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


@dataclass
class Context:
    bootstrap: str
    redis_url: str
    kafka_pid: int | None
    redis_pid: int | None
    run_id: str
    log_dir: Path
    input_topic: str
    load: Load
    flush_interval: float
    timeout: float
    #: The worker path of the series and profile phases.
    path: str = "pure"
    #: Whether the workers run the service graphs beside span metrics (``--no-service-graphs``).
    service_graphs: bool = True


def write_config(
    path: Path,
    ctx: Context,
    *,
    name: str,
    input_topic: str,
    dimensions: list[dict[str, str]],
    flush_interval: float,
    worker: dict[str, Any] | None = None,
) -> None:
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": ctx.bootstrap,
            "input_topic": input_topic,
            "output_topic": f"{name}-out",
            "dlq_topic": f"{name}-dlq",
            "group_id": f"{name}-group",
            "session_timeout": SESSION_TIMEOUT,
            "heartbeat_interval": "1s",
        },
        "redis": {"url": ctx.redis_url, "key_prefix": name},
        "spanmetrics": {"dimensions": dimensions, "metrics_flush_interval": f"{flush_interval:g}s"},
        "servicegraphs": {"enabled": ctx.service_graphs},
        "worker": worker or {},
        "http": {"enabled": False},
        "log": {"level": "info", "format": "json"},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _flushes(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "flush"]


def _first_time(events: list[dict[str, Any]], name: str) -> float | None:
    times = [event_time(e) for e in events if e.get("event") == name]
    return min(times) if times else None


def _last_time(events: list[dict[str, Any]], name: str) -> float | None:
    times = [event_time(e) for e in events if e.get("event") == name]
    return max(times) if times else None


def _applied_time(per_worker: list[list[dict[str, Any]]], expected: int) -> float | None:
    """When the sum of the workers' merged spans (flush log lines) first reached ``expected``."""
    timeline = sorted(
        (event_time(e), index, int(e.get("spans", 0)))
        for index, events in enumerate(per_worker)
        for e in _flushes(events)
    )
    latest: dict[int, int] = {}
    for at, index, spans in timeline:
        latest[index] = spans
        if sum(latest.values()) >= expected:
            return at
    return None


def _steady_rate(per_worker: list[list[dict[str, Any]]]) -> float | None:
    """Spans/s of all workers together while busy: per worker, from its first flush to its last
    flush before it ran out of input (so start-up, the join and the tail are left out)."""
    total = 0.0
    for events in per_worker:
        points = [(event_time(e), int(e.get("spans", 0))) for e in _flushes(events)]
        final = max((spans for _, spans in points), default=0)
        body = [point for point in points if point[1] < final]
        if len(body) < 2 or body[-1][0] <= body[0][0]:
            return None
        (t0, s0), (t1, s1) = body[0], body[-1]
        total += (s1 - s0) / (t1 - t0)
    return total


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


def _rel(value: float | None, origin: float) -> float | None:
    return None if value is None else round(value - origin, 3)


async def throughput_phase(
    ctx: Context,
    workers: int,
    *,
    shape: str = "A",
    path: str = "pure",
    repeat: int = 0,
    profile: Path | None = None,
) -> dict[str, Any]:
    label = f"{shape.lower()}-{path}-{'profile' if profile else 'w'}{workers}" + (
        f"-r{repeat}" if repeat else ""
    )
    name = f"e2e-{ctx.run_id}-{label}"
    log_dir = ctx.log_dir / label
    log_dir.mkdir()
    await create_topics(ctx.bootstrap, {f"{name}-out": OUTPUT_PARTITIONS, f"{name}-dlq": 1})
    config = log_dir / "config.yaml"
    write_config(
        config,
        ctx,
        name=name,
        input_topic=ctx.input_topic,
        dimensions=DIMENSIONS,
        flush_interval=ctx.flush_interval,
    )
    reader = OutputReader(ctx.bootstrap, f"{name}-out", ctx.load.spans)
    await reader.start()
    cpu_before = {
        "broker": proc_cpu_seconds(ctx.kafka_pid),
        "redis": proc_cpu_seconds(ctx.redis_pid),
        "bench": proc_cpu_seconds(os.getpid()),
    }
    started = time.time()
    procs = [spawn_worker(i + 1, config, log_dir, profile, path) for i in range(workers)]
    say(f"phase {label}: {workers} worker(s) started (pids {[p.pid for p in procs]}), logs in {log_dir}")
    failure = ""
    hwm: dict[int, dict[str, int]] = {}
    cpu: dict[int, float | None] = {}
    try:
        deadline = time.monotonic() + ctx.timeout
        last_report = time.monotonic()
        while not reader.matched.is_set():
            dead = [p for p in procs if not p.alive()]
            if dead:
                failure = f"worker {dead[0].index} exited with {dead[0].proc.returncode}"
                say(f"{failure}:\n{tail(dead[0].log_path)}")
                break
            if reader.max_total > ctx.load.spans:
                failure = f"over-count: output calls total {reader.max_total} > {ctx.load.spans} produced"
                say(failure)
                break
            if time.monotonic() > deadline:
                failure = f"timeout after {ctx.timeout:.0f}s: output total {reader.total} of {ctx.load.spans}"
                say(failure)
                break
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                say(
                    f"  ... {time.time() - started:.0f}s, output calls total "
                    f"{reader.total:,}/{ctx.load.spans:,}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.matched.wait(), timeout=0.25)
        for p in procs:
            hwm[p.index] = proc_status(p.pid)
            cpu[p.index] = proc_cpu_seconds(p.pid)
    finally:
        cpu_after = {
            "broker": proc_cpu_seconds(ctx.kafka_pid),
            "redis": proc_cpu_seconds(ctx.redis_pid),
            "bench": proc_cpu_seconds(os.getpid()),
        }
        await reader.stop()
        await asyncio.to_thread(stop_workers, procs)
    per_worker = [p.events() for p in procs]
    elapsed = (reader.matched_at - started) if reader.matched_at else None
    first_assigned = min(
        (t for t in (_first_time(ev, "partitions assigned") for ev in per_worker) if t), default=None
    )
    last_assigned = max(
        (t for t in (_last_time(ev, "partitions assigned") for ev in per_worker) if t), default=None
    )
    worker_started = max(
        (t for t in (_first_time(ev, "worker started") for ev in per_worker) if t), default=None
    )
    # Ready: every worker has had its partitions assigned and claimed (the readiness probe's rule).
    firsts = [_first_time(ev, "partitions assigned") for ev in per_worker]
    ready_at = max(firsts) if firsts and all(firsts) else None  # type: ignore[type-var]
    applied_at = _applied_time(per_worker, ctx.load.spans)
    spans = ctx.load.spans
    start_line = next((e for ev in per_worker for e in ev if e.get("event") == "worker started"), {})
    # The worker's own word on the path it runs (native or pure, and why).
    ingest_line = next((e for ev in per_worker for e in ev if e.get("event") == "span metrics ingest"), {})
    result: dict[str, Any] = {
        "shape": shape,
        "path": path,
        "repeat": repeat,
        "start_line": {k: v for k, v in start_line.items() if k not in ("timestamp", "event", "level")},
        "ingest_line": {k: v for k, v in ingest_line.items() if k not in ("timestamp", "event", "level")},
        "workers": workers,
        "group": f"{name}-group",
        "key_prefix": name,
        "output_topic": f"{name}-out",
        "ok": reader.matched.is_set() and not failure,
        "failure": failure,
        "spans": spans,
        "output_total": reader.total,
        "output_total_max_seen": reader.max_total,
        "output_records_read": reader.records,
        "seconds_to_totals_match": round(elapsed, 3) if elapsed else None,
        "seconds_to_emission_of_match": (
            round(reader.matched_emit_ns / 1e9 - started, 3) if reader.matched_emit_ns else None
        ),
        "seconds_to_worker_started": _rel(worker_started, started),
        "seconds_to_first_assignment": _rel(first_assigned, started),
        "seconds_to_last_assignment": _rel(last_assigned, started),
        "seconds_to_readiness": _rel(ready_at, started),
        "spans_per_s_from_readiness": (
            round(spans / (applied_at - ready_at))
            if applied_at and ready_at and applied_at > ready_at
            else None
        ),
        "seconds_to_applied_in_redis": _rel(applied_at, started),
        "spans_per_s": round(spans / elapsed) if elapsed else None,
        "spans_per_s_net_of_join": (
            round(spans / (reader.matched_at - first_assigned))
            if reader.matched_at and first_assigned
            else None
        ),
        "steady_spans_per_s": _rounded(_steady_rate(per_worker)),
        "spans_per_s_applied_net_of_join": (
            round(spans / (applied_at - first_assigned)) if applied_at and first_assigned else None
        ),
        "worker_peak_rss_mib": {i: round(v.get("VmHWM", 0) / 1024, 1) for i, v in hwm.items()},
        "worker_cpu_seconds": {i: v for i, v in cpu.items()},
        "cpu_seconds_during_phase": {key: _delta(cpu_before[key], cpu_after[key]) for key in cpu_before},
        "flushes": _flush_summary(per_worker, reader.matched_at),
        "stopped": [
            {k: e.get(k) for k in ("records", "spans", "dlq", "skipped_replay")}
            for ev in per_worker
            for e in ev
            if e.get("event") == "worker stopped"
        ],
        "rebalances": sum(1 for ev in per_worker for e in ev if e.get("event") == "partitions revoked"),
        "fenced": sum(1 for ev in per_worker for e in ev if str(e.get("event", "")).startswith("fenced")),
        "log_dir": str(log_dir),
    }
    total_cpu = sum(v for v in cpu.values() if v)
    result["spans_per_worker_cpu_s"] = round(spans / total_cpu) if total_cpu else None
    return result


def _flush_summary(per_worker: list[list[dict[str, Any]]], until: float | None) -> dict[str, Any]:
    flushes = [e for ev in per_worker for e in _flushes(ev) if until is None or event_time(e) <= until]
    if not flushes:
        return {"count": 0}
    seconds = [float(e["seconds"]) for e in flushes]
    redis_seconds = [float(e["redis_seconds"]) for e in flushes]
    return {
        "count": len(flushes),
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_max": round(max(seconds), 3),
        "redis_seconds_median": round(statistics.median(redis_seconds), 3),
        "redis_seconds_max": round(max(redis_seconds), 3),
        "emitted_series_max": max(int(e.get("emitted_series", 0)) for e in flushes),
    }


async def _wait_for_flush(
    worker: WorkerProcess, predicate: Callable[[dict[str, Any]], bool], timeout: float, after: int = 0
) -> tuple[int, dict[str, Any]]:
    """The first flush line (index >= ``after``) satisfying ``predicate``; raises on timeout/death."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flushes = _flushes(worker.events())
        for index in range(after, len(flushes)):
            if predicate(flushes[index]):
                return index, flushes[index]
        if not worker.alive():
            raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n{tail(worker.log_path)}")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no matching flush within {timeout:.0f}s:\n{tail(worker.log_path)}")


def _flush_figures(flush: dict[str, Any], merged_spans: int) -> dict[str, Any]:
    seconds = float(flush["seconds"])
    redis_seconds = float(flush["redis_seconds"])
    return {
        "seconds": seconds,
        "redis_seconds": redis_seconds,
        "emission_and_commit_seconds": round(seconds - redis_seconds, 3),
        # The emission's parts, as the worker logs them: fold (read, fold, commit), encode and
        # hand to the producer, wait for the broker's acknowledgements.
        "fold_seconds": float(flush.get("fold_seconds", 0)),
        "send_seconds": float(flush.get("send_seconds", 0)),
        "confirm_seconds": float(flush.get("confirm_seconds", 0)),
        "emitted_series": int(flush.get("emitted_series", 0)),
        "emitted_records": int(flush.get("emitted_records", 0)),
        "merged_spans": merged_spans,
    }


async def _redis_series_figures(client: Redis, prefix: str, topic: str) -> dict[str, Any]:
    keys = KeySpace(prefix, topic)
    tenant = escape_tenant(DEFAULT_TENANT)
    fields = 0
    hash_bytes = 0
    by_metric: dict[str, list[int]] = defaultdict(list)
    companions: dict[str, int] = defaultdict(int)
    for slot in range(INPUT_PARTITIONS):
        key = keys.slot(tenant, slot)
        fields += int(await client.hlen(key))
        hash_bytes += int(await client.memory_usage(key, samples=0) or 0)
        async for _field, value in client.hscan_iter(key, count=2000):
            record = msgpack.unpackb(value, raw=True, strict_map_key=False)
            metric = msgpack.unpackb(record[0], raw=False, strict_map_key=False)[0]
            by_metric[str(metric)].append(len(value))
            if len(record) > 8 and record[8]:  # a duration record standing for its calls counter
                companions[record[8].decode()] += 1
    active = int(await client.get(keys.active(tenant)) or 0)
    resources_bytes = int(await client.memory_usage(keys.resources(tenant), samples=0) or 0)
    return {
        "slot_hash_fields": fields,
        "active_counter": active,
        "slot_hashes_memory_usage_bytes": hash_bytes,
        "resources_hash_bytes": resources_bytes,
        # Active series: a record with a companion is two (see state.fold).
        "series_by_metric": {
            m: len(by_metric.get(m, ())) + companions.get(m, 0)
            for m in sorted(by_metric.keys() | companions.keys())
        },
        "mean_record_bytes_by_metric": {
            m: round(statistics.mean(v), 1) for m, v in sorted(by_metric.items())
        },
    }


def generate_series_load(target: int, services: int) -> Load:
    """Every span starts a calls and a duration series; service graphs add a few edge series."""
    return generate(math.ceil(target / 2), services=services, seed=11, unique_attribute=SERIES_DIMENSION)


async def _sample_rss(pid: int, samples: list[tuple[float, int]], origin: float) -> None:
    while True:
        status = proc_status(pid)
        if status:
            samples.append((round(time.time() - origin, 2), status["VmRSS"]))
        await asyncio.sleep(0.2)


def _slow_commands(entries: list[dict[str, Any]], flush: dict[str, Any]) -> dict[str, Any]:
    """Redis slowlog entries (commands over the slowlog threshold) that ran during ``flush``."""
    end = event_time(flush)
    begin = end - float(flush["seconds"]) - 1.0  # slowlog times are whole seconds
    found: dict[str, list[float]] = defaultdict(list)
    for entry in entries:
        if begin <= float(entry["start_time"]) <= end + 1.0:
            command = entry["command"]
            if isinstance(command, bytes):
                command = command.decode(errors="replace")
            found[str(command).split(" ", 1)[0].upper()].append(int(entry["duration"]) / 1e6)
    return {name: {"count": len(v), "seconds": round(sum(v), 3)} for name, v in sorted(found.items())}


def _commandstats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    for key, stats in after.items():
        if not isinstance(stats, dict):
            continue
        old = before.get(key, {})
        calls = int(stats.get("calls", 0)) - int(old.get("calls", 0))
        usec = int(stats.get("usec", 0)) - int(old.get("usec", 0))
        if calls and usec > 1000:
            delta[key.removeprefix("cmdstat_")] = {"calls": calls, "seconds": round(usec / 1e6, 3)}
    return delta


async def series_phase(
    ctx: Context, load: Load, target: int, flush_interval: float, *, profile: Path | None = None
) -> dict[str, Any]:
    """Item 5: >= ``target`` active series; Redis bytes per series, worker RSS, one flush's cost.

    Round A (every span a new series) is produced before the worker starts; round B (the same
    series again) right after the flush that merged round A, so that one flush merges an update
    of every series and emits them all; the flush after that only emits.
    """
    label = "series-profile" if profile else "series"
    name = f"e2e-{ctx.run_id}-{label}"
    log_dir = ctx.log_dir / label
    log_dir.mkdir()
    topic = f"{name}-in"
    await create_topics(
        ctx.bootstrap, {topic: INPUT_PARTITIONS, f"{name}-out": OUTPUT_PARTITIONS, f"{name}-dlq": 1}
    )
    produce_a = await produce(ctx.bootstrap, topic, load.records)
    client = Redis.from_url(ctx.redis_url)
    info_before = await client.info("memory")
    stats_before = await client.info("commandstats")
    config = log_dir / "config.yaml"
    write_config(
        config,
        ctx,
        name=name,
        input_topic=topic,
        dimensions=[*DIMENSIONS, {"name": SERIES_DIMENSION}],
        flush_interval=flush_interval,
        worker={
            # Far above the target so nothing overflows, yet the limit bookkeeping still runs.
            "max_active_series_per_tenant": max(1_000_000, 10 * target),
            "max_buffered_spans": max(200_000, 2 * load.spans),
        },
    )
    started = time.time()
    worker = spawn_worker(1, config, log_dir, profile, ctx.path)
    say(f"{label} phase: worker pid {worker.pid}, flush interval {flush_interval:g}s, logs in {log_dir}")
    rss: list[tuple[float, int]] = []
    sampler = asyncio.create_task(_sample_rss(worker.pid, rss, started))
    result: dict[str, Any] = {
        "target_series": target,
        "spans_per_round": load.spans,
        "records_per_round": len(load.records),
    }
    try:
        timeout = ctx.timeout
        spans = load.spans
        # Round A: every series is new. Wait for the flush that merged the last of it.
        index_a, flush_a = await _wait_for_flush(worker, lambda f: int(f.get("spans", 0)) >= spans, timeout)
        flushes = _flushes(worker.events())
        before_a = int(flushes[index_a - 1].get("spans", 0)) if index_a else 0
        say(f"{label} phase: round A merged ({flush_a['seconds']}s flush); producing round B (same series)")
        # Round B right after a flush, so that it lands in one flush interval: every series updated.
        produce_b = await produce(ctx.bootstrap, topic, load.records)
        index_b, flush_b = await _wait_for_flush(
            worker, lambda f: int(f.get("spans", 0)) >= 2 * spans, timeout, after=index_a + 1
        )
        flushes = _flushes(worker.events())
        before_b = int(flushes[index_b - 1].get("spans", 0))
        # The next flush with nothing new: emission only.
        _, flush_idle = await _wait_for_flush(worker, lambda f: True, timeout, after=index_b + 1)
        await asyncio.sleep(0.5)
        info_after = await client.info("memory")
        stats_after = await client.info("commandstats")
        slowlog = [e for e in await client.slowlog_get(1024) if float(e["start_time"]) >= started - 1]
        figures = await _redis_series_figures(client, name, topic)
        status = proc_status(worker.pid)
        cpu_seconds = proc_cpu_seconds(worker.pid)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await asyncio.to_thread(stop_workers, [worker])
        await client.aclose()
    used_delta = int(info_after["used_memory"]) - int(info_before["used_memory"])
    series = sum(figures["series_by_metric"].values())
    span_metric_series = sum(v for m, v in figures["series_by_metric"].items() if m in ("calls", "duration"))
    calls_series = figures["series_by_metric"].get("calls", 0)
    flush_a_start = event_time(flush_a) - float(flush_a["seconds"]) - started
    figures_a = _flush_figures(flush_a, int(flush_a.get("spans", 0)) - before_a)
    figures_b = _flush_figures(flush_b, int(flush_b.get("spans", 0)) - before_b)
    figures_idle = _flush_figures(flush_idle, int(flush_idle.get("spans", 0)) - int(flush_b.get("spans", 0)))
    for figures_x, flush_x in ((figures_a, flush_a), (figures_b, flush_b), (figures_idle, flush_idle)):
        figures_x["redis_slowlog"] = _slow_commands(slowlog, flush_x)
    result.update(
        {
            "produce_seconds": [round(produce_a, 2), round(produce_b, 2)],
            "seconds_to_round_a_merged": round(event_time(flush_a) - started, 2),
            "redis": figures,
            "used_memory_before": int(info_before["used_memory"]),
            "used_memory_after": int(info_after["used_memory"]),
            "used_memory_delta": used_delta,
            "series": series,
            "records": figures["slot_hash_fields"],
            "span_metrics_series": span_metric_series,
            "bytes_per_series": round(used_delta / series, 1) if series else None,
            "bytes_per_series_memory_usage": (
                round(figures["slot_hashes_memory_usage_bytes"] / series, 1) if series else None
            ),
            "bytes_per_calls_duration_pair": round(used_delta / calls_series, 1) if calls_series else None,
            "histogram_buckets": len(DEFAULT_HISTOGRAM_BUCKETS),
            "worker_peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1),
            "worker_rss_mib_at_end": round(status.get("VmRSS", 0) / 1024, 1),
            "worker_rss_mib_before_first_flush": round(
                max((kib for t, kib in rss if t < flush_a_start), default=0) / 1024, 1
            ),
            "worker_rss_mib_timeline": [(t, round(kib / 1024)) for t, kib in rss[::5]],
            "worker_cpu_seconds": cpu_seconds,
            "redis_commandstats": _commandstats_delta(stats_before, stats_after),
            "flush_create": figures_a,
            "flush_create_single": before_a == 0,
            "flush_update": figures_b,
            "flush_update_single": before_b <= spans,
            "flush_idle": figures_idle,
            "flush_interval_s": flush_interval,
            "log_dir": str(log_dir),
        }
    )
    return result


# --------------------------------------------------------------------------------------------------
# Profile summary (py-spy raw / collapsed stacks)
# --------------------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: Outermost frame that decides what part of the worker a sample belongs to: (file part, function).
_PHASES: list[tuple[str, str, str]] = [
    ("worker/stream/ingest.py", "Ingest.handle", "consume (Ingest.handle)"),
    ("worker/stream/checkpoint.py", "Checkpoint.run", "flush: checkpoint (Redis step, Kafka commit)"),
    ("worker/stream/emission.py", "Emission.run", "flush: emission"),
    ("worker/observability/selfmetrics.py", "WorkerMetrics.refresh", "flush: self-metrics refresh"),
    ("aiokafka/consumer/consumer.py", "AIOKafkaConsumer.getmany", "aiokafka getmany (fetch results, unpack)"),
    ("aiokafka/consumer/fetcher.py", "", "aiokafka fetcher task"),
    ("aiokafka/", "", "aiokafka other (coordinator, producer, conn)"),
    ("structlog/", "", "logging"),
    ("logging/", "", "logging"),
    ("redis/", "", "redis client (other)"),
]
#: Innermost frame inside "consume": which component.
_COMPONENTS: list[tuple[str, str, str]] = [
    ("worker/otlp/decode.py", "", "decode (protobuf)"),
    ("worker/processors/spanmetrics/", "", "span metrics processor"),
    ("worker/processors/servicegraphs/", "", "service graphs processor"),
    ("worker/processors/pipeline.py", "", "pipeline glue"),
    ("worker/stream/records.py", "", "tenant header"),
]
#: Innermost frame inside a flush: which component.
_FLUSH_COMPONENTS: list[tuple[str, str, str]] = [
    ("state/fold.py", "", "fold: delta log into records (msgpack -> Series)"),
    ("worker/otlp/metrics_encoder.py", "", "emit: write OTLP bytes (incl. size splitting)"),
    ("worker/sinks/", "", "emit: sinks (hand to the producer, await acks)"),
    ("worker/stream/slots.py", "", "emit: slot loop"),
    ("worker/stream/emission.py", "", "emit: slot loop"),
    ("aiokafka/", "", "aiokafka (producer send, commit)"),
    ("state/redis_store.py", "RedisStateStore.merge", "Redis step: build the batch (digests, msgpack)"),
    ("state/redis_store.py", "RedisStateStore.fold_slot", "fold: read + commit (redis replies)"),
    ("redis/", "", "redis-py (encode/send/parse)"),
    ("worker/processors/spanmetrics/", "", "take deltas (span metrics)"),
    ("worker/processors/servicegraphs/", "", "take deltas / pending (service graphs)"),
]


def _parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    return (match["func"], match["file"]) if match else (frame, "")


def _matches(rule: tuple[str, str, str], func: str, file: str) -> bool:
    file_part, func_part, _ = rule
    return file_part in file and (not func_part or func == func_part)


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Main-thread samples by part of the worker, by component, and the top functions."""
    phases: Counter[str] = Counter()
    components: Counter[str] = Counter()
    flush_components: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if not frames[0].startswith("thread") or "MainThread" not in frames[0]:
            continue
        count = int(count_text)
        parsed = [_parse_frame(f) for f in frames[1:]]
        if not parsed:
            continue
        total += count
        leaf_func, leaf_file = parsed[-1]
        self_time[f"{leaf_func} ({leaf_file})"] += count
        for label in {f"{func} ({file})" for func, file in parsed}:
            inclusive[label] += count
        if "selectors.py" in leaf_file and leaf_func.endswith("select"):
            phases["idle (event loop waits for I/O)"] += count
            continue
        phase = next(
            (rule[2] for func, file in parsed for rule in _PHASES if _matches(rule, func, file)),
            "event loop / other",
        )
        phases[phase] += count
        if phase == "consume (Ingest.handle)":
            component = next(
                (
                    rule[2]
                    for func, file in reversed(parsed)
                    for rule in _COMPONENTS
                    if _matches(rule, func, file)
                ),
                "Ingest.handle itself (loop, offsets, stats)",
            )
            components[component] += count
        elif phase.startswith("flush"):
            component = next(
                (
                    rule[2]
                    for func, file in reversed(parsed)
                    for rule in _FLUSH_COMPONENTS
                    if _matches(rule, func, file)
                ),
                "other",
            )
            flush_components[f"{phase} / {component}"] += count

    def pct(counter: Counter[str], limit: int | None = None) -> list[tuple[str, float, int]]:
        return [(k, round(100 * v / total, 1), v) for k, v in counter.most_common(limit)]

    busy = total - phases.get("idle (event loop waits for I/O)", 0)
    return {
        "samples": total,
        "busy_samples": busy,
        "by_part": pct(phases),
        "consume_components": pct(components),
        "flush_components": pct(flush_components),
        "top_self": pct(self_time, top),
        "top_inclusive": pct(inclusive, top),
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}{unit}" if value < 100 else f"{value:,.0f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _ratios(result: dict[str, Any], phase: dict[str, Any]) -> tuple[float | None, float | None]:
    """A phase's steady rate over its shape's decode-only and bare-consumer (CRC checked) rates."""
    shape = result["shapes"][phase["shape"]]
    steady = phase.get("steady_spans_per_s")
    decode = shape["decode_only"]["spans_per_s"]
    bare = shape["bare_consumer"]["check_crcs"]["spans_per_s"]
    return (steady / decode if steady and decode else None, steady / bare if steady and bare else None)


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    for phase in result["phases"]:
        if phase["workers"] != 1:
            continue
        to_decode, to_bare = _ratios(result, phase)
        where = f"shape {phase['shape']}, {phase['path']} path: 1 worker steady"
        targets.append(
            {
                "name": f"{where} / decode-only",
                "value": None if to_decode is None else round(to_decode, 3),
                "target": f">= {TARGET_DECODE_RATIO}",
                "met": to_decode is not None and to_decode >= TARGET_DECODE_RATIO,
            }
        )
        targets.append(
            {
                "name": f"{where} / bare aiokafka consumer",
                "value": None if to_bare is None else round(to_bare, 3),
                "target": f">= {TARGET_BARE_RATIO}",
                "met": to_bare is not None and to_bare >= TARGET_BARE_RATIO,
            }
        )
    series = result.get("series")
    if series and not series.get("failure"):
        targets.append(
            {
                "name": "Redis bytes per active series (used_memory delta / series)",
                "value": series["bytes_per_series"],
                "target": f"<= {TARGET_BYTES_PER_SERIES}",
                "met": series["bytes_per_series"] is not None
                and series["bytes_per_series"] <= TARGET_BYTES_PER_SERIES,
            }
        )
        targets.append(
            {
                "name": f"worker peak RSS at {series['series']:,} series (MiB)",
                "value": series["worker_peak_rss_mib"],
                "target": f"< {TARGET_RSS_MIB}",
                "met": series["worker_peak_rss_mib"] < TARGET_RSS_MIB,
            }
        )
        flush = series["flush_update"]
        targets.append(
            {
                "name": f"one flush, {flush['emitted_series']:,} series updated+emitted (s)",
                "value": flush["seconds"],
                "target": f"< {TARGET_FLUSH_S}",
                "met": flush["seconds"] < TARGET_FLUSH_S,
            }
        )
    for key, scaled in (result.get("scaling") or {}).items():
        if not isinstance(scaled, dict):
            continue
        workers = int(key.rsplit("/", 1)[1])
        per_added = (scaled["factor_steady"] - 1) / (workers - 1)
        targets.append(
            {
                "name": f"scaling {key}: each added worker adds (x one worker, steady state)",
                "value": round(per_added, 3),
                "target": f">= {TARGET_SCALING_PER_WORKER} where cores allow (indicative here)",
                "met": per_added >= TARGET_SCALING_PER_WORKER,
            }
        )
    return targets


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print()
    print(
        f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['mem_total_mib']:,} MiB RAM, "
        f"load average at start {'/'.join(f'{x:.1f}' for x in m['loadavg_at_start'])}, "
        f"Python {m['python']}, protobuf {m['protobuf']}; broker {result['servers']['kafka']}, "
        f"Redis {result['servers']['redis']} on the same cores"
    )
    native = result["native_extensions"]
    print(
        f"worker paths run: {', '.join(result['paths'])} (pure = SPANMETRICS_NO_EXTENSIONS=1"
        + (
            f"; base = the {'native' if result.get('baseline_native') else 'pure'} path"
            f" of {result['baseline']}"
            if result.get("baseline")
            else ""
        )
        + "); "
        f"native: {'built (' + ', '.join(native) + ')' if native else 'not built'}"
    )
    print(
        f"{INPUT_PARTITIONS} partitions, dims {', '.join(d['name'] for d in DIMENSIONS)}, "
        f"service graphs {'on' if result.get('service_graphs', True) else 'off'}, "
        f"flush interval {result['flush_interval_s']:g}s"
    )
    for name, shape in result["shapes"].items():
        load, decode, bare = shape["load"], shape["decode_only"], shape["bare_consumer"]
        print()
        print(f"shape {name}: {shape['description']}")
        print(
            f"  load: {load['spans']:,} spans in {load['records']:,} records "
            f"({load['spans_per_record']:g} spans, {load['mean_record_bytes']:,} B each)"
        )
        print(
            f"  decode-only (ExportTraceServiceRequest.FromString): {decode['spans_per_s']:,} spans/s, "
            f"median of {decode['rounds']} (min {decode['spans_per_s_min']:,}, "
            f"max {decode['spans_per_s_max']:,}); "
            f"worker's decode_traces {decode['decode_traces_spans_per_s']:,}"
        )
        share = bare["crc_share_of_time"]
        print(
            "  bare aiokafka consumer (every value, no processing): "
            f"{_fmt(bare['check_crcs']['spans_per_s'])} spans/s with check_crcs, "
            f"{_fmt(bare['no_check_crcs']['spans_per_s'])} without "
            f"(the CRC check: {_fmt(share and round(100 * share, 1))} % of its time)"
        )
    print()
    header = (
        f"{'shape':>5} {'path':>6} {'wkrs':>4} {'steady/s':>9} {'/decode':>7} {'/bare':>6} {'ready/s':>9} "
        f"{'spans/s':>9} {'ready':>7} {'to match':>9} {'rss MiB':>10} {'cpu s':>11} "
        f"{'flush med/max':>13} {'ok':>3}"
    )
    print(header)
    print("-" * len(header))
    for p in result["phases"]:
        to_decode, to_bare = _ratios(result, p)
        flushes = p["flushes"]
        print(
            f"{p['shape']:>5} {p['path']:>6} {p['workers']:>4} {_fmt(p['steady_spans_per_s']):>9} "
            f"{_fmt(to_decode):>7} {_fmt(to_bare):>6} {_fmt(p['spans_per_s_from_readiness']):>9} "
            f"{_fmt(p['spans_per_s']):>9} {_fmt(p['seconds_to_readiness'], 's'):>7} "
            f"{_fmt(p['seconds_to_totals_match'], 's'):>9} "
            f"{'/'.join(str(v) for v in p['worker_peak_rss_mib'].values()):>10} "
            f"{'/'.join(_fmt(v) for v in p['worker_cpu_seconds'].values()):>11} "
            f"{_fmt(flushes.get('seconds_median'))}/{_fmt(flushes.get('seconds_max')):>6} "
            f"{'yes' if p['ok'] else 'NO':>3}"
        )
    print(
        "  steady/s: first flush to last busy flush; ready/s: readiness (partitions assigned) to the last "
        "span applied in Redis; spans/s: process start to totals matched; ready: start-up to readiness"
    )
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for p in result["phases"]:
        groups[(p["shape"], p["path"], p["workers"])].append(p)
    if any(len(g) > 1 for g in groups.values()):
        print("  medians over the repeats (steady/s, /decode, /bare, ready s):")
        for (shape, path, workers), group in groups.items():
            steady = [p["steady_spans_per_s"] for p in group if p.get("steady_spans_per_s")]
            ratios = [_ratios(result, p) for p in group]
            decode_ratios = [r[0] for r in ratios if r[0]]
            bare_ratios = [r[1] for r in ratios if r[1]]
            ready = [p["seconds_to_readiness"] for p in group if p.get("seconds_to_readiness")]
            print(
                f"    {shape}/{path}/{workers}: {len(group)} runs, "
                f"{_fmt(steady and round(statistics.median(steady)))}, "
                f"{_fmt(decode_ratios and statistics.median(decode_ratios))}, "
                f"{_fmt(bare_ratios and statistics.median(bare_ratios))}, "
                f"{_fmt(ready and statistics.median(ready))}"
            )
    for p in result["phases"]:
        cpu = p["cpu_seconds_during_phase"]
        worker_cpu = sum(v or 0 for v in p["worker_cpu_seconds"].values())
        print(
            f"  {p['shape']}/{p['path']}/{p['workers']}: CPU during phase - workers {worker_cpu:.1f}s, "
            f"broker {_fmt(cpu['broker'])}s, redis {_fmt(cpu['redis'])}s, "
            f"bench/reader {_fmt(cpu['bench'])}s; "
            f"{_fmt(p['spans_per_worker_cpu_s'])} spans per worker CPU-second; rebalances {p['rebalances']}; "
            f"ingest path (worker's log) {p.get('ingest_line', {}).get('path', '?')}"
        )
    scaling = result.get("scaling")
    if scaling:
        print(
            f"scaling: {scaling['description']} (machine has {m['nproc']} cores "
            "shared with broker and Redis: indicative only)"
        )
    series = result.get("series")
    if series and not series.get("failure"):
        print()
        print(
            f"series phase: {series['series']:,} active series in {series['records']:,} records "
            f"({series['span_metrics_series']:,} calls+duration, "
            f"{series['histogram_buckets']} buckets), {series['spans_per_round']:,} spans per round"
        )
        print(
            f"  Redis: used_memory +{series['used_memory_delta']:,} B = "
            f"{series['bytes_per_series']} B/series "
            f"({series['bytes_per_calls_duration_pair']} B per calls+duration pair); MEMORY USAGE of the "
            f"slot hashes {series['bytes_per_series_memory_usage']} B/series; mean record "
            f"{series['redis']['mean_record_bytes_by_metric']}"
        )
        print(
            f"  worker RSS: peak {series['worker_peak_rss_mib']} MiB, before the first flush "
            f"{series['worker_rss_mib_before_first_flush']} MiB, "
            f"at the end {series['worker_rss_mib_at_end']} MiB"
        )
        for label in ("flush_create", "flush_update", "flush_idle"):
            f = series[label]
            slow = ", ".join(f"{k} {v['count']}x {v['seconds']}s" for k, v in f["redis_slowlog"].items())
            print(
                f"  {label:<13} {f['seconds']:.3f}s (Redis step {f['redis_seconds']:.3f}s, emission+commit "
                f"{f['emission_and_commit_seconds']:.3f}s: fold {f['fold_seconds']:.3f}s, encode+send "
                f"{f['send_seconds']:.3f}s, acks {f['confirm_seconds']:.3f}s), merged {f['merged_spans']:,} "
                "spans, emitted "
                f"{f['emitted_series']:,} series in {f['emitted_records']} records; "
                f"Redis slowlog: {slow or '-'}"
            )
        print(f"  Redis commandstats during the phase: {series['redis_commandstats']}")
    elif series:
        print(f"series phase FAILED: {series['failure']}")
    profile = result.get("profile") or {}
    for shape in result["shapes"]:
        shape_profile = profile.get(shape) or {}
        if not shape_profile.get("summary"):
            continue
        s = shape_profile["summary"]
        print()
        print(
            f"profile, shape {shape}, {shape_profile['run']['path']} path ({shape_profile['path']}): "
            f"{s['samples']} main-thread samples, {s['busy_samples']} busy"
        )
        for name, percent, _ in s["by_part"]:
            print(f"  {percent:5.1f}%  {name}")
        print("  inside consume:")
        for name, percent, _ in s["consume_components"]:
            print(f"    {percent:5.1f}%  {name}")
        print("  top functions (self):")
        for name, percent, _ in s["top_self"][:12]:
            print(f"    {percent:5.1f}%  {name}")
    series_profile = profile.get("series")
    if series_profile and series_profile.get("summary"):
        s = series_profile["summary"]
        print()
        print(
            f"series-phase profile ({series_profile['path']}): {s['samples']} samples "
            f"({s['samples'] / PROFILE_RATE:.1f}s), {s['busy_samples']} busy; seconds of CPU by part:"
        )
        for name, _, samples in s["by_part"]:
            print(f"  {samples / PROFILE_RATE:6.2f}s  {name}")
        print("  inside flushes (all three flushes together):")
        for name, _, samples in s["flush_components"]:
            print(f"    {samples / PROFILE_RATE:6.2f}s  {name}")
    print()
    print("targets:")
    for t in result["targets"]:
        print(f"  [{'ok' if t['met'] else 'MISS'}] {t['name']}: {t['value']} (target {t['target']})")
    print(f"\nJSON: {result['json_path']}")


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


SHAPES: dict[str, str] = {
    "A": "one record per trace, keyed by trace id (Collector Kafka exporter, partition_traces_by_id)",
    "B": f"keyless batches of about {BATCH_SPANS:,} spans per record",
}


def generate_shape(shape: str, spans: int, services: int) -> Load:
    return generate(spans, services=services, seed=1, batch_spans=BATCH_SPANS if shape == "B" else 0)


async def run(
    args: argparse.Namespace, kafka: KafkaEndpoint, redis: RedisEndpoint, log_dir: Path
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    bootstrap = kafka.bootstrap_servers
    native = native_extensions()
    paths = [p for p in args.paths if p != "native" or native]
    if args.baseline:
        BASELINE["base"] = Path(args.baseline).resolve()
        PATH_ENV["base"] = PATH_ENV["native" if args.baseline_native else "pure"]
        paths.insert(0, "base")
    result: dict[str, Any] = {
        "schema": 2,
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "machine": machine_description(),
        "source": source_state(),
        "environment": relevant_environment(),
        "servers": {
            "kafka": f"{type(kafka).__name__} {bootstrap}",
            "redis": f"{type(redis).__name__}",
        },
        "flush_interval_s": args.flush_interval,
        "session_timeout": SESSION_TIMEOUT,
        "dimensions": [d["name"] for d in DIMENSIONS],
        "native_extensions": native,
        "baseline": args.baseline and str(Path(args.baseline).resolve()),
        "baseline_native": bool(args.baseline and args.baseline_native),
        "service_graphs": not args.no_service_graphs,
        "paths": paths,
        "shapes": {},
    }
    if "native" in args.paths and not native:
        say("native: not built (no compiled module in the worker package); running the pure path only")
    contexts: dict[str, Context] = {}
    decode_timers: dict[str, DecodeTimer] = {}
    bare_timers: dict[str, BareConsumerTimer] = {}
    for shape in args.shapes:
        say(
            f"shape {shape}: generating {args.spans:,} spans from the traffic model "
            f"({args.services} services)"
        )
        load = await asyncio.to_thread(generate_shape, shape, args.spans, args.services)
        input_topic = f"e2e-{run_id}-{shape.lower()}-in"
        await create_topics(bootstrap, {input_topic: INPUT_PARTITIONS})
        say(
            f"shape {shape}: producing {len(load.records):,} records ({load.size / 1e6:.0f} MB) "
            f"to {input_topic}"
        )
        produce_seconds = await produce(bootstrap, input_topic, load.records)
        result["shapes"][shape] = {
            "description": SHAPES[shape],
            "load": {
                "spans": load.spans,
                "records": len(load.records),
                "bytes": load.size,
                "mean_record_bytes": round(load.size / len(load.records)),
                "spans_per_record": round(load.spans / len(load.records), 2),
                "services": args.services,
                "generate_seconds": round(load.seconds, 1),
                "produce_seconds": round(produce_seconds, 1),
            },
        }
        contexts[shape] = Context(
            bootstrap=bootstrap,
            redis_url=redis.url,
            kafka_pid=getattr(kafka, "pid", None),
            redis_pid=getattr(redis, "pid", None),
            run_id=run_id,
            log_dir=log_dir,
            input_topic=input_topic,
            load=load,
            flush_interval=args.flush_interval,
            timeout=args.timeout,
            path=[p for p in paths if p != "base"][-1],
            service_graphs=not args.no_service_graphs,
        )
        decode_timers[shape] = DecodeTimer(load.values, load.spans)
        bare_timers[shape] = BareConsumerTimer(bootstrap, input_topic, len(load.records), load.spans)

    async def baselines(shape: str) -> None:
        """Decode-only and bare-consumer rounds of one shape, between its worker phases."""
        decode_timers[shape].rounds(args.decode_rounds)
        await bare_timers[shape].rounds(args.decode_rounds)

    for shape in args.shapes:
        await baselines(shape)
        say(
            f"shape {shape}: decode-only {statistics.median(decode_timers[shape].bare):,.0f} spans/s, "
            f"bare consumer {statistics.median(bare_timers[shape].rates[True]):,.0f} spans/s so far"
        )
    phases: list[dict[str, Any]] = []
    for shape in args.shapes:
        for repeat in range(args.repeat):
            # Repeats alternate the order of the paths, so that neither always runs first.
            for path in paths if repeat % 2 == 0 else paths[::-1]:
                for workers in args.workers_list:
                    phase = await throughput_phase(
                        contexts[shape], workers, shape=shape, path=path, repeat=repeat
                    )
                    phases.append(phase)
                    say(
                        f"phase {shape}/{path}/{workers} worker(s): steady "
                        f"{phase['steady_spans_per_s'] or '-'} spans/s, ready after "
                        f"{phase['seconds_to_readiness']}s, ok={phase['ok']}"
                    )
                    await baselines(shape)
    for shape in args.shapes:
        result["shapes"][shape]["decode_only"] = decode_timers[shape].summary()
        result["shapes"][shape]["bare_consumer"] = bare_timers[shape].summary()
    result["phases"] = phases
    scaling: dict[str, Any] = {"nproc": os.cpu_count()}
    parts = []
    for shape in args.shapes:
        for path in paths:
            by_workers = {
                p["workers"]: p
                for p in phases
                if p["shape"] == shape and p["path"] == path and p.get("steady_spans_per_s")
            }
            one = by_workers.get(1)
            for workers, phase in sorted(by_workers.items()):
                if one is None or workers == 1:
                    continue
                factor = phase["steady_spans_per_s"] / one["steady_spans_per_s"]
                scaling[f"{shape}/{path}/{workers}"] = {"factor_steady": round(factor, 3)}
                parts.append(f"{shape}/{path}: {workers} workers = {factor:.2f}x one worker (steady state)")
    if parts:
        scaling["description"] = "; ".join(parts)
        result["scaling"] = scaling
    ctx = contexts.get("A") or contexts[args.shapes[0]]
    series_load: Load | None = None
    if args.series:
        series_load = await asyncio.to_thread(generate_series_load, args.series, args.services)
        say(
            f"series phase ({ctx.path} path): {series_load.spans:,} spans with a unique "
            f"{SERIES_DIMENSION} in {len(series_load.records):,} records"
        )
        try:
            result["series"] = await series_phase(ctx, series_load, args.series, args.series_flush_interval)
        except (RuntimeError, TimeoutError) as exc:
            result["series"] = {"failure": str(exc)}
            say(f"series phase failed: {exc}")
    if args.profile:
        result["profile"] = {}
        for shape in args.shapes:
            profile_path = Path(args.json).with_suffix(f".{shape.lower()}.pyspy.txt")
            say(f"profile run: shape {shape}, 1 worker ({ctx.path} path) under py-spy -> {profile_path}")
            phase = await throughput_phase(
                contexts[shape], 1, shape=shape, path=ctx.path, profile=profile_path
            )
            result["profile"][shape] = {
                "path": str(profile_path),
                "run": {k: phase[k] for k in ("ok", "path", "steady_spans_per_s", "seconds_to_totals_match")},
                "summary": summarize_profile(profile_path) if profile_path.exists() else None,
            }
        if series_load is not None:
            series_path = Path(args.json).with_suffix(".series.pyspy.txt")
            say(f"profile run: series phase under py-spy -> {series_path}")
            try:
                profiled = await series_phase(
                    ctx, series_load, args.series, args.series_flush_interval, profile=series_path
                )
            except (RuntimeError, TimeoutError) as exc:
                say(f"profiled series phase failed: {exc}")
            else:
                result["profile"]["series"] = {
                    "path": str(series_path),
                    "flushes": {k: profiled[k] for k in ("flush_create", "flush_update", "flush_idle")},
                    "summary": summarize_profile(series_path) if series_path.exists() else None,
                }
    result["targets"] = evaluate(result)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--spans", type=int, help="spans to pre-produce per shape (default 1,000,000; --quick 100,000)"
    )
    parser.add_argument("--shapes", default="A,B", help="record shapes to run: A, B or A,B (default A,B)")
    parser.add_argument(
        "--paths",
        default="pure,native",
        help="worker paths: pure (SPANMETRICS_NO_EXTENSIONS=1), native (when built); default both",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the pure path of another checkout (path 'base'), for before/after in one run",
    )
    parser.add_argument(
        "--baseline-native",
        action="store_true",
        help="the path 'base' runs the other checkout's compiled ingest (built in place there) instead",
    )
    parser.add_argument("--workers-list", help="worker counts to run, e.g. 1,2 (default 1,2; --quick 1)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each shape's paths this many times, alternating (default 1)",
    )
    parser.add_argument(
        "--series", type=int, help="active series for the memory/flush phase, 0 to skip (default 100,000)"
    )
    parser.add_argument("--quick", action="store_true", help="a 100k-span, 1-worker, 10k-series smoke run")
    parser.add_argument("--json", help="where to write the JSON (default bench/results/e2e-<time>.json)")
    parser.add_argument("--services", type=int, default=6, help="services in the traffic model (default 6)")
    parser.add_argument(
        "--flush-interval",
        type=float,
        help="worker flush interval in the throughput phases (default 2 s, quick 0.5 s)",
    )
    parser.add_argument(
        "--series-flush-interval",
        type=float,
        help="flush interval of the series phase (default 15 s, quick 5 s)",
    )
    parser.add_argument(
        "--decode-rounds", type=int, help="decode-only and bare-consumer rounds between phases (default 3)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on a phase after this long (s)")
    parser.add_argument(
        "--profile", action="store_true", help="also profile one worker per shape with py-spy (untimed)"
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile: py-spy --native (C frames of the compiled modules too)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep worker logs and configs")
    parser.add_argument(
        "--no-service-graphs",
        action="store_true",
        help="span metrics only (the connector's configuration), instead of with service graphs",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.spans = args.spans or (100_000 if quick else 1_000_000)
    args.series = args.series if args.series is not None else (10_000 if quick else 100_000)
    args.series_flush_interval = args.series_flush_interval or (5.0 if quick else 15.0)
    args.decode_rounds = args.decode_rounds or (2 if quick else 3)
    # Steady rates come from the flush lines: a short run needs short intervals to have some.
    args.flush_interval = args.flush_interval or (0.5 if quick else 2.0)
    try:
        args.workers_list = [
            int(w) for w in (args.workers_list or ("1" if quick else "1,2")).split(",") if w.strip()
        ]
    except ValueError:
        parser.error("--workers-list takes comma-separated integers, e.g. 1,2")
    if not args.workers_list or min(args.workers_list) < 1 or args.spans < 1:
        parser.error("--workers-list needs positive counts and --spans must be positive")
    args.shapes = [s.strip().upper() for s in args.shapes.split(",") if s.strip()]
    if not args.shapes or set(args.shapes) - set(SHAPES):
        parser.error("--shapes takes A, B or A,B")
    args.paths = [p.strip().lower() for p in args.paths.split(",") if p.strip()]
    if not args.paths or set(args.paths) - set(PATH_ENV):
        parser.error("--paths takes pure, native or pure,native")
    if args.json is None:
        args.json = str(RESULTS_DIR / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return args


def main(argv: list[str] | None = None) -> int:
    global PROFILE_NATIVE
    args = parse_args(argv)
    PROFILE_NATIVE = args.profile_native
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="spanmetrics-e2e-"))
    kafka: KafkaEndpoint | None = None
    redis: RedisEndpoint | None = None
    failed = True
    try:
        kafka = kafka_from_env_or_embedded()
        redis = redis_from_env_or_embedded()
        say(f"kafka {kafka.bootstrap_servers}, redis {redis.url}, logs {log_dir}")
        result = asyncio.run(run(args, kafka, redis, log_dir))
        result["json_path"] = str(json_path)
        json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print_report(result)
        failed = not all(p["ok"] for p in result["phases"]) or bool(result.get("series", {}).get("failure"))
    finally:
        for server in (redis, kafka):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if args.keep_logs or failed:
            say(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
