"""Receive buffers reused with exact ownership (rpv/buffers.py): the pool lends a buffer to
one holder at a time, and the servers give a payload back only once nothing can read it: never
while a failed copy's request may still hold it for a resend or a late socket write."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpv import buffers
from rpv.buffers import MIN_POOLED, BufferPool
from rpv.nbd.server import _Connection
from tests.helpers.disks import PageCacheDisk, StalledDisk
from tests.helpers.mirror_lv import PP, make_lv
from tests.helpers.rpv_server import client_of, serve, serve_file
from tests.helpers.waits import until

MiB = 1 << 20
N = 64 * 1024


def test_a_given_buffer_is_lent_again_once_and_foreign_ones_are_ignored():
    pool = BufferPool()
    a = pool.take(N)
    pool.give(a)
    pool.give(a)  # a second give must not put it in the free list twice
    assert pool.take(N) is a
    assert pool.take(N) is not a  # the double give did not make it lendable twice
    pool.give(bytearray(N))  # never lent: ignored
    pool.give(b"x" * N)
    assert pool.free_bytes == 0
    small = pool.take(MIN_POOLED - 1)
    pool.give(small)
    assert pool.free_bytes == 0 and not pool.holds(small)


def test_a_forgotten_buffer_is_never_lent_again_and_the_pool_is_bounded():
    pool = BufferPool(limit=2 * N, per_size=8)
    a, b, c = pool.take(N), pool.take(N), pool.take(N)
    pool.forget(a)
    pool.give(a)  # its holders gave it back after all: still not reused
    assert not pool.holds(a)
    pool.give(b)
    pool.give(c)
    assert pool.free_bytes == 2 * N
    d = pool.take(N)
    pool.give(d)
    e = pool.take(N)
    pool.give(e)
    assert pool.free_bytes <= 2 * N
    assert (pool.allocated, pool.reused) == (3, 2)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["take", "give", "give twice", "forget",
                                           "forget, then give"]),
                          st.sampled_from([4096, 8192, 65536]), st.integers(0, 7)),
                max_size=60))
def test_no_buffer_is_ever_in_two_hands(steps):
    """Model: each holder gives its buffer back at most once it is done with it (twice by
    mistake, or after the pool was told to forget it); take() never returns a buffer someone
    holds. (A holder that gives back a buffer it no longer owns, after the pool lent it again,
    is outside what any pool can catch: ownership is the caller's part.)"""
    pool = BufferPool(limit=256 * 1024, per_size=3)
    held: list[bytearray] = []  # buffers some holder has now
    kept: list[bytearray] = []  # forgotten: still read by someone after its owner let go
    for op, size, k in steps:
        if op == "take":
            buf = pool.take(size)
            assert all(buf is not h for h in held + kept), "lent to a second holder"
            held.append(buf)
        elif held and op in ("give", "give twice"):
            buf = held.pop(k % len(held))
            pool.give(buf)
            if op == "give twice":
                pool.give(buf)
        elif held and op == "forget":
            buf = held.pop(k % len(held))
            pool.forget(buf)
            kept.append(buf)
        elif kept and op == "forget, then give":
            pool.give(kept[k % len(kept)])  # a late give of a forgotten buffer: ignored
    assert pool.free_bytes <= 256 * 1024


def nbd_done(written: list):
    """The NBD server's ``done`` for an inline write (its real method, on a stand-in
    connection that records the answer instead of sending it)."""
    conn = SimpleNamespace(_complete=lambda req, nbytes, data, failure: written.append(failure))
    return lambda req: lambda failure, kept=False: _Connection._inline_written(
        conn, req, 0, failure, kept)


async def mirrored_write(server, port: int, io_timeout: float):
    """An inline write of a pooled payload to an LV whose second copy is a real RPV client of
    the in-process ``server``; returns (payload, answers, the client, the LV)."""
    client = client_of(port, io_timeout=io_timeout, name="hdisk2")
    await client.open(5)
    lv = make_lv(PageCacheDisk("hdisk1"), client)
    pool = buffers.shared()
    payload = pool.take(N)
    payload[:] = os.urandom(N)
    written: list = []
    req = SimpleNamespace(data=payload)
    assert lv.write_inline(PP + 8192, payload, False, nbd_done(written)(req))
    return payload, written, client, lv


@pytest.mark.asyncio
async def test_a_payload_comes_back_once_every_copy_answered(tmp_path):
    disk, server, port = await serve_file(str(tmp_path / "b.img"), 64 * MiB)
    payload, written, client, lv = await mirrored_write(server, port, 10)
    try:
        await until(lambda: written)
        assert written == [None]
        assert buffers.shared().holds(payload)  # nothing can read it now: lent again later
    finally:
        await client.close()
        await server.close()


@pytest.mark.asyncio
async def test_a_payload_a_failed_copy_may_still_send_is_never_reused():
    server, port = await serve(StalledDisk(bytes(64 * MiB)))
    payload, written, client, lv = await mirrored_write(server, port, 0.5)
    try:
        await until(lambda: written, 10)
        assert written == [None]  # acknowledged on the local copy, the remote one stale
        assert lv.vg.vgsa.stale
        pool = buffers.shared()
        assert not pool.holds(payload)
        again = [pool.take(N) for _ in range(4)]
        assert all(b is not payload for b in again)
        for b in again:
            pool.give(b)
    finally:
        await client.close()
        await server.close()


@pytest.mark.asyncio
async def test_the_rpv_server_lends_each_large_payload_buffer_again(tmp_path):
    """At the remote site a large WRITE is received into a pooled buffer, given back once
    the disk write returned: a stream of 1 MiB writes reuses its buffers."""
    disk, server, port = await serve_file(str(tmp_path / "b.img"), 64 * MiB)
    client = client_of(port, name="hdisk2")
    pool = buffers.shared()
    try:
        await client.open(5)
        before = pool.reused
        payloads = [os.urandom(MiB) for _ in range(6)]
        for i, p in enumerate(payloads):  # one at a time: each buffer is back before the next
            await client.write(i * MiB, p)
        assert pool.reused - before >= 4
        assert all(disk.read_now(i * MiB, MiB) == p for i, p in enumerate(payloads))
    finally:
        await client.close()
        await server.close()
