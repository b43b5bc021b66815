"""RPV protocol property tests: round trips, chunking invariance, fuzzing never raises."""

from __future__ import annotations

from construct import ConstructError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpv.protocol import (
    CHECKSUM_CHUNK,
    FLAG_COMPRESSED,
    MAX_CHECKSUM_LENGTH,
    NEED_DATA,
    ChecksumReply,
    ChecksumRequest,
    Connection,
    ConnectionClosed,
    DeviceState,
    DiscoverEntry,
    DiscoverInfo,
    DiscoverReply,
    DiscoverRequest,
    Event,
    FlushReply,
    FlushRequest,
    HelloInfo,
    HelloReply,
    HelloRequest,
    Opcode,
    PingReply,
    PingRequest,
    ProtocolError,
    ReadReply,
    ReadRequest,
    Role,
    State,
    WriteReply,
    WriteRequest,
    digests_size,
)
from rpv.protocol import frames as f
from tests.helpers.rpv_frames import CONVERSATION, PVID, VECTORS, join, ready_pair

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
name = st.text(max_size=40)  # <= 160 UTF-8 bytes, fits the u8 prefix
message = st.text(max_size=80)
errno_status = st.integers(1, 2**32 - 1)

discover_entries = st.builds(
    DiscoverEntry,
    server_name=name,
    disk_name=name,
    pvid=st.binary(min_size=16, max_size=16),
    size=u64,
    state=st.sampled_from(DeviceState),
)
discover_infos = st.builds(
    DiscoverInfo, site=name, node=name, entries=st.lists(discover_entries, max_size=4).map(tuple)
)
hello_infos = st.builds(
    HelloInfo,
    server_site=name,
    server_node=name,
    disk_name=name,
    disk_size=u64,
    block_size=u32,
    max_payload=u32,
    max_outstanding=u32,
    features=u32,
    version=u8,
)

# One client operation: (kind, args...)
operations = st.one_of(
    st.tuples(st.just("read"), u64, st.integers(0, 1024), u32),
    st.tuples(st.just("write"), u64, st.binary(max_size=1024), u32, st.booleans()),
    st.tuples(st.just("flush"), u32),
    st.tuples(st.just("ping"), u32),
    st.tuples(st.just("discover")),
    st.tuples(st.just("checksum"), u64, st.integers(1, MAX_CHECKSUM_LENGTH), u32),
)


def send_op(client: Connection, rid: int, op: tuple):
    """Send one operation; return (buffers, the request event the server should see)."""
    kind = op[0]
    if kind == "read":
        return client.send_read(rid, op[1], op[2], op[3]), ReadRequest(rid, op[1], op[2], op[3])
    if kind == "write":
        bufs = client.send_write(rid, op[1], op[2], op[3], fua=op[4])
        return bufs, WriteRequest(rid, op[1], op[2], op[3], op[4])
    if kind == "flush":
        return client.send_flush(rid, op[1]), FlushRequest(rid, op[1])
    if kind == "ping":
        return client.send_ping(rid, op[1]), PingRequest(rid, op[1])
    if kind == "checksum":
        bufs = client.send_checksum(rid, op[1], op[2], op[3])
        return bufs, ChecksumRequest(rid, op[1], op[2], op[3])
    return client.send_discover(rid), DiscoverRequest(rid)


