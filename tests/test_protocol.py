"""RPV wire protocol: golden vectors, construct/struct agreement, PVID helpers.

The vectors, the golden conversation and the helpers the ``test_protocol_*`` modules share
are in :mod:`tests.helpers.rpv_frames`.
"""

from __future__ import annotations

import errno
import hashlib

import pytest
from construct import ConstructError
from hypothesis import given, settings
from hypothesis import strategies as st

from rpv.protocol import (
    CHECKSUM_CHUNK,
    DIGEST_SIZE,
    MAX_CHECKSUM_LENGTH,
    NEED_DATA,
    Connection,
    Opcode,
    ReadRequest,
    Role,
    State,
    Status,
    build_error_reply,
    chunk_digests,
    describe_status,
    digests_size,
    pvid_to_bytes,
    pvid_to_str,
    status_name,
)
from rpv.protocol import frames as f
from tests.helpers.rpv_frames import (
    CHECKSUM_DIGESTS,
    CONVERSATION,
    PVID,
    PVID_B,
    VECTORS,
    feed,
    join,
    raw_reply,
    raw_request,
)


def test_vectors_cover_every_frame_type():
    kinds = set()
    for data in VECTORS.values():
        _, _, op, flags, _, _ = f.HEADER_STRUCT.unpack_from(data)
        kinds.add((Opcode(op), bool(flags & 1)))
    assert kinds == {(op, reply) for op in Opcode for reply in (False, True)}


