"""The configured processors as one unit: the connector's span metrics (or Tempo's, in
``metrics_generator`` mode) and the service graphs when enabled."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from worker.config import Settings
from worker.model.series import SERIES_ID_SEPARATOR, MetricDescriptor, TenantDeltas, merge_deltas
from worker.otlp.batch import (
    BatchRequest,
    BatchScopeSpans,
    BatchSpan,
    ResourceGroup,
    SpanBatch,
    group_request,
    parse_batch,
)
from worker.otlp.decode import Decoded, decode_spans_proto
from worker.processors import native
from worker.processors.base import PipelineStats, Processor
from worker.processors.servicegraphs.processor import (
    DROPPED_SPANS_TOTAL,
    UNPAIRED_SPANS_TOTAL,
    EdgeScan,
    ServiceGraphsProcessor,
)
from worker.processors.spanmetrics.processor import Scanned, SpanMetricsProcessor
from worker.processors.tempospanmetrics.hostinfo import HostInfoProcessor
from worker.processors.tempospanmetrics.processor import SCOPE_NAME as TEMPO_SCOPE
from worker.processors.tempospanmetrics.processor import TempoSpanMetricsProcessor

__all__ = ["NativeRun", "Pipeline", "PipelineStats", "check_parses"]

#: Service-graph metrics Tempo's docs list but Tempo never emits (they come from the Grafana
#: Agent's processor): left out in ``metrics_generator`` mode.
_NOT_IN_TEMPO = frozenset((UNPAIRED_SPANS_TOTAL, DROPPED_SPANS_TOTAL))

_NATIVE = native.load()
#: The batch schema's tables for the compiled check that protobuf would parse a record.
_SCHEMA = _NATIVE.Schema(BatchRequest.DESCRIPTOR) if _NATIVE is not None else None


def check_parses(data: bytes) -> bool:
    """Raise OtlpDecodeError exactly when :func:`parse_batch` refuses ``data``, without
    protobuf when the compiled check accepts it (True); else protobuf parses it (False)."""
    if _SCHEMA is not None and _NATIVE is not None and _NATIVE.valid(data, _SCHEMA):
        return True
    parse_batch(data)
    return False


@dataclass(slots=True)
class NativeRun:
    """Records read by the compiled span-metrics scanner; the service graphs' edge spans read by
    their compiled scanner (``edges``), or ``decoded`` for the other processors."""

    scanned: Scanned
    decoded: Decoded | None
    edges: EdgeScan | None = None


class Pipeline:
    """Drives every processor alike; the service graphs' pending half-edges stay explicit."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = time.time_ns) -> None:
        generator = settings.metrics_generator
        self.spanmetrics: SpanMetricsProcessor | None = None
        self.tempo: TempoSpanMetricsProcessor | None = None
        self.hostinfo: HostInfoProcessor | None = None
        #: Tempo's registry ``external_labels`` (and ``inject_tenant_id_as``), which the service
        #: graphs get here; Tempo's span metrics add them themselves.
        self._external: tuple[tuple[str, str], ...] = ()
        self._tenant_label = ""
        self._tempo_mode = generator is not None
        self._settings = settings
        self._clock = clock
        #: Per input partition (see :meth:`split_by_partition`): a Pipeline of its own each.
        self._parts: dict[int, Pipeline] | None = None
        slack = generator.metrics_ingestion_time_range_slack if generator is not None else None
        #: Tempo's metrics_ingestion_time_range_slack in nanoseconds (None: every span counts).
        self._slack_ns = round(slack * 1e9) if slack is not None else None
        if generator is None:
            self.spanmetrics = SpanMetricsProcessor(settings.spanmetrics, clock=clock)
        else:
            if generator.span_metrics_subprocessors:
                self.tempo = TempoSpanMetricsProcessor(generator, clock=clock)
            if "host-info" in generator.processors:
                self.hostinfo = HostInfoProcessor(generator, clock=clock)
            self._external = tuple(generator.registry.external_labels.items())
            self._tenant_label = generator.registry.inject_tenant_id_as
        service_graphs = settings.service_graphs
        self.servicegraphs = (
            ServiceGraphsProcessor(service_graphs, clock=clock) if service_graphs.enabled else None
        )
        self.processors: list[Processor] = []
        if self.spanmetrics is not None:
            self.processors.append(self.spanmetrics)
        if self.tempo is not None:
            self.processors.append(self.tempo)
        if self.servicegraphs is not None:
            self.processors.append(self.servicegraphs)
        if self.hostinfo is not None:
            self.processors.append(self.hostinfo)
        #: Why span metrics run on the pure path (empty: the compiled ingest serves them).
        self.native_unsupported: list[str] = (
            ["metrics_generator mode"] if self.spanmetrics is None else self.spanmetrics.native_unsupported()
        )
        if self._slack_ns is not None:
            self.native_unsupported.append("metrics_ingestion_time_range_slack")
        #: Why the service graphs run on the pure path (empty: the compiled scanner serves them).
        self.edges_unsupported: list[str] = (
            self.servicegraphs.native_unsupported() if self.servicegraphs is not None else []
        )
        #: "native" when :meth:`decode` hands span metrics to the compiled ingest, else "pure".
        self.ingest_path = "pure" if self.native_unsupported else "native"
        self._others = [p for p in self.processors if p is not self.spanmetrics]
        #: "native" when :meth:`decode` hands the service graphs to their compiled scanner too,
        #: "pure" when they decode with protobuf, "off" when they are not configured.
        self.edges_path = "off" if self.servicegraphs is None else "pure"
        only_graphs = self._others == [self.servicegraphs]
        if self.ingest_path == "native" and not self.edges_unsupported and only_graphs:
            self.edges_path = "native"

    @property
    def max_exemplars(self) -> int:
        """Exemplars the state keeps per point: one cap for every metric, so the larger one."""
        found = [0]
        if self.spanmetrics is not None:
            found.append(self.spanmetrics.max_exemplars)
        if self.tempo is not None:
            found.append(self.tempo.max_exemplars)
        if self.servicegraphs is not None:
            found.append(self.servicegraphs.max_exemplars)
        return max(found)

    def descriptors(self) -> dict[str, MetricDescriptor]:
        """Series metric -> descriptor (a native histogram written next to a classic one of the
        same name has a key of its own: ``MetricDescriptor.key``)."""
        result = {d.series_metric: d for processor in self.processors for d in processor.descriptors()}
        if self._tempo_mode:
            for name in _NOT_IN_TEMPO:
                result.pop(name, None)
            # Unnamed scopes: exporters write a scope name as an otel_scope_name label.
            result = {key: replace(d, scope=TEMPO_SCOPE) for key, d in result.items()}
        return result

    @property
    def needs_record_time(self) -> bool:
        """Whether :meth:`consume` wants each Kafka record's time (the ingestion slack is set)."""
        return self._slack_ns is not None

    def consume(
        self,
        request: ExportTraceServiceRequest | SpanBatch,
        tenant: str,
        partition: int = 0,
        *,
        groups: list[ResourceGroup] | None = None,
        record_time_ns: int | None = None,
    ) -> PipelineStats:
        """Aggregate one request with every processor, reading its resources and spans once.

        ``request`` is best a ``SpanBatch`` (``decode_spans``, which gives ``groups`` too); a
        standard request is converted first, at the cost of serializing and parsing it again.
        ``record_time_ns`` is the Kafka record's time: with ``metrics_ingestion_time_range_slack``
        a span counts only if it ended within the slack of it (of the clock when not given).
        """
        if self._parts is not None:
            part = self._part(partition)
            return part.consume(request, tenant, partition, groups=groups, record_time_ns=record_time_ns)
        if groups is None:
            groups = group_request(request)
        stats = PipelineStats()
        if self._slack_ns is not None:
            reference = record_time_ns if record_time_ns is not None else self._clock()
            groups, stats.outside_slack = _within_slack(groups, reference, self._slack_ns)
        for processor in self.processors:
            processor.consume(request, tenant, partition, groups=groups).add_to(stats)
        return stats

    def decode(self, data: bytes) -> Decoded | NativeRun:
        """Records' bytes (one or several joined) for :meth:`consume_decoded`; raises
        OtlpDecodeError exactly when :func:`decode_spans_proto` does.

        On the native path the bytes are first checked to be what protobuf parses: in C when
        the compiled check accepts them, else by protobuf itself, which alone decides what is
        undecodable (:func:`check_parses`); the scanner then reads them for span metrics, or
        declines and the pure path decodes them. Nothing is aggregated here.
        """
        spanmetrics = self.spanmetrics
        if self.ingest_path != "native" or spanmetrics is None:
            return decode_spans_proto(data)
        servicegraphs = self.servicegraphs
        edges_native = self.edges_path == "native"
        if self._others and not edges_native:
            decoded = decode_spans_proto(data)
            scanned = spanmetrics.scan(data)
            return decoded if scanned is None else NativeRun(scanned, decoded)
        check_parses(data)
        if not edges_native:
            scanned = spanmetrics.scan(data)
            return decode_spans_proto(data) if scanned is None else NativeRun(scanned, None)
        assert servicegraphs is not None
        # Both scanners in one walk of the bytes.
        scanned, edges = spanmetrics.scan_with_edges(data, *servicegraphs.scan_arguments)
        if scanned is None:
            return decode_spans_proto(data)
        if edges is None or not servicegraphs.native_ready:
            return NativeRun(scanned, decode_spans_proto(data))
        return NativeRun(scanned, None, edges)

    def consume_decoded(self, decoded: Decoded | NativeRun, tenant: str, partition: int = 0) -> PipelineStats:
        """:meth:`consume` of what :meth:`decode` returned: the same deltas on either path."""
        if self._parts is not None:
            return self._part(partition).consume_decoded(decoded, tenant, partition)
        if isinstance(decoded, Decoded):
            return self.consume(decoded.batch, tenant, partition, groups=decoded.groups)
        assert self.spanmetrics is not None
        stats = PipelineStats()
        self.spanmetrics.consume_scanned(decoded.scanned, tenant).add_to(stats)
        if decoded.edges is not None:
            assert self.servicegraphs is not None
            self.servicegraphs.consume_scanned(decoded.edges, tenant, partition).add_to(stats)
        elif decoded.decoded is not None:
            batch, groups = decoded.decoded
            for processor in self._others:
                processor.consume(batch, tenant, partition, groups=groups).add_to(stats)
        return stats

    def expire(self, now_ns: int) -> None:
        for processor in self._all_processors():
            processor.expire(now_ns)

    def expire_all(self) -> None:
        """End of input (offline): nothing more will arrive."""
        for processor in self._all_processors():
            processor.expire_all()

    # ------------------------------------------------------------------ per input partition

    def split_by_partition(self) -> None:
        """From now on keep each input partition's deltas apart (a Redis Cluster merges each
        partition in a step of its own): one Pipeline per partition, made on its first record,
        behind this same interface. Call before anything is consumed. Caches and limits then
        apply per partition (README: Redis Cluster); the service graphs' counters stay shared."""
        if self._parts is None:
            self._parts = {}

    @property
    def per_partition(self) -> bool:
        """Whether :meth:`split_by_partition` was called."""
        return self._parts is not None

    def _part(self, partition: int) -> Pipeline:
        assert self._parts is not None
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = Pipeline(self._settings, clock=self._clock)
            shared, own = self.servicegraphs, part.servicegraphs
            if shared is not None and own is not None:
                # Counters since start, not state: one set whatever partition counted.
                own.new_edges = shared.new_edges
                own.expired_edges = shared.expired_edges
                own.dropped_edges = shared.dropped_edges
                own.marker_overflows = shared.marker_overflows
        return part

    def _all_processors(self) -> list[Processor]:
        if self._parts is None:
            return self.processors
        return [processor for part in self._parts.values() for processor in part.processors]

    def take_partition_deltas(self) -> dict[int, dict[str, TenantDeltas]]:
        """Each partition's deltas since the last call (:meth:`split_by_partition`), or all of
        them under partition -1 when deltas are not kept apart."""
        if self._parts is None:
            deltas = self.take_deltas()
            return {-1: deltas} if deltas else {}
        taken = {partition: part.take_deltas() for partition, part in self._parts.items()}
        return {partition: deltas for partition, deltas in taken.items() if deltas}

    # ------------------------------------------------------------------ deltas

    def take_deltas(self) -> dict[str, TenantDeltas]:
        if self._parts is not None:
            return merge_deltas(*(part.take_deltas() for part in self._parts.values()))
        parts = []
        for processor in self.processors:
            deltas = processor.take_deltas()
            if processor is self.servicegraphs and self._tempo_mode:
                for part in deltas.values():
                    part.series = [one for one in part.series if one.metric not in _NOT_IN_TEMPO]
                if self._external or self._tenant_label:
                    self._add_external_labels(deltas)
            parts.append(deltas)
        return merge_deltas(*parts)

    def _add_external_labels(self, deltas: dict[str, TenantDeltas]) -> None:
        """Tempo's registry sets its external labels over every series' labels (registry/util.go
        getSeriesLabels; an empty value removes the label); the series id names them too."""
        for tenant, part in deltas.items():
            extra = list(self._external)
            if self._tenant_label:
                extra.append((self._tenant_label, tenant))
            suffix = SERIES_ID_SEPARATOR.join(f"{name}={value}" for name, value in extra)
            for series in part.series:
                labels = dict(series.attributes)
                labels.update(extra)
                series.attributes = tuple((name, value) for name, value in labels.items() if value != "")
                series.series_id = f"{series.series_id}{SERIES_ID_SEPARATOR}{suffix}"

    def export_pending(self, partitions: Iterable[int]) -> dict[int, bytes]:
        """Pending half-edges per partition, saved with the offsets they belong to."""
        if self.servicegraphs is None:
            return {}
        if self._parts is not None:
            return {p: self._part(p).export_pending((p,))[p] for p in partitions}
        return {p: self.servicegraphs.export_pending(p) for p in partitions}

    def restore_pending(self, partition: int, blob: bytes | None, now_ns: int) -> int:
        if self.servicegraphs is None or not blob:
            return 0
        if self._parts is not None:
            return self._part(partition).restore_pending(partition, blob, now_ns)
        return self.servicegraphs.restore_pending(partition, blob, now_ns)

    def drop_partition(self, partition: int) -> None:
        """Forget the partition's pending half-edges (kept apart: its whole Pipeline, deltas too)."""
        if self._parts is not None:
            self._parts.pop(partition, None)
        elif self.servicegraphs is not None:
            self.servicegraphs.drop_partition(partition)

    def pending_edges(self) -> int:
        if self._parts is not None:
            return sum(part.pending_edges() for part in self._parts.values())
        return self.servicegraphs.pending_count() if self.servicegraphs is not None else 0


def _within_slack(
    groups: list[ResourceGroup], reference_ns: int, slack_ns: int
) -> tuple[list[ResourceGroup], int]:
    """The spans that ended within ``slack_ns`` of ``reference_ns`` (Tempo's instance.go
    preprocessSpans, before every processor), and how many others there were."""
    low, high = reference_ns - slack_ns, reference_ns + slack_ns
    kept: list[ResourceGroup] = []
    outside = 0
    for resource, cache_key, scopes in groups:
        kept_scopes: list[tuple[BatchScopeSpans, Sequence[BatchSpan]]] = []
        for scope, spans in scopes:
            within = [span for span in spans if low <= span.end_time_unix_nano <= high]
            outside += len(spans) - len(within)
            if within:
                kept_scopes.append((scope, within))
        kept.append((resource, cache_key, kept_scopes))
    return kept, outside
