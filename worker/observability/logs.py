"""structlog set-up: one pipeline (ours and the libraries' loggers), JSON lines or a console renderer.

A last processor masks secrets (SecretStr values, secret-looking keys, passwords in URLs).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog
from pydantic import SecretStr

from worker.config import LogConfig

__all__ = ["MASK", "configure_logging", "redact_secrets", "redact_url"]

MASK = "**********"

#: Standard-library loggers of our dependencies: WARNING and up (INFO and up at level debug).
LIBRARY_LOGGERS = ("aiokafka", "kafka", "redis", "aiohttp")

_SECRET_KEY = re.compile(
    r"(^|[_.-])(password|passwd|secret|api_?key|credentials?|auth_token)$", re.IGNORECASE
)
#: ``scheme://user:password@`` (the user may be empty, as in ``redis://:password@host``).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:@/\s]*:)(?P<secret>[^@/\s]+)(?P<at>@)", re.I)


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or a ``password=`` query value) replaced by :data:`MASK`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        # A lone userinfo component may be a password (redis://secret@host): mask it too.
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_KEY.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    # Assembled by hand: urlunsplit drops the empty authority of unix:///path URLs.
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}"
    rebuilt += f"?{query}" if query else ""
    return rebuilt + (f"#{parts.fragment}" if parts.fragment else "")


def _redact(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if value is not None and value != "" and _SECRET_KEY.search(key):
        return MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", value) if "@" in value else value
    if isinstance(value, Mapping):
        return {k: _redact(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(key, v) for v in value]
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets anywhere in the event (nested values included)."""
    for key, value in event_dict.items():
        if key.startswith("_"):  # ProcessorFormatter's _record / _from_structlog
            continue
        event_dict[key] = _redact(key, value)
    return event_dict


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def _wants_json(config: LogConfig, stream: TextIO) -> bool:
    if config.format != "auto":
        return config.format == "json"
    return not _is_tty(stream)


def configure_logging(config: LogConfig, stream: TextIO | None = None) -> None:
    """Route structlog and the standard library through one handler on ``stream`` (stdout).

    ``format: auto`` writes JSON lines unless the stream is a terminal; ``json`` and ``console``
    force one renderer. Safe to call again (the handler is replaced, not added).
    """
    out = stream if stream is not None else sys.stdout
    json_output = _wants_json(config, out)
    level = logging.getLevelNamesMapping()[config.level.upper()]
    # Run on structlog events and on standard-library records alike.
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if json_output:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(out))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop below-level events before any work
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text here, so the redaction below sees them too.
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    # Library chatter at INFO (every rebalance step, every connection) drowns our one line per flush.
    library_level = logging.INFO if level <= logging.DEBUG else max(level, logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
