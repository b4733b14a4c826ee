# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled ingest: bounds-checked scanners of serialized OTLP traces, for span metrics (with
the fold) and for the service graphs' edge spans."""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy


# The scanner returns None ("not handled") for anything it does not read exactly as the pure path:
# the caller then decodes the same bytes with protobuf, which decides on the dead-letter topic.

cdef int NOT_HANDLED = -1
#: The key strings of small integer values (HTTP status codes, ports, counts), made once.
cdef list _SMALL_INTS = [str(number) for number in range(1024)]


cdef inline int _varint(const unsigned char* buf, Py_ssize_t end, Py_ssize_t* pos, uint64_t* out) noexcept nogil:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if pos[0] >= end or shift > 63:
            return NOT_HANDLED
        byte = buf[pos[0]]
        pos[0] += 1
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            out[0] = result
            return 0
        shift += 7


cdef inline int _length(
    const unsigned char* buf, Py_ssize_t end, Py_ssize_t* pos, Py_ssize_t* stop
) noexcept nogil:
    """A length-delimited field's body: [pos, stop), within [.., end)."""
    cdef uint64_t size
    if _varint(buf, end, pos, &size) < 0:
        return NOT_HANDLED
    if size > <uint64_t>(end - pos[0]):
        return NOT_HANDLED
    stop[0] = pos[0] + <Py_ssize_t>size
    return 0


cdef inline int _skip(
    const unsigned char* buf, Py_ssize_t end, Py_ssize_t* pos, int wire
) noexcept nogil:
    cdef uint64_t ignored
    cdef Py_ssize_t stop
    if wire == 0:
        return _varint(buf, end, pos, &ignored)
    if wire == 1:
        if end - pos[0] < 8:
            return NOT_HANDLED
        pos[0] += 8
        return 0
    if wire == 2:
        if _length(buf, end, pos, &stop) < 0:
            return NOT_HANDLED
        pos[0] = stop
        return 0
    if wire == 5:
        if end - pos[0] < 4:
            return NOT_HANDLED
        pos[0] += 4
        return 0
    return NOT_HANDLED  # groups (3, 4) and the reserved wire types


cdef inline int _tag(
    const unsigned char* buf, Py_ssize_t end, Py_ssize_t* pos, uint64_t* number, int* wire
) noexcept nogil:
    cdef uint64_t tag
    if _varint(buf, end, pos, &tag) < 0:
        return NOT_HANDLED
    number[0] = tag >> 3
    wire[0] = <int>(tag & 7)
    if number[0] == 0:
        return NOT_HANDLED
    return 0


cdef inline uint64_t _fixed64(const unsigned char* p) noexcept nogil:
    cdef uint64_t value = 0
    cdef int i
    for i in range(7, -1, -1):
        value = (value << 8) | p[i]
    return value


cdef inline bint _valid_id(const unsigned char* buf, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    if stop - start != size:
        return False
    for i in range(start, stop):
        if buf[i]:
            return True
    return False


cdef object _text(const unsigned char* buf, Py_ssize_t start, Py_ssize_t stop):
    """UTF-8 text, or None when it is not valid UTF-8 (protobuf refuses such a record)."""
    try:
        return PyUnicode_DecodeUTF8(<const char*>buf + start, stop - start, NULL)
    except UnicodeDecodeError:
        return None


cdef int _value_kind(
    const unsigned char* buf,
    Py_ssize_t start,
    Py_ssize_t stop,
    Py_ssize_t* body_start,
    Py_ssize_t* body_stop,
    uint64_t* value,
) noexcept:
    """What an attribute value's key string is made of, read without building it: 0 (empty),
    1 (a string: its body's range), 3 (an integer: its value), 9 (another type: the pure
    function), NOT_HANDLED (left to protobuf)."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t end_of_body
    cdef uint64_t number
    cdef int wire
    cdef int fields = 0
    cdef int kind = 0
    while pos < stop:
        if _tag(buf, stop, &pos, &number, &wire) < 0:
            return NOT_HANDLED
        fields += 1
        if number == 1 and wire == 2:
            if _length(buf, stop, &pos, &end_of_body) < 0:
                return NOT_HANDLED
            kind = 1
            body_start[0] = pos
            body_stop[0] = end_of_body
            pos = end_of_body
        elif number == 3 and wire == 0:
            if _varint(buf, stop, &pos, value) < 0:
                return NOT_HANDLED
            kind = 3
        elif 2 <= number <= 7:
            if _skip(buf, stop, &pos, wire) < 0:
                return NOT_HANDLED
            kind = 9
        else:
            return NOT_HANDLED  # an unknown field inside a value: not ours to judge
    if fields > 1:
        return NOT_HANDLED  # oneof rules (the last wins, messages merge): left to protobuf
    return kind


cdef object _key_string(const unsigned char* buf, Py_ssize_t start, Py_ssize_t stop, object slow):
    """An attribute value's key string (``string_value or _value_string``), None when not handled."""
    cdef Py_ssize_t body_start, body_stop
    cdef uint64_t value
    cdef int kind = _value_kind(buf, start, stop, &body_start, &body_stop, &value)
    if kind == NOT_HANDLED:
        return None
    if kind == 0:
        return ""
    if kind == 1:
        return _text(buf, body_start, body_stop)
    if kind == 3:
        if value < 1024:
            return _SMALL_INTS[value]
        return str(<int64_t>value)
    # bool, double, bytes, arrays and maps: the pure path's own function on the value.
    return slow(PyBytes_FromStringAndSize(<const char*>buf + start, stop - start))


# ------------------------------------------------------------------------------ the request walk

cdef struct _Range:
    Py_ssize_t start
    Py_ssize_t stop
    #: For a span: the index of its resource.
    Py_ssize_t resource


cdef class _Layout:
    """Where a request's resources and spans lie in its bytes: one bounds-checked walk."""

    cdef _Range* resources
    cdef Py_ssize_t resource_count
    cdef Py_ssize_t resource_capacity
    cdef _Range* spans
    cdef Py_ssize_t span_count
    cdef Py_ssize_t span_capacity

    def __dealloc__(self):
        free(self.resources)
        free(self.spans)

    cdef int add(self, bint span, Py_ssize_t start, Py_ssize_t stop) except -1:
        cdef _Range* grown
        cdef Py_ssize_t capacity
        if span:
            if self.span_count == self.span_capacity:
                capacity = max(64, self.span_capacity * 2)
                grown = <_Range*>realloc(self.spans, capacity * sizeof(_Range))
                if grown == NULL:
                    raise MemoryError()
                self.spans, self.span_capacity = grown, capacity
            self.spans[self.span_count] = _Range(start, stop, self.resource_count - 1)
            self.span_count += 1
        else:
            if self.resource_count == self.resource_capacity:
                capacity = max(8, self.resource_capacity * 2)
                grown = <_Range*>realloc(self.resources, capacity * sizeof(_Range))
                if grown == NULL:
                    raise MemoryError()
                self.resources, self.resource_capacity = grown, capacity
            self.resources[self.resource_count] = _Range(start, stop, -1)
            self.resource_count += 1
        return 0

    cdef bytes resource_bytes(self, const unsigned char* buf, Py_ssize_t index):
        cdef _Range resource = self.resources[index]
        return PyBytes_FromStringAndSize(<const char*>buf + resource.start, resource.stop - resource.start)


cdef _Layout _layout(const unsigned char* buf, Py_ssize_t end):
    """The request's layout; None when not handled (a resource given twice merges: protobuf's)."""
    cdef _Layout layout = _Layout()
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t stop, inner, inner_stop, scope_pos, scope_stop, span_stop
    cdef uint64_t number
    cdef int wire
    cdef bint resource_seen
    while pos < end:
        if _tag(buf, end, &pos, &number, &wire) < 0:
            return None
        if number != 1:
            if _skip(buf, end, &pos, wire) < 0:
                return None
            continue
        if wire != 2 or _length(buf, end, &pos, &stop) < 0:
            return None
        # ResourceSpans: its spans are recorded under it, its resource's range once it is known.
        layout.add(False, 0, 0)
        inner = pos
        resource_seen = False
        while inner < stop:
            if _tag(buf, stop, &inner, &number, &wire) < 0:
                return None
            if number == 1 or number == 2 or number == 3:
                if wire != 2 or _length(buf, stop, &inner, &inner_stop) < 0:
                    return None
                if number == 1:
                    if resource_seen:
                        return None  # two resources merge: left to protobuf
                    resource_seen = True
                    layout.resources[layout.resource_count - 1] = _Range(inner, inner_stop, -1)
                elif number == 2:
                    # ScopeSpans
                    scope_pos = inner
                    scope_stop = inner_stop
                    while scope_pos < scope_stop:
                        if _tag(buf, scope_stop, &scope_pos, &number, &wire) < 0:
                            return None
                        if number == 1 or number == 2 or number == 3:
                            if wire != 2 or _length(buf, scope_stop, &scope_pos, &span_stop) < 0:
                                return None
                            if number == 2:
                                layout.add(True, scope_pos, span_stop)
                            scope_pos = span_stop
                        elif _skip(buf, scope_stop, &scope_pos, wire) < 0:
                            return None
                inner = inner_stop
            elif _skip(buf, stop, &inner, wire) < 0:
                return None
        pos = stop
    return layout


cdef struct _Span:
    Py_ssize_t trace_start, trace_stop, span_start, span_stop, parent_start, parent_stop
    Py_ssize_t state_start, state_stop, name_start, name_stop
    int32_t kind, status
    uint64_t start_ns, end_ns


cdef class _Keys:
    """Attribute names (a tuple of bytes, kept alive here) as C pointers and sizes, so that
    :func:`_read_span` compares them without touching Python objects."""

    cdef tuple names
    cdef const char** data
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t count

    def __cinit__(self, tuple names):
        cdef Py_ssize_t index
        for name in names:
            if not isinstance(name, bytes):
                raise TypeError("attribute names are bytes")
        self.names = names
        self.count = len(names)
        self.data = <const char**>malloc((self.count + 1) * sizeof(const char*))
        self.sizes = <Py_ssize_t*>malloc((self.count + 1) * sizeof(Py_ssize_t))
        if self.data == NULL or self.sizes == NULL:
            raise MemoryError()
        for index in range(self.count):
            self.data[index] = PyBytes_AS_STRING(names[index])
            self.sizes[index] = PyBytes_GET_SIZE(names[index])

    def __dealloc__(self):
        free(self.data)
        free(self.sizes)


cdef int _read_span(
    const unsigned char* buf,
    Py_ssize_t start,
    Py_ssize_t end,
    _Keys keys,
    Py_ssize_t key_count,
    Py_ssize_t* value_starts,
    Py_ssize_t* value_stops,
    _Span* out,
) noexcept:
    """One span's fields (ranges into ``buf``), and for each of the first ``key_count`` of ``keys``
    the range of the last attribute value under that key (-1 when absent: a map, the last entry wins, as in
    protobuf's map parse). NOT_HANDLED for what is not read exactly as protobuf reads it, or for
    ids the pure path refuses."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t stop, inner, inner_stop, key_start, key_stop, value_start, value_stop
    cdef uint64_t number, value
    cdef int wire
    cdef bint status_seen = False
    cdef bint has_key, has_value
    cdef Py_ssize_t index
    out[0] = _Span(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    for index in range(key_count):
        value_starts[index] = -1
        value_stops[index] = -1
    while pos < end:
        if _tag(buf, end, &pos, &number, &wire) < 0:
            return NOT_HANDLED
        if 1 <= number <= 5:
            if wire != 2 or _length(buf, end, &pos, &stop) < 0:
                return NOT_HANDLED
            if number == 1:
                out.trace_start, out.trace_stop = pos, stop
            elif number == 2:
                out.span_start, out.span_stop = pos, stop
            elif number == 3:
                out.state_start, out.state_stop = pos, stop
            elif number == 4:
                out.parent_start, out.parent_stop = pos, stop
            else:
                out.name_start, out.name_stop = pos, stop
            pos = stop
        elif number == 6:
            if wire != 0 or _varint(buf, end, &pos, &value) < 0:
                return NOT_HANDLED
            out.kind = <int32_t>value
        elif number == 7 or number == 8:
            if wire != 1 or end - pos < 8:
                return NOT_HANDLED
            if number == 7:
                out.start_ns = _fixed64(buf + pos)
            else:
                out.end_ns = _fixed64(buf + pos)
            pos += 8
        elif number == 9:
            if wire != 2 or _length(buf, end, &pos, &stop) < 0:
                return NOT_HANDLED
            inner = pos
            has_key = has_value = False
            key_start = key_stop = value_start = value_stop = 0
            while inner < stop:
                if _tag(buf, stop, &inner, &number, &wire) < 0:
                    return NOT_HANDLED
                if number == 1 or number == 2:
                    if wire != 2 or _length(buf, stop, &inner, &inner_stop) < 0:
                        return NOT_HANDLED
                    if number == 1:
                        if has_key:
                            return NOT_HANDLED
                        has_key = True
                        key_start, key_stop = inner, inner_stop
                    else:
                        if has_value:
                            return NOT_HANDLED
                        has_value = True
                        value_start, value_stop = inner, inner_stop
                    inner = inner_stop
                else:
                    return NOT_HANDLED  # protobuf keeps a map entry with unknown fields out of the map
            pos = stop
            for index in range(key_count):
                # Sizes, then first bytes, before memcmp: most attributes are no key's.
                if keys.sizes[index] == key_stop - key_start and (
                    key_stop == key_start or (
                        keys.data[index][0] == <char>buf[key_start]
                        and memcmp(keys.data[index], buf + key_start, key_stop - key_start) == 0
                    )
                ):
                    value_starts[index] = value_start
                    value_stops[index] = value_stop
        elif number == 15:
            if wire != 2 or status_seen or _length(buf, end, &pos, &stop) < 0:
                return NOT_HANDLED
            status_seen = True
            inner = pos
            while inner < stop:
                if _tag(buf, stop, &inner, &number, &wire) < 0:
                    return NOT_HANDLED
                if number == 3:
                    if wire != 0 or _varint(buf, stop, &inner, &value) < 0:
                        return NOT_HANDLED
                    out.status = <int32_t>value
                elif number == 2:
                    if wire != 2 or _length(buf, stop, &inner, &inner_stop) < 0:
                        return NOT_HANDLED
                    inner = inner_stop
                elif _skip(buf, stop, &inner, wire) < 0:
                    return NOT_HANDLED
            pos = stop
        elif number == 11 or number == 13:
            if wire != 2 or _skip(buf, end, &pos, wire) < 0:
                return NOT_HANDLED
        elif number == 10 or number == 12 or number == 14:
            if wire != 0 or _skip(buf, end, &pos, wire) < 0:
                return NOT_HANDLED
        elif number == 16:
            if wire != 5 or _skip(buf, end, &pos, wire) < 0:
                return NOT_HANDLED
        elif _skip(buf, end, &pos, wire) < 0:
            return NOT_HANDLED
    # The pure path refuses the whole record for a span without valid ids (worker.otlp.ids).
    if not _valid_id(buf, out.trace_start, out.trace_stop, 16) or not _valid_id(
        buf, out.span_start, out.span_stop, 8
    ):
        return NOT_HANDLED
    return 0


cdef class _Values:
    """Scratch arrays for :func:`_read_span`'s attribute value ranges, one per key."""

    cdef Py_ssize_t* starts
    cdef Py_ssize_t* stops

    def __cinit__(self, Py_ssize_t count):
        self.starts = <Py_ssize_t*>malloc((count + 1) * sizeof(Py_ssize_t))
        self.stops = <Py_ssize_t*>malloc((count + 1) * sizeof(Py_ssize_t))
        if self.starts == NULL or self.stops == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.starts)
        free(self.stops)


