"""Redis steps retried with backoff through an outage, up to a deadline or until interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import RedisError

from worker.model.errors import StateError
from worker.observability.stats import WorkerStats
from worker.stream.partitions import Partitions

__all__ = ["RETRY_SUMMARY_EVERY", "RetryInterrupted", "with_redis_retry"]

_T = TypeVar("_T")

#: While a step keeps failing, one log line per this many seconds (and one at the first failure).
RETRY_SUMMARY_EVERY = 10.0


class RetryInterrupted(StateError):
    """A retry loop gave up early: a stop was requested or a rebalance waits for the lock."""


async def with_redis_retry(
    step: Callable[[], Awaitable[_T]],
    *,
    within: float,
    shared: Partitions,
    log: Any,
    interrupt: Sequence[asyncio.Event] = (),
    stats: WorkerStats | None = None,
) -> _T:
    """Retry Redis outages with backoff (not ready meanwhile); past ``within`` seconds raise StateError.

    Once a step has failed, any of ``interrupt`` being set ends the loop at once (also during a
    sleep or a hanging attempt) with :class:`RetryInterrupted`. Logs the first failure, then one
    summary per :data:`RETRY_SUMMARY_EVERY` seconds, and the recovery.
    """
    delay = 0.2
    started = time.monotonic()
    deadline = started + within
    attempts = 0
    next_summary = 0.0
    error = ""
    while True:
        attempts += 1
        try:
            result = await (step() if attempts == 1 else _unless(step(), interrupt))
        except (RedisError, OSError) as exc:  # a FencedError (a StateError) passes through
            error = str(exc)
            if stats is not None:
                stats.redis_errors += 1
            now = time.monotonic()
            _check(interrupt, attempts, now - started, error, log)
            if now > deadline:
                raise StateError(f"Redis unavailable for too long: {exc}") from exc
            shared.ready = False
            if attempts == 1:
                log.warning("Redis step failed; retrying", error=error, retry_in=delay)
                next_summary = now + RETRY_SUMMARY_EVERY
            elif now >= next_summary:
                log.warning(
                    "Redis step still failing; retrying",
                    error=error,
                    attempts=attempts,
                    failing_seconds=round(now - started, 1),
                )
                next_summary = now + RETRY_SUMMARY_EVERY
            with contextlib.suppress(RetryInterrupted):
                await _unless(asyncio.sleep(delay), interrupt)
            _check(interrupt, attempts, time.monotonic() - started, error, log)
            delay = min(delay * 2, 5.0)
        except RetryInterrupted:
            _check(interrupt, attempts, time.monotonic() - started, error, log)
            raise
        else:
            if attempts > 1:
                log.info(
                    "Redis step succeeded after retries",
                    attempts=attempts,
                    seconds=round(time.monotonic() - started, 1),
                )
            return result


def _check(interrupt: Sequence[asyncio.Event], attempts: int, seconds: float, error: str, log: Any) -> None:
    if any(event.is_set() for event in interrupt):
        log.warning("Redis retries interrupted", attempts=attempts, seconds=round(seconds, 1), error=error)
        raise RetryInterrupted(f"Redis step interrupted after {attempts} attempts: {error}")


async def _unless(step: Awaitable[_T], interrupt: Sequence[asyncio.Event]) -> _T:
    """Await ``step``, cancelled as soon as one of ``interrupt`` is set (RetryInterrupted)."""
    task = asyncio.ensure_future(step)
    if not interrupt:
        return await task
    waiters = [asyncio.ensure_future(event.wait()) for event in interrupt]
    try:
        await asyncio.wait([task, *waiters], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await task
    if task.cancelled():
        raise RetryInterrupted("interrupted")
    return task.result()
