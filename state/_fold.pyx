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


# ------------------------------------------------------------------------ a quiet record's series

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy


cdef struct _Cursor:
    const unsigned char* at
    const unsigned char* end


cdef inline uint64_t _big_endian(const unsigned char* at, int size) noexcept:
    cdef uint64_t value = 0
    cdef int i
    for i in range(size):
        value = (value << 8) | at[i]
    return value


cdef inline bint _take(_Cursor* cursor, Py_ssize_t size) noexcept:
    """Whether ``size`` more bytes are there (every read checks before it reads)."""
    return cursor.end - cursor.at >= size


cdef bint _array(_Cursor* cursor, Py_ssize_t* length) noexcept:
    """A msgpack array header; False for anything else (or too few bytes)."""
    cdef unsigned char code
    if not _take(cursor, 1):
        return False
    code = cursor.at[0]
    if 0x90 <= code <= 0x9F:
        length[0] = code & 0x0F
        cursor.at += 1
    elif code == 0xDC and _take(cursor, 3):
        length[0] = <Py_ssize_t>_big_endian(cursor.at + 1, 2)
        cursor.at += 3
    elif code == 0xDD and _take(cursor, 5):
        length[0] = <Py_ssize_t>_big_endian(cursor.at + 1, 4)
        cursor.at += 5
    else:
        return False
    return True


cdef object _int(_Cursor* cursor):
    """A msgpack integer as the Python int msgpack gives; None for anything else."""
    cdef unsigned char code
    cdef uint64_t raw
    cdef int size
    cdef bint signed
    if not _take(cursor, 1):
        return None
    code = cursor.at[0]
    if code <= 0x7F:
        cursor.at += 1
        return PyLong_FromLongLong(code)
    if code >= 0xE0:
        cursor.at += 1
        return PyLong_FromLongLong(<int64_t>code - 256)
    if 0xCC <= code <= 0xD3:  # uint8 ... uint64, then int8 ... int64
        signed = code >= 0xD0
        size = 1 << (code - (0xD0 if signed else 0xCC))
        if not _take(cursor, 1 + size):
            return None
        raw = _big_endian(cursor.at + 1, size)
        cursor.at += 1 + size
        if not signed:
            return PyLong_FromUnsignedLongLong(raw)
        if size < 8 and raw >> (8 * size - 1):
            return PyLong_FromLongLong(<int64_t>raw - (<int64_t>1 << (8 * size)))
        return PyLong_FromLongLong(<int64_t>raw)
    return None


cdef object _float(_Cursor* cursor):
    """A msgpack float32 or float64 as a Python float; None for anything else."""
    cdef unsigned char code
    cdef uint64_t bits
    cdef unsigned int narrow
    cdef double wide
    cdef float single
    if not _take(cursor, 1):
        return None
    code = cursor.at[0]
    if code == 0xCB and _take(cursor, 9):
        bits = _big_endian(cursor.at + 1, 8)
        memcpy(&wide, &bits, 8)
        cursor.at += 9
        return wide
    if code == 0xCA and _take(cursor, 5):
        narrow = <unsigned int>_big_endian(cursor.at + 1, 4)
        memcpy(&single, &narrow, 4)
        cursor.at += 5
        return <double>single
    return None


cdef int _raw(_Cursor* cursor, const unsigned char** data, Py_ssize_t* size) noexcept:
    """A msgpack str or bin: 1 for str, 2 for bin (``data``/``size`` set), 0 for anything else."""
    cdef unsigned char code
    cdef int kind = 1
    cdef int width
    if not _take(cursor, 1):
        return 0
    code = cursor.at[0]
    if 0xA0 <= code <= 0xBF:
        size[0] = code & 0x1F
        cursor.at += 1
    else:
        if code == 0xD9 or code == 0xC4:
            width = 1
        elif code == 0xDA or code == 0xC5:
            width = 2
        elif code == 0xDB or code == 0xC6:
            width = 4
        else:
            return 0
        if code == 0xC4 or code == 0xC5 or code == 0xC6:
            kind = 2
        if not _take(cursor, 1 + width):
            return 0
        size[0] = <Py_ssize_t>_big_endian(cursor.at + 1, width)
        cursor.at += 1 + width
    if not _take(cursor, size[0]):
        return 0
    data[0] = cursor.at
    cursor.at += size[0]
    return kind


cdef object _text(const unsigned char* data, Py_ssize_t size):
    """UTF-8 as msgpack's ``raw=False`` decodes a str (strict); None when it would raise."""
    try:
        return PyUnicode_DecodeUTF8(<const char*>data, size, NULL)
    except UnicodeDecodeError:
        return None


#: Names met in metas (metric, resource id) and records (companion): (raw bytes, value) pairs,
#: compared byte for byte, so that a fold reading a slot's records decodes each name once.
cdef list _names = []
cdef Py_ssize_t _NAMES_LIMIT = 256


cdef object _known_name(const unsigned char* data, Py_ssize_t size, bint text, object decode):
    """The str (``text``: UTF-8 as msgpack's ``raw=False`` decodes it, strict) or, else,
    ``decode(raw)`` of these bytes, from the names met before when it is one; None when the
    UTF-8 is invalid (Python then raises)."""
    cdef bytes raw
    for known in _names:
        raw = <bytes>(<tuple>known)[0]
        if (
            PyBytes_GET_SIZE(raw) == size
            and (<tuple>known)[2] == text
            and memcmp(PyBytes_AS_STRING(raw), data, size) == 0
        ):
            return (<tuple>known)[1]
    raw = PyBytes_FromStringAndSize(<const char*>data, size)
    if text:
        try:
            value = PyUnicode_DecodeUTF8(<const char*>data, size, NULL)
        except UnicodeDecodeError:
            return None
    else:
        value = decode(raw)
    if len(_names) >= _NAMES_LIMIT:
        del _names[:]
    _names.append((raw, value, text))
    return value


