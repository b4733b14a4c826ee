# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled OTLP data points of a flush: Sum, Histogram and Gauge points written in C, grouped by
resource as ``metrics_encoder`` groups them; any other series is handed to the pure encoder."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

from worker.model.series import Series
from worker.model.series_slots cimport slot_offset

# A series is written here only when every value it holds is one the pure encoder writes the
# same way (exact ints within their field, floats, bytes ids, a list of bytes attribute parts);
# for anything else _point returns 0 and the caller runs the pure encoder on that series
# (which writes it, or raises what it raises). Nothing is cached here: the arena of data points
# and the requests live for one call.

cdef enum:
    KIND_OTHER = 0
    KIND_SUM = 1
    KIND_HISTOGRAM = 2
    KIND_INFO = 4
    #: Bytes kept before a length-delimited body for its tag and varint length.
    HEAD_ROOM = 3


cdef struct Buf:
    unsigned char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _reserve(Buf* buf, Py_ssize_t more) except -1:
    cdef Py_ssize_t need = buf.size + more
    cdef Py_ssize_t cap
    cdef unsigned char* grown
    if need <= buf.cap:
        return 0
    cap = buf.cap * 2 if buf.cap else 4096
    while cap < need:
        cap *= 2
    grown = <unsigned char*>realloc(buf.data, cap)
    if grown == NULL:
        raise MemoryError()
    buf.data = grown
    buf.cap = cap
    return 0


cdef inline void _put_fixed64(unsigned char* out, uint64_t value) noexcept nogil:
    """8 little-endian bytes."""
    cdef int i
    for i in range(8):
        out[i] = <unsigned char>(value >> (8 * i))


cdef inline int _fixed64(Buf* buf, unsigned char tag, uint64_t value) except -1:
    """``tag`` then 8 little-endian bytes."""
    _reserve(buf, 9)
    buf.data[buf.size] = tag
    _put_fixed64(buf.data + buf.size + 1, value)
    buf.size += 9
    return 0


cdef inline int _double(Buf* buf, unsigned char tag, double value) except -1:
    cdef uint64_t bits = 0
    memcpy(&bits, &value, 8)
    return _fixed64(buf, tag, bits)


cdef inline int _varint_size(uint64_t value) noexcept nogil:
    cdef int size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


cdef inline void _put_varint(unsigned char* out, uint64_t value) noexcept nogil:
    cdef int i = 0
    while value >= 0x80:
        out[i] = <unsigned char>((value & 0x7F) | 0x80)
        value >>= 7
        i += 1
    out[i] = <unsigned char>value


cdef inline int _write(Buf* buf, const unsigned char* data, Py_ssize_t size) except -1:
    _reserve(buf, size)
    memcpy(buf.data + buf.size, data, size)
    buf.size += size
    return 0


