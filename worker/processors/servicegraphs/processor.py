"""Spans in, service-graph edges out: Tempo metrics-generator's ``service-graphs`` processor, without I/O.

Semantics, names and labels follow Tempo (README "Service graphs"); pending edges live per input partition.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from worker.config import ServiceGraphsConfig
from worker.model.enums import SPAN_KIND_NAMES
from worker.model.exphistogram import ExpHistogram
from worker.model.series import (
    SERIES_ID_SEPARATOR,
    Attributes,
    Exemplar,
    MetricDescriptor,
    MetricKind,
    Series,
    TenantDeltas,
    make_series_id,
)
from worker.otlp.batch import BatchResource, BatchSpan, ResourceGroup, SpanBatch, group_request
from worker.processors import native
from worker.processors.base import PipelineStats
from worker.processors.multiplier import SpanMultiplier
from worker.processors.sampling import stochastic_round
from worker.processors.servicegraphs.attributes import AttributeMap, find_attribute, span_attribute
from worker.processors.servicegraphs.labels import sanitize_label_name, tempo_string
from worker.processors.servicegraphs.pending import Edge, EdgeKey, MarkerKey, decode_pending, encode_pending
from worker.processors.spanfilter import SpanFilter

__all__ = [
    "CONNECTION_DATABASE",
    "CONNECTION_INFO",
    "CONNECTION_MESSAGING_SYSTEM",
    "CONNECTION_VIRTUAL_NODE",
    "DROPPED_SPANS_TOTAL",
    "NATIVE_SCOPE_NAME",
    "REQUEST_CLIENT_SECONDS",
    "REQUEST_FAILED_TOTAL",
    "REQUEST_MESSAGING_SYSTEM_SECONDS",
    "REQUEST_SERVER_SECONDS",
    "REQUEST_TOTAL",
    "RESOURCE_ATTRIBUTES",
    "RESOURCE_ID",
    "SCOPE_NAME",
    "UNPAIRED_SPANS_TOTAL",
    "EdgeScan",
    "ServiceGraphStats",
    "ServiceGraphsProcessor",
]

#: The compiled ingest (None: the pure path only).
_NATIVE = native.load()
#: What the compiled scanner reads of a request (``_native.EdgeScan``): the edge spans' fields
#: and attribute value ranges, per resource its bytes and span count; nothing built per span.
EdgeScan = Any

REQUEST_TOTAL = "traces_service_graph_request_total"
REQUEST_FAILED_TOTAL = "traces_service_graph_request_failed_total"
REQUEST_SERVER_SECONDS = "traces_service_graph_request_server_seconds"
REQUEST_CLIENT_SECONDS = "traces_service_graph_request_client_seconds"
REQUEST_MESSAGING_SYSTEM_SECONDS = "traces_service_graph_request_messaging_system_seconds"
CONNECTION_INFO = "traces_service_graph_connection_info"
UNPAIRED_SPANS_TOTAL = "traces_service_graph_unpaired_spans_total"
DROPPED_SPANS_TOTAL = "traces_service_graph_dropped_spans_total"

CONNECTION_MESSAGING_SYSTEM = "messaging_system"
CONNECTION_DATABASE = "database"
CONNECTION_VIRTUAL_NODE = "virtual_node"

#: The instrumentation scope of every service-graph metric.
SCOPE_NAME = "servicegraphs"
#: With ``generate_native_histograms: both``, the scope of the exponential twins: OTLP allows one
#: metric name with two types only in two scopes (docs/internals.md "Service graphs").
NATIVE_SCOPE_NAME = "servicegraphs.native"
#: The series-metric suffix of an exponential twin (its OTLP name is the histogram's own).
_NATIVE_KEY_SUFFIX = ":native"

_REQUEST = "service-graphs-request"
_LATENCY = "service-graphs-latency"
_CONNECTION_INFO = "service-graphs-connection-info"

#: Tempo's native histograms: ``native_histogram_bucket_factor`` 1.1 is Prometheus schema 3
#: (the finest whose growth factor 2**(2**-3) = 1.09 stays within 1.1), i.e. OTLP scale 3, and
#: ``native_histogram_max_bucket_number`` 100 is the bucket budget before the scale is lowered.
NATIVE_SCALE = 3
NATIVE_MAX_SIZE = 100
#: client_golang's default ``NativeHistogramMaxExemplars``, which Tempo keeps in native-only mode.
NATIVE_MAX_EXEMPLARS = 10

#: The one resource all service-graph series belong to (not a hex digest, so it never collides
#: with a span-metrics resource id), and its attributes: none, like Tempo's series.
RESOURCE_ID = "servicegraphs"
RESOURCE_ATTRIBUTES: Attributes = ()

_VIRTUAL_NODE_LABEL = "virtual_node"
_SERVICE_NAME = "service.name"
_PEER_SERVICE = "peer.service"
_SERVER_ADDRESS = "server.address"
_NETWORK_PEER_ADDRESS = "network.peer.address"
_NETWORK_PEER_PORT = "network.peer.port"

# opentelemetry.proto.trace.v1.Span.SpanKind and Status.StatusCode values.
_SERVER = 2
_CLIENT = 3
_PRODUCER = 4
_CONSUMER = 5
_STATUS_ERROR = 2

_DEFAULT_RESOURCE_CACHE_SIZE = 1000
#: A dropped span side's marker: which side of the edge key was filtered out.
_CLIENT_SIDE = 0
_SERVER_SIDE = 1
#: The most requests one span may stand for (as span metrics): beyond, int64 counters overflow.
_MAX_WEIGHT = float(2**20)
_PORT_ATTRIBUTE = (_NETWORK_PEER_PORT,)

_DESCRIPTIONS = {
    REQUEST_TOTAL: "Total count of requests between two nodes",
    REQUEST_FAILED_TOTAL: "Total count of failed requests between two nodes",
    REQUEST_SERVER_SECONDS: "Time for a request between two nodes as seen from the server",
    REQUEST_CLIENT_SECONDS: "Time for a request between two nodes as seen from the client",
    REQUEST_MESSAGING_SYSTEM_SECONDS: "Time between publishing and receiving a message, between two nodes",
    CONNECTION_INFO: "Presence of a connection between two nodes (1 while requests are seen)",
    UNPAIRED_SPANS_TOTAL: "Total count of unpaired spans",
    DROPPED_SPANS_TOTAL: "Total count of dropped spans",
}


@dataclass(slots=True)
class ServiceGraphStats:
    """What one ``consume`` call did, for the worker's self-metrics and logs."""

    #: CLIENT, SERVER, PRODUCER and CONSUMER spans looked at (other kinds are ignored).
    spans: int = 0
    #: Edges recorded (both sides known, or a database call).
    edges: int = 0
    #: Spans that started an edge, stored or completed at once (Tempo's ``..._service_graphs_edges``).
    new_edges: int = 0
    #: Spans whose half-edge did not fit under ``max_items``.
    dropped: int = 0
    #: Spans of resources without ``service.name``.
    skipped_no_service: int = 0
    #: Edge spans rejected by ``filter_policies``.
    filtered: int = 0
    #: Edges dropped because one side was filtered (Tempo's ``..._dropped_edges_total``).
    dropped_edges: int = 0
    #: Filtered sides not remembered because ``max_items`` markers were held
    #: (Tempo's ``..._dropped_span_side_cache_overflow_total``).
    marker_overflows: int = 0

    def add_to(self, total: PipelineStats) -> None:
        total.edges += self.edges
        total.dropped_edges += self.dropped


