"""RPV Connection: protocol errors, local misuse, EOF handling and the state table."""

from __future__ import annotations

import itertools
from errno import EBUSY, EMSGSIZE, EPROTO

import pytest

from rpv.protocol import (
    CHECKSUM_CHUNK,
    MAX_CHECKSUM_LENGTH,
    NEED_DATA,
    TRANSITIONS,
    ChecksumReply,
    ChecksumRequest,
    Connection,
    ConnectionClosed,
    DiscoverInfo,
    HelloInfo,
    Kind,
    LocalProtocolError,
    Opcode,
    PingRequest,
    ProtocolError,
    ReadReply,
    Role,
    State,
    Status,
    WriteRequest,
)
from rpv.protocol import frames as f
from tests.helpers.rpv_frames import (
    DISCOVER_INFO,
    HELLO_INFO,
    PVID,
    PVID_B,
    VECTORS,
    feed,
    join,
    raw_reply,
    raw_request,
    ready_pair,
)

HELLO_REQ_PAYLOAD = VECTORS["hello_req"][36:]
HELLO_REP_PAYLOAD = VECTORS["hello_rep"][24:]
DISCOVER_REP_PAYLOAD = VECTORS["discover_rep"][24:]


def single_error(conn: Connection, data: bytes, code: int) -> ProtocolError:
    events = feed(conn, data)
    assert len(events) == 1 and isinstance(events[0], ProtocolError), events
    assert events[0].code == code, events[0]
    assert conn.state is State.CLOSED
    assert feed(conn, VECTORS["ping_req"]) == []
    assert conn.next_event() is NEED_DATA
    return events[0]


# --- protocol errors from bad bytes ------------------------------------------------------


def test_oversize_payload_rejected_from_header_alone():
    _, server = ready_pair(max_payload=4096)
    head = raw_request(Opcode.WRITE, 9, plen=4097, length=4097)
    err = single_error(server, head[:20], EMSGSIZE)  # not even the extension yet
    assert (err.request_id, err.opcode) == (9, Opcode.WRITE)
    assert server.buffered == 0


def test_oversize_payload_before_hello_is_still_emsgsize():
    server = Connection(Role.SERVER, max_payload=1 << 20)
    single_error(server, raw_request(Opcode.WRITE, 1, plen=2**32 - 1)[:20], EMSGSIZE)


def test_payload_at_limit_is_fine():
    client, server = ready_pair(max_payload=4096)
    [ev] = feed(server, join(client.send_write(1, 0, b"z" * 4096, 10)))
    assert ev == WriteRequest(1, 0, b"z" * 4096, 10, False)


def test_read_request_longer_than_limit():
    _, server = ready_pair(max_payload=4096)
    single_error(server, raw_request(Opcode.READ, 1, length=4097), EMSGSIZE)


def test_error_reply_message_too_long():
    client, _ = ready_pair()
    client.send_ping(1, 0)
    single_error(client, raw_reply(Opcode.PING, 1, 5, plen=1025), EMSGSIZE)


def test_bad_magic():
    _, server = ready_pair()
    single_error(server, b"XRPV" + VECTORS["ping_req"][4:], EPROTO)


@pytest.mark.parametrize("prefix", [b"G", b"GRPX", b"GET / HTTP/1.1\r\n", b"GRPV\x02"])
def test_bad_prefix_detected_early(prefix):
    server = Connection(Role.SERVER)
    if prefix == b"G":
        assert feed(server, prefix) == []  # could still be GRPV
        single_error(server, b"X", EPROTO)
    else:
        single_error(server, prefix, EPROTO)


@pytest.mark.parametrize(
    "offset, value",
    [
        (4, b"\x00"),
        (4, b"\x02"),
        (5, b"\x00"),
        (5, b"\x08"),
        (5, b"\xff"),
        (6, b"\x00\x04"),
        (6, b"\x80\x00"),
        (6, b"\x00\x02"),
    ],
)
def test_bad_header_fields(offset, value):
    """version, opcode, flag bits, FUA on a non-WRITE request."""
    _, server = ready_pair()
    frame = bytearray(VECTORS["ping_req"])
    frame[offset : offset + len(value)] = value
    single_error(server, bytes(frame), EPROTO)