cdef inline int _message(Buf* buf, unsigned char tag, bytes body) except -1:
    """``tag``, the varint length of ``body``, ``body``."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
    _reserve(buf, 11 + size)
    buf.data[buf.size] = tag
    _put_varint(buf.data + buf.size + 1, <uint64_t>size)
    buf.size += 1 + _varint_size(<uint64_t>size)
    memcpy(buf.data + buf.size, PyBytes_AS_STRING(body), size)
    buf.size += size
    return 0


cdef inline Py_ssize_t _open(Buf* buf) except -1:
    """Start a length-delimited field: room for its tag and a 2-byte length (a body of 128 to
    16,383 bytes, as most data points are); returns where it starts."""
    cdef Py_ssize_t start = buf.size
    _reserve(buf, HEAD_ROOM)
    buf.size += HEAD_ROOM
    return start


cdef inline int _close(Buf* buf, Py_ssize_t start, unsigned char tag) except -1:
    """End the field opened at ``start``: its tag and length right before its body (moved when
    the length takes other than 2 bytes)."""
    cdef Py_ssize_t body = start + HEAD_ROOM
    cdef Py_ssize_t size = buf.size - body
    cdef int width = _varint_size(<uint64_t>size)
    if width != HEAD_ROOM - 1:
        _reserve(buf, width)  # a longer length moves the body further
        memmove(buf.data + start + 1 + width, buf.data + body, size)
    buf.data[start] = tag
    _put_varint(buf.data + start + 1, <uint64_t>size)
    buf.size = start + 1 + width + size
    return 0


# ---------------------------------------------------------------------------------- series fields

# A Series is a slots dataclass: its fields are read at their slot offsets (what the member
# descriptor's get does, without the type lookup); any other object, an unset slot, or a layout
# other than expected goes through getattr.

cdef object _SERIES = Series


cdef Py_ssize_t _offset(str name):
    return slot_offset(_SERIES, name)


cdef Py_ssize_t F_RESOURCE_ID = _offset("resource_id")
cdef Py_ssize_t F_METRIC = _offset("metric")
cdef Py_ssize_t F_COMPANION = _offset("companion")
cdef Py_ssize_t F_START_NS = _offset("start_ns")
cdef Py_ssize_t F_ZERO_NS = _offset("zero_ns")
cdef Py_ssize_t F_COUNT = _offset("count")
cdef Py_ssize_t F_SUM = _offset("sum")
cdef Py_ssize_t F_BUCKETS = _offset("buckets")
cdef Py_ssize_t F_EXEMPLARS = _offset("exemplars")
cdef Py_ssize_t F_ATTRIBUTE_PARTS = _offset("attribute_parts")


def fields_at_slots() -> bool:
    """Whether every Series field this module reads is read at its slot (else by getattr)."""
    return min(
        F_RESOURCE_ID, F_METRIC, F_COMPANION, F_START_NS, F_ZERO_NS, F_COUNT, F_SUM, F_BUCKETS,
        F_EXEMPLARS, F_ATTRIBUTE_PARTS,
    ) >= 0


cdef inline object _field(object item, Py_ssize_t offset, str name):
    """``getattr(item, name)``, read at the slot when ``item`` is exactly a Series."""
    cdef PyObject* value
    if offset >= 0 and type(item) is _SERIES:
        value = (<PyObject**>((<char*><PyObject*>item) + offset))[0]
        if value != NULL:
            return <object>value
    return getattr(item, name)


# ---------------------------------------------------------------------------------- values


cdef inline bint _uint64(object value, uint64_t* out):
    """An exact int within uint64 (what ``struct.pack('<Q')`` writes without complaint)."""
    if type(value) is not int:
        return False
    try:
        out[0] = value
    except OverflowError:
        return False
    return True


cdef inline bint _int64(object value, int64_t* out):
    if type(value) is not int:
        return False
    try:
        out[0] = value
    except OverflowError:
        return False
    return True


cdef inline bint _float(object value, double* out):
    """A float, or an int ``struct.pack('<d')`` converts (the same rounding as ``float()``)."""
    if type(value) is float:
        out[0] = PyFloat_AS_DOUBLE(value)
        return True
    if type(value) is int:
        try:
            out[0] = float(value)
        except OverflowError:
            return False
        return True
    return False


cdef class _Plan:
    """What the C writer needs of one metric's ``metrics_encoder._Plan``."""

    cdef object plan
    cdef int kind
    cdef bytes tag
    cdef object cache
    cdef bytes bounds_field
    cdef Py_ssize_t buckets
    cdef uint64_t now_ns
    cdef object zero_before

    def __init__(self, plan: object, uint64_t now_ns) -> None:
        native = plan.native
        self.plan = plan
        self.now_ns = now_ns
        self.zero_before = plan.zero_before
        if native is None:
            self.kind = KIND_OTHER
            return
        kind, tag, cache, bounds_field, buckets = native
        self.kind = kind
        self.tag = tag
        self.cache = cache
        self.bounds_field = bounds_field
        self.buckets = buckets


cdef object _attributes(_Plan plan, object item, object point_attributes):
    """The point's ``attributes`` fields, as ``metrics_encoder._point_attributes`` writes them:
    the series' list of parts when each is bytes (written by :func:`_put_attributes` as they
    are), else the bytes the pure function returns (None for anything else: the pure encoder
    writes the series)."""
    cdef object parts = _field(item, F_ATTRIBUTE_PARTS, "attribute_parts")
    if type(parts) is list:
        for part in <list>parts:
            if type(part) is not bytes:
                break
        else:
            return parts
    blob = point_attributes(plan.tag, item, plan.cache)
    return blob if type(blob) is bytes else None


