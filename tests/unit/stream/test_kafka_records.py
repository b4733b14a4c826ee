"""The light Kafka record parser against aiokafka's own unpacking: the same records and next fetch
offset, or "not handled"; pure reference and compiled twin equal, also on mutated batches."""

from __future__ import annotations

import gc
import os
import random
import sys
from typing import Any

import pytest
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.model import extensions
from worker.stream import fetch, kafka_records

compiled: Any = extensions.load("worker.stream._kafka_records")
needs_native = pytest.mark.skipif(
    compiled is None, reason="compiled record parser not built (or SPANMETRICS_NO_EXTENSIONS set)"
)
SCALE = max(1, int(os.environ.get("SPANMETRICS_FUZZ_SCALE", "1")))
TP = TopicPartition("spans", 3)

Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def build_batch(
    base_offset: int,
    records: list[Record],
    *,
    compression: int = 0,
    log_append_time: bool = False,
    transactional: bool = False,
    offset_step: int = 1,
    first_timestamp: int = 1_700_000_000_000,
) -> bytes:
    """A v2 batch as a producer writes it (aiokafka's builder), at ``base_offset``."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=int(transactional),
        producer_id=7 if transactional else -1,
        producer_epoch=0 if transactional else -1,
        base_sequence=0 if transactional else -1,
        batch_size=1 << 30,
    )
    for i, (ts_delta, key, value, headers) in enumerate(records):
        builder.append(
            i * offset_step, timestamp=first_timestamp + ts_delta, key=key, value=value, headers=headers
        )
    raw = builder.build()
    raw[0:8] = base_offset.to_bytes(8, "big", signed=True)
    if log_append_time:
        raw[22] |= 0x08  # attributes' timestamp type; the CRC covers it
        raw[17:21] = calc_crc32c(bytes(raw[21:])).to_bytes(4, "big")
    return bytes(raw)


def fields(record: Any) -> tuple[Any, ...]:
    return (
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        record.timestamp_type,
        record.key,
        record.value,
        tuple(record.headers),
    )


def aiokafka_reads(raw: bytes, fetch_offset: int, check_crcs: bool) -> tuple[list[Any], int]:
    """What aiokafka's fetcher returns for ``raw``: the records and the next fetch offset (raises
    what aiokafka raises)."""
    partition_records = PartitionRecords(TP, MemoryRecords(raw), [], fetch_offset, None, None, check_crcs, 0)
    records = [fields(r) for r in partition_records]
    return records, partition_records.next_fetch_offset


def parsers() -> list[Any]:
    return [kafka_records.parse] + ([compiled.parse] if compiled is not None else [])


def parsed(parse: Any, raw: bytes, fetch_offset: int, check_crcs: bool) -> tuple[list[Any], int] | None:
    """The whole fetch in one call, or None when any complete batch is declined."""
    records, next_offset, _, status = parse(raw, 0, fetch_offset, check_crcs, TP.topic, TP.partition, 1 << 30)
    if status == kafka_records.DECLINED:
        return None
    assert status == kafka_records.END
    return [fields(r) for r in records], next_offset


def parsed_in_steps(
    parse: Any, raw: bytes, fetch_offset: int, check_crcs: bool, want: int
) -> tuple[list[Any], int, int, int]:
    """The fetch a few records at a time, as the drain asks: records, next offset, position, status."""
    out: list[Any] = []
    pos, next_offset = 0, fetch_offset
    while True:
        records, next_offset, end, status = parse(
            raw, pos, next_offset, check_crcs, TP.topic, TP.partition, want
        )
        assert end >= pos and (status != kafka_records.MORE or len(records) >= want)
        out += [fields(r) for r in records]
        pos = end
        if status != kafka_records.MORE:
            return out, next_offset, pos, status


# ------------------------------------------------------------------------------ random batches

header_names = st.sampled_from(["tenant", "x-scope-orgid", "", "ü"])
header_lists = st.lists(st.tuples(header_names, st.one_of(st.none(), st.binary(max_size=8))), max_size=3)
records_strategy = st.lists(
    st.tuples(
        st.integers(min_value=-1000, max_value=10**6),
        st.one_of(st.none(), st.binary(max_size=20)),
        st.one_of(st.none(), st.binary(max_size=300)),
        header_lists,
    ),
    min_size=1,
    max_size=8,
)
batches_strategy = st.lists(
    st.tuples(records_strategy, st.booleans(), st.booleans(), st.integers(min_value=1, max_value=3)),
    min_size=1,
    max_size=4,
)


def build_fetch(batches: list[tuple[list[Record], bool, bool, int]], base: int) -> tuple[bytes, int]:
    raw = b""
    offset = base
    for records, log_append, transactional, step in batches:
        raw += build_batch(
            offset, records, log_append_time=log_append, transactional=transactional, offset_step=step
        )
        offset += len(records) * step
    return raw, offset


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=batches_strategy,
    base=st.integers(min_value=0, max_value=2**40),
    skip=st.integers(min_value=0, max_value=12),
    tail=st.integers(min_value=0, max_value=80),
    check_crcs=st.booleans(),
)
def test_same_records_as_aiokafka(
    batches: list[tuple[list[Record], bool, bool, int]], base: int, skip: int, tail: int, check_crcs: bool
) -> None:
    raw, end = build_fetch(batches, base)
    # A fetch may begin inside its first batch and end with part of a batch.
    raw += build_batch(end, [(0, None, b"x" * 100, [])])[:tail]
    expected = aiokafka_reads(raw, base + skip, check_crcs)
    for parse in parsers():
        assert parsed(parse, raw, base + skip, check_crcs) == expected
        for want in (1, 3):
            records, next_offset, _, status = parsed_in_steps(parse, raw, base + skip, check_crcs, want)
            assert status == kafka_records.END and (records, next_offset) == expected


@pytest.mark.parametrize("parse", parsers())
def test_declines_what_it_does_not_read(parse: Any) -> None:
    plain = build_batch(0, [(0, b"k", b"v", [("tenant", b"a")])])
    assert parsed(parse, plain, 0, True) is not None
    gzip = build_batch(0, [(0, b"k", b"v" * 100, [])], compression=1)  # gzip
    assert parsed(parse, gzip, 0, True) is None
    assert parsed(parse, plain + gzip, 0, True) is None  # one unusual batch: the whole fetch
    legacy = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    legacy.append(0, timestamp=1, key=None, value=b"v")
    assert parsed(parse, bytes(legacy.build()), 0, True) is None
    control = bytearray(plain)
    control[22] |= 0x20
    control[17:21] = calc_crc32c(bytes(control[21:])).to_bytes(4, "big")
    assert parsed(parse, bytes(control), 0, True) is None
    bad_crc = bytearray(plain)
    bad_crc[-1] ^= 0x01  # a header value byte: still well formed
    assert parsed(parse, bytes(bad_crc), 0, True) is None
    assert parsed(parse, bytes(bad_crc), 0, False) == aiokafka_reads(bytes(bad_crc), 0, False)


@pytest.mark.parametrize("parse", parsers())
def test_invalid_header_name_is_declined(parse: Any) -> None:
    raw = bytearray(build_batch(0, [(0, None, b"v", [("ab", b"c")])]))
    at = raw.index(b"ab")
    raw[at] = 0xFF  # not UTF-8 (aiokafka would raise)
    raw[17:21] = calc_crc32c(bytes(raw[21:])).to_bytes(4, "big")
    assert parsed(parse, bytes(raw), 0, True) is None


@needs_native
def test_crc32c_equals_aiokafkas() -> None:
    rng = random.Random(17)
    for size in [*range(0, 40), 1000, 4096, 65_537]:
        data = rng.randbytes(size)
        for start in range(min(size, 9)):  # every alignment
            chunk = data[start:]
            assert compiled.crc32c(chunk) == compiled.crc32c_table(chunk) == calc_crc32c(chunk)


# ------------------------------------------------------------------------------ the drain


Limits = int | list[int] | None


def aiokafka_drain(raw: bytes, fetch_offset: int, check_crcs: bool, limits: Limits) -> list[Any]:
    """aiokafka's ``getall`` steps over one fetch: each step's records and next fetch offset, and
    the exception that ended it, if any; ``limits``: each step's ``max_records`` (a list: in turn)."""
    partition_records = PartitionRecords(TP, MemoryRecords(raw), [], fetch_offset, None, None, check_crcs, 0)
    steps: list[Any] = []
    while True:
        max_records = _limit(limits, len(steps))
        taken: list[Any] = []
        try:
            for record in partition_records:
                taken.append(fields(record))
                if max_records is not None and len(taken) >= max_records:
                    break
            else:
                steps.append((taken, partition_records.next_fetch_offset, "end"))
                return steps
        except Exception as exc:
            steps.append((type(exc).__name__, partition_records.next_fetch_offset))
            return steps
        steps.append((taken, partition_records.next_fetch_offset))


