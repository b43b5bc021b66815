"""Frame layouts. construct defines every schema; the hot fixed header is also decoded with
precompiled ``struct`` objects of the identical layout (tests assert both agree).

Frame = header (20 bytes) + extension (request: 16 bytes, reply: 4 bytes) + payload.
All integers are big-endian. Nothing here parses with a compiled construct.

Per-opcode rules live in one table, :data:`OPCODES` (opcode -> :class:`OpSpec`); the
Connection and the reference :data:`Frame` schema both read it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from construct import (
    Bytes,
    Check,
    Const,
    ConstructError,
    Error,
    FixedSized,
    GreedyBytes,
    GreedyString,
    IfThenElse,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    OneOf,
    PascalString,
    PrefixedArray,
    Struct,
    Switch,
    Terminated,
    this,
)

from rpv.checksum import digests_size

from .constants import (
    FLAG_COMPRESSED,
    FLAG_FUA,
    FLAG_REPLY,
    KNOWN_FLAGS,
    MAGIC,
    MAX_CHECKSUM_LENGTH,
    MAX_MESSAGE,
    VERSION,
    DeviceState,
    Opcode,
)
from .events import (
    INSTANCE_SIZE,
    ChecksumReply,
    ChecksumRequest,
    DiscoverEntry,
    DiscoverInfo,
    DiscoverReply,
    DiscoverRequest,
    FlushReply,
    FlushRequest,
    HelloInfo,
    HelloReply,
    HelloRequest,
    PingReply,
    PingRequest,
    ReadReply,
    ReadRequest,
    Reply,
    Request,
    WriteReply,
    WriteRequest,
)
from .pvid import PVID_SIZE

# --- construct schemas -------------------------------------------------------------------

Header = Struct(
    "magic" / Int32ub,
    "version" / Int8ub,
    "opcode" / Int8ub,
    "flags" / Int16ub,
    "request_id" / Int64ub,
    "payload_len" / Int32ub,
)
RequestExt = Struct("offset" / Int64ub, "length" / Int32ub, "deadline_ms" / Int32ub)
ReplyExt = Struct("status" / Int32ub)

_Str8 = PascalString(Int8ub, "utf8")

HelloRequestPayload = Struct(
    "min_version" / Int8ub,
    "max_version" / Int8ub,
    "features" / Int32ub,
    "pvid" / Bytes(PVID_SIZE),
    "client_site" / _Str8,
    "client_node" / _Str8,
    Terminated,
)
HelloReplyPayload = Struct(
    "version" / Int8ub,
    "features" / Int32ub,
    "server_site" / _Str8,
    "server_node" / _Str8,
    "disk_name" / _Str8,
    "disk_size" / Int64ub,
    "block_size" / Int32ub,
    "max_payload" / Int32ub,
    "max_outstanding" / Int32ub,
    "instance" / Bytes(INSTANCE_SIZE),
    Terminated,
)
DiscoverEntrySchema = Struct(
    "server_name" / _Str8,
    "disk_name" / _Str8,
    "pvid" / Bytes(PVID_SIZE),
    "size" / Int64ub,
    "state" / OneOf(Int8ub, {int(s) for s in DeviceState}),
)
DiscoverReplyPayload = Struct(
    "site" / _Str8,
    "node" / _Str8,
    "entries" / PrefixedArray(Int16ub, DiscoverEntrySchema),
    Terminated,
)
ErrorPayload = Struct("message" / GreedyString("utf8"), Terminated)
_EMPTY = Terminated

# --- struct twins of the fixed header (hot path) ------------------------------------------

HEADER_STRUCT = struct.Struct(">IBBHQI")
REQUEST_EXT_STRUCT = struct.Struct(">QII")
REPLY_EXT_STRUCT = struct.Struct(">I")
REQUEST_HEAD_STRUCT = struct.Struct(">IBBHQIQII")  # header + request extension
REPLY_HEAD_STRUCT = struct.Struct(">IBBHQII")  # header + reply extension

HEADER_SIZE = HEADER_STRUCT.size  # 20
REQUEST_EXT_SIZE = REQUEST_EXT_STRUCT.size  # 16
REPLY_EXT_SIZE = REPLY_EXT_STRUCT.size  # 4

# Payload size bounds for the variable control payloads (u8-prefixed strings).
HELLO_REQUEST_MIN = 1 + 1 + 4 + PVID_SIZE + 1 + 1
HELLO_REQUEST_MAX = HELLO_REQUEST_MIN + 2 * 255
HELLO_REPLY_MIN = 1 + 4 + 3 * 1 + 8 + 4 + 4 + 4 + INSTANCE_SIZE
HELLO_REPLY_MAX = HELLO_REPLY_MIN + 3 * 255
DISCOVER_REPLY_MIN = 1 + 1 + 2

# --- builders -------------------------------------------------------------------------------


def pack_request_head(
    opcode: int,
    flags: int,
    request_id: int,
    payload_len: int,
    offset: int,
    length: int,
    deadline_ms: int,
) -> bytes:
    """Header + request extension (raises struct.error on out-of-range fields)."""
    return REQUEST_HEAD_STRUCT.pack(
        MAGIC, VERSION, opcode, flags, request_id, payload_len, offset, length, deadline_ms
    )


def pack_reply_head(
    opcode: int, request_id: int, status: int, payload_len: int, flags: int = FLAG_REPLY
) -> bytes:
    """Header + reply extension (raises struct.error on out-of-range fields)."""
    return REPLY_HEAD_STRUCT.pack(
        MAGIC, VERSION, opcode, flags, request_id, payload_len, status
    )


def encode_message(message: str) -> bytes:
    """UTF-8 diagnostic text, cut to MAX_MESSAGE bytes on a character boundary."""
    raw = message.encode("utf-8", "replace")
    if len(raw) > MAX_MESSAGE:
        raw = raw[:MAX_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
    return raw


def build_error_reply(request_id: int, opcode: int, status: int, message: str = "") -> bytes:
    """A complete error reply frame, e.g. a server's last word after a ProtocolError."""
    msg = encode_message(message)
    return pack_reply_head(opcode, request_id, status, len(msg)) + msg