@dataclass(slots=True)
class _Resource:
    """Per-resource work done once: the service name and the resource-level lookup values."""

    #: None when the resource has no ``service.name``: its spans are skipped, as in Tempo.
    service: str | None
    #: attribute name -> Tempo string, for the attributes looked up resource-first.
    values: dict[str, str]
    #: Every attribute (the first of a repeated key), for filter policies and the multiplier;
    #: empty when neither is configured.
    attributes: dict[str, Any]


@dataclass(slots=True)
class _Latency:
    """One latency histogram of one label set in the current interval, and its exemplars."""

    #: The explicit-bucket series (``classic`` and ``both``).
    classic: Series | None
    #: The exponential series (``native`` and ``both``).
    native: Series | None
    #: Bucket index -> the last exemplar observed in it: Tempo keeps one per classic bucket.
    by_bucket: dict[int, Exemplar] = field(default_factory=dict)
    #: Native only: the latest exemplars, at most :data:`NATIVE_MAX_EXEMPLARS`.
    recent: list[Exemplar] = field(default_factory=list)

    def series(self) -> list[Series]:
        """The series to hand over, with their exemplars attached."""
        result = []
        classic = self.classic
        if classic is not None:
            if self.by_bucket:
                classic.exemplars = [self.by_bucket[index] for index in sorted(self.by_bucket)]
            result.append(classic)
        native = self.native
        if native is not None:
            if classic is None:
                native.exemplars = self.recent
            result.append(native)
        return result


@dataclass(slots=True)
class _EdgeSeries:
    """The series of one label set in the current interval (each only when its sub-processor runs)."""

    attributes: Attributes
    body: str
    total: Series | None = None
    server: _Latency | None = None
    client: _Latency | None = None
    failed: Series | None = None
    messaging: _Latency | None = None
    info: Series | None = None


@dataclass(slots=True)
class _Interval:
    """One tenant's deltas since the last :meth:`ServiceGraphsProcessor.take_deltas`."""

    edges: dict[tuple[str, ...], _EdgeSeries] = field(default_factory=dict)
    #: (metric, "client" or "server", service) -> unpaired or dropped counter.
    counters: dict[tuple[str, str, str], Series] = field(default_factory=dict)