cdef object _meta(const unsigned char* data, Py_ssize_t length, object parts):
    """(metric, resource id, attribute parts) of a packed meta, as ``state.codec.meta_fields``
    gives them for a meta of parts (inline, or ids into ``parts``); None for anything else
    (typed pairs of an earlier version, an unknown id, unusual types): Python decides."""
    cdef _Cursor cursor
    cdef Py_ssize_t fields = 0, count = 0, i, size = 0
    cdef const unsigned char* text = NULL
    cdef int kind
    cdef list items
    cursor.at = data
    cursor.end = data + length
    if not _array(&cursor, &fields) or not (fields == 3 or fields == 4):
        return None
    if _raw(&cursor, &text, &size) != 1:
        return None
    metric = _known_name(text, size, True, None)
    if _raw(&cursor, &text, &size) != 1:
        return None
    resource_id = _known_name(text, size, True, None)
    if metric is None or resource_id is None or not _array(&cursor, &count):
        return None
    if count > cursor.end - cursor.at:  # each item takes at least a byte
        return None
    items = PyList_New(count)  # (items NULL until set: freed safely if we give up)
    for i in range(count):
        kind = _raw(&cursor, &text, &size)
        if kind == 2:
            part = PyBytes_FromStringAndSize(<const char*>text, size)
            Py_INCREF(part)
            PyList_SET_ITEM(items, i, part)
            continue
        if kind != 0 or fields == 3:
            return None  # a str part, or an id in a meta that has none
        ident = _int(&cursor)
        if ident is None or parts is None:
            return None
        part = parts.get(ident)
        if type(part) is not bytes:
            return None
        Py_INCREF(part)
        PyList_SET_ITEM(items, i, part)
    if fields == 4 and _int(&cursor) is None:
        return None
    if cursor.at != cursor.end:
        return None
    return metric, resource_id, items


cdef inline object _microseconds_to_ns(object value):
    """``value * 1000`` (in C when it stays within int64, as every real time does)."""
    cdef int64_t small
    if type(value) is int and -9_000_000_000_000_000 < value < 9_000_000_000_000_000:
        small = value
        return PyLong_FromLongLong(small * 1000)
    return value * 1000


def quiet_series(bytes blob, object parts, object companion_name):
    """The series ``state.fold._series`` builds from a stored record that is quiet (no zero
    point owed, no exemplars, a last-seen time stored as an int), read straight from its
    msgpack bytes; None for any other record or anything unusual in it (a float where the
    layout has ints, an exponential histogram, typed attributes, a meta id ``parts`` lacks,
    trailing bytes, a malformed or truncated record): the caller then decodes it in Python,
    which emits it or raises as it does for every record. ``companion_name``: the fold's
    reading of a stored companion name (raw bytes -> name)."""
    cdef _Cursor cursor
    cdef Py_ssize_t fields = 0, count = 0, i, size = 0
    cdef const unsigned char* data = NULL
    cdef list buckets = None
    cursor.at = <const unsigned char*>PyBytes_AS_STRING(blob)
    cursor.end = cursor.at + PyBytes_GET_SIZE(blob)
    if not _at_slots or not _array(&cursor, &fields) or not 8 <= fields <= 10:
        return None
    if _raw(&cursor, &data, &size) == 0:
        return None
    meta = _meta(data, size, parts)
    if meta is None:
        return None
    start = _int(&cursor)
    last = _int(&cursor)
    if start is None or last is None:
        return None
    count_value = _int(&cursor)
    total = _float(&cursor)
    if count_value is None or total is None or not _array(&cursor, &count):
        return None
    if count:
        if count > cursor.end - cursor.at:
            return None
        buckets = PyList_New(count)  # (items NULL until set: freed safely if we give up)
        for i in range(count):
            bucket = _int(&cursor)
            if bucket is None:
                return None
            Py_INCREF(bucket)
            PyList_SET_ITEM(buckets, i, bucket)
    # No exponential histogram, no exemplars: both empty arrays.
    if not _take(&cursor, 2) or cursor.at[0] != 0x90 or cursor.at[1] != 0x90:
        return None
    cursor.at += 2
    companion = None
    if fields >= 9:
        if _raw(&cursor, &data, &size) == 0:
            return None
        companion = _known_name(data, size, False, companion_name) if size else None
    if fields == 10:
        zero = _int(&cursor)
        if zero is None or zero != 0:
            return None  # a zero point owed: not quiet
    if cursor.at != cursor.end:
        return None
    metric, resource_id, items = meta
    item = _SERIES.__new__(_SERIES)
    _put(item, 0, "")
    _put(item, 1, metric)
    _put(item, 2, resource_id)
    _put(item, 3, ())
    _put(item, 4, _microseconds_to_ns(start))
    _put(item, 5, _microseconds_to_ns(last))
    _put(item, 6, count_value)
    _put(item, 7, total)
    _put(item, 8, buckets)
    _put(item, 9, None)
    _put(item, 10, [])
    _put(item, 11, items)
    _put(item, 12, companion)
    _put(item, 13, 0)
    return item
