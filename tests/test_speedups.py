"""The compiled twins (rpv/speedups.py) against their pure-Python references: the same
results, byte for byte, on valid batches, on every kind of bad request and on random bytes;
and the build really produced them (a silent fallback to pure Python would hide a slow CI)."""

from __future__ import annotations

import importlib
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpv import speedups
from rpv.nbd import wire as pure_wire
from rpv.nbd.protocol import Request

try:
    fast_wire = importlib.import_module("rpv.nbd._wire")
except ImportError:  # reported by test_the_compiled_twins_are_built
    fast_wire = None

needs_compiled = pytest.mark.skipif(fast_wire is None, reason="rpv.nbd._wire not built")
HEAD = struct.Struct(">IHHQQI")
SIZE = 1 << 20


@pytest.mark.parametrize("module", ["rpv.nbd.wire", "rpv.protocol.hotpath", "lvm.inline"])
def test_the_compiled_twins_are_built_and_chosen(module):
    importlib.import_module("rpv.protocol.connection")  # (they pick their hot paths)
    importlib.import_module("lvm.vg")
    if os.environ.get("GLVM_PURE_PYTHON") == "1":
        assert speedups.CHOSEN[module] == "pure"
        return
    assert speedups.CHOSEN[module] == "compiled", speedups.CHOSEN[module]


request = st.tuples(
    st.sampled_from([0x25609513] * 12 + [0x25609514, 0]),  # mostly the right magic
    st.sampled_from([0, 0, 0, 1, 2, 3, 0x8000]),  # flags
    st.sampled_from([0, 0, 1, 1, 3, 4, 6, 2, 5, 7, 99]),  # kind: READ WRITE FLUSH ... DISC
    st.integers(0, 2**64 - 1),  # handle
    st.sampled_from([0, 512, SIZE - 512, SIZE, 2**64 - 512, 2**63]),  # offset
    st.sampled_from([0, 512, 4096, SIZE + 1, 2**32 - 1]),  # length
    st.booleans())  # a WRITE's payload arrives whole


