"""Redis steps retried with backoff through an outage, up to a deadline (then the worker gives up)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from state.protocol import FencedError
from worker.model.errors import StateError
from worker.stream.partitions import Partitions

__all__ = ["with_redis_retry"]

_T = TypeVar("_T")


async def with_redis_retry(
    step: Callable[[], Awaitable[_T]], *, within: float, shared: Partitions, log: Any
) -> _T:
    """Retry Redis outages with backoff (not ready meanwhile); past ``within`` seconds raise StateError."""
    delay = 0.2
    deadline = time.monotonic() + within
    while True:
        try:
            return await step()
        except (RedisError, OSError) as exc:
            if isinstance(exc, FencedError):
                raise
            if time.monotonic() > deadline:
                raise StateError(f"Redis unavailable for too long: {exc}") from exc
            shared.ready = False
            log.warning("Redis step failed; retrying", error=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