# ------------------------------------------------------------------------------ span metrics

cdef class SpanScan:
    """What :func:`scan` read of a run of records: where its resources and spans lie, each
    span's fields and the ranges of its dimension values. Nothing is built per span here."""

    cdef readonly bytes data
    cdef _Layout layout
    cdef _Span* spans
    cdef Py_ssize_t* starts
    cdef Py_ssize_t* stops
    cdef Py_ssize_t slot_count

    def __dealloc__(self):
        free(self.spans)
        free(self.starts)
        free(self.stops)


def scan(bytes data, tuple slot_names):
    """Serialized ``ExportTraceServiceRequest`` -> a :class:`SpanScan`, or None when not handled.

    ``slot_names``: the dimension names (UTF-8) whose values :func:`fold` reads. Every read is
    bounds-checked; nothing here raises on bad bytes.
    """
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t slot_count = len(slot_names)
    cdef Py_ssize_t index, slot, at, body_start, body_stop
    cdef uint64_t value
    cdef _Range where
    cdef _Keys slots = _Keys(slot_names)
    cdef _Layout layout = _layout(buf, PyBytes_GET_SIZE(data))
    if layout is None:
        return None
    cdef SpanScan result = _new_span_scan(data, layout, slot_count)
    for index in range(layout.span_count):
        where = layout.spans[index]
        at = index * slot_count
        if _read_span(
            buf, where.start, where.stop, slots, slot_count, result.starts + at, result.stops + at,
            result.spans + index,
        ) < 0:
            return None
        for slot in range(slot_count):
            if result.starts[at + slot] >= 0 and _value_kind(
                buf, result.starts[at + slot], result.stops[at + slot], &body_start, &body_stop, &value
            ) < 0:
                return None
    return result


cdef SpanScan _new_span_scan(bytes data, _Layout layout, Py_ssize_t slot_count):
    """An empty :class:`SpanScan` with room for every span of ``layout``."""
    cdef SpanScan result = SpanScan.__new__(SpanScan)
    result.data = data
    result.layout = layout
    result.slot_count = slot_count
    result.spans = <_Span*>malloc((layout.span_count + 1) * sizeof(_Span))
    result.starts = <Py_ssize_t*>malloc((layout.span_count * slot_count + 1) * sizeof(Py_ssize_t))
    result.stops = <Py_ssize_t*>malloc((layout.span_count * slot_count + 1) * sizeof(Py_ssize_t))
    if result.spans == NULL or result.starts == NULL or result.stops == NULL:
        raise MemoryError()
    return result


