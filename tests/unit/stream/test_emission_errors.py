"""Emission counts the Kafka output's delivery failures for spanmetrics_sink_errors_total{sink="kafka"}:
a failed emission (retried at the next flush) and each record refused as too large; a Redis
failure during an emission is not a sink failure."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiokafka.errors import KafkaTimeoutError
from redis.exceptions import ConnectionError as RedisConnectionError

from state.protocol import SeriesStore
from worker.model.series import Temporality
from worker.observability.stats import WorkerStats
from worker.stream.emission import Emission
from worker.stream.partitions import Partitions
from worker.stream.slots import EmitReport


class _Store:
    async def owns(self, tokens: dict[int, int]) -> set[int]:
        return set(tokens)


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append(event)


def _emission(outcome: BaseException | EmitReport) -> tuple[Emission, WorkerStats, _Log]:
    shared = Partitions()
    shared.tokens = {0: 1}
    stats, log = WorkerStats(), _Log()
    emission = Emission(
        cast(SeriesStore, _Store()),
        [],
        shared,
        stats,
        log,
        temporality=Temporality.CUMULATIVE,
        series_expiration_s=0,
        resource_expiration_s=0,
        recheck_after=60,
    )

    async def emit(*args: Any, **kwargs: Any) -> EmitReport:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    emission.slots.emit = emit  # type: ignore[method-assign]
    return emission, stats, log


async def test_a_failed_kafka_delivery_counts_one_sink_error() -> None:
    emission, stats, log = _emission(KafkaTimeoutError())
    assert await emission.run() is None
    assert stats.sink_errors == {"kafka": 1}
    assert log.warnings == ["emission failed; it is retried at the next flush"]


async def test_records_too_large_count_as_sink_errors() -> None:
    emission, stats, _ = _emission(EmitReport(records=3, too_large=2))
    assert await emission.run() is not None
    assert stats.sink_errors == {"kafka": 2}
    assert stats.dropped == {"output_record_too_large": 2}


@pytest.mark.parametrize("error", [RedisConnectionError("down"), OSError("reset")])
async def test_a_redis_failure_is_not_a_sink_error(error: BaseException) -> None:
    emission, stats, _ = _emission(error)
    assert await emission.run() is None
    assert stats.sink_errors == {}
