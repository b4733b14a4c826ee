"""The ``remote_write:`` section: validated at start, secrets from env or files, never logged."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from worker.config import load_config
from worker.model.errors import ConfigError
from worker.service import effective_configuration, log_configuration
from worker.sinks.remote_write import ssl_context

pytestmark = pytest.mark.usefixtures("clean_env")


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults(tmp_path: Path) -> None:
    settings = _load(tmp_path, "remote_write: {url: http://prom:9090/api/v1/write}\n")
    remote = settings.remote_write
    assert remote is not None
    assert remote.tenant_header == "X-Scope-OrgID"
    assert remote.timeout == 10.0
    assert remote.headers == {}
    assert _load(tmp_path, "").remote_write is None


def test_header_values_from_env_and_file_are_never_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RW_TOKEN", "s3cret-env")
    secret = tmp_path / "token"
    secret.write_text("s3cret-file\n", encoding="utf-8")
    settings = _load(
        tmp_path,
        "remote_write:\n"
        "  url: https://user:pw@mimir/api/v1/push\n"
        "  headers:\n"
        "    Authorization: Bearer ${env:RW_TOKEN}\n"
        f"    X-Api-Key: ${{file:{secret}}}\n",
    )
    assert settings.remote_write is not None
    headers = {k: v.get_secret_value() for k, v in settings.remote_write.headers.items()}
    assert headers == {"Authorization": "Bearer s3cret-env", "X-Api-Key": "s3cret-file"}
    with capture_logs() as logs:
        log_configuration(__import__("structlog").get_logger("t"), settings)
    text = repr(logs) + repr(effective_configuration(settings))
    assert "s3cret" not in text
    assert ":pw@" not in text


def test_missing_env_and_file_are_named(tmp_path: Path) -> None:
    message = _error(
        tmp_path, "remote_write: {url: http://p/api/v1/write, headers: {Authorization: '${env:NOPE_X}'}}\n"
    )
    assert "remote_write.headers.Authorization" in message and "NOPE_X" in message
    message = _error(
        tmp_path, "remote_write: {url: http://p/api/v1/write, headers: {X-Key: '${file:/nonexistent/k}'}}\n"
    )
    assert "remote_write.headers.X-Key" in message and "/nonexistent/k" in message


@pytest.mark.parametrize(
    "header", ["Content-Encoding", "content-type", "User-Agent", "X-Prometheus-Remote-Write-Version"]
)
def test_reserved_headers_are_refused(tmp_path: Path, header: str) -> None:
    message = _error(tmp_path, f"remote_write: {{url: http://p/api/v1/write, headers: {{{header}: x}}}}\n")
    assert "remote_write" in message and header in message and "reserved" in message


def test_tenant_header_in_headers_is_refused(tmp_path: Path) -> None:
    message = _error(tmp_path, "remote_write: {url: http://p/w, headers: {x-scope-orgid: a}}\n")
    assert "tenant_header" in message
    # With no tenant header, a fixed one may be given.
    settings = _load(
        tmp_path, "remote_write: {url: http://p/w, tenant_header: '', headers: {X-Scope-OrgID: a}}\n"
    )
    assert settings.remote_write is not None and settings.remote_write.tenant_header == ""


@pytest.mark.parametrize("url", ["prom:9090/api/v1/write", "ftp://x/y", ""])
def test_bad_url(tmp_path: Path, url: str) -> None:
    message = _error(tmp_path, f"remote_write: {{url: '{url}'}}\n")
    assert "remote_write.url" in message and "http://" in message


def test_url_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPANMETRICS_REMOTE_WRITE__URL", "http://from-env:9090/api/v1/write")
    settings = load_config(None)
    assert settings.remote_write is not None
    assert settings.remote_write.url == "http://from-env:9090/api/v1/write"


def test_kafka_output_off_needs_remote_write(tmp_path: Path) -> None:
    message = _error(tmp_path, "kafka: {output_topic: ''}\n")
    assert "kafka.output_topic" in message and "remote_write" in message
    settings = _load(tmp_path, "kafka: {output_topic: ''}\nremote_write: {url: http://p/w}\n")
    assert settings.kafka.output_topic == ""


def test_delta_with_remote_write_loads(tmp_path: Path) -> None:
    """Remote write stays cumulative: the sink adds DELTA series up (worker/sinks/cumulative.py)."""
    settings = _load(
        tmp_path, "spanmetrics: {aggregation_temporality: DELTA}\nremote_write: {url: http://p/w}\n"
    )
    assert settings.remote_write is not None


def test_tls_options(tmp_path: Path) -> None:
    message = _error(tmp_path, "remote_write: {url: https://m/w, tls_ca_file: /nonexistent/ca.pem}\n")
    assert "remote_write.tls_ca_file" in message and "/nonexistent/ca.pem" in message
    cert = tmp_path / "c.pem"
    cert.write_text("x", encoding="utf-8")
    message = _error(tmp_path, f"remote_write: {{url: https://m/w, tls_cert_file: {cert}}}\n")
    assert "tls_key_file" in message
    settings = _load(tmp_path, "remote_write: {url: https://m/w, tls_insecure_skip_verify: true}\n")
    assert settings.remote_write is not None
    assert ssl_context(settings.remote_write) is False
    default = _load(tmp_path, "remote_write: {url: https://m/w}\n").remote_write
    assert default is not None and ssl_context(default) is True
    ca = ssl.get_default_verify_paths().cafile
    if ca:
        custom = _load(tmp_path, f"remote_write: {{url: https://m/w, tls_ca_file: {ca}}}\n").remote_write
        assert custom is not None and isinstance(ssl_context(custom), ssl.SSLContext)
