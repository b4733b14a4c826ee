"""``spanmetrics dev``: broker, Redis, N worker processes, load and the live table on one machine.

Everything it starts, it stops (``--duration``, Ctrl-C, SIGTERM); each run has its own group and prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import yaml

from devtools.loadgen.producer import run_loadgen
from devtools.servers import (
    DevServerError,
    ExternalKafka,
    ExternalRedis,
    KafkaEndpoint,
    RedisEndpoint,
    create_topics,
    kafka_from_env_or_embedded,
    redis_from_env_or_embedded,
    require_server_wheels_for_env,
    wait_for_kafka,
)
from devtools.top import run_top
from worker.model.errors import ConfigError

__all__ = ["DevOptions", "run_dev"]

INPUT_TOPIC = "otlp_spans"
OUTPUT_TOPIC = "otlp_metrics"
DLQ_TOPIC = "otlp_spans_dlq"
INPUT_PARTITIONS = 8
OUTPUT_PARTITIONS = 4
DLQ_PARTITIONS = 1

#: Seconds a worker gets between SIGTERM and SIGKILL (it promises to be done within ~25 s).
STOP_GRACE = 30.0
#: Seconds an external KAFKA_BOOTSTRAP_SERVERS / REDIS_URL gets to answer before the run gives up.
EXTERNAL_WAIT = 10.0
#: Service-graph latency buckets (seconds) fine enough for the dev model's edges: with Tempo's
#: default (0.1, 0.2, 0.4, ...) most edges fall in the first bucket and every p95 reads 95.0 ms
#: (0.95 of the way through [0, 100 ms]).
SERVICE_GRAPH_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
STOPPING_LINE = "spanmetrics dev: stopping (Ctrl-C again skips the workers' grace period)"


@dataclass(frozen=True, slots=True)
class DevOptions:
    """What ``spanmetrics dev`` was asked for."""

    workers: int = 2
    duration: float | None = None
    rate: float = 50.0
    services: int = 6
    flush_interval: float = 2.0
    service_graphs: bool = True
    keep_logs: bool = False

    def check(self) -> None:
        """Raise :class:`ConfigError` for values no run can use (before anything is started)."""
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.flush_interval <= 0:
            raise ConfigError(f"flush interval must be positive, got {self.flush_interval:g}s")
        if self.rate < 0:
            raise ConfigError(f"rate must not be negative, got {self.rate:g}")


@dataclass(slots=True)
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    reported: bool = False


@dataclass(slots=True)
class _Session:
    """Shared state between the tasks of one run and the code that stops it."""

    options: DevOptions
    log_dir: Path
    config_path: Path
    bootstrap: str = ""
    redis_url: str = ""
    workers: list[_Worker] = field(default_factory=list)
    failed: bool = False
    notices: list[str] = field(default_factory=list)
    loadgen_line: str = "loadgen: starting"


# --------------------------------------------------------------------------------------------------
# Signals: Ctrl-C / SIGTERM stop the run in order, a second one skips the grace periods.
# --------------------------------------------------------------------------------------------------


class _Signals:
    """SIGINT/SIGTERM handling across the three phases of a run.

    Starting: the signal raises KeyboardInterrupt (start-up aborts, the ``finally`` cleans up).
    Running: it sets the stop event. Stopping: it asks to skip the remaining grace periods.
    """

    def __init__(self) -> None:
        self.stop_requested = threading.Event()
        self.force = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self.said_stopping = False
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        if threading.current_thread() is threading.main_thread():  # signals are main-thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def running(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self._loop, self._stop = loop, stop

    def stopping(self) -> None:
        self._stopping = True
        self._loop = self._stop = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping or self.stop_requested.is_set():
            if not self.force.is_set():
                print("spanmetrics dev: stopping now (SIGKILL)", file=sys.stderr, flush=True)
            self.force.set()
            return
        self.stop_requested.set()
        if self._loop is not None and self._stop is not None:
            # Said at once: the table stops, then the workers flush and leave (a few seconds).
            print(STOPPING_LINE, file=sys.stderr, flush=True)
            self.said_stopping = True
            self._loop.call_soon_threadsafe(self._stop.set)
            return
        raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------------


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook making the kernel SIGKILL the child if we die (Linux, main thread only)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: no dlopen after fork
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return hook


def _start_worker(index: int, config_path: Path, log_dir: Path) -> _Worker:
    log_path = log_dir / f"worker-{index}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),
        )
    return _Worker(index, proc, log_path)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<log is empty>"


def _report_exit(worker: _Worker, why: str) -> str:
    message = (
        f"worker {worker.index} (pid {worker.proc.pid}) {why} with code {worker.proc.returncode}; "
        f"last lines of {worker.log_path}:\n{_tail(worker.log_path)}"
    )
    print(f"spanmetrics dev: {message}", file=sys.stderr, flush=True)
    return message


def _stop_workers(session: _Session, signals: _Signals) -> None:
    """SIGTERM every live worker, wait up to the grace period, SIGKILL what is left; report failures."""
    live = [w for w in session.workers if w.proc.poll() is None]
    for worker in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while (
        any(w.proc.poll() is None for w in live)
        and time.monotonic() < deadline
        and not signals.force.is_set()
    ):
        time.sleep(0.1)
    for worker in live:
        if worker.proc.poll() is None:
            print(f"spanmetrics dev: worker {worker.index} did not stop in time, killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
            session.failed = True
    for worker in session.workers:
        if worker.proc.returncode != 0 and not worker.reported:
            worker.reported = True
            _report_exit(worker, "exited")
            session.failed = True


# --------------------------------------------------------------------------------------------------
# The running session
# --------------------------------------------------------------------------------------------------


def _footer(session: _Session) -> list[str]:
    alive = sum(1 for w in session.workers if w.proc.poll() is None)
    lines = [
        f"kafka {session.bootstrap}  redis {session.redis_url}",
        f"config {session.config_path}  logs {session.log_dir}",
        f"workers {alive}/{len(session.workers)} running  |  {session.loadgen_line}",
    ]
    lines.extend(note.splitlines()[0] for note in session.notices[-3:])
    return lines


async def _watch_workers(session: _Session, stop: asyncio.Event) -> None:
    """Say so (with the log tail) as soon as a worker dies; stop when none is left."""
    while not stop.is_set():
        for worker in session.workers:
            if worker.proc.poll() is not None and not worker.reported:
                worker.reported = True
                session.failed = True
                session.notices.append(_report_exit(worker, "exited"))
        if all(w.proc.poll() is not None for w in session.workers):
            print("spanmetrics dev: no worker left, stopping", file=sys.stderr, flush=True)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def _loadgen(session: _Session, stop: asyncio.Event) -> None:
    def report(line: str) -> None:
        session.loadgen_line = line

    try:
        await run_loadgen(
            session.bootstrap,
            INPUT_TOPIC,
            rate=session.options.rate,
            services=session.options.services,
            stop=stop,
            progress_interval=max(1.0, session.options.flush_interval),
            report=report,
        )
    except Exception as exc:
        session.failed = True
        print(f"spanmetrics dev: load generator failed: {exc!r}", file=sys.stderr, flush=True)
        stop.set()


async def _main(session: _Session, signals: _Signals, out: TextIO) -> None:
    stop = asyncio.Event()
    signals.running(asyncio.get_running_loop(), stop)
    if signals.stop_requested.is_set():
        return
    options = session.options
    tasks = [
        asyncio.create_task(_watch_workers(session, stop)),
        asyncio.create_task(_loadgen(session, stop)),
        asyncio.create_task(
            run_top(
                session.bootstrap,
                OUTPUT_TOPIC,
                refresh=options.flush_interval,
                stop=stop,
                out=out,
                title=f"spanmetrics dev - {options.workers} workers, {options.rate:g} traces/s",
                footer=lambda: _footer(session),
            )
        ),
    ]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=options.duration)
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                session.failed = True
                print(f"spanmetrics dev: {result!r}", file=sys.stderr, flush=True)


def _write_config(session: _Session, run_id: str) -> None:
    options = session.options
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": session.bootstrap,
            "input_topic": INPUT_TOPIC,
            "output_topic": OUTPUT_TOPIC,
            "dlq_topic": DLQ_TOPIC,
            "group_id": f"spanmetrics-dev-{run_id}",
        },
        "redis": {"url": session.redis_url, "key_prefix": f"spanmetrics-dev-{run_id}"},
        "spanmetrics": {"metrics_flush_interval": f"{options.flush_interval:g}s"},
        "servicegraphs": {"enabled": options.service_graphs, "histogram_buckets": SERVICE_GRAPH_BUCKETS},
        "http": {"enabled": False},
        "log": {"level": "info", "format": "json"},
    }
    session.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs each refused connection on stderr; the one line we raise says it all."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reach_external_kafka(bootstrap: str) -> None:
    """Fail in one line if KAFKA_BOOTSTRAP_SERVERS does not answer a metadata request in time."""
    started = time.monotonic()
    try:
        with _quiet_aiokafka():
            asyncio.run(wait_for_kafka(bootstrap, timeout=EXTERNAL_WAIT))
    except TimeoutError as exc:
        cause = str(exc).rpartition("last error: ")[2] or "no answer"
        raise DevServerError(
            f"Kafka at {bootstrap} (from KAFKA_BOOTSTRAP_SERVERS) did not answer within "
            f"{time.monotonic() - started:.0f} s: {cause}; fix it, or unset it to use the embedded broker"
        ) from None


def _reach_external_redis(url: str) -> None:
    """Fail in one line if REDIS_URL does not answer a PING in time."""
    import redis

    from worker.observability.logs import redact_url

    started = time.monotonic()
    client = redis.Redis.from_url(url, socket_connect_timeout=EXTERNAL_WAIT, socket_timeout=EXTERNAL_WAIT)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise DevServerError(
            f"Redis at {redact_url(url)} (from REDIS_URL) did not answer within "
            f"{time.monotonic() - started:.0f} s: {exc}; fix it, or unset it to use the embedded server"
        ) from None
    finally:
        client.close()


def _say(line: str) -> None:
    print(f"spanmetrics dev: {line}", flush=True)


def run_dev(options: DevOptions, *, out: TextIO | None = None) -> int:
    """Run the stack until the duration passed or a signal arrived; return the exit status.

    0 when everything ran and stopped cleanly, 1 when a worker died or failed to stop, or the load
    generator failed.
    """
    options.check()
    require_server_wheels_for_env()
    out = out if out is not None else sys.stdout
    log_dir = Path(tempfile.mkdtemp(prefix="spanmetrics-dev-"))
    session = _Session(options=options, log_dir=log_dir, config_path=log_dir / "config.yaml")
    signals = _Signals()
    kafka: KafkaEndpoint | None = None
    redis: RedisEndpoint | None = None
    run_id = uuid.uuid4().hex[:8]
    interrupted = False
    with signals.installed():
        try:
            _say(f"log dir {log_dir}")
            kafka = kafka_from_env_or_embedded()
            session.bootstrap = kafka.bootstrap_servers
            _say(f"kafka {session.bootstrap} ({_describe(kafka)})")
            if isinstance(kafka, ExternalKafka):
                _reach_external_kafka(session.bootstrap)
            redis = redis_from_env_or_embedded()
            session.redis_url = redis.url
            _say(f"redis {session.redis_url} ({_describe(redis)})")
            if isinstance(redis, ExternalRedis):
                _reach_external_redis(session.redis_url)
            asyncio.run(
                create_topics(
                    session.bootstrap,
                    {
                        INPUT_TOPIC: INPUT_PARTITIONS,
                        OUTPUT_TOPIC: OUTPUT_PARTITIONS,
                        DLQ_TOPIC: DLQ_PARTITIONS,
                    },
                )
            )
            _write_config(session, run_id)
            _say(f"config {session.config_path}")
            for index in range(1, options.workers + 1):
                worker = _start_worker(index, session.config_path, log_dir)
                session.workers.append(worker)
                _say(f"worker {index} pid {worker.proc.pid} log {worker.log_path}")
            asyncio.run(_main(session, signals, out))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            signals.stopping()
            if not signals.said_stopping:
                _say("stopping")
            _stop_workers(session, signals)
            for server in (redis, kafka):
                if server is not None:
                    try:
                        server.stop()
                    except Exception as exc:
                        session.failed = True
                        print(f"spanmetrics dev: cannot stop {server!r}: {exc}", file=sys.stderr)
            if options.keep_logs or session.failed:
                _say(f"logs kept in {log_dir}")
            else:
                shutil.rmtree(log_dir, ignore_errors=True)
    if interrupted and not session.workers:
        return 130
    return 1 if session.failed else 0


def _describe(server: object) -> str:
    pid = getattr(server, "pid", None)
    if pid is None:
        return "external"
    return f"embedded {type(server).__name__}, pid {pid}"
