"""Light records out of a fetched Kafka partition's raw bytes (uncompressed v2 batches), the
pure-Python reference of ``_kafka_records``; any other batch is left to aiokafka (``DECLINED``)."""

from __future__ import annotations

import struct
from typing import Any

from aiokafka.record.util import calc_crc32c

__all__ = ["DECLINED", "END", "MORE", "FetchedRecord", "parse"]

#: The v2 batch header up to the record count (aiokafka's ``DefaultRecordBase.HEADER_STRUCT``).
_HEADER = struct.Struct(">qiibIhiqqqhii")
_HEADER_SIZE = _HEADER.size  # 61
#: Base offset and batch length: what precedes a batch's counted length.
_LOG_OVERHEAD = 12
_CRC_START = 21  # the CRC covers the attributes to the batch's end
_COMPRESSION_MASK = 0x07
_TIMESTAMP_TYPE_MASK = 0x08
_CONTROL_MASK = 0x20
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_NO_HEADERS: tuple[tuple[str, bytes | None], ...] = ()


class FetchedRecord:
    """One record as the ingest reads it: the fields of aiokafka's ``ConsumerRecord`` it uses."""

    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "timestamp_type", "topic", "value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,
        timestamp_type: int,
        key: bytes | None,
        value: bytes | None,
        headers: tuple[tuple[str, bytes | None], ...],
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = timestamp_type
        self.key = key
        self.value = value
        self.headers = headers

    def __repr__(self) -> str:
        return f"FetchedRecord({self.topic!r}, {self.partition}, offset={self.offset})"


class _Unhandled(Exception):
    """Bytes the light parser does not take: aiokafka's own path reads them."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A zigzag varint of at most 64 bits within ``[pos, end)``: (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Unhandled
        byte = buf[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise _Unhandled  # beyond 64 bits
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def _bytes(buf: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    """Nullable bytes (a varint length, negative for null) within ``[pos, end)``."""
    size, pos = _varint(buf, pos, end)
    if size < 0:
        return None, pos
    if size > end - pos:
        raise _Unhandled
    return buf[pos : pos + size], pos + size


#: ``parse`` stopped once it had ``want`` records (more complete batches may follow).
MORE = 0
#: ``parse`` read every complete batch of the fetch (a partial last batch is fetched again).
END = 1
#: ``parse`` stopped at a batch it does not read (at the returned position): aiokafka reads the rest.
DECLINED = 2


def parse(
    raw: bytes, pos: int, fetch_offset: int, check_crcs: bool, topic: str, partition: int, want: int
) -> tuple[list[FetchedRecord], int, int, int]:
    """Whole batches of ``raw`` from byte ``pos`` on, until at least ``want`` records: the records
    aiokafka's fetcher would return for them at ``fetch_offset``, its next fetch offset after them,
    the position after them and ``MORE``, ``END`` or ``DECLINED`` (a batch that is not a plain
    uncompressed v2 batch: compressed, control, other magic, bad CRC with ``check_crcs``, malformed;
    none of its records are returned)."""
    records: list[FetchedRecord] = []
    next_offset = fetch_offset
    size = len(raw)
    while size - pos >= _LOG_OVERHEAD:
        if len(records) >= want:
            return records, next_offset, pos, MORE
        (length,) = struct.unpack_from(">i", raw, pos + 8)
        end = pos + _LOG_OVERHEAD + length
        if end > size:
            break  # a partial batch at the end of the fetch: fetched again next time
        mark = len(records)
        try:
            next_offset = _batch(raw, pos, end, next_offset, check_crcs, topic, partition, records)
        except _Unhandled:
            del records[mark:]
            return records, next_offset, pos, DECLINED
        pos = end
    return records, next_offset, pos, END


def _batch(
    raw: bytes,
    pos: int,
    end: int,
    next_offset: int,
    check_crcs: bool,
    topic: str,
    partition: int,
    records: list[FetchedRecord],
) -> int:
    """One batch's records onto ``records``; the next fetch offset after it."""
    if end - pos < _HEADER_SIZE:
        raise _Unhandled
    header: Any = _HEADER.unpack_from(raw, pos)
    base_offset, _, _, magic, crc, attributes, last_delta, first_ts, max_ts, _, _, _, count = header
    if magic != 2 or attributes & (_COMPRESSION_MASK | _CONTROL_MASK) or count < 0:
        raise _Unhandled
    if check_crcs and calc_crc32c(raw[pos + _CRC_START : end]) != crc:
        raise _Unhandled
    log_append = 1 if attributes & _TIMESTAMP_TYPE_MASK else 0
    p = pos + _HEADER_SIZE
    for _ in range(count):
        length, p = _varint(raw, p, end)
        start = p
        if p >= end or raw[p] >= 0x80:
            raise _Unhandled  # record attributes: one byte
        p += 1
        ts_delta, p = _varint(raw, p, end)
        offset_delta, p = _varint(raw, p, end)
        key, p = _bytes(raw, p, end)
        value, p = _bytes(raw, p, end)
        n_headers, p = _varint(raw, p, end)
        if n_headers < 0:
            raise _Unhandled
        headers: tuple[tuple[str, bytes | None], ...] = _NO_HEADERS
        if n_headers:
            pairs = []
            for _ in range(n_headers):
                name, p = _bytes(raw, p, end)
                if name is None:
                    raise _Unhandled
                try:
                    text = name.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Unhandled from None
                header_value, p = _bytes(raw, p, end)
                pairs.append((text, header_value))
            headers = tuple(pairs)
        if p - start != length:
            raise _Unhandled
        offset = base_offset + offset_delta
        timestamp = max_ts if log_append else first_ts + ts_delta
        if not _INT64_MIN <= offset <= _INT64_MAX or not _INT64_MIN <= timestamp <= _INT64_MAX:
            raise _Unhandled  # the compiled twin computes in 64 bits
        if offset < next_offset:
            continue  # before the fetch position (aiokafka skips it too)
        records.append(FetchedRecord(topic, partition, offset, timestamp, log_append, key, value, headers))
        next_offset = offset + 1
    if p != end:
        raise _Unhandled  # bytes after the batch's records
    next_offset = base_offset + last_delta + 1
    if not _INT64_MIN <= next_offset <= _INT64_MAX:
        raise _Unhandled
    return next_offset