def test_fua_on_reply_is_an_error():
    client, _ = ready_pair()
    client.send_write(4, 0, b"abcd", 1)
    single_error(client, raw_reply(Opcode.WRITE, 4, flags=0x0003), EPROTO)


def test_request_before_hello():
    server = Connection(Role.SERVER)
    for frame in (
        raw_request(Opcode.READ, 1, length=8),
        raw_request(Opcode.WRITE, 1, b"ab", length=2),
        raw_request(Opcode.FLUSH, 1),
        raw_request(Opcode.CHECKSUM, 1, length=8),
    ):
        server = Connection(Role.SERVER)
        err = single_error(server, frame, EPROTO)
        assert err.request_id == 1


def test_io_while_hello_pending():
    server = Connection(Role.SERVER)
    feed(server, raw_request(Opcode.HELLO, 1, HELLO_REQ_PAYLOAD))
    assert server.state is State.HELLO_RECEIVED
    single_error(server, raw_request(Opcode.READ, 2, length=8), EPROTO)


def test_second_hello_is_an_error():
    _, server = ready_pair()
    single_error(server, raw_request(Opcode.HELLO, 5, HELLO_REQ_PAYLOAD), EPROTO)


def test_unknown_reply_id():
    client, _ = ready_pair()
    client.send_ping(1, 0)
    err = single_error(client, raw_reply(Opcode.PING, 2), EPROTO)
    assert "unknown request id 2" in err.message


def test_reply_with_wrong_opcode():
    client, _ = ready_pair()
    client.send_ping(1, 0)
    single_error(client, raw_reply(Opcode.FLUSH, 1), EPROTO)


def test_reply_received_by_server_and_request_by_client():
    _, server = ready_pair()
    single_error(server, raw_reply(Opcode.PING, 0), EPROTO)
    client, _ = ready_pair()
    single_error(client, raw_request(Opcode.PING, 0), EPROTO)


def test_too_many_outstanding_at_server():
    _, server = ready_pair(max_outstanding=3)
    for rid in range(3):
        assert feed(server, raw_request(Opcode.PING, rid)) == [PingRequest(rid, 0)]
    single_error(server, raw_request(Opcode.PING, 3), EBUSY)


def test_outstanding_slot_freed_by_reply():
    _, server = ready_pair(max_outstanding=1)
    feed(server, raw_request(Opcode.PING, 1))
    server.send_reply(1, Opcode.PING)
    assert feed(server, raw_request(Opcode.PING, 1)) == [PingRequest(1, 0)]


def test_duplicate_request_id_at_server():
    _, server = ready_pair()
    feed(server, raw_request(Opcode.PING, 1))
    single_error(server, raw_request(Opcode.FLUSH, 1), EPROTO)


@pytest.mark.parametrize(
    "frame",
    [
        raw_request(Opcode.WRITE, 1, b"abcd", length=5),
        raw_request(Opcode.WRITE, 1, b"abcd", length=3),
        raw_request(Opcode.READ, 1, b"x", length=1),
        raw_request(Opcode.FLUSH, 1, b"x"),
        raw_request(Opcode.FLUSH, 1, offset=8),
        raw_request(Opcode.PING, 1, length=8),
        raw_request(Opcode.DISCOVER, 1, b"x"),
        raw_request(Opcode.CHECKSUM, 1, b"x", length=8),
        raw_request(Opcode.CHECKSUM, 1, b"x" * 8, length=8),
        raw_request(Opcode.CHECKSUM, 1, length=0),
    ],
)
def test_payload_inconsistent_with_request(frame):
    _, server = ready_pair()
    single_error(server, frame, EPROTO)


