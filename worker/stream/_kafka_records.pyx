# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``worker.stream.kafka_records``: light records out of a fetched partition's
raw bytes (uncompressed v2 batches), every read checked against the batch's end; CRC32C in C."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    static uint32_t smk_crc_table[8][256];

    static void smk_crc_init(void) {
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t c = n;
            for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            smk_crc_table[0][n] = c;
        }
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t c = smk_crc_table[0][n];
            for (int t = 1; t < 8; t++) {
                c = smk_crc_table[0][c & 0xFF] ^ (c >> 8);
                smk_crc_table[t][n] = c;
            }
        }
    }

    /* Slicing-by-8 software CRC32C (the reflected Castagnoli polynomial). */
    static uint32_t smk_crc_sw(uint32_t crc, const unsigned char* p, size_t n) {
        while (n && ((uintptr_t)p & 7)) { crc = smk_crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8); n--; }
        while (n >= 8) {
            uint32_t lo = crc ^ ((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
            uint32_t hi = (uint32_t)p[4] | ((uint32_t)p[5] << 8) | ((uint32_t)p[6] << 16) | ((uint32_t)p[7] << 24);
            crc = smk_crc_table[7][lo & 0xFF] ^ smk_crc_table[6][(lo >> 8) & 0xFF] ^
                  smk_crc_table[5][(lo >> 16) & 0xFF] ^ smk_crc_table[4][lo >> 24] ^
                  smk_crc_table[3][hi & 0xFF] ^ smk_crc_table[2][(hi >> 8) & 0xFF] ^
                  smk_crc_table[1][(hi >> 16) & 0xFF] ^ smk_crc_table[0][hi >> 24];
            p += 8; n -= 8;
        }
        while (n--) crc = smk_crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        return crc;
    }

    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #include <string.h>
    /* The SSE4.2 crc32 instruction computes the same CRC; chosen at run time. */
    __attribute__((target("sse4.2")))
    static uint32_t smk_crc_hw(uint32_t crc, const unsigned char* p, size_t n) {
        while (n && ((uintptr_t)p & 7)) { crc = __builtin_ia32_crc32qi(crc, *p++); n--; }
    #if defined(__x86_64__)
        uint64_t c = crc;
        while (n >= 8) { uint64_t w; memcpy(&w, p, 8); c = __builtin_ia32_crc32di(c, w); p += 8; n -= 8; }
        crc = (uint32_t)c;
    #endif
        while (n--) crc = __builtin_ia32_crc32qi(crc, *p++);
        return crc;
    }
    static int smk_crc_has_hw(void) { __builtin_cpu_init(); return __builtin_cpu_supports("sse4.2"); }
    #else
    static uint32_t smk_crc_hw(uint32_t crc, const unsigned char* p, size_t n) { return smk_crc_sw(crc, p, n); }
    static int smk_crc_has_hw(void) { return 0; }
    #endif

    static int smk_crc_hw_on = 0;
    static uint32_t smk_crc32c(const unsigned char* p, size_t n) {
        uint32_t crc = 0xFFFFFFFFu;
        crc = smk_crc_hw_on ? smk_crc_hw(crc, p, n) : smk_crc_sw(crc, p, n);
        return crc ^ 0xFFFFFFFFu;
    }
    static int smk_add_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out); }
    """
    void smk_crc_init() noexcept nogil
    int smk_crc_has_hw() noexcept nogil
    int smk_crc_hw_on
    uint32_t smk_crc32c(const unsigned char* p, size_t n) noexcept nogil
    uint32_t smk_crc_sw(uint32_t crc, const unsigned char* p, size_t n) noexcept nogil
    int smk_add_overflows(int64_t a, int64_t b, int64_t* out) noexcept nogil


smk_crc_init()
smk_crc_hw_on = smk_crc_has_hw()

#: Which CRC32C runs: "sse4.2" (the CPU instruction) or "table" (software).
CRC32C = "sse4.2" if smk_crc_hw_on else "table"

DEF LOG_OVERHEAD = 12
DEF HEADER_SIZE = 61
DEF CRC_START = 21

cdef tuple _NO_HEADERS = ()


cdef class FetchedRecord:
    """One record as the ingest reads it: the fields of aiokafka's ``ConsumerRecord`` it uses."""

    cdef readonly str topic
    cdef readonly int partition
    cdef readonly object offset
    cdef readonly object timestamp
    cdef readonly int timestamp_type
    cdef readonly object key
    cdef readonly object value
    cdef readonly tuple headers

    def __repr__(self) -> str:
        return f"FetchedRecord({self.topic!r}, {self.partition}, offset={self.offset})"


cdef inline int _varint(const unsigned char* buf, Py_ssize_t end, Py_ssize_t* pos, int64_t* out) noexcept nogil:
    """A zigzag varint of at most 64 bits within [pos, end); -1 when not one."""
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char byte
    while True:
        if pos[0] >= end or shift > 63:
            return -1
        byte = buf[pos[0]]
        pos[0] += 1
        if shift == 63 and byte > 1:
            return -1
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            out[0] = <int64_t>(result >> 1) ^ -(<int64_t>(result & 1))
            return 0
        shift += 7


