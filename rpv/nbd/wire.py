"""The NBD transmission hot path, pure Python: decode every complete ordinary request at the
head of the receive buffer in one call (the reference for the compiled twin ``_wire.pyx``,
which :mod:`rpv.speedups` picks unless ``GLVM_PURE_PYTHON=1``).

:func:`take_requests` turns a batch of 28-byte request headers (and the payloads of WRITEs
that arrived whole) into ``make(kind, flags, handle, offset, length, data)`` values, checks
each as the spec asks, and appends the error reply of each one that fails to ``out``. It stops
before anything it leaves to its caller (``rpv.nbd.protocol.ServerConnection``): an incomplete
header, a WRITE whose payload is incomplete or longer than ``max_len``, NBD_CMD_DISC, a bad
magic. It never raises on any bytes and never consumes what it does not decode.
"""

from __future__ import annotations

import struct

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
HEADER = 28
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 6
EPERM, EINVAL, ENOSPC = 1, 22, 28
# flags each command may carry (FUA; WRITE_ZEROES also NO_HOLE); others are EINVAL
ALLOWED_FLAGS = {CMD_READ: 1, CMD_WRITE: 1, CMD_FLUSH: 1, CMD_TRIM: 1, CMD_WRITE_ZEROES: 3}

_unpack = struct.Struct(">IHHQQI").unpack_from
_pack_reply = struct.Struct(">IIQ").pack


def check(kind: int, flags: int, offset: int, length: int, size: int, readonly: bool,
          max_len: int) -> int:
    """The NBD error for a request (0 when it may go to the device)."""
    allowed = ALLOWED_FLAGS.get(kind)
    if allowed is None or flags & ~allowed:
        return EINVAL  # unknown or unnegotiated command, or a flag it may not carry
    if kind == CMD_FLUSH:
        return EINVAL if (offset or length) else 0
    if kind == CMD_READ:
        if length > max_len:
            return EINVAL
    elif readonly:
        return EPERM
    if offset + length > size:
        # The spec asks for ENOSPC on writes past the end, EINVAL otherwise.
        return EINVAL if kind in (CMD_READ, CMD_TRIM) else ENOSPC
    return 0


def take_requests(buf: bytearray, size: int, readonly: bool, max_len: int, out: list,
                  make) -> tuple[list, int]:
    """Decode the ordinary requests at the head of ``buf`` (see the module docstring);
    returns them and how many bytes they took (the caller deletes those)."""
    reqs = []
    pos = 0
    avail = len(buf)
    while avail - pos >= HEADER:
        magic, flags, kind, handle, offset, length = _unpack(buf, pos)
        if magic != REQUEST_MAGIC or kind == CMD_DISC:
            break
        end = pos + HEADER
        data = None
        if kind == CMD_WRITE:
            if length > max_len or avail - end < length:
                break
            with memoryview(buf) as view:  # (released at once: buf is resized later)
                data = view[end:end + length].tobytes()
            end += length
        pos = end
        err = check(kind, flags, offset, length, size, readonly, max_len)
        if err:
            out.append(_pack_reply(SIMPLE_REPLY_MAGIC, err, handle))
        else:
            reqs.append(make(kind, flags, handle, offset, length, data))
    return reqs, pos