cdef int _put_attributes(Buf* buf, _Plan plan, object attributes) except -1:
    """Write what :func:`_attributes` returned: the tag before each part, or the bytes."""
    cdef unsigned char tag
    if type(attributes) is bytes:
        return _write(buf, <const unsigned char*>PyBytes_AS_STRING(attributes), PyBytes_GET_SIZE(attributes))
    tag = <unsigned char>PyBytes_AS_STRING(plan.tag)[0]
    for part in <list>attributes:
        if type(part) is not bytes:  # never: checked, and no Python code ran since
            raise TypeError("an attribute part must be bytes")
        _reserve(buf, 1 + PyBytes_GET_SIZE(part))
        buf.data[buf.size] = tag
        memcpy(buf.data + buf.size + 1, PyBytes_AS_STRING(part), PyBytes_GET_SIZE(part))
        buf.size += 1 + PyBytes_GET_SIZE(part)
    return 0


cdef int _exemplars(Buf* buf, unsigned char tag, object exemplars, uint64_t now_ns) except -1:
    """Exemplar{time=2 (the flush time), as_double=3, span_id=4, trace_id=5} fields; 0 (the point
    is dropped) when one is not a 4-tuple of bytes, bytes, float, any; 1 when written."""
    cdef Py_ssize_t start
    cdef double value = 0.0
    cdef object trace_id
    cdef object span_id
    if type(exemplars) is not list:
        return False
    for exemplar in <list>exemplars:
        if type(exemplar) is not tuple or len(<tuple>exemplar) != 4:
            return False
        trace_id = (<tuple>exemplar)[0]
        span_id = (<tuple>exemplar)[1]
        if type(trace_id) is not bytes or type(span_id) is not bytes:
            return False
        if not _float((<tuple>exemplar)[2], &value):
            return False
        start = _open(buf)
        if now_ns:
            _fixed64(buf, 0x11, now_ns)
        _double(buf, 0x19, value)
        if PyBytes_GET_SIZE(span_id):
            _message(buf, 0x22, span_id)
        if PyBytes_GET_SIZE(trace_id):
            _message(buf, 0x2a, trace_id)
        _close(buf, start, tag)
    return True


cdef inline int _zeros(Buf* buf, Py_ssize_t count) except -1:
    """HistogramDataPoint ``bucket_counts`` (6, packed fixed64) of ``count`` zeros."""
    cdef Py_ssize_t size = 8 * count
    _reserve(buf, 11 + size)
    buf.data[buf.size] = 0x32
    _put_varint(buf.data + buf.size + 1, <uint64_t>size)
    buf.size += 1 + _varint_size(<uint64_t>size)
    for i in range(size):
        buf.data[buf.size + i] = 0
    buf.size += size
    return 0


cdef int _sum_point(Buf* buf, _Plan plan, object item, object blob, uint64_t start, bint zero, uint64_t zero_ns) except -1:
    """NumberDataPoint{start=2, time=3, exemplars=5, as_int=6, attributes=7}, after its zero point."""
    cdef int64_t count = 0
    cdef Py_ssize_t opened
    if not _int64(_field(item, F_COUNT, "count"), &count):
        return False
    if zero:
        opened = _open(buf)
        if start:
            _fixed64(buf, 0x11, start)
        _fixed64(buf, 0x19, zero_ns)
        _fixed64(buf, 0x31, 0)
        _put_attributes(buf, plan, blob)
        _close(buf, opened, 0x0a)
    opened = _open(buf)
    if start:
        _fixed64(buf, 0x11, start)
    if plan.now_ns:
        _fixed64(buf, 0x19, plan.now_ns)
    exemplars = _field(item, F_EXEMPLARS, "exemplars")
    if exemplars:
        if not _exemplars(buf, 0x2a, exemplars, plan.now_ns):
            return False
    _fixed64(buf, 0x31, <uint64_t>count)
    _put_attributes(buf, plan, blob)
    _close(buf, opened, 0x0a)
    return True


