"""RPV payload compression: HELLO negotiation, round trips per codec, raw fallback for
incompressible data, and bounded, never-raising decoding of hostile compressed bytes."""

from __future__ import annotations

import errno
import os

import lz4.block
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from rpv.protocol import (
    FEATURE_LZ4,
    FEATURE_ZSTD,
    FLAG_COMPRESSED,
    Connection,
    HelloReply,
    HelloRequest,
    LocalProtocolError,
    Opcode,
    ProtocolError,
    ReadReply,
    Role,
    State,
    WriteRequest,
)
from rpv.protocol import compress as z
from rpv.protocol import frames as f
from tests.helpers.rpv_frames import HELLO_INFO, PVID, feed, join, raw_reply, raw_request
from tests.test_protocol_fuzz import check_stream

CODECS = ["zstd", "lz4"]
TEXT = b"".join(b"line %06d: the quick brown fox jumps over the lazy dog\n" % i
                for i in range(4000))  # ~220 KiB of compressible text
RANDOM = os.urandom(256 * 1024)


def session(codec: str, accept: bool = True, max_payload: int = 4 << 20):
    """A READY client/server pair; the client asked for ``codec``, the server's HELLO reply
    accepts it (or not); both count payloads."""
    counts = {"client": [], "server": []}
    client = Connection(Role.CLIENT, max_payload=max_payload, compress=codec,
                        on_payload=lambda *a: counts["client"].append(a))
    server = Connection(Role.SERVER, max_payload=max_payload,
                        on_payload=lambda *a: counts["server"].append(a))
    [hello] = feed(server, join(client.send_hello(0, PVID, "siteA", "nodeA")))
    assert isinstance(hello, HelloRequest)
    features = 3 | (hello.features & z.COMPRESS_FEATURES if accept else 0)
    info = HELLO_INFO.__class__(**{**_fields(HELLO_INFO), "features": features})
    [reply] = feed(client, join(server.send_hello_reply(0, info)))
    assert isinstance(reply, HelloReply) and reply.ok
    return client, server, counts


def _fields(info) -> dict:
    return {k: getattr(info, k) for k in info.__slots__}


def flags_of(frame: bytes) -> int:
    return f.HEADER_STRUCT.unpack_from(frame)[3]


# --- negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize("codec,bit", [("zstd", FEATURE_ZSTD), ("lz4", FEATURE_LZ4)])
def test_hello_asks_for_the_codec_and_both_ends_agree(codec, bit):
    client = Connection(Role.CLIENT, compress=codec)
    frame = join(client.send_hello(0, PVID, "siteA", "nodeA"))
    assert f.Frame.parse(frame).payload.features == 3 | bit
    client, server, _ = session(codec)
    assert client.codec == server.codec == codec


def test_no_compression_by_default():
    client = Connection(Role.CLIENT)
    assert client.compress == "none" and client.codec is None
    frame = join(client.send_hello(0, PVID, "siteA", "nodeA"))
    assert f.Frame.parse(frame).payload.features == 3  # the golden hello_req is unchanged


@pytest.mark.parametrize("codec", CODECS)
def test_server_that_does_not_accept_leaves_the_session_uncompressed(codec):
    """An old server (or one without the codec) answers without the bit: no codec on either
    side. RPVClient turns this into 'RPV server X does not support compress=...'."""
    client, server, _ = session(codec, accept=False)
    assert client.codec is None and server.codec is None
    assert client.state is server.state is State.READY
    [head, data] = client.send_write(1, 0, TEXT[:8192], 1000)
    assert not flags_of(head) & FLAG_COMPRESSED and bytes(data) == TEXT[:8192]


def test_server_never_compresses_what_the_client_did_not_ask_for():
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    feed(server, join(client.send_hello(0, PVID, "siteA", "nodeA")))
    info = HELLO_INFO.__class__(**{**_fields(HELLO_INFO), "features": 3 | FEATURE_ZSTD})
    feed(client, join(server.send_hello_reply(0, info)))
    assert server.codec is None and client.codec is None


def test_bad_compress_argument():
    with pytest.raises(ValueError):
        Connection(Role.CLIENT, compress="gzip")


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_compressible_write_and_read_round_trip(codec):
    client, server, counts = session(codec)
    bufs = client.send_write(1, 4096, TEXT, 1000, fua=True)
    wire = join(bufs)
    assert flags_of(wire) & FLAG_COMPRESSED and len(wire) < len(TEXT) // 2
    frame = f.Frame.parse(wire)  # the reference schema accepts it
    assert frame.ext.length == len(TEXT) and frame.payload_len == len(wire) - 36
    [ev] = feed(server, wire)
    assert ev == WriteRequest(1, 4096, TEXT, 1000, True)
    assert counts["client"] == counts["server"] == [(True, len(TEXT), len(wire) - 36)]
    feed(client, join(server.send_reply(1, Opcode.WRITE)))

    feed(server, join(client.send_read(2, 4096, len(TEXT), 1000)))
    wire = join(server.send_read_reply(2, TEXT))
    assert flags_of(wire) & FLAG_COMPRESSED and len(wire) < len(TEXT) // 2
    f.Frame.parse(wire)
    [ev] = feed(client, wire)
    assert ev == ReadReply(2, 0, "", TEXT)
    assert counts["client"][-1] == counts["server"][-1] == (False, len(TEXT), len(wire) - 24)


