# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled twin of :mod:`rpv.protocol.hotpath` (the reference: same results)."""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from rpv._endian cimport be32 as _u32, be64 as _u64

DEF MAGIC = 0x47525056
DEF VERSION = 1
DEF OP_WRITE = 4
DEF FLAG_REPLY = 1
DEF FLAG_FUA = 2
DEF REPLY_SIZE = 24
DEF REQUEST_SIZE = 36


def take_write_reply(bytearray buf, Py_ssize_t pos, dict outstanding, write_op, make):
    """``(event, new pos)`` for a successful WRITE reply at ``pos``, else None."""
    cdef const uint8_t *p
    if PyByteArray_GET_SIZE(buf) - pos < REPLY_SIZE or pos < 0:
        return None
    p = <const uint8_t *>PyByteArray_AS_STRING(buf) + pos
    if (_u32(p) != MAGIC or p[4] != VERSION or p[5] != OP_WRITE
            or ((p[6] << 8) | p[7]) != FLAG_REPLY or _u32(p + 16) or _u32(p + 20)):
        return None
    rid = _u64(p + 8)
    entry = outstanding.get(rid)
    if entry is None or (<tuple>entry)[0] is not write_op:
        return None
    del outstanding[rid]
    return make(rid, 0, ""), pos + REPLY_SIZE


def take_write_request(bytearray buf, Py_ssize_t pos, dict outstanding,
                       Py_ssize_t max_outstanding, uint64_t max_payload, write_op,
                       on_payload, make):
    """``(event, new pos)`` for an uncompressed WRITE request at ``pos`` whose payload is
    all in ``buf``, else None."""
    cdef const uint8_t *p
    cdef Py_ssize_t avail = PyByteArray_GET_SIZE(buf) - pos
    cdef uint16_t flags
    cdef uint32_t plen, length
    if avail < REQUEST_SIZE or pos < 0:
        return None
    p = <const uint8_t *>PyByteArray_AS_STRING(buf) + pos
    flags = (p[6] << 8) | p[7]
    plen = _u32(p + 16)
    length = _u32(p + 28)
    if (_u32(p) != MAGIC or p[4] != VERSION or p[5] != OP_WRITE or flags & ~FLAG_FUA
            or plen == 0 or plen > max_payload or length != plen
            or avail < REQUEST_SIZE + <Py_ssize_t>plen):
        return None
    rid = _u64(p + 8)
    if rid in outstanding or len(outstanding) >= max_outstanding:
        return None
    data = PyBytes_FromStringAndSize(<const char *>(p + REQUEST_SIZE), plen)
    if on_payload is not None:
        on_payload(True, length, plen)
    outstanding[rid] = (write_op, length)
    return (make(rid, _u64(p + 20), data, _u32(p + 32), bool(flags & FLAG_FUA)),
            pos + REQUEST_SIZE + plen)


cdef inline void _put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24; p[1] = (v >> 16) & 0xff; p[2] = (v >> 8) & 0xff; p[3] = v & 0xff


cdef inline void _put64(uint8_t *p, uint64_t v) noexcept nogil:
    _put32(p, <uint32_t>(v >> 32))
    _put32(p + 4, <uint32_t>v)


def write_reply(dict outstanding, rid, write_op):
    """The header of a successful reply to the outstanding WRITE ``rid`` (which stops being
    outstanding), else None."""
    cdef uint8_t h[REPLY_SIZE]
    entry = outstanding.get(rid)
    if entry is None or (<tuple>entry)[0] is not write_op:
        return None
    del outstanding[rid]
    _put32(h, MAGIC); h[4] = VERSION; h[5] = OP_WRITE; h[6] = 0; h[7] = FLAG_REPLY
    _put64(h + 8, rid); _put32(h + 16, 0); _put32(h + 20, 0)
    return PyBytes_FromStringAndSize(<char *>h, REPLY_SIZE)


def write_request(dict outstanding, Py_ssize_t max_outstanding, rid, flags, plen, offset,
                  length, deadline, write_op):
    """The header of a WRITE request (which becomes outstanding) when every field is in
    range and ``rid`` is free, else None."""
    cdef uint8_t h[REQUEST_SIZE]
    if (rid in outstanding or len(outstanding) >= max_outstanding or not 0 <= rid <= 2**64 - 1
            or not 0 <= offset <= 2**64 - 1 or not 0 <= flags <= 0xFFFF
            or not 0 <= plen <= 0xFFFFFFFF or not 0 <= length <= 0xFFFFFFFF
            or not 0 <= deadline <= 0xFFFFFFFF):
        return None
    outstanding[rid] = (write_op, length)
    _put32(h, MAGIC); h[4] = VERSION; h[5] = OP_WRITE
    h[6] = (<uint32_t>flags >> 8) & 0xff; h[7] = <uint32_t>flags & 0xff
    _put64(h + 8, rid); _put32(h + 16, plen)
    _put64(h + 20, offset); _put32(h + 28, length); _put32(h + 32, deadline)
    return PyBytes_FromStringAndSize(<char *>h, REQUEST_SIZE)
