# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled ingest: bounds-checked scanners of serialized OTLP traces, for span metrics (with
the fold) and for the service graphs' edge spans."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp


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


cdef object _key_string(const unsigned char* buf, Py_ssize_t start, Py_ssize_t stop, object slow):
    """An attribute value's key string (``string_value or _value_string``), None when not handled."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t body_stop
    cdef uint64_t number
    cdef int wire
    cdef uint64_t value
    cdef int fields = 0
    cdef int kind = 0
    cdef Py_ssize_t body_start = 0
    while pos < stop:
        if _tag(buf, stop, &pos, &number, &wire) < 0:
            return None
        fields += 1
        if number == 1 and wire == 2:
            if _length(buf, stop, &pos, &body_stop) < 0:
                return None
            kind = 1
            body_start = pos
            pos = body_stop
        elif number == 3 and wire == 0:
            if _varint(buf, stop, &pos, &value) < 0:
                return None
            kind = 3
        elif 2 <= number <= 7:
            if _skip(buf, stop, &pos, wire) < 0:
                return None
            kind = 9
        else:
            return None  # an unknown field inside a value: not ours to judge
    if fields == 0:
        return ""
    if fields > 1:
        return None  # oneof rules (the last wins, messages merge): left to protobuf
    if kind == 1:
        return _text(buf, body_start, body_stop)
    if kind == 3:
        if value < 1024:
            return _SMALL_INTS[value]
        return str(<int64_t>value)
    # bool, double, bytes, arrays and maps: the pure path's own function on the value.
    return slow(PyBytes_FromStringAndSize(<const char*>buf + start, stop - start))


cdef object _scan_span(
    const unsigned char* buf,
    Py_ssize_t start,
    Py_ssize_t end,
    tuple slot_names,
    Py_ssize_t slot_count,
    bint want_ids,
    double divisor,
    object slow,
):
    """One span as (name, kind, status, trace_state, duration, end, trace_id, span_id, slot
    strings, offset, stop); None when not handled. ``end``, the ids: with ``want_ids`` only."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t stop, inner, inner_stop, key_start, key_stop, value_start, value_stop
    cdef uint64_t number, value
    cdef int wire
    cdef Py_ssize_t trace_start = 0, trace_stop = 0, span_start = 0, span_stop = 0
    cdef Py_ssize_t name_start = 0, name_stop = 0, state_start = 0, state_stop = 0
    cdef int32_t kind = 0, status = 0
    cdef uint64_t start_ns = 0, end_ns = 0
    cdef bint status_seen = False
    cdef bint has_key, has_value
    cdef Py_ssize_t slot
    cdef bytes name_bytes
    cdef object strings = None
    cdef object text
    if slot_count:
        strings = [None] * slot_count
    while pos < end:
        if _tag(buf, end, &pos, &number, &wire) < 0:
            return None
        if number == 1 or number == 2 or number == 3 or number == 5:
            if wire != 2 or _length(buf, end, &pos, &stop) < 0:
                return None
            if number == 1:
                trace_start, trace_stop = pos, stop
            elif number == 2:
                span_start, span_stop = pos, stop
            elif number == 3:
                state_start, state_stop = pos, stop
            else:
                name_start, name_stop = pos, stop
            pos = stop
        elif number == 6:
            if wire != 0 or _varint(buf, end, &pos, &value) < 0:
                return None
            kind = <int32_t>value
        elif number == 7 or number == 8:
            if wire != 1 or end - pos < 8:
                return None
            if number == 7:
                start_ns = _fixed64(buf + pos)
            else:
                end_ns = _fixed64(buf + pos)
            pos += 8
        elif number == 9:
            if wire != 2 or _length(buf, end, &pos, &stop) < 0:
                return None
            inner = pos
            has_key = has_value = False
            key_start = key_stop = value_start = value_stop = 0
            while inner < stop:
                if _tag(buf, stop, &inner, &number, &wire) < 0:
                    return None
                if number == 1 or number == 2:
                    if wire != 2 or _length(buf, stop, &inner, &inner_stop) < 0:
                        return None
                    if number == 1:
                        if has_key:
                            return None
                        has_key = True
                        key_start, key_stop = inner, inner_stop
                    else:
                        if has_value:
                            return None
                        has_value = True
                        value_start, value_stop = inner, inner_stop
                    inner = inner_stop
                else:
                    return None  # protobuf keeps a map entry with unknown fields out of the map
            pos = stop
            if slot_count:
                # A map: the last entry of a key wins, as protobuf's map parse.
                for slot in range(slot_count):
                    name_bytes = <bytes>slot_names[slot]
                    if PyBytes_GET_SIZE(name_bytes) == key_stop - key_start and memcmp(
                        PyBytes_AS_STRING(name_bytes), buf + key_start, key_stop - key_start
                    ) == 0:
                        text = _key_string(buf, value_start, value_stop, slow)
                        if text is None:
                            return None
                        strings[slot] = text
        elif number == 15:
            if wire != 2 or status_seen or _length(buf, end, &pos, &stop) < 0:
                return None
            status_seen = True
            inner = pos
            while inner < stop:
                if _tag(buf, stop, &inner, &number, &wire) < 0:
                    return None
                if number == 3:
                    if wire != 0 or _varint(buf, stop, &inner, &value) < 0:
                        return None
                    status = <int32_t>value
                elif number == 2:
                    if wire != 2 or _length(buf, stop, &inner, &inner_stop) < 0:
                        return None
                    inner = inner_stop
                elif _skip(buf, stop, &inner, wire) < 0:
                    return None
            pos = stop
        elif number == 4 or number == 11 or number == 13:
            if wire != 2 or _skip(buf, end, &pos, wire) < 0:
                return None
        elif number == 10 or number == 12 or number == 14:
            if wire != 0 or _skip(buf, end, &pos, wire) < 0:
                return None
        elif number == 16:
            if wire != 5 or _skip(buf, end, &pos, wire) < 0:
                return None
        elif _skip(buf, end, &pos, wire) < 0:
            return None
    # The pure path refuses the whole record for a span without valid ids (worker.otlp.ids).
    if not _valid_id(buf, trace_start, trace_stop, 16) or not _valid_id(buf, span_start, span_stop, 8):
        return None
    name = _text(buf, name_start, name_stop)
    if name is None:
        return None
    trace_state = ""
    if state_stop > state_start:
        trace_state = _text(buf, state_start, state_stop)
        if trace_state is None:
            return None
    # The pure path's ``(end - start) / divisor``: exact in C while the difference is exact as
    # a double (2**53 ns, 104 days); beyond, Python's own arithmetic.
    if end_ns <= start_ns:
        duration = 0.0
    elif end_ns - start_ns < (<uint64_t>1 << 53):
        duration = <double>(end_ns - start_ns) / divisor
    else:
        duration = (<object>end_ns - <object>start_ns) / divisor
    trace_id = span_id = end_value = None
    if want_ids:
        trace_id = PyBytes_FromStringAndSize(<const char*>buf + trace_start, 16)
        span_id = PyBytes_FromStringAndSize(<const char*>buf + span_start, 8)
        end_value = end_ns
    return (name, kind, status, trace_state, duration, end_value, trace_id, span_id, strings, start, end)