@pytest.mark.parametrize("codec", CODECS)
def test_incompressible_and_small_payloads_go_raw(codec):
    client, server, counts = session(codec)
    for rid, data in ((1, RANDOM), (2, TEXT[:100]), (3, RANDOM[:8192])):
        bufs = client.send_write(rid, 0, data, 1000)
        assert not flags_of(bufs[0]) & FLAG_COMPRESSED
        assert bufs[1] is data  # not even copied
        [ev] = feed(server, join(bufs))
        assert ev.data == data
        assert counts["client"][-1] == (True, len(data), len(data))
        feed(client, join(server.send_reply(rid, Opcode.WRITE)))


def test_codec_sampling_skips_incompressible_cheaply():
    codec = z.Codec("zstd")
    assert codec.compress(RANDOM) is None
    assert codec.compress(bytes(512)) is None  # under MIN_COMPRESS
    packed = codec.compress(memoryview(TEXT))
    assert packed is not None and codec.decompress(packed, len(TEXT)) == TEXT


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(CODECS), st.binary(max_size=4096), st.integers(0, 40),
       st.integers(1, 8), st.data())
def test_round_trip_of_arbitrary_payloads_in_any_chunking(codec, seed, repeat, step, data):
    """Whatever the payload (compressed or not), both directions deliver it unchanged, fed in
    arbitrary chunks."""
    payload = (seed * repeat)[: 2 << 20]
    client, server, _ = session(codec)
    wire = join(client.send_write(1, 0, payload, 1000))
    events = []
    cut = data.draw(st.integers(1, max(1, len(wire))))
    for i in range(0, len(wire), cut):
        server.receive_data(wire[i:i + cut])
        events += server.events()
    assert [e.data for e in events] == [payload]
    feed(client, join(server.send_reply(1, Opcode.WRITE)))
    feed(server, join(client.send_read(2, 0, len(payload), 1000)))
    wire = join(server.send_read_reply(2, payload))
    events = []
    for i in range(0, len(wire), step * 97):
        client.receive_data(wire[i:i + step * 97])
        events += client.events()
    assert events == [ReadReply(2, 0, "", payload)]


# --- hostile compressed bytes: bounded, a protocol error, never an exception ---------------


def _zstd(data: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=content_size).compress(data)


def _hostile_writes():
    big = bytes(16 << 20)  # 16 MiB of zeros: a few hundred bytes compressed
    return {
        "zstd": [
            ("bomb: frame larger than the declared length", _zstd(big), 4096),
            ("frame declares no content size", _zstd(big, False), 4096),
            ("frame declares less than it holds", _zstd(bytes(8192))[:-3], 8192),
            ("corrupt bytes", b"\x28\xb5\x2f\xfd" + os.urandom(60), 4096),
            ("not zstd at all", os.urandom(100), 4096),
            ("trailing garbage", _zstd(bytes(4096)) + b"xx", 4096),
            ("two frames", _zstd(bytes(2048)) * 2, 4096),
            ("decodes short", _zstd(bytes(2048)), 4096),
        ],
        "lz4": [
            ("bomb: block larger than the declared length",
             lz4.block.compress(bytes(1 << 20), store_size=False), 8192),
            ("corrupt bytes", os.urandom(100), 4096),
            ("decodes short", lz4.block.compress(bytes(2048), store_size=False), 4096),
        ],
    }


@pytest.mark.parametrize("codec,case", [(c, i) for c in CODECS
                                        for i in range(len(_hostile_writes()[c]))])
def test_hostile_compressed_write_is_a_protocol_error(codec, case):
    why, payload, length = _hostile_writes()[codec][case]
    assert len(payload) <= length, why  # a well-formed header: only the bytes are bad
    _, server, counts = session(codec)
    frame = raw_request(Opcode.WRITE, 9, payload[:length], length=length, deadline=1000,
                        flags=FLAG_COMPRESSED)
    events = feed(server, frame)
    assert len(events) == 1 and isinstance(events[0], ProtocolError), why
    err = events[0]
    assert err.code == errno.EPROTO and (err.request_id, err.opcode) == (9, Opcode.WRITE), why
    assert server.state is State.CLOSED and counts["server"] == []
    # the server can still send its last word (what rpv.server does on a ProtocolError)
    f.Frame.parse(f.build_error_reply(err.request_id, err.opcode, err.code, err.message))


@pytest.mark.parametrize("codec", CODECS)
def test_declared_length_over_max_payload_is_refused_before_buffering(codec):
    _, server, _ = session(codec, max_payload=64 * 1024)
    head = f.pack_request_head(Opcode.WRITE, FLAG_COMPRESSED, 5, 100, 0, 64 * 1024 + 1, 1000)
    server.receive_data(head)  # the header alone: no payload yet
    [err] = list(server.events())
    assert isinstance(err, ProtocolError) and err.code == errno.EMSGSIZE
    assert err.request_id == 5 and server.buffered == 0