@pytest.mark.parametrize(
    "payload",
    [
        HELLO_REQ_PAYLOAD + b"\x00",  # trailing byte
        HELLO_REQ_PAYLOAD[:-1] + b"\xff",  # bad UTF-8 in client_node
        HELLO_REQ_PAYLOAD[:22] + b"\x30" + HELLO_REQ_PAYLOAD[23:],  # string runs off the end
        b"\x00" * 23,  # too short (checked from the header)
        b"\x00" * 600,  # too long for any HELLO
    ],
)
def test_malformed_hello_request(payload):
    server = Connection(Role.SERVER)
    single_error(server, raw_request(Opcode.HELLO, 1, payload), EPROTO)


@pytest.mark.parametrize(
    "op, payload",
    [
        (Opcode.HELLO, HELLO_REP_PAYLOAD + b"\x00"),
        (Opcode.HELLO, HELLO_REP_PAYLOAD[:-1]),
        (
            Opcode.HELLO,
            HELLO_REP_PAYLOAD[:5] + b"\x05\xff\xfe\xfd\xfc\xfb" + HELLO_REP_PAYLOAD[11:],
        ),
        (Opcode.DISCOVER, DISCOVER_REP_PAYLOAD[:-1] + b"\x02"),  # bad device state
        (Opcode.DISCOVER, DISCOVER_REP_PAYLOAD[:-1]),
        (Opcode.DISCOVER, DISCOVER_REP_PAYLOAD + b"\x00"),
        (Opcode.DISCOVER, b"\x00\x00\x00"),
        (Opcode.DISCOVER, b"\x00\x00\xff\xff"),  # 65535 entries promised, none there
    ],
)
def test_malformed_replies(op, payload):
    client = Connection(Role.CLIENT)
    if op is Opcode.HELLO:
        client.send_hello(1, PVID, "a", "b")
    else:
        client.send_discover(1)
    single_error(client, raw_reply(op, 1, 0, payload), EPROTO)


def test_read_reply_length_must_match():
    for plen in (7, 9, 0):
        client, _ = ready_pair()
        client.send_read(1, 0, 8, 100)
        single_error(client, raw_reply(Opcode.READ, 1, 0, b"x" * plen), EPROTO)


def test_read_error_reply_has_no_data():
    client, _ = ready_pair()
    client.send_read(1, 0, 8, 100)
    assert feed(client, raw_reply(Opcode.READ, 1, Status.EIO, b"disk gone")) == [
        ReadReply(1, Status.EIO, "disk gone", b"")
    ]


def test_checksum_request_length_limits():
    _, server = ready_pair()
    assert feed(server, raw_request(Opcode.CHECKSUM, 1, offset=7, length=MAX_CHECKSUM_LENGTH)) == [
        ChecksumRequest(1, 7, MAX_CHECKSUM_LENGTH, 0)
    ]
    err = single_error(
        server, raw_request(Opcode.CHECKSUM, 2, length=MAX_CHECKSUM_LENGTH + 1), EMSGSIZE
    )
    assert (err.request_id, err.opcode) == (2, Opcode.CHECKSUM)
    # the digests of the reply must fit the payload limit: 1024 bytes are 64 chunks
    _, server = ready_pair(max_payload=1024)
    assert feed(server, raw_request(Opcode.CHECKSUM, 1, length=64 * CHECKSUM_CHUNK))
    single_error(server, raw_request(Opcode.CHECKSUM, 2, length=64 * CHECKSUM_CHUNK + 1), EMSGSIZE)


def test_checksum_reply_length_must_match():
    """One 16-byte digest per started 64 KiB chunk: 0x10001 bytes need exactly 32."""
    for plen in (0, 16, 31, 33, 48):
        client, _ = ready_pair()
        client.send_checksum(1, 0, 0x10001, 100)
        err = single_error(client, raw_reply(Opcode.CHECKSUM, 1, 0, b"d" * plen), EPROTO)
        assert (err.request_id, err.opcode) == (1, Opcode.CHECKSUM)
    client, _ = ready_pair()
    client.send_checksum(1, 0, 0x10001, 100)
    assert feed(client, raw_reply(Opcode.CHECKSUM, 1, 0, b"d" * 32)) == [
        ChecksumReply(1, 0, "", b"d" * 32)
    ]