cdef inline Py_ssize_t _bisect_left(const double* bounds, Py_ssize_t size, double value) noexcept nogil:
    """``bisect.bisect_left`` on a sorted array (durations are never NaN)."""
    cdef Py_ssize_t low = 0, high = size, middle
    while low < high:
        middle = (low + high) >> 1
        if bounds[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low


cdef class _SeriesAcc:
    """One series' additions during a run, applied to it before anything else reads or writes
    it (see :func:`fold`). Counts and buckets commute; the sum goes on from the series' own in
    span order, so it ends as the very double the pure path's ``sum += duration * weight`` gives."""

    cdef object series
    cdef bint histogram
    cdef bint active
    #: The clock of the last run that added to it (the pure path's ``last_ns``).
    cdef object now
    cdef long long count
    cdef double total
    cdef long long* bucket_adds
    cdef Py_ssize_t bucket_count

    def __dealloc__(self):
        free(self.bucket_adds)

    cdef int start(self) except -1:
        cdef Py_ssize_t index
        self.active = True
        self.count = 0
        if self.histogram:
            self.total = self.series.sum
            for index in range(self.bucket_count):
                self.bucket_adds[index] = 0
        return 0

    cdef int finish(self) except -1:
        cdef Py_ssize_t index
        series = self.series
        self.active = False
        series.count += self.count
        if self.histogram:
            series.sum = self.total
            buckets = series.buckets
            for index in range(self.bucket_count):
                if self.bucket_adds[index]:
                    buckets[index] += self.bucket_adds[index]
        series.last_ns = self.now
        self.now = None
        return 0


cdef class _Ref:
    """The series a raw span key counts into (None: not counted there)."""

    cdef _SeriesAcc calls
    cdef _SeriesAcc histogram
    #: Every span of it takes the Python fold (an exponential histogram).
    cdef bint python


cdef class _Cache:
    """Per accumulator (one resource's series in this interval): raw span keys already counted,
    by the resource's bytes, and one :class:`_SeriesAcc` per series."""

    cdef dict refs
    cdef dict accs

    def __cinit__(self):
        self.refs = {}
        self.accs = {}


cdef class _Fold:
    """The processor's configuration as the fold reads it, read once per run."""

    cdef object processor
    cdef bint include_service, include_name, include_kind, include_status, no_exclusions
    cdef bint only_base_slots
    cdef list base_slots, calls_slots, histogram_slots
    cdef bint histogram_enabled, paired
    cdef Py_ssize_t max_exemplars
    cdef object weight_of, new_series, calls_name, duration_name, calls_extra, histogram_extra
    cdef object calls_globs, histogram_globs, max_time, parse_span, slow
    cdef double* bounds
    cdef Py_ssize_t bound_count
    cdef double divisor
    cdef bytes data
    cdef str tenant
    cdef object stats, now
    cdef list active

    def __dealloc__(self):
        free(self.bounds)

    cdef int flush(self) except -1:
        """Apply every series' additions so far (of this run and the runs before)."""
        return _flush_active(self.active)

    cdef _SeriesAcc acc_of(self, _Cache cache, object series, bint histogram):
        if series is None:
            return None
        cdef _SeriesAcc acc = cache.accs.get(id(series))
        if acc is None:
            acc = _SeriesAcc.__new__(_SeriesAcc)
            acc.series = series
            acc.histogram = histogram
            if histogram and series.buckets is not None:
                acc.bucket_count = len(series.buckets)
                acc.bucket_adds = <long long*>malloc((acc.bucket_count + 1) * sizeof(long long))
                if acc.bucket_adds == NULL:
                    raise MemoryError()
            cache.accs[id(series)] = acc
        return acc


cdef inline dict _refs_of(_Cache cache, bytes resource_bytes):
    """The raw span keys counted before under a resource's bytes (made empty the first time)."""
    refs = cache.refs.get(resource_bytes)
    if refs is None:
        refs = cache.refs[resource_bytes] = {}
    return <dict>refs


cdef int _flush_active(list active) except -1:
    cdef _SeriesAcc acc
    if active:
        for acc in active:
            acc.finish()
        del active[:]
    return 0


def flush_folds(list active):
    """Apply the additions the compiled fold keeps in C (``active``: the processor's list of
    them) to their series: before anything else reads or writes the processor's series."""
    _flush_active(active)


def fold(processor, SpanScan scanned, str tenant, object stats, object parse_span, double divisor,
         object slow):
    """Aggregate scanned spans into ``processor``'s accumulators exactly as its ``_observe_spans``.

    Mirrors ``SpanMetricsProcessor.consume`` for the configurations ``native_unsupported`` passes
    (no globs, events, scopes, sampling method). A span whose raw key (its name, kind, status and
    dimension values as bytes) was counted before in this interval adds to that key's series in
    C; the others (and every span while a series still takes exemplars, or an exponential
    histogram) go through the Python fold, after the C additions so far are applied.
    ``divisor``: nanoseconds per histogram unit; ``slow(value bytes)``: the key string of a
    serialized AnyValue the fold does not render itself.
    """
    cdef bytes data = scanned.data
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef _Layout layout = scanned.layout
    cdef Py_ssize_t index, resource_index, slot
    cdef list accumulators = [None] * layout.resource_count
    cdef list resources = [None] * layout.resource_count
    cdef list resource_refs = [None] * layout.resource_count
    cdef list counts = [0] * layout.resource_count
    # A run repeats its few resources: equal bytes are taken from their first occurrence (one
    # bytes object, its hash computed once), compared in C; the calls below stay one per
    # resource, in order (the resource cache's order is the same).
    cdef list every_key = [None] * layout.resource_count
    cdef Py_ssize_t[32] distinct
    cdef Py_ssize_t[32] last_of
    cdef Py_ssize_t* first_of = <Py_ssize_t*>malloc((layout.resource_count + 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t distinct_count = 0, seen, order
    cdef bint all_distinct = True
    cdef _Range one, other
    if first_of == NULL:
        raise MemoryError()
    try:
        for index in range(layout.span_count):
            counts[layout.spans[index].resource] += 1
        for resource_index in range(layout.resource_count):
            one = layout.resources[resource_index]
            resource_bytes = None
            first_of[resource_index] = -1
            for seen in range(distinct_count):
                other = layout.resources[distinct[seen]]
                if other.stop - other.start == one.stop - one.start and memcmp(
                    buf + other.start, buf + one.start, one.stop - one.start
                ) == 0:
                    resource_bytes = every_key[distinct[seen]]
                    first_of[resource_index] = seen
                    last_of[seen] = resource_index
                    break
            if resource_bytes is None:
                resource_bytes = layout.resource_bytes(buf, resource_index)
                if distinct_count < 32:
                    distinct[distinct_count] = resource_index
                    first_of[resource_index] = distinct_count
                    last_of[distinct_count] = resource_index
                    distinct_count += 1
                else:
                    all_distinct = False
            every_key[resource_index] = resource_bytes
        pending = processor._pending
        cache = processor._resources
        if all_distinct:
            # A cache hit only moves the resource to the end of the LRU order; when every
            # resource of the run is a hit, one look-up per distinct resource (made in the
            # order of their last occurrences) leaves the cache as one per occurrence would.
            for seen in range(distinct_count):
                if every_key[distinct[seen]] not in cache:
                    all_distinct = False
                    break
        if all_distinct:
            found = [None] * distinct_count
            for seen in range(distinct_count):
                cached = cache[every_key[distinct[seen]]]
                found[seen] = cached if cached.service_name is not None else None
            for index in range(layout.resource_count):
                seen = first_of[index]
                if last_of[seen] == index:
                    cache.move_to_end(every_key[index])
            accumulators_found = [None] * distinct_count
            refs_found = [None] * distinct_count
            for seen in range(distinct_count):
                resource = found[seen]
                if resource is None:
                    continue
                accumulator = pending.get((tenant, (<object>resource).resource_id))
                if accumulator is None:
                    accumulator = pending[(tenant, resource.resource_id)] = processor._new_accumulator(resource)
                if accumulator.native is None:
                    accumulator.native = _Cache()
                accumulators_found[seen] = accumulator
                refs_found[seen] = _refs_of(<_Cache>accumulator.native, every_key[distinct[seen]])
            for resource_index in range(layout.resource_count):
                seen = first_of[resource_index]
                if found[seen] is None:
                    stats.skipped_no_service += counts[resource_index]
                    continue
                stats.spans += counts[resource_index]
                accumulators[resource_index] = accumulators_found[seen]
                resources[resource_index] = found[seen]
                resource_refs[resource_index] = refs_found[seen]
        else:
            # One call per resource, in order (the resource cache's order is the pure path's).
            for resource_index in range(layout.resource_count):
                resource_bytes = every_key[resource_index]
                resource = processor._resource_from_bytes(resource_bytes)
                if resource is None:
                    stats.skipped_no_service += counts[resource_index]
                    continue
                accumulator = pending.get((tenant, resource.resource_id))
                if accumulator is None:
                    accumulator = pending[(tenant, resource.resource_id)] = processor._new_accumulator(resource)
                if accumulator.native is None:
                    accumulator.native = _Cache()
                stats.spans += counts[resource_index]
                accumulators[resource_index] = accumulator
                resources[resource_index] = resource
                resource_refs[resource_index] = _refs_of(<_Cache>accumulator.native, resource_bytes)
    finally:
        free(first_of)
    cdef _Fold ctx = _Fold.__new__(_Fold)
    ctx.processor = processor
    ctx.include_service = processor._include_service
    ctx.include_name = processor._include_name
    ctx.include_kind = processor._include_kind
    ctx.include_status = processor._include_status
    ctx.no_exclusions = processor._no_exclusions
    ctx.only_base_slots = processor._only_base_slots
    ctx.base_slots = processor._base_slots
    ctx.calls_slots = processor._calls_slots
    ctx.histogram_slots = processor._histogram_slots
    ctx.histogram_enabled = processor._histogram_enabled
    ctx.paired = processor._paired
    ctx.max_exemplars = processor._exemplars
    ctx.weight_of = processor._weight
    ctx.new_series = processor._new_series
    ctx.calls_name = processor.calls_name
    ctx.duration_name = processor.duration_name
    ctx.calls_extra = processor._calls_extra
    ctx.histogram_extra = processor._histogram_extra
    ctx.calls_globs = processor._calls_globs
    ctx.histogram_globs = processor._histogram_globs
    ctx.max_time = processor._MAX_TIME_NS
    ctx.parse_span = parse_span
    ctx.slow = slow
    ctx.divisor = divisor
    ctx.data = data
    ctx.tenant = tenant
    ctx.stats = stats
    ctx.now = processor._clock()
    ctx.active = processor._native_active
    bounds = processor._bounds
    ctx.bound_count = len(bounds)
    ctx.bounds = <double*>malloc((ctx.bound_count + 1) * sizeof(double))
    if ctx.bounds == NULL:
        raise MemoryError()
    for slot in range(ctx.bound_count):
        ctx.bounds[slot] = bounds[slot]
    # The additions stay in C across runs (``ctx.active``, the processor's): applied by the
    # next span that takes the Python fold, by the pure path and by ``take_deltas``
    # (``flush_folds``), so that only this fold ever sees a series with additions pending.
    _fold_all(ctx, scanned, buf, accumulators, resources, resource_refs)


cdef inline double _elapsed(uint64_t start, uint64_t end, double divisor) except? -1.0:
    """The pure paths' ``(end - start) / divisor if end > start else 0.0``: exact in C while the
    difference is exact as a double (2**53 ns, 104 days); beyond, Python's own arithmetic."""
    if end <= start:
        return 0.0
    if end - start < (<uint64_t>1 << 53):
        return <double>(end - start) / divisor
    return (<object>end - <object>start) / divisor


cdef _fold_all(
    _Fold ctx, SpanScan scanned, const unsigned char* buf, list accumulators, list resources,
    list resource_refs,
):
    """``resource_refs[r]``: the raw span keys counted before under resource r's bytes (its
    accumulator's ``_Cache.refs`` entry)."""
    cdef _Layout layout = scanned.layout
    cdef Py_ssize_t slot_count = scanned.slot_count
    cdef Py_ssize_t index, slot, at, size, used
    cdef _Span* span
    cdef _Range where
    cdef _Cache cache
    cdef dict refs
    cdef _Ref ref
    cdef _SeriesAcc acc
    cdef long long weight
    cdef double duration
    cdef bint open_exemplars
    cdef Py_ssize_t capacity = 256
    cdef unsigned char* key = <unsigned char*>malloc(capacity)
    cdef unsigned char* grown
    cdef Py_ssize_t max_exemplars = ctx.max_exemplars
    if key == NULL:
        raise MemoryError()
    current_resource = -1
    refs = None
    try:
        for index in range(layout.span_count):
            where = layout.spans[index]
            accumulator = accumulators[where.resource]
            if accumulator is None:
                continue  # no service name: counted as skipped
            if where.resource != current_resource:
                current_resource = where.resource
                refs = <dict>resource_refs[where.resource]
            span = scanned.spans + index
            at = index * slot_count
            # The raw key: kind, status, name and each slot's value bytes (with their lengths).
            size = 16 + (span.name_stop - span.name_start) + slot_count * 9
            for slot in range(slot_count):
                if scanned.starts[at + slot] >= 0:
                    size += scanned.stops[at + slot] - scanned.starts[at + slot]
            if size > capacity:
                grown = <unsigned char*>realloc(key, size)
                if grown == NULL:
                    raise MemoryError()
                key, capacity = grown, size
            memcpy(key, &span.kind, 4)
            memcpy(key + 4, &span.status, 4)
            used = span.name_stop - span.name_start
            memcpy(key + 8, &used, 8)
            memcpy(key + 16, buf + span.name_start, used)
            used += 16
            for slot in range(slot_count):
                if scanned.starts[at + slot] < 0:
                    key[used] = 0
                    used += 1
                else:
                    size = scanned.stops[at + slot] - scanned.starts[at + slot]
                    key[used] = 1
                    memcpy(key + used + 1, &size, 8)
                    memcpy(key + used + 9, buf + scanned.starts[at + slot], size)
                    used += 9 + size
            raw = PyBytes_FromStringAndSize(<const char*>key, used)
            ref = refs.get(raw)
            open_exemplars = False
            if ref is not None and max_exemplars:
                open_exemplars = (
                    ref.histogram is not None and len(ref.histogram.series.exemplars) < max_exemplars
                ) or (ref.calls is not None and len(ref.calls.series.exemplars) < max_exemplars)
            if ref is None or ref.python or open_exemplars:
                ctx.flush()
                pair = _fold_one(ctx, scanned, buf, index, accumulator, resources[where.resource])
                if ref is None:
                    cache = <_Cache>accumulator.native
                    ref = _Ref.__new__(_Ref)
                    ref.calls = ctx.acc_of(cache, pair[0], False)
                    ref.histogram = ctx.acc_of(cache, pair[1], True)
                    ref.python = ref.histogram is not None and ref.histogram.bucket_adds == NULL
                    refs[raw] = ref
                continue
            if span.state_stop > span.state_start:
                weight = ctx.weight_of(_text(buf, span.state_start, span.state_stop))
            else:
                weight = 1
            acc = ref.calls
            if acc is not None:
                if not acc.active:
                    acc.start()
                    ctx.active.append(acc)
                if acc.now is not ctx.now:
                    acc.now = ctx.now
                acc.count += weight
            acc = ref.histogram
            if acc is not None:
                if not acc.active:
                    acc.start()
                    ctx.active.append(acc)
                if acc.now is not ctx.now:
                    acc.now = ctx.now
                duration = _elapsed(span.start_ns, span.end_ns, ctx.divisor)
                acc.count += weight
                acc.total += duration * <double>weight
                acc.bucket_adds[_bisect_left(ctx.bounds, ctx.bound_count, duration)] += weight
    finally:
        free(key)


cdef tuple _fold_one(
    _Fold ctx, SpanScan scanned, const unsigned char* buf, Py_ssize_t index, object accumulator,
    object resource,
):
    """One span through the Python fold (the pure ``_observe_spans`` body): (calls series or
    None, histogram series or None)."""
    cdef _Span* span = scanned.spans + index
    cdef _Range where = scanned.layout.spans[index]
    cdef Py_ssize_t slot_count = scanned.slot_count
    cdef Py_ssize_t at = index * slot_count
    cdef Py_ssize_t slot
    name = _text(buf, span.name_start, span.name_stop)
    trace_state = _text(buf, span.state_start, span.state_stop) if span.state_stop > span.state_start else ""
    if name is None or trace_state is None:
        raise ValueError("invalid UTF-8 in a span protobuf accepted")
    kind = span.kind
    status = span.status
    duration = _elapsed(span.start_ns, span.end_ns, ctx.divisor)
    service = resource.service_name if ctx.include_service else None
    if not ctx.no_exclusions:
        name = name if ctx.include_name else None
        kind = kind if ctx.include_kind else None
        status = status if ctx.include_status else None
    strings = None
    if slot_count:
        fallback = resource.fallback
        strings = [None] * slot_count
        for slot in range(slot_count):
            if scanned.starts[at + slot] >= 0:
                text = _key_string(buf, scanned.starts[at + slot], scanned.stops[at + slot], ctx.slow)
                if text is None:
                    raise ValueError("an attribute value protobuf accepted has no key string")
                strings[slot] = text
            else:
                strings[slot] = fallback[slot]
        if ctx.only_base_slots:
            key = (service, (), name, kind, status, *strings)
        else:
            key = (service, (), name, kind, status, *[strings[i] for i in ctx.base_slots])
    else:
        key = (service, (), name, kind, status)
    weight = ctx.weight_of(trace_state) if trace_state else 1
    calls = accumulator.calls
    durations = accumulator.duration
    tenant = ctx.tenant
    data = ctx.data
    now = ctx.now
    stats = ctx.stats

    if ctx.paired:
        series = None
        histogram = durations.get(key)
        if histogram is None:
            histogram = ctx.new_series(
                tenant, accumulator, resource, durations, ctx.duration_name, key,
                ctx.parse_span(data[where.start:where.stop]), (), ctx.histogram_extra, ctx.histogram_globs,
                None, now, stats,
            )
    else:
        calls_key = key + tuple([strings[i] for i in ctx.calls_slots]) if ctx.calls_slots else key
        series = calls.get(calls_key)
        if series is None:
            series = ctx.new_series(
                tenant, accumulator, resource, calls, ctx.calls_name, calls_key,
                ctx.parse_span(data[where.start:where.stop]), (), ctx.calls_extra, ctx.calls_globs, None,
                now, stats,
            )
        series.count += weight
        series.last_ns = now
        histogram = None
        if ctx.histogram_enabled:
            if ctx.histogram_slots:
                key = key + tuple([strings[i] for i in ctx.histogram_slots])
            histogram = durations.get(key)
            if histogram is None:
                histogram = ctx.new_series(
                    tenant, accumulator, resource, durations, ctx.duration_name, key,
                    ctx.parse_span(data[where.start:where.stop]), (), ctx.histogram_extra,
                    ctx.histogram_globs, None, now, stats,
                )

    if histogram is not None:
        histogram.count += weight
        histogram.sum += duration * weight
        histogram.last_ns = now
        buckets = histogram.buckets
        if buckets is not None:
            buckets[_bisect_left(ctx.bounds, ctx.bound_count, duration)] += weight
        else:
            exp = histogram.exp
            if exp is not None:
                exp.record(duration, weight)

    if ctx.max_exemplars:
        end = span.end_ns
        exemplar = (
            PyBytes_FromStringAndSize(<const char*>buf + span.trace_start, 16),
            PyBytes_FromStringAndSize(<const char*>buf + span.span_start, 8),
            duration,
            end if 0 < end < ctx.max_time else now,
        )
        if histogram is not None and len(histogram.exemplars) < ctx.max_exemplars:
            histogram.exemplars.append(exemplar)
        if series is not None and len(series.exemplars) < ctx.max_exemplars:
            series.exemplars.append(exemplar)
    return series, histogram


# ------------------------------------------------------------------------------ service graphs


cdef bint _utf8_valid(const unsigned char* text, Py_ssize_t size) noexcept nogil:
    """Whether ``text`` decodes as Python's strict UTF-8 does (no overlong forms, no surrogates,
    nothing past U+10FFFF): checked at the scan, so that the observe never meets a bad string."""
    cdef Py_ssize_t i = 0
    cdef unsigned char lead, second
    while i < size:
        lead = text[i]
        if lead < 0x80:
            i += 1
            continue
        if lead < 0xC2:
            return False
        if lead < 0xE0:
            if i + 1 >= size or (text[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if lead < 0xF0:
            if i + 2 >= size:
                return False
            second = text[i + 1]
            if (second & 0xC0) != 0x80 or (text[i + 2] & 0xC0) != 0x80:
                return False
            if (lead == 0xE0 and second < 0xA0) or (lead == 0xED and second >= 0xA0):
                return False
            i += 3
            continue
        if lead < 0xF5:
            if i + 3 >= size:
                return False
            second = text[i + 1]
            if (second & 0xC0) != 0x80 or (text[i + 2] & 0xC0) != 0x80 or (text[i + 3] & 0xC0) != 0x80:
                return False
            if (lead == 0xF0 and second < 0x90) or (lead == 0xF4 and second >= 0x90):
                return False
            i += 4
            continue
        return False
    return True


# ------------------------------------------------------------------------------ validation
#
# Whether protobuf's parser (upb) accepts a record, answered in C so that protobuf need not parse
# what the scanners read anyway. Only "yes, it parses" is ever concluded here: anything this walk
# does not check (a declared field of a kind not listed below, a wire type other than the
# declared one, groups, nesting beyond _VALID_DEPTH, over-long tags) is refused, and the caller
# then asks protobuf, which decides as before.

cdef enum:
    _F_UNKNOWN = 0  # not declared: any well-formed field of wire type 0, 1, 2 or 5 (upb keeps it)
    _F_VARINT = 1  # int32/64, uint32/64, sint32/64, bool, enum: wire type 0, at most 10 bytes
    _F_FIXED64 = 2  # fixed64, sfixed64, double: wire type 1
    _F_FIXED32 = 3  # fixed32, sfixed32, float: wire type 5
    _F_BYTES = 4  # bytes: wire type 2
    _F_STRING = 5  # string: wire type 2, valid UTF-8 (proto3)
    _F_MESSAGE = 6  # a message (maps too: their entries are messages): wire type 2, valid itself
    _F_REFUSE = 7  # declared, but not checked here (repeated scalars may be packed, groups)

cdef enum:
    #: Nested messages checked (upb refuses beyond 100 levels, counted from the request).
    _VALID_DEPTH = 64


cdef struct _Field:
    int kind
    #: For _F_MESSAGE: the index of its message type in the schema.
    Py_ssize_t message


cdef class Schema:
    """A protobuf message type and every message type it reaches, as tables of field kinds by
    field number, for :func:`valid`. Built once from the message's descriptor."""

    cdef _Field* fields
    #: Per message type: where its fields start in ``fields``, and one past its largest number.
    cdef Py_ssize_t* offsets
    cdef Py_ssize_t* limits
    cdef Py_ssize_t count

    def __cinit__(self, descriptor):
        cdef list order = [descriptor]
        cdef dict index_of = {descriptor.full_name: 0}
        cdef Py_ssize_t at = 0, total = 0, number
        while at < len(order):
            for field in order[at].fields:
                sub = field.message_type
                if sub is not None and sub.full_name not in index_of:
                    index_of[sub.full_name] = len(order)
                    order.append(sub)
            at += 1
        self.count = len(order)
        limits = [max([field.number for field in message.fields], default=0) + 1 for message in order]
        for limit in limits:
            if limit > 1 << 16:
                raise ValueError("field numbers this large are not tabled")
            total += limit
        self.fields = <_Field*>malloc((total + 1) * sizeof(_Field))
        self.offsets = <Py_ssize_t*>malloc((self.count + 1) * sizeof(Py_ssize_t))
        self.limits = <Py_ssize_t*>malloc((self.count + 1) * sizeof(Py_ssize_t))
        if self.fields == NULL or self.offsets == NULL or self.limits == NULL:
            raise MemoryError()
        total = 0
        for at in range(self.count):
            self.offsets[at] = total
            self.limits[at] = limits[at]
            for number in range(limits[at]):
                self.fields[total + number] = _Field(_F_UNKNOWN, -1)
            for field in order[at].fields:
                self.fields[total + field.number] = _Field(
                    _field_kind(field), index_of[field.message_type.full_name] if field.message_type else -1
                )
            total += limits[at]

    def __dealloc__(self):
        free(self.fields)
        free(self.offsets)
        free(self.limits)

    def kinds(self):
        """Per message type (the root first), field number -> kind code: for tests."""
        cdef Py_ssize_t at, number
        return [
            {number: self.fields[self.offsets[at] + number].kind for number in range(1, self.limits[at])}
            for at in range(self.count)
        ]


cdef int _field_kind(object field) except -1:
    kind = field.type
    if kind == field.TYPE_MESSAGE:
        return _F_MESSAGE
    if kind == field.TYPE_STRING:
        return _F_STRING
    if kind == field.TYPE_BYTES:
        return _F_BYTES
    if field.is_repeated:
        return _F_REFUSE  # a repeated scalar may come packed or not: not checked here
    if kind in (
        field.TYPE_INT32, field.TYPE_INT64, field.TYPE_UINT32, field.TYPE_UINT64, field.TYPE_SINT32,
        field.TYPE_SINT64, field.TYPE_BOOL, field.TYPE_ENUM,
    ):
        return _F_VARINT
    if kind in (field.TYPE_FIXED64, field.TYPE_SFIXED64, field.TYPE_DOUBLE):
        return _F_FIXED64
    if kind in (field.TYPE_FIXED32, field.TYPE_SFIXED32, field.TYPE_FLOAT):
        return _F_FIXED32
    return _F_REFUSE  # groups


cdef struct _Tables:
    const _Field* fields
    const Py_ssize_t* offsets
    const Py_ssize_t* limits


cdef inline bint _valid_varint(
    const unsigned char* buf, Py_ssize_t end, Py_ssize_t* pos, Py_ssize_t most, uint64_t* out
) noexcept nogil:
    """A varint of at most ``most`` bytes (upb: 10 for values, 5 for tags and lengths)."""
    cdef Py_ssize_t at = pos[0]
    cdef Py_ssize_t stop = at + most
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char byte
    if stop > end:
        stop = end
    while at < stop:
        byte = buf[at]
        at += 1
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            pos[0] = at
            out[0] = result
            return True
        shift += 7
    return False


cdef inline bint _ascii_or_utf8(const unsigned char* text, Py_ssize_t size) noexcept nogil:
    """:func:`_utf8_valid`, eight ASCII bytes at a time first."""
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    while i + 8 <= size:
        memcpy(&word, text + i, 8)
        if word & 0x8080808080808080ULL:
            return _utf8_valid(text + i, size - i)
        i += 8
    while i < size:
        if text[i] >= 0x80:
            return _utf8_valid(text + i, size - i)
        i += 1
    return True


cdef bint _valid_message(
    const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end, const _Tables* tables, Py_ssize_t message,
    int depth,
) noexcept nogil:
    """Whether [pos, end) is a message of type ``message`` that upb parses (see above)."""
    cdef uint64_t tag, value
    cdef int wire, kind
    cdef Py_ssize_t stop
    cdef const _Field* fields = tables.fields + tables.offsets[message]
    cdef uint64_t limit = <uint64_t>tables.limits[message]
    cdef uint64_t number
    if depth > _VALID_DEPTH:
        return False
    while pos < end:
        # The tag: one byte for field numbers below 16, else at most 5 bytes, below 2^32.
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        elif not _valid_varint(buf, end, &pos, 5, &tag) or tag >= (<uint64_t>1 << 32):
            return False
        number = tag >> 3
        wire = <int>(tag & 7)
        if number == 0:
            return False
        kind = fields[number].kind if number < limit else _F_UNKNOWN
        if wire == 2:
            if kind != _F_UNKNOWN and kind != _F_STRING and kind != _F_BYTES and kind != _F_MESSAGE:
                return False
            # The length: at most 5 bytes, below 2^31, within the message.
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            elif not _valid_varint(buf, end, &pos, 5, &value) or value >= (<uint64_t>1 << 31):
                return False
            if value > <uint64_t>(end - pos):
                return False
            stop = pos + <Py_ssize_t>value
            if kind == _F_STRING:
                if not _ascii_or_utf8(buf + pos, stop - pos):
                    return False
            elif kind == _F_MESSAGE:
                if not _valid_message(buf, pos, stop, tables, fields[number].message, depth + 1):
                    return False
            pos = stop
        elif wire == 0:
            if (kind != _F_UNKNOWN and kind != _F_VARINT) or not _valid_varint(buf, end, &pos, 10, &value):
                return False
        elif wire == 1:
            if (kind != _F_UNKNOWN and kind != _F_FIXED64) or end - pos < 8:
                return False
            pos += 8
        elif wire == 5:
            if (kind != _F_UNKNOWN and kind != _F_FIXED32) or end - pos < 4:
                return False
            pos += 4
        else:
            return False  # groups (3, 4) and the invalid wire types 6 and 7
    return True


def valid(bytes data, Schema schema):
    """True only if protobuf's parser accepts ``data`` as ``schema``'s message type; False when it
    refuses it or when this check cannot tell (ask protobuf). Every read is bounds-checked."""
    cdef _Tables tables = _Tables(schema.fields, schema.offsets, schema.limits)
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef bint accepted
    with nogil:
        accepted = _valid_message(buf, 0, size, &tables, 0, 1)
    return accepted

@cython.freelist(1024)
cdef class Edge:
    """``servicegraphs.pending.Edge`` with its fields in the object itself: the compiled observe
    makes and updates it without attribute lookups; Python code reads it as the pure one."""

    cdef public object deadline_ns
    cdef public object connection_type
    cdef public object client
    cdef public object server
    cdef public object client_seconds
    cdef public object server_seconds
    cdef public object client_end_ns
    cdef public object server_start_ns
    cdef public object failed
    cdef public object peer
    cdef public object dimensions
    cdef public object span_kind
    cdef public object multiplier

    def __init__(self, deadline_ns):
        _edge_init(self, deadline_ns)

    def to_row(self, tuple key, remaining_ns):
        """``pending.Edge.to_row``: the same row."""
        return [
            key[0],
            key[1],
            remaining_ns,
            self.connection_type,
            self.client,
            self.server,
            self.client_seconds,
            self.server_seconds,
            self.client_end_ns,
            self.server_start_ns,
            self.failed,
            self.peer,
            self.dimensions,
            self.span_kind,
            self.multiplier,
        ]


cdef inline int _edge_init(Edge edge, object deadline_ns) except -1:
    edge.deadline_ns = deadline_ns
    edge.connection_type = ""
    edge.client = ""
    edge.server = ""
    edge.client_seconds = 0.0
    edge.server_seconds = 0.0
    edge.client_end_ns = 0
    edge.server_start_ns = 0
    edge.failed = False
    edge.peer = ""
    edge.dimensions = None
    edge.span_kind = 0
    edge.multiplier = 1.0
    return 0


cdef Edge _as_native(object other):
    """A copy of another edge class's edge (an edge put in by hand): the observe reads fields."""
    cdef Edge edge = Edge.__new__(Edge)
    edge.deadline_ns = other.deadline_ns
    edge.connection_type = other.connection_type
    edge.client = other.client
    edge.server = other.server
    edge.client_seconds = other.client_seconds
    edge.server_seconds = other.server_seconds
    edge.client_end_ns = other.client_end_ns
    edge.server_start_ns = other.server_start_ns
    edge.failed = other.failed
    edge.peer = other.peer
    edge.dimensions = other.dimensions
    edge.span_kind = other.span_kind
    edge.multiplier = other.multiplier
    return edge


cdef class EdgeScan:
    """What :func:`scan_edges` read of a run of records: per client, server, producer or consumer
    span its fields, its resource and the ranges of the attribute values the processor reads.
    Nothing is built per span here; the observe builds only what it keeps."""

    cdef readonly bytes data
    cdef _Layout layout
    cdef _Span* spans
    cdef Py_ssize_t* resource_of
    cdef Py_ssize_t* starts
    cdef Py_ssize_t* stops
    #: Per distinct resource (equal bytes are one: a run of records repeats its few services):
    #: its first occurrence in the layout, and how many spans all its occurrences hold.
    cdef Py_ssize_t* distinct
    cdef Py_ssize_t* span_counts
    #: Per resource of the layout: its index among the distinct ones.
    cdef Py_ssize_t* distinct_of
    cdef Py_ssize_t distinct_count
    cdef Py_ssize_t key_count
    cdef Py_ssize_t count

    def __dealloc__(self):
        free(self.spans)
        free(self.resource_of)
        free(self.starts)
        free(self.stops)
        free(self.distinct)
        free(self.span_counts)
        free(self.distinct_of)

    def __len__(self):
        return self.count

    def resources(self):
        """Per distinct resource, in order of first appearance: (its serialized ``Resource``, how
        many spans it holds); an edge span's resource is an index into this list."""
        cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(self.data)
        cdef Py_ssize_t index
        return [
            (self.layout.resource_bytes(buf, self.distinct[index]), self.span_counts[index])
            for index in range(self.distinct_count)
        ]


#: Resources compared byte for byte when a scan folds equal ones (beyond, a new one is kept).
cdef Py_ssize_t _DISTINCT_COMPARED = 32


def scan_edges(bytes data, tuple keys, object slow):
    """Serialized ``ExportTraceServiceRequest`` -> an :class:`EdgeScan`, or None when not handled.

    ``keys``: the attribute names (UTF-8) the processor reads; ``slow(value bytes)``: the Tempo
    string of a serialized ``AnyValue`` that is neither a string nor an integer (called here
    once to check that protobuf reads it). Every read is bounds-checked; every attribute value
    of an edge span is checked here, so that :func:`observe_scanned` never declines.
    """
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t key_count = len(keys)
    cdef Py_ssize_t index, at
    cdef _Range where
    cdef _Keys names = _Keys(keys)
    cdef _Layout layout = _layout(buf, PyBytes_GET_SIZE(data))
    if layout is None:
        return None
    cdef EdgeScan result = _new_edge_scan(data, layout, buf, key_count)
    for index in range(layout.span_count):
        where = layout.spans[index]
        at = result.count * key_count
        # Read in place: kept when it is an edge span, else overwritten by the next.
        if _read_span(
            buf, where.start, where.stop, names, key_count, result.starts + at, result.stops + at,
            result.spans + result.count,
        ) < 0:
            return None
        if _add_edge_span(
            result, buf, where.resource, result.spans + result.count, result.starts + at, result.stops + at, slow
        ) < 0:
            return None
    return result


def scan_both(bytes data, tuple slot_names, tuple keys, object slow):
    """:func:`scan` and :func:`scan_edges` in one walk of ``data``: (a :class:`SpanScan` or None,
    an :class:`EdgeScan` or None), each exactly what its own function returns, except that the
    edges are None too when the span scan is (then nothing is read natively)."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t slot_count = len(slot_names)
    cdef Py_ssize_t key_count = len(keys)
    cdef Py_ssize_t index, slot, at, body_start, body_stop
    cdef uint64_t value
    cdef _Range where
    cdef bint edges_read = True
    cdef _Keys names = _Keys(slot_names + keys)
    cdef _Layout layout = _layout(buf, PyBytes_GET_SIZE(data))
    if layout is None:
        return None, None
    cdef SpanScan result = _new_span_scan(data, layout, slot_count)
    cdef EdgeScan edges = _new_edge_scan(data, layout, buf, key_count)
    # Each span's value ranges for the slots, then for the keys: copied out, as each scan keeps them.
    cdef _Values values = _Values(slot_count + key_count)
    for index in range(layout.span_count):
        where = layout.spans[index]
        at = index * slot_count
        if _read_span(
            buf, where.start, where.stop, names, slot_count + key_count, values.starts, values.stops,
            result.spans + index,
        ) < 0:
            return None, None
        memcpy(result.starts + at, values.starts, slot_count * sizeof(Py_ssize_t))
        memcpy(result.stops + at, values.stops, slot_count * sizeof(Py_ssize_t))
        for slot in range(slot_count):
            if result.starts[at + slot] >= 0 and _value_kind(
                buf, result.starts[at + slot], result.stops[at + slot], &body_start, &body_stop, &value
            ) < 0:
                return None, None
        if edges_read and _add_edge_span(
            edges, buf, where.resource, result.spans + index, values.starts + slot_count,
            values.stops + slot_count, slow,
        ) < 0:
            edges_read = False
    return result, (edges if edges_read else None)


cdef EdgeScan _new_edge_scan(bytes data, _Layout layout, const unsigned char* buf, Py_ssize_t key_count):
    """An empty :class:`EdgeScan` with room for every span of ``layout``, equal resources found."""
    cdef Py_ssize_t index, seen, total
    cdef _Range one, other
    cdef EdgeScan result = EdgeScan.__new__(EdgeScan)
    result.data = data
    result.layout = layout
    result.key_count = key_count
    total = layout.span_count + 1
    result.spans = <_Span*>malloc(total * sizeof(_Span))
    result.resource_of = <Py_ssize_t*>malloc(total * sizeof(Py_ssize_t))
    result.starts = <Py_ssize_t*>malloc((total * key_count + 1) * sizeof(Py_ssize_t))
    result.stops = <Py_ssize_t*>malloc((total * key_count + 1) * sizeof(Py_ssize_t))
    result.span_counts = <Py_ssize_t*>malloc((layout.resource_count + 1) * sizeof(Py_ssize_t))
    result.distinct = <Py_ssize_t*>malloc((layout.resource_count + 1) * sizeof(Py_ssize_t))
    result.distinct_of = <Py_ssize_t*>malloc((layout.resource_count + 1) * sizeof(Py_ssize_t))
    if (
        result.spans == NULL or result.resource_of == NULL or result.starts == NULL
        or result.stops == NULL or result.span_counts == NULL or result.distinct == NULL
        or result.distinct_of == NULL
    ):
        raise MemoryError()
    for index in range(layout.resource_count):
        one = layout.resources[index]
        result.distinct_of[index] = -1
        for seen in range(min(result.distinct_count, _DISTINCT_COMPARED)):
            other = layout.resources[result.distinct[seen]]
            if other.stop - other.start == one.stop - one.start and memcmp(
                buf + other.start, buf + one.start, one.stop - one.start
            ) == 0:
                result.distinct_of[index] = seen
                break
        if result.distinct_of[index] < 0:
            result.distinct_of[index] = result.distinct_count
            result.distinct[result.distinct_count] = index
            result.span_counts[result.distinct_count] = 0
            result.distinct_count += 1
    return result


cdef int _add_edge_span(
    EdgeScan result, const unsigned char* buf, Py_ssize_t resource, const _Span* span,
    const Py_ssize_t* starts, const Py_ssize_t* stops, object slow,
) except -2:
    """One span read by :func:`_read_span` (its fields, its values' ranges for the result's keys):
    counted under its resource; kept when it is an edge span, its values checked.
    NOT_HANDLED when a value is not read exactly as the pure path reads it."""
    cdef Py_ssize_t key, body_start, body_stop
    cdef Py_ssize_t key_count = result.key_count
    cdef Py_ssize_t at = result.count * key_count
    cdef uint64_t value
    cdef int kind
    result.span_counts[result.distinct_of[resource]] += 1
    if span.kind < 2 or span.kind > 5:
        return 0  # not an edge span: internal or unspecified
    for key in range(key_count):
        if starts[key] < 0:
            continue
        kind = _value_kind(buf, starts[key], stops[key], &body_start, &body_stop, &value)
        if kind == NOT_HANDLED:
            return NOT_HANDLED
        if kind == 1 and not _utf8_valid(buf + body_start, body_stop - body_start):
            return NOT_HANDLED  # protobuf refuses the record: the pure path decides
        if kind == 9:
            try:
                slow(PyBytes_FromStringAndSize(<const char*>buf + starts[key], stops[key] - starts[key]))
            except Exception:
                return NOT_HANDLED
    # In place when read there (scan_edges), else copied (scan_both).
    if result.starts + at != starts:
        memcpy(result.starts + at, starts, key_count * sizeof(Py_ssize_t))
        memcpy(result.stops + at, stops, key_count * sizeof(Py_ssize_t))
    if result.spans + result.count != span:
        result.spans[result.count] = span[0]
    result.resource_of[result.count] = result.distinct_of[resource]
    result.count += 1
    return 0


cdef class _Indices:
    """The scan indices of a tuple of (name, scan index) pairs, as a C array."""

    cdef Py_ssize_t* at
    cdef Py_ssize_t count

    def __cinit__(self, tuple keys):
        cdef Py_ssize_t index
        self.count = len(keys)
        self.at = <Py_ssize_t*>malloc((self.count + 1) * sizeof(Py_ssize_t))
        if self.at == NULL:
            raise MemoryError()
        for index in range(self.count):
            self.at[index] = keys[index][1]

    def __dealloc__(self):
        free(self.at)


cdef enum:
    #: Slots of EdgeContext.strings (a power of two), and the longest value kept there.
    _STRINGS = 256
    _STRING_BYTES = 96


cdef class EdgeContext:
    """What the compiled observe reads of a ``ServiceGraphsProcessor``, made once per processor:
    the scan's attribute indices of each lookup, the functions it calls back, the histogram
    bounds."""

    cdef object processor
    cdef object slow
    cdef object parse_value
    cdef Py_ssize_t* peer_indices
    cdef Py_ssize_t peer_count
    #: (name, scan index) pairs, in lookup order.
    cdef tuple database_keys
    cdef tuple server_keys
    cdef tuple port_keys
    #: The scan indices of database_keys, server_keys and port_keys, in C.
    cdef _Indices database_indices
    cdef _Indices server_indices
    cdef _Indices port_indices
    cdef tuple dimension_keys
    cdef bint has_dimensions
    cdef object network_peer_address
    cdef tuple label_names
    cdef bint messaging_latency
    cdef double* bounds
    cdef Py_ssize_t bound_count
    cdef object failed_metric
    cdef object messaging_metric
    cdef Py_ssize_t native_max_exemplars
    #: Completed edges add to per-group accumulators in C (explicit-bucket histograms only).
    cdef bint accumulate
    #: The interval the accumulators belong to, and its label set -> :class:`_GroupAcc`.
    cdef object acc_interval
    cdef dict accs
    #: The accumulators touched during the current observe (applied when it ends).
    cdef list active
    #: The Tempo strings of recent attribute values (peers, servers: few, met on every span):
    #: _STRINGS slots of (the value's bytes, its string), by a hash of the bytes.
    cdef list strings

    def __cinit__(self, processor, tuple names, object slow, object parse_value):
        from worker.processors.servicegraphs import processor as module

        index_of = {name: index for index, name in enumerate(names)}
        self.processor = processor
        self.slow = slow
        self.parse_value = parse_value
        peers = processor._peer_attributes
        self.peer_count = len(peers)
        self.peer_indices = <Py_ssize_t*>malloc((self.peer_count + 1) * sizeof(Py_ssize_t))
        if self.peer_indices == NULL:
            raise MemoryError()
        for index in range(self.peer_count):
            self.peer_indices[index] = index_of[peers[index]]
        self.database_keys = tuple([(name, index_of[name]) for name in processor._database_attributes])
        self.server_keys = tuple([(name, index_of[name]) for name in processor._database_servers])
        self.port_keys = tuple([(name, index_of[name]) for name in module._PORT_ATTRIBUTE])
        self.database_indices = _Indices(self.database_keys)
        self.server_indices = _Indices(self.server_keys)
        self.port_indices = _Indices(self.port_keys)
        self.dimension_keys = tuple([(name, index_of[name]) for name, _, _ in processor._dimensions])
        self.has_dimensions = bool(processor._dimensions)
        self.network_peer_address = module._NETWORK_PEER_ADDRESS
        self.label_names = tuple(processor._label_names)
        self.messaging_latency = processor._messaging_latency
        self.failed_metric = module.REQUEST_FAILED_TOTAL
        self.messaging_metric = module.REQUEST_MESSAGING_SYSTEM_SECONDS
        self.native_max_exemplars = module.NATIVE_MAX_EXEMPLARS
        bounds = processor._bounds
        self.bound_count = len(bounds)
        self.bounds = <double*>malloc((self.bound_count + 1) * sizeof(double))
        if self.bounds == NULL:
            raise MemoryError()
        for index in range(self.bound_count):
            self.bounds[index] = bounds[index]
        self.accumulate = processor._classic and not processor._native
        self.acc_interval = None
        self.accs = {}
        self.active = []
        self.strings = [None] * _STRINGS

    def __dealloc__(self):
        free(self.peer_indices)
        free(self.bounds)

    cdef object string_of(self, const unsigned char* buf, Py_ssize_t start, Py_ssize_t stop):
        """``_key_string`` of a value the scan checked, the same string object for the same
        bytes while they keep their slot (so that its hash is computed once, and a dictionary
        finds it by identity); values longer than _STRING_BYTES are not kept."""
        cdef Py_ssize_t size = stop - start
        cdef uint64_t hash_ = 14695981039346656037ULL
        cdef Py_ssize_t index
        if size > _STRING_BYTES:
            return _key_string(buf, start, stop, self.slow)
        for index in range(start, stop):
            hash_ = (hash_ ^ buf[index]) * 1099511628211ULL
        index = <Py_ssize_t>(hash_ & (_STRINGS - 1))
        entry = self.strings[index]
        if entry is not None:
            key = (<tuple>entry)[0]
            if PyBytes_GET_SIZE(key) == size and memcmp(PyBytes_AS_STRING(key), buf + start, size) == 0:
                return (<tuple>entry)[1]
        text = _key_string(buf, start, stop, self.slow)
        if text is not None:
            self.strings[index] = (PyBytes_FromStringAndSize(<const char*>buf + start, size), text)
        return text

    cdef int flush(self) except -1:
        """Apply every accumulator's additions so far to its Python series."""
        cdef _GroupAcc acc
        active, self.active = self.active, []
        for acc in active:
            acc.finish(self.processor, self.acc_interval)
        return 0

    cdef _GroupAcc acc_of(self, object interval, tuple labels, object now):
        """The accumulator of ``labels`` in ``interval`` (its group made as ``_complete`` makes it)."""
        cdef _GroupAcc acc
        if interval is not self.acc_interval:
            self.flush()
            self.acc_interval = interval
            self.accs = {}
        found = self.accs.get(labels)
        if found is not None:
            acc = <_GroupAcc>found
        else:
            groups = interval.edges
            group = groups.get(labels)
            if group is None:
                group = groups[labels] = self.processor._new_group(labels, now)
            acc = _GroupAcc.__new__(_GroupAcc)
            acc.group = group
            acc.counts = group.total is not None
            if group.server is not None:
                acc.server = _LatencyAcc.new(group.server, self.bound_count + 1)
                acc.client = _LatencyAcc.new(group.client, self.bound_count + 1)
            self.accs[labels] = acc
        if not acc.active:
            acc.start()
            self.active.append(acc)
        return acc


cdef class _LatencyAcc:
    """One explicit-bucket latency series' additions during an observe, applied to it when the
    observe ends: counts and buckets commute, the sum goes on from the series' own in edge order
    (the very double of the pure path), and each bucket's last exemplar is the pure path's."""

    cdef object latency
    cdef object classic
    cdef long long count
    cdef double total
    cdef long long* adds
    cdef double* seconds
    cdef list traces
    cdef Py_ssize_t bucket_count

    @staticmethod
    cdef _LatencyAcc new(object latency, Py_ssize_t bucket_count):
        cdef _LatencyAcc acc = _LatencyAcc.__new__(_LatencyAcc)
        acc.latency = latency
        acc.classic = latency.classic
        acc.bucket_count = bucket_count
        acc.adds = <long long*>malloc(bucket_count * sizeof(long long))
        acc.seconds = <double*>malloc(bucket_count * sizeof(double))
        if acc.adds == NULL or acc.seconds == NULL:
            raise MemoryError()
        acc.traces = [None] * bucket_count
        return acc

    def __dealloc__(self):
        free(self.adds)
        free(self.seconds)

    cdef int start(self) except -1:
        cdef Py_ssize_t index
        self.count = 0
        self.total = self.classic.sum
        for index in range(self.bucket_count):
            self.adds[index] = 0
        return 0

    cdef inline void add(self, Py_ssize_t index, double seconds) noexcept:
        self.count += 1
        self.total += seconds
        self.adds[index] += 1

    cdef int finish(self, object now) except -1:
        cdef Py_ssize_t index
        classic = self.classic
        classic.count += self.count
        classic.sum = self.total
        classic.last_ns = now
        buckets = classic.buckets
        by_bucket = self.latency.by_bucket
        traces = self.traces
        for index in range(self.bucket_count):
            if self.adds[index]:
                buckets[index] += self.adds[index]
            trace_id = traces[index]
            if trace_id is not None:
                by_bucket[index] = (trace_id, b"", self.seconds[index], now)
                traces[index] = None
        return 0


cdef class _GroupAcc:
    """One label set's additions during an observe (see :class:`_LatencyAcc`)."""

    cdef object group
    cdef bint active
    #: The group counts requests (``group.total`` is set once, when the group is made).
    cdef bint counts
    cdef long long total
    cdef long long failed
    cdef object now
    cdef _LatencyAcc server
    cdef _LatencyAcc client

    cdef int start(self) except -1:
        self.active = True
        self.total = 0
        self.failed = 0
        if self.server is not None:
            self.server.start()
            self.client.start()
        return 0

    cdef int finish(self, object processor, object interval) except -1:
        group = self.group
        now = self.now
        self.active = False
        total = group.total
        if total is not None:
            total.count += self.total
            total.last_ns = now
            if self.failed:
                failed = group.failed
                failed.count += self.failed
                failed.last_ns = now
        if self.server is not None:
            self.server.finish(now)
            self.client.finish(now)
        info = group.info
        if info is not None:
            info.count = 1
            info.last_ns = now
        return 0


cdef inline object _scanned_string(EdgeContext ctx, EdgeScan scanned, const unsigned char* buf, Py_ssize_t at):
    """The Tempo string of the value at ``at`` (checked by the scan: never None)."""
    return ctx.string_of(buf, scanned.starts[at], scanned.stops[at])


cdef object _scanned_find(
    EdgeContext ctx, EdgeScan scanned, const unsigned char* buf, Py_ssize_t at, tuple keys, dict resource_values,
    _Indices indices=None,
):
    """``attributes.find_attribute`` over the scan: the first of ``keys`` found, resource first
    then span, as (name, Tempo string); None. ``indices``: the scan indices of ``keys``, read in
    C when the resource has no lookup values (mostly)."""
    cdef Py_ssize_t index
    if indices is not None and not resource_values:
        for index in range(indices.count):
            if scanned.starts[at + indices.at[index]] >= 0:
                return (<tuple>keys[index])[0], _scanned_string(ctx, scanned, buf, at + indices.at[index])
        return None
    for name, index in keys:
        if resource_values:
            value = resource_values.get(name)
            if value is not None:
                return name, value
        if scanned.starts[at + index] >= 0:
            return name, _scanned_string(ctx, scanned, buf, at + index)
    return None


cdef object _scanned_database_server(
    EdgeContext ctx, EdgeScan scanned, const unsigned char* buf, Py_ssize_t at, dict resource_values
):
    """``ServiceGraphsProcessor._database_server`` over the scan."""
    found = _scanned_find(ctx, scanned, buf, at, ctx.server_keys, resource_values, ctx.server_indices)
    if found is None:
        return None
    name, server = found
    if name == ctx.network_peer_address:
        port = _scanned_find(ctx, scanned, buf, at, ctx.port_keys, resource_values, ctx.port_indices)
        if port is not None:
            return server + ":" + port[1]
    return server


cdef dict _scanned_dimension_values(EdgeContext ctx, EdgeScan scanned, const unsigned char* buf, Py_ssize_t at):
    """The span's dimension attributes as ``AnyValue`` messages, for ``_set_dimensions``."""
    cdef dict attributes = {}
    cdef Py_ssize_t index
    for name, index in ctx.dimension_keys:
        if scanned.starts[at + index] >= 0:
            attributes[name] = ctx.parse_value(PyBytes_FromStringAndSize(
                <const char*>buf + scanned.starts[at + index], scanned.stops[at + index] - scanned.starts[at + index]
            ))
    return attributes


cdef inline bint _any_byte(bytes data) noexcept:
    """``any(data)``: a byte that is not zero."""
    cdef const unsigned char* text = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t index
    for index in range(PyBytes_GET_SIZE(data)):
        if text[index]:
            return True
    return False


cdef _complete(EdgeContext completion, object interval, tuple key, Edge edge, object now, object virtual_node):
    """``ServiceGraphsProcessor._complete`` of a completed edge with a multiplier of 1."""
    cdef _GroupAcc acc
    cdef Py_ssize_t index
    cdef double seconds
    client = edge.client
    server_name = edge.server
    connection_type = edge.connection_type
    if completion.label_names:
        dimensions = edge.dimensions or {}
        labels = (
            client, server_name, connection_type, virtual_node,
            *[dimensions.get(name, "") for name in completion.label_names]
        )
    else:
        labels = (client, server_name, connection_type, virtual_node)
    if completion.accumulate:
        acc = completion.acc_of(interval, labels, now)
        acc.now = now
        group = acc.group
        if acc.counts:
            acc.total += 1
            if edge.failed:
                if group.failed is None:
                    group.failed = completion.processor._series(
                        completion.failed_metric, group.attributes, group.body, now, histogram=False
                    )
                acc.failed += 1
        if acc.server is not None:
            trace_id = key[0]
            if not _any_byte(trace_id):
                trace_id = None
            seconds = edge.server_seconds
            index = _bisect_left(completion.bounds, completion.bound_count, seconds)
            acc.server.add(index, seconds)
            if trace_id is not None:
                acc.server.traces[index] = trace_id
                acc.server.seconds[index] = seconds
            seconds = edge.client_seconds
            index = _bisect_left(completion.bounds, completion.bound_count, seconds)
            acc.client.add(index, seconds)
            if trace_id is not None:
                acc.client.traces[index] = trace_id
                acc.client.seconds[index] = seconds
            # The messaging system latency: its own series, which no accumulator holds.
            _record_messaging(completion, group, edge, connection_type, b"" if trace_id is None else trace_id, now)
        return
    groups = interval.edges
    group = groups.get(labels)
    if group is None:
        group = groups[labels] = completion.processor._new_group(labels, now)
    total = group.total
    if total is not None:
        total.count += 1
        total.last_ns = now
        if edge.failed:
            failed = group.failed
            if failed is None:
                failed = group.failed = completion.processor._series(
                    completion.failed_metric, group.attributes, group.body, now, histogram=False
                )
            failed.count += 1
            failed.last_ns = now
    server = group.server
    if server is not None:
        trace_id = key[0]
        if not _any_byte(trace_id):
            trace_id = b""
        _record_latency(completion, server, edge.server_seconds, trace_id, now)
        _record_latency(completion, group.client, edge.client_seconds, trace_id, now)
        _record_messaging(completion, group, edge, connection_type, trace_id, now)
    info = group.info
    if info is not None:
        info.count = 1
        info.last_ns = now


cdef _record_messaging(
    EdgeContext completion, object group, Edge edge, object connection_type, bytes trace_id, object now
):
    """Tempo's messaging-system latency (the server's start after the client's end), when configured."""
    if not (
        completion.messaging_latency
        and connection_type == "messaging_system"
        and edge.server_start_ns > edge.client_end_ns
    ):
        return
    messaging = group.messaging
    if messaging is None:
        messaging = group.messaging = completion.processor._latency_series(
            completion.messaging_metric, group.attributes, group.body, now
        )
    _record_latency(completion, messaging, (edge.server_start_ns - edge.client_end_ns) / 1e9, trace_id, now)


cdef _record_latency(EdgeContext completion, object latency, object seconds, bytes trace_id, object now):
    """``ServiceGraphsProcessor._record_latency`` with a weight of 1."""
    classic = latency.classic
    cdef Py_ssize_t index
    if classic is not None:
        index = _bisect_left(completion.bounds, completion.bound_count, seconds)
        classic.count += 1
        classic.sum += seconds
        classic.last_ns = now
        classic.buckets[index] += 1
        if trace_id:
            latency.by_bucket[index] = (trace_id, b"", seconds, now)
    native = latency.native
    if native is not None:
        native.count += 1
        native.sum += seconds
        native.last_ns = now
        native.exp.record(seconds, 1)
        if trace_id and classic is None:
            recent = latency.recent
            recent.append((trace_id, b"", seconds, now))
            if len(recent) > completion.native_max_exemplars:
                del recent[0]


cdef class _Drops:
    """Spans dropped during an observe, counted in C per (resource, side) and handed to
    ``ServiceGraphsProcessor._count``'s series in the order of their first drop (the order the
    pure path makes the series in) when the observe ends or Python code is about to run."""

    cdef long long* counts
    cdef Py_ssize_t* order
    cdef Py_ssize_t used

    def __cinit__(self, Py_ssize_t resources):
        self.counts = <long long*>calloc(2 * resources + 1, sizeof(long long))
        self.order = <Py_ssize_t*>malloc((2 * resources + 1) * sizeof(Py_ssize_t))
        if self.counts == NULL or self.order == NULL:
            raise MemoryError()
        self.used = 0

    def __dealloc__(self):
        free(self.counts)
        free(self.order)

    cdef inline void add(self, Py_ssize_t resource, bint client) noexcept:
        cdef Py_ssize_t slot = 2 * resource + (1 if client else 0)
        if self.counts[slot] == 0:
            self.order[self.used] = slot
            self.used += 1
        self.counts[slot] += 1

    cdef int apply(
        self, list services, dict counters, object count, object interval, object metric, object now
    ) except -1:
        cdef Py_ssize_t at, slot
        cdef long long added
        for at in range(self.used):
            slot = self.order[at]
            added = self.counts[slot]
            self.counts[slot] = 0
            side = "client" if slot & 1 else "server"
            service = services[slot >> 1]
            key = (metric, side, service)
            series = counters.get(key)
            if series is None:
                count(interval, metric, side, service, now)
                added -= 1
                series = counters[key]
            if added:
                series.count += added
            series.last_ns = now
        self.used = 0
        return 0


def observe_scanned(
    EdgeContext ctx, EdgeScan scanned, list services, list values, dict edges, Py_ssize_t capacity,
    object interval, object now, object stats, object dropped_metric,
):
    """``ServiceGraphsProcessor._observe`` over an :class:`EdgeScan`, without filter policies or
    a span multiplier (the configurations the edge scan serves): the same edges, in the same
    order, through the same completion and counters. ``services[r]`` is resource r's service
    name (None: its spans are skipped), ``values[r]`` its resource-level lookup values."""
    processor = ctx.processor
    deadline = now + processor._wait_ns
    complete = processor._complete
    count = processor._count
    set_dimensions = processor._set_dimensions
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(scanned.data)
    cdef Py_ssize_t key_count = scanned.key_count
    cdef Py_ssize_t spans_seen = 0, completed = 0, new_edges = 0, dropped = 0
    cdef Py_ssize_t index, at, peer
    cdef _Span* span
    cdef int kind
    cdef bint client, stored
    cdef Edge edge
    cdef dict resource_values
    cdef dict counters = interval.counters
    cdef _Drops drops = _Drops(len(services))
    try:
        for index in range(scanned.count):
            service = services[scanned.resource_of[index]]
            if service is None:
                continue
            resource_values = <dict>values[scanned.resource_of[index]]
            span = scanned.spans + index
            at = index * key_count
            kind = span.kind
            client = kind == 3 or kind == 4
            spans_seen += 1
            trace_id = PyBytes_FromStringAndSize(<const char*>buf + span.trace_start, 16)
            if client:
                key = (trace_id, PyBytes_FromStringAndSize(<const char*>buf + span.span_start, 8))
            else:
                key = (trace_id, PyBytes_FromStringAndSize(
                    <const char*>buf + span.parent_start, span.parent_stop - span.parent_start
                ))
            found = edges.get(key)
            stored = found is not None
            if found is None and len(edges) >= capacity and (
                not client or _scanned_find(ctx, scanned, buf, at, ctx.database_keys, resource_values, ctx.database_indices) is None
            ):
                # No room, and a new half-edge completes at once only as a database call: the
                # pure path builds it and drops it; nothing is built here.
                dropped += 1
                drops.add(scanned.resource_of[index], client)
                continue
            if found is None:
                edge = Edge.__new__(Edge)
                _edge_init(edge, deadline)
            elif type(found) is Edge:
                edge = <Edge>found
            else:
                edge = _as_native(found)
                edges[key] = edge  # same place in the dict: the expiry order stays
            if client:
                # Tempo's updateClientEdge, upsertDatabaseRequest and upsertPeerNode.
                edge.connection_type = "messaging_system" if kind == 4 else ""
                edge.client = service
                seconds = _elapsed(span.start_ns, span.end_ns, 1e9)
                edge.client_seconds = seconds
                edge.client_end_ns = span.end_ns
                database = _scanned_find(ctx, scanned, buf, at, ctx.database_keys, resource_values, ctx.database_indices)
                if database is not None:
                    edge.connection_type = "database"
                    edge.server_seconds = seconds
                    server = _scanned_database_server(ctx, scanned, buf, at, resource_values)
                    if server is not None:
                        edge.server = server
                    elif database[1]:
                        edge.server = database[1]
            else:
                edge.connection_type = "messaging_system" if kind == 5 else ""
                edge.server = service
                edge.server_seconds = _elapsed(span.start_ns, span.end_ns, 1e9)
                edge.server_start_ns = span.start_ns
            # Either side: its status, its dimensions, and the peer node (upsertPeerNode).
            if span.status == 2:
                edge.failed = True
            if ctx.has_dimensions:
                set_dimensions(
                    edge, resource_values, _scanned_dimension_values(ctx, scanned, buf, at), client=client
                )
            for peer in range(ctx.peer_count):
                if scanned.starts[at + ctx.peer_indices[peer]] >= 0:
                    edge.peer = _scanned_string(ctx, scanned, buf, at + ctx.peer_indices[peer])
                    break
            edge.span_kind = kind
            if edge.client and edge.server:
                if stored:
                    del edges[key]
                else:
                    new_edges += 1
                if edge.multiplier == 1.0:
                    _complete(ctx, interval, key, edge, now, "")
                else:  # a half-edge restored from another configuration's handover
                    ctx.flush()
                    drops.apply(services, counters, count, interval, dropped_metric, now)
                    complete(interval, key, edge, "", now)
                completed += 1
            elif not stored:
                if len(edges) >= capacity:
                    dropped += 1
                    drops.add(scanned.resource_of[index], client)
                else:
                    edges[key] = edge
                    new_edges += 1
    finally:
        ctx.flush()
        drops.apply(services, counters, count, interval, dropped_metric, now)
        stats.spans += spans_seen
        stats.edges += completed
        stats.new_edges += new_edges
        stats.dropped += dropped


def expire_edges(EdgeContext ctx, str tenant, dict edges, object now_ns):
    """``ServiceGraphsProcessor.expire`` of one tenant's half-edges of one partition: those whose
    wait ended at or before ``now_ns`` (the dict is in deadline order), each through Tempo's
    ``onExpire``; the virtual-node completions of :class:`Edge` s with a multiplier of 1 in C, the
    rest (unpaired counts, restored multipliers) through ``_expire_edge``."""
    cdef list expired = []
    cdef Edge edge
    for key, found in edges.items():
        if found.deadline_ns > now_ns:
            break
        expired.append(key)
    if not expired:
        return
    processor = ctx.processor
    interval = processor._interval(tenant)
    expire_edge = processor._expire_edge
    virtual_node_label = processor._virtual_node_label
    try:
        for key in expired:
            found = edges.pop(key)
            if type(found) is Edge and (<Edge>found).multiplier == 1.0:
                edge = <Edge>found
                if not edge.client:
                    if not key[1]:
                        # A root span: the request came from outside, named by its peer attribute.
                        edge.connection_type = "virtual_node"
                        edge.client = edge.peer or "user"
                        _complete(ctx, interval, key, edge, now_ns, "client" if virtual_node_label else "")
                        continue
                elif not edge.server and edge.peer:
                    # A call to something that sends no spans.
                    edge.connection_type = "virtual_node"
                    edge.server = edge.peer
                    _complete(ctx, interval, key, edge, now_ns, "server" if virtual_node_label else "")
                    continue
            else:
                ctx.flush()  # the Python completion may touch accumulated series
            expire_edge(tenant, interval, key, found, now_ns)
    finally:
        ctx.flush()