def encode_hello_request(
    min_version: int,
    max_version: int,
    features: int,
    pvid: bytes,
    client_site: str,
    client_node: str,
) -> bytes:
    return HelloRequestPayload.build(
        dict(
            min_version=min_version,
            max_version=max_version,
            features=features,
            pvid=pvid,
            client_site=client_site,
            client_node=client_node,
        )
    )


def encode_hello_reply(info: HelloInfo) -> bytes:
    return HelloReplyPayload.build(
        dict(
            version=info.version,
            features=info.features,
            server_site=info.server_site,
            server_node=info.server_node,
            disk_name=info.disk_name,
            disk_size=info.disk_size,
            block_size=info.block_size,
            max_payload=info.max_payload,
            max_outstanding=info.max_outstanding,
            instance=info.instance,
        )
    )


def encode_discover_reply(info: DiscoverInfo) -> bytes:
    return DiscoverReplyPayload.build(
        dict(
            site=info.site,
            node=info.node,
            entries=[
                dict(
                    server_name=e.server_name,
                    disk_name=e.disk_name,
                    pvid=e.pvid,
                    size=e.size,
                    state=int(e.state),
                )
                for e in info.entries
            ],
        )
    )


# --- control payload decoders (raise ConstructError on malformed input) -------------------


def decode_hello_request(payload: bytes) -> dict:
    c = HelloRequestPayload.parse(payload)
    return dict(
        min_version=c.min_version,
        max_version=c.max_version,
        features=c.features,
        pvid=bytes(c.pvid),
        client_site=c.client_site,
        client_node=c.client_node,
    )


def decode_hello_reply(payload: bytes) -> HelloInfo:
    c = HelloReplyPayload.parse(payload)
    return HelloInfo(
        server_site=c.server_site,
        server_node=c.server_node,
        disk_name=c.disk_name,
        disk_size=c.disk_size,
        block_size=c.block_size,
        max_payload=c.max_payload,
        max_outstanding=c.max_outstanding,
        features=c.features,
        version=c.version,
        instance=bytes(c.instance),
    )


def decode_discover_reply(payload: bytes) -> DiscoverInfo:
    c = DiscoverReplyPayload.parse(payload)
    return DiscoverInfo(
        site=c.site,
        node=c.node,
        entries=tuple(
            DiscoverEntry(
                server_name=e.server_name,
                disk_name=e.disk_name,
                pvid=bytes(e.pvid),
                size=e.size,
                state=DeviceState(e.state),
            )
            for e in c.entries
        ),
    )