def scan(bytes data, tuple slot_names, bint want_ids, double divisor, object slow):
    """Serialized ``ExportTraceServiceRequest`` -> [(resource bytes, [span tuples])], or None.

    ``slot_names``: the dimension names (UTF-8) whose key strings each span tuple carries;
    ``divisor``: nanoseconds per histogram unit;
    ``slow(value bytes)``: the key string of a serialized AnyValue the scanner does not render.
    Every read is bounds-checked; nothing here raises on bad bytes.
    """
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t stop, inner, inner_stop, scope_pos, scope_stop, span_stop
    cdef Py_ssize_t resource_start, resource_stop
    cdef uint64_t number
    cdef int wire
    cdef bint resource_seen
    cdef Py_ssize_t slot_count = len(slot_names)
    cdef list result = []
    cdef list spans
    for name in slot_names:
        if not isinstance(name, bytes):
            raise TypeError("slot names are bytes")
    while pos < end:
        if _tag(buf, end, &pos, &number, &wire) < 0:
            return None
        if number != 1:
            if _skip(buf, end, &pos, wire) < 0:
                return None
            continue
        if wire != 2 or _length(buf, end, &pos, &stop) < 0:
            return None
        # ResourceSpans
        inner = pos
        resource_seen = False
        resource_start = resource_stop = 0
        spans = []
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
                    resource_start, resource_stop = inner, inner_stop
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
                                span = _scan_span(
                                    buf, scope_pos, span_stop, slot_names, slot_count, want_ids, divisor, slow
                                )
                                if span is None:
                                    return None
                                spans.append(span)
                            scope_pos = span_stop
                        elif _skip(buf, scope_stop, &scope_pos, wire) < 0:
                            return None
                inner = inner_stop
            elif _skip(buf, stop, &inner, wire) < 0:
                return None
        result.append(
            (PyBytes_FromStringAndSize(<const char*>buf + resource_start, resource_stop - resource_start), spans)
        )
        pos = stop
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