cdef int _histogram_point(Buf* buf, _Plan plan, object item, object blob, uint64_t start, bint zero, uint64_t zero_ns) except -1:
    """HistogramDataPoint{start=2, time=3, count=4, sum=5, bucket_counts=6, explicit_bounds=7,
    exemplars=8, attributes=9}, after its zero point (no count, no sum, every bucket 0)."""
    cdef uint64_t count = 0
    cdef uint64_t bucket = 0
    cdef double total = 0.0
    cdef Py_ssize_t opened
    cdef Py_ssize_t buckets_size
    cdef Py_ssize_t i
    cdef object buckets = _field(item, F_BUCKETS, "buckets")
    if not _uint64(_field(item, F_COUNT, "count"), &count) or not _float(_field(item, F_SUM, "sum"), &total):
        return False
    if buckets:
        if type(buckets) is not list:
            return False
        buckets_size = len(<list>buckets)
    else:
        buckets = None
        buckets_size = plan.buckets
    if zero:
        opened = _open(buf)
        if start:
            _fixed64(buf, 0x11, start)
        _fixed64(buf, 0x19, zero_ns)
        _zeros(buf, buckets_size)
        _write(buf, <const unsigned char*>PyBytes_AS_STRING(plan.bounds_field), PyBytes_GET_SIZE(plan.bounds_field))
        _put_attributes(buf, plan, blob)
        _close(buf, opened, 0x0a)
    opened = _open(buf)
    if start:
        _fixed64(buf, 0x11, start)
    if plan.now_ns:
        _fixed64(buf, 0x19, plan.now_ns)
    if count:
        _fixed64(buf, 0x21, count)
    _double(buf, 0x29, total)
    if buckets is None:
        _zeros(buf, buckets_size)
    else:
        _reserve(buf, 11 + 8 * buckets_size)
        buf.data[buf.size] = 0x32
        _put_varint(buf.data + buf.size + 1, <uint64_t>(8 * buckets_size))
        buf.size += 1 + _varint_size(<uint64_t>(8 * buckets_size))
        for i in range(buckets_size):
            if not _uint64((<list>buckets)[i], &bucket):
                return False
            _put_fixed64(buf.data + buf.size, bucket)
            buf.size += 8
    _write(buf, <const unsigned char*>PyBytes_AS_STRING(plan.bounds_field), PyBytes_GET_SIZE(plan.bounds_field))
    exemplars = _field(item, F_EXEMPLARS, "exemplars")
    if exemplars:
        if not _exemplars(buf, 0x42, exemplars, plan.now_ns):
            return False
    _put_attributes(buf, plan, blob)
    _close(buf, opened, 0x0a)
    return True


cdef int _point(Buf* buf, _Plan plan, object item, object point_attributes) except -1:
    """Append ``plan.encode(item)``'s bytes to ``buf`` and return 1, or return 0 with ``buf`` as
    it was: the pure encoder must write this series."""
    cdef uint64_t start = 0
    cdef uint64_t zero_ns = 0
    cdef bint zero = False
    cdef int done
    cdef Py_ssize_t opened
    cdef Py_ssize_t before = buf.size
    cdef object zero_value
    cdef object blob
    if plan.kind == KIND_OTHER:
        return 0
    if plan.kind != KIND_INFO:
        if not _uint64(_field(item, F_START_NS, "start_ns"), &start):
            return 0
        zero_value = _field(item, F_ZERO_NS, "zero_ns")
        if type(zero_value) is not int:
            return 0
        if 0 < zero_value < plan.zero_before:
            zero = True
            if not _uint64(zero_value, &zero_ns):
                return 0
    blob = _attributes(plan, item, point_attributes)
    if blob is None:
        return 0
    if plan.kind == KIND_INFO:
        opened = _open(buf)
        if plan.now_ns:
            _fixed64(buf, 0x19, plan.now_ns)
        _fixed64(buf, 0x31, 1)
        _put_attributes(buf, plan, blob)
        _close(buf, opened, 0x0a)
        done = 1
    elif plan.kind == KIND_SUM:
        done = _sum_point(buf, plan, item, blob, start, zero, zero_ns)
    else:
        done = _histogram_point(buf, plan, item, blob, start, zero, zero_ns)
    if not done:
        buf.size = before
    return done