def _limit(limits: int | list[int] | None, step: int) -> int | None:
    return limits[step % len(limits)] if isinstance(limits, list) else limits


def light_drain(
    raw: bytes, fetch_offset: int, check_crcs: bool, limits: int | list[int] | None, parse: Any
) -> list[Any]:
    """The same through the drain's ``_LightPartitionRecords`` (the parser, then aiokafka from a
    batch it declines)."""
    fetch._KeptMemoryRecords.factory = fetch._KeptMemoryRecords.factory or MemoryRecords
    original = PartitionRecords(
        TP, fetch._KeptMemoryRecords(raw), [], fetch_offset, None, None, check_crcs, 0
    )
    light = fetch._LightPartitionRecords(TP, raw, fetch_offset, original, parse)
    steps: list[Any] = []
    while True:
        try:
            taken, done = light.take(_limit(limits, len(steps)))
        except Exception as exc:
            steps.append((type(exc).__name__, light.next_fetch_offset))
            return steps
        if done:
            steps.append(([fields(r) for r in taken], light.next_fetch_offset, "end"))
            return steps
        steps.append(([fields(r) for r in taken], light.next_fetch_offset))


@pytest.mark.parametrize("parse", parsers())
@pytest.mark.parametrize("max_records", [1, 2, 5, None, [3, 1, 7]])
def test_drain_steps_as_aiokafka(max_records: int | list[int] | None, parse: Any) -> None:
    """Small steps, a fetch beginning inside a batch, a declined batch in the middle (gzip)."""
    plain: list[Record] = [(i, b"k", b"v%d" % i, [("tenant", b"a")] if i % 2 else []) for i in range(4)]
    gzip = build_batch(20, plain, compression=1)
    raw = build_batch(10, plain) + build_batch(14, plain) + gzip + build_batch(24, plain)[:-3]
    for fetch_offset in (10, 11, 13):  # within the first batch, as a broker answers
        expected = aiokafka_drain(raw, fetch_offset, True, max_records)
        assert light_drain(raw, fetch_offset, True, max_records, parse) == expected
        offsets = [o for o in [*range(10, 18), *range(20, 24)] if o >= fetch_offset]  # the last batch is cut
        assert [record[2] for step in expected for record in step[0]] == offsets


