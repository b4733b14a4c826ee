"""Series records <-> msgpack, in the layout stored in Redis.

A record is a flat msgpack array::

    [meta, start_us, last_us, count, sum, buckets, exp, exemplars]

``meta`` is an opaque blob (itself msgpack: metric, resource id, attributes), written when the
series is created and never changed. Times are microseconds, and "no buckets" / "no
exponential histogram" are empty arrays: the layout Redis Lua scripts merged in earlier
versions (Lua numbers are doubles, and a nil inside a Lua array ends it), kept so that state
written by them reads the same. Exemplars are ``[trace_id, span_id, value, time_us]``.

Those scripts re-packed strings as msgpack ``str`` even when they held binary (the meta blob,
trace IDs), so records are decoded with ``raw=True`` and only the meta blob is decoded as text.
"""

from __future__ import annotations

from typing import Any, cast

import msgpack

from worker.series import Attributes, Series
from worker.spanmetrics.exphistogram import ExpHistogram

__all__ = [
    "decode_attributes",
    "delta_payload",
    "encode_attributes",
    "encode_meta",
    "exp_from_state",
    "exp_state",
]

_packer = msgpack.Packer(use_bin_type=True)


def encode_attributes(attributes: Attributes) -> bytes:
    return cast(bytes, _packer.pack([[key, value] for key, value in attributes]))


def decode_attributes(blob: bytes) -> Attributes:
    pairs = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    return tuple((key, value) for key, value in pairs)


def encode_meta(series: Series) -> bytes:
    """The constant part of a series: written once, copied verbatim from then on."""
    return cast(
        bytes, _packer.pack([series.metric, series.resource_id, [[k, v] for k, v in series.attributes]])
    )


def _exemplars(series: Series) -> list[list[Any]]:
    return [
        [trace_id, span_id, value, time_ns // 1000] for trace_id, span_id, value, time_ns in series.exemplars
    ]


def delta_payload(series: Series, meta: bytes) -> list[Any]:
    """The values a merge adds: ``[meta, first_us, last_us, count, sum, buckets, exp, exemplars]``."""
    return [
        meta,
        series.start_ns // 1000,
        series.last_ns // 1000,
        series.count,
        float(series.sum),
        series.buckets if series.buckets is not None else [],
        exp_state(series.exp),
        _exemplars(series),
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
