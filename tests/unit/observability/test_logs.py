"""Logging: JSON lines with event/level/timestamp, one pipeline for libraries, and no secret ever printed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from pydantic import SecretStr

from worker.config import LogConfig, Settings
from worker.observability.logs import LIBRARY_LOGGERS, MASK, configure_logging, redact_secrets, redact_url
from worker.service import effective_configuration, log_configuration

SASL_SECRET = "sasl-Hunter2-do-not-print"
REDIS_SECRET = "redis-S3cr3t-do-not-print"
REDIS_EXTRA_SECRET = "redis-other-pw-do-not-print"


class TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    library_levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in library_levels.items():
        logging.getLogger(name).setLevel(library_level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def json_lines(buffer: io.StringIO) -> list[dict[str, object]]:
    lines = buffer.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def secret_settings() -> Settings:
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap_servers": "kafka-0.kafka:9093",
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "spanmetrics",
                "sasl_password": SASL_SECRET,
            },
            "redis": {
                "url": f"redis://default:{REDIS_SECRET}@redis.example:6379/0",
                "password": REDIS_EXTRA_SECRET,
            },
        }
    )


def test_json_lines_have_event_level_timestamp() -> None:
    buffer = io.StringIO()
    configure_logging(LogConfig(level="info", format="json"), stream=buffer)
    log = structlog.get_logger("spanmetrics.test")
    log.info("flush", partition=3, offsets={"3": 120}, seconds=0.25)
    log.debug("not shown at info")
    log.bind(partition=1).warning("record sent to the dead-letter topic", offset=7)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("flush failed")

    records = json_lines(buffer)
    assert [r["event"] for r in records] == ["flush", "record sent to the dead-letter topic", "flush failed"]
    for record in records:
        assert {"event", "level", "timestamp", "logger"} <= set(record)
        assert str(record["timestamp"]).endswith("Z")
        assert record["logger"] == "spanmetrics.test"
    assert records[0]["level"] == "info"
    assert records[0]["partition"] == 3
    assert records[0]["offsets"] == {"3": 120}
    assert records[1] == records[1] | {"level": "warning", "partition": 1, "offset": 7}
    assert records[2]["level"] == "error"
    assert "RuntimeError: boom" in str(records[2]["exception"])


def test_library_loggers_share_the_pipeline() -> None:
    buffer = io.StringIO()
    configure_logging(LogConfig(level="info", format="json"), stream=buffer)
    logging.getLogger("aiokafka.consumer.group_coordinator").info("heartbeat chatter")
    logging.getLogger("aiokafka.conn").warning("Unable to connect to %s", "kafka-0:9092")
    logging.getLogger("redis.asyncio.connection").error("connection lost")

    records = json_lines(buffer)
    assert [(r["logger"], r["level"], r["event"]) for r in records] == [
        ("aiokafka.conn", "warning", "Unable to connect to kafka-0:9092"),
        ("redis.asyncio.connection", "error", "connection lost"),
    ]
    assert all("timestamp" in r for r in records)


def test_debug_level_lets_library_info_through() -> None:
    buffer = io.StringIO()
    configure_logging(LogConfig(level="debug", format="json"), stream=buffer)
    logging.getLogger("aiokafka.consumer").info("joined group")
    structlog.get_logger("spanmetrics").debug("details")
    assert [r["event"] for r in json_lines(buffer)] == ["joined group", "details"]


def test_auto_format_is_json_off_a_terminal_and_console_on_one() -> None:
    piped = io.StringIO()
    configure_logging(LogConfig(format="auto"), stream=piped)
    structlog.get_logger("spanmetrics").info("worker started", partitions=4)
    assert json_lines(piped)[0]["event"] == "worker started"

    terminal = TtyBuffer()
    configure_logging(LogConfig(format="auto"), stream=terminal)
    structlog.get_logger("spanmetrics").info("worker started", partitions=4)
    line = terminal.getvalue()
    assert "worker started" in line and "partitions" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_console_format_renders_readable_lines_without_colors_off_a_terminal() -> None:
    buffer = io.StringIO()
    configure_logging(LogConfig(format="console"), stream=buffer)
    structlog.get_logger("spanmetrics").info("partitions assigned", partitions=[0, 1])
    line = buffer.getvalue()
    assert "partitions assigned" in line and "partitions=[0, 1]" in line
    assert "\x1b[" not in line


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_configuration_is_logged_once_with_secrets_masked(fmt: str) -> None:
    buffer = io.StringIO()
    configure_logging(LogConfig(format=fmt), stream=buffer)  # type: ignore[arg-type]
    log_configuration(structlog.get_logger("spanmetrics"), secret_settings())
    output = buffer.getvalue()

    for secret in (SASL_SECRET, REDIS_SECRET, REDIS_EXTRA_SECRET):
        assert secret not in output
    assert MASK in output
    # Still useful: which servers and which user, just not the passwords.
    assert "redis.example:6379" in output
    assert "kafka-0.kafka:9093" in output
    if fmt == "json":
        (record,) = json_lines(buffer)
        assert record["event"] == "configuration"
        kafka, redis = record["kafka"], record["redis"]
        assert isinstance(kafka, dict) and isinstance(redis, dict)
        assert kafka["sasl_password"] == MASK
        assert kafka["sasl_username"] == "spanmetrics"
        assert redis["url"] == f"redis://default:{MASK}@redis.example:6379/0"
        assert redis["password"] == MASK
        assert set(record) >= {"spanmetrics", "servicegraphs", "kafka", "redis", "worker", "http", "log"}


def test_effective_configuration_has_no_secret_anywhere() -> None:
    dumped = json.dumps(effective_configuration(secret_settings()))
    for secret in (SASL_SECRET, REDIS_SECRET, REDIS_EXTRA_SECRET):
        assert secret not in dumped


def test_secrets_passed_by_mistake_are_masked_too() -> None:
    buffer = io.StringIO()
    configure_logging(LogConfig(format="json"), stream=buffer)
    log = structlog.get_logger("spanmetrics")
    log.info("secret value", password=SecretStr(SASL_SECRET), nested={"sasl_password": SASL_SECRET})
    log.error("cannot connect", error=f"Error connecting to redis://:{REDIS_SECRET}@redis:6379/0")
    logging.getLogger("redis").error("url was rediss://user:%s@redis:6380", REDIS_SECRET)
    try:
        raise ValueError(f"bad url redis://u:{REDIS_SECRET}@host:1")
    except ValueError:
        log.exception("start failed")
    output = buffer.getvalue()
    assert SASL_SECRET not in output and REDIS_SECRET not in output
    records = json_lines(buffer)
    assert records[0]["password"] == MASK
    assert records[0]["nested"] == {"sasl_password": MASK}
    assert records[1]["error"] == f"Error connecting to redis://:{MASK}@redis:6379/0"
    assert records[2]["event"] == f"url was rediss://user:{MASK}@redis:6380"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@localhost:6379/0", f"redis://:{MASK}@localhost:6379/0"),
        ("rediss://default:pw@cache.internal:6380/2", f"rediss://default:{MASK}@cache.internal:6380/2"),
        ("redis://pw@localhost", f"redis://{MASK}@localhost"),
        ("redis://h:1/0?password=pw&db=2", f"redis://h:1/0?password={MASK}&db=2"),
        ("unix:///var/run/redis.sock?db=1", "unix:///var/run/redis.sock?db=1"),
        ("unix://:pw@/var/run/redis.sock?db=1", f"unix://:{MASK}@/var/run/redis.sock?db=1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_secrets_leaves_ordinary_values_alone() -> None:
    event = {"event": "flush", "partitions": [0, 1], "seconds": 0.2, "password": None, "topic": "a@b"}
    assert redact_secrets(None, "info", dict(event)) == event