def test_a_drained_fetch_is_freed_without_the_cycle_collector() -> None:
    """aiokafka's unused PartitionRecords sits in a reference cycle with its generator: left so, the
    fetch's bytes would wait for a cycle collection (the worker runs few; RSS grew 4x)."""
    plain: list[Record] = [(i, None, b"v" * 100, []) for i in range(6)]
    raw = build_batch(0, plain) + build_batch(6, plain, compression=1) + build_batch(12, plain)
    gc.collect()
    gc.disable()
    try:
        for data in (raw[:1000] + b"", build_batch(0, plain) + b""):  # fresh objects
            before = sys.getrefcount(data)
            light_drain(data, 0, True, 4, parsers()[-1])
            assert sys.getrefcount(data) == before
    finally:
        gc.enable()


# ------------------------------------------------------------------------------ mutated batches


def mutants(seed: int, count: int) -> list[tuple[bytes, int]]:
    """Fetches of real-looking batches with bytes flipped, inserted, removed or cut off."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        records: list[Record] = [
            (
                rng.randint(-5, 5000),
                rng.choice([None, b"", rng.randbytes(rng.randint(1, 16))]),
                rng.choice([None, rng.randbytes(rng.randint(0, 200))]),
                [("tenant", rng.randbytes(3))] if rng.random() < 0.3 else [],
            )
            for _ in range(rng.randint(1, 5))
        ]
        base = rng.randint(0, 1000)
        raw = bytearray(
            build_batch(base, records, log_append_time=rng.random() < 0.2)
            + build_batch(base + len(records), records[:2])
        )
        for _ in range(rng.randint(1, 3)):
            kind = rng.randrange(4)
            at = rng.randrange(len(raw))
            if kind == 0:
                raw[at] ^= 1 << rng.randrange(8)
            elif kind == 1:
                raw[at] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF])
            elif kind == 2:
                raw[at:at] = rng.randbytes(rng.randint(1, 3))
            else:
                del raw[at : at + rng.randint(1, 4)]
        if rng.random() < 0.5 and len(raw) > 21:  # a consistent CRC: the parse itself is exercised
            for start in _batch_starts(raw):
                end = start + 12 + int.from_bytes(raw[start + 8 : start + 12], "big", signed=True)
                if end - start >= 21 and end <= len(raw):
                    crc = calc_crc32c(bytes(raw[start + 21 : end]))
                    raw[start + 17 : start + 21] = crc.to_bytes(4, "big")
        if rng.random() < 0.2:
            raw = raw[: rng.randrange(len(raw))]
        out.append((bytes(raw), base + rng.randint(0, 2)))
    return out


def _batch_starts(raw: bytearray) -> list[int]:
    starts = []
    pos = 0
    while len(raw) - pos >= 12:
        starts.append(pos)
        length = int.from_bytes(raw[pos + 8 : pos + 12], "big", signed=True)
        if length <= 0:
            break
        pos += 12 + length
    return starts


@pytest.mark.parametrize("seed", range(SCALE))
def test_mutated_fetches_never_crash_and_agree(seed: int) -> None:
    """Pure and compiled agree (records or None); what they read, aiokafka reads the same way."""
    read = declined = 0
    for raw, fetch_offset in mutants(seed, 3000):
        for check_crcs in (True, False):
            results = [parsed(parse, raw, fetch_offset, check_crcs) for parse in parsers()]
            assert all(result == results[0] for result in results)
            steps = [parsed_in_steps(parse, raw, fetch_offset, check_crcs, 2) for parse in parsers()]
            assert all(step == steps[0] for step in steps)
            records, next_offset, _, status = steps[0]
            if results[0] is None:
                declined += 1
                assert status == kafka_records.DECLINED
            else:
                read += 1
                assert status == kafka_records.END and (records, next_offset) == results[0]
            for limits in (1, 3, None, [2, 1, 5]):
                expected = aiokafka_drain(raw, fetch_offset, check_crcs, limits)
                for parse in parsers():
                    assert light_drain(raw, fetch_offset, check_crcs, limits, parse) == expected
    assert read > 500 and declined > 500  # both sides of the parser are exercised


# ------------------------------------------------------------------------------ is_plain_request


def _varint_bytes(value: int, extra: int) -> bytes:
    """``value`` as a varint, padded with ``extra`` redundant continuation bytes (overlong)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if extra:
        out[-1] |= 0x80
        out += b"\x80" * (extra - 1) + b"\x00"
    return bytes(out)


