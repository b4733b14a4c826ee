"""The worker's ``getmany``: aiokafka's buffered fetches read by the light record parser (no
``ConsumerRecord`` per record) where it can, aiokafka's own path for everything else.

aiokafka keeps each fetched partition's bytes in a ``MemoryRecords`` that a ``PartitionRecords``
unpacks record by record (a ``DefaultRecord``, then a ``ConsumerRecord``, a headers tuple, the CRC
check in between). Here the fetcher's ``MemoryRecords`` keeps its raw bytes, and before a fetch
result is drained its ``PartitionRecords`` (still unread) is replaced by a ``_LightPartitionRecords``
holding what ``kafka_records.parse`` read: the same records, the same ``next_fetch_offset``
contract. Positions, seeks, pauses, rebalances and errors stay aiokafka's: the drain below is
``Fetcher.fetched_records`` and ``FetchResult.getall`` of aiokafka 0.14, line for line, and a fetch
the parser declines (compressed, control batches, a bad CRC, anything malformed) is left to
aiokafka. Another aiokafka version, or a consumer option the parser does not serve
(deserializers, ``read_committed``), runs the public ``getmany``; which one runs is logged once.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import aiokafka
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import ConsumerRecord

from worker.model import extensions
from worker.otlp import decode
from worker.stream import kafka_records

__all__ = [
    "COMPILED_PARSE",
    "FAST_AIOKAFKA",
    "FetchedRecords",
    "Reader",
    "RecordLike",
    "fetch_path",
    "fetch_records",
    "is_plain_request",
    "reader_for",
]

#: aiokafka versions whose fetcher internals the fast drain mirrors (checked: 0.14.0).
FAST_AIOKAFKA = ("0.14.",)
_READ_UNCOMMITTED = 0
#: Base offset and batch length precede a batch's counted length.
_LOG_OVERHEAD = 12

_compiled = extensions.load("worker.stream._kafka_records")
#: The compiled parser, when built (and not disabled). The pure reference is slower than
#: aiokafka's own unpacking: without the compiled one the worker runs the public ``getmany``.
COMPILED_PARSE: Callable[..., Any] | None = _compiled.parse if _compiled is not None else None
#: ``worker.otlp.decode.is_plain_request``, compiled when built (the ingest asks it of every record).
is_plain_request: Callable[[bytes], bool] = (
    _compiled.is_plain_request if _compiled is not None else decode.is_plain_request
)


class RecordLike(Protocol):
    """What the ingest reads of a record: aiokafka's ``ConsumerRecord`` or a light record."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...  # as aiokafka types it (None at run time)


FetchedRecords = dict[TopicPartition, Sequence[RecordLike]]


class _KeptMemoryRecords:
    """aiokafka's ``MemoryRecords`` of one fetched partition, with its raw bytes kept."""

    __slots__ = ("_inner", "raw", "touched")
    factory: Any = None  # aiokafka's MemoryRecords, set at install

    def __init__(self, data: bytes) -> None:
        self.raw = data
        self._inner = _KeptMemoryRecords.factory(data)
        #: aiokafka began unpacking it: then it is aiokafka's to finish.
        self.touched = False

    def size_in_bytes(self) -> int:
        return int(self._inner.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._inner.has_next())

    def next_batch(self) -> Any:
        self.touched = True
        return self._inner.next_batch()


#: Response frames of at least this many bytes are filled straight into the bytes object
#: ``readexactly`` returns (:class:`_FrameReader`); smaller ones, and larger than _FRAME_MOST
#: (no up-front allocation of a size read off the wire), take asyncio's buffer.
_FRAME_LEAST = 1 << 16
_FRAME_MOST = 1 << 28


