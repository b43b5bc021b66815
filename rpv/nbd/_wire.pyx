# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled twin of :mod:`rpv.nbd.wire` (the reference: same results, byte for byte)."""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from rpv._endian cimport be32 as _u32, be64 as _u64

DEF HEADER = 28
DEF REQUEST_MAGIC = 0x25609513
DEF SIMPLE_REPLY_MAGIC = 0x67446698
DEF CMD_READ = 0
DEF CMD_WRITE = 1
DEF CMD_DISC = 2
DEF CMD_FLUSH = 3
DEF CMD_TRIM = 4
DEF CMD_WRITE_ZEROES = 6
DEF EPERM = 1
DEF EINVAL = 22
DEF ENOSPC = 28


cdef inline bytes _reply(uint32_t error, uint64_t handle):
    cdef uint8_t r[16]
    cdef int i
    r[0] = 0x67; r[1] = 0x44; r[2] = 0x66; r[3] = 0x98
    for i in range(4):
        r[4 + i] = (error >> (24 - 8 * i)) & 0xff
    for i in range(8):
        r[8 + i] = (handle >> (56 - 8 * i)) & 0xff
    return PyBytes_FromStringAndSize(<char *>r, 16)


cdef inline int _check(uint16_t kind, uint16_t flags, uint64_t offset, uint64_t length,
                       uint64_t size, bint readonly, uint64_t max_len) nogil:
    cdef uint16_t allowed
    if kind == CMD_READ or kind == CMD_WRITE or kind == CMD_FLUSH or kind == CMD_TRIM:
        allowed = 1
    elif kind == CMD_WRITE_ZEROES:
        allowed = 3
    else:
        return EINVAL
    if flags & ~allowed:
        return EINVAL
    if kind == CMD_FLUSH:
        return EINVAL if (offset or length) else 0
    if kind == CMD_READ:
        if length > max_len:
            return EINVAL
    elif readonly:
        return EPERM
    if offset + length > size or offset + length < offset:
        return EINVAL if (kind == CMD_READ or kind == CMD_TRIM) else ENOSPC
    return 0


def check(kind, flags, offset, length, size, readonly, max_len):
    """The NBD error for a request (0 when it may go to the device)."""
    return _check(kind, flags, offset, length, size, readonly, max_len)


def take_requests(bytearray buf, size, readonly, max_len, list out, make):
    """Decode the ordinary requests at the head of ``buf``; returns them and how many bytes
    they took (see :func:`rpv.nbd.wire.take_requests`)."""
    cdef const uint8_t *p = <const uint8_t *>PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t avail = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t pos = 0, end
    cdef uint64_t c_size = size, c_max = max_len, offset, handle
    cdef uint32_t length
    cdef uint16_t flags, kind
    cdef bint ro = readonly
    cdef int err
    cdef list reqs = []
    while avail - pos >= HEADER:
        if _u32(p + pos) != REQUEST_MAGIC:
            break
        flags = (p[pos + 4] << 8) | p[pos + 5]
        kind = (p[pos + 6] << 8) | p[pos + 7]
        if kind == CMD_DISC:
            break
        handle = _u64(p + pos + 8)
        offset = _u64(p + pos + 16)
        length = _u32(p + pos + 24)
        end = pos + HEADER
        data = None
        if kind == CMD_WRITE:
            if length > c_max or avail - end < length:
                break
            data = PyBytes_FromStringAndSize(<const char *>(p + end), length)
            end += length
        pos = end
        err = _check(kind, flags, offset, length, c_size, ro, c_max)
        if err:
            out.append(_reply(err, handle))
        else:
            reqs.append(make(kind, flags, handle, offset, length, data))
    return reqs, pos