def encode(reqs) -> bytearray:
    out = bytearray()
    for magic, flags, kind, handle, offset, length, whole in reqs:
        out += HEAD.pack(magic, flags, kind, handle, offset, length)
        if kind == 1 and length <= 8192:
            payload = bytes((handle + i) & 0xFF for i in range(min(length, 64)))
            payload = (payload * (length // 64 + 1))[:length]
            out += payload if whole else payload[:length // 2]
    return out


def both(buf: bytearray, readonly: bool = False, max_len: int = 8192):
    results = []
    for impl in (pure_wire, fast_wire):
        b = bytearray(buf)
        out: list = []
        reqs, used = impl.take_requests(b, SIZE, readonly, max_len, out, Request)
        results.append((reqs, used, out, bytes(b)))
    return results


@needs_compiled
@settings(max_examples=600, deadline=None)
@given(st.lists(request, max_size=12), st.booleans(), st.binary(max_size=40))
def test_batches_decode_identically(reqs, readonly, tail):
    pure, fast = both(encode(reqs) + tail, readonly)
    assert pure == fast
    reqs_out, used, out, _ = pure
    assert used <= len(encode(reqs) + tail) and all(type(r) is Request for r in reqs_out)


@needs_compiled
@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_decode_identically_and_never_raise(raw, readonly):
    pure, fast = both(bytearray(raw), readonly)
    assert pure == fast


@needs_compiled
def test_a_known_batch():
    buf = encode([(0x25609513, 0, 1, 7, 0, 512, True),  # WRITE: decoded with its payload
                  (0x25609513, 0, 0, 8, 512, 4096, True),  # READ
                  (0x25609513, 0, 1, 9, SIZE, 512, True),  # WRITE past the end: ENOSPC
                  (0x25609513, 1, 3, 10, 0, 0, True),  # FLUSH with FUA
                  (0x25609513, 0, 2, 11, 0, 0, True)])  # DISC: left to the caller
    for reqs, used, out, _ in both(buf):
        assert [(r.kind, r.handle) for r in reqs] == [(1, 7), (0, 8), (3, 10)]
        assert len(reqs[0].data) == 512 and reqs[1].data is None
        assert out == [struct.pack(">IIQ", 0x67446698, 28, 9)]
        assert used == len(buf) - 28  # the DISC stays in the buffer


@needs_compiled
@pytest.mark.parametrize("args", [(1, 0, 0, 512, SIZE, True, 8192),
                                  (0, 0, 2**64 - 256, 512, SIZE, False, 8192),
                                  (6, 3, 0, 512, SIZE, False, 8192),
                                  (6, 4, 0, 512, SIZE, False, 8192),
                                  (0, 0, 0, 9000, SIZE, False, 8192),
                                  (3, 0, 1, 0, SIZE, False, 8192)])
def test_check_agrees(args):
    assert pure_wire.check(*args) == fast_wire.check(*args)


# -- the RPV data path (rpv/protocol/hotpath.py) --------------------------------------------
from rpv.protocol import hotpath as pure_hot  # noqa: E402
from rpv.protocol.constants import Opcode  # noqa: E402
from rpv.protocol.events import WriteReply, WriteRequest  # noqa: E402

try:
    fast_hot = importlib.import_module("rpv.protocol._hotpath")
except ImportError:
    fast_hot = None
needs_hot = pytest.mark.skipif(fast_hot is None, reason="rpv.protocol._hotpath not built")
RPV_HEAD = struct.Struct(">IBBHQI")

def frames(flags: list[int], plens: list[int]):
    return st.tuples(
        st.sampled_from([0x47525056] * 10 + [0x47525057]),  # magic
        st.sampled_from([1] * 10 + [2]),  # version
        st.sampled_from([4] * 6 + [3, 5, 6]),  # opcode: mostly WRITE
        st.sampled_from(flags),
        st.sampled_from([1, 2, 2**64 - 1]),  # request id
        st.sampled_from(plens),  # payload length
        st.sampled_from([0, 0, 4096, 2**63]),  # offset (requests) / status (replies: low bits)
        st.sampled_from([0, 5, 512, 4096, 70000]),  # length field
        st.integers(0, 2**32 - 1))  # deadline


reply_frame = frames([1] * 6 + [0, 3, 5, 0x8001], [0] * 6 + [5, 512])
request_frame = frames([0, 0, 2, 2, 1, 3, 4, 6, 0x8000], [0, 5, 512, 512, 4096, 70000])


def rpv_bytes(f, reply: bool, cut: int) -> bytearray:
    magic, version, op, flags, rid, plen, offset, length, deadline = f
    out = bytearray(RPV_HEAD.pack(magic, version, op, flags, rid, plen))
    out += struct.pack(">I", offset & 0xFFFFFFFF) if reply else struct.pack(
        ">QII", offset, length, deadline)
    out += bytes(range(256)) * (plen // 256) + bytes(plen % 256)
    return out[:len(out) - cut]


outstanding = st.dictionaries(st.sampled_from([1, 2, 2**64 - 1]),
                              st.sampled_from([(Opcode.WRITE, 4096)] * 3 + [(Opcode.READ, 512)]),
                              max_size=3)


@needs_hot
@settings(max_examples=800, deadline=None)
@given(reply_frame, st.sampled_from([0, 0, 0, 1, 8]), outstanding,
       st.sampled_from([b"", b"\x00" * 7]))
def test_write_replies_decode_identically(f, cut, table, before):
    results = []
    for impl in (pure_hot, fast_hot):
        buf = bytearray(before) + rpv_bytes(f, True, cut)
        out = dict(table)
        got = impl.take_write_reply(buf, len(before), out, Opcode.WRITE, WriteReply)
        results.append((got, out))
    assert results[0] == results[1]


@needs_hot
@settings(max_examples=800, deadline=None)
@given(request_frame, st.sampled_from([0, 0, 0, 1, 8]), outstanding, st.integers(1, 4),
       st.booleans())
def test_write_requests_decode_identically(f, cut, table, limit, counted):
    results = []
    for impl in (pure_hot, fast_hot):
        calls: list = []
        buf = rpv_bytes(f, False, cut)
        out = dict(table)
        got = impl.take_write_request(buf, 0, out, limit, 65536, Opcode.WRITE,
                                      (lambda *a, c=calls: c.append(a)) if counted else None,
                                      WriteRequest)
        results.append((got, out, calls))
    assert results[0] == results[1]


@needs_hot
def test_a_known_write_request_and_reply():
    f = (0x47525056, 1, 4, 2, 7, 512, 4096, 512, 900)  # WRITE with FUA
    for impl in (pure_hot, fast_hot):
        table: dict = {}
        ev, pos = impl.take_write_request(rpv_bytes(f, False, 0), 0, table, 4, 65536,
                                          Opcode.WRITE, None, WriteRequest)
        assert ev == WriteRequest(7, 4096, rpv_bytes(f, False, 0)[36:], 900, True)
        assert pos == 36 + 512 and table == {7: (Opcode.WRITE, 512)}
        reply = rpv_bytes((0x47525056, 1, 4, 1, 7, 0, 0, 0, 0), True, 0)
        assert impl.take_write_reply(reply, 0, table, Opcode.WRITE, WriteReply) == (
            WriteReply(7, 0, ""), 24) and table == {}


field = st.sampled_from([0, 1, 4096, 0xFFFF, 0x10000, 0xFFFFFFFF, 2**32, 2**64 - 1, 2**64, -1])


@needs_hot
@settings(max_examples=800, deadline=None)
@given(outstanding, st.integers(1, 4), st.sampled_from([1, 2, 2**64 - 1, 2**64, -1]),
       field, field, field, field, field)
def test_write_headers_encode_identically(table, limit, rid, flags, plen, offset, length,
                                          deadline):
    results = []
    for impl in (pure_hot, fast_hot):
        out = dict(table)
        request = impl.write_request(out, limit, rid, flags, plen, offset, length, deadline,
                                     Opcode.WRITE)
        after_request = dict(out)
        reply = impl.write_reply(out, rid, Opcode.WRITE)
        results.append((request, after_request, reply, out))
    assert results[0] == results[1]
    request, _, reply, _ = results[0]
    if request is not None:  # what the general decoder of the other side reads back
        assert struct.unpack(">IBBHQIQII", request)[4:] == (rid, plen, offset, length,
                                                            deadline)
        assert reply == struct.pack(">IBBHQII", 0x47525056, 1, 4, 1, rid, 0, 0)
