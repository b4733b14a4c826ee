"""The hand-written varints agree with protobuf's own encoding and refuse what protobuf refuses."""

from __future__ import annotations

import pytest
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]
from hypothesis import given
from hypothesis import strategies as st

from worker.model.wire import read_varint, varint


@given(st.integers(0, (1 << 64) - 1), st.binary(max_size=4))
def test_varints_match_protobuf_and_read_back(value: int, prefix: bytes) -> None:
    encoded = varint(value)
    assert encoded == _VarintBytes(value)
    assert read_varint(prefix + encoded + b"\x01", len(prefix)) == (value, len(prefix) + len(encoded))


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_values_outside_uint64_are_refused(value: int) -> None:
    with pytest.raises(ValueError):
        varint(value)


@pytest.mark.parametrize(("data", "max_bytes"), [(b"", 10), (b"\x80\x80", 10), (b"\xff" * 5 + b"\x01", 5)])
def test_truncated_or_overlong_varints_are_refused(data: bytes, max_bytes: int) -> None:
    with pytest.raises(ValueError):
        read_varint(data, 0, max_bytes)
