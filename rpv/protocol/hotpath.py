"""The RPV data path's common frames, pure Python: a successful WRITE reply at the client and
an uncompressed WRITE request at the server, decoded in one call each (the reference for the
compiled twin ``_hotpath.pyx``; :mod:`rpv.speedups` picks one, ``GLVM_PURE_PYTHON=1`` this).

``rpv.protocol.connection.Connection`` tries these first in state READY, before its general
parser. Each accepts only a frame that the general parser would turn into the same event with
the same bookkeeping (request ids outstanding, payload counters), and returns None for
anything else, leaving it untouched for the general parser to decode or refuse. The same
holds for the two headers it builds: a WRITE request (client) and its successful reply
(server); None sends the caller to its general encoder and its errors.
"""

from __future__ import annotations

import struct

from .constants import FLAG_FUA, FLAG_REPLY, MAGIC, VERSION, Opcode
from .frames import HEADER_STRUCT, REPLY_EXT_STRUCT, REQUEST_EXT_STRUCT

OP_WRITE = int(Opcode.WRITE)
_REPLY = struct.Struct(HEADER_STRUCT.format + REPLY_EXT_STRUCT.format[1:])  # + status
_REQUEST = struct.Struct(HEADER_STRUCT.format + REQUEST_EXT_STRUCT.format[1:])  # + offset...
REPLY_SIZE, REQUEST_SIZE = _REPLY.size, _REQUEST.size

_reply = _REPLY.unpack_from
_request = _REQUEST.unpack_from


def take_write_reply(buf: bytearray, pos: int, outstanding: dict, write_op, make):
    """``(event, new pos)`` for a successful WRITE reply at ``pos``, else None."""
    if len(buf) - pos < REPLY_SIZE:
        return None
    magic, version, opcode, flags, rid, plen, status = _reply(buf, pos)
    if (magic != MAGIC or version != VERSION or opcode != OP_WRITE or flags != FLAG_REPLY
            or plen or status):
        return None
    entry = outstanding.get(rid)
    if entry is None or entry[0] is not write_op:
        return None
    del outstanding[rid]
    return make(rid, 0, ""), pos + REPLY_SIZE


def take_write_request(buf: bytearray, pos: int, outstanding: dict, max_outstanding: int,
                       max_payload: int, write_op, on_payload, make):
    """``(event, new pos)`` for an uncompressed WRITE request at ``pos`` whose payload is
    all in ``buf``, else None."""
    avail = len(buf) - pos
    if avail < REQUEST_SIZE:
        return None
    magic, version, opcode, flags, rid, plen, offset, length, deadline = _request(buf, pos)
    if (magic != MAGIC or version != VERSION or opcode != OP_WRITE or flags & ~FLAG_FUA
            or not 0 < plen <= max_payload or length != plen or avail < REQUEST_SIZE + plen
            or rid in outstanding or len(outstanding) >= max_outstanding):
        return None
    start = pos + REQUEST_SIZE
    with memoryview(buf) as view:
        data = view[start:start + plen].tobytes()
    if on_payload is not None:
        on_payload(True, length, plen)
    outstanding[rid] = (write_op, length)
    return make(rid, offset, data, deadline, bool(flags & FLAG_FUA)), start + plen


_pack_reply = _REPLY.pack
_pack_request = _REQUEST.pack
_U32, _U64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


def write_reply(outstanding: dict, rid: int, write_op) -> bytes | None:
    """The header of a successful reply to the outstanding WRITE ``rid`` (which stops being
    outstanding), else None."""
    entry = outstanding.get(rid)
    if entry is None or entry[0] is not write_op:
        return None
    del outstanding[rid]
    return _pack_reply(MAGIC, VERSION, OP_WRITE, FLAG_REPLY, rid, 0, 0)


def write_request(outstanding: dict, max_outstanding: int, rid: int, flags: int, plen: int,
                  offset: int, length: int, deadline: int, write_op) -> bytes | None:
    """The header of a WRITE request (which becomes outstanding) when every field is in
    range and ``rid`` is free, else None."""
    if (rid in outstanding or len(outstanding) >= max_outstanding or not 0 <= rid <= _U64
            or not 0 <= offset <= _U64 or not 0 <= flags <= 0xFFFF
            or not 0 <= plen <= _U32 or not 0 <= length <= _U32 or not 0 <= deadline <= _U32):
        return None
    outstanding[rid] = (write_op, length)
    return _pack_request(MAGIC, VERSION, OP_WRITE, flags, rid, plen, offset, length, deadline)
