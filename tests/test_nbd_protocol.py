"""Sans-IO tests of the NBD server protocol core: byte vectors, option and request parsing."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpv.nbd.protocol import (
    IHAVEOPT,
    NEED_DATA,
    OPTION_REPLY_MAGIC,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    Cmd,
    CmdFlag,
    ConnectionClosed,
    Disconnect,
    Err,
    ExportListRequested,
    ExportOpened,
    ExportRequested,
    Info,
    Opt,
    OptionAnswered,
    OptionRejected,
    ProtocolError,
    Rep,
    Request,
    ServerConnection,
    StartTLS,
    State,
    TransmissionFlag,
    answer_from_registry,
    encode_reply,
    errno_to_nbd,
)

MiB = 1 << 20


class Dev:
    def __init__(self, name: str, size: int, readonly: bool = False):
        self.name = name
        self.size = size
        if readonly:
            self.readonly = True


class Registry:
    def __init__(self, *devs: Dev):
        self.devs = {d.name: d for d in devs}

    def get_export(self, name):
        return self.devs.get(name)

    def list_exports(self):
        return [(n, f"disk {n}") for n in sorted(self.devs)]


def registry() -> Registry:
    return Registry(Dev("hdisk1", MiB), Dev("hdisk2", 8 * MiB), Dev("ro", MiB, readonly=True))


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def go_data(name: str, *infos: int) -> bytes:
    raw = name.encode()
    return (struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(infos))
            + b"".join(struct.pack(">H", i) for i in infos))


def request(cmd: int, handle: int, offset: int = 0, length: int = 0, flags: int = 0,
            payload: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + payload


def events(conn: ServerConnection) -> list:
    out = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def parse_option_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    replies = []
    while data:
        magic, opt, rep, length = struct.unpack_from(">QIII", data)
        assert magic == OPTION_REPLY_MAGIC
        replies.append((opt, rep, data[20 : 20 + length]))
        data = data[20 + length :]
    return replies


def handshaken(client_flags: int = 3) -> ServerConnection:
    conn = ServerConnection(registry())
    conn.data_to_send()
    conn.receive_data(struct.pack(">I", client_flags))
    assert events(conn) == []
    return conn


def opened(name: str = "hdisk1", **kw) -> ServerConnection:
    conn = ServerConnection(registry(), **kw)
    conn.receive_data(struct.pack(">I", 3) + option(Opt.GO, go_data(name)))
    evs = events(conn)
    assert isinstance(evs[-1], ExportOpened)
    conn.data_to_send()
    return conn


def replies(data: bytes) -> list[tuple[int, int]]:
    out = []
    for i in range(0, len(data), 16):
        magic, err, handle = struct.unpack_from(">IIQ", data, i)
        assert magic == SIMPLE_REPLY_MAGIC
        out.append((handle, err))
    return out


# --------------------------------------------------------------------------- handshake


def test_greeting_vector():
    conn = ServerConnection(registry())
    assert conn.data_to_send() == b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x03"
    assert conn.data_to_send() == b""
    assert conn.state is State.CLIENT_FLAGS


def test_unknown_client_flags_close():
    conn = ServerConnection(registry())
    conn.receive_data(b"\x00\x00\x00\x04")
    [ev] = events(conn)
    assert isinstance(ev, ProtocolError)
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("client_flags,zeroes", [(1, 124), (3, 0), (0, 124)])
def test_export_name_legacy(client_flags, zeroes):
    conn = handshaken(client_flags)
    conn.receive_data(option(Opt.EXPORT_NAME, b"hdisk1"))
    [ev] = events(conn)
    assert isinstance(ev, ExportOpened) and ev.name == "hdisk1" and ev.size == MiB
    # size 1 MiB, flags HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES|CAN_MULTI_CONN
    assert conn.data_to_send() == bytes.fromhex("0000000000100000" "016d") + bytes(zeroes)
    assert conn.state is State.TRANSMISSION


def test_export_name_unknown_terminates():
    conn = handshaken()
    conn.receive_data(option(Opt.EXPORT_NAME, b"nope"))
    [ev] = events(conn)
    assert isinstance(ev, ProtocolError) and "nope" in ev.reason
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED


def test_go_vector():
    conn = handshaken()
    conn.receive_data(option(Opt.GO, go_data("hdisk1", Info.NAME, Info.DESCRIPTION,
                                             Info.BLOCK_SIZE)))
    [ev] = events(conn)
    assert isinstance(ev, ExportOpened)
    hdr = "0003e889045565a9" "00000007"
    expected = bytes.fromhex(
        hdr + "00000003" "0000000c" "0000" "0000000000100000" "016d"  # INFO EXPORT
        + hdr + "00000003" "00000008" "0001" + b"hdisk1".hex()  # INFO NAME
        + hdr + "00000003" "0000000d" "0002" + b"disk hdisk1".hex()  # INFO DESCRIPTION
        + hdr + "00000003" "0000000e" "0003" "00000200" "00001000" "02000000"  # BLOCK_SIZE
        + hdr + "00000001" "00000000"  # ACK
    )
    assert conn.data_to_send() == expected
    assert conn.state is State.TRANSMISSION


def test_info_then_go():
    conn = handshaken()
    conn.receive_data(option(Opt.INFO, go_data("hdisk2")))
    assert events(conn) == [OptionAnswered(Opt.INFO)]
    reps = parse_option_replies(conn.data_to_send())
    assert [r[1] for r in reps] == [Rep.INFO, Rep.INFO, Rep.ACK]
    assert struct.unpack(">HQH", reps[0][2]) == (Info.EXPORT, 8 * MiB, 0x16D)
    assert struct.unpack(">HIII", reps[1][2]) == (Info.BLOCK_SIZE, 512, 4096, 32 * MiB)
    assert conn.state is State.OPTIONS
    conn.receive_data(option(Opt.GO, go_data("hdisk2")))
    [ev] = events(conn)
    assert isinstance(ev, ExportOpened) and ev.name == "hdisk2"


def test_readonly_flags():
    conn = handshaken()
    conn.receive_data(option(Opt.GO, go_data("ro")))
    [ev] = events(conn)
    assert ev.flags & TransmissionFlag.READ_ONLY
    assert not ev.flags & TransmissionFlag.SEND_WRITE_ZEROES


def test_go_unknown_export():
    conn = handshaken()
    conn.receive_data(option(Opt.GO, go_data("nope")))
    [ev] = events(conn)
    assert isinstance(ev, OptionRejected) and ev.reply == Rep.ERR_UNKNOWN
    [(opt, rep, msg)] = parse_option_replies(conn.data_to_send())
    assert (opt, rep) == (Opt.GO, Rep.ERR_UNKNOWN) and b"nope" in msg
    assert conn.state is State.OPTIONS  # the client may try again


@pytest.mark.parametrize("data", [
    b"",  # too short
    struct.pack(">I", 100) + b"ab\x00\x00",  # name longer than the option
    go_data("hdisk1") + b"\x00",  # trailing byte
    struct.pack(">I", 6) + b"hdisk1" + struct.pack(">H", 2) + b"\x00\x01",  # short info list
    struct.pack(">I", 2) + b"\xff\xfe" + b"\x00\x00",  # not UTF-8
])
def test_go_malformed(data):
    conn = handshaken()
    conn.receive_data(option(Opt.GO, data))
    [ev] = events(conn)
    assert isinstance(ev, OptionRejected) and ev.reply == Rep.ERR_INVALID
    [(_, rep, _)] = parse_option_replies(conn.data_to_send())
    assert rep == Rep.ERR_INVALID


def test_list():
    conn = handshaken()
    conn.receive_data(option(Opt.LIST))
    assert events(conn) == [OptionAnswered(Opt.LIST)]
    reps = parse_option_replies(conn.data_to_send())
    assert [r[1] for r in reps] == [Rep.SERVER] * 3 + [Rep.ACK]
    assert reps[0][2] == b"\x00\x00\x00\x06hdisk1disk hdisk1"
    conn.receive_data(option(Opt.LIST, b"x"))
    [ev] = events(conn)
    assert ev.reply == Rep.ERR_INVALID


def test_abort():
    conn = handshaken()
    conn.receive_data(option(Opt.ABORT) + b"garbage after abort")
    [ev] = events(conn)
    assert isinstance(ev, Disconnect)
    assert conn.data_to_send() == bytes.fromhex("0003e889045565a9" "00000002" "00000001" "00000000")
    assert conn.state is State.CLOSED
    assert events(conn) == []


@pytest.mark.parametrize("opt", [Opt.STRUCTURED_REPLY, Opt.SET_META_CONTEXT,
                                 Opt.LIST_META_CONTEXT, Opt.EXTENDED_HEADERS, Opt.STARTTLS,
                                 Opt.PEEK_EXPORT, 12345])
def test_unsupported_options(opt):
    conn = handshaken()
    conn.receive_data(option(opt, b"some option data") + option(Opt.LIST))
    evs = events(conn)
    assert isinstance(evs[0], OptionRejected) and evs[0].reply == Rep.ERR_UNSUP
    reps = parse_option_replies(conn.data_to_send())
    assert reps[0][:2] == (opt, Rep.ERR_UNSUP)
    assert reps[-1][:2] == (Opt.LIST, Rep.ACK)  # the option data was skipped cleanly


# --------------------------------------------------------------------------- forced TLS


def tls_handshaken() -> ServerConnection:
    conn = ServerConnection(registry(), tls=True)
    conn.data_to_send()
    conn.receive_data(struct.pack(">I", 3))
    assert events(conn) == []
    return conn


@pytest.mark.parametrize("opt,data", [(Opt.LIST, b""), (Opt.GO, go_data("hdisk1")),
                                      (Opt.INFO, go_data("hdisk1")),
                                      (Opt.STRUCTURED_REPLY, b"")])
def test_tls_required_before_any_option(opt, data):
    """Forced TLS: nothing about any export (not even the list) before STARTTLS."""
    conn = tls_handshaken()
    conn.receive_data(option(opt, data))
    [ev] = events(conn)
    assert isinstance(ev, OptionRejected) and ev.reply == Rep.ERR_TLS_REQD
    [(o, rep, msg)] = parse_option_replies(conn.data_to_send())
    assert (o, rep) == (opt, Rep.ERR_TLS_REQD) and b"STARTTLS" in msg
    assert b"hdisk" not in msg and conn.state is State.OPTIONS and conn.device is None


def test_tls_required_export_name_closes():
    conn = tls_handshaken()
    conn.receive_data(option(Opt.EXPORT_NAME, b"hdisk1"))
    [ev] = events(conn)
    assert isinstance(ev, ProtocolError) and "TLS" in ev.reason
    assert conn.data_to_send() == b"" and conn.state is State.CLOSED and conn.device is None


def test_starttls_then_go():
    conn = tls_handshaken()
    conn.receive_data(option(Opt.STARTTLS))
    [ev] = events(conn)
    assert isinstance(ev, StartTLS)
    assert parse_option_replies(conn.data_to_send()) == [(Opt.STARTTLS, Rep.ACK, b"")]
    # nothing is parsed until the adapter reports the handshake done
    conn.receive_data(option(Opt.GO, go_data("hdisk1")))
    assert events(conn) == [] and conn.data_to_send() == b""
    conn.tls_established()
    evs = events(conn)
    assert isinstance(evs[-1], ExportOpened) and evs[-1].name == "hdisk1"
    # a second STARTTLS would be meaningless; on a fresh connection it is refused
    conn2 = tls_handshaken()
    conn2.receive_data(option(Opt.STARTTLS))
    events(conn2)
    conn2.tls_established()
    conn2.data_to_send()
    conn2.receive_data(option(Opt.STARTTLS))
    [ev] = events(conn2)
    assert isinstance(ev, OptionRejected) and ev.reply == Rep.ERR_INVALID


def test_starttls_with_trailing_plaintext_closes():
    """Bytes sent after STARTTLS before the handshake could be injected by anyone on the path:
    they end the connection instead of being taken as coming through TLS."""
    conn = tls_handshaken()
    conn.receive_data(option(Opt.STARTTLS) + option(Opt.GO, go_data("hdisk1")))
    [ev] = events(conn)
    assert isinstance(ev, ProtocolError) and conn.state is State.CLOSED


def test_starttls_with_data_is_invalid():
    conn = tls_handshaken()
    conn.receive_data(option(Opt.STARTTLS, b"x"))
    [ev] = events(conn)
    assert isinstance(ev, OptionRejected) and ev.reply == Rep.ERR_INVALID


def test_abort_allowed_before_tls():
    conn = tls_handshaken()
    conn.receive_data(option(Opt.ABORT))
    [ev] = events(conn)
    assert isinstance(ev, Disconnect)


def test_one_event_per_option():
    """Options come out one at a time, so a caller can stop between them (back-pressure)."""
    conn = handshaken()
    conn.receive_data(option(Opt.LIST) * 1000)
    assert conn.next_event() == OptionAnswered(Opt.LIST)
    assert len(parse_option_replies(conn.data_to_send())) == 4
    assert conn.buffered == 999 * 16


def test_option_length_limit_checked_before_buffering():
    conn = handshaken()
    conn.receive_data(struct.pack(">QII", IHAVEOPT, Opt.GO, 64 * 1024 + 1))
    [ev] = events(conn)  # decided on the header alone
    assert isinstance(ev, ProtocolError)
    conn.receive_data(bytes(100_000))
    assert conn.buffered == 0


def test_bad_option_magic():
    conn = handshaken()
    conn.receive_data(b"XXXXXXXX" + bytes(8))
    [ev] = events(conn)
    assert isinstance(ev, ProtocolError)


def test_eof_during_handshake():
    conn = handshaken()
    conn.receive_data(option(Opt.LIST)[:5])
    conn.receive_data(b"")
    [ev] = events(conn)
    assert isinstance(ev, ConnectionClosed) and ev.phase == "handshake"


def test_registry_exception_is_unknown_export():
    class Broken(Registry):
        def get_export(self, name):
            raise RuntimeError("boom")

    conn = ServerConnection(Broken())
    conn.receive_data(struct.pack(">I", 3) + option(Opt.GO, go_data("x")))
    [ev] = events(conn)
    assert ev.reply == Rep.ERR_UNKNOWN


def test_export_lookup_is_an_event_the_caller_answers():
    """Without a registry the core never looks exports up: it asks, waits for the answer and
    goes on with it."""
    conn = ServerConnection()
    conn.receive_data(struct.pack(">I", 3) + option(Opt.LIST)
                      + option(Opt.GO, go_data("d", Info.DESCRIPTION)))
    assert conn.next_event() == ExportListRequested()
    assert conn.next_event() is NEED_DATA and conn.data_to_send().endswith(b"\x00\x03")
    with pytest.raises(ValueError):
        conn.export_found(object(), 1, 1)  # a list was asked for, not an export
    conn.export_list([("d", "disk d")])
    assert conn.next_event() == OptionAnswered(Opt.LIST)
    assert conn.next_event() == ExportRequested("d", Opt.GO, True)
    with pytest.raises(ValueError):
        conn.export_list([])
    dev = object()
    conn.export_found(dev, MiB, int(TransmissionFlag.HAS_FLAGS), "disk d")
    assert conn.next_event() == ExportOpened("d", dev, MiB, int(TransmissionFlag.HAS_FLAGS))
    reps = parse_option_replies(conn.data_to_send())
    assert (Opt.GO, Rep.INFO, struct.pack(">H", Info.DESCRIPTION) + b"disk d") in reps
    with pytest.raises(ValueError):
        conn.export_missing()  # nothing pending any more


def test_export_lookup_answers_give_the_registry_bytes():
    """Answering the events by hand produces the bytes a registry-driven connection sends."""
    for opt, data in [(Opt.GO, go_data("hdisk2", Info.NAME, Info.DESCRIPTION)),
                      (Opt.INFO, go_data("ro")), (Opt.GO, go_data("nope")),
                      (Opt.EXPORT_NAME, b"hdisk1"), (Opt.EXPORT_NAME, b"nope"),
                      (Opt.LIST, b"")]:
        wire = struct.pack(">I", 1) + option(opt, data)
        by_registry = ServerConnection(registry())
        by_registry.receive_data(wire)
        want = events(by_registry)
        by_hand = ServerConnection()
        by_hand.receive_data(wire)
        [lookup] = events(by_hand)
        assert type(lookup) in (ExportRequested, ExportListRequested)
        answer_from_registry(by_hand, registry(), lookup)
        got = events(by_hand)
        assert [type(e) for e in got] == [type(e) for e in want]
        assert by_hand.data_to_send() == by_registry.data_to_send()
        assert by_hand.state is by_registry.state


def test_export_name_lookup_missing_closes():
    conn = ServerConnection()
    conn.receive_data(struct.pack(">I", 3) + option(Opt.EXPORT_NAME, b"nope"))
    assert conn.next_event() == ExportRequested("nope", Opt.EXPORT_NAME)
    conn.export_missing()
    ev = conn.next_event()
    assert isinstance(ev, ProtocolError) and conn.state is State.CLOSED


# --------------------------------------------------------------------------- transmission


def test_request_vector():
    conn = opened()
    conn.receive_data(bytes.fromhex("25609513" "0000" "0000" "0102030405060708"
                                    "0000000000001000" "00000200"))
    [ev] = events(conn)
    assert ev == Request(Cmd.READ, 0, 0x0102030405060708, 4096, 512, None)
    assert encode_reply(0x0102030405060708, 5) == bytes.fromhex(
        "67446698" "00000005" "0102030405060708")


def test_send_reply_vectors():
    conn = opened()
    conn.receive_data(request(Cmd.FLUSH, 7) + request(Cmd.READ, 8, 0, 4)
                      + request(Cmd.READ, 9, 0, 1 << 17))
    assert [ev.handle for ev in events(conn)] == [7, 8, 9]
    assert conn.unanswered == 3
    assert conn.send_reply(7, Err.EIO) == [encode_reply(7, Err.EIO)]
    assert conn.send_reply(8, 0, b"data") == [encode_reply(8) + b"data"]  # small: one buffer
    big = bytes(1 << 17)
    head, data = conn.send_reply(9, 0, big)
    assert head == encode_reply(9) and data is big  # large: not copied
    assert conn.unanswered == 0


def test_send_reply_refuses_unknown_or_answered_handles():
    conn = opened()
    with pytest.raises(ValueError):
        conn.send_reply(1)  # never issued
    conn.receive_data(request(Cmd.FLUSH, 1))
    [ev] = events(conn)
    with pytest.raises(ValueError):
        conn.send_reply(1, Err.EIO, b"data")  # an error carries no data
    assert conn.send_reply(1) == [encode_reply(1)]
    with pytest.raises(ValueError):
        conn.send_reply(1)  # answered twice
    # A handle the core answered itself (invalid request) is not the caller's to answer.
    conn.receive_data(request(Cmd.FLUSH, 2, 0, 1))
    assert events(conn) == [] and replies(conn.data_to_send()) == [(2, Err.EINVAL)]
    with pytest.raises(ValueError):
        conn.send_reply(2)


def test_send_reply_counts_a_reused_handle():
    """A client that reuses an in-flight handle gets one reply per request."""
    conn = opened()
    conn.receive_data(request(Cmd.FLUSH, 5) * 2)
    assert len(events(conn)) == 2 and conn.unanswered == 2
    conn.send_reply(5)
    conn.send_reply(5)
    assert conn.unanswered == 0
    with pytest.raises(ValueError):
        conn.send_reply(5)


def test_requests_after_disconnect_are_still_answered():
    conn = opened()
    conn.receive_data(request(Cmd.FLUSH, 3) + request(Cmd.DISC, 4))
    assert events(conn) == [Request(Cmd.FLUSH, 0, 3, 0, 0, None), Disconnect("NBD_CMD_DISC")]
    assert conn.send_reply(3) == [encode_reply(3)]


STREAM = [
    (request(Cmd.READ, 1, 0, 4096), Request(0, 0, 1, 0, 4096, None)),
    (request(Cmd.WRITE, 2, 512, 5, CmdFlag.FUA, b"hello"), Request(1, 1, 2, 512, 5, b"hello")),
    (request(Cmd.FLUSH, 3), Request(3, 0, 3, 0, 0, None)),
    (request(Cmd.TRIM, 4, 0, 65536), Request(4, 0, 4, 0, 65536, None)),
    (request(Cmd.WRITE_ZEROES, 5, 4096, 8192, CmdFlag.NO_HOLE | CmdFlag.FUA),
     Request(6, 3, 5, 4096, 8192, None)),
    (request(Cmd.WRITE, 6, 0, 0), Request(1, 0, 6, 0, 0, b"")),
]


def test_requests_whole_and_byte_at_a_time():
    stream = b"".join(s for s, _ in STREAM) + request(Cmd.DISC, 99)
    expected = [e for _, e in STREAM] + [Disconnect("NBD_CMD_DISC")]
    conn = opened()
    conn.receive_data(stream)
    assert events(conn) == expected
    conn = opened()
    got = []
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1])
        got += events(conn)
    assert got == expected
    assert conn.state is State.CLOSED


def test_large_write_payload_in_chunks():
    payload = bytes(range(256)) * 4096  # 1 MiB
    conn = opened("hdisk2")
    data = request(Cmd.WRITE, 7, MiB, len(payload), 0, payload) + request(Cmd.FLUSH, 8)
    for i in range(0, len(data), 65536):
        conn.receive_data(data[i : i + 65536])
    evs = events(conn)
    assert [e.handle for e in evs] == [7, 8]
    assert evs[0].data == payload and type(evs[0].data) is bytes


@pytest.mark.parametrize("req,err", [
    (request(Cmd.READ, 1, MiB - 512, 1024), Err.EINVAL),  # past the end
    (request(Cmd.WRITE, 1, MiB, 1, 0, b"x"), Err.ENOSPC),  # write past the end
    (request(Cmd.WRITE_ZEROES, 1, 0, MiB + 1), Err.ENOSPC),
    (request(Cmd.TRIM, 1, MiB, 1), Err.EINVAL),
    (request(Cmd.READ, 1, 2**64 - 1, 1), Err.EINVAL),  # offset overflow
    (request(Cmd.READ, 1, 0, 512, CmdFlag.DF), Err.EINVAL),  # flag not negotiated
    (request(Cmd.READ, 1, 0, 512, 0x8000), Err.EINVAL),  # unknown flag
    (request(Cmd.WRITE, 1, 0, 1, CmdFlag.NO_HOLE, b"x"), Err.EINVAL),  # flag of another cmd
    (request(Cmd.WRITE_ZEROES, 1, 0, 512, CmdFlag.FAST_ZERO), Err.EINVAL),
    (request(Cmd.FLUSH, 1, 0, 512), Err.EINVAL),
    (request(Cmd.BLOCK_STATUS, 1, 0, 512), Err.EINVAL),
    (request(Cmd.CACHE, 1, 0, 512), Err.EINVAL),
    (request(77, 1, 0, 512), Err.EINVAL),  # unknown command
    (request(Cmd.READ, 1, 0, 32 * MiB + 1), Err.EINVAL),  # over the maximum block size
])
def test_rejected_requests(req, err):
    conn = opened()
    conn.receive_data(req + request(Cmd.READ, 2, 0, 512))
    evs = events(conn)
    assert [e.handle for e in evs] == [2]  # the stream stays in sync
    assert replies(conn.data_to_send()) == [(1, err)]


def test_readonly_export_rejects_writes():
    conn = opened("ro")
    conn.receive_data(request(Cmd.WRITE, 1, 0, 3, 0, b"abc") + request(Cmd.WRITE_ZEROES, 2, 0, 8)
                      + request(Cmd.TRIM, 3, 0, 8) + request(Cmd.FLUSH, 4)
                      + request(Cmd.READ, 5, 0, 8))
    assert [e.handle for e in events(conn)] == [4, 5]
    assert replies(conn.data_to_send()) == [(1, Err.EPERM), (2, Err.EPERM), (3, Err.EPERM)]


def test_oversized_write_is_skipped_not_buffered():
    conn = opened("hdisk2", max_request_length=1 * MiB)
    length = 4 * MiB
    conn.receive_data(request(Cmd.WRITE, 1, 0, length))
    assert events(conn) == []
    chunk = bytes(256 * 1024)
    for _ in range(length // len(chunk) - 1):
        conn.receive_data(chunk)
        assert conn.buffered == 0
        assert events(conn) == []
    assert conn.data_to_send() == b""
    conn.receive_data(chunk + request(Cmd.READ, 2, 0, 512))  # payload end + next request
    assert [e.handle for e in events(conn)] == [2]
    assert replies(conn.data_to_send()) == [(1, Err.EINVAL)]


def test_oversized_write_complete_in_buffer():
    conn = opened("hdisk2", max_request_length=1024)
    conn.receive_data(request(Cmd.WRITE, 1, 0, 2048, 0, bytes(2048)) + request(Cmd.FLUSH, 2))
    assert [e.handle for e in events(conn)] == [2]
    assert replies(conn.data_to_send()) == [(1, Err.EINVAL)]


def test_bad_request_magic_closes():
    conn = opened()
    conn.receive_data(b"\x00" * 28)
    [ev] = events(conn)
    assert isinstance(ev, ProtocolError)
    assert conn.state is State.CLOSED
    conn.receive_data(request(Cmd.READ, 1, 0, 512))
    assert events(conn) == []


def test_disc_stops_parsing():
    conn = opened()
    conn.receive_data(request(Cmd.READ, 1, 0, 512) + request(Cmd.DISC, 2)
                      + request(Cmd.READ, 3, 0, 512))
    evs = events(conn)
    assert [type(e) for e in evs] == [Request, Disconnect]


def test_eof_in_transmission():
    conn = opened()
    conn.receive_data(request(Cmd.WRITE, 1, 0, 4096, 0, bytes(100)))
    conn.receive_data(b"")
    [ev] = events(conn)
    assert isinstance(ev, ConnectionClosed) and ev.phase == "transmission"


def test_errno_mapping():
    assert errno_to_nbd(errno.EPERM) == 1
    assert errno_to_nbd(errno.EROFS) == 1
    assert errno_to_nbd(errno.EIO) == 5
    assert errno_to_nbd(errno.ENOMEM) == 12
    assert errno_to_nbd(errno.EINVAL) == 22
    assert errno_to_nbd(errno.ENOSPC) == 28
    assert errno_to_nbd(errno.EDQUOT) == 28
    assert errno_to_nbd(errno.EOVERFLOW) == 75
    assert errno_to_nbd(errno.ESHUTDOWN) == 108
    assert errno_to_nbd(errno.ETIMEDOUT) == 5
    assert errno_to_nbd(None) == 5


# --------------------------------------------------------------------------- properties

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drive(conn: ServerConnection, chunks: list[bytes]) -> list:
    got = []
    for chunk in chunks:
        conn.receive_data(chunk)
        got += events(conn)
        conn.data_to_send()
    conn.receive_data(b"")
    got += events(conn)
    return got


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_handshake_bytes_never_raise(chunks):
    drive(ServerConnection(registry()), chunks)


@FUZZ
@given(st.lists(st.sampled_from([option(Opt.STARTTLS), option(Opt.LIST),
                                 option(Opt.GO, go_data("hdisk1")),
                                 option(Opt.EXPORT_NAME, b"hdisk1"), b"\x00" * 5]),
                max_size=6), st.booleans())
def test_forced_tls_never_opens_an_export_without_tls(msgs, establish):
    """Whatever the client sends, no export opens (and no name leaks) before TLS."""
    conn = ServerConnection(registry(), tls=True)
    conn.receive_data(struct.pack(">I", 3))
    for msg in msgs:
        conn.receive_data(msg)
        evs = events(conn)
        out = conn.data_to_send()
        if not conn.tls_active:
            assert not any(isinstance(e, ExportOpened) for e in evs)
            assert b"hdisk" not in out
        if establish and any(isinstance(e, StartTLS) for e in evs):
            conn.tls_established()


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_after_valid_prefix_never_raise(chunks):
    conn = ServerConnection(registry())
    conn.receive_data(struct.pack(">I", 3))
    drive(conn, chunks)


_msgs = st.one_of(
    st.builds(lambda o, d: option(o, d), st.integers(0, 15), st.binary(max_size=24)),
    st.builds(lambda n: option(Opt.GO, go_data(n, 0, 1, 2, 3)),
              st.sampled_from(["hdisk1", "ro", "x", ""])),
    st.builds(lambda c, f, o, n: request(c, 1, o, n, f),
              st.integers(0, 9), st.integers(0, 0xFFFF), st.integers(0, 2 * MiB),
              st.integers(0, 64)),
    st.binary(max_size=40),
)


@FUZZ
@given(st.lists(_msgs, max_size=12), st.data())
def test_structured_garbage_never_raises(msgs, data):
    stream = struct.pack(">I", 3) + b"".join(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    chunks = [c for c in chunks if c]
    for ev in drive(ServerConnection(registry()), chunks):
        if isinstance(ev, Request):
            assert ev.offset + ev.length <= MiB


@FUZZ
@given(st.data())
def test_chunking_does_not_change_events(data):
    stream = b"".join(s for s, _ in STREAM)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    chunks = [c for c in chunks if c]  # b"" would mean EOF
    conn = opened()
    got = []
    for c in chunks:
        conn.receive_data(c)
        got += events(conn)
    assert got == [e for _, e in STREAM]