class _FrameReader(asyncio.StreamReader):
    """aiokafka's connection reader, whose large ``readexactly`` (a fetch response) fills the
    compiled ``Frame``: each received chunk copied once, into the bytes handed over, and the
    reading task woken once the frame is whole; instead of a growing bytearray, a copy out of
    it, flow control pausing and resuming the socket every 128 KiB and a wake-up per chunk.
    The same bytes, end of stream, errors and cancellation as ``asyncio.StreamReader``."""

    _frame: Any = None

    def feed_data(self, data: Any) -> None:
        frame = self._frame
        if frame is None or not data:
            super().feed_data(data)
            return
        assert not self._eof, "feed_data after feed_eof"  # type: ignore[attr-defined]
        taken = frame.fill(data)
        if taken < len(data):
            super().feed_data(memoryview(data)[taken:])  # the next frames' bytes (wakes the reader)
        elif frame.full:
            self._wakeup_waiter()  # type: ignore[attr-defined]

    async def readexactly(self, n: int) -> bytes:
        buffer: bytearray = self._buffer  # type: ignore[attr-defined]
        if (
            _FRAME is None
            or n < _FRAME_LEAST
            or n > _FRAME_MOST
            or self._frame is not None
            or self._exception is not None  # type: ignore[attr-defined]
            or self._eof  # type: ignore[attr-defined]
            or len(buffer) >= n
        ):
            return await super().readexactly(n)
        frame = _FRAME(n)
        frame.fill(buffer)
        buffer.clear()
        self._frame = frame
        try:
            while not frame.full:
                if self._eof:  # type: ignore[attr-defined]
                    raise asyncio.IncompleteReadError(frame.partial(), n)
                await self._wait_for_data("readexactly")  # type: ignore[attr-defined]
        except asyncio.IncompleteReadError:
            raise
        except BaseException:
            # An error or a cancellation: what arrived stays readable, as in the base class.
            buffer[:0] = frame.partial()
            raise
        finally:
            self._frame = None
        self._maybe_resume_transport()  # type: ignore[attr-defined]
        return frame.take()  # type: ignore[no-any-return]


_FRAME: Callable[[int], Any] | None = getattr(_compiled, "Frame", None) if _compiled is not None else None
#: The parts of asyncio's StreamReader that _FrameReader uses (CPython 3.8 to 3.13 have them).
_STREAM_READER_PARTS = (
    "_wakeup_waiter",
    "_wait_for_data",
    "_maybe_resume_transport",
    "feed_data",
    "readexactly",
)


def _install_frame_reader(consumer: AIOKafkaConsumer) -> None:
    """aiokafka's connections read through :class:`_FrameReader`: those made from now on (for
    every client of the process: it behaves as ``asyncio.StreamReader``), and the consumer's
    open ones (a class swap: the reader has no state of its own while no frame is filling)."""
    if _FRAME is None or not all(hasattr(asyncio.StreamReader, name) for name in _STREAM_READER_PARTS):
        return
    from aiokafka import conn as module

    protocol = module.AIOKafkaProtocol
    if not getattr(protocol, "_frame_reader", False):

        class _FrameProtocol(protocol):  # type: ignore[misc, valid-type]
            _frame_reader = True

            def __init__(self, closed_fut: Any, reader: Any, *args: Any, **kwargs: Any) -> None:
                if type(reader) is asyncio.StreamReader:
                    reader.__class__ = _FrameReader
                super().__init__(closed_fut, reader, *args, **kwargs)

        module.AIOKafkaProtocol = _FrameProtocol
    conns = getattr(getattr(consumer, "_client", None), "_conns", None) or {}
    for conn in list(conns.values()):
        reader = getattr(conn, "_reader", None)
        if type(reader) is asyncio.StreamReader:
            reader.__class__ = _FrameReader


