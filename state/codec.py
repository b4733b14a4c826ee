"""Series records <-> msgpack, in the layout stored in Redis (and the memory store):
``[meta, start_us, last_us, count, sum, buckets, exp, exemplars, companion]``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import msgpack
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from worker.model.exphistogram import ExpHistogram
from worker.model.series import Attributes, Series
from worker.model.values import any_value_to_python, attribute_parts
from worker.model.wire import read_varint

__all__ = [
    "PartInterner",
    "attributes_of_parts",
    "decode_attributes",
    "delta_payload",
    "encode_attributes",
    "encode_meta",
    "exp_from_state",
    "exp_state",
    "meta_fields",
    "pack_meta",
    "parts_of",
    "resolve_parts",
    "unpack_meta",
]

_packer = msgpack.Packer(use_bin_type=True)
#: The fourth field of a meta whose attribute parts include ids into its slot's dictionary
#: (versions before it unpack three fields, and refuse such a meta rather than misread it).
_INTERNED = 1


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


def unpack_meta(
    meta: bytes, parts: Mapping[int, bytes] | None = None
) -> tuple[str, str, Attributes, list[bytes] | None]:
    """(metric, resource id, attributes, attribute parts) of a packed meta: parts and no
    attributes, or (metas of earlier versions) typed attributes and parts None. ``parts``: the
    slot's dictionary, for a meta whose parts are interned (see :class:`PartInterner`)."""
    return meta_fields(msgpack.unpackb(meta, raw=False, strict_map_key=False), parts)


def meta_fields(
    unpacked: list[Any], parts: Mapping[int, bytes] | None = None
) -> tuple[str, str, Attributes, list[bytes] | None]:
    """:func:`unpack_meta` of a meta already unpacked (``raw=False``): the fold reads its
    metas through one reused unpacker."""
    if len(unpacked) > 3:  # [metric, resource_id, items, _INTERNED]: ids among the items
        metric, resource_id, items, _ = unpacked
        return metric, resource_id, (), resolve_parts(items, parts)
    metric, resource_id, items = unpacked
    if items and type(items[0]) is list:  # typed [key, value] pairs: a meta of an earlier version
        return metric, resource_id, tuple((key, value) for key, value in items), None
    return metric, resource_id, (), items


def resolve_parts(items: Iterable[bytes | int], parts: Mapping[int, bytes] | None) -> list[bytes]:
    """A meta's attribute parts with the interned ones (ids into the slot's dictionary) looked up."""
    try:
        return [item if type(item) is bytes else parts[item] for item in items]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ValueError("a record refers to an attribute part its slot's dictionary does not hold") from None


def parts_of(raw: Mapping[bytes | str, bytes]) -> dict[int, bytes]:
    """A slot's dictionary of attribute parts as read from its Redis hash (id as a decimal)."""
    return {int(ident): part for ident, part in raw.items()}


class PartInterner:
    """Writes the metas of a fold's new records with the attribute parts their slot shares as
    ids into the slot's dictionary of parts (stored beside its records): those it holds, and
    those ``shared`` names, under new ids (:attr:`added`, committed with the records). Other
    parts stay inline: a part of one series only (a user id) costs less there."""

    def __init__(self, parts: Mapping[int, bytes], shared: Sequence[bytes]) -> None:
        """``shared``: the new parts to intern, most used first (they get the shortest ids)."""
        self._ids: dict[Any, int] = {part: ident for ident, part in parts.items()}
        #: id -> part: the entries this fold adds to the dictionary.
        self.added: dict[int, bytes] = {}
        ident = max(parts, default=-1) + 1
        for part in shared:
            if part in self._ids:
                continue
            self._ids[part] = ident
            self.added[ident] = part
            ident += 1

    def meta(self, unpacked: list[Any]) -> bytes | None:
        """A new record's meta (unpacked, parts inline), packed with the shared parts interned;
        None when it has none to intern (its meta stays as it is)."""
        metric, resource_id, items = unpacked
        get = self._ids.get
        try:
            interned = [get(item, item) for item in items]
        except TypeError:  # typed [key, value] pairs of an earlier version: left as they are
            return None
        if interned == items:
            return None
        return cast(bytes, _packer.pack([metric, resource_id, interned, _INTERNED]))


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
