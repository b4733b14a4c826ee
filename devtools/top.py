"""``spanmetrics top``: a live RED table (and service-graph edges) read from the worker's output topic.

Reads every partition without a consumer group, from a short lookback; the rate math is pure functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from worker.model.errors import SpanmetricsError

__all__ = [
    "EdgeRow",
    "MetricsState",
    "Point",
    "RedRow",
    "SeriesHistory",
    "counter_increase",
    "edge_rows",
    "histogram_increase",
    "histogram_quantile",
    "red_rows",
    "render_edges",
    "render_red",
    "render_screen",
    "run_top",
    "top_command",
]

#: Tempo's service-graph metric names.
SG_REQUESTS = "traces_service_graph_request_total"
SG_FAILED = "traces_service_graph_request_failed_total"
SG_SERVER_SECONDS = "traces_service_graph_request_server_seconds"

_ERROR_STATUS = "STATUS_CODE_ERROR"
_TENANT_HEADER = "x-scope-orgid"
_CLEAR = "\x1b[H\x1b[2J"

#: Sorted (name, value) pairs: a hashable attribute set.
AttrKey = tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """One cumulative observation of a series: a Sum value, or a histogram's count and buckets.

    ``buckets`` holds per-bucket (not cumulative) counts, ``len(bounds) + 1`` of them, the last one
    for ``+Inf``, as in OTLP.
    """

    time_ns: int
    start_ns: int
    value: float
    bounds: tuple[float, ...] = ()
    buckets: tuple[int, ...] = ()


@dataclass(slots=True)
class SeriesHistory:
    """The last two observations of one series, plus what the tables need to group it."""

    metric: str
    unit: str
    tenant: str
    attributes: Mapping[str, str]
    latest: Point
    previous: Point | None = None

    def observe(self, point: Point) -> bool:
        """Record a newer observation; older or same-time ones (replays, lookback) are ignored."""
        if point.time_ns <= self.latest.time_ns:
            return False
        self.previous, self.latest = self.latest, point
        return True


def counter_increase(previous: Point | None, latest: Point) -> tuple[float, float] | None:
    """(increase, seconds) between two cumulative observations, or None when there is no interval.

    A reset (the value went down, or the start time changed) counts the new value as the increase.
    """
    if previous is None:
        return None
    seconds = (latest.time_ns - previous.time_ns) / 1e9
    if seconds <= 0:
        return None
    reset = latest.value < previous.value or (
        previous.start_ns != 0 and latest.start_ns != 0 and latest.start_ns != previous.start_ns
    )
    return (latest.value if reset else latest.value - previous.value), seconds


def histogram_increase(previous: Point | None, latest: Point) -> tuple[tuple[float, ...], list[int]] | None:
    """(bounds, per-bucket increase) between two cumulative histogram observations, or None.

    A reset (any bucket went down, the start time or the bounds changed) yields the new buckets.
    """
    if previous is None or latest.time_ns <= previous.time_ns or not latest.buckets:
        return None
    same_shape = previous.bounds == latest.bounds and len(previous.buckets) == len(latest.buckets)
    reset = (
        not same_shape
        or (previous.start_ns != 0 and latest.start_ns != 0 and latest.start_ns != previous.start_ns)
        or any(new < old for old, new in zip(previous.buckets, latest.buckets, strict=True))
    )
    if reset:
        return latest.bounds, list(latest.buckets)
    return latest.bounds, [new - old for old, new in zip(previous.buckets, latest.buckets, strict=True)]


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """The *q*-quantile of an explicit-bucket histogram, as Prometheus' ``histogram_quantile`` does.

    *counts* are per-bucket counts, one more than *bounds* (the last bucket is ``+Inf``). The rank
    ``q * total`` is located in its bucket and interpolated linearly between the bucket's bounds;
    the first bucket starts at 0 (when its upper bound is positive). A rank in the ``+Inf`` bucket
    returns the highest finite bound. NaN when there are no observations; -Inf/+Inf for q outside
    [0, 1].
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"need len(bounds) + 1 counts, got {len(counts)} for {len(bounds)} bounds")
    cumulative: list[float] = []
    running = 0.0
    for count in counts:
        running += max(0.0, float(count))
        cumulative.append(running)
    total = cumulative[-1]
    if total <= 0 or not bounds:
        return math.nan
    rank = q * total
    # First finite bucket whose cumulative count reaches the rank; len(bounds) means +Inf.
    index = next((i for i in range(len(bounds)) if cumulative[i] >= rank), len(bounds))
    if index == len(bounds):
        return float(bounds[-1])
    upper = float(bounds[index])
    if index == 0 and upper <= 0:
        return upper
    lower = float(bounds[index - 1]) if index > 0 else 0.0
    below = cumulative[index - 1] if index > 0 else 0.0
    in_bucket = cumulative[index] - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedRow:
    """One line of the RED table: a (service, span name) over all its series."""

    tenant: str
    service: str
    span_name: str
    kinds: str
    rate: float | None
    error_ratio: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class EdgeRow:
    """One line of the service-graph table: a (client, server, connection type) edge."""

    tenant: str
    client: str
    server: str
    connection_type: str
    rate: float | None
    error_ratio: float | None
    p95_ms: float | None


