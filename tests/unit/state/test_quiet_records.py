"""The compiled reading of a quiet record's series (``state._fold.quiet_series``) against the pure
fold's (``_complete(read_record(blob))`` then ``_series``): on records the store writes (parts
inline or interned, with and without buckets and companions) it reads the same series; on
records that are not quiet (a zero point owed, exemplars, an exponential histogram) it declines;
and on random msgpack values of the record's shape and on mutated records it either declines
or reads exactly what Python reads, never anything where Python raises."""

from __future__ import annotations

import random
import struct
from dataclasses import astuple
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state.codec import PartInterner, pack_meta
from state.fold import _companion_name, _complete, _is_quiet, _reader, _series
from worker.model.extensions import load

compiled = load("state._fold")
pytestmark = pytest.mark.skipif(
    compiled is None, reason="state._fold not built (or SPANMETRICS_NO_EXTENSIONS=1)"
)

PARTS = {0: b"\x0bservice.name", 1: b"\x05GET", 7: b"\x09span.kind"}


def _pure(blob: bytes, parts: dict[int, bytes] | None) -> tuple[str, Any]:
    """What the pure fold reads: ("quiet", series), ("other", None) or ("raises", None)."""
    try:
        record = _complete(_reader(raw=True)(blob))
        if not _is_quiet(record):
            return "other", None
        return "quiet", _series(record, 160, _reader(raw=False), parts)
    except Exception:
        return "raises", None


def _check(blob: bytes, parts: dict[int, bytes] | None) -> Any:
    assert compiled is not None
    got = compiled.quiet_series(blob, parts, _companion_name)
    verdict, expected = _pure(blob, parts)
    if got is not None:
        assert verdict == "quiet", (blob, verdict)
        assert astuple(got) == astuple(expected)
        assert [type(value) for value in astuple(got)] == [type(value) for value in astuple(expected)]
    return got


def _record(meta: bytes, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "start": 1_800_000_000_000_000,
        "last": 1_800_000_000_500_000,
        "count": 12,
        "sum": 3.25,
        "buckets": [1, 0, 11],
        "exp": [],
        "exemplars": [],
        "companion": "calls",
        "zero": 0,
    }
    fields.update(changes)
    values = [meta, *fields.values()]
    return msgpack.packb(values, use_bin_type=True)


INLINE = pack_meta("duration", "r1", (("service.name", "checkout"), ("http.method", "GET")))
INTERNED = PartInterner(PARTS, []).meta(msgpack.unpackb(INLINE, raw=False)) or INLINE


@pytest.mark.parametrize(
    "blob",
    [
        _record(INLINE),
        _record(INLINE, buckets=[], companion=""),
        _record(INLINE, count=2**64 - 1, start=0, last=-5, sum=-0.0),
        _record(msgpack.packb(["calls", "r2", [PARTS[0], 0, 7], 1], use_bin_type=True), buckets=[]),
        msgpack.packb([INLINE, 1, 2, 3, 4.5, [], [], []], use_bin_type=True),  # 8 fields: earlier versions
        msgpack.packb([INLINE, 1, 2, 3, 4.5, [5], [], [], "calls"], use_bin_type=True),  # 9 fields
    ],
)
def test_records_the_store_writes_are_read_as_python_reads_them(blob: bytes) -> None:
    assert _check(blob, PARTS) is not None


@pytest.mark.parametrize(
    "blob",
    [
        _record(INLINE, zero=1_800_000_000_000_000),  # owes its zero point
        _record(INLINE, exemplars=[[b"t" * 16, b"s" * 8, 1.5, 10]]),
        _record(INLINE, exp=[0, 0, 0, 0, 0, [], 0.0, 0.0]),
        _record(INLINE, count=12.0),  # a double written by an earlier Lua script
        _record(INLINE, last=12.0),
        _record(INLINE, sum=3),
        _record(INLINE, buckets=[1.0, 2]),
        _record(msgpack.packb(["calls", "r2", [["http.method", "GET"]]], use_bin_type=True)),  # typed pairs
        _record(msgpack.packb(["calls", "r2", [99], 1], use_bin_type=True)),  # an id the dictionary lacks
        _record(msgpack.packb(["calls", "r2", [0]], use_bin_type=True)),  # an id in a meta without ids
        _record(msgpack.packb([b"calls", "r2", []], use_bin_type=True)),  # a bin metric
        _record(msgpack.packb(["calls", "r2", []], use_bin_type=True) + b"\x00"),  # trailing byte
        _record(INLINE) + b"\xc0",
        _record(INLINE)[:-1],
        msgpack.packb([INLINE, 1, 2, 3, 4.5, [], []], use_bin_type=True),  # 7 fields
        msgpack.packb([INLINE, 1, 2, 3, 4.5, [], [], [], "", 0, 0], use_bin_type=True),  # 11 fields
    ],
)
def test_other_records_are_left_to_python(blob: bytes) -> None:
    assert _check(blob, PARTS) is None


def test_a_float32_sum_and_every_integer_width_read_as_msgpack_reads_them() -> None:
    packer = msgpack.Packer(use_bin_type=True, use_single_float=True)
    widths = (0, 1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63, -1, -32, -33, -128, -129, -(2**31) - 1)
    for value in (*widths, -(2**63)):
        blob = packer.pack([INLINE, value, value, value, 1.1, [value, value], [], [], "calls", 0])
        got = _check(blob, PARTS)
        assert got is not None and got.count == value and got.buckets == [value, value]
        assert got.sum == struct.unpack("<f", struct.pack("<f", 1.1))[0]


_scalar = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, width=32),  # (packable as float32 too)
    st.binary(max_size=4),
    st.text(max_size=4),
    st.none(),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(
    meta=st.one_of(
        st.just(INLINE),
        st.just(INTERNED),
        st.lists(st.one_of(st.text(max_size=3), st.binary(max_size=3), st.integers(-2, 9)), max_size=4).map(
            lambda items: msgpack.packb(["m", "r", items, 1], use_bin_type=True)
        ),
        st.binary(max_size=12),
    ),
    values=st.lists(_scalar, min_size=4, max_size=4),
    buckets=st.lists(st.one_of(st.integers(0, 2**64 - 1), _scalar), max_size=4),
    tail=st.lists(st.one_of(st.just([]), _scalar), max_size=5),
    single=st.booleans(),
)
def test_random_records_are_declined_or_read_as_python_reads_them(
    meta: bytes, values: list[Any], buckets: list[Any], tail: list[Any], single: bool
) -> None:
    packer = msgpack.Packer(use_bin_type=True, use_single_float=single)
    _check(packer.pack([meta, *values, buckets, *tail]), PARTS)
    _check(packer.pack([meta, *values, buckets, [], [], *tail[:2]]), None)


def test_mutated_records_are_declined_or_read_as_python_reads_them() -> None:
    rng = random.Random(18)
    seeds = [
        _record(INLINE),
        _record(INTERNED, buckets=[7] * 17),
        _record(INLINE, count=2**40, buckets=[2**33, 0]),
    ]
    read = 0
    for _ in range(6000):
        blob = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            move = rng.random()
            if not blob:
                break
            if move < 0.5:
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            elif move < 0.75:
                del blob[rng.randrange(len(blob)) :]
            else:
                blob.insert(rng.randrange(len(blob) + 1), rng.randrange(256))
        if _check(bytes(blob), PARTS) is not None:
            read += 1
    assert read > 100  # many mutants are still quiet records: both sides read them
