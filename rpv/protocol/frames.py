"""Frame layouts. construct defines every schema; the hot fixed header is also decoded with
precompiled ``struct`` objects of the identical layout (tests assert both agree).

Frame = header (20 bytes) + extension (request: 16 bytes, reply: 4 bytes) + payload.
All integers are big-endian. Nothing here parses with a compiled construct.
"""

from __future__ import annotations

import struct

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

from .constants import (
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
from .events import INSTANCE_SIZE, DiscoverEntry, DiscoverInfo, HelloInfo
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


def _payload_key(ctx) -> tuple[str, int]:
    if not ctx.flags & FLAG_REPLY:
        return ("request", ctx.opcode)
    return ("ok" if ctx.ext.status == 0 else "error", ctx.opcode)


# Reference schema of one whole frame (validation, golden vectors, fuzz targets). The
# Connection enforces the same rules plus the stateful ones (outstanding ids, states).
Frame = Struct(
    "magic" / Const(MAGIC, Int32ub),
    "version" / Const(VERSION, Int8ub),
    "opcode" / OneOf(Int8ub, {int(o) for o in Opcode}),
    "flags" / Int16ub,
    Check(this.flags & ~KNOWN_FLAGS == 0),
    Check(lambda c: not c.flags & FLAG_FUA or c.flags == FLAG_FUA and c.opcode == Opcode.WRITE),
    "request_id" / Int64ub,
    "payload_len" / Int32ub,
    "ext" / IfThenElse(this.flags & FLAG_REPLY, ReplyExt, RequestExt),
    Check(
        lambda c: (
            c.flags & FLAG_REPLY
            or c.opcode in (Opcode.READ, Opcode.WRITE, Opcode.CHECKSUM)
            or c.ext.offset == 0
            and c.ext.length == 0
        )
    ),
    Check(
        lambda c: (
            c.flags & FLAG_REPLY
            or c.opcode != Opcode.CHECKSUM
            or 1 <= c.ext.length <= MAX_CHECKSUM_LENGTH
        )
    ),
    Check(
        lambda c: c.flags & FLAG_REPLY or c.opcode != Opcode.WRITE or c.ext.length == c.payload_len
    ),
    Check(lambda c: not c.flags & FLAG_REPLY or c.ext.status == 0 or c.payload_len <= MAX_MESSAGE),
    "payload"
    / FixedSized(
        this.payload_len,
        Switch(
            _payload_key,
            {
                ("request", Opcode.HELLO): HelloRequestPayload,
                ("request", Opcode.DISCOVER): _EMPTY,
                ("request", Opcode.READ): _EMPTY,
                ("request", Opcode.WRITE): GreedyBytes,
                ("request", Opcode.FLUSH): _EMPTY,
                ("request", Opcode.PING): _EMPTY,
                ("request", Opcode.CHECKSUM): _EMPTY,
                ("ok", Opcode.HELLO): HelloReplyPayload,
                ("ok", Opcode.DISCOVER): DiscoverReplyPayload,
                ("ok", Opcode.READ): GreedyBytes,
                ("ok", Opcode.WRITE): _EMPTY,
                ("ok", Opcode.FLUSH): _EMPTY,
                ("ok", Opcode.PING): _EMPTY,
                ("ok", Opcode.CHECKSUM): GreedyBytes,
                **{("error", op): ErrorPayload for op in Opcode},
            },
            default=Error,
        ),
    ),
)

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


def pack_reply_head(opcode: int, request_id: int, status: int, payload_len: int) -> bytes:
    """Header + reply extension (raises struct.error on out-of-range fields)."""
    return REPLY_HEAD_STRUCT.pack(
        MAGIC, VERSION, opcode, FLAG_REPLY, request_id, payload_len, status
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