def fold(processor, list scanned, bytes data, str tenant, object stats, object parse_span):
    """Aggregate scanned spans into ``processor``'s accumulators exactly as its ``_observe_spans``.

    Mirrors ``SpanMetricsProcessor.consume`` for the configurations ``native_unsupported`` passes
    (no globs, events, scopes, sampling method).
    """
    now = processor._clock()
    work = []
    pending = processor._pending
    for resource_bytes, spans in scanned:
        resource = processor._resource_from_bytes(resource_bytes)
        if resource is None:
            stats.skipped_no_service += len(spans)
            continue
        accumulator = pending.get((tenant, resource.resource_id))
        if accumulator is None:
            accumulator = pending[(tenant, resource.resource_id)] = processor._new_accumulator(resource)
        if spans:
            work.append((accumulator, resource, spans))
            stats.spans += len(spans)
    if not work:
        return
    cdef Py_ssize_t slot
    cdef tuple bounds = processor._bounds
    cdef Py_ssize_t bound_count = len(bounds)
    cdef double* bound_values = <double*>malloc((bound_count + 1) * sizeof(double))
    if bound_values == NULL:
        raise MemoryError()
    for slot in range(bound_count):
        bound_values[slot] = bounds[slot]
    try:
        _fold_spans(
            processor, work, data, tenant, stats, parse_span, now, bound_values, bound_count
        )
    finally:
        free(bound_values)


cdef _fold_spans(
    processor, list work, bytes data, str tenant, object stats, object parse_span, object now,
    const double* bound_values, Py_ssize_t bound_count,
):
    cdef bint include_service = processor._include_service
    cdef bint include_name = processor._include_name
    cdef bint include_kind = processor._include_kind
    cdef bint include_status = processor._include_status
    cdef bint no_exclusions = processor._no_exclusions
    cdef Py_ssize_t slot_count = len(processor._slot_names)
    cdef bint only_base_slots = processor._only_base_slots
    cdef list base_slots = processor._base_slots
    cdef list calls_slots = processor._calls_slots
    cdef list histogram_slots = processor._histogram_slots
    cdef bint histogram_enabled = processor._histogram_enabled
    cdef bint paired = processor._paired
    cdef Py_ssize_t max_exemplars = processor._exemplars
    cdef Py_ssize_t slot
    weight_of = processor._weight
    new_series = processor._new_series
    calls_name = processor.calls_name
    duration_name = processor.duration_name
    calls_extra = processor._calls_extra
    histogram_extra = processor._histogram_extra
    calls_globs = processor._calls_globs
    histogram_globs = processor._histogram_globs
    max_time = processor._MAX_TIME_NS

    for accumulator, resource, spans in work:
        service = resource.service_name if include_service else None
        fallback = resource.fallback
        calls = accumulator.calls
        durations = accumulator.duration
        for span in spans:
            name, kind, status, trace_state, duration, end, trace_id, span_id, strings, offset, stop = span
            if not no_exclusions:
                name = name if include_name else None
                kind = kind if include_kind else None
                status = status if include_status else None
            if slot_count:
                # The scanned list is this span's own: the resource's fallbacks fill its gaps.
                for slot in range(slot_count):
                    if strings[slot] is None:
                        strings[slot] = fallback[slot]
                if only_base_slots:
                    key = (service, (), name, kind, status, *strings)
                else:
                    key = (service, (), name, kind, status, *[strings[i] for i in base_slots])
            else:
                key = (service, (), name, kind, status)
            weight = weight_of(trace_state) if trace_state else 1

            if paired:
                series = None
                histogram = durations.get(key)
                if histogram is None:
                    histogram = new_series(
                        tenant, accumulator, resource, durations, duration_name, key,
                        parse_span(data[offset:stop]), (), histogram_extra, histogram_globs, None,
                        now, stats,
                    )
            else:
                calls_key = key + tuple([strings[i] for i in calls_slots]) if calls_slots else key
                series = calls.get(calls_key)
                if series is None:
                    series = new_series(
                        tenant, accumulator, resource, calls, calls_name, calls_key,
                        parse_span(data[offset:stop]), (), calls_extra, calls_globs, None, now, stats,
                    )
                series.count += weight
                series.last_ns = now
                histogram = None
                if histogram_enabled:
                    if histogram_slots:
                        key = key + tuple([strings[i] for i in histogram_slots])
                    histogram = durations.get(key)
                    if histogram is None:
                        histogram = new_series(
                            tenant, accumulator, resource, durations, duration_name, key,
                            parse_span(data[offset:stop]), (), histogram_extra, histogram_globs, None,
                            now, stats,
                        )

            if histogram is not None:
                histogram.count += weight
                histogram.sum += duration * weight
                histogram.last_ns = now
                buckets = histogram.buckets
                if buckets is not None:
                    buckets[_bisect_left(bound_values, bound_count, duration)] += weight
                else:
                    exp = histogram.exp
                    if exp is not None:
                        exp.record(duration, weight)

            if max_exemplars:
                exemplar = (trace_id, span_id, duration, end if 0 < end < max_time else now)
                if histogram is not None and len(histogram.exemplars) < max_exemplars:
                    histogram.exemplars.append(exemplar)
                if series is not None and len(series.exemplars) < max_exemplars:
                    series.exemplars.append(exemplar)



