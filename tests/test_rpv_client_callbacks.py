"""The RPV client's callback submission (``submit_write_cb``), the LVM's inline write path:
every accepted write is answered exactly once — by the server's reply, or with EIO when its
deadline passes — and a write the client cannot take now is refused without side effects."""

from __future__ import annotations

import asyncio
import errno

import pytest

from rpv.client.device import ClientState, RPVClient
from tests.helpers.disks import ReadOnlyMemDisk, StalledDisk
from tests.helpers.rpv_server import PVID, client_of, serve, serve_file

MiB = 1 << 20


class Outcomes:
    def __init__(self, expected: int):
        self.got: dict[int, OSError | None] = {}
        self.expected = expected
        self.all_in = asyncio.Event()

    def callback(self, key: int):
        def done(exc):
            assert key not in self.got, "answered twice"
            self.got[key] = exc
            if len(self.got) == self.expected:
                self.all_in.set()
        return done


@pytest.mark.asyncio
async def test_writes_are_answered_by_their_replies(tmp_path):
    disk, server, port = await serve_file(str(tmp_path / "disk.img"), 8 * MiB)
    client = client_of(port)
    try:
        await client.open(5)
        out = Outcomes(3)
        for i in range(3):
            assert client.submit_write_cb(i * 4096, bytes([65 + i]) * 4096, False,
                                          out.callback(i))
        assert not client.submit_write_cb(8 * MiB - 512, bytes(1024), False, out.callback(9))
        assert not client.accepts(client._max_payload + 1)
        await asyncio.wait_for(out.all_in.wait(), 5)
        assert out.got == {0: None, 1: None, 2: None}
        assert disk.read_now(0, 3 * 4096) == b"A" * 4096 + b"B" * 4096 + b"C" * 4096
        assert client.stats.writes == 3 and client.outstanding() == 0
    finally:
        await client.close()
        await server.close()
        disk.close()


@pytest.mark.asyncio
async def test_server_error_reaches_the_callback():
    server, port = await serve(ReadOnlyMemDisk(bytes(MiB)))  # its writes fail with EROFS
    client = client_of(port)
    try:
        await client.open(5)
        out = Outcomes(1)
        assert client.submit_write_cb(0, b"x" * 512, False, out.callback(0))
        await asyncio.wait_for(out.all_in.wait(), 5)
        assert out.got[0].errno == errno.EROFS
        assert client.state is ClientState.ONLINE and client.stats.errors == 1
    finally:
        await client.close()
        await server.close()


@pytest.mark.asyncio
async def test_deadline_fails_every_waiting_write_once_then_refuses():
    server, port = await serve(StalledDisk(bytes(MiB)))
    timeouts = []
    client = client_of(port, io_timeout=0.3, on_timeout=lambda c, reason: timeouts.append(reason))
    try:
        await client.open(5)
        out = Outcomes(4)
        for i in range(4):
            assert client.submit_write_cb(i * 512, b"s" * 512, False, out.callback(i))
        await asyncio.wait_for(out.all_in.wait(), 5)
        assert {k: e.errno for k, e in out.got.items()} == dict.fromkeys(range(4), errno.EIO)
        assert len(timeouts) == 1 and client.state is ClientState.FAILED
        assert not client.accepts(512)
        assert not client.submit_write_cb(0, b"s" * 512, False, out.callback(5))
        await asyncio.sleep(0)  # a callback would run at the next turn of the loop
        assert 5 not in out.got
    finally:
        await client.close()
        await server.close()


@pytest.mark.asyncio
async def test_disabled_client_refuses():
    client = RPVClient("hdisk9", PVID, "none", "127.0.0.1", io_timeout=1, size=MiB)
    assert not client.accepts(512)
    assert not client.submit_write_cb(0, b"d" * 512, False, lambda exc: None)
    assert client.outstanding() == 0


@pytest.mark.asyncio
async def test_a_deadline_passing_while_resume_says_hello_leaves_the_client_online():
    """chdev -a resume=yes on a client whose request is about to time out: the new session's
    HELLO is out when the deadline fails the old request. The client must end ONLINE on the
    new session (it stayed FAILED with a live link, and varyonvg could not read the PV)."""
    server, port = await serve(StalledDisk(bytes(MiB)))
    client = client_of(port, io_timeout=0.3)
    try:
        await client.open(5)
        out = Outcomes(1)
        assert client.submit_write_cb(0, b"s" * 512, False, out.callback(0))
        connect = client._connect_once

        async def hello_after_the_deadline(*args, **kwargs):
            await out.all_in.wait()  # the old request's deadline failed it meanwhile
            return await connect(*args, **kwargs)

        client._connect_once = hello_after_the_deadline
        await client.resume(5)
        assert out.got[0].errno == errno.EIO
        assert client.state is ClientState.ONLINE
        assert await asyncio.wait_for(client.read(0, 512), 5) == bytes(512)
    finally:
        await client.close()
        await server.close()