def reply_op(data, server: Connection, request):
    """Draw a reply (OK or error) for ``request``; return (buffers, expected client event)."""
    rid = request.request_id
    if data.draw(st.booleans(), label="error reply"):
        status, text = data.draw(errno_status), data.draw(message)
        bufs = server.send_error(rid, request.opcode, status, text)
        expected = {
            Opcode.READ: lambda: ReadReply(rid, status, text, b""),
            Opcode.DISCOVER: lambda: DiscoverReply(rid, status, text, None),
            Opcode.WRITE: lambda: WriteReply(rid, status, text),
            Opcode.FLUSH: lambda: FlushReply(rid, status, text),
            Opcode.PING: lambda: PingReply(rid, status, text),
            Opcode.CHECKSUM: lambda: ChecksumReply(rid, status, text, b""),
        }[request.opcode]()
        return bufs, expected
    if isinstance(request, ReadRequest):
        payload = data.draw(st.binary(min_size=request.length, max_size=request.length))
        return server.send_read_reply(rid, payload), ReadReply(rid, 0, "", payload)
    if isinstance(request, ChecksumRequest):
        size = digests_size(request.length)  # up to 16 KiB: repeat a small drawn pattern
        pattern = data.draw(st.binary(min_size=1, max_size=40), label="digest pattern")
        digests = (pattern * (size // len(pattern) + 1))[:size]
        return server.send_checksum_reply(rid, digests), ChecksumReply(rid, 0, "", digests)
    if isinstance(request, DiscoverRequest):
        info = data.draw(discover_infos)
        return server.send_discover_reply(rid, info), DiscoverReply(rid, 0, "", info)
    cls = {Opcode.WRITE: WriteReply, Opcode.FLUSH: FlushReply, Opcode.PING: PingReply}
    return server.send_reply(rid, request.opcode), cls[request.opcode](rid, 0, "")


def feed_all(conn: Connection, data: bytes) -> list:
    conn.receive_data(data)
    return list(conn.events())


def feed_chunks(conn: Connection, data: bytes, cuts: list[int]) -> list:
    events, start = [], 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]:
        conn.receive_data(data[start:cut])  # never b"" (that would be EOF)
        events += conn.events()
        start = cut
    return events


def session(data, ops):
    """Run ops through a ready pair; return (ids, request stream, requests, reply stream,
    replies in arrival order)."""
    client, server = ready_pair(max_outstanding=64)
    ids = data.draw(st.lists(u64, min_size=len(ops), max_size=len(ops), unique=True))
    stream, requests = [], []
    for rid, op in zip(ids, ops, strict=True):
        bufs, expected = send_op(client, rid, op)
        stream += bufs
        requests.append(expected)
    request_bytes = join(stream)
    assert feed_all(server, request_bytes) == requests
    order = data.draw(st.permutations(requests), label="reply order")
    rstream, replies = [], []
    for request in order:
        bufs, expected = reply_op(data, server, request)
        rstream += bufs
        replies.append(expected)
    reply_bytes = join(rstream)
    assert feed_all(client, reply_bytes) == replies
    assert not client.outstanding and not server.outstanding
    return ids, request_bytes, requests, reply_bytes, replies


def replay_client(ids, ops) -> Connection:
    client, _ = ready_pair(max_outstanding=64)
    for rid, op in zip(ids, ops, strict=True):
        send_op(client, rid, op)
    return client


# --- round trips -------------------------------------------------------------------------


@FAST
@given(st.data(), st.lists(operations, min_size=1, max_size=12))
def test_pipelined_round_trip_out_of_order(data, ops):
    session(data, ops)


@FAST
@given(
    rid=u64,
    versions=st.tuples(u8, u8),
    features=u32,
    pvid=st.binary(min_size=16, max_size=16),
    site=name,
    node=name,
    deadline=u32,
    info=hello_infos,
    fail=st.one_of(st.none(), st.tuples(errno_status, message)),
)
def test_hello_round_trip(rid, versions, features, pvid, site, node, deadline, info, fail):
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    bufs = client.send_hello(
        rid,
        pvid,
        site,
        node,
        features,
        min_version=versions[0],
        max_version=versions[1],
        deadline_ms=deadline,
    )
    f.Frame.parse(join(bufs))
    assert feed_all(server, join(bufs)) == [
        HelloRequest(rid, versions[0], versions[1], features, pvid, site, node)
    ]
    if fail is None:
        reply, expected = server.send_hello_reply(rid, info), HelloReply(rid, 0, "", info)
    else:
        reply = server.send_error(rid, Opcode.HELLO, *fail)
        expected = HelloReply(rid, fail[0], fail[1], None)
    f.Frame.parse(join(reply))
    assert feed_all(client, join(reply)) == [expected]
    final = State.IDLE if fail else State.READY
    assert client.state is final
    assert server.state is (State.AWAIT_HELLO if fail else State.READY)


@FAST
@given(rid=u64, info=discover_infos)
def test_discover_round_trip(rid, info):
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    assert feed_all(server, join(client.send_discover(rid))) == [DiscoverRequest(rid)]
    reply = join(server.send_discover_reply(rid, info))
    f.Frame.parse(reply)
    assert feed_all(client, reply) == [DiscoverReply(rid, 0, "", info)]


# --- chunking does not matter ------------------------------------------------------------

small_operations = st.one_of(
    st.tuples(st.just("read"), u64, st.integers(0, 24), u32),
    st.tuples(st.just("write"), u64, st.binary(max_size=24), u32, st.booleans()),
    st.tuples(st.just("flush"), u32),
    st.tuples(st.just("ping"), u32),
    st.tuples(st.just("discover")),
    st.tuples(st.just("checksum"), u64, st.integers(1, 3 * CHECKSUM_CHUNK), u32),
)


@FAST
@given(st.data(), st.lists(small_operations, min_size=1, max_size=6))
def test_one_byte_at_a_time_equals_whole(data, ops):
    ids, request_bytes, requests, reply_bytes, replies = session(data, ops)
    _, server = ready_pair(max_outstanding=64)
    assert feed_chunks(server, request_bytes, list(range(len(request_bytes)))) == requests
    client = replay_client(ids, ops)
    assert feed_chunks(client, reply_bytes, list(range(len(reply_bytes)))) == replies


@FAST
@given(st.data(), st.lists(operations, min_size=1, max_size=8))
def test_random_chunks_equal_whole(data, ops):
    ids, request_bytes, requests, reply_bytes, replies = session(data, ops)
    cuts = data.draw(st.lists(st.integers(0, len(request_bytes)), max_size=20))
    _, server = ready_pair(max_outstanding=64)
    assert feed_chunks(server, request_bytes, cuts) == requests
    cuts = data.draw(st.lists(st.integers(0, len(reply_bytes)), max_size=20))
    client = replay_client(ids, ops)
    assert feed_chunks(client, reply_bytes, cuts) == replies


# --- fuzzing: never raises, ProtocolError is final ----------------------------------------

VECTOR_LIST = list(VECTORS.values())
junk_chunks = st.lists(
    st.one_of(
        st.binary(max_size=48),
        st.sampled_from(VECTOR_LIST),
        st.tuples(st.sampled_from(VECTOR_LIST), st.integers(0, 60), st.binary(max_size=48)).map(
            lambda t: t[0][: t[1]] + t[2]
        ),
    ),
    max_size=8,
)


def fuzz_target(role: Role, ready: bool) -> Connection:
    """A connection with the golden vectors' requests outstanding (client) or fresh (server)."""
    if role is Role.SERVER:
        return ready_pair()[1] if ready else Connection(Role.SERVER)
    if not ready:
        client = Connection(Role.CLIENT)
        client.send_discover(2)
        client.send_hello(1, PVID, "siteA", "nodeA")
        return client
    client, _ = ready_pair()
    client.send_discover(2)
    client.send_read(3, 0x10000, 8, 180000)
    client.send_write(4, 0x200, b"abcd", 180000, fua=True)
    client.send_flush(5, 180000)
    client.send_ping(0x0123456789ABCDEF, 1000)
    client.send_read(7, 1 << 40, 8, 180000)
    client.send_checksum(8, 0x10000, 0x10001, 180000)
    return client


def check_stream(conn: Connection, chunks: list[bytes], eof: bool) -> list:
    """Feed chunks; assert the event-stream invariants; return the events."""
    events, finished = [], False
    for chunk in [*chunks, b""] if eof else chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, Event)
            assert not finished, f"event after the end: {event}"
            events.append(event)
            if isinstance(event, ProtocolError | ConnectionClosed):
                finished = True
                assert conn.state is State.CLOSED
    if isinstance(events[-1:] and events[-1], ProtocolError):
        assert isinstance(events[-1].code, int) and events[-1].message
    if eof:
        assert finished and conn.state is State.CLOSED
    if finished:
        conn.receive_data(VECTORS["ping_req"])
        assert conn.next_event() is NEED_DATA
    return events


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(Role), st.booleans(), junk_chunks, st.booleans())
def test_arbitrary_bytes_never_raise(role, ready, chunks, eof):
    check_stream(fuzz_target(role, ready), chunks, eof)


