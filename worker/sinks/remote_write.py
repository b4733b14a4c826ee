"""The Prometheus remote-write sink: folded series as Remote Write 1.0 requests, sent from a bounded buffer.

Publishing translates and encodes at once and only queues (it never waits on the endpoint, so a
slow or absent Prometheus never holds the flush or consumption up); one sender task delivers the
requests in order, retrying 5xx, 429, timeouts and connection errors with exponential backoff
(refusals of other 4xx are not retried, as Prometheus does). When the buffer is full the oldest
requests are dropped. Every sample is counted once: sent, failed, or dropped
(:class:`~worker.observability.stats.RemoteWriteStats`), and each failure episode is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import cramjam
import structlog

from worker import __version__
from worker.config import RemoteWriteConfig
from worker.model.series import Attributes, MetricDescriptor, Series
from worker.model.wire import message, varint
from worker.observability.logs import redact_url
from worker.observability.stats import RemoteWriteStats
from worker.sinks.base import Delivered
from worker.sinks.cumulative import DeltaToCumulative
from worker.sinks.prometheus_translate import NativeHistogram, PromSeries, Translator

__all__ = ["PROTOCOL_HEADERS", "RemoteWriteSink", "encode_write_request", "split_requests", "ssl_context"]

log = structlog.get_logger("spanmetrics.remote_write")

USER_AGENT = f"spanmetrics-worker/{__version__}"

#: Remote Write 1.0's required headers.
PROTOCOL_HEADERS: dict[str, str] = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": USER_AGENT,
}

#: Series translated between two returns to the event loop (about 10 ms of work).
_CHUNK_SERIES = 100

#: The status recorded for a request that could not be sent at all (not an HTTP status).
_UNSENDABLE = -1

#: How much of a refusal's body goes into the log line.
_BODY_SNIPPET = 256


_pack_double = struct.Struct("<d").pack
_ZERO_DOUBLE = _pack_double(0.0)
_UINT64 = (1 << 64) - 1

#: (name, value) -> the serialized ``labels`` field (tag, length, Label): a few thousand pairs
#: repeat over every series of a flush.
_LABEL_CACHE_LIMIT = 1 << 16
_label_cache: dict[tuple[str, str], bytes] = {}


def _int64(value: int) -> bytes:
    """An int64 field's varint (two's complement for a negative value, as protobuf)."""
    return varint(value & _UINT64)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def _label(pair: tuple[str, str]) -> bytes:
    encoded = _label_cache.get(pair)
    if encoded is None:
        name, value = pair
        body = b""
        if name:
            body += message(b"\x0a", name.encode("utf-8"))
        if value:
            body += message(b"\x12", value.encode("utf-8"))
        encoded = message(b"\x0a", body)
        if len(_label_cache) >= _LABEL_CACHE_LIMIT:
            _label_cache.clear()
        _label_cache[pair] = encoded
    return encoded


def _double(tag: bytes, value: float) -> bytes:
    """A proto3 double field: left out when 0.0 (its default)."""
    packed = _pack_double(value)
    return b"" if packed == _ZERO_DOUBLE else tag + packed


def _histogram(histogram: NativeHistogram) -> bytes:
    """``Histogram`` (prompb/types.proto): the oneof counts always written, as set."""
    body = b"\x08" + varint(histogram.count)
    body += _double(b"\x19", histogram.sum)
    if histogram.schema:
        body += b"\x20" + varint(_zigzag(histogram.schema) & _UINT64)
    body += _double(b"\x29", histogram.zero_threshold)
    body += b"\x30" + varint(histogram.zero_count)
    for offset, length in histogram.positive_spans:
        span = (b"\x08" + varint(_zigzag(offset) & _UINT64) if offset else b"") + (
            b"\x10" + varint(length) if length else b""
        )
        body += message(b"\x5a", span)
    if histogram.positive_deltas:
        body += message(b"\x62", b"".join(varint(_zigzag(d) & _UINT64) for d in histogram.positive_deltas))
    if histogram.timestamp_ms:
        body += b"\x78" + _int64(histogram.timestamp_ms)
    return body


def _time_series(one: PromSeries) -> bytes:
    parts = [_label(pair) for pair in one.labels]
    for timestamp, value in one.samples:
        sample = _double(b"\x09", value) + (b"\x10" + _int64(timestamp) if timestamp else b"")
        parts.append(message(b"\x12", sample))
    for exemplar in one.exemplars:
        body = b"".join(_label(pair) for pair in exemplar.labels)
        body += _double(b"\x11", exemplar.value)
        if exemplar.timestamp_ms:
            body += b"\x18" + _int64(exemplar.timestamp_ms)
        parts.append(message(b"\x1a", body))
    for histogram in one.histograms:
        parts.append(message(b"\x22", _histogram(histogram)))
    return message(b"\x0a", b"".join(parts))


def encode_write_request(series: Sequence[PromSeries]) -> bytes:
    """A serialized (uncompressed) ``prometheus.WriteRequest``, written straight in the wire
    format: byte for byte what the generated ``remote_write_pb2.WriteRequest`` serializes
    (tests/unit/sinks/test_prometheus_translate.py compares them), several times faster."""
    return b"".join(_time_series(one) for one in series)


def split_requests(series: Sequence[PromSeries], max_points: int) -> Iterator[list[PromSeries]]:
    """Runs of whole series with at most ``max_points`` samples each (a larger series goes alone)."""
    batch: list[PromSeries] = []
    points = 0
    for one in series:
        size = one.points
        if batch and points + size > max_points:
            yield batch
            batch, points = [], 0
        batch.append(one)
        points += size
    if batch:
        yield batch


@dataclass(slots=True)
class _Request:
    tenant: str
    body: bytes
    points: int
    #: Set when the buffer overflowed while this request was being retried: give it up.
    dropped: bool = False


@dataclass(slots=True)
class _Queued:
    """Remote write's "delivered" is "in its buffer": its own sender delivers or counts it."""

    async def wait(self) -> Delivered:
        # Its requests are not the output topic's records: they are counted by RemoteWriteStats.
        return Delivered()


