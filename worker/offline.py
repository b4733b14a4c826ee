"""``spanmetrics process``: the worker's own processors, memory store, fold and encoder over
captured trace files, as one flush of a single worker that owns every slot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from state.memory_store import MemoryStore
from worker.config import Settings
from worker.model.errors import OtlpDecodeError
from worker.model.series import MetricDescriptor, Temporality, TenantDeltas
from worker.otlp.batch import group_request
from worker.otlp.decode import decode_traces_proto
from worker.otlp.ids import check_span_ids
from worker.otlp.json_codec import traces_from_json
from worker.processors.pipeline import Pipeline
from worker.sinks.memory import MemorySink, Published
from worker.stream.slots import SlotEmitter

__all__ = [
    "UNLIMITED_BYTES",
    "InputFormat",
    "LocalWorker",
    "ProcessResult",
    "process_documents",
    "read_documents",
    "run_ready",
]

InputFormat = Literal["otlp_json", "otlp_proto"]


#: A record size limit no request reaches: one request per slot.
UNLIMITED_BYTES = 1 << 62

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProcessResult:
    #: ``data`` parsed (empty when nothing is emitted).
    request: ExportMetricsServiceRequest
    #: The serialized request, as the worker's encoder wrote it.
    data: bytes
    spans: int
    skipped_no_service: int


def _detect(data: bytes) -> InputFormat:
    stripped = data.lstrip()
    return "otlp_json" if stripped[:1] in (b"{", b"[") else "otlp_proto"


def _checked(request: ExportTraceServiceRequest) -> ExportTraceServiceRequest:
    """The request, once every span has valid ids (as the worker requires: see worker.otlp.ids)."""
    check_span_ids(group_request(request))
    return request


def read_documents(
    name: str, data: bytes, input_format: InputFormat | None
) -> Iterator[ExportTraceServiceRequest]:
    """Decode one input: a JSON document, JSON lines, or one serialized protobuf request;
    errors name the input and, for JSON lines, the line (``traces.jsonl: line 3: ...``)."""
    fmt = input_format or _detect(data)
    if fmt == "otlp_proto":
        try:
            yield _checked(decode_traces_proto(data))
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
            yield _checked(traces_from_json(text))
        except OtlpDecodeError as exc:
            raise OtlpDecodeError(f"{name}: {exc}") from None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield _checked(traces_from_json(line))
        except OtlpDecodeError as exc:
            raise OtlpDecodeError(f"{name}: line {number}: {exc}") from None


class LocalWorker:
    """A worker owning every slot of a MemoryStore: merges flushes as the checkpoint does and emits
    through the stream worker's own slot emitter into a :class:`MemorySink`."""

    def __init__(
        self,
        store: MemoryStore,
        descriptors: Mapping[str, MetricDescriptor],
        temporality: Temporality,
        *,
        series_expiration_s: float = 0.0,
        resource_expiration_s: float = 0.0,
        max_record_bytes: int = UNLIMITED_BYTES,
    ) -> None:
        self.store = store
        self.sink = MemorySink(dict(descriptors), temporality, max_record_bytes)
        self.emitter = SlotEmitter(
            store,
            [self.sink],
            temporality=temporality,
            series_expiration_s=series_expiration_s,
            resource_expiration_s=resource_expiration_s,
        )
        self.tokens = run_ready(store.claim(range(store.slots)))
        self._offset = 0

    def merge(self, deltas: Mapping[str, TenantDeltas], pending: Mapping[int, bytes] | None = None) -> None:
        """One checkpoint: the deltas with every partition fenced, its input one step further."""
        self._offset += 1
        fences = {partition: (token, self._offset) for partition, token in self.tokens.items()}
        run_ready(self.store.merge(deltas, fences, pending))

    def emit(self, now_ns: int) -> list[Published]:
        """One emission at ``now_ns``: every slot of every tenant folded and published, in order."""
        report = run_ready(self.emitter.emit(self.tokens, now_ns))
        assert not report.skipped, "a local worker owns every slot"
        return self.sink.take()


def process_documents(
    settings: Settings,
    documents: Iterable[ExportTraceServiceRequest],
    *,
    clock: Callable[[], int] = time.time_ns,
    tenant: str = "",
) -> ProcessResult:
    """Run every configured processor over all documents, then merge, fold and encode one flush
    (service-graph half-edges all resolve at the end of the input)."""
    pipeline = Pipeline(settings, clock=clock)
    store = MemoryStore(
        slots=1,
        max_exemplars=pipeline.max_exemplars,
        exp_max_size=settings.exponential_max_size,
        active_series_limit=settings.worker.max_active_series_per_tenant,
        overflow_attributes=settings.overflow_attributes,
    )
    worker = LocalWorker(
        store,
        pipeline.descriptors(),
        settings.temporality,
        series_expiration_s=settings.series_expiration,
        resource_expiration_s=settings.resource_expiration,
    )
    tenant = tenant or settings.kafka.default_tenant
    spans = skipped = 0
    for document in documents:
        stats = pipeline.consume(document, tenant)
        spans += stats.spans
        skipped += stats.skipped_no_service
    pipeline.expire_all()
    worker.merge(pipeline.take_deltas(), pipeline.export_pending(worker.tokens))
    data = b"".join(r.data for published in worker.emit(clock()) for r in published.requests)
    request = ExportMetricsServiceRequest.FromString(data)
    return ProcessResult(request=request, data=data, spans=spans, skipped_no_service=skipped)


def run_ready(step: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that completes without suspending (every MemoryStore method)."""
    try:
        step.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    step.close()
    raise RuntimeError("a memory store operation suspended")