def test_checksum_error_reply_has_no_digests():
    client, server = ready_pair()
    feed(server, join(client.send_checksum(1, 1 << 40, 512, 100)))
    reply = join(server.send_error(1, Opcode.CHECKSUM, Status.EINVAL, "out of range"))
    assert feed(client, reply) == [ChecksumReply(1, Status.EINVAL, "out of range", b"")]
    assert not client.outstanding and not server.outstanding


def test_checksum_local_errors():
    client, server = ready_pair(max_payload=1024)
    for length in (0, -1, MAX_CHECKSUM_LENGTH + 1, 64 * CHECKSUM_CHUNK + 1):
        with pytest.raises(LocalProtocolError):
            client.send_checksum(1, 0, length, 0)
    with pytest.raises(LocalProtocolError):
        client.send_checksum(1, -1, 8, 0)
    assert not client.outstanding
    feed(server, join(client.send_checksum(1, 0, 64 * CHECKSUM_CHUNK, 0)))
    assert dict(client.outstanding) == {1: (Opcode.CHECKSUM, 64 * CHECKSUM_CHUNK)}
    with pytest.raises(LocalProtocolError):
        server.send_checksum_reply(1, b"d" * 1008)  # 63 digests for 64 chunks
    with pytest.raises(LocalProtocolError):
        server.send_reply(1, Opcode.CHECKSUM)  # a CHECKSUM reply carries digests
    with pytest.raises(LocalProtocolError):
        server.send_read_reply(1, b"d" * 1024)  # wrong opcode
    bufs = server.send_checksum_reply(1, memoryview(bytearray(1024)))
    assert isinstance(bufs[1], memoryview)  # not copied
    assert feed(client, join(bufs)) == [ChecksumReply(1, 0, "", bytes(1024))]
    with pytest.raises(LocalProtocolError):
        server.send_checksum_reply(1, bytes(1024))  # no longer outstanding


@pytest.mark.parametrize(
    "op, send",
    [
        (Opcode.WRITE, lambda c: c.send_write(1, 0, b"a", 1)),
        (Opcode.FLUSH, lambda c: c.send_flush(1, 1)),
        (Opcode.PING, lambda c: c.send_ping(1, 1)),
    ],
)
def test_empty_replies_must_be_empty(op, send):
    client, _ = ready_pair()
    send(client)
    single_error(client, raw_reply(op, 1, 0, b"x"), EPROTO)


def test_error_message_must_be_utf8():
    client, _ = ready_pair()
    client.send_ping(1, 0)
    single_error(client, raw_reply(Opcode.PING, 1, 5, b"\xff\xfe"), EPROTO)


# --- EOF ---------------------------------------------------------------------------------


def test_clean_eof():
    server = Connection(Role.SERVER)
    server.receive_data(VECTORS["ping_req"])
    server.receive_data(b"")
    assert list(server.events()) == [PingRequest(0x0123456789ABCDEF, 1000), ConnectionClosed()]
    assert server.state is State.CLOSED
    assert server.next_event() is NEED_DATA
    server.receive_data(b"more")
    assert server.next_event() is NEED_DATA


@pytest.mark.parametrize("cut", [1, 19, 20, 35, 36, 37])
def test_eof_mid_frame(cut):
    client, server = ready_pair()
    data = join(client.send_write(1, 0, b"abcd", 5))
    server.receive_data(data[:cut])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    [err] = list(server.events())
    assert isinstance(err, ProtocolError) and err.code == EPROTO
    assert server.state is State.CLOSED


def test_data_after_eof_is_ignored():
    server = Connection(Role.SERVER)
    server.receive_data(b"")
    server.receive_data(VECTORS["ping_req"])
    assert list(server.events()) == [ConnectionClosed()]


# --- local misuse ------------------------------------------------------------------------