# ------------------------------------------------------------------------------ service graphs

cdef class StringValue:
    """A string ``AnyValue`` (non-empty, valid UTF-8) without a protobuf message: what the
    service graphs read of one (``string_value``, ``WhichOneof("value")``)."""

    cdef readonly str string_value

    def __cinit__(self, str value):
        self.string_value = value

    def WhichOneof(self, str name):
        return "string_value"


cdef class EdgeSpan:
    """A client, server, producer or consumer span as the service graphs read it: the fields of a
    batch-schema ``Span`` they use, ``attributes`` holding only the names asked for. It is its own
    ``status`` (``span.status.code``), so that no object is built for it."""

    cdef readonly int kind
    cdef readonly bytes trace_id
    cdef readonly bytes span_id
    cdef readonly bytes parent_span_id
    cdef uint64_t start_ns
    cdef uint64_t end_ns
    cdef readonly int code
    cdef readonly dict attributes

    @property
    def start_time_unix_nano(self):
        return self.start_ns

    @property
    def end_time_unix_nano(self):
        return self.end_ns

    @property
    def status(self):
        return self


cdef object _edge_value(const unsigned char* buf, Py_ssize_t start, Py_ssize_t stop, object parse_value):
    """A map entry's ``AnyValue``: a :class:`StringValue` for a plain non-empty string, else the
    protobuf message; None when the scanner does not read it exactly as protobuf would, or
    protobuf refuses it (the caller declines the record)."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t body_stop
    cdef uint64_t number
    cdef int wire
    if _tag(buf, stop, &pos, &number, &wire) == 0 and number == 1 and wire == 2:
        if _length(buf, stop, &pos, &body_stop) == 0 and body_stop == stop and body_stop > pos:
            text = _text(buf, pos, body_stop)
            if text is None:
                return None
            return StringValue(text)
    try:
        return parse_value(PyBytes_FromStringAndSize(<const char*>buf + start, stop - start))
    except Exception:
        return None  # protobuf refuses it: so would the record's parse (the pure path decides)


cdef object _scan_edge_span(
    const unsigned char* buf,
    Py_ssize_t start,
    Py_ssize_t end,
    tuple names,
    tuple keys,
    Py_ssize_t name_count,
    object parse_value,
):
    """One span as an :class:`EdgeSpan`, False when it is not an edge span (internal or
    unspecified kind), None when not handled."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t stop, inner, inner_stop, key_start, key_stop, value_start, value_stop
    cdef uint64_t number, value
    cdef int wire
    cdef Py_ssize_t trace_start = 0, trace_stop = 0, span_start = 0, span_stop = 0
    cdef Py_ssize_t parent_start = 0, parent_stop = 0
    cdef int32_t kind = 0, status = 0
    cdef uint64_t start_ns = 0, end_ns = 0
    cdef bint status_seen = False
    cdef bint has_key, has_value
    cdef Py_ssize_t index
    cdef bytes name_bytes
    cdef dict attributes = None
    # The attribute entries asked for, kept as byte ranges until the kind is known.
    cdef list found = None
    while pos < end:
        if _tag(buf, end, &pos, &number, &wire) < 0:
            return None
        if number == 1 or number == 2 or number == 4:
            if wire != 2 or _length(buf, end, &pos, &stop) < 0:
                return None
            if number == 1:
                trace_start, trace_stop = pos, stop
            elif number == 2:
                span_start, span_stop = pos, stop
            else:
                parent_start, parent_stop = pos, stop
            pos = stop
        elif number == 6:
            if wire != 0 or _varint(buf, end, &pos, &value) < 0:
                return None
            kind = <int32_t>value
        elif number == 7 or number == 8:
            if wire != 1 or end - pos < 8:
                return None
            if number == 7:
                start_ns = _fixed64(buf + pos)
            else:
                end_ns = _fixed64(buf + pos)
            pos += 8
        elif number == 9:
            if wire != 2 or _length(buf, end, &pos, &stop) < 0:
                return None
            inner = pos
            has_key = has_value = False
            key_start = key_stop = value_start = value_stop = 0
            while inner < stop:
                if _tag(buf, stop, &inner, &number, &wire) < 0:
                    return None
                if number == 1 or number == 2:
                    if wire != 2 or _length(buf, stop, &inner, &inner_stop) < 0:
                        return None
                    if number == 1:
                        if has_key:
                            return None
                        has_key = True
                        key_start, key_stop = inner, inner_stop
                    else:
                        if has_value:
                            return None
                        has_value = True
                        value_start, value_stop = inner, inner_stop
                    inner = inner_stop
                else:
                    return None  # protobuf keeps a map entry with unknown fields out of the map
            pos = stop
            for index in range(name_count):
                name_bytes = <bytes>keys[index]
                if PyBytes_GET_SIZE(name_bytes) == key_stop - key_start and memcmp(
                    PyBytes_AS_STRING(name_bytes), buf + key_start, key_stop - key_start
                ) == 0:
                    if found is None:
                        found = []
                    found.append((index, value_start, value_stop))
                    break
        elif number == 15:
            if wire != 2 or status_seen or _length(buf, end, &pos, &stop) < 0:
                return None
            status_seen = True
            inner = pos
            while inner < stop:
                if _tag(buf, stop, &inner, &number, &wire) < 0:
                    return None
                if number == 3:
                    if wire != 0 or _varint(buf, stop, &inner, &value) < 0:
                        return None
                    status = <int32_t>value
                elif number == 2:
                    if wire != 2 or _length(buf, stop, &inner, &inner_stop) < 0:
                        return None
                    inner = inner_stop
                elif _skip(buf, stop, &inner, wire) < 0:
                    return None
            pos = stop
        elif number == 3 or number == 5 or number == 11 or number == 13:
            if wire != 2 or _skip(buf, end, &pos, wire) < 0:
                return None
        elif number == 10 or number == 12 or number == 14:
            if wire != 0 or _skip(buf, end, &pos, wire) < 0:
                return None
        elif number == 16:
            if wire != 5 or _skip(buf, end, &pos, wire) < 0:
                return None
        elif _skip(buf, end, &pos, wire) < 0:
            return None
    # The pure path refuses the whole record for a span without valid ids (worker.otlp.ids).
    if not _valid_id(buf, trace_start, trace_stop, 16) or not _valid_id(buf, span_start, span_stop, 8):
        return None
    if kind < 2 or kind > 5:
        return False
    cdef EdgeSpan span = EdgeSpan.__new__(EdgeSpan)
    span.kind = kind
    span.code = status
    span.trace_id = PyBytes_FromStringAndSize(<const char*>buf + trace_start, 16)
    span.span_id = PyBytes_FromStringAndSize(<const char*>buf + span_start, 8)
    span.parent_span_id = PyBytes_FromStringAndSize(<const char*>buf + parent_start, parent_stop - parent_start)
    span.start_ns = start_ns
    span.end_ns = end_ns
    attributes = {}
    if found is not None:
        # A map: the last entry of a key wins, as protobuf's map parse.
        for index, value_start, value_stop in found:
            value_object = _edge_value(buf, value_start, value_stop, parse_value)
            if value_object is None:
                return None
            attributes[names[index]] = value_object
    span.attributes = attributes
    return span