@dataclass(slots=True)
class _Accumulator:
    """Sums over the series of one row."""

    rate: float = 0.0
    has_rate: bool = False
    increase: float = 0.0
    error_increase: float = 0.0
    kinds: set[str] = field(default_factory=set)
    bounds: tuple[float, ...] | None = None
    buckets: list[int] | None = None

    def add_counter(self, series: SeriesHistory, *, error: bool) -> None:
        delta = counter_increase(series.previous, series.latest)
        if delta is None:
            return
        increase, seconds = delta
        self.rate += increase / seconds
        self.has_rate = True
        self.increase += increase
        if error:
            self.error_increase += increase

    def add_histogram(self, series: SeriesHistory) -> None:
        delta = histogram_increase(series.previous, series.latest)
        if delta is None:
            return
        bounds, increase = delta
        if self.buckets is None:
            self.bounds, self.buckets = bounds, increase
        elif bounds == self.bounds:  # series with other bounds cannot be merged; the first ones win
            self.buckets = [a + b for a, b in zip(self.buckets, increase, strict=True)]

    def quantile_ms(self, q: float, unit_scale: float) -> float | None:
        if self.buckets is None or self.bounds is None:
            return None
        value = histogram_quantile(q, self.bounds, self.buckets)
        return None if math.isnan(value) else value * unit_scale

    def error_ratio(self) -> float | None:
        return self.error_increase / self.increase if self.increase > 0 else None


def _is_metric(name: str, base: str) -> bool:
    """``calls`` or a namespaced ``<namespace>.calls`` (the connector's naming)."""
    return name == base or name.endswith("." + base)


def _ms_scale(unit: str, default: str) -> float:
    """Factor from the histogram's unit to milliseconds."""
    unit = unit or default
    return {"ms": 1.0, "s": 1000.0, "us": 0.001, "ns": 1e-6}.get(unit, 1.0)


def red_rows(
    series: Iterable[SeriesHistory], *, calls: str = "calls", duration: str = "duration"
) -> list[RedRow]:
    """Group span-metric series by (tenant, service, span name) into RED rows.

    Rate: sum over the ``calls`` series of increase / elapsed. Error ratio: the increase of the
    series with status ``STATUS_CODE_ERROR`` over the increase of all. Percentiles: from the summed
    ``duration`` histogram increases, in milliseconds. Sorted by service, then busiest first.
    """
    groups: dict[tuple[str, str, str], _Accumulator] = {}
    scales: dict[tuple[str, str, str], float] = {}
    for item in series:
        is_calls = _is_metric(item.metric, calls)
        is_duration = _is_metric(item.metric, duration)
        if not (is_calls or is_duration):
            continue
        key = (item.tenant, item.attributes.get("service.name", ""), item.attributes.get("span.name", ""))
        acc = groups.setdefault(key, _Accumulator())
        kind = item.attributes.get("span.kind", "")
        if kind:
            acc.kinds.add(kind.removeprefix("SPAN_KIND_"))
        if is_calls:
            acc.add_counter(item, error=item.attributes.get("status.code") == _ERROR_STATUS)
        else:
            scales.setdefault(key, _ms_scale(item.unit, "ms"))
            acc.add_histogram(item)
    rows = [
        RedRow(
            tenant=key[0],
            service=key[1],
            span_name=key[2],
            kinds=",".join(sorted(acc.kinds)),
            rate=acc.rate if acc.has_rate else None,
            error_ratio=acc.error_ratio(),
            p50_ms=acc.quantile_ms(0.50, scales.get(key, 1.0)),
            p95_ms=acc.quantile_ms(0.95, scales.get(key, 1.0)),
            p99_ms=acc.quantile_ms(0.99, scales.get(key, 1.0)),
        )
        for key, acc in groups.items()
    ]
    rows.sort(key=lambda r: (r.tenant, r.service, -(r.rate or 0.0), r.span_name))
    return rows