class ServiceGraphsProcessor:
    """Pairs spans into edges and aggregates them into per-series deltas.

    Not thread-safe; one instance per worker event loop. ``clock`` returns unix nanoseconds: it
    stamps series and starts each half-edge's wait (``expire`` takes the time explicitly). When
    the extension serves the configuration, the half-edges are its ``Edge`` and their expiry is
    compiled, on either ingest path.
    """

    def __init__(
        self,
        config: ServiceGraphsConfig,
        *,
        clock: Callable[[], int] = time.time_ns,
        resource_cache_size: int = _DEFAULT_RESOURCE_CACHE_SIZE,
        compiled: bool = True,
    ) -> None:
        self.config = config
        self._clock = clock
        self._wait_ns = round(config.wait * 1e9)
        self._max_items = config.max_items
        self._bounds: tuple[float, ...] = tuple(float(b) for b in config.histogram_buckets)
        self._bucket_count = len(self._bounds) + 1
        subprocessors = set(config.subprocessors)
        self._request = _REQUEST in subprocessors
        self._latency = _LATENCY in subprocessors
        self._connection_info = _CONNECTION_INFO in subprocessors
        mode = config.generate_native_histograms
        self._classic = mode in ("classic", "both")
        self._native = mode in ("native", "both")
        #: The series-metric of the exponential histograms: their own name when they are the only
        #: ones, a twin's key next to the explicit-bucket ones.
        self._native_suffix = _NATIVE_KEY_SUFFIX if self._classic else ""
        self._messaging_latency = config.enable_messaging_system_latency_histogram
        self._filter = SpanFilter(config.filter_policies)
        self._multiplier = SpanMultiplier(
            config.span_multiplier_key, config.enable_tracestate_span_multiplier
        )
        #: Whether resources keep all their attributes (filter policies and the multiplier read them).
        self._resource_attributes = self._filter.active or self._multiplier.active
        self._virtual_node_label = config.enable_virtual_node_label
        #: Attribute names in the configured order: the first one found wins.
        self._peer_attributes = tuple(config.peer_attributes)
        self._database_attributes = tuple(config.database_name_attributes)
        #: Tempo's order for naming the database: peer.service, server.address, network.peer.address.
        self._database_servers = (_PEER_SERVICE, _SERVER_ADDRESS, _NETWORK_PEER_ADDRESS)
        #: (attribute, client-side label, server-side label) per dimension.
        self._dimensions, self._label_names = _dimension_labels(
            config.dimensions, config.enable_client_server_prefix, config.enable_virtual_node_label
        )
        #: Looked up resource-first (Tempo passes the resource attributes first for these).
        self._resource_keys = frozenset(
            {
                *config.database_name_attributes,
                _PEER_SERVICE,
                _SERVER_ADDRESS,
                _NETWORK_PEER_ADDRESS,
                _NETWORK_PEER_PORT,
                *(name for name, _, _ in self._dimensions),
            }
        )

        #: The span attributes the processor reads, the only ones the compiled scanner extracts.
        self._span_keys = tuple(
            dict.fromkeys(
                (
                    *self._peer_attributes,
                    *self._database_attributes,
                    *self._database_servers,
                    *_PORT_ATTRIBUTE,
                    *(name for name, _, _ in self._dimensions),
                )
            )
        )
        #: ``compiled=False``: the pure path throughout (its own edges and expiry) whatever the
        #: extension, the reference the compiled path is tested against.
        self._native_ready = compiled and not self.native_unsupported()
        #: The pending edges' class: the extension's (fields in the object) when it serves this
        #: configuration, the same rows and attributes as the pure one.
        self._edge_type: Callable[[int], Edge] = Edge
        self._native_context: Any = None
        if _NATIVE is not None and self._native_ready:
            self._edge_type = _NATIVE.Edge
            self._native_context = _NATIVE.EdgeContext(
                self, self._span_keys, _tempo_string_of_bytes, AnyValue.FromString
            )
        self._span_key_bytes = tuple(name.encode() for name in self._span_keys)

        #: serialized Resource -> its cached work (insertion order: the oldest is evicted first).
        self._resources: dict[bytes, _Resource] = {}
        self._resource_cache_size = max(1, resource_cache_size)
        #: partition -> tenant -> waiting half-edges, in insertion (hence deadline) order.
        self._pending: dict[int, dict[str, dict[EdgeKey, Edge]]] = {}
        #: partition -> tenant -> filtered sides (Tempo's dropped span sides) -> deadline, oldest first.
        self._markers: dict[int, dict[str, dict[MarkerKey, int]]] = {}
        self._intervals: dict[str, _Interval] = {}
        #: (tenant, kind of the span that touched it last) -> edges that expired with no series
        #: (Tempo's ``tempo_metrics_generator_processor_service_graphs_expired_edges``), since start.
        self.expired_edges: dict[tuple[str, str], int] = {}
        #: tenant -> edges dropped because a side was filtered, since start (``dropped_edges_total``).
        self.dropped_edges: dict[str, int] = {}
        #: tenant -> filtered sides not remembered, the markers being full, since start.
        self.marker_overflows: dict[str, int] = {}
        #: tenant -> spans that started an edge, stored or completed at once, since start
        #: (Tempo's ``tempo_metrics_generator_processor_service_graphs_edges``).
        self.new_edges: dict[str, int] = {}

    @property
    def max_exemplars(self) -> int:
        """Exemplars kept per point: one per explicit bucket as Tempo (client_golang's 10 native only)."""
        if not self._latency:
            return 0
        return self._bucket_count if self._classic else NATIVE_MAX_EXEMPLARS

    # ------------------------------------------------------------------ descriptors

    def descriptors(self) -> list[MetricDescriptor]:
        """The metrics this processor emits, in output order."""

        def sum_(name: str, order: int) -> MetricDescriptor:
            return MetricDescriptor(
                name,
                MetricKind.SUM,
                description=_DESCRIPTIONS[name],
                scope=SCOPE_NAME,
                order=order,
                zero_init=True,
            )

        def histograms(name: str, order: int) -> list[MetricDescriptor]:
            result = []
            if self._classic:
                result.append(
                    MetricDescriptor(
                        name,
                        MetricKind.HISTOGRAM,
                        unit="s",
                        description=_DESCRIPTIONS[name],
                        bounds=self._bounds,
                        scope=SCOPE_NAME,
                        order=order,
                        zero_init=True,
                    )
                )
            if self._native:
                result.append(
                    MetricDescriptor(
                        name,
                        MetricKind.EXPONENTIAL_HISTOGRAM,
                        unit="s",
                        description=_DESCRIPTIONS[name],
                        scope=NATIVE_SCOPE_NAME if self._classic else SCOPE_NAME,
                        order=order,
                        key=name + self._native_suffix,
                        zero_init=True,
                    )
                )
            return result

        result = []
        if self._request:
            result += [sum_(REQUEST_TOTAL, 0), sum_(REQUEST_FAILED_TOTAL, 1)]
        if self._latency:
            result += histograms(REQUEST_SERVER_SECONDS, 2)
            result += histograms(REQUEST_CLIENT_SECONDS, 3)
            if self._messaging_latency:
                result += histograms(REQUEST_MESSAGING_SYSTEM_SECONDS, 4)
        if self._connection_info:
            result.append(
                MetricDescriptor(
                    CONNECTION_INFO,
                    MetricKind.INFO,
                    description=_DESCRIPTIONS[CONNECTION_INFO],
                    scope=SCOPE_NAME,
                    order=5,
                )
            )
        result.append(sum_(UNPAIRED_SPANS_TOTAL, 6))
        result.append(sum_(DROPPED_SPANS_TOTAL, 7))
        return result

    # ------------------------------------------------------------------ consume

    def consume(
        self,
        request: ExportTraceServiceRequest | SpanBatch,
        tenant: str,
        partition: int = 0,
        *,
        groups: list[ResourceGroup] | None = None,
    ) -> ServiceGraphStats:
        """Pair the edge spans of one OTLP request with what ``partition`` already holds for ``tenant``.

        ``groups`` is ``group_request(request)`` when the caller already has it.
        """
        stats = ServiceGraphStats()
        work: list[tuple[_Resource, Sequence[BatchSpan]]] = []
        for resource_message, cache_key, scopes in group_request(request) if groups is None else groups:
            resource = self._resource(resource_message, cache_key)
            if resource.service is None:
                stats.skipped_no_service += sum(len(spans) for _, spans in scopes)
                continue
            for _, spans in scopes:
                work.append((resource, spans))
        self._consume_work(work, tenant, partition, stats)
        return stats

    def native_unsupported(self) -> list[str]:
        """The configured options the compiled ingest does not implement for the service graphs
        (empty: it serves this configuration)."""
        if _NATIVE is None:
            return [f"extension not built or {native.NO_EXTENSIONS_ENV} set"]
        found = []
        if self._filter.active:
            found.append("service graphs filter_policies")
        if self._multiplier.active:
            found.append("service graphs span multiplier")
        return found

    @property
    def native_ready(self) -> bool:
        """Whether :meth:`scan` may be used: the extension is loaded and covers the configuration."""
        return self._native_ready

    def scan(self, data: bytes) -> EdgeScan | None:
        """Serialized ``ExportTraceServiceRequest`` (one or several joined) read by the compiled
        scanner: the edge spans with the attributes the processor reads; None when it does not
        handle them (the pure path then decodes the same bytes). The caller has checked that
        protobuf parses ``data``; nothing is aggregated here."""
        if _NATIVE is None or not self._native_ready:
            return None
        return _NATIVE.scan_edges(data, self._span_key_bytes, _tempo_string_of_bytes)

    @property
    def scan_arguments(self) -> tuple[tuple[bytes, ...], Callable[[bytes], str]]:
        """What :meth:`scan` passes the compiled scanner besides the bytes (the attribute names it
        reads, the Tempo string of a rarer value), for a walk shared with span metrics
        (``SpanMetricsProcessor.scan_with_edges``)."""
        return self._span_key_bytes, _tempo_string_of_bytes

    def consume_scanned(self, scanned: EdgeScan, tenant: str, partition: int = 0) -> ServiceGraphStats:
        """:meth:`consume` of what :meth:`scan` read: the same deltas and pending edges."""
        stats = ServiceGraphStats()
        services: list[str | None] = []
        values: list[dict[str, str]] = []
        for cache_key, count in scanned.resources():
            resource = self._resources.get(cache_key)
            if resource is None:
                resource = self._resource(Resource.FromString(cache_key), cache_key)
            if resource.service is None:
                stats.skipped_no_service += count
            services.append(resource.service)
            values.append(resource.values)
        self._consume_work([], tenant, partition, stats, scanned=(scanned, services, values))
        return stats

    def _consume_work(
        self,
        work: list[tuple[_Resource, Sequence[BatchSpan]]],
        tenant: str,
        partition: int,
        stats: ServiceGraphStats,
        *,
        scanned: tuple[EdgeScan, list[str | None], list[dict[str, str]]] | None = None,
    ) -> None:
        """Pair the spans of ``work`` (resources with a service name) with what ``partition``
        holds; ``scanned``: instead, an edge scan (and its resources' service names and lookup
        values), observed by the compiled loop."""
        now = self._clock()
        by_tenant = self._pending.get(partition)
        if by_tenant is None:
            by_tenant = self._pending[partition] = {}
        edges = by_tenant.get(tenant)
        if edges is None:
            edges = by_tenant[tenant] = {}
        capacity = self._max_items - self._pending_elsewhere(tenant, partition)
        interval = self._interval(tenant)
        if work or (scanned is not None and len(scanned[0])):
            markers = self._markers.get(partition, {}).get(tenant)
            if markers is None and self._filter.active:
                markers = self._markers.setdefault(partition, {}).setdefault(tenant, {})
            marker_capacity = self._max_items - self._elsewhere(self._markers, tenant, partition)
            if scanned is not None:
                assert _NATIVE is not None
                _NATIVE.observe_scanned(
                    self._native_context,
                    scanned[0],
                    scanned[1],
                    scanned[2],
                    edges,
                    capacity,
                    interval,
                    now,
                    stats,
                    DROPPED_SPANS_TOTAL,
                )
            else:
                self._observe(
                    work,
                    edges,
                    _NO_MARKERS if markers is None else markers,
                    capacity,
                    marker_capacity,
                    interval,
                    now,
                    stats,
                )
            if stats.new_edges:
                self.new_edges[tenant] = self.new_edges.get(tenant, 0) + stats.new_edges
            if stats.dropped_edges:
                self.dropped_edges[tenant] = self.dropped_edges.get(tenant, 0) + stats.dropped_edges
            if stats.marker_overflows:
                self.marker_overflows[tenant] = self.marker_overflows.get(tenant, 0) + stats.marker_overflows

    def _observe(
        self,
        work: list[tuple[_Resource, Sequence[BatchSpan]]],
        edges: dict[EdgeKey, Edge],
        markers: dict[MarkerKey, int],
        capacity: int,
        marker_capacity: int,
        interval: _Interval,
        now: int,
        stats: ServiceGraphStats,
    ) -> None:
        """The per-span loop: a kind check, then for edge spans one lookup and one insert or delete.

        Attributes are looked up in the span's attribute map (:mod:`worker.otlp.batch`): the peer
        attributes on every edge span (Tempo's ``upsertPeerNode``), the database attributes on
        client spans, the dimensions when configured. One call per request, not per scope (most
        scopes hold a span or two). ``markers`` are this partition's filtered sides of the tenant
        (filled when filter policies are configured).
        """
        deadline = now + self._wait_ns
        edges_get = edges.get
        client_side = self._client_side
        server_side = self._server_side
        complete = self._complete
        filtering = self._filter.active
        keep = self._filter.keep
        multiplier = self._multiplier if self._multiplier.active else None
        for resource, spans in work:
            service: str = resource.service  # type: ignore[assignment]
            resource_values = resource.values
            for span in spans:
                kind = span.kind
                if kind in (_CLIENT, _PRODUCER):
                    client = True
                elif kind in (_SERVER, _CONSUMER):
                    client = False
                else:
                    continue
                stats.spans += 1
                if filtering and not keep(resource.attributes, span):
                    # Tempo's addDroppedSpanSide: the counterpart is dropped, waiting or to come.
                    stats.filtered += 1
                    if client:
                        key = (span.trace_id, span.span_id)
                        self._drop_side(edges, markers, marker_capacity, key, _CLIENT_SIDE, now, stats)
                    elif span.parent_span_id:  # a root server span has no counterpart
                        key = (span.trace_id, span.parent_span_id)
                        self._drop_side(edges, markers, marker_capacity, key, _SERVER_SIDE, now, stats)
                    continue
                key = (span.trace_id, span.span_id) if client else (span.trace_id, span.parent_span_id)
                edge = edges_get(key)
                stored = edge is not None
                if edge is None:
                    if markers and (key, _SERVER_SIDE if client else _CLIENT_SIDE) in markers:
                        stats.dropped_edges += 1
                        continue
                    edge = self._edge_type(deadline)
                if client:
                    client_side(edge, service, resource_values, span, kind)
                else:
                    server_side(edge, service, resource_values, span, kind)
                edge.span_kind = kind
                if multiplier is not None:
                    # Tempo: the edge's multiplier is the one of the span processed last.
                    edge.multiplier = multiplier(resource.attributes, span)
                if edge.client and edge.server:
                    if stored:
                        del edges[key]
                    else:
                        stats.new_edges += 1
                    complete(interval, key, edge, "", now)
                    stats.edges += 1
                elif not stored:
                    if len(edges) >= capacity:
                        stats.dropped += 1
                        self._count(
                            interval, DROPPED_SPANS_TOTAL, "client" if client else "server", service, now
                        )
                    else:
                        edges[key] = edge
                        stats.new_edges += 1

    def _drop_side(
        self,
        edges: dict[EdgeKey, Edge],
        markers: dict[MarkerKey, int],
        capacity: int,
        key: EdgeKey,
        side: int,
        now: int,
        stats: ServiceGraphStats,
    ) -> None:
        """Tempo's ``Store.addDroppedSpanSide``: drop a waiting counterpart at once, and remember
        the filtered side for ``wait`` so that a counterpart still to come is dropped too."""
        edge = edges.get(key)
        if edge is not None and (_SERVER_SIDE if edge.server else _CLIENT_SIDE) != side:
            del edges[key]
            stats.dropped_edges += 1
        marker = (key, side)
        if marker in markers:
            del markers[marker]  # refreshed: to the end, so the markers stay in deadline order
        elif len(markers) >= capacity:
            stats.marker_overflows += 1
            return
        markers[marker] = now + self._wait_ns

    def _client_side(
        self, edge: Edge, service: str, resource_values: dict[str, str], span: BatchSpan, kind: int
    ) -> None:
        """Tempo's ``updateClientEdge``, including ``upsertDatabaseRequest`` and ``upsertPeerNode``."""
        edge.connection_type = CONNECTION_MESSAGING_SYSTEM if kind == _PRODUCER else ""
        edge.client = service
        start = span.start_time_unix_nano
        end = span.end_time_unix_nano
        seconds = (end - start) / 1e9 if end > start else 0.0
        edge.client_seconds = seconds
        edge.client_end_ns = end
        if span.status.code == _STATUS_ERROR:
            edge.failed = True
        attributes = span.attributes
        if self._dimensions:
            self._set_dimensions(edge, resource_values, attributes, client=True)
        self._set_peer(edge, attributes)
        database = find_attribute(self._database_attributes, resource_values, attributes)
        if database is not None:
            edge.connection_type = CONNECTION_DATABASE
            edge.server_seconds = seconds
            server = self._database_server(resource_values, attributes)
            if server is not None:
                edge.server = server
            elif database[1]:
                edge.server = database[1]

    def _database_server(self, resource_values: dict[str, str], attributes: AttributeMap) -> str | None:
        """Tempo's name for the database: peer.service, server.address, network.peer.address[:port]."""
        found = find_attribute(self._database_servers, resource_values, attributes)
        if found is None:
            return None
        name, server = found
        if name == _NETWORK_PEER_ADDRESS:
            port = find_attribute(_PORT_ATTRIBUTE, resource_values, attributes)
            if port is not None:
                return server + ":" + port[1]
        return server

    def _server_side(
        self,
        edge: Edge,
        service: str,
        resource_values: dict[str, str],
        span: BatchSpan,
        kind: int,
    ) -> None:
        """Tempo's server-side update: its peer attribute names a virtual node on expiry, as the client's."""
        edge.connection_type = CONNECTION_MESSAGING_SYSTEM if kind == _CONSUMER else ""
        edge.server = service
        start = span.start_time_unix_nano
        end = span.end_time_unix_nano
        edge.server_seconds = (end - start) / 1e9 if end > start else 0.0
        edge.server_start_ns = start
        if span.status.code == _STATUS_ERROR:
            edge.failed = True
        attributes = span.attributes
        if self._dimensions:
            self._set_dimensions(edge, resource_values, attributes, client=False)
        # Every server span, root or not, as Tempo: a peer found replaces the client span's. It
        # matters when the edge expires: a root span's names its caller; a non-root span's names
        # the server when the server's own name ends empty (a present but empty service.name, or
        # a client span's database update to an empty server.address).
        self._set_peer(edge, attributes)

    def _set_peer(self, edge: Edge, attributes: AttributeMap) -> None:
        """Tempo's ``upsertPeerNode``: the first peer attribute of the span (never the resource);
        a span without one leaves the edge's peer as it was."""
        peer = span_attribute(self._peer_attributes, attributes)
        if peer is not None:
            edge.peer = peer

    def _set_dimensions(
        self, edge: Edge, resource_values: dict[str, str], attributes: AttributeMap, *, client: bool
    ) -> None:
        """Tempo's ``upsertDimensions``: a value found replaces the other side's (unprefixed labels)."""
        dimensions = edge.dimensions
        if dimensions is None:
            dimensions = edge.dimensions = {}
        for name, client_label, server_label in self._dimensions:
            label = client_label if client else server_label
            if label is None:
                continue
            value = resource_values.get(name)
            if value is None:
                found = attributes.get(name)
                if found is not None:
                    value = tempo_string(found)
            if value is not None:
                dimensions[label] = value

    # ------------------------------------------------------------------ recording

    def _complete(self, interval: _Interval, key: EdgeKey, edge: Edge, virtual_node: str, now: int) -> None:
        """Tempo's ``onComplete``: count the request, observe the latencies, mark the connection."""
        label_names = self._label_names
        if label_names:
            dimensions = edge.dimensions or _NO_DIMENSIONS
            labels: tuple[str, ...] = (
                edge.client,
                edge.server,
                edge.connection_type,
                virtual_node,
                *[dimensions.get(name, "") for name in label_names],
            )
        else:
            labels = (edge.client, edge.server, edge.connection_type, virtual_node)
        group = interval.edges.get(labels)
        if group is None:
            group = interval.edges[labels] = self._new_group(labels, now)
        # Tempo adds the multiplier (a float) to its counters and histogram weights; counts are
        # integers here, so a fractional one is rounded stochastically, as span metrics round the
        # sampling adjusted count: unbiased over many requests.
        multiplier = edge.multiplier
        weight = 1 if multiplier == 1.0 else stochastic_round(min(multiplier, _MAX_WEIGHT))
        total = group.total
        if total is not None:
            total.count += weight
            total.last_ns = now
            if edge.failed:
                failed = group.failed
                if failed is None:
                    failed = group.failed = self._series(
                        REQUEST_FAILED_TOTAL, group.attributes, group.body, now, histogram=False
                    )
                failed.count += weight
                failed.last_ns = now
        server = group.server
        if server is not None and weight > 0:
            # Tempo's exemplar: the trace id (no span id), set by the client span or a root server
            # span, which are the only edges that complete: the trace id of the edge's key.
            trace_id = key[0] if any(key[0]) else b""
            self._record_latency(server, edge.server_seconds, trace_id, now, weight)
            self._record_latency(group.client, edge.client_seconds, trace_id, now, weight)  # type: ignore[arg-type]
            if (
                self._messaging_latency
                and edge.connection_type == CONNECTION_MESSAGING_SYSTEM
                and edge.server_start_ns > edge.client_end_ns
            ):
                # Tempo skips a zero or negative lag (unsynchronized clocks) with a warning.
                messaging = group.messaging
                if messaging is None:
                    messaging = group.messaging = self._latency_series(
                        REQUEST_MESSAGING_SYSTEM_SECONDS, group.attributes, group.body, now
                    )
                lag = (edge.server_start_ns - edge.client_end_ns) / 1e9
                self._record_latency(messaging, lag, trace_id, now, weight)
        info = group.info
        if info is not None:
            # A presence gauge: 1 whatever the multiplier; seeing it again keeps it live.
            info.count = 1
            info.last_ns = now

    def _record_latency(
        self, latency: _Latency, seconds: float, trace_id: bytes, now: int, weight: int
    ) -> None:
        classic = latency.classic
        if classic is not None:
            # Prometheus buckets are upper-inclusive (le): a value equal to a bound belongs to it.
            index = bisect_left(self._bounds, seconds)
            classic.count += weight
            classic.sum += seconds * weight
            classic.last_ns = now
            classic.buckets[index] += weight  # type: ignore[index]
            if trace_id:
                # Tempo keeps the last exemplar of each bucket, with the observed value.
                latency.by_bucket[index] = (trace_id, b"", seconds, now)
        native = latency.native
        if native is not None:
            native.count += weight
            native.sum += seconds * weight
            native.last_ns = now
            native.exp.record(seconds, weight)  # type: ignore[union-attr]
            if trace_id and classic is None:
                recent = latency.recent
                recent.append((trace_id, b"", seconds, now))
                if len(recent) > NATIVE_MAX_EXEMPLARS:
                    del recent[0]

    def _new_group(self, labels: tuple[str, ...], now: int) -> _EdgeSeries:
        client, server, connection_type, virtual_node, *dimension_values = labels
        attributes: list[tuple[str, Any]] = [("client", client), ("server", server)]
        if connection_type:
            attributes.append(("connection_type", connection_type))
        for name, value in zip(self._label_names, dimension_values, strict=True):
            if value:
                attributes.append((name, value))
        if virtual_node:
            attributes.append((_VIRTUAL_NODE_LABEL, virtual_node))
        frozen = tuple(attributes)
        body = SERIES_ID_SEPARATOR.join(f"{name}={value}" for name, value in frozen)
        group = _EdgeSeries(attributes=frozen, body=body)
        if self._request:
            group.total = self._series(REQUEST_TOTAL, frozen, body, now, histogram=False)
        if self._latency:
            group.server = self._latency_series(REQUEST_SERVER_SECONDS, frozen, body, now)
            group.client = self._latency_series(REQUEST_CLIENT_SECONDS, frozen, body, now)
        if self._connection_info:
            group.info = self._series(CONNECTION_INFO, frozen, body, now, histogram=False)
        return group

    def _latency_series(self, metric: str, attributes: Attributes, body: str, now: int) -> _Latency:
        classic = self._series(metric, attributes, body, now, histogram=True) if self._classic else None
        native = None
        if self._native:
            native = self._series(metric + self._native_suffix, attributes, body, now, histogram=False)
            native.exp = ExpHistogram(max_size=NATIVE_MAX_SIZE, scale=NATIVE_SCALE)
        return _Latency(classic, native)

    def _series(self, metric: str, attributes: Attributes, body: str, now: int, *, histogram: bool) -> Series:
        return Series(
            series_id=_series_id(metric, body),
            metric=metric,
            resource_id=RESOURCE_ID,
            attributes=attributes,
            start_ns=now,
            last_ns=now,
            buckets=[0] * self._bucket_count if histogram else None,
        )

    def _count(self, interval: _Interval, metric: str, side: str, service: str, now: int) -> None:
        """One unpaired or dropped span, labelled with its own side's service."""
        key = (metric, side, service)
        series = interval.counters.get(key)
        if series is None:
            attributes: Attributes = ((side, service),) if service else ()
            body = f"{side}={service}" if service else ""
            series = interval.counters[key] = self._series(metric, attributes, body, now, histogram=False)
        series.count += 1
        series.last_ns = now

    # ------------------------------------------------------------------ expiry

    def expire(self, now_ns: int) -> None:
        """Give up on every half-edge whose wait ended at or before ``now_ns`` (Tempo's ``onExpire``)."""
        native = self._native_context
        for by_tenant in self._pending.values():
            for tenant, edges in by_tenant.items():
                if native is not None:
                    assert _NATIVE is not None
                    _NATIVE.expire_edges(native, tenant, edges, now_ns)
                    continue
                expired: list[EdgeKey] = []
                for key, edge in edges.items():
                    if edge.deadline_ns > now_ns:
                        break
                    expired.append(key)
                if expired:
                    interval = self._interval(tenant)
                    for key in expired:
                        self._expire_edge(tenant, interval, key, edges.pop(key), now_ns)
        for by_tenant_markers in self._markers.values():
            for markers in by_tenant_markers.values():
                # Kept in deadline order (a refreshed marker moves to the end).
                done = []
                for marker, deadline in markers.items():
                    if deadline > now_ns:
                        break
                    done.append(marker)
                for marker in done:
                    del markers[marker]

    def expire_all(self) -> None:
        """Expire everything now, whatever its wait: the end of the input (``spanmetrics process``)."""
        now = self._clock()
        for by_tenant in self._pending.values():
            for tenant, edges in by_tenant.items():
                if edges:
                    interval = self._interval(tenant)
                    for key, edge in edges.items():
                        self._expire_edge(tenant, interval, key, edge, now)
                    edges.clear()

    def _expire_edge(self, tenant: str, interval: _Interval, key: EdgeKey, edge: Edge, now: int) -> None:
        """Tempo's ``onExpire``: a virtual node when the spans seen name the missing side."""
        edge.connection_type = CONNECTION_VIRTUAL_NODE
        if not edge.client:
            if not key[1]:
                # A root span: the request came from outside (a browser, curl, an uninstrumented
                # caller), named by the span's peer attribute when it has one.
                edge.client = edge.peer or "user"
                self._complete(interval, key, edge, "client" if self._virtual_node_label else "", now)
                return
            self._count(interval, UNPAIRED_SPANS_TOTAL, "server", edge.server, now)
        elif not edge.server and edge.peer:
            # A call to something that sends no spans (an external API, an uninstrumented service).
            edge.server = edge.peer
            self._complete(interval, key, edge, "server" if self._virtual_node_label else "", now)
            return
        else:
            self._count(interval, UNPAIRED_SPANS_TOTAL, "client", edge.client, now)
        counter = (tenant, SPAN_KIND_NAMES.get(edge.span_kind, "SPAN_KIND_UNSPECIFIED"))
        self.expired_edges[counter] = self.expired_edges.get(counter, 0) + 1

    # ------------------------------------------------------------------ hand over

    def take_deltas(self) -> dict[str, TenantDeltas]:
        """Hand over the deltas recorded since the last call, grouped by tenant, and start anew."""
        intervals, self._intervals = self._intervals, {}
        result: dict[str, TenantDeltas] = {}
        for tenant, interval in intervals.items():
            series: list[Series] = []
            for group in interval.edges.values():
                if group.total is not None:
                    series.append(group.total)
                if group.failed is not None:
                    series.append(group.failed)
                if group.server is not None:
                    series += group.server.series()
                if group.client is not None:
                    series += group.client.series()
                if group.messaging is not None:
                    series += group.messaging.series()
                if group.info is not None:
                    series.append(group.info)
            series.extend(interval.counters.values())
            if series:
                result[tenant] = TenantDeltas(resources={RESOURCE_ID: RESOURCE_ATTRIBUTES}, series=series)
        return result

    # ------------------------------------------------------------------ pending edges

    def pending_count(self, partition: int | None = None) -> int:
        """Half-edges waiting for their other side (in one partition, or in all)."""
        if partition is not None:
            return sum(len(edges) for edges in self._pending.get(partition, {}).values())
        return sum(len(edges) for by_tenant in self._pending.values() for edges in by_tenant.values())

    def marker_count(self, partition: int | None = None) -> int:
        """Filtered sides remembered (Tempo's dropped span sides), in one partition or in all."""
        held = self._markers if partition is None else {partition: self._markers.get(partition, {})}
        return sum(len(markers) for by_tenant in held.values() for markers in by_tenant.values())

    def partitions(self) -> list[int]:
        """Partitions that hold (or held) pending edges, sorted."""
        return sorted(self._pending)

    def export_pending(self, partition: int) -> bytes:
        """The waiting half-edges of ``partition`` (all tenants) as msgpack, each with its remaining wait.

        The edges stay in this processor; call :meth:`drop_partition` when the partition is gone.
        """
        by_tenant = self._pending.get(partition, {})
        markers = self._markers.get(partition, {})
        tenants = [
            tenant
            for tenant in dict.fromkeys([*by_tenant, *markers])
            if by_tenant.get(tenant) or markers.get(tenant)
        ]
        return encode_pending(
            (
                (tenant, by_tenant.get(tenant, {}).items(), markers.get(tenant, {}).items())
                for tenant in tenants
            ),
            self._clock(),
        )

    def restore_pending(self, partition: int, blob: bytes, now_ns: int) -> int:
        """Add the half-edges of an :meth:`export_pending` blob to ``partition``; returns how many.

        Each edge waits what it had left when exported, counted from ``now_ns`` (never more than
        this processor's ``wait``). An edge already held under the same key is kept as is, so
        restoring twice changes nothing. Edges beyond ``max_items`` for their tenant are dropped
        and counted as dropped spans. Filtered sides (markers) come along the same way. A damaged
        or foreign blob raises ``ValueError`` and restores nothing.
        """
        decoded = decode_pending(blob, now_ns, self._wait_ns, self._edge_type)
        restored = 0
        by_tenant = self._pending.setdefault(partition, {})
        for tenant, rows, marker_rows in decoded:
            if marker_rows:
                self._restore_markers(partition, tenant, marker_rows)
            if not rows:
                continue
            edges = by_tenant.setdefault(tenant, {})
            had_edges = bool(edges)
            room = self._max_items - self._pending_elsewhere(tenant, partition) - len(edges)
            for key, edge in rows:
                if key in edges:
                    continue
                if room <= 0:
                    side, service = ("client", edge.client) if edge.client else ("server", edge.server)
                    self._count(self._interval(tenant), DROPPED_SPANS_TOTAL, side, service, now_ns)
                    continue
                edges[key] = edge
                room -= 1
                restored += 1
            if had_edges:
                # Expiry walks the edges in insertion order and stops at the first one still waiting.
                ordered = sorted(edges.items(), key=lambda item: item[1].deadline_ns)
                edges.clear()
                edges.update(ordered)
        return restored

    def _restore_markers(self, partition: int, tenant: str, rows: list[tuple[MarkerKey, int]]) -> None:
        markers = self._markers.setdefault(partition, {}).setdefault(tenant, {})
        room = self._max_items - self._elsewhere(self._markers, tenant, partition) - len(markers)
        for marker, deadline in rows:
            if marker in markers:
                continue
            if room <= 0:
                self.marker_overflows[tenant] = self.marker_overflows.get(tenant, 0) + 1
                continue
            markers[marker] = deadline
            room -= 1
        ordered = sorted(markers.items(), key=lambda item: item[1])
        markers.clear()
        markers.update(ordered)

    def drop_partition(self, partition: int) -> None:
        """Forget the waiting half-edges of a partition this worker no longer owns (nothing is recorded)."""
        self._pending.pop(partition, None)
        self._markers.pop(partition, None)

    # ------------------------------------------------------------------ helpers

    def _pending_elsewhere(self, tenant: str, partition: int) -> int:
        return self._elsewhere(self._pending, tenant, partition)

    @staticmethod
    def _elsewhere(held: dict[int, dict[str, Any]], tenant: str, partition: int) -> int:
        """How many entries ``tenant`` holds in partitions other than ``partition``."""
        total = 0
        for other, by_tenant in held.items():
            if other != partition:
                edges = by_tenant.get(tenant)
                if edges:
                    total += len(edges)
        return total

    def _interval(self, tenant: str) -> _Interval:
        interval = self._intervals.get(tenant)
        if interval is None:
            interval = self._intervals[tenant] = _Interval()
        return interval

    def _resource(self, resource: BatchResource, cache_key: bytes) -> _Resource:
        # ``cache_key`` is the serialized resource (one C call); the lookups below are
        # Python-level reads per attribute.
        entry = self._resources.get(cache_key)
        if entry is None:
            entry = self._build_resource(resource)
            if len(self._resources) >= self._resource_cache_size:
                del self._resources[next(iter(self._resources))]
            self._resources[cache_key] = entry
        return entry

    def _build_resource(self, resource: BatchResource) -> _Resource:
        service: str | None = None
        values: dict[str, str] = {}
        attributes: dict[str, Any] = {}
        wanted = self._resource_keys
        everything = self._resource_attributes
        for kv in resource.attributes:
            key = kv.key
            if key == _SERVICE_NAME and service is None:
                service = tempo_string(kv.value)
            if key in wanted and key not in values:
                values[key] = tempo_string(kv.value)
            if everything and key not in attributes:
                # A copy: the cache must not keep the whole request alive.
                value = type(kv.value)()
                value.CopyFrom(kv.value)
                attributes[key] = value
        return _Resource(service=service, values=values, attributes=attributes)