PAYLOAD_ERRORS = (ConstructError, UnicodeError, ValueError)
"""Exceptions the decoders above raise on malformed bytes."""


# --- the opcode table -------------------------------------------------------------------
#
# Everything the protocol decides per opcode is one row of OPCODES: when it may be sent, its
# payloads (schema, size rule, decoder), its request fields and the events it produces. The
# Connection and the reference Frame below read the table; adding an opcode adds one row
# (plus its events and, for a new payload, its schema and codec above).


class Scope(Enum):
    """When a request may be sent (the TRANSITIONS table is built from this)."""

    HELLO = "hello"  # the handshake request itself
    ANYTIME = "anytime"  # with or without a session
    SESSION = "session"  # only after a successful HELLO


def _same(length: int) -> int:
    return length


@dataclass(frozen=True, slots=True)
class Payload:
    """What one direction of an opcode carries after the header.

    Its size is either ``min_size..max_size`` or, with ``size``, exactly ``size(length)`` of
    the request's length field (``mismatch`` reports a frame that differs; ``too_big`` a
    request whose reply could not fit ``max_payload``). ``decode`` turns the bytes into the
    event's payload field (it raises PAYLOAD_ERRORS); None means the event has no such field.
    """

    schema: Any  # the construct schema in the reference Frame
    min_size: int = 0
    max_size: int = 0
    decode: Callable[[bytes], Any] | None = None
    size: Callable[[int], int] | None = None
    mismatch: str = ""  # format fields: op, plen, length
    too_big: str = ""  # format fields: op, length, limit