def edge_rows(series: Iterable[SeriesHistory]) -> list[EdgeRow]:
    """Group Tempo service-graph series by (tenant, client, server, connection_type) into edge rows.

    Rate from ``traces_service_graph_request_total``, error ratio from
    ``traces_service_graph_request_failed_total`` over it, p95 from
    ``traces_service_graph_request_server_seconds``. Busiest edges first.
    """
    totals: dict[tuple[str, str, str, str], _Accumulator] = {}
    failed: dict[tuple[str, str, str, str], _Accumulator] = {}
    scales: dict[tuple[str, str, str, str], float] = {}
    for item in series:
        if item.metric not in (SG_REQUESTS, SG_FAILED, SG_SERVER_SECONDS):
            continue
        attrs = item.attributes
        key = (
            item.tenant,
            attrs.get("client", ""),
            attrs.get("server", ""),
            attrs.get("connection_type", ""),
        )
        if item.metric == SG_REQUESTS:
            totals.setdefault(key, _Accumulator()).add_counter(item, error=False)
        elif item.metric == SG_FAILED:
            failed.setdefault(key, _Accumulator()).add_counter(item, error=True)
        else:
            scales.setdefault(key, _ms_scale(item.unit, "s"))
            totals.setdefault(key, _Accumulator()).add_histogram(item)
    rows = []
    for key, acc in totals.items():
        fail = failed.get(key)
        ratio = None
        if acc.increase > 0:
            ratio = min(1.0, (fail.error_increase if fail is not None else 0.0) / acc.increase)
        rows.append(
            EdgeRow(
                tenant=key[0],
                client=key[1],
                server=key[2],
                connection_type=key[3],
                rate=acc.rate if acc.has_rate else None,
                error_ratio=ratio,
                p95_ms=acc.quantile_ms(0.95, scales.get(key, 1000.0)),
            )
        )
    rows.sort(key=lambda r: (r.tenant, -(r.rate or 0.0), r.client, r.server))
    return rows


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int, max_width: int
) -> list[str]:
    """Columns separated by two spaces; text columns left-aligned, numbers right-aligned."""
    clipped = [[_clip(cell, max_width) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in clipped:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if index >= numeric_from else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(row) for row in clipped)]


def render_red(rows: Sequence[RedRow], *, max_width: int = 48) -> list[str]:
    """The RED table as lines; a TENANT column only when more than one tenant is present."""
    with_tenant = len({r.tenant for r in rows}) > 1
    headers = ["SERVICE", "SPAN NAME", "KIND", "REQ/S", "ERROR", "P50 ms", "P95 ms", "P99 ms"]
    cells = [
        [
            r.service,
            r.span_name,
            r.kinds or "-",
            _fmt_rate(r.rate),
            _fmt_ratio(r.error_ratio),
            _fmt_ms(r.p50_ms),
            _fmt_ms(r.p95_ms),
            _fmt_ms(r.p99_ms),
        ]
        for r in rows
    ]
    if with_tenant:
        _add_tenant_column(headers, cells, [row.tenant for row in rows])
    return _table(headers, cells, len(headers) - 5, max_width)


def _add_tenant_column(headers: list[str], cells: list[list[str]], tenants: Sequence[str]) -> None:
    """A leading TENANT column, for when rows of several tenants share the table."""
    headers.insert(0, "TENANT")
    for cell, tenant in zip(cells, tenants, strict=True):
        cell.insert(0, tenant or "-")


def render_edges(rows: Sequence[EdgeRow], *, max_width: int = 48) -> list[str]:
    """The service-graph table as lines."""
    with_tenant = len({r.tenant for r in rows}) > 1
    headers = ["CLIENT", "SERVER", "TYPE", "REQ/S", "ERROR", "P95 ms"]
    cells = [
        [
            r.client,
            r.server,
            r.connection_type or "-",
            _fmt_rate(r.rate),
            _fmt_ratio(r.error_ratio),
            _fmt_ms(r.p95_ms),
        ]
        for r in rows
    ]
    if with_tenant:
        _add_tenant_column(headers, cells, [row.tenant for row in rows])
    return _table(headers, cells, len(headers) - 3, max_width)


# --------------------------------------------------------------------------------------------------
# State fed from the topic
# --------------------------------------------------------------------------------------------------


def _any_to_str(value: AnyValue) -> str:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which in ("int_value", "double_value"):
        return str(getattr(value, which))
    if which == "bytes_value":
        return value.bytes_value.hex()
    return "" if which is None else str(getattr(value, which)).strip()


