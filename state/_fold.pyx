# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``state.fold._walk_held``: the walk over a slot's held records that runs for
every series of every owned slot at every flush. A quiet series without rows (kept by the slot
owner, see ``state.fold.Kept``) is emitted from its kept tuple here, its ``Series`` written slot
by slot; anything else (a record to decode, a kept value of an unexpected shape) goes to the
Python callbacks, so what this does not recognise is handled exactly as the pure fold does."""

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

from worker.model.series import Series
from worker.model.series_slots cimport slot_offset


cdef object _SERIES = Series
#: Series fields in constructor order, as revive fills them.
cdef tuple _FIELDS = (
    "series_id", "metric", "resource_id", "attributes", "start_ns", "last_ns", "count", "sum",
    "buckets", "exp", "exemplars", "attribute_parts", "companion", "zero_ns",
)
cdef Py_ssize_t _offsets[14]
cdef bint _at_slots = True


for _i, _name in enumerate(_FIELDS):
    _offsets[_i] = slot_offset(_SERIES, _name)
    if _offsets[_i] < 0:
        _at_slots = False
# Series must take exactly these fields, in this order, with no __post_init__ (else: Python).
if tuple(getattr(_SERIES, "__match_args__", ())) != _FIELDS or hasattr(_SERIES, "__post_init__"):
    _at_slots = False


def fields_at_slots() -> bool:
    """Whether revived series are written slot by slot (else built by calling ``revive``)."""
    return _at_slots


cdef inline void _put(object item, int index, object value):
    cdef PyObject** slot = <PyObject**>((<char*><PyObject*>item) + _offsets[index])
    Py_INCREF(value)
    Py_XDECREF(slot[0])
    slot[0] = <PyObject*>value


cdef object _revive(tuple kept, object revive):
    """``state.fold.revive(kept)``: the Series a kept quiet series stands for."""
    if not _at_slots or len(kept) != 11:
        return revive(kept)
    last_us, metric, resource_id, attributes, start_ns, count, total, buckets, exp, parts, companion = kept
    if type(last_us) is not int or (buckets is not None and type(buckets) is not tuple) or (
        parts is not None and type(parts) is not tuple
    ):
        return revive(kept)
    item = _SERIES.__new__(_SERIES)
    _put(item, 0, "")
    _put(item, 1, metric)
    _put(item, 2, resource_id)
    _put(item, 3, attributes)
    _put(item, 4, start_ns)
    _put(item, 5, last_us * 1000)
    _put(item, 6, count)
    _put(item, 7, total)
    _put(item, 8, None if buckets is None else list(<tuple>buckets))
    _put(item, 9, exp)
    _put(item, 10, [])
    _put(item, 11, None if parts is None else list(<tuple>parts))
    _put(item, 12, companion)
    _put(item, 13, 0)
    return item


cdef Py_ssize_t YIELD_EVERY = 1024


cdef inline void _let_others_run() noexcept:
    """Release the GIL and take it back: a thread waiting for it (the event loop's) runs first."""
    with nogil:
        pass


def walk_held(
    object stored,
    dict deltas,
    object known,
    object expire_before_us,
    object resource_expire_before_us,
    object resource_seen,
    object plan,
    object other,
) -> None:
    """``state.fold._walk_held``, the same arguments and the same effects on ``deltas`` and
    ``plan``, in the same order."""
    cdef list live = plan.live
    cdef list live_digests = plan.live_digests
    cdef list plain = plan.plain
    cdef list expired = plan.expired
    cdef dict found_quiet = plan.quiet
    cdef Py_ssize_t left = 0
    cdef Py_ssize_t done = 0
    cdef bint expiring = bool(expire_before_us)
    cdef bint resources_expiring = bool(resource_expire_before_us)
    cdef bint any_known = bool(known)
    cdef object kept
    cdef object revive
    from state.fold import revive
    known_get = known.get if any_known else None
    seen_get = resource_seen.get
    try:
        for digest, blob in stored.items():
            # The fold runs in a thread beside the event loop: hand the GIL over now and then
            # (the pure walk's interpreter does so every switch interval).
            done += 1
            if done % YIELD_EVERY == 0:
                _let_others_run()
            if type(digest) is not bytes:
                digest = bytes(digest)
            pending = deltas.pop(digest, None)
            if pending is None and any_known:
                kept = known_get(digest)
                if kept is not None:
                    last_us = kept[0]
                    if expiring and last_us < expire_before_us:
                        expired.append(digest)
                        left += 1
                        continue
                    if resources_expiring and max(seen_get(kept[2], 0), last_us) < resource_expire_before_us:
                        series = _revive(kept, revive) if type(kept) is tuple else revive(kept)
                        if series.companion is None:
                            plain.append(len(live))
                        live.append(series)
                        live_digests.append(digest)
                        expired.append(digest)
                        left += 1
                        continue
                    series = _revive(kept, revive) if type(kept) is tuple else revive(kept)
                    if series.companion is None:
                        plain.append(len(live))
                    live.append(series)
                    live_digests.append(digest)
                    found_quiet[digest] = kept
                    continue
            other(digest, blob, pending)
    finally:
        plan.held_change -= left  # _weight: one per expired quiet series
