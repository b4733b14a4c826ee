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
from worker.model.series import MetricDescriptor, Series, Temporality, TenantDeltas
from worker.otlp.decode import decode_traces_proto
from worker.otlp.json_codec import traces_from_json
from worker.otlp.metrics_encoder import EncodedRequest, encode_requests, fit_otlp
from worker.processors.pipeline import Pipeline

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


def read_documents(
    name: str, data: bytes, input_format: InputFormat | None
) -> Iterator[ExportTraceServiceRequest]:
    """Decode one input: a JSON document, JSON lines, or one serialized protobuf request;
    errors name the input and, for JSON lines, the line (``traces.jsonl: line 3: ...``)."""
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


class LocalWorker:
    """A worker owning every slot of a MemoryStore: merges flushes and emits slots as the stream
    worker's checkpoint and emitter do (worker/stream), without Kafka or Redis."""

    def __init__(
        self,
        store: MemoryStore,
        descriptors: Mapping[str, MetricDescriptor],
        temporality: Temporality,
        *,
        expiration_s: float = 0.0,
        max_record_bytes: int = UNLIMITED_BYTES,
    ) -> None:
        self.store = store
        self.descriptors = dict(descriptors)
        self.temporality = temporality
        self.expiration_ns = int(expiration_s * 1e9)
        self.max_record_bytes = max_record_bytes
        self.tokens = run_ready(store.claim(range(store.slots)))
        self._offset = 0
        #: (tenant, slot) -> time of its last emission (always delivered here).
        self._published: dict[tuple[str, int], int] = {}

    def merge(self, deltas: Mapping[str, TenantDeltas], pending: Mapping[int, bytes] | None = None) -> None:
        """One checkpoint: the deltas with every partition fenced, its input one step further."""
        self._offset += 1
        fences = {partition: (token, self._offset) for partition, token in self.tokens.items()}
        run_ready(self.store.merge(deltas, fences, pending))

    def fold(self, tenant: str, now_ns: int) -> list[list[Series]]:
        """Fold every slot of ``tenant`` as its owner, in slot order: each slot's live series."""
        expire_before = now_ns - self.expiration_ns if self.expiration_ns else 0
        folded = []
        for slot in sorted(self.tokens):
            result = run_ready(
                self.store.fold_slot(
                    tenant,
                    slot,
                    self.tokens[slot],
                    expire_before_ns=expire_before,
                    delta_mode=self.temporality is Temporality.DELTA,
                    reset_emitted_ns=self._published.get((tenant, slot)),
                )
            )
            assert result.committed, "a local worker owns every slot"
            self._published[(tenant, slot)] = now_ns
            folded.append(result.live)
        return folded

    def emit(self, tenant: str, now_ns: int) -> list[EncodedRequest]:
        """What the emitter publishes for ``tenant`` at ``now_ns``: each slot folded, then encoded."""
        requests: list[EncodedRequest] = []
        resources = run_ready(self.store.resources(tenant))
        for live in self.fold(tenant, now_ns):
            for series in live:
                fit_otlp(series)
            requests.extend(
                encode_requests(
                    resources,
                    live,
                    self.descriptors,
                    self.temporality,
                    now_ns,
                    self.max_record_bytes,
                    reuse_attribute_tuples=False,
                )
            )
        return requests


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
    spanmetrics = settings.spanmetrics
    exponential = spanmetrics.histogram.exponential
    store = MemoryStore(
        slots=1,
        max_exemplars=pipeline.max_exemplars,
        exp_max_size=exponential.max_size if exponential else 160,
        active_series_limit=settings.worker.max_active_series_per_tenant,
    )
    worker = LocalWorker(
        store,
        pipeline.descriptors(),
        spanmetrics.aggregation_temporality,
        expiration_s=spanmetrics.metrics_expiration,
    )
    tenant = tenant or settings.kafka.default_tenant
    spans = skipped = 0
    for document in documents:
        stats = pipeline.consume(document, tenant)
        spans += stats.spans
        skipped += stats.skipped_no_service
    pipeline.expire_all()
    worker.merge(pipeline.take_deltas(), pipeline.export_pending(worker.tokens))
    data = b"".join(request.data for request in worker.emit(tenant, clock()))
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