EMPTY = Payload(_EMPTY)
DATA = Payload(GreedyBytes, decode=_same, size=_same,
               mismatch="{op} length {length} != payload {plen}")


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One opcode: a row of :data:`OPCODES`."""

    opcode: Opcode
    scope: Scope
    # (request_id, offset, length, deadline_ms, flags, decoded payload) -> request event
    request_event: Callable[[int, int, int, int, int, Any], Request]
    reply_event: type[Reply]  # built as (request_id, status, message, *body)
    request: Payload = EMPTY
    reply: Payload = EMPTY  # of an OK reply; an error reply carries a message
    error_body: tuple = ()  # the reply event's payload field in an error reply
    ranged: bool = False  # offset and length are meaningful (else both must be 0)
    fua: bool = False  # the FUA flag is allowed
    # the COMPRESSED flag is allowed on the request / on an OK reply (once negotiated):
    # the payload then decodes to ``length`` bytes and is at most that long on the wire
    compress_request: bool = False
    compress_reply: bool = False
    length: tuple[int, int] = (0, 0xFFFFFFFF)  # bounds of the length field


OPCODES: dict[Opcode, OpSpec] = {
    spec.opcode: spec
    for spec in (
        OpSpec(
            Opcode.HELLO, Scope.HELLO,
            lambda rid, offset, length, deadline, flags, body: HelloRequest(rid, **body),
            HelloReply,
            request=Payload(HelloRequestPayload, HELLO_REQUEST_MIN, HELLO_REQUEST_MAX,
                            decode_hello_request),
            reply=Payload(HelloReplyPayload, HELLO_REPLY_MIN, HELLO_REPLY_MAX,
                          decode_hello_reply),
            error_body=(None,),
        ),
        OpSpec(
            Opcode.DISCOVER, Scope.ANYTIME,
            lambda rid, offset, length, deadline, flags, body: DiscoverRequest(rid),
            DiscoverReply,
            reply=Payload(DiscoverReplyPayload, DISCOVER_REPLY_MIN, 0xFFFFFFFF,
                          decode_discover_reply),
            error_body=(None,),
        ),
        OpSpec(
            Opcode.READ, Scope.SESSION,
            lambda rid, offset, length, deadline, flags, body: ReadRequest(
                rid, offset, length, deadline),
            ReadReply,
            reply=Payload(GreedyBytes, decode=_same, size=_same,
                          mismatch="{op} reply of {plen} bytes, asked {length}",
                          too_big="{op} of {length} bytes exceeds limit {limit}"),
            error_body=(b"",),
            ranged=True,
            compress_reply=True,
        ),
        OpSpec(
            Opcode.WRITE, Scope.SESSION,
            lambda rid, offset, length, deadline, flags, body: WriteRequest(
                rid, offset, body, deadline, bool(flags & FLAG_FUA)),
            WriteReply,
            request=DATA,
            ranged=True,
            fua=True,
            compress_request=True,
        ),
        OpSpec(
            Opcode.FLUSH, Scope.SESSION,
            lambda rid, offset, length, deadline, flags, body: FlushRequest(rid, deadline),
            FlushReply,
        ),
        OpSpec(
            Opcode.PING, Scope.ANYTIME,
            lambda rid, offset, length, deadline, flags, body: PingRequest(rid, deadline),
            PingReply,
        ),
        OpSpec(
            Opcode.CHECKSUM, Scope.SESSION,
            lambda rid, offset, length, deadline, flags, body: ChecksumRequest(
                rid, offset, length, deadline),
            ChecksumReply,
            reply=Payload(GreedyBytes, decode=_same, size=digests_size,
                          mismatch="{op} reply of {plen} bytes for {length} bytes",
                          too_big="{op} reply would exceed limit {limit}"),
            error_body=(b"",),
            ranged=True,
            length=(1, MAX_CHECKSUM_LENGTH),
        ),
    )
}
"""opcode -> its OpSpec; an opcode missing here is unknown on the wire."""
assert set(OPCODES) == set(Opcode), "every opcode needs a row"


# --- reference schema of a whole frame ---------------------------------------------------


def _payload_key(ctx) -> tuple[str, int]:
    if not ctx.flags & FLAG_REPLY:
        return ("request", ctx.opcode)
    return ("ok" if ctx.ext.status == 0 else "error", ctx.opcode)


def _request_rule(rule):
    """A Check that applies ``rule(spec, ctx)`` to requests only."""
    return Check(lambda c: c.flags & FLAG_REPLY or rule(OPCODES[c.opcode], c))


# Reference schema of one whole frame (validation, golden vectors, fuzz targets). The
# Connection enforces the same rules plus the stateful ones (outstanding ids, states).
Frame = Struct(
    "magic" / Const(MAGIC, Int32ub),
    "version" / Const(VERSION, Int8ub),
    "opcode" / OneOf(Int8ub, {int(o) for o in OPCODES}),
    "flags" / Int16ub,
    Check(this.flags & ~KNOWN_FLAGS == 0),
    Check(lambda c: not c.flags & FLAG_FUA
          or c.flags & ~FLAG_COMPRESSED == FLAG_FUA and OPCODES[c.opcode].fua),
    "request_id" / Int64ub,
    "payload_len" / Int32ub,
    "ext" / IfThenElse(this.flags & FLAG_REPLY, ReplyExt, RequestExt),
    _request_rule(lambda s, c: s.ranged or c.ext.offset == 0 and c.ext.length == 0),
    _request_rule(lambda s, c: s.length[0] <= c.ext.length <= s.length[1]),
    _request_rule(lambda s, c: s.request.size is None or c.flags & FLAG_COMPRESSED
                  or s.request.size(c.ext.length) == c.payload_len),
    # a compressed payload: WRITE requests and OK READ replies only, never empty, never
    # longer than what it decodes to (the request's length; a reply's is in its request)
    Check(lambda c: not c.flags & FLAG_COMPRESSED or (
        OPCODES[c.opcode].compress_reply and c.ext.status == 0 and c.payload_len > 0
        if c.flags & FLAG_REPLY else
        OPCODES[c.opcode].compress_request and 0 < c.payload_len <= c.ext.length)),
    Check(lambda c: not c.flags & FLAG_REPLY or c.ext.status == 0 or c.payload_len <= MAX_MESSAGE),
    "payload"
    / FixedSized(
        this.payload_len,
        Switch(
            _payload_key,
            {
                **{("request", op): spec.request.schema for op, spec in OPCODES.items()},
                **{("ok", op): spec.reply.schema for op, spec in OPCODES.items()},
                **{("error", op): ErrorPayload for op in OPCODES},
            },
            default=Error,
        ),
    ),
)