def _attrs(pairs: Iterable[KeyValue]) -> AttrKey:
    return tuple(sorted((kv.key, _any_to_str(kv.value)) for kv in pairs))


class MetricsState:
    """The latest two observations of every series seen on the topic.

    A series is (tenant, metric, resource attributes, point attributes). Series not updated within
    ``stale_after`` seconds of the newest observation are dropped (expired by the worker).
    """

    def __init__(self, stale_after: float = 60.0) -> None:
        self.series: dict[tuple[str, str, AttrKey, AttrKey], SeriesHistory] = {}
        self.stale_after_ns = int(stale_after * 1e9)
        self.records = 0
        self.bad_records = 0
        self.newest_ns = 0

    def ingest(self, request: ExportMetricsServiceRequest, tenant: str = "") -> int:
        """Take every Sum and explicit-bucket Histogram point of *request*; return how many were new."""
        taken = 0
        self.records += 1
        for rm in request.resource_metrics:
            resource = _attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    which = metric.WhichOneof("data")
                    if which == "sum":
                        for sp in metric.sum.data_points:
                            value = float(sp.as_int if sp.WhichOneof("value") == "as_int" else sp.as_double)
                            point = Point(sp.time_unix_nano, sp.start_time_unix_nano, value)
                            taken += self._observe(
                                tenant, metric.name, metric.unit, resource, sp.attributes, point
                            )
                    elif which == "histogram":
                        for hp in metric.histogram.data_points:
                            point = Point(
                                hp.time_unix_nano,
                                hp.start_time_unix_nano,
                                float(hp.count),
                                tuple(hp.explicit_bounds),
                                tuple(hp.bucket_counts),
                            )
                            taken += self._observe(
                                tenant, metric.name, metric.unit, resource, hp.attributes, point
                            )
        return taken

    def ingest_record(self, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()) -> int:
        """Decode one Kafka record and :meth:`ingest` it; undecodable records are counted and skipped."""
        tenant = ""
        for name, raw in headers:
            if name.lower() == _TENANT_HEADER:
                tenant = raw.decode("utf-8", errors="replace")
        try:
            request = ExportMetricsServiceRequest.FromString(value or b"")
        except DecodeError:
            self.bad_records += 1
            return 0
        return self.ingest(request, tenant)

    def _observe(
        self,
        tenant: str,
        metric: str,
        unit: str,
        resource: AttrKey,
        attributes: Iterable[KeyValue],
        point: Point,
    ) -> int:
        point_attrs = _attrs(attributes)
        key = (tenant, metric, resource, point_attrs)
        self.newest_ns = max(self.newest_ns, point.time_ns)
        history = self.series.get(key)
        if history is None:
            merged = dict(resource)
            merged.update(point_attrs)  # data point attributes win over resource attributes
            self.series[key] = SeriesHistory(metric, unit, tenant, merged, point)
            return 1
        return int(history.observe(point))

    def live(self) -> list[SeriesHistory]:
        """Drop stale series and return the rest."""
        cutoff = self.newest_ns - self.stale_after_ns
        for key in [k for k, s in self.series.items() if s.latest.time_ns < cutoff]:
            del self.series[key]
        return list(self.series.values())


def render_screen(
    state: MetricsState,
    *,
    title: str,
    footer: Sequence[str] = (),
    max_rows: int | None = None,
    width: int | None = None,
) -> str:
    """Title, RED table, edges table (when there are service-graph series) and footer, as text."""
    live = state.live()
    red = red_rows(live)
    edges = edge_rows(live)
    lines = [
        f"{title}  {time.strftime('%H:%M:%S')}  series={len(live)} records={state.records}"
        + (f" undecodable={state.bad_records}" if state.bad_records else ""),
        "",
    ]
    if not red and not edges:
        lines.append("(no span metrics yet)")
    if red:
        table = render_red(red)
        if max_rows is not None and len(table) - 1 > max_rows:
            hidden = len(table) - 1 - max_rows
            table = [*table[: max_rows + 1], f"... {hidden} more rows"]
        lines.extend(table)
    if edges:
        lines.append("")
        lines.extend(render_edges(edges))
    if footer:
        lines.append("")
        lines.extend(footer)
    if width is not None:
        lines = [line[:width] for line in lines]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The live loop
# --------------------------------------------------------------------------------------------------


