"""Wire constants of the RPV protocol: magic, opcodes, flags, features, status codes."""

from __future__ import annotations

import errno
from enum import IntEnum, IntFlag

from rpv.checksum import CHECKSUM_CHUNK, DIGEST_SIZE  # noqa: F401 — wire-format sizes

MAGIC = 0x47525056  # b"GRPV"
VERSION = 1
DEFAULT_PORT = 6192
MAX_MESSAGE = 1024  # longest diagnostic text in an error reply, in bytes

MAX_CHECKSUM_LENGTH = 64 * 1024 * 1024  # longest range one CHECKSUM request may cover


class Opcode(IntEnum):
    """Frame opcodes."""

    HELLO = 1
    DISCOVER = 2
    READ = 3
    WRITE = 4
    FLUSH = 5
    PING = 6
    CHECKSUM = 7


class Flag(IntFlag):
    """Header flag bits; any other bit is a protocol error."""

    REPLY = 0x0001
    FUA = 0x0002
    COMPRESSED = 0x0004  # payload compressed with the session's codec (WRITE, READ reply)


FLAG_REPLY = int(Flag.REPLY)
FLAG_FUA = int(Flag.FUA)
FLAG_COMPRESSED = int(Flag.COMPRESSED)
KNOWN_FLAGS = FLAG_REPLY | FLAG_FUA | FLAG_COMPRESSED

FEATURE_FUA = 1
FEATURE_FLUSH = 2
FEATURE_ZSTD = 4  # HELLO: the client asks for / the server accepts zstd payloads
FEATURE_LZ4 = 8  # HELLO: the same for LZ4 (see rpv.protocol.compress)
# HELLO: the request joins the live session of the same export as one more connection (a
# path) instead of closing it; in the reply: the server lets a session have several
FEATURE_JOIN = 16
DEFAULT_FEATURES = FEATURE_FUA | FEATURE_FLUSH


class DeviceState(IntEnum):
    """State of an exported disk as reported by DISCOVER."""

    DEFINED = 0
    AVAILABLE = 1


class Status(IntEnum):
    """Reply status: 0 or an errno number. These are the ones the server uses."""

    OK = 0
    EACCES = errno.EACCES  # peer address not allowed (client_addr)
    ENOENT = errno.ENOENT  # unknown PVID
    ENODEV = errno.ENODEV  # server device Defined, not Available
    EINVAL = errno.EINVAL  # out-of-range offset or bad request
    EMSGSIZE = errno.EMSGSIZE  # oversize frame
    EIO = errno.EIO  # I/O error on the backing disk
    EPROTO = errno.EPROTO  # protocol violation (e.g. I/O before HELLO)
    EBUSY = errno.EBUSY  # too many outstanding requests / device busy


_MEANING = {
    Status.OK: "success",
    Status.EACCES: "peer address not allowed",
    Status.ENOENT: "unknown PVID",
    Status.ENODEV: "device not Available",
    Status.EINVAL: "invalid request or offset out of range",
    Status.EMSGSIZE: "frame too large",
    Status.EIO: "I/O error",
    Status.EPROTO: "protocol error",
    Status.EBUSY: "too many outstanding requests",
}


def status_name(status: int) -> str:
    """Symbolic name of a status: "OK", "ENOENT", ... or the number as text."""
    if status == 0:
        return "OK"
    return errno.errorcode.get(status, str(status))


def describe_status(status: int) -> str:
    """Human text for a status, e.g. "ENOENT (unknown PVID)"."""
    try:
        meaning = _MEANING[Status(status)]
    except ValueError:
        return status_name(status)
    return f"{status_name(status)} ({meaning})"
