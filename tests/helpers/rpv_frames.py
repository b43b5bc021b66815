"""The RPV wire protocol's golden vectors and conversation, and helpers to build and feed
frames, shared by the ``test_protocol*`` modules."""

from __future__ import annotations

import errno
import struct

from rpv.protocol import (
    ChecksumReply,
    ChecksumRequest,
    Connection,
    DeviceState,
    DiscoverEntry,
    DiscoverInfo,
    DiscoverReply,
    DiscoverRequest,
    FlushReply,
    FlushRequest,
    HelloInfo,
    HelloReply,
    HelloRequest,
    Opcode,
    PingReply,
    PingRequest,
    ReadReply,
    ReadRequest,
    Role,
    State,
    Status,
    WriteReply,
    WriteRequest,
    chunk_digests,
)
from rpv.protocol import frames as f

PVID = "000dd32daa568b070000000000000000"
PVID_B = bytes.fromhex(PVID)
PVID2 = "00f6a0b1c2d3e4f50000000000000000"
HELLO_INFO = HelloInfo(
    server_site="siteB",
    server_node="nodeB",
    disk_name="hdisk1",
    disk_size=1 << 30,
    block_size=512,
    max_payload=4 << 20,
    max_outstanding=256,
    features=3,
    version=1,
    instance=bytes.fromhex("0123456789abcdeffedcba9876543210"),
)
DISCOVER_INFO = DiscoverInfo(
    site="siteB",
    node="nodeB",
    entries=(
        DiscoverEntry("rpvserver0", "hdisk1", PVID_B, 1 << 30, DeviceState.AVAILABLE),
        DiscoverEntry("rpvserver1", "hdisk2", bytes.fromhex(PVID2), 1 << 29, DeviceState.DEFINED),
    ),
)


def join(buffers) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def feed(conn: Connection, data: bytes) -> list:
    conn.receive_data(data)
    return list(conn.events())


def ready_pair(**kwargs) -> tuple[Connection, Connection]:
    """A client and a server that completed HELLO (request id 0 is free again)."""
    client = Connection(Role.CLIENT, **kwargs)
    server = Connection(Role.SERVER, **kwargs)
    [hello] = feed(server, join(client.send_hello(0, PVID, "siteA", "nodeA")))
    assert isinstance(hello, HelloRequest)
    [reply] = feed(client, join(server.send_hello_reply(0, HELLO_INFO)))
    assert isinstance(reply, HelloReply) and reply.status == 0
    assert client.state is server.state is State.READY
    return client, server


def raw_request(op, rid, payload=b"", offset=0, length=0, deadline=0, flags=0, plen=None):
    """A request frame built with struct, bypassing the Connection's checks."""
    plen = len(payload) if plen is None else plen
    return f.pack_request_head(op, flags, rid, plen, offset, length, deadline) + payload


def raw_reply(op, rid, status=0, payload=b"", plen=None, flags=None):
    plen = len(payload) if plen is None else plen
    head = f.pack_reply_head(op, rid, status, plen)
    if flags is not None:
        head = head[:6] + struct.pack(">H", flags) + head[8:]
    return head + payload


# --- golden vectors ----------------------------------------------------------------------
# Hand-assembled: header | extension | payload. bytes.fromhex ignores the spaces.

V = {
    "discover_req": "47525056 01 02 0000 0000000000000002 00000000"
    " 0000000000000000 00000000 00000000",
    "discover_rep": "47525056 01 02 0001 0000000000000002 00000064 00000000"
    " 05 7369746542 05 6e6f646542 0002"
    " 0a 72707673657276657230 06 686469736b31 000dd32daa568b070000000000000000"
    " 0000000040000000 01"
    " 0a 72707673657276657231 06 686469736b32 00f6a0b1c2d3e4f50000000000000000"
    " 0000000020000000 00",
    "hello_req": "47525056 01 01 0000 0000000000000001 00000022"
    " 0000000000000000 00000000 00000000"
    " 01 01 00000003 000dd32daa568b070000000000000000 05 7369746541 05 6e6f646541",
    "hello_err": "47525056 01 01 0001 0000000000000001 00000000 0000000d",
    "hello_rep": "47525056 01 01 0001 0000000000000001 0000003c 00000000"
    " 01 00000003 05 7369746542 05 6e6f646542 06 686469736b31"
    " 0000000040000000 00000200 00400000 00000100 0123456789abcdeffedcba9876543210",
    "read_req": "47525056 01 03 0000 0000000000000003 00000000 0000000000010000 00000008 0002bf20",
    "read_rep": "47525056 01 03 0001 0000000000000003 00000008 00000000 0102030405060708",
    "write_req": "47525056 01 04 0002 0000000000000004 00000004"
    " 0000000000000200 00000004 0002bf20 61626364",
    "write_rep": "47525056 01 04 0001 0000000000000004 00000000 00000000",
    "flush_req": "47525056 01 05 0000 0000000000000005 00000000 0000000000000000 00000000 0002bf20",
    "flush_rep": "47525056 01 05 0001 0000000000000005 00000000 00000000",
    "ping_req": "47525056 01 06 0000 0123456789abcdef 00000000 0000000000000000 00000000 000003e8",
    "ping_rep": "47525056 01 06 0001 0123456789abcdef 00000000 00000000",
    "read_req2": "47525056 01 03 0000 0000000000000007 00000000 0000010000000000 00000008 0002bf20",
    "read_err": "47525056 01 03 0001 0000000000000007 00000013 00000016"
    " 6f6666736574206f7574206f662072616e6765",
    "checksum_req": "47525056 01 07 0000 0000000000000008 00000000"
    " 0000000000010000 00010001 0002bf20",
    # BLAKE2b-128 of 64 KiB of zeros, then of the one zero byte left over
    "checksum_rep": "47525056 01 07 0001 0000000000000008 00000020 00000000"
    " f17fe67cd59771bc1d29a1245ac20dc0 7025e075d5e2f6cde3cc051a31f07660",
}
VECTORS = {name: bytes.fromhex(hexstr) for name, hexstr in V.items()}
CHECKSUM_DIGESTS = VECTORS["checksum_rep"][24:]