class _LightPartitionRecords:
    """Stands in for aiokafka's ``PartitionRecords`` of one fetch: the parser reads its batches a
    few at a time (as many as the drain asks for), and from a batch it declines on, aiokafka's own
    ``PartitionRecords`` reads the rest. ``next_fetch_offset`` is what aiokafka's would be after the
    same records; iterated (aiokafka's ``getone``/``getall``), it yields ``ConsumerRecord``s."""

    def __init__(
        self,
        tp: TopicPartition,
        raw: bytes,
        fetch_offset: int,
        partition_records: Any,
        parse: Callable[..., Any],
    ) -> None:
        self._parse_records = parse
        self._tp = tp
        self._raw = raw
        self._pos = 0
        #: The next fetch offset after the batches parsed so far.
        self._parsed_offset = fetch_offset
        self._status = kafka_records.MORE
        self._pending: list[Any] = []
        self._index = 0
        #: The ``PartitionRecords`` aiokafka built for the fetch: its type and options, and what
        #: reads a fetch declined at its first batch.
        self._aiokafka = partition_records
        # Its unpacking generator (not started) holds it in a reference cycle, which aiokafka breaks
        # when the generator ends; unused here, it would keep the fetch's bytes until a cycle
        # collection (the worker runs few). Made again if aiokafka is to read on.
        partition_records._records_iterator = None
        self._fallback: Any = None
        self.next_fetch_offset = fetch_offset

    def _parse(self, want: int) -> None:
        """Parses at least ``want`` more records (whole batches), or up to a declined batch."""
        records, self._parsed_offset, pos, self._status = self._parse_records(
            self._raw,
            self._pos,
            self._parsed_offset,
            self._aiokafka._check_crcs,
            self._tp.topic,
            self._tp.partition,
            want,
        )
        self._pending, self._index = records, 0
        if self._status == kafka_records.DECLINED:
            # aiokafka's own PartitionRecords reads on from that batch, in the same buffer: its
            # (unstarted) MemoryRecords skips the batches parsed here, and its next fetch offset
            # is the one after them, the state its unpacking loop would be in there.
            original = self._aiokafka
            raw, batch = self._raw, 0
            while batch < pos:
                batch += _LOG_OVERHEAD + int.from_bytes(raw[batch + 8 : batch + 12], "big", signed=True)
                original._records.next_batch()
            assert batch == pos
            original.next_fetch_offset = self._parsed_offset
            original._records_iterator = original._unpack_records()
            self._fallback = original
        self._pos = pos

    @property
    def declined_at_start(self) -> bool:
        """The first batch was declined: aiokafka reads the whole fetch."""
        return self._fallback is not None and self._pos == 0

    def take(self, max_records: int | None) -> tuple[list[Any], bool]:
        """The next records, at most ``max_records``, and whether none are left: ``getall``'s rule
        (stopped by the limit, the position is after the last record returned, even at the end)."""
        out: list[Any] = []
        while True:
            pending, index = self._pending, self._index
            if index < len(pending):
                if max_records is None:
                    chunk = pending[index:] if index else pending
                else:
                    chunk = pending[index : index + max_records - len(out)]
                self._index = index + len(chunk)
                if out:
                    out.extend(chunk)
                else:
                    out = chunk
                if max_records is not None and len(out) >= max_records:
                    self.next_fetch_offset = out[-1].offset + 1
                    return out, False
                continue
            if self._fallback is not None:
                return self._take_fallback(out, max_records)
            if self._status == kafka_records.END:
                self.next_fetch_offset = self._parsed_offset
                return out, True
            self._parse(max(max_records - len(out), 1) if max_records is not None else 1 << 30)

    def _take_fallback(self, out: list[Any], max_records: int | None) -> tuple[list[Any], bool]:
        """The rest from aiokafka's own ``PartitionRecords`` (its ``getall`` loop)."""
        fallback = self._fallback
        out = list(out)
        try:
            for message in fallback:
                out.append(message)
                if max_records is not None and len(out) >= max_records:
                    self.next_fetch_offset = fallback.next_fetch_offset
                    return out, False
        finally:
            # Raised (a bad CRC): the position aiokafka's one PartitionRecords would have.
            self.next_fetch_offset = fallback.next_fetch_offset
        return out, True

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        taken, _ = self.take(1)
        if not taken:
            raise StopIteration
        r = taken[0]
        if type(r) is ConsumerRecord:
            return r
        return ConsumerRecord(
            r.topic,
            r.partition,
            r.offset,
            r.timestamp,
            r.timestamp_type,
            r.key,
            r.value,
            None,
            len(r.key) if r.key is not None else -1,
            len(r.value) if r.value is not None else -1,
            r.headers,
        )


