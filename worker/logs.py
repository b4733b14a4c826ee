"""structlog set-up: JSON lines in production, a console renderer on a TTY.

Library loggers (aiokafka, redis) go through the same pipeline, so one log stream has one format.
"""

from __future__ import annotations

import logging
import sys

import structlog

from worker.config import LogConfig

__all__ = ["configure_logging"]


def configure_logging(config: LogConfig) -> None:
    json_output = config.format == "json" or (config.format == "auto" and not sys.stdout.isatty())
    level = getattr(logging, config.level.upper())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter at INFO (every rebalance step, every connection) drowns our one line per flush.
    for noisy in ("aiokafka", "kafka", "redis"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
