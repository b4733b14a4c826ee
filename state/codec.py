"""Series records <-> msgpack, in the layout stored in Redis (and the memory store):
``[meta, start_us, last_us, count, sum, buckets, exp, exemplars, companion]``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import msgpack
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from worker.model.exphistogram import ExpHistogram
from worker.model.series import Attributes, Series
from worker.model.values import any_value_to_python, attribute_parts
from worker.model.wire import read_varint

__all__ = [
    "attributes_of_parts",
    "decode_attributes",
    "delta_payload",
    "encode_attributes",
    "encode_meta",
    "exp_from_state",
    "exp_state",
    "meta_fields",
    "pack_meta",
    "unpack_meta",
]

_packer = msgpack.Packer(use_bin_type=True)


def encode_attributes(attributes: Attributes) -> bytes:
    return cast(bytes, _packer.pack([[key, value] for key, value in attributes]))


def decode_attributes(blob: bytes) -> Attributes:
    pairs = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    return tuple((key, value) for key, value in pairs)


def encode_meta(series: Series) -> bytes:
    """The constant part of a series: written once, copied verbatim from then on."""
    return pack_meta(series.metric, series.resource_id, series.attributes)


def pack_meta(metric: str, resource_id: str, attributes: Attributes) -> bytes:
    """``[metric, resource_id, parts]``: the attributes in their OTLP encoding, which emission
    copies as they are."""
    return cast(bytes, _packer.pack([metric, resource_id, attribute_parts(attributes)]))


def unpack_meta(meta: bytes) -> tuple[str, str, Attributes, list[bytes] | None]:
    """(metric, resource id, attributes, attribute parts) of a packed meta: parts and no
    attributes, or (metas of earlier versions) typed attributes and parts None."""
    return meta_fields(msgpack.unpackb(meta, raw=False, strict_map_key=False))


def meta_fields(unpacked: list[Any]) -> tuple[str, str, Attributes, list[bytes] | None]:
    """:func:`unpack_meta` of a meta already unpacked (``raw=False``): the fold reads its
    metas through one reused unpacker."""
    metric, resource_id, items = unpacked
    if items and type(items[0]) is not bytes:
        return metric, resource_id, tuple((key, value) for key, value in items), None
    return metric, resource_id, (), items


def attributes_of_parts(parts: Iterable[bytes]) -> Attributes:
    """Typed attributes back from their OTLP encoding (the slow path: inspection, tests)."""
    attributes = []
    for part in parts:
        length, position = read_varint(part)
        kv = KeyValue.FromString(part[position : position + length])
        attributes.append((kv.key, any_value_to_python(kv.value)))
    return tuple(attributes)


def delta_payload(series: Series, meta: bytes) -> list[Any]:
    """The values a merge adds: ``[meta, first_us, last_us, count, sum, buckets, exp, exemplars,
    companion]``. Built for every series at every flush, so empty parts are tested inline."""
    buckets, exp, exemplars = series.buckets, series.exp, series.exemplars
    return [
        meta,
        series.start_ns // 1000,
        series.last_ns // 1000,
        series.count,
        float(series.sum),
        buckets if buckets is not None else [],
        exp_state(exp) if exp is not None else [],
        [[trace_id, span_id, value, time_ns // 1000] for trace_id, span_id, value, time_ns in exemplars]
        if exemplars
        else [],
        series.companion or "",
    ]


def exp_state(exp: ExpHistogram | None) -> list[Any]:
    """The exponential histogram as stored; no nils (the layout older Lua scripts could merge)."""
    if exp is None:
        return []
    state = exp.to_state()
    if state[6] is None or state[7] is None:
        state[6] = state[7] = 0.0
    return state


def exp_from_state(state: list[Any], max_size: int) -> ExpHistogram:
    """A stored exponential histogram back; older Lua scripts dropped trailing nils (min/max)."""
    return ExpHistogram.from_state(list(state) + [None] * (8 - len(state)), max_size)