def test_local_errors_client():
    client = Connection(Role.CLIENT, max_payload=1024, max_outstanding=2)
    with pytest.raises(LocalProtocolError):
        client.send_read(1, 0, 8, 1)  # before HELLO
    with pytest.raises(LocalProtocolError):
        client.send_hello(1, "nothex", "a", "b")
    with pytest.raises(LocalProtocolError):
        client.send_hello(1, b"short", "a", "b")
    with pytest.raises(LocalProtocolError):
        client.send_hello(1, PVID, "x" * 256, "b")  # site name too long
    with pytest.raises(LocalProtocolError):
        client.send_reply(1, Opcode.PING)  # client cannot reply
    assert client.state is State.IDLE and not client.outstanding
    client.send_hello(1, PVID, "a", "b")
    with pytest.raises(LocalProtocolError):
        client.send_ping(2, 0)  # nothing but waiting while HELLO is pending
    feed(client, raw_reply(Opcode.HELLO, 1, 0, HELLO_REP_PAYLOAD))
    assert client.state is State.READY
    client.send_ping(1, 0)
    with pytest.raises(LocalProtocolError):
        client.send_ping(1, 0)  # duplicate id
    with pytest.raises(LocalProtocolError):
        client.send_write(2, 0, b"x" * 1025, 0)  # larger than max_payload
    with pytest.raises(LocalProtocolError):
        client.send_read(2, 0, 1025, 0)
    with pytest.raises(LocalProtocolError):
        client.send_read(2, 0, 1, 2**32)  # deadline out of range
    with pytest.raises(LocalProtocolError):
        client.send_read(2, -1, 1, 0)
    with pytest.raises(LocalProtocolError):
        client.send_ping(2**64, 0)
    with pytest.raises(LocalProtocolError):
        client.send_hello(2, PVID, "a", "b")  # HELLO only once
    client.send_write(2, 0, memoryview(b"x" * 1024), 0)
    with pytest.raises(LocalProtocolError):
        client.send_ping(3, 0)  # max_outstanding
    assert dict(client.outstanding) == {1: (Opcode.PING, 0), 2: (Opcode.WRITE, 1024)}


def test_local_errors_server():
    client, server = ready_pair(max_payload=1024)
    with pytest.raises(LocalProtocolError):
        server.send_ping(1, 0)  # server cannot request
    with pytest.raises(LocalProtocolError):
        server.send_reply(1, Opcode.PING)  # nothing outstanding
    feed(server, join(client.send_read(1, 0, 8, 0)))
    with pytest.raises(LocalProtocolError):
        server.send_reply(1, Opcode.WRITE)  # wrong opcode
    with pytest.raises(LocalProtocolError):
        server.send_reply(1, Opcode.READ)  # READ needs data
    with pytest.raises(LocalProtocolError):
        server.send_read_reply(1, b"x" * 7)  # wrong length
    with pytest.raises(LocalProtocolError):
        server.send_error(1, Opcode.READ, 0)  # status 0 is not an error
    with pytest.raises(LocalProtocolError):
        server.send_error(1, 99, 5)
    with pytest.raises(LocalProtocolError):
        server.send_hello_reply(1, HELLO_INFO)
    with pytest.raises(LocalProtocolError):
        server.send_discover_reply(1, DISCOVER_INFO)
    assert 1 in server.outstanding
    bufs = server.send_read_reply(1, memoryview(bytearray(8)))
    assert isinstance(bufs[1], memoryview)  # not copied
    assert feed(client, join(bufs)) == [ReadReply(1, 0, "", bytes(8))]
    feed(server, join(client.send_discover(2)))
    big = DiscoverInfo("s", "n", DISCOVER_INFO.entries * 12)  # 4 + 12 * 86 > 1024 bytes
    with pytest.raises(LocalProtocolError):
        server.send_discover_reply(2, big)
    server.send_discover_reply(2, DiscoverInfo("s", "n", DISCOVER_INFO.entries * 11))


def test_server_hello_reply_encoding_errors():
    server = Connection(Role.SERVER)
    feed(server, raw_request(Opcode.HELLO, 1, HELLO_REQ_PAYLOAD))
    bad = HelloInfo("s" * 300, "n", "d", 1, 512, 1, 1)
    with pytest.raises(LocalProtocolError):
        server.send_hello_reply(1, bad)
    assert server.state is State.HELLO_RECEIVED


