"""Ingest with Tempo's ``metrics_ingestion_time_range_slack``: each record's own Kafka timestamp decides.

upstream: grafana/tempo modules/generator/instance.go preprocessSpans (a span counts when its end
is within the slack of the reference time; here the record's time, so a replay decides alike).
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from tests.unit.processors.spanmetrics.helpers import SECOND, make_span, simple_request
from worker.config import Settings
from worker.observability.stats import WorkerStats
from worker.processors.pipeline import Pipeline
from worker.stream.ingest import Ingest
from worker.stream.partitions import Partitions

TOPIC = "slack-in"
RECORD_MS = 1_700_000_000_000


class _Log:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Consumer:
    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise AssertionError("no seek expected")


async def _rewind(partitions: Any) -> None:
    raise AssertionError("no rewind expected")


def _record(offset: int, timestamp_ms: int, span_end_ns: int) -> ConsumerRecord[bytes, bytes]:
    span = make_span("op", start_ns=span_end_ns - SECOND, end_ns=span_end_ns)
    value = simple_request(span, service="svc").SerializeToString()
    return ConsumerRecord(
        topic=TOPIC,
        partition=0,
        offset=offset,
        timestamp=timestamp_ms,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=[],
    )


async def test_each_record_is_judged_by_its_own_timestamp() -> None:
    settings = Settings(
        kafka={"input_topic": TOPIC},
        metrics_generator={"processors": ["span-metrics"], "metrics_ingestion_time_range_slack": "30s"},
    )
    pipeline = Pipeline(settings)
    shared = Partitions()
    shared.tokens[0] = 1
    stats = WorkerStats()
    ingest = Ingest(
        settings.kafka,
        _Consumer(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        pipeline,
        shared,
        stats,
        _Log(),
        rewind=_rewind,
        checkpoint_spans=1000,
    )
    end_ns = RECORD_MS * 1_000_000
    records = [
        _record(0, RECORD_MS, end_ns),  # ended at its record's time: counted
        _record(1, RECORD_MS + 3_600_000, end_ns),  # the same span in a record an hour later: not
        _record(2, RECORD_MS + 30_000, end_ns),  # exactly the slack before its record: counted
    ]
    await ingest.handle(TopicPartition(TOPIC, 0), records)
    assert (stats.records, stats.spans) == (3, 2)
    assert stats.dropped == {"outside_metrics_ingestion_slack": 1}
    assert shared.progress == {0: 3}