async def _partitions(consumer: AIOKafkaConsumer, topic: str, stop: asyncio.Event) -> list[TopicPartition]:
    """The topic's partitions, waiting (and saying so once) until the topic exists."""
    said = False
    while not stop.is_set():
        await consumer.topics()  # refreshes metadata
        numbers = consumer.partitions_for_topic(topic)
        if numbers:
            return [TopicPartition(topic, n) for n in sorted(numbers)]
        if not said:
            print(f"top: waiting for topic {topic!r} to exist", file=sys.stderr, flush=True)
            said = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    return []


async def _seek_lookback(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], lookback: float
) -> None:
    """Start each partition at its first record of the last *lookback* seconds, else at its end."""
    await consumer.seek_to_end(*partitions)
    if lookback <= 0:
        return
    since_ms = int((time.time() - lookback) * 1000)
    try:
        found = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
    except Exception:  # a broker without timestamp lookups: the end it is
        return
    for tp, offset in found.items():
        # Kafka answers None when no record is that recent; Tansu answers offset 0 with timestamp -1.
        if offset is not None and offset.timestamp >= since_ms:
            consumer.seek(tp, offset.offset)


async def run_top(
    bootstrap_servers: str,
    topic: str,
    *,
    refresh: float = 2.0,
    duration: float | None = None,
    lookback: float | None = None,
    stop: asyncio.Event | None = None,
    out: TextIO | None = None,
    title: str | None = None,
    footer: Callable[[], Sequence[str]] | None = None,
) -> MetricsState:
    """Show the tables every *refresh* seconds until *duration* passed or *stop* is set.

    On a terminal the screen is redrawn in place; otherwise each refresh prints the tables as plain
    text followed by a blank line. *lookback* defaults to three refresh intervals (at least 10 s).
    Returns the final state (the tests and the dev stack inspect it).
    """
    stop = stop if stop is not None else asyncio.Event()
    refresh = max(0.1, refresh)
    out = out if out is not None else sys.stdout
    tty = out.isatty()
    lookback = lookback if lookback is not None else max(10.0, 3 * refresh)
    state = MetricsState(stale_after=max(30.0, 5 * refresh))
    heading = title or f"spanmetrics top - {topic} @ {bootstrap_servers}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        client_id="spanmetrics-top",
    )
    loop = asyncio.get_running_loop()
    timer = loop.call_later(duration, stop.set) if duration else None
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    try:
        partitions = await _partitions(consumer, topic, stop)
        if not partitions:
            return state
        consumer.assign(partitions)
        await _seek_lookback(consumer, partitions, lookback)
        next_draw = loop.time() + refresh
        while not stop.is_set():
            now = loop.time()
            if now >= next_draw:
                _draw(state, out, tty, heading, footer)
                next_draw = now + refresh
            wait = min(next_draw - now, 0.5)
            batches = await consumer.getmany(timeout_ms=max(1, int(wait * 1000)), max_records=1000)
            for records in batches.values():
                for record in records:
                    state.ingest_record(record.value, record.headers)
        _draw(state, out, tty, heading, footer)
    finally:
        if timer is not None:
            timer.cancel()
        await consumer.stop()
    return state


def _draw(
    state: MetricsState, out: TextIO, tty: bool, title: str, footer: Callable[[], Sequence[str]] | None
) -> None:
    extra = footer() if footer is not None else ()
    if tty:
        size = shutil.get_terminal_size()
        rows = max(3, size.lines - 8 - len(extra) - _edge_lines(state))
        screen = render_screen(state, title=title, footer=extra, max_rows=rows, width=size.columns)
        out.write(_CLEAR + screen + "\n")
    else:
        out.write(render_screen(state, title=title, footer=extra) + "\n\n")
    out.flush()


def _edge_lines(state: MetricsState) -> int:
    """Lines the edges table will take, so the RED table leaves room for it on a terminal."""
    edges = {
        (
            s.tenant,
            s.attributes.get("client"),
            s.attributes.get("server"),
            s.attributes.get("connection_type"),
        )
        for s in state.series.values()
        if s.metric == SG_REQUESTS
    }
    return len(edges) + 2 if edges else 0


def top_command(bootstrap_servers: str, topic: str, *, refresh: float, duration: float | None) -> None:
    """Run :func:`run_top` on stdout until *duration* passed or SIGINT/SIGTERM arrived.

    The CLI's entry point; Kafka failures become one :class:`SpanmetricsError` line.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_top(bootstrap_servers, topic, refresh=refresh, duration=duration, stop=stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(main())
    except KafkaError as exc:
        raise SpanmetricsError(f"Kafka at {bootstrap_servers}: {exc}") from exc