def scan_edges(bytes data, tuple names, object parse_value):
    """Serialized ``ExportTraceServiceRequest`` -> [(resource bytes, spans, [EdgeSpan])], or None.

    ``spans`` counts every span of the resource (the service graphs skip them all when it has no
    service name); only client, server, producer and consumer spans become an :class:`EdgeSpan`,
    in order, with the attributes ``names`` (str) asks for; ``parse_value(bytes)`` is protobuf's
    ``AnyValue`` parse. Every read is bounds-checked; nothing here raises on bad bytes.
    """
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t stop, inner, inner_stop, scope_pos, scope_stop, span_stop
    cdef Py_ssize_t resource_start, resource_stop
    cdef uint64_t number
    cdef int wire
    cdef bint resource_seen
    cdef Py_ssize_t count
    cdef Py_ssize_t name_count = len(names)
    cdef tuple keys = tuple([name.encode() for name in names])
    cdef list result = []
    cdef list spans
    while pos < end:
        if _tag(buf, end, &pos, &number, &wire) < 0:
            return None
        if number != 1:
            if _skip(buf, end, &pos, wire) < 0:
                return None
            continue
        if wire != 2 or _length(buf, end, &pos, &stop) < 0:
            return None
        # ResourceSpans
        inner = pos
        resource_seen = False
        resource_start = resource_stop = 0
        spans = []
        count = 0
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
                    resource_start, resource_stop = inner, inner_stop
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
                                span = _scan_edge_span(
                                    buf, scope_pos, span_stop, names, keys, name_count, parse_value
                                )
                                if span is None:
                                    return None
                                count += 1
                                if span is not False:
                                    spans.append(span)
                            scope_pos = span_stop
                        elif _skip(buf, scope_stop, &scope_pos, wire) < 0:
                            return None
                inner = inner_stop
            elif _skip(buf, stop, &inner, wire) < 0:
                return None
        result.append(
            (
                PyBytes_FromStringAndSize(<const char*>buf + resource_start, resource_stop - resource_start),
                count,
                spans,
            )
        )
        pos = stop
    return result



