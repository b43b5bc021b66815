"""CHECKSUM (online verify): FileDisk digests, the server handler and RPVClient.checksum in
process, and the request against real rpvd processes over a raw RPV session."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from rpv import protocol as pc
from rpv.blockdev import FileDisk
from rpv.protocol import CHECKSUM_CHUNK, DIGEST_SIZE, MAX_CHECKSUM_LENGTH, chunk_digests
from tests.conftest import qemu_io
from tests.helpers.disks import ReadOnlyMemDisk
from tests.helpers.rpv_raw import RawClient, file_bytes
from tests.helpers.rpv_server import client_of, serve

MiB = 1 << 20


def random_file(path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


# --- FileDisk.checksum ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_filedisk_checksum_equals_chunk_digests(tmp_path):
    data = random_file(tmp_path / "disk.img", 3 * MiB + 512)
    disk = FileDisk("hdisk1", str(tmp_path / "disk.img"))
    try:
        for offset, length in [
            (0, len(data)),  # 49 chunks, the last one 512 bytes
            (0, 1),
            (512, CHECKSUM_CHUNK),
            (4096, 2 * MiB + 12345),  # spans several 1 MiB preads
            (len(data) - 512, 512),
            (7, 0),
        ]:
            got = await disk.checksum(offset, length)
            assert got == chunk_digests(data[offset : offset + length]), (offset, length)
            assert len(got) == pc.digests_size(length)
        for offset, length in [(len(data) - 512, 513), (-1, 8), (0, -1), (len(data) + 1, 0)]:
            with pytest.raises(OSError) as exc:
                await disk.checksum(offset, length)
            assert exc.value.errno == errno.EINVAL
    finally:
        disk.close()


@pytest.mark.asyncio
async def test_filedisk_checksum_sees_writes_and_runs_in_executor(tmp_path, monkeypatch):
    random_file(tmp_path / "disk.img", MiB)
    disk = FileDisk("hdisk1", str(tmp_path / "disk.img"))
    try:
        await disk.write(CHECKSUM_CHUNK, b"\x5a" * CHECKSUM_CHUNK)
        digests = await disk.checksum(0, 2 * CHECKSUM_CHUNK)
        assert digests[DIGEST_SIZE:] == chunk_digests(b"\x5a" * CHECKSUM_CHUNK)
        loop = asyncio.get_running_loop()
        calls = []
        real = loop.run_in_executor

        def spy(executor, func, *args):
            calls.append((executor, func.__name__))
            return real(executor, func, *args)

        monkeypatch.setattr(loop, "run_in_executor", spy)
        assert await disk.checksum(0, 2 * CHECKSUM_CHUNK) == digests
        assert calls == [(None, "_checksum_now")]
    finally:
        disk.close()


# --- server handler and RPVClient.checksum, in process ------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["file", "mem"])
async def test_client_checksum_through_server(tmp_path, kind):
    data = random_file(tmp_path / "disk.img", 8 * MiB)
    disk = (FileDisk("hdisk1", str(tmp_path / "disk.img")) if kind == "file"
            else ReadOnlyMemDisk(data))
    server, port = await serve(disk)
    client = client_of(port)
    try:
        await client.open(5)
        assert await client.checksum(0, len(data)) == chunk_digests(data)
        assert await client.checksum(100, 0) == b""
        # a small max_payload splits the range into pipelined requests of 64 chunks (4 MiB)
        client._max_payload = 1024
        assert await client.checksum(512, len(data) - 512) == chunk_digests(data[512:])
        assert client.stats.reads == client.stats.writes == client.stats.errors == 0
        with pytest.raises(OSError) as exc:
            await client.checksum(len(data) - 512, 1024)  # checked locally
        assert exc.value.errno == errno.EINVAL
        if kind == "mem":
            assert disk.reads == 3  # one request, then two of 4 MiB
    finally:
        await client.close()
        await server.close()
        if kind == "file":
            disk.close()


@pytest.mark.asyncio
async def test_client_checksum_disk_error_is_reported():
    disk = ReadOnlyMemDisk(bytes(MiB), fail=True)
    server, port = await serve(disk)
    client = client_of(port)
    try:
        await client.open(5)
        with pytest.raises(OSError) as exc:
            await client.checksum(0, MiB)
        assert exc.value.errno == errno.EIO and "medium error" in str(exc.value)
        assert client.stats.errors == 1
        disk.fail = False
        assert await client.checksum(0, MiB) == chunk_digests(bytes(MiB))
    finally:
        await client.close()
        await server.close()


# --- real daemons ----------------------------------------------------------------------------


def digest_list(digests: bytes) -> list[bytes]:
    return [digests[i : i + DIGEST_SIZE] for i in range(0, len(digests), DIGEST_SIZE)]


@pytest.mark.raw_writes
def test_checksum_against_real_server(linked):
    site_a, site_b, pvid = linked
    backing = site_b.disk_path("hdisk2") + ".img"
    qemu_io(site_a.nbd_uri("hdisk3"), "write -P 0xab 0 100k", "write -P 0xcd 1M 64k",
            "write -P 0x5e 63M 1M", "flush")
    c = RawClient(site_b, "127.0.0.1")
    c.send(c.conn.send_hello(1, pvid, "test", "verify"))
    assert c.event().status == 0
    ranges = [(0, 256 * 1024), (1 * MiB - 4096, 3 * CHECKSUM_CHUNK + 7), (63 * MiB, MiB),
              (0, MAX_CHECKSUM_LENGTH)]  # the whole 64 MiB disk: a 16 KiB reply
    for rid, (offset, length) in enumerate(ranges, start=2):  # pipelined
        c.send(c.conn.send_checksum(rid, offset, length, 10000))
    replies = {}
    for _ in ranges:
        ev = c.event()
        assert isinstance(ev, pc.ChecksumReply) and ev.status == 0, ev
        replies[ev.request_id] = ev.digests
    for rid, (offset, length) in enumerate(ranges, start=2):
        assert replies[rid] == chunk_digests(file_bytes(backing, offset, length)), (offset, length)
    assert replies[2][:DIGEST_SIZE] == chunk_digests(b"\xab" * CHECKSUM_CHUNK)
    # the copies differ: one changed byte changes exactly one digest
    with open(backing, "r+b") as f:
        f.seek(CHECKSUM_CHUNK + 5)
        f.write(b"\x00")
    c.send(c.conn.send_checksum(9, 0, 256 * 1024, 10000))
    ev = c.event()
    old, new = digest_list(replies[2]), digest_list(ev.digests)
    assert [i for i in range(4) if old[i] != new[i]] == [1]
    # out of range: EINVAL, and the session stays usable
    c.send(c.conn.send_checksum(10, 64 * MiB - 512, 1024, 10000))
    ev = c.event()
    assert (ev.request_id, ev.status, ev.digests) == (10, errno.EINVAL, b"")
    c.send(c.conn.send_ping(11, 1000))
    assert c.event().status == 0
    # before HELLO: EPROTO and a close
    e = RawClient(site_b, "127.0.0.1")
    e.sock.sendall(pc.frames.pack_request_head(pc.Opcode.CHECKSUM, 0, 12, 0, 0, 4096, 1000))
    raw = e.sock.recv(4096)
    assert raw[:4] == b"GRPV" and raw[5] == pc.Opcode.CHECKSUM
    assert int.from_bytes(raw[20:24], "big") == errno.EPROTO
    assert e.closed_by_peer()
    # the real client is still fine (its session was superseded by ours and comes back)
    qemu_io(site_a.nbd_uri("hdisk3"), "read -P 0xcd 1M 64k")