# The golden conversation: (vector, sender, send call, event the peer parses).
CONVERSATION = [
    ("discover_req", "client", lambda c, s: c.send_discover(2), DiscoverRequest(2)),
    (
        "discover_rep",
        "server",
        lambda c, s: s.send_discover_reply(2, DISCOVER_INFO),
        DiscoverReply(2, 0, "", DISCOVER_INFO),
    ),
    (
        "hello_req",
        "client",
        lambda c, s: c.send_hello(1, PVID, "siteA", "nodeA"),
        HelloRequest(1, 1, 1, 3, PVID_B, "siteA", "nodeA"),
    ),
    (
        "hello_err",
        "server",
        lambda c, s: s.send_error(1, Opcode.HELLO, Status.EACCES),
        HelloReply(1, errno.EACCES, "", None),
    ),
    (
        "hello_req",
        "client",
        lambda c, s: c.send_hello(1, PVID_B, "siteA", "nodeA"),
        HelloRequest(1, 1, 1, 3, PVID_B, "siteA", "nodeA"),
    ),
    (
        "hello_rep",
        "server",
        lambda c, s: s.send_hello_reply(1, HELLO_INFO),
        HelloReply(1, 0, "", HELLO_INFO),
    ),
    (
        "read_req",
        "client",
        lambda c, s: c.send_read(3, 0x10000, 8, 180000),
        ReadRequest(3, 0x10000, 8, 180000),
    ),
    (
        "read_rep",
        "server",
        lambda c, s: s.send_read_reply(3, bytes(range(1, 9))),
        ReadReply(3, 0, "", bytes(range(1, 9))),
    ),
    (
        "write_req",
        "client",
        lambda c, s: c.send_write(4, 0x200, b"abcd", 180000, fua=True),
        WriteRequest(4, 0x200, b"abcd", 180000, True),
    ),
    ("write_rep", "server", lambda c, s: s.send_reply(4, Opcode.WRITE), WriteReply(4, 0, "")),
    ("flush_req", "client", lambda c, s: c.send_flush(5, 180000), FlushRequest(5, 180000)),
    ("flush_rep", "server", lambda c, s: s.send_reply(5, Opcode.FLUSH), FlushReply(5, 0, "")),
    (
        "ping_req",
        "client",
        lambda c, s: c.send_ping(0x0123456789ABCDEF, 1000),
        PingRequest(0x0123456789ABCDEF, 1000),
    ),
    (
        "ping_rep",
        "server",
        lambda c, s: s.send_reply(0x0123456789ABCDEF, Opcode.PING),
        PingReply(0x0123456789ABCDEF, 0, ""),
    ),
    (
        "read_req2",
        "client",
        lambda c, s: c.send_read(7, 1 << 40, 8, 180000),
        ReadRequest(7, 1 << 40, 8, 180000),
    ),
    (
        "read_err",
        "server",
        lambda c, s: s.send_error(7, Opcode.READ, Status.EINVAL, "offset out of range"),
        ReadReply(7, errno.EINVAL, "offset out of range", b""),
    ),
    (
        "checksum_req",
        "client",
        lambda c, s: c.send_checksum(8, 0x10000, 0x10001, 180000),
        ChecksumRequest(8, 0x10000, 0x10001, 180000),
    ),
    (
        "checksum_rep",
        "server",
        lambda c, s: s.send_checksum_reply(8, chunk_digests(bytes(0x10001))),
        ChecksumReply(8, 0, "", CHECKSUM_DIGESTS),
    ),
]