@pytest.mark.parametrize("codec", CODECS)
def test_compressed_payload_longer_than_its_length_is_refused(codec):
    _, server, _ = session(codec)
    [err] = feed(server, raw_request(Opcode.WRITE, 5, b"x" * 20, length=10,
                                     flags=FLAG_COMPRESSED))
    assert isinstance(err, ProtocolError) and err.code == errno.EPROTO


def test_compressed_frame_without_negotiation_is_a_protocol_error():
    client, server, _ = session("zstd", accept=False)
    [err] = feed(server, raw_request(Opcode.WRITE, 5, _zstd(bytes(4096)), length=4096,
                                     flags=FLAG_COMPRESSED))
    assert isinstance(err, ProtocolError) and err.code == errno.EPROTO
    assert "without negotiated compression" in err.message
    client.send_read(6, 0, 4096, 1000)
    [err] = feed(client, raw_reply(Opcode.READ, 6, 0, _zstd(bytes(4096)),
                                   flags=1 | FLAG_COMPRESSED))
    assert isinstance(err, ProtocolError) and err.code == errno.EPROTO


@pytest.mark.parametrize("codec", CODECS)
def test_hostile_compressed_read_reply_is_a_protocol_error(codec):
    for why, payload, length in _hostile_writes()[codec]:
        client, _, _ = session(codec)
        client.send_read(6, 0, length, 1000)
        events = feed(client, raw_reply(Opcode.READ, 6, 0, payload[:length],
                                        flags=1 | FLAG_COMPRESSED))
        assert len(events) == 1 and isinstance(events[0], ProtocolError), why
        assert events[0].code == errno.EPROTO and client.state is State.CLOSED, why


def test_compressed_flag_where_it_does_not_belong():
    client, server, _ = session("zstd")
    [err] = feed(server, raw_request(Opcode.PING, 1, flags=FLAG_COMPRESSED))
    assert isinstance(err, ProtocolError) and "COMPRESSED" in err.message
    client.send_read(2, 0, 4096, 1000)
    [err] = feed(client, raw_reply(Opcode.READ, 2, errno.EIO, b"disk", flags=1 | 4))
    assert isinstance(err, ProtocolError)


def test_send_write_over_max_payload_is_refused_before_compressing():
    client, _, _ = session("zstd", max_payload=64 * 1024)
    with pytest.raises(LocalProtocolError):
        client.send_write(1, 0, bytes(64 * 1024 + 1), 1000)


# --- golden vectors: decoding fixed compressed frames stays stable across library versions -


def test_golden_compressed_frames():
    # zstd: 4096 zero bytes as one frame with its content size (built once, kept as bytes)
    zpay = bytes.fromhex("28b52ffd60000f4d00001000000100fbf70116")
    assert zstandard.ZstdDecompressor().decompress(zpay) == bytes(4096)
    zframe = bytes.fromhex("47525056 01 04 0004 0000000000000009 00000013"
                           " 0000000000000000 00001000 000003e8") + zpay
    # lz4: the same 4096 zeros as one raw block (the request's length is its size)
    lpay = bytes.fromhex("1f000100fffffffffffffffffffffffffffffff6500000000000")
    assert lz4.block.decompress(lpay, uncompressed_size=4096) == bytes(4096)
    for codec, frame, plen in (("zstd", zframe, len(zpay)), ("lz4", None, len(lpay))):
        if frame is None:
            frame = f.pack_request_head(Opcode.WRITE, FLAG_COMPRESSED, 9, plen, 0, 4096,
                                        1000) + lpay
        parsed = f.Frame.parse(frame)
        assert (parsed.flags, parsed.ext.length, parsed.payload_len) == (4, 4096, plen)
        _, server, _ = session(codec)
        assert feed(server, frame) == [WriteRequest(9, 0, bytes(4096), 1000, False)]


# --- fuzz: mutated compressed streams never raise -------------------------------------------


def _compressed_stream(codec: str) -> bytes:
    client, server, _ = session(codec)
    out = b""
    for rid, data in enumerate((TEXT[:20000], bytes(8192), TEXT[5000:9000]), start=1):
        out += join(client.send_write(rid, rid * 4096, data, 1000))
    return out


STREAMS = {c: _compressed_stream(c) for c in CODECS}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CODECS),
       st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), min_size=1,
                max_size=6),
       st.lists(st.integers(0, 100_000), max_size=5), st.booleans())
def test_mutated_compressed_streams_never_raise(codec, flips, cuts, eof):
    data = bytearray(STREAMS[codec])
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data)
    cuts = sorted({c % len(data) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    _, server, _ = session(codec)
    for ev in check_stream(server, chunks, eof):
        if isinstance(ev, WriteRequest):
            assert len(ev.data) <= server.max_payload