cdef inline int _span(
    const unsigned char* buf, Py_ssize_t end, Py_ssize_t* pos, Py_ssize_t* start, Py_ssize_t* size
) noexcept nogil:
    """Nullable bytes within [pos, end): their start and size (-1 for null); -1 when malformed."""
    cdef int64_t n
    if _varint(buf, end, pos, &n) < 0:
        return -1
    if n < 0:
        size[0] = -1
        return 0
    if n > end - pos[0]:
        return -1
    start[0] = pos[0]
    size[0] = <Py_ssize_t>n
    pos[0] += <Py_ssize_t>n
    return 0


cdef inline int64_t _be64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return <int64_t>v


cdef inline uint32_t _be32u(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline object _slice(const unsigned char* buf, Py_ssize_t start, Py_ssize_t size):
    if size < 0:
        return None
    return PyBytes_FromStringAndSize(<const char*>buf + start, size)


def is_plain_request(bytes data) -> bool:
    """Compiled twin of ``worker.otlp.decode.is_plain_request`` (the ingest asks it of every
    record): whole ``resource_spans`` fields (tag 0x0A, a varint length of at most 5 bytes) and
    nothing else. A record whose second byte might still make it JSON goes to the pure one."""
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, p, end
    cdef uint64_t length
    cdef int shift
    cdef unsigned char byte
    while pos < size:
        if d[pos] != 0x0A:
            return False
        p = pos + 1
        end = p + 5 if size - p > 5 else size
        length = 0
        shift = 0
        while True:
            if p >= end:
                return False  # truncated or longer than 5 bytes
            byte = d[p]
            p += 1
            length |= (<uint64_t>(byte & 0x7F)) << shift
            if byte < 0x80:
                break
            shift += 7
        if length > <uint64_t>(size - p):
            return False  # past the end: the pure loop ends beyond size too
        pos = p + <Py_ssize_t>length
    if size < 2:
        return True
    byte = d[1]
    if byte == 0x20 or byte == 0x09 or byte == 0x0A or byte == 0x0D or byte == 0x0B or byte == 0x0C or byte == 0x7B:
        from worker.otlp.decode import is_plain_request as pure
        return pure(data)
    return True


def crc32c(bytes data) -> int:
    """CRC32C of ``data`` (for tests: equal to aiokafka's ``calc_crc32c``)."""
    return smk_crc32c(<const unsigned char*>PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data))


def crc32c_table(bytes data) -> int:
    """CRC32C of ``data`` by the software table alone (for tests of the fallback)."""
    return smk_crc_sw(0xFFFFFFFF, <const unsigned char*>PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data)) ^ 0xFFFFFFFF


#: ``parse`` stopped once it had ``want`` records (more complete batches may follow).
MORE = 0
#: ``parse`` read every complete batch of the fetch (a partial last batch is fetched again).
END = 1
#: ``parse`` stopped at a batch it does not read (at the returned position): aiokafka reads the rest.
DECLINED = 2


def parse(bytes raw, Py_ssize_t pos, fetch_offset, bint check_crcs, str topic, int partition, Py_ssize_t want):
    """Whole batches of ``raw`` from byte ``pos`` on, until at least ``want`` records: the records
    aiokafka's fetcher would return for them at ``fetch_offset``, its next fetch offset after them,
    the position after them and ``MORE``, ``END`` or ``DECLINED`` (a batch that is not a plain
    uncompressed v2 batch: compressed, control, other magic, bad CRC with ``check_crcs``, malformed;
    none of its records are returned)."""
    cdef const unsigned char* buf = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t end, mark
    cdef int32_t length
    cdef int64_t next_offset = fetch_offset
    cdef list records = []
    if pos < 0 or pos > size:
        raise ValueError("pos outside raw")
    while size - pos >= LOG_OVERHEAD:
        if len(records) >= want:
            return records, next_offset, pos, MORE
        length = <int32_t>_be32u(buf + pos + 8)
        if length > size - pos - LOG_OVERHEAD:
            break  # a partial batch at the end of the fetch: fetched again next time
        end = pos + LOG_OVERHEAD + length
        mark = len(records)
        if _batch(buf, pos, end, &next_offset, check_crcs, topic, partition, records) < 0:
            del records[mark:]
            return records, next_offset, pos, DECLINED
        pos = end
    return records, next_offset, pos, END


