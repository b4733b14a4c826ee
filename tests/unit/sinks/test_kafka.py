"""The Kafka OTLP sink against a recording producer: bytes, keys, headers, too-large records, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, RecordTooLargeError

from worker.model.series import Attributes, MetricDescriptor, MetricKind, Series, Temporality
from worker.otlp.metrics_encoder import encode_requests
from worker.sinks.kafka import WORKER_HEADER, KafkaSink

NOW = 1_700_000_000_123_456_789
CALLS = MetricDescriptor("traces.span.metrics.calls", MetricKind.SUM, order=0)
RESOURCES: dict[str, Attributes] = {
    "r1": (("service.name", "frontend"),),
    "r2": (("service.name", "cart"),),
}


def calls(resource_id: str, index: int, *, count: int = 3, blob: str = "") -> Series:
    attributes: Attributes = (("span.name", f"GET /{index}"), ("blob", blob))
    return Series(
        series_id=f"{resource_id}|{index}",
        metric=CALLS.name,
        resource_id=resource_id,
        attributes=attributes,
        start_ns=NOW - 10**9,
        last_ns=NOW,
        count=count,
    )


class Producer:
    """Records what is sent; ``refuse_at_send`` / ``outcome`` decide per record what happens."""

    def __init__(self, refuse_at_send: int = 10**9, outcome: dict[int, BaseException] | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = []
        self.refuse_at_send = refuse_at_send
        self.outcome = outcome or {}

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Any) -> asyncio.Future[Any]:
        if len(value) > self.refuse_at_send:
            raise MessageSizeTooLargeError()
        index = len(self.sent)
        self.sent.append((topic, value, key, list(headers)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if index in self.outcome:
            future.set_exception(self.outcome[index])
        else:
            future.set_result(None)
        return future


def sink(producer: Producer, max_record_bytes: int = 1_000_000) -> KafkaSink:
    return KafkaSink(
        producer,
        topic="out",
        tenant_header="X-Scope-OrgID",
        default_tenant="single-tenant",
        descriptors={CALLS.name: CALLS},
        temporality=Temporality.CUMULATIVE,
        max_record_bytes=max_record_bytes,
        worker_id="w1",
    )


async def test_publishes_the_encoder_bytes_and_keys_with_tenant_and_worker_headers() -> None:
    series = [calls("r1", 1), calls("r2", 2), calls("r1", 3)]
    expected = list(encode_requests(RESOURCES, series, {CALLS.name: CALLS}, Temporality.CUMULATIVE, NOW, 300))
    producer = Producer()
    delivery = await sink(producer, 300).publish("acme", RESOURCES, series, NOW)
    delivered = await delivery.wait()

    assert [(value, key) for _, value, key, _ in producer.sent] == [(r.data, r.key) for r in expected]
    assert len(expected) > 1  # split by size
    assert {topic for topic, *_ in producer.sent} == {"out"}
    assert all(h == [(WORKER_HEADER, b"w1"), ("X-Scope-OrgID", b"acme")] for *_, h in producer.sent)
    assert (delivered.records, delivered.bytes, delivered.too_large) == (
        len(expected),
        sum(len(r.data) for r in expected),
        0,
    )

    default = Producer()
    await (await sink(default).publish("single-tenant", RESOURCES, series[:1], NOW)).wait()
    assert default.sent[0][3] == [(WORKER_HEADER, b"w1")]  # no tenant header for the default tenant


async def test_too_large_records_are_counted_and_skipped_other_failures_raise() -> None:
    # One series over the producer's limit (refused at send), one refused by the broker.
    series = [calls("r1", 1), calls("r1", 2, blob="x" * 5000), calls("r2", 3), calls("r2", 4)]
    producer = Producer(refuse_at_send=4000, outcome={1: RecordTooLargeError()})
    delivered = await (await sink(producer, 200).publish("acme", RESOURCES, series, NOW)).wait()
    assert len(producer.sent) == 3
    assert delivered.too_large == 2
    assert delivered.records == 2

    failing = Producer(outcome={0: KafkaTimeoutError()})
    delivery = await sink(failing).publish("acme", RESOURCES, series[:1], NOW)
    with pytest.raises(KafkaTimeoutError):
        await delivery.wait()


async def test_out_of_range_values_are_fitted_before_encoding() -> None:
    series = [calls("r1", 1, count=-5)]
    producer = Producer()
    await (await sink(producer).publish("acme", RESOURCES, series, NOW)).wait()
    assert series[0].count == 0 and len(producer.sent) == 1