class RemoteWriteSink:
    """Publishes each slot's series to ``config.url``; ``tenant`` goes in ``config.tenant_header``
    unless it is ``default_tenant`` (records that came without a tenant)."""

    def __init__(
        self,
        config: RemoteWriteConfig,
        *,
        descriptors: Mapping[str, MetricDescriptor],
        default_tenant: str,
        stats: RemoteWriteStats,
        sanitize_labels: bool = True,
        delta_idle_s: float | None = None,
    ) -> None:
        """``delta_idle_s``: the series come as DELTA; they are added up in memory (a series
        unseen that long is forgotten). None: they come cumulative, as folded from the state."""
        self.config = config
        self.default_tenant = default_tenant
        self.stats = stats
        self.translator = Translator(descriptors, sanitize_labels=sanitize_labels)
        self.to_cumulative = DeltaToCumulative(delta_idle_s) if delta_idle_s is not None else None
        self._headers = {
            **{name: value.get_secret_value() for name, value in config.headers.items()},
            **PROTOCOL_HEADERS,
        }
        self._buffer: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        #: Failure episodes: logged when they start and when they end, not per request.
        self._failing = False
        self._failures = 0
        self._dropping = False

    # ------------------------------------------------------------------ Sink

    async def publish(
        self, tenant: str, resources: Mapping[str, Attributes], series: Sequence[Series], now_ns: int
    ) -> _Queued:
        if self.to_cumulative is not None:
            series = self.to_cumulative.apply(tenant, series, now_ns)
        # In chunks, giving the event loop back between them: a slot of 100,000 series is
        # seconds of work, and heartbeats, probes and consumption share the loop (invariant 9).
        info_sent: set[str] = set()
        limit = self.config.max_samples_per_send
        batch: list[PromSeries] = []
        points = 0
        for start in range(0, len(series), _CHUNK_SERIES):
            if start:
                await asyncio.sleep(0)
            chunk = series[start : start + _CHUNK_SERIES]
            for one in self.translator.translate(resources, chunk, now_ns, info_sent=info_sent):
                if batch and points + one.points > limit:
                    self._send_later(tenant, batch, points)
                    batch, points = [], 0
                batch.append(one)
                points += one.points
        if batch:
            self._send_later(tenant, batch, points)
        return _Queued()

    def _send_later(self, tenant: str, batch: list[PromSeries], points: int) -> None:
        body = cramjam.snappy.compress_raw(encode_write_request(batch))
        self._enqueue(_Request(tenant, bytes(body), points))

    # ------------------------------------------------------------------ buffer

    def _enqueue(self, request: _Request) -> None:
        stats = self.stats
        limit = self.config.max_buffered_samples
        dropped = 0
        while self._buffer and stats.pending_samples + request.points > limit:
            oldest = self._buffer.popleft()
            oldest.dropped = True
            stats.pending_samples -= oldest.points
            dropped += oldest.points
        if dropped:
            stats.dropped_samples += dropped
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "remote write buffer full; oldest samples dropped",
                    url=self._url,
                    dropped_samples=dropped,
                    max_buffered_samples=limit,
                )
        self._buffer.append(request)
        stats.pending_samples += request.points
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send_loop(), name="remote-write")

    @property
    def _url(self) -> str:
        return redact_url(self.config.url)

    # ------------------------------------------------------------------ sending

    async def _send_loop(self) -> None:
        while True:
            if not self._buffer:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            request = self._buffer[0]
            await self._deliver(request)
            if not request.dropped:
                self._buffer.popleft()
                self.stats.pending_samples -= request.points

    async def _deliver(self, request: _Request) -> None:
        """Send until accepted, refused for good, or dropped from the buffer meanwhile."""
        backoff = self.config.min_backoff
        while not request.dropped:
            retry_after: float | None = None
            try:
                status, text, retry_after = await self._post(request)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # e.g. a tenant that is no valid header value: it cannot succeed
                status, text = _UNSENDABLE, f"{type(exc).__name__}: {exc}"
            stats = self.stats
            final = 200 <= status < 300 or status == _UNSENDABLE or (400 <= status < 500 and status != 429)
            if request.dropped and final:
                stats.dropped_samples -= request.points  # pushed out meanwhile, yet settled: not dropped
            if 200 <= status < 300:
                stats.samples += request.points
                if self._failing:
                    log.info("remote write recovered", url=self._url, failed_attempts=self._failures)
                self._failing = False
                self._failures = 0
                self._dropping = False
                return
            self._failures += 1
            if final:  # refused (4xx but 429), or not sendable at all: not retried
                stats.failed_samples += request.points
                self._episode(status, text, retried=False)
                return
            stats.retries += 1
            self._episode(status, text, retried=True)
            delay = min(backoff, self.config.max_backoff)
            if retry_after is not None:
                delay = min(max(delay, retry_after), self.config.max_backoff)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.config.max_backoff)

    def _episode(self, status: int, text: str, *, retried: bool) -> None:
        if self._failing:
            return
        self._failing = True
        log.warning(
            "remote write failing",
            url=self._url,
            status=status if status > 0 else None,
            error=text[:_BODY_SNIPPET],
            action="retrying with backoff" if retried else "samples refused (not retried)",
        )

    async def _post(self, request: _Request) -> tuple[int, str, float | None]:
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(ssl=ssl_context(self.config)),
            )
        headers = self._headers
        tenant_header = self.config.tenant_header
        if tenant_header and request.tenant != self.default_tenant:
            headers = {**headers, tenant_header: request.tenant}
        self.stats.requests += 1
        self.stats.sent_bytes += len(request.body)
        async with session.post(self.config.url, data=request.body, headers=headers) as response:
            text = "" if 200 <= response.status < 300 else await response.text(errors="replace")
            return response.status, text.strip(), _retry_after(response.headers.get("Retry-After"))

    # ------------------------------------------------------------------ lifecycle

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the buffer to empty; True when it did."""
        if self._task is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is buffered within ``timeout``; the rest is counted as dropped."""
        started = time.monotonic()
        await self.drain(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        left = sum(request.points for request in self._buffer)
        if left:
            self.stats.dropped_samples += left
            log.warning(
                "remote write samples not delivered at shutdown",
                url=self._url,
                dropped_samples=left,
                waited_seconds=round(time.monotonic() - started, 3),
            )
        self._buffer.clear()
        self.stats.pending_samples = 0
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None


def ssl_context(config: RemoteWriteConfig) -> ssl.SSLContext | bool:
    """The TLS settings of the endpoint's connections (True: the system's defaults)."""
    if config.tls_insecure_skip_verify:
        return False
    if config.tls_ca_file is None and config.tls_cert_file is None:
        return True
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    if config.tls_cert_file is not None:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def _retry_after(value: Any) -> float | None:
    """A ``Retry-After`` given in seconds (an HTTP date is ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
