"""``spanmetrics run``: one worker process with signal handling and a bounded shutdown."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import RedisError

from worker.config import Settings
from worker.exceptions import SpanmetricsError
from worker.logs import configure_logging
from worker.runtime import StreamWorker

__all__ = ["run_service"]


async def run_service(settings: Settings) -> None:
    """Start a worker, run it until SIGTERM/SIGINT, then let it flush, commit and leave."""
    configure_logging(settings.log)
    log = structlog.get_logger("spanmetrics")
    log.info("configuration", **_masked(settings))
    worker = StreamWorker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.start()
    except (KafkaConnectionError, RedisError, OSError, SpanmetricsError) as exc:
        await worker.close()
        raise SpanmetricsError(f"cannot start: {exc}") from None
    await worker.run()


def _masked(settings: Settings) -> dict[str, object]:
    """The effective configuration for the log, secrets shown as '**********'."""
    dumped = settings.model_dump(mode="json")
    return {section: dumped[section] for section in ("kafka", "redis", "spanmetrics", "worker")}
