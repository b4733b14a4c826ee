"""The Redis retry loop: interrupted at once by a stop or a waiting rebalance; one log line per interval."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.stream import retry
from worker.stream.partitions import Partitions
from worker.stream.retry import RetryInterrupted, with_redis_retry


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def warning(self, event: str, **_: Any) -> None:
        self.events.append(event)

    info = warning


async def _failing() -> None:
    raise RedisConnectionError("connection refused")


async def _hanging() -> None:
    await asyncio.sleep(60)


async def test_a_stop_interrupts_the_retry_loop_at_once_and_logs_once_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retry, "RETRY_SUMMARY_EVERY", 0.5)
    shared = Partitions()
    log = Log()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        # fails fast at first, then hangs (a frozen server): the stop must cut the hang short
        await (_failing() if calls < 8 else _hanging())

    asyncio.get_running_loop().call_later(1.6, shared.stopping.set)
    started = time.monotonic()
    with pytest.raises(RetryInterrupted):
        await with_redis_retry(step, within=300, shared=shared, log=log, interrupt=(shared.stopping,))
    elapsed = time.monotonic() - started
    assert 1.6 <= elapsed < 1.8
    assert log.events[0] == "Redis step failed; retrying"
    assert log.events[-1] == "Redis retries interrupted"
    summaries = log.events.count("Redis step still failing; retrying")
    assert 1 <= summaries <= 3 < calls  # per interval, not per attempt


async def test_a_rebalance_waiting_for_the_lock_interrupts_a_retry_held_under_it() -> None:
    shared = Partitions()
    log = Log()

    async def checkpoint() -> None:
        async with shared.lock:
            await with_redis_retry(
                _failing, within=300, shared=shared, log=log, interrupt=(shared.lock.wanted,)
            )

    task = asyncio.create_task(checkpoint())
    await asyncio.sleep(0.5)
    started = time.monotonic()
    async with asyncio.timeout(1), shared.lock:  # the rebalance gets the lock at once
        waited = time.monotonic() - started
    with pytest.raises(RetryInterrupted):
        await task
    assert waited < 0.2
    assert not shared.lock.wanted.is_set()


async def test_success_after_failures_is_logged_once() -> None:
    shared = Partitions()
    log = Log()
    calls = 0

    async def step() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RedisConnectionError("refused")
        return 7

    assert await with_redis_retry(step, within=30, shared=shared, log=log) == 7
    assert log.events == ["Redis step failed; retrying", "Redis step succeeded after retries"]