fields_strategy = st.lists(
    st.tuples(
        st.sampled_from([0x0A, 0x0A, 0x0A, 0x12, 0x7B, 0x20]),
        # Lengths whose first byte is whitespace or "{": such records might still be JSON.
        st.one_of(st.sampled_from([9, 10, 11, 12, 13, 32, 123]), st.integers(min_value=0, max_value=300)),
        st.integers(min_value=0, max_value=5),
        st.integers(min_value=-3, max_value=3),
    ),
    max_size=4,
)


@needs_native
@settings(max_examples=600, deadline=None)
@given(
    parts=fields_strategy,
    cut=st.integers(min_value=0, max_value=8),
    second=st.sampled_from([None, *b" \t\n{a\x00"]),
)
def test_compiled_is_plain_request_equals_the_pure_one(
    parts: list[tuple[int, int, int, int]], cut: int, second: int | None
) -> None:
    from worker.otlp.decode import is_plain_request

    data = bytearray()
    for tag, length, extra, skew in parts:
        data += bytes([tag]) + _varint_bytes(length, extra) + b"x" * max(0, length + skew)
    if second is not None and len(data) > 1:
        data[1] = second
    for value in (bytes(data), bytes(data[: len(data) - cut]), bytes(data[cut:])):
        assert compiled.is_plain_request(value) == is_plain_request(value)


@needs_native
def test_compiled_is_plain_request_on_real_and_random_records() -> None:
    from devtools.loadgen.model import TraceGenerator, build_model
    from worker.otlp.decode import is_plain_request

    generator = TraceGenerator(build_model(services=4, seed=9), seed=9)
    rng = random.Random(9)
    checked = {True: 0, False: 0}
    for _ in range(300):
        value = bytearray(generator.trace_request(1_700_000_000_000_000_000)[1].SerializeToString())
        for _ in range(5):
            mutant = bytearray(value)
            for _ in range(rng.randint(0, 2)):
                mutant[rng.randrange(len(mutant))] = rng.randrange(256)
            if rng.random() < 0.3:
                mutant = mutant[: rng.randrange(len(mutant) + 1)]
            expected = is_plain_request(bytes(mutant))
            assert compiled.is_plain_request(bytes(mutant)) == expected
            checked[expected] += 1
    for size in range(40):
        data = rng.randbytes(size)
        assert compiled.is_plain_request(data) == is_plain_request(data)
    for length in (9, 10, 32, 123):  # a second byte that is whitespace or "{": JSON or not
        for body in (b"x" * length, b"{" + b"x" * (length - 1), b" " * (length - 1) + b"{"):
            data = bytes([0x0A, length]) + body
            assert compiled.is_plain_request(data) == is_plain_request(data)
    assert checked[True] > 100 and checked[False] > 100