# ---------------------------------------------------------------------------------- grouping

#: Series between two hand-overs of the GIL: the encoder runs in a thread beside the event loop,
#: which must not wait for a whole slot (a pure-Python loop hands the GIL over every 5 ms; this
#: lets a waiting thread take it at least as often: 1,024 series take well under 5 ms).
cdef Py_ssize_t YIELD_EVERY = 1024


cdef inline void _let_others_run() noexcept:
    """Release the GIL and take it back: a thread waiting for it (the event loop's) runs first."""
    with nogil:
        pass



cdef struct Record:
    Py_ssize_t offset  # of the point's bytes in the call's arena
    Py_ssize_t size  # -1: a series of a metric not described (no point)
    Py_ssize_t metric  # index in the call's metrics
    Py_ssize_t weight  # data points: 2 with a zero point first, 0 when not described


cdef class _Group:
    """One resource's series in arrival order (``metrics_encoder._Resource``)."""

    cdef Record* records
    cdef Py_ssize_t count
    cdef Py_ssize_t cap
    cdef object resource_id

    def __dealloc__(self) -> None:
        free(self.records)

    cdef Record* next(self) except NULL:
        cdef Py_ssize_t cap
        cdef Record* grown
        if self.count == self.cap:
            cap = self.cap * 2 if self.cap else 64
            grown = <Record*>realloc(self.records, cap * sizeof(Record))
            if grown == NULL:
                raise MemoryError()
            self.records = grown
            self.cap = cap
        self.count += 1
        return &self.records[self.count - 1]


cdef class _Metric:
    """A described metric's fixed parts, as ``metrics_encoder._resource_metrics`` writes them."""

    cdef _Plan plan
    cdef bytes header
    cdef unsigned char data_tag
    cdef bytes trailer
    cdef bytes scope
    #: Runs of equal scopes in sort order share this number.
    cdef Py_ssize_t scope_run


cdef inline Py_ssize_t _field_size(Py_ssize_t body) noexcept nogil:
    """A length-delimited field with a one-byte tag and a ``body`` of this size."""
    return 1 + _varint_size(<uint64_t>body) + body


cdef inline unsigned char* _put_head(unsigned char* out, unsigned char tag, Py_ssize_t body) noexcept nogil:
    out[0] = tag
    _put_varint(out + 1, <uint64_t>body)
    return out + 1 + _varint_size(<uint64_t>body)