cdef inline object _seconds(uint64_t start, uint64_t end):
    """The pure path's ``(end - start) / 1e9 if end > start else 0.0``."""
    if end <= start:
        return 0.0
    if end - start < (<uint64_t>1 << 53):
        return <double>(end - start) / 1e9
    return (<object>end - <object>start) / 1e9


cdef object _span_attribute(tuple names, dict attributes, object tempo_string):
    """``attributes.span_attribute``: the first of ``names`` on the span, as a Tempo string."""
    for name in names:
        found = attributes.get(name)
        if found is not None:
            return found.string_value or tempo_string(found)
    return None


cdef object _find_attribute(tuple names, dict resource_values, dict attributes, object tempo_string):
    """``attributes.find_attribute``: the first of ``names``, resource first then span."""
    if not resource_values:
        for name in names:
            found = attributes.get(name)
            if found is not None:
                return name, found.string_value or tempo_string(found)
        return None
    for name in names:
        value = resource_values.get(name)
        if value is not None:
            return name, value
        found = attributes.get(name)
        if found is not None:
            return name, found.string_value or tempo_string(found)
    return None


cdef class _Completion:
    """What ``ServiceGraphsProcessor._complete`` reads of the processor, read once per run."""

    cdef object processor
    cdef tuple label_names
    cdef bint messaging_latency
    cdef double* bounds
    cdef Py_ssize_t bound_count
    cdef object failed_metric
    cdef object messaging_metric
    cdef Py_ssize_t native_max_exemplars

    def __cinit__(self, processor):
        from worker.processors.servicegraphs import processor as module

        self.processor = processor
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

    def __dealloc__(self):
        free(self.bounds)


