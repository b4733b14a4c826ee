"""AnyValue <-> Python and the key string form (pcommon ``Value.AsString``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.unit.processors.spanmetrics.helpers import any_value, python_value
from worker.model.values import (
    any_value_to_python,
    fill_key_values,
    format_double,
    python_to_any_value,
    stringify_any_value,
    stringify_python,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.0, "2"),
        (0.0, "0"),
        (-0.0, "0"),
        (-3.0, "-3"),
        (0.1, "0.1"),
        (1.5, "1.5"),
        (-2.5, "-2.5"),
        (123.456, "123.456"),
        (0.1 + 0.2, "0.30000000000000004"),
        (100.0, "100"),
        (1e6, "1000000"),
        (1e20, "100000000000000000000"),
        # Fixed notation of the shortest digits, like Go, not the float's exact integer value.
        (1.2345678901234568e20, "123456789012345680000"),
        (2.0**53, "9007199254740992"),
        (2.0**60, "1152921504606847000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (1e-6, "0.000001"),
        (1.5e-6, "0.0000015"),
        (1e-7, "1e-7"),
        (-1.5e-7, "-1.5e-7"),
        (5e-324, "5e-324"),
    ],
)
def test_format_double(value: float, text: str) -> None:
    assert format_double(value) == text


def test_format_double_non_finite() -> None:
    assert format_double(math.inf) == "+Inf"
    assert format_double(-math.inf) == "-Inf"
    assert format_double(math.nan) == "NaN"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_double_round_trips(value: float) -> None:
    text = format_double(value)
    assert float(text) == value
    assert not text.endswith(".0")
    assert "e" not in text or abs(value) >= 1e21 or abs(value) < 1e-6


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("200", "200"),
        ("", ""),
        (200, "200"),
        (-7, "-7"),
        (True, "true"),
        (False, "false"),
        (2.0, "2"),
        (2.5, "2.5"),
        (b"\x00\x01\xff", "AAH/"),
        (None, ""),
        ([], "[]"),
        (["a", 1, 2.0, True, None], '["a",1,2,true,null]'),
        ({"b": 1, "a": "x"}, '{"a":"x","b":1}'),
        ({"k": [1.5, {"z": False}], "bytes": b"\x00"}, '{"bytes":"AA==","k":[1.5,{"z":false}]}'),
        (["é", "<tag>&"], '["é","\\u003ctag\\u003e\\u0026"]'),
        (['quote"', "new\nline"], '["quote\\"","new\\nline"]'),
    ],
)
def test_stringify_python(value: Any, text: str) -> None:
    assert stringify_python(value) == text


@pytest.mark.parametrize(
    "value",
    ["200", 200, True, 2.0, 0.25, b"id", ["a", 1], {"k": "v", "n": [1, 2.0]}, [], {}],
)
def test_stringify_any_value_agrees_with_the_decoded_form(value: Any) -> None:
    proto = any_value(value)
    assert stringify_any_value(proto) == stringify_python(any_value_to_python(proto))


def test_empty_any_value() -> None:
    assert any_value_to_python(AnyValue()) is None
    assert stringify_any_value(AnyValue()) == ""


def test_strings_and_numbers_share_a_key_form() -> None:
    assert stringify_any_value(any_value(200)) == stringify_any_value(any_value("200"))
    assert stringify_any_value(any_value(True)) == stringify_any_value(any_value("true"))
    assert stringify_any_value(any_value(2.0)) == stringify_any_value(any_value("2"))
    assert stringify_any_value(any_value(["a", 1])) == stringify_any_value(any_value('["a",1]'))


def test_any_value_to_python_keeps_types() -> None:
    value = any_value({"s": "x", "i": 3, "d": 3.0, "b": False, "y": b"\x01", "a": [1, "1"]})
    decoded = any_value_to_python(value)
    assert decoded == {"s": "x", "i": 3, "d": 3.0, "b": False, "y": b"\x01", "a": [1, "1"]}
    assert type(decoded["i"]) is int
    assert type(decoded["d"]) is float
    assert type(decoded["b"]) is bool


attribute_values = st.recursive(
    st.one_of(
        st.text(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.binary(max_size=8),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@given(attribute_values)
def test_python_to_any_value_round_trips(value: Any) -> None:
    out = AnyValue()
    python_to_any_value(value, out)
    assert out == any_value(value)
    assert any_value_to_python(out) == value
    assert python_value(out) == value


def test_fill_key_values_preserves_order_and_types() -> None:
    out = AnyValue()
    out.kvlist_value.SetInParent()
    fill_key_values(out.kvlist_value.values, [("z", 1), ("a", "1"), ("m", 1.0)])
    assert [kv.key for kv in out.kvlist_value.values] == ["z", "a", "m"]
    assert [kv.value.WhichOneof("value") for kv in out.kvlist_value.values] == [
        "int_value",
        "string_value",
        "double_value",
    ]