def test_golden_conversation():
    """Each side builds exactly the vector and the peer parses exactly the event."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    for name, who, send, expected in CONVERSATION:
        sender, receiver = (client, server) if who == "client" else (server, client)
        built = join(send(client, server))
        assert built.hex() == VECTORS[name].hex(), name
        assert feed(receiver, built) == [expected], name
        assert receiver.next_event() is NEED_DATA
    assert client.state is server.state is State.READY
    assert not client.outstanding and not server.outstanding


def test_golden_conversation_one_byte_at_a_time():
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    for name, who, send, expected in CONVERSATION:
        receiver = server if who == "client" else client
        send(client, server)
        data = VECTORS[name]
        events = []
        for i in range(len(data)):
            receiver.receive_data(data[i : i + 1])
            events += receiver.events()
            if i < len(data) - 1:
                assert events == [], name
        assert events == [expected], name


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_matches_construct_frame_schema(name):
    data = VECTORS[name]
    parsed = f.Frame.parse(data)
    header = f.Header.parse(data)
    fields = f.HEADER_STRUCT.unpack_from(data)
    assert tuple(header[k] for k in header if not k.startswith("_")) == fields
    assert (parsed.magic, parsed.version, parsed.opcode, parsed.flags) == fields[:4]
    assert (parsed.request_id, parsed.payload_len) == fields[4:]
    if parsed.flags & 1:
        assert (parsed.ext.status,) == f.REPLY_EXT_STRUCT.unpack_from(data, 20)
        assert f.REPLY_HEAD_STRUCT.unpack_from(data) == fields + (parsed.ext.status,)
        assert len(data) == 24 + parsed.payload_len
    else:
        ext = f.RequestExt.parse(data[20:36])
        assert (ext.offset, ext.length, ext.deadline_ms) == f.REQUEST_EXT_STRUCT.unpack_from(
            data, 20
        )
        assert f.REQUEST_HEAD_STRUCT.unpack_from(data) == fields + (
            ext.offset,
            ext.length,
            ext.deadline_ms,
        )
        assert len(data) == 36 + parsed.payload_len
    # construct builds the same bytes back
    assert f.Frame.build(parsed) == data


def test_construct_frame_schema_rejects():
    good = VECTORS["write_req"]
    bad = [
        b"XRPV" + good[4:],  # magic
        good[:4] + b"\x02" + good[5:],  # version
        good[:5] + b"\x09" + good[6:],  # opcode
        good[:6] + b"\x00\x08" + good[8:],  # unknown flag
        raw_request(Opcode.WRITE, 1, b"abcde", length=4, flags=4),  # compressed > length
        raw_request(Opcode.WRITE, 1, b"", length=4, flags=4),  # compressed and empty
        raw_request(Opcode.READ, 1, length=4, flags=4),  # COMPRESSED on a READ request
        raw_reply(Opcode.WRITE, 1, 0, flags=5),  # COMPRESSED on a WRITE reply
        raw_reply(Opcode.READ, 1, 5, b"err", flags=5),  # compressed error reply
        raw_reply(Opcode.READ, 1, 0, flags=5),  # compressed READ reply without payload
        VECTORS["read_req"][:6] + b"\x00\x02" + VECTORS["read_req"][8:],  # FUA on READ
        good[:-1],  # short payload
        raw_request(Opcode.WRITE, 1, b"abcd", length=5),  # length != payload_len
        raw_request(Opcode.PING, 1, offset=1),  # PING with offset
        raw_request(Opcode.FLUSH, 1, b"x"),  # FLUSH with payload
        raw_request(Opcode.CHECKSUM, 1, length=0),  # CHECKSUM of nothing
        raw_request(Opcode.CHECKSUM, 1, length=MAX_CHECKSUM_LENGTH + 1),  # too long
        raw_request(Opcode.CHECKSUM, 1, b"x", length=8),  # CHECKSUM with payload
        raw_reply(Opcode.PING, 1, 5, b"x" * 1025),  # error message too long
        raw_reply(Opcode.WRITE, 1, 0, b"x"),  # WRITE reply with payload
        raw_reply(Opcode.READ, 1, 5, b"\xff"),  # message not UTF-8
        raw_reply(Opcode.HELLO, 1, 0, VECTORS["hello_rep"][24:] + b"\x00"),  # trailing byte
        raw_reply(Opcode.DISCOVER, 1, 0, VECTORS["discover_rep"][24:-1] + b"\x02"),  # state 2
    ]
    for data in bad:
        with pytest.raises(ConstructError):
            f.Frame.parse(data)


def test_switch_default_is_an_error():
    switch = f.Frame.subcons[-1].subcon.subcon
    assert switch.default is not None
    with pytest.raises(ConstructError):
        switch.default.parse(b"")


def test_construct_frame_schema_accepts_checksum_bounds():
    for length in (1, MAX_CHECKSUM_LENGTH):
        frame = f.Frame.parse(raw_request(Opcode.CHECKSUM, 1, offset=1 << 40, length=length))
        assert (frame.opcode, frame.ext.length) == (Opcode.CHECKSUM, length)
    f.Frame.parse(raw_reply(Opcode.CHECKSUM, 1, 0, b"d" * DIGEST_SIZE))
    f.Frame.parse(raw_reply(Opcode.CHECKSUM, 1, errno.EIO, b"disk gone"))


# --- CHECKSUM digests --------------------------------------------------------------------


def test_chunk_digests_known_answers():
    assert chunk_digests(b"") == b""
    assert chunk_digests(bytes(0x10001)) == CHECKSUM_DIGESTS
    assert chunk_digests(bytearray(0x10001)) == chunk_digests(memoryview(bytes(0x10001)))
    data = bytes(range(256)) * 700  # 179200 bytes: two full chunks and a short one
    expected = b"".join(
        hashlib.blake2b(data[i : i + CHECKSUM_CHUNK], digest_size=DIGEST_SIZE).digest()
        for i in (0, CHECKSUM_CHUNK, 2 * CHECKSUM_CHUNK)
    )
    assert chunk_digests(data) == expected


def test_digests_size():
    assert [digests_size(n) for n in (0, 1, CHECKSUM_CHUNK, CHECKSUM_CHUNK + 1)] == [0, 16, 16, 32]
    assert digests_size(MAX_CHECKSUM_LENGTH) == 16384


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 3), st.binary(max_size=300), st.integers(0, 255))
def test_chunk_digests_split_at_chunk_boundaries(full, tail, fill):
    """Digests of a range equal the digests of its chunk-aligned pieces, concatenated."""
    head = bytes([fill]) * (full * CHECKSUM_CHUNK)
    whole = chunk_digests(head + tail)
    assert len(whole) == digests_size(len(head) + len(tail))
    assert whole == chunk_digests(head) + chunk_digests(tail)
    assert whole[: full * DIGEST_SIZE] == chunk_digests(bytes([fill]) * CHECKSUM_CHUNK) * full


# --- construct and struct agree on hypothesis headers -------------------------------------

header_fields = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 2**16 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
)
names = ("magic", "version", "opcode", "flags", "request_id", "payload_len")


@settings(max_examples=200)
@given(
    header_fields,
    st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.integers(0, 2**32 - 1),
)
def test_struct_and_construct_headers_agree(fields, ext, status):
    built = f.Header.build(dict(zip(names, fields, strict=True)))
    assert built == f.HEADER_STRUCT.pack(*fields)
    parsed = f.Header.parse(built)
    assert tuple(parsed[n] for n in names) == f.HEADER_STRUCT.unpack(built) == fields
    req = built + f.RequestExt.build(dict(offset=ext[0], length=ext[1], deadline_ms=ext[2]))
    assert req == f.REQUEST_HEAD_STRUCT.pack(*fields, *ext)
    rep = built + f.ReplyExt.build(dict(status=status))
    assert rep == f.REPLY_HEAD_STRUCT.pack(*fields, status)


@settings(max_examples=200)
@given(st.binary(min_size=36, max_size=36))
def test_struct_and_construct_parse_arbitrary_header_bytes_alike(data):
    parsed = f.Header.parse(data)
    assert tuple(parsed[n] for n in names) == f.HEADER_STRUCT.unpack_from(data)
    ext = f.RequestExt.parse(data[20:])
    assert (ext.offset, ext.length, ext.deadline_ms) == f.REQUEST_EXT_STRUCT.unpack_from(data, 20)
    assert f.ReplyExt.parse(data[20:]).status == f.REPLY_EXT_STRUCT.unpack_from(data, 20)[0]


def test_sizes():
    assert f.Header.sizeof() == f.HEADER_STRUCT.size == 20
    assert f.RequestExt.sizeof() == f.REQUEST_EXT_STRUCT.size == 16
    assert f.ReplyExt.sizeof() == f.REPLY_EXT_STRUCT.size == 4
    assert f.HEADER_STRUCT.pack(f.MAGIC, 1, 0, 0, 0, 0)[:4] == b"GRPV"


# --- PVIDs, status -----------------------------------------------------------------------


def test_pvid_round_trip_and_forms():
    assert pvid_to_bytes(PVID) == PVID_B
    assert pvid_to_bytes(PVID.upper()) == PVID_B
    assert pvid_to_bytes("000DD32DAA568B07") == PVID_B  # AIX short form
    assert pvid_to_str(PVID_B) == PVID
    assert pvid_to_str(bytearray(PVID_B)) == PVID


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "000dd32daa568b0",
        "000dd32daa568b070000000000000000ff",
        "g" * 32,
        " " + PVID[1:],
        "00 0d d3 2d aa 56 8b 07",
        "000dd32daa568b0700000000000000",
        "０" * 32,
    ],
)
def test_pvid_rejects(bad):
    with pytest.raises(ValueError):
        pvid_to_bytes(bad)


def test_pvid_to_str_rejects():
    with pytest.raises(ValueError):
        pvid_to_str(b"\x00" * 15)
    with pytest.raises(TypeError):
        pvid_to_str(16)
    with pytest.raises(TypeError):
        pvid_to_bytes(PVID_B)


@given(st.binary(min_size=16, max_size=16))
@settings(max_examples=50)
def test_pvid_hypothesis_round_trip(raw):
    text = pvid_to_str(raw)
    assert len(text) == 32 and text == text.lower()
    assert pvid_to_bytes(text) == raw


def test_status_names():
    assert Status.ENOENT == errno.ENOENT and Status.OK == 0
    assert status_name(0) == "OK"
    assert status_name(errno.EIO) == "EIO"
    assert status_name(99999) == "99999"
    assert describe_status(errno.ENOENT) == "ENOENT (unknown PVID)"
    assert describe_status(errno.EACCES) == "EACCES (peer address not allowed)"
    assert describe_status(errno.ENOSPC) == "ENOSPC"


def test_build_error_reply_helper():
    assert (
        build_error_reply(7, Opcode.READ, errno.EINVAL, "offset out of range")
        == VECTORS["read_err"]
    )
    long = build_error_reply(1, Opcode.PING, errno.EIO, "é" * 1000)
    assert len(long) == 24 + 1024  # cut on a character boundary
    f.Frame.parse(long)


def test_protocol_package_is_sans_io():
    """No asyncio, sockets, clocks or logging in rpv/protocol."""
    import ast
    import pathlib

    import rpv.protocol

    forbidden = {
        "asyncio",
        "socket",
        "time",
        "datetime",
        "logging",
        "structlog",
        "selectors",
        "threading",
        "uvloop",
        "ssl",
    }
    for path in pathlib.Path(rpv.protocol.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] not in forbidden, (path.name, mod)


def test_events_are_small_frozen_dataclasses():
    import dataclasses

    import rpv.protocol.events as events

    for obj in vars(events).values():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            assert obj.__dataclass_params__.frozen, obj
            assert "__slots__" in vars(obj), obj
    ev = ReadRequest(1, 2, 3, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.offset = 5
    assert not hasattr(ev, "__dict__")