cdef _complete(_Completion completion, object interval, tuple key, object edge, object now):
    """``ServiceGraphsProcessor._complete`` of a completed edge with a multiplier of 1."""
    client = edge.client
    server_name = edge.server
    connection_type = edge.connection_type
    if completion.label_names:
        dimensions = edge.dimensions or {}
        labels = (
            client, server_name, connection_type, "", *[dimensions.get(name, "") for name in completion.label_names]
        )
    else:
        labels = (client, server_name, connection_type, "")
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
        if not any(trace_id):
            trace_id = b""
        _record_latency(completion, server, edge.server_seconds, trace_id, now)
        _record_latency(completion, group.client, edge.client_seconds, trace_id, now)
        if (
            completion.messaging_latency
            and connection_type == "messaging_system"
            and edge.server_start_ns > edge.client_end_ns
        ):
            messaging = group.messaging
            if messaging is None:
                messaging = group.messaging = completion.processor._latency_series(
                    completion.messaging_metric, group.attributes, group.body, now
                )
            lag = (edge.server_start_ns - edge.client_end_ns) / 1e9
            _record_latency(completion, messaging, lag, trace_id, now)
    info = group.info
    if info is not None:
        info.count = 1
        info.last_ns = now


cdef _record_latency(_Completion completion, object latency, object seconds, bytes trace_id, object now):
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


def observe_edges(
    processor, list work, dict edges, Py_ssize_t capacity, object interval, object now, object stats,
    object edge_class, object tempo_string, object dropped_metric,
):
    """``ServiceGraphsProcessor._observe`` over :class:`EdgeSpan` work, without filter policies
    or a span multiplier (the configurations the edge scan serves): the same edges, in the same
    order, through the same ``_complete`` and ``_count``."""
    deadline = now + processor._wait_ns
    complete = processor._complete
    cdef _Completion completion = _Completion(processor)
    count = processor._count
    set_dimensions = processor._set_dimensions
    database_server = processor._database_server
    cdef tuple peer_attributes = processor._peer_attributes
    cdef tuple database_attributes = processor._database_attributes
    cdef bint has_dimensions = bool(processor._dimensions)
    cdef Py_ssize_t spans_seen = 0, completed = 0, new_edges = 0, dropped = 0
    cdef EdgeSpan span
    cdef int kind
    cdef bint client, stored
    cdef dict attributes
    try:
        for resource, spans in work:
            service = resource.service
            resource_values = resource.values
            for span in spans:
                kind = span.kind
                client = kind == 3 or kind == 4
                spans_seen += 1
                key = (span.trace_id, span.span_id if client else span.parent_span_id)
                edge = edges.get(key)
                stored = edge is not None
                if edge is None:
                    edge = edge_class(deadline)
                attributes = span.attributes
                if client:
                    # Tempo's updateClientEdge, upsertDatabaseRequest and upsertPeerNode.
                    edge.connection_type = "messaging_system" if kind == 4 else ""
                    edge.client = service
                    seconds = _seconds(span.start_ns, span.end_ns)
                    edge.client_seconds = seconds
                    edge.client_end_ns = span.end_ns
                    if span.code == 2:
                        edge.failed = True
                    if has_dimensions:
                        set_dimensions(edge, resource_values, attributes, client=True)
                    peer = _span_attribute(peer_attributes, attributes, tempo_string)
                    if peer is not None:
                        edge.peer = peer
                    database = _find_attribute(database_attributes, resource_values, attributes, tempo_string)
                    if database is not None:
                        edge.connection_type = "database"
                        edge.server_seconds = seconds
                        server = database_server(resource_values, attributes)
                        if server is not None:
                            edge.server = server
                        elif database[1]:
                            edge.server = database[1]
                else:
                    edge.connection_type = "messaging_system" if kind == 5 else ""
                    edge.server = service
                    edge.server_seconds = _seconds(span.start_ns, span.end_ns)
                    edge.server_start_ns = span.start_ns
                    if span.code == 2:
                        edge.failed = True
                    if has_dimensions:
                        set_dimensions(edge, resource_values, attributes, client=False)
                    peer = _span_attribute(peer_attributes, attributes, tempo_string)
                    if peer is not None:
                        edge.peer = peer
                edge.span_kind = kind
                if edge.client and edge.server:
                    if stored:
                        del edges[key]
                    else:
                        new_edges += 1
                    if edge.multiplier == 1.0:
                        _complete(completion, interval, key, edge, now)
                    else:  # a half-edge restored from another configuration's handover
                        complete(interval, key, edge, "", now)
                    completed += 1
                elif not stored:
                    if len(edges) >= capacity:
                        dropped += 1
                        count(interval, dropped_metric, "client" if client else "server", service, now)
                    else:
                        edges[key] = edge
                        new_edges += 1
    finally:
        stats.spans += spans_seen
        stats.edges += completed
        stats.new_edges += new_edges
        stats.dropped += dropped