_NO_DIMENSIONS: dict[str, str] = {}


def _tempo_string_of_bytes(value: bytes) -> str:
    """The Tempo string of a serialized ``AnyValue`` (the compiled scan's values that are
    neither strings nor integers)."""
    return tempo_string(AnyValue.FromString(value))


#: Read-only: the markers of a tenant that has none (no filter policy configured).
_NO_MARKERS: dict[MarkerKey, int] = {}


def _series_id(metric: str, body: str) -> str:
    """Same layout as the span metrics' ids: metric, resource id, then ``name=value`` pairs."""
    return make_series_id(metric, RESOURCE_ID, body)


def _dimension_labels(
    dimensions: Sequence[str], prefix: bool, virtual_node_label: bool
) -> tuple[tuple[tuple[str, str | None, str | None], ...], tuple[str, ...]]:
    """Per dimension (attribute, client-side label, server-side label), and all label names in order.

    Without the prefix both sides write the same label (the side seen last wins, as in Tempo).
    A label name that is already taken (``client``, ``server``, ``connection_type``,
    ``virtual_node`` when enabled, or an earlier dimension's sanitized name) is left out rather
    than emitted twice.
    """
    taken = {"client", "server", "connection_type"}
    if virtual_node_label:
        taken.add(_VIRTUAL_NODE_LABEL)
    result: list[tuple[str, str | None, str | None]] = []
    names: list[str] = []

    def claim(label: str) -> str | None:
        if label in taken:
            return None
        taken.add(label)
        names.append(label)
        return label

    for attribute in dict.fromkeys(dimensions):
        if prefix:
            client_label = claim(sanitize_label_name("client_" + attribute))
            server_label = claim(sanitize_label_name("server_" + attribute))
        else:
            client_label = server_label = claim(sanitize_label_name(attribute))
        if client_label is not None or server_label is not None:
            result.append((attribute, client_label, server_label))
    return tuple(result), tuple(names)
