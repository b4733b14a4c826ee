"""Series records <-> msgpack, in the layout stored in Redis.

A record is a flat msgpack array::

    [meta, start_us, last_us, count, sum, buckets, exp, exemplars, companion]

``companion`` is the name of the counter a ``duration`` record also stands for (see
``Series.companion``), "" for none; records written by earlier versions end before it.
``meta`` is an opaque blob (itself msgpack: metric, resource id, the attributes in their OTLP
encoding), written when the series is created and never changed. Times are microseconds, and
"no buckets" / "no exponential histogram" are empty arrays: the layout Redis Lua scripts merged in earlier
versions (Lua numbers are doubles, and a nil inside a Lua array ends it), kept so that state
written by them reads the same. Exemplars are ``[trace_id, span_id, value, time_us]``.

Those scripts re-packed strings as msgpack ``str`` even when they held binary (the meta blob,
trace IDs), so records are decoded with ``raw=True`` and only the meta blob is decoded as text.
"""

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
    """``[metric, resource_id, parts]``: the attributes are kept as their OTLP encoding (see
    ``Series.attribute_parts``), so the flush after flush emission of a series copies them
    rather than decoding and encoding them again: that was half the cost of an emission."""
    return cast(bytes, _packer.pack([metric, resource_id, attribute_parts(attributes)]))


def unpack_meta(meta: bytes) -> tuple[str, str, Attributes, list[bytes] | None]:
    """(metric, resource id, attributes, attribute parts) of a packed meta.

    Metas written by earlier versions hold ``[key, value]`` pairs instead of parts: those come
    back as typed attributes with parts None. New ones come back with parts and no attributes
    (:func:`attributes_of_parts` recovers them when needed, e.g. to inspect state).
    """
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