def _unsupported(consumer: AIOKafkaConsumer) -> str:
    """Why the fast drain cannot serve ``consumer`` (started), or "" when it can."""
    version = getattr(aiokafka, "__version__", "?")
    if not version.startswith(FAST_AIOKAFKA):
        return f"aiokafka {version} (the fast drain mirrors {', '.join(v + 'x' for v in FAST_AIOKAFKA)})"
    try:
        from aiokafka.consumer import fetcher as module
    except ImportError:
        return "aiokafka.consumer.fetcher missing"
    for name in ("MemoryRecords", "PartitionRecords", "FetchResult"):
        if not hasattr(module, name):
            return f"aiokafka.consumer.fetcher.{name} missing"
    fetcher = getattr(consumer, "_fetcher", None)
    needed = {
        consumer: ("_closed", "_coordinator", "_subscription", "_max_poll_records"),
        fetcher: (
            "_records",
            "_notify",
            "_wait_consume_future",
            "_create_fetch_waiter",
            "_subscriptions",
            "_closed",
            "_check_crcs",
            "_isolation_level",
            "_key_deserializer",
            "_value_deserializer",
        ),
        module.FetchResult: ("check_assignment", "has_more", "_update_position", "getall"),
        module.PartitionRecords: ("_unpack_records", "__next__"),
    }
    for owner, names in needed.items():
        for name in names:
            if not hasattr(owner, name):
                return f"{type(owner).__name__}.{name} missing"
    assert fetcher is not None
    if fetcher._key_deserializer is not None or fetcher._value_deserializer is not None:
        return "a key or value deserializer is configured"
    if fetcher._isolation_level != _READ_UNCOMMITTED:
        return "isolation_level read_committed"
    return ""


def _install_kept_records() -> None:
    """aiokafka's fetcher builds ``_KeptMemoryRecords`` (for every consumer of the process: they
    behave as ``MemoryRecords``; only a reader here looks at the kept bytes)."""
    from aiokafka.consumer import fetcher as module

    if module.MemoryRecords is not _KeptMemoryRecords:
        _KeptMemoryRecords.factory = module.MemoryRecords
        module.MemoryRecords = _KeptMemoryRecords