CLIENT_STREAM = b"".join(VECTORS[n] for n, who, _, _ in CONVERSATION if who == "client")
SERVER_STREAM = b"".join(VECTORS[n] for n, who, _, _ in CONVERSATION if who == "server")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(Role.SERVER, CLIENT_STREAM), (Role.CLIENT, SERVER_STREAM)]),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 10_000), u8), min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
    st.booleans(),
)
def test_mutated_streams_never_raise(target, ready, flips, cuts, eof):
    role, stream = target
    data = bytearray(stream)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data)
    cuts = sorted({c % len(data) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    check_stream(fuzz_target(role, ready), chunks, eof)


REQUEST_VECTORS = [v for v in VECTOR_LIST if not v[7] & 1]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REQUEST_VECTORS), st.lists(st.tuples(st.integers(0, 200), u8), max_size=3))
def test_connection_agrees_with_construct_frame_schema(vector, flips):
    """On single request frames to a READY server, Connection and the construct reference
    schema accept exactly the same frames (modulo state and configured limits)."""
    data = bytearray(vector)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data)
    _, server = ready_pair()
    server.receive_data(data)
    server.receive_data(b"")
    events = list(server.events())
    try:
        frame = f.Frame.parse(data)
    except ConstructError:
        frame = None
    if isinstance(events[0], ProtocolError):
        if frame is not None and len(data) == frame_len(frame):
            # construct accepts: only stateful rules or limits may reject it
            assert (
                frame.opcode == Opcode.HELLO
                or frame.flags & FLAG_COMPRESSED  # this session negotiated no codec
                or frame.payload_len > server.max_payload
                or frame.opcode == Opcode.READ
                and frame.ext.length > server.max_payload
                or frame.opcode == Opcode.CHECKSUM
                and digests_size(frame.ext.length) > server.max_payload
            ), (events, frame)
    else:
        assert frame is not None and len(data) == frame_len(frame)
        assert isinstance(events[0], Event) and isinstance(events[1], ConnectionClosed)


def frame_len(frame) -> int:
    return (24 if frame.flags & 1 else 36) + frame.payload_len
