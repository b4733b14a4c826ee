"""Series records <-> msgpack, in the layout the Lua scripts read and write.

A record is a flat msgpack array, so Lua (``cmsgpack``) can merge numbers without touching
anything else::

    [meta, start_us, last_us, count, sum, buckets, exp, exemplars]

``meta`` is an opaque blob (itself msgpack: metric, resource id, attributes) that Lua only
copies. Times are microseconds because Lua numbers are doubles: nanoseconds since 1970 do not
fit in 53 bits, microseconds do until the year 2255. "No buckets" and "no exponential
histogram" are empty arrays, because a nil inside a Lua array would end it. Exemplars are
``[trace_id, span_id, value, time_us]``.

Lua re-packs strings as msgpack ``str`` even when they hold binary (the meta blob, trace IDs),
so records are decoded with ``raw=True`` and only the meta blob, which Python wrote, is decoded
as text.
"""

from __future__ import annotations

from typing import Any, cast

import msgpack

from worker.series import Attributes, Series
from worker.spanmetrics.exphistogram import ExpHistogram

__all__ = [
    "decode_attributes",
    "decode_record",
    "delta_payload",
    "encode_attributes",
    "encode_meta",
    "exp_state",
]

_packer = msgpack.Packer(use_bin_type=True)


def encode_attributes(attributes: Attributes) -> bytes:
    return cast(bytes, _packer.pack([[key, value] for key, value in attributes]))


def decode_attributes(blob: bytes) -> Attributes:
    pairs = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    return tuple((key, value) for key, value in pairs)


def encode_meta(series: Series) -> bytes:
    """The constant part of a series: written once, copied verbatim by Lua."""
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
    """The exponential histogram as Lua merges it; no nils, since Lua turns such arrays into maps."""
    if exp is None:
        return []
    state = exp.to_state()
    if state[6] is None or state[7] is None:
        state[6] = state[7] = 0.0
    return state


def decode_record(blob: bytes, series_id: str = "", max_size: int = 160) -> Series:
    """A stored record back into a :class:`Series` (times back to nanoseconds)."""
    meta, start_us, last_us, count, total, buckets, exp, exemplars = msgpack.unpackb(
        blob, raw=True, strict_map_key=False
    )
    metric, resource_id, attributes = msgpack.unpackb(meta, raw=False, strict_map_key=False)
    return Series(
        series_id=series_id,
        metric=metric,
        resource_id=resource_id,
        attributes=cast(Attributes, tuple(map(tuple, attributes))),
        start_ns=int(start_us) * 1000,
        last_ns=int(last_us) * 1000,
        count=int(count),
        sum=float(total),
        buckets=[int(b) for b in buckets] if buckets else None,
        exp=ExpHistogram.from_state(_padded(exp), max_size) if exp else None,
        exemplars=[(bytes(t), bytes(s), float(v), int(ts) * 1000) for t, s, v, ts in exemplars],
    )


def _padded(state: list[Any]) -> list[Any]:
    """Lua drops trailing nils (min/max of an empty histogram); put them back."""
    return list(state) + [None] * (8 - len(state))