class Reader:
    """Drains one started consumer's buffered fetches: light records where the parser serves,
    aiokafka's ``ConsumerRecord``s elsewhere; ``getmany``'s contract either way."""

    def __init__(self, consumer: AIOKafkaConsumer, parse: Callable[..., Any] | None = None) -> None:
        """``parse``: the record parser (tests pass the pure one); the compiled one by default."""
        self.consumer = consumer
        self._parse = parse or COMPILED_PARSE
        #: Why the public ``getmany`` runs instead ("" when the fast drain runs).
        self.unsupported = _unsupported(consumer)
        if self._parse is None and not self.unsupported:
            self.unsupported = "the compiled record parser is not built (or SPANMETRICS_NO_EXTENSIONS is set)"
        #: Fetched partitions read by the light parser, and those it left to aiokafka.
        self.parsed = 0
        self.declined = 0
        if not self.unsupported:
            _install_kept_records()
            _install_frame_reader(consumer)
            from aiokafka.consumer.fetcher import FetchResult, PartitionRecords

            self._fetch_result: Any = FetchResult
            self._partition_records: Any = PartitionRecords

    @property
    def fast(self) -> bool:
        return not self.unsupported

    async def getmany(self, *, timeout_ms: int, max_records: int | None) -> FetchedRecords:
        """``AIOKafkaConsumer.getmany(timeout_ms=..., max_records=...)`` over all assigned partitions."""
        consumer: Any = self.consumer
        if self.unsupported:
            return await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)  # type: ignore[no-any-return]
        if consumer._closed:
            raise ConsumerStoppedError()
        if max_records is not None and (not isinstance(max_records, int) or max_records < 1):
            raise ValueError("`max_records` must be a positive Integer")
        consumer._coordinator.check_errors()
        with consumer._subscription.fetch_context():
            return await self._fetched_records(timeout_ms / 1000, max_records or consumer._max_poll_records)

    async def _fetched_records(self, timeout: float, max_records: int | None) -> FetchedRecords:
        """aiokafka 0.14's ``Fetcher.fetched_records`` (all partitions), draining through ``_getall``."""
        fetcher: Any = self.consumer._fetcher  # type: ignore[attr-defined]
        fetch_result = self._fetch_result
        while True:
            if fetcher._subscriptions.reassignment_in_progress:
                await fetcher._subscriptions.wait_for_assignment()
            start_time = time.monotonic()
            drained: FetchedRecords = {}
            buffered = fetcher._records
            for tp in list(buffered.keys()):
                res_or_error = buffered[tp]
                if type(res_or_error) is fetch_result:
                    records = self._getall(tp, res_or_error, max_records)
                    if not res_or_error.has_more():
                        del buffered[tp]
                        fetcher._notify(fetcher._wait_consume_future)
                    if not records:
                        continue
                    drained[tp] = records
                    if max_records is not None:
                        max_records -= len(records)
                        assert max_records >= 0
                        if max_records == 0:
                            break
                elif drained:
                    return drained
                else:
                    del buffered[tp]
                    fetcher._notify(fetcher._wait_consume_future)
                    res_or_error.check_raise()
            if drained or not timeout:
                return drained
            waiter = fetcher._create_fetch_waiter()
            done, pending = await asyncio.wait([waiter], timeout=timeout)
            if not done or fetcher._closed:
                if pending:
                    pending.pop().cancel()
                return {}
            if waiter.done():
                waiter.result()
            timeout = max(0.0, timeout - (time.monotonic() - start_time))

    def _getall(self, tp: TopicPartition, result: Any, max_records: int | None) -> Sequence[RecordLike]:
        """``FetchResult.getall``: the light records of an unread fetch, else aiokafka's."""
        records = result._partition_records
        if type(records) is self._partition_records:
            kept = records._records
            if type(kept) is not _KeptMemoryRecords or kept.touched:
                return result.getall(max_records)  # type: ignore[no-any-return]
            if not result.check_assignment(tp):
                return []
            assert self._parse is not None
            records = _LightPartitionRecords(tp, kept.raw, records.next_fetch_offset, records, self._parse)
            result._partition_records = records
            records._parse(max_records if max_records is not None else 1 << 30)
            if records.declined_at_start:
                self.declined += 1
                result._partition_records = records._aiokafka
                return result.getall(max_records)  # type: ignore[no-any-return]
            self.parsed += 1
        if type(records) is not _LightPartitionRecords:
            return result.getall(max_records)  # type: ignore[no-any-return]
        if not result.check_assignment(tp) or not result.has_more():
            return []
        taken, done = records.take(max_records)
        result._update_position()
        if done:
            result._partition_records = None
        return taken


_readers: weakref.WeakKeyDictionary[AIOKafkaConsumer, Reader] = weakref.WeakKeyDictionary()


def reader_for(consumer: AIOKafkaConsumer, log: Any = None) -> Reader:
    """The consumer's reader (made at the first call, after ``consumer.start()``); logs which drain runs."""
    reader = _readers.get(consumer)
    if reader is None:
        reader = _readers[consumer] = Reader(consumer)
        if log is not None:
            if reader.fast:
                log.info("kafka records read without per-record objects (compiled record parser)")
            else:
                log.info("kafka records read by aiokafka's getmany", because=reader.unsupported)
    return reader


def fetch_path(consumer: AIOKafkaConsumer) -> str:
    """Which drain reads the consumer's fetches: ``light`` (the record parser), ``aiokafka``
    (its ``getmany``), or ``unknown`` before the first fetch."""
    try:
        reader = _readers.get(consumer)
    except TypeError:  # not a consumer a reader could be made for
        return "unknown"
    if reader is None:
        return "unknown"
    return "light" if reader.fast else "aiokafka"


async def fetch_records(
    consumer: AIOKafkaConsumer, *, timeout_ms: int, max_records: int | None, log: Any = None
) -> FetchedRecords:
    """``consumer.getmany(timeout_ms=..., max_records=...)`` through the consumer's reader."""
    return await reader_for(consumer, log).getmany(timeout_ms=timeout_ms, max_records=max_records)