cdef inline unsigned char* _put_bytes(unsigned char* out, bytes data) noexcept:
    memcpy(out, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    return out + PyBytes_GET_SIZE(data)


cdef class Requests:
    """The requests of one ``encode`` call, built one at a time as they are taken (what
    ``metrics_encoder.encode_requests`` yields, as (data, key, data points) tuples)."""

    cdef Buf arena
    cdef list metrics  # _Metric by index, in (scope, order, name) order
    cdef Py_ssize_t n_metrics
    cdef Py_ssize_t* sizes  # scratch: bytes of points per metric in a piece (-1: none)
    cdef unsigned char** cursors  # scratch: where a metric's next point goes
    cdef list groups
    cdef Py_ssize_t next_group
    cdef object resource_body
    cdef Py_ssize_t max_bytes
    # The current resource's pieces: (resource, group, start, end, body size, points), in order.
    cdef list pieces
    cdef Py_ssize_t next_piece
    cdef bytes resource
    cdef _Group group
    # The request being filled.
    cdef list parts
    cdef Py_ssize_t size
    cdef Py_ssize_t carried
    cdef object key

    def __dealloc__(self) -> None:
        free(self.arena.data)
        free(self.sizes)
        free(self.cursors)

    def __iter__(self) -> Requests:
        return self

    cdef Py_ssize_t _piece_size(self, bytes resource, _Group group, Py_ssize_t start, Py_ssize_t end, Py_ssize_t* points):
        """The ResourceMetrics body size of records [start, end), and its data points."""
        cdef Py_ssize_t i, index, scope_body = 0, total, run = -1, body
        cdef Record* record
        cdef _Metric metric
        for i in range(self.n_metrics):
            self.sizes[i] = -1
        points[0] = 0
        for i in range(start, end):
            record = &group.records[i]
            if record.size < 0:
                continue
            points[0] += record.weight
            if self.sizes[record.metric] < 0:
                self.sizes[record.metric] = 0
            self.sizes[record.metric] += record.size
        total = _field_size(PyBytes_GET_SIZE(resource)) if PyBytes_GET_SIZE(resource) else 0
        for index in range(self.n_metrics):
            if self.sizes[index] < 0:
                continue
            metric = <_Metric>self.metrics[index]
            if metric.scope_run != run:
                if run >= 0:
                    total += _field_size(scope_body)
                run = metric.scope_run
                body = _field_size(PyBytes_GET_SIZE(metric.scope)) if PyBytes_GET_SIZE(metric.scope) else 0
                scope_body = _field_size(body)
            body = PyBytes_GET_SIZE(metric.header) + _field_size(self.sizes[index] + PyBytes_GET_SIZE(metric.trailer))
            scope_body += _field_size(body)
        if run >= 0:
            total += _field_size(scope_body)
        return total

    cdef unsigned char* _write_piece(self, unsigned char* out, bytes resource, _Group group, Py_ssize_t start, Py_ssize_t end):
        """Write the ResourceMetrics body of records [start, end) (sizes as ``_piece_size``)."""
        cdef Py_ssize_t i, j, index, run = -1, body, scope_body
        cdef Record* record
        cdef _Metric metric
        cdef _Metric other
        cdef Py_ssize_t points
        self._piece_size(resource, group, start, end, &points)  # fills self.sizes
        if PyBytes_GET_SIZE(resource):
            out = _put_head(out, 0x0a, PyBytes_GET_SIZE(resource))
            out = _put_bytes(out, resource)
        for index in range(self.n_metrics):
            if self.sizes[index] < 0:
                continue
            metric = <_Metric>self.metrics[index]
            if metric.scope_run != run:
                run = metric.scope_run
                # This scope's ScopeMetrics: its size over the run's metrics present here.
                body = _field_size(PyBytes_GET_SIZE(metric.scope)) if PyBytes_GET_SIZE(metric.scope) else 0
                scope_body = _field_size(body)
                for j in range(index, self.n_metrics):
                    other = <_Metric>self.metrics[j]
                    if other.scope_run != run:
                        break
                    if self.sizes[j] < 0:
                        continue
                    scope_body += _field_size(
                        PyBytes_GET_SIZE(other.header)
                        + _field_size(self.sizes[j] + PyBytes_GET_SIZE(other.trailer))
                    )
                out = _put_head(out, 0x12, scope_body)
                out = _put_head(out, 0x0a, body)
                if PyBytes_GET_SIZE(metric.scope):
                    out = _put_head(out, 0x0a, PyBytes_GET_SIZE(metric.scope))
                    out = _put_bytes(out, metric.scope)
            body = self.sizes[index] + PyBytes_GET_SIZE(metric.trailer)
            out = _put_head(out, 0x12, PyBytes_GET_SIZE(metric.header) + _field_size(body))
            out = _put_bytes(out, metric.header)
            out = _put_head(out, metric.data_tag, body)
            self.cursors[index] = out
            out += self.sizes[index]
            out = _put_bytes(out, metric.trailer)
        for i in range(start, end):
            record = &group.records[i]
            if record.size < 0:
                continue
            memcpy(self.cursors[record.metric], self.arena.data + record.offset, record.size)
            self.cursors[record.metric] += record.size
        return out

    cdef list _pieces(self, bytes resource, _Group group):
        """``metrics_encoder._resource_pieces``: the resource's records split into runs whose
        ``body + 8`` fit ``max_bytes`` (or of one series), as (start, end, size, points)."""
        cdef Py_ssize_t points = 0, size, length, parts, step, extra, index, start, end, stop
        cdef list chunks
        cdef list out = []
        cdef list pieces
        size = self._piece_size(resource, group, 0, group.count, &points)
        if size + 8 <= self.max_bytes or group.count <= 1:
            return [(0, group.count, size, points)]
        chunks = [(0, group.count)]
        while chunks:
            start, end = chunks.pop(0)
            size = self._piece_size(resource, group, start, end, &points)
            length = end - start
            if size + 8 > self.max_bytes and length > 1:
                # ceil(size * 5 / (max_bytes * 4)), all positive
                parts = min(length, max(2, ((size + 8) * 5 + self.max_bytes * 4 - 1) // (self.max_bytes * 4)))
                step = length // parts
                extra = length % parts
                pieces = []
                for index in range(parts):
                    stop = start + step + (1 if index < extra else 0)
                    pieces.append((start, stop))
                    start = stop
                chunks[:0] = pieces
                continue
            out.append((start, end, size, points))
        return out

    cdef tuple _emit(self):
        cdef Py_ssize_t total = 0
        cdef bytes data
        cdef unsigned char* out
        cdef unsigned char* end
        cdef unsigned char* written
        for resource, group, start, stop, size in self.parts:
            total += _field_size(size)
        data = PyBytes_FromStringAndSize(NULL, total)
        out = <unsigned char*>PyBytes_AS_STRING(data)
        end = out + total
        for resource, group, start, stop, size in self.parts:
            out = _put_head(out, 0x0a, size)
            written = self._write_piece(out, resource, group, start, stop)
            if written - out != size:  # never: both walk the same sizes
                raise RuntimeError("compiled encoder: a piece's size changed while written")
            out = written
        if out != end:
            raise RuntimeError("compiled encoder: request size mismatch")
        result = (data, self.key, self.carried)
        self.parts = []
        self.size = 0
        self.carried = 0
        return result

    def __next__(self) -> tuple[bytes, bytes | None, int]:
        cdef tuple result = None
        cdef Py_ssize_t start, end, size, points = 0, built
        cdef _Group group
        while True:
            if self.pieces is None or self.next_piece >= len(self.pieces):
                if self.next_group >= len(self.groups):
                    if self.size:
                        return self._emit()
                    free(self.arena.data)
                    self.arena.data = NULL
                    raise StopIteration
                group = <_Group>self.groups[self.next_group]
                self.next_group += 1
                self.resource = self.resource_body(group.resource_id)
                if type(self.resource) is not bytes:
                    raise TypeError("resource body must be bytes")
                self.group = group
                self.pieces = self._pieces(self.resource, group)
                self.next_piece = 0
            start, end, size, points = self.pieces[self.next_piece]
            self.next_piece += 1
            built = size + 8  # split_by_size's estimate: ByteSize() + 8
            if self.size and self.size + built > self.max_bytes:
                result = self._emit()
            if not self.parts:
                self.key = self.resource[:64]
            self.parts.append((self.resource, self.group, start, end, size))
            self.size += built
            self.carried += points
            if result is not None:
                return result


cdef int _add(Requests requests, _Group group, Py_ssize_t metric, _Plan plan, object item, object point_attributes) except -1:
    """``metrics_encoder._Resource.add``: the point of ``item`` as a described metric (``plan``
    None: not described, no point)."""
    cdef Record* record = group.next()
    cdef Py_ssize_t before
    record.metric = metric
    if plan is None:
        record.size = -1
        record.offset = 0
        record.weight = 0
        return 0
    zero_value = _field(item, F_ZERO_NS, "zero_ns")
    if type(zero_value) is int:
        record.weight = 2 if 0 < zero_value < plan.zero_before else 1
    else:
        record.weight = plan.plan.points(item)
    before = requests.arena.size
    if not _point(&requests.arena, plan, item, point_attributes):
        point = plan.plan.encode(item)
        if type(point) is not bytes:
            raise TypeError("a data point must be bytes")
        _write(&requests.arena, <const unsigned char*>PyBytes_AS_STRING(point), PyBytes_GET_SIZE(point))
    # ``group.next()`` may run again while this record is kept: reread it by index.
    record = &group.records[group.count - 1]
    record.offset = before
    record.size = requests.arena.size - before
    return 0


def encode(
    object series,
    dict plans,
    uint64_t now_ns,
    object max_bytes,
    object resource_body,
    object point_attributes,
) -> Requests | None:
    """The requests ``metrics_encoder.encode_requests`` writes, as an iterator of (data, key,
    data points); every series encoded now, requests built as they are taken. None: a call it
    leaves to the pure path (``max_bytes`` below 1, a scope that is not valid UTF-8)."""
    cdef Requests requests = Requests.__new__(Requests)
    cdef dict compiled = {}
    cdef dict index_of = {}
    cdef list names
    cdef Py_ssize_t i, index
    cdef _Metric metric
    cdef _Metric previous = None
    cdef _Group group
    cdef dict pending = {}
    cdef Py_ssize_t done = 0
    if type(max_bytes) is not int or max_bytes < 1:
        return None
    requests.max_bytes = min(max_bytes, 1 << 50)  # no body comes near: the same as any above
    names = sorted(plans, key=lambda name: plans[name].sort_key)
    requests.metrics = [None] * len(names)
    requests.n_metrics = len(names)
    requests.sizes = <Py_ssize_t*>malloc((len(names) + 1) * sizeof(Py_ssize_t))
    requests.cursors = <unsigned char**>malloc((len(names) + 1) * sizeof(unsigned char*))
    if requests.sizes == NULL or requests.cursors == NULL:
        raise MemoryError()
    for i, name in enumerate(names):
        plan = plans[name]
        metric = _Metric.__new__(_Metric)
        metric.plan = _Plan(plan, now_ns)
        metric.header = plan.header
        if len(plan.data_tag) != 1:
            return None
        metric.data_tag = (<bytes>plan.data_tag)[0]
        metric.trailer = plan.trailer
        try:
            metric.scope = plan.scope.encode("utf-8")
        except UnicodeEncodeError:
            return None
        # Equal scopes are adjacent in this order: each run is one ScopeMetrics.
        metric.scope_run = i if i == 0 or plans[names[i - 1]].scope != plan.scope else previous.scope_run
        previous = metric
        requests.metrics[i] = metric
        compiled[name] = metric.plan
        index_of[name] = i
    requests.groups = []
    requests.parts = []
    requests.resource_body = resource_body
    for item in series:
        done += 1
        if done % YIELD_EVERY == 0:
            _let_others_run()
        resource_id = _field(item, F_RESOURCE_ID, "resource_id")
        found = pending.get(resource_id)
        if found is None:
            group = _Group.__new__(_Group)
            group.resource_id = resource_id
            pending[resource_id] = group
            requests.groups.append(group)
        else:
            group = <_Group>found
        name = _field(item, F_METRIC, "metric")
        _add(requests, group, index_of.get(name, -1), <_Plan>compiled.get(name), item, point_attributes)
        companion = _field(item, F_COMPANION, "companion")
        if companion is not None:
            # The counter this series stands for, right after it (``with_companions``).
            _add(requests, group, index_of.get(companion, -1), <_Plan>compiled.get(companion), item, point_attributes)
    return requests


def fit_all(object series, object fit) -> None:
    """``fit(one)`` (``metrics_encoder.fit_otlp``) for each series that may hold a value outside
    its OTLP field: a count that is not an int in [0, int64 max], or an exemplar whose time is
    not an int in [0, uint64 max] (or anything unusual); the others need nothing."""
    cdef int64_t count = 0
    cdef uint64_t time_ns = 0
    cdef bint fits
    cdef Py_ssize_t done = 0
    for item in series:
        done += 1
        if done % YIELD_EVERY == 0:
            _let_others_run()
        fits = _int64(_field(item, F_COUNT, "count"), &count) and count >= 0
        if fits:
            exemplars = _field(item, F_EXEMPLARS, "exemplars")
            if type(exemplars) is list:
                for exemplar in <list>exemplars:
                    if (
                        type(exemplar) is not tuple
                        or len(<tuple>exemplar) != 4
                        or not _uint64((<tuple>exemplar)[3], &time_ns)
                    ):
                        fits = False
                        break
            elif exemplars:
                fits = False
        if not fits:
            fit(item)