cdef int _batch(
    const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end, int64_t* next_offset_out,
    bint check_crcs, str topic, int partition, list records,
) except -2:
    """One batch's records onto ``records`` and the next fetch offset after it; -1: declined
    (``next_offset_out`` then unchanged)."""
    cdef Py_ssize_t p, start, key_start = 0, key_size, value_start = 0, value_size
    cdef Py_ssize_t name_start = 0, name_size, hv_start = 0, hv_size
    cdef int32_t count, last_delta, i
    cdef int16_t attributes
    cdef int64_t base_offset, first_ts, max_ts, record_length, ts_delta, offset_delta, n_headers, j
    cdef int64_t offset, timestamp, batch_next
    cdef int64_t next_offset = next_offset_out[0]
    cdef int log_append
    cdef list pairs
    cdef tuple headers
    cdef FetchedRecord record
    cdef object name
    if end - pos < HEADER_SIZE:
        return -1
    base_offset = _be64(buf + pos)
    attributes = <int16_t>((buf[pos + 21] << 8) | buf[pos + 22])
    count = <int32_t>_be32u(buf + pos + 57)
    if buf[pos + 16] != 2 or (attributes & 0x27) or count < 0:
        return -1  # another magic, compressed, a control batch
    if check_crcs and smk_crc32c(buf + pos + CRC_START, <size_t>(end - pos - CRC_START)) != _be32u(buf + pos + 17):
        return -1
    last_delta = <int32_t>_be32u(buf + pos + 23)
    first_ts = _be64(buf + pos + 27)
    max_ts = _be64(buf + pos + 35)
    log_append = 1 if attributes & 0x08 else 0
    p = pos + HEADER_SIZE
    for i in range(count):
        if _varint(buf, end, &p, &record_length) < 0:
            return -1
        start = p
        if p >= end or buf[p] >= 0x80:
            return -1  # record attributes: one byte
        p += 1
        if _varint(buf, end, &p, &ts_delta) < 0 or _varint(buf, end, &p, &offset_delta) < 0:
            return -1
        if _span(buf, end, &p, &key_start, &key_size) < 0 or _span(buf, end, &p, &value_start, &value_size) < 0:
            return -1
        if _varint(buf, end, &p, &n_headers) < 0 or n_headers < 0:
            return -1
        headers = _NO_HEADERS
        if n_headers:
            pairs = []
            j = 0
            while j < n_headers:
                if _span(buf, end, &p, &name_start, &name_size) < 0 or name_size < 0:
                    return -1
                try:
                    name = PyUnicode_DecodeUTF8(<const char*>buf + name_start, name_size, "strict")
                except UnicodeDecodeError:
                    return -1
                if _span(buf, end, &p, &hv_start, &hv_size) < 0:
                    return -1
                pairs.append((name, _slice(buf, hv_start, hv_size)))
                j += 1
            headers = tuple(pairs)
        if p - start != record_length:
            return -1
        if smk_add_overflows(base_offset, offset_delta, &offset):
            return -1
        if log_append:
            timestamp = max_ts
        elif smk_add_overflows(first_ts, ts_delta, &timestamp):
            return -1
        if offset < next_offset:
            continue  # before the fetch position (aiokafka skips it too)
        record = FetchedRecord.__new__(FetchedRecord)
        record.topic = topic
        record.partition = partition
        record.offset = offset
        record.timestamp = timestamp
        record.timestamp_type = log_append
        record.key = _slice(buf, key_start, key_size)
        record.value = _slice(buf, value_start, value_size)
        record.headers = headers
        records.append(record)
        next_offset = offset + 1
    if p != end:
        return -1  # bytes after the batch's records
    if smk_add_overflows(base_offset, <int64_t>last_delta + 1, &batch_next):
        return -1
    next_offset_out[0] = batch_next
    return 0


# ------------------------------------------------------------------------------ response frames


cdef class Frame:
    """A response frame of ``size`` bytes filled straight from the socket's chunks into the
    bytes object handed over at the end (:meth:`take`): one copy of each byte, instead of
    asyncio's stream buffer (a growing bytearray) and then a bytes copy out of it."""

    cdef bytes data
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t filled

    def __cinit__(self, Py_ssize_t size):
        if size < 0:
            raise ValueError("a frame size is not negative")
        self.data = PyBytes_FromStringAndSize(NULL, size)
        self.size = size
        self.filled = 0

    def fill(self, const unsigned char[::1] chunk):
        """Copies as much of ``chunk`` as the frame still lacks; returns how many bytes it took."""
        cdef Py_ssize_t taken = chunk.shape[0]
        if self.data is None:
            raise ValueError("the frame was taken")
        if taken > self.size - self.filled:
            taken = self.size - self.filled
        if taken > 0:
            memcpy(PyBytes_AS_STRING(self.data) + self.filled, &chunk[0], taken)
            self.filled += taken
        return taken

    @property
    def full(self):
        return self.filled == self.size

    def partial(self):
        """The bytes received so far (a copy)."""
        if self.data is None:
            raise ValueError("the frame was taken")
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self.data), self.filled)

    def take(self):
        """The whole frame, once full (the frame holds it no longer)."""
        if self.data is None or self.filled != self.size:
            raise ValueError("the frame is not full")
        data, self.data = self.data, None
        return data