def test_send_after_close_raises():
    client, server = ready_pair()
    feed(server, b"junkjunkjunkjunkjunkjunk")
    feed(client, b"junkjunkjunkjunkjunkjunk")
    with pytest.raises(LocalProtocolError):
        client.send_ping(1, 0)
    with pytest.raises(LocalProtocolError):
        server.send_error(1, Opcode.PING, 5)


def test_write_buffers_are_not_copied():
    client, _ = ready_pair()
    data = bytearray(b"q" * 4096)
    bufs = client.send_write(1, 0, data, 0)
    assert len(bufs) == 2 and bufs[1] is data


def test_error_message_truncated():
    client, server = ready_pair()
    feed(server, join(client.send_ping(1, 0)))
    [ev] = feed(client, join(server.send_error(1, Opcode.PING, Status.EIO, "x" * 5000)))
    assert ev.message == "x" * 1024


def test_hello_error_returns_to_initial_states():
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    feed(server, join(client.send_hello(1, PVID_B, "a", "b")))
    assert feed(client, join(server.send_error(1, Opcode.HELLO, Status.ENOENT, "no such PVID")))
    assert client.state is State.IDLE and server.state is State.AWAIT_HELLO
    feed(server, join(client.send_hello(1, PVID_B, "a", "b")))
    feed(client, join(server.send_hello_reply(1, HELLO_INFO)))
    assert client.state is server.state is State.READY


