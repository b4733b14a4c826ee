"""``spanmetrics process``: the processors over captured trace files, as one flush interval.

A user checks a configuration against real data by hand: feed it what the Collector's file
exporter (or the Kafka topic) holds, read the OTLP/JSON metrics it would emit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from state.memory_store import MemoryStore
from worker.config import Settings
from worker.model.errors import OtlpDecodeError
from worker.otlp.decode import decode_traces_proto
from worker.otlp.json_codec import traces_from_json
from worker.otlp.metrics_builder import build_metrics_request
from worker.processors.pipeline import Pipeline

__all__ = ["InputFormat", "ProcessResult", "process_documents", "read_documents"]

InputFormat = Literal["otlp_json", "otlp_proto"]


@dataclass(frozen=True, slots=True)
class ProcessResult:
    request: ExportMetricsServiceRequest
    spans: int
    skipped_no_service: int


def _detect(data: bytes) -> InputFormat:
    stripped = data.lstrip()
    return "otlp_json" if stripped[:1] in (b"{", b"[") else "otlp_proto"


def read_documents(
    name: str, data: bytes, input_format: InputFormat | None
) -> Iterator[ExportTraceServiceRequest]:
    """Decode one input: a JSON document, JSON lines, or one serialized protobuf request.

    Errors name the input and, for JSON lines, the line: ``traces.jsonl: line 3: ...``.
    """
    fmt = input_format or _detect(data)
    if fmt == "otlp_proto":
        try:
            yield decode_traces_proto(data)
        except OtlpDecodeError as exc:
            raise OtlpDecodeError(f"{name}: {exc}") from None
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OtlpDecodeError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        return
    try:
        json.loads(text)
        whole_document = True
    except json.JSONDecodeError:
        whole_document = False
    if whole_document:
        try:
            yield traces_from_json(text)
        except OtlpDecodeError as exc:
            raise OtlpDecodeError(f"{name}: {exc}") from None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield traces_from_json(line)
        except OtlpDecodeError as exc:
            raise OtlpDecodeError(f"{name}: line {number}: {exc}") from None


def process_documents(
    settings: Settings,
    documents: Iterable[ExportTraceServiceRequest],
    *,
    clock: Callable[[], int] = time.time_ns,
    tenant: str = "",
) -> ProcessResult:
    """Run every configured processor over all documents and emit one flush.

    Service graphs (when enabled) resolve every pending half-edge at the end of the input, as
    if ``wait`` had passed: nothing more will arrive.
    """
    pipeline = Pipeline(settings, clock=clock)
    descriptors = pipeline.descriptors()
    store = MemoryStore(settings.spanmetrics.aggregation_temporality, pipeline.max_exemplars)
    tenant = tenant or settings.kafka.default_tenant
    spans = skipped = 0
    for document in documents:
        stats = pipeline.consume(document, tenant)
        spans += stats.spans
        skipped += stats.skipped_no_service
    pipeline.expire_all()
    store.apply(pipeline.take_deltas())
    now = clock()
    collected = store.collect(now).get(tenant)
    request = ExportMetricsServiceRequest()
    if collected is not None:
        request = build_metrics_request(
            collected.resources,
            collected.series,
            descriptors,
            settings.spanmetrics.aggregation_temporality,
            now,
        )
    return ProcessResult(request=request, spans=spans, skipped_no_service=skipped)
