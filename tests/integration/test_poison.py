"""A record whose processing raises counts nothing and reaches the DLQ once (issue 15, section 3),
with a real broker and Redis: the service-graphs processor raises, after span metrics counted the
record (or a joined run of them), on requests holding a span with the attribute ``poison``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from devtools.servers import create_topics
from tests.poison import raise_on_poison
from worker.config import Settings
from worker.processors.servicegraphs.processor import ServiceGraphsProcessor

from .helpers import Observed, RunningWorker, produce, read_until, span_count, traces


def _settings(kafka: str, redis: str, name: str) -> Settings:
    return Settings(
        kafka={
            "bootstrap_servers": kafka,
            "input_topic": f"{name}-in",
            "output_topic": f"{name}-out",
            "dlq_topic": f"{name}-dlq",
            "group_id": f"{name}-group",
            "session_timeout": "6s",
            "heartbeat_interval": "1s",
        },
        redis={"url": redis, "key_prefix": name},
        spanmetrics={"metrics_flush_interval": "1s"},
        servicegraphs={"enabled": True},
        worker={"revoke_deadline": "5s", "shutdown_grace": "10s"},
        http={"enabled": False},
    )


async def _dead_letters(kafka: str, topic: str, wanted: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest")
    await consumer.start()
    dead: list[Any] = []
    try:
        deadline = time.monotonic() + 10
        # Read on past ``wanted`` for a while: a second copy of any record must show.
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            dead += [r for rs in batch.values() for r in rs]
            if len(dead) > wanted or (len(dead) == wanted and time.monotonic() > deadline - 7):
                break
    finally:
        await consumer.stop()
    return dead


async def test_a_record_whose_processing_raises_counts_nothing_and_is_dead_lettered_once(
    kafka_bootstrap: str, redis_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(kafka_bootstrap, redis_url, unique_name)
    await create_topics(
        kafka_bootstrap, {f"{unique_name}-in": 2, f"{unique_name}-out": 1, f"{unique_name}-dlq": 1}
    )
    batch = traces(400, seed=11)
    good, poisoned = [], []
    for index, (_key, request) in enumerate(batch):
        if index % 29 == 5:  # one span marked; the request's other spans must count nothing either
            span = request.resource_spans[-1].scope_spans[0].spans[-1]
            span.attributes.add(key="poison", value=AnyValue(bool_value=True))
            poisoned.append(request)
        else:
            good.append(request)
    expected = span_count(good)
    await produce(kafka_bootstrap, f"{unique_name}-in", [(k, r.SerializeToString()) for k, r in batch])
    raise_on_poison(monkeypatch, ServiceGraphsProcessor)

    started = time.monotonic()
    async with RunningWorker(settings) as running:
        observed = await read_until(
            kafka_bootstrap, f"{unique_name}-out", lambda o: o.total() >= expected, timeout=60
        )
        seconds = time.monotonic() - started
        # A few more flushes: the totals must not move.
        await asyncio.sleep(3)
        observed = await read_until(
            kafka_bootstrap, f"{unique_name}-out", lambda o: False, timeout=2, observed=Observed()
        )
        stats = running.worker.stats
    dead = await _dead_letters(kafka_bootstrap, f"{unique_name}-dlq", len(poisoned))
    print(
        f"\npoison: {len(batch)} records ({span_count(r for _, r in batch)} spans), {len(poisoned)} "
        f"poisoned; calls {observed.total('calls')} of {expected} expected, duration "
        f"{observed.total('duration')}; {len(dead)} dead-lettered; counted in {seconds:.1f} s; "
        f"records read {stats.records} (re-read after rewinds), dlq stat {stats.dlq}"
    )
    assert observed.total("calls") == expected
    assert observed.total("duration") == expected
    assert sorted(r.value for r in dead) == sorted(r.SerializeToString() for r in poisoned)
    for record in dead:
        assert (
            dict(record.headers)["x-spanmetrics-error"] == b"processing failed: RuntimeError: poisoned span"
        )