def test_discover_reply_accepted_while_hello_pending():
    """Replies to requests sent in IDLE may arrive after HELLO was sent."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    feed(server, join(client.send_discover(1) + client.send_ping(2, 0)))
    feed(server, join(client.send_hello(3, PVID, "a", "b")))
    assert server.state is State.HELLO_RECEIVED
    replies = server.send_reply(2, Opcode.PING) + server.send_discover_reply(1, DISCOVER_INFO)
    assert [type(e).__name__ for e in feed(client, join(replies))] == ["PingReply", "DiscoverReply"]
    assert client.state is State.HELLO_SENT
    feed(client, join(server.send_hello_reply(3, HELLO_INFO)))
    assert client.state is State.READY


def test_constructor_validation():
    with pytest.raises(TypeError):
        Connection("client")
    with pytest.raises(ValueError):
        Connection(Role.CLIENT, max_payload=1023)
    with pytest.raises(ValueError):
        Connection(Role.CLIENT, max_payload=2**32)
    with pytest.raises(ValueError):
        Connection(Role.SERVER, max_outstanding=0)


# --- the state table, every (role, state, opcode, kind) -----------------------------------

RID = 77


def drive(role: Role, state: State) -> Connection:
    """Reach ``state`` through the public API only."""
    if role is Role.CLIENT:
        conn = Connection(Role.CLIENT)
        if state in (State.HELLO_SENT, State.READY):
            conn.send_hello(1, PVID, "a", "b")
        if state is State.READY:
            feed(conn, raw_reply(Opcode.HELLO, 1, 0, HELLO_REP_PAYLOAD))
    else:
        conn = Connection(Role.SERVER)
        if state in (State.HELLO_RECEIVED, State.READY):
            feed(conn, raw_request(Opcode.HELLO, 1, HELLO_REQ_PAYLOAD))
        if state is State.READY:
            conn.send_hello_reply(1, HELLO_INFO)
    if state is State.CLOSED:
        feed(conn, b"\x00" * 20)
    assert conn.state is state
    return conn


ROLE_STATES = [
    (Role.CLIENT, s) for s in (State.IDLE, State.HELLO_SENT, State.READY, State.CLOSED)
] + [(Role.SERVER, s) for s in (State.AWAIT_HELLO, State.HELLO_RECEIVED, State.READY, State.CLOSED)]

OK_PAYLOAD = {
    Opcode.HELLO: HELLO_REP_PAYLOAD,
    Opcode.DISCOVER: DISCOVER_REP_PAYLOAD,
    Opcode.READ: b"12345678",
    Opcode.CHECKSUM: b"0123456789abcdef",  # one digest for 8 bytes
}


def client_send(conn: Connection, op: Opcode):
    return {
        Opcode.HELLO: lambda: conn.send_hello(RID, PVID, "a", "b"),
        Opcode.DISCOVER: lambda: conn.send_discover(RID),
        Opcode.READ: lambda: conn.send_read(RID, 0, 8, 0),
        Opcode.WRITE: lambda: conn.send_write(RID, 0, b"12345678", 0),
        Opcode.FLUSH: lambda: conn.send_flush(RID, 0),
        Opcode.PING: lambda: conn.send_ping(RID, 0),
        Opcode.CHECKSUM: lambda: conn.send_checksum(RID, 0, 8, 0),
    }[op]()


def server_reply(conn: Connection, op: Opcode, kind: Kind):
    if kind is Kind.ERROR:
        return conn.send_error(RID, op, Status.EIO, "boom")
    return {
        Opcode.HELLO: lambda: conn.send_hello_reply(RID, HELLO_INFO),
        Opcode.DISCOVER: lambda: conn.send_discover_reply(RID, DISCOVER_INFO),
        Opcode.READ: lambda: conn.send_read_reply(RID, b"12345678"),
        Opcode.CHECKSUM: lambda: conn.send_checksum_reply(RID, b"0123456789abcdef"),
    }.get(op, lambda: conn.send_reply(RID, op))()


def server_request_bytes(op: Opcode) -> bytes:
    if op is Opcode.HELLO:
        return raw_request(op, RID, HELLO_REQ_PAYLOAD)
    if op in (Opcode.READ, Opcode.CHECKSUM):
        return raw_request(op, RID, length=8)
    if op is Opcode.WRITE:
        return raw_request(op, RID, b"12345678", length=8)
    return raw_request(op, RID)


@pytest.mark.parametrize(
    "role, state, op, kind",
    [(r, s, o, k) for (r, s), o, k in itertools.product(ROLE_STATES, Opcode, Kind)],
    ids=lambda v: getattr(v, "name", v),
)
def test_state_table(role, state, op, kind):
    conn = drive(role, state)
    expected = TRANSITIONS.get((role, state, op, kind))
    if state is State.CLOSED:
        assert expected is None
    if kind is not Kind.REQUEST and state is not State.CLOSED:
        # A reply needs an outstanding request of that opcode (white-box: some of these
        # combinations are unreachable, which is exactly what the table must reject).
        conn._outstanding[RID] = (op, 8)
    local = (role is Role.CLIENT) == (kind is Kind.REQUEST)
    if local:
        action = (
            (lambda: client_send(conn, op))
            if role is Role.CLIENT
            else (lambda: server_reply(conn, op, kind))
        )
        if expected is None:
            with pytest.raises(LocalProtocolError):
                action()
            assert conn.state is state
        else:
            frame = join(action())
            f.Frame.parse(frame)  # what we send is valid on the wire
            assert conn.state is expected
    else:
        if role is Role.SERVER:
            data = server_request_bytes(op)
        else:
            status = 0 if kind is Kind.OK else Status.EIO
            data = raw_reply(op, RID, status, OK_PAYLOAD.get(op, b"") if not status else b"boom")
        events = feed(conn, data)
        if state is State.CLOSED:
            assert events == []  # CLOSED absorbs everything
        elif expected is None:
            assert len(events) == 1 and isinstance(events[0], ProtocolError)
            assert events[0].code == EPROTO
            assert conn.state is State.CLOSED
        else:
            assert len(events) == 1 and not isinstance(events[0], ProtocolError), events
            assert events[0].opcode is op and events[0].request_id == RID
            assert conn.state is expected


@pytest.mark.parametrize("role, state", ROLE_STATES, ids=str)
@pytest.mark.parametrize("op", list(Opcode), ids=lambda o: o.name)
def test_wrong_direction_always_rejected(role, state, op):
    """A server never accepts replies; a client never accepts requests."""
    conn = drive(role, state)
    conn_outstanding = state is not State.CLOSED
    if conn_outstanding:
        conn._outstanding[RID] = (op, 8)
    data = (
        raw_reply(op, RID, 0, OK_PAYLOAD.get(op, b""))
        if role is Role.SERVER
        else (server_request_bytes(op))
    )
    events = feed(conn, data)
    if state is State.CLOSED:
        assert events == []
    else:
        assert len(events) == 1 and events[0].code == EPROTO
        assert conn.state is State.CLOSED


def test_state_table_covers_checksum():
    """CHECKSUM is a session opcode: allowed in READY only, never changes state."""
    rows = {(r, s, k) for (r, s, o, k) in TRANSITIONS if o is Opcode.CHECKSUM}
    assert rows == {(r, State.READY, k) for r in Role for k in Kind}
    ready = {o for (r, s, o, k) in TRANSITIONS if s is State.READY and k is Kind.REQUEST}
    assert Opcode.CHECKSUM in ready and Opcode.HELLO not in ready


def test_table_shape():
    states = {State.IDLE, State.HELLO_SENT, State.READY}
    assert {s for (r, s, _, _) in TRANSITIONS if r is Role.CLIENT} == states
    assert not any(s is State.CLOSED for (_, s, _, _) in TRANSITIONS)
    assert set(TRANSITIONS.values()) <= set(State) - {State.CLOSED}
    # Only HELLO changes state.
    for (_role, state, op, _kind), nxt in TRANSITIONS.items():
        if op is not Opcode.HELLO:
            assert nxt is state


# --- receiving into the protocol's buffers (asyncio.BufferedProtocol) ----------------------


def pump_buffered(conn: Connection, data: bytes, sizes) -> list:
    """Deliver ``data`` the way a BufferedProtocol transport does, in chunks of ``sizes``."""
    events, pos = [], 0
    for size in itertools.cycle(sizes):
        if pos >= len(data):
            return events
        buf = conn.get_buffer(-1)
        n = min(size, len(buf), len(data) - pos)
        buf[:n] = data[pos:pos + n]
        del buf
        conn.buffer_updated(n)
        pos += n
        events.extend(conn.events())


@pytest.mark.parametrize("sizes", [[1 << 20], [7, 65536, 3], [4096], [36, 100_000], [1]])
def test_large_and_small_frames_through_get_buffer(sizes):
    client, server = ready_pair(max_payload=4 << 20)
    big = bytes(range(256)) * 4096  # 1 MiB: received straight into its own buffer
    small = b"s" * 4000
    stream = join(client.send_write(1, 0, big, 5) + client.send_write(2, 4096, small, 5)
                  + client.send_write(3, 1 << 20, big[:65536], 5, fua=True))
    if sizes == [1]:
        stream = stream[: 36 + 70_000]  # byte by byte: keep it short
    events = pump_buffered(server, stream, sizes)
    if sizes == [1]:
        assert events == [] and server.buffered == 70_000
        return
    assert events == [WriteRequest(1, 0, big, 5, False), WriteRequest(2, 4096, small, 5, False),
                      WriteRequest(3, 1 << 20, big[:65536], 5, True)]
    assert server.buffered == 0


def test_large_payload_mixing_receive_data_and_get_buffer():
    client, server = ready_pair(max_payload=4 << 20)
    big = bytes(range(256)) * 1024
    stream = join(client.send_write(1, 0, big, 5)) + VECTORS["ping_req"][:10]
    server.receive_data(stream[:1000])
    assert server.next_event() is NEED_DATA
    events = pump_buffered(server, stream[1000:200_000], [50_000])
    server.receive_data(stream[200_000:])  # the rest of the payload and a partial PING
    events += list(server.events())
    assert events == [WriteRequest(1, 0, big, 5, False)]
    assert server.buffered == 10


def test_eof_in_the_middle_of_a_large_payload():
    client, server = ready_pair(max_payload=4 << 20)
    stream = join(client.send_write(1, 0, bytes(1 << 20), 5))
    assert pump_buffered(server, stream[:300_000], [65536]) == []
    server.receive_data(b"")
    [err] = list(server.events())
    assert isinstance(err, ProtocolError) and err.code == EPROTO
    assert server.state is State.CLOSED and server.buffered == 0
