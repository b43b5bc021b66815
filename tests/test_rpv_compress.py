"""Payload compression on a real RPV link: two rpvd daemons, and the client in process."""

from __future__ import annotations

import errno
import os

import pytest

from rpv.client.device import RPVClient
from rpv.server.server import Limits
from tests.conftest import qemu_io, run
from tests.helpers.disks import MemDisk
from tests.helpers.rpv_frames import PVID
from tests.helpers.rpv_raw import file_bytes
from tests.helpers.rpv_server import port_of, start_server

MiB = 1 << 20

#: these tests write the RPV client disk hdisk3 directly, to exercise the link itself
pytestmark = pytest.mark.raw_writes


def _attrs(site, name: str) -> dict:
    return {a["attribute"]: a["value"] for a in site.json("lsattr", "-E", "-l", name)}


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compress_end_to_end(linked, tmp_path, codec):
    a, b, _ = linked
    a.ctl("chdev", "-l", "hdisk3", "-a", f"compress={codec}")
    assert _attrs(a, "hdisk3")["compress"] == codec
    a.ctl("rpvstat", "-R")
    # compressible data: patterns and text
    text = b"".join(b"%08d the quick brown fox jumps over the lazy dog\n" % i
                    for i in range(20000))[: MiB]
    src = tmp_path / "text.bin"
    src.write_bytes(text)
    qemu_io(a.nbd_uri("hdisk3"), "write -P 0x5a 0 2M", f"write -s {src} 4M 1M", "flush",
            "read -P 0x5a 0 2M")
    disk = b.disk_path("hdisk2") + ".img"
    assert file_bytes(disk, 0, 2 * MiB) == b"\x5a" * (2 * MiB)
    assert file_bytes(disk, 4 * MiB, MiB) == text
    back = tmp_path / "back.bin"
    qemu_io(a.nbd_uri("hdisk3"), "read -v 4M 4k")  # a READ reply through the codec
    r = a.json("rpvstat")[0]
    assert r["compress"] == codec and r["errors"] == 0
    assert r["raw_bytes_written"] >= 3 * MiB
    assert r["wire_bytes_written"] < r["raw_bytes_written"] // 4
    assert r["raw_bytes_read"] >= 2 * MiB
    assert r["wire_bytes_read"] < r["raw_bytes_read"] // 4
    human = a.ctl("rpvstat")
    assert "Wire KB" in human and codec in human
    # incompressible data goes raw, and arrives intact both ways
    a.ctl("rpvstat", "-R")
    noise = os.urandom(MiB)
    src.write_bytes(noise)
    qemu_io(a.nbd_uri("hdisk3"), f"write -s {src} 8M 1M", "flush")
    assert file_bytes(disk, 8 * MiB, MiB) == noise
    r = a.json("rpvstat")[0]
    assert r["raw_bytes_written"] == r["wire_bytes_written"] >= MiB
    run("nbdcopy", a.nbd_uri("hdisk3"), str(back))
    got = back.read_bytes()
    assert got[8 * MiB: 9 * MiB] == noise and got[4 * MiB: 5 * MiB] == text
    # back to none
    a.ctl("chdev", "-l", "hdisk3", "-a", "compress=none")
    assert _attrs(a, "hdisk3")["compress"] == "none"
    qemu_io(a.nbd_uri("hdisk3"), "read -P 0x5a 0 64k")


def test_server_that_refuses_the_codec(linked):
    """A server that does not accept the codec (old, or compress_accept = none) makes chdev
    and mkdev fail with a clear message; nothing changes."""
    a, b, pvid = linked
    b.stop()
    b.extra_args.append("--compress-accept=lz4")
    b.start()
    b.ctl("mkdev", "-l", "rpvserver0")
    qemu_io(a.nbd_uri("hdisk3"), "write -P 7 0 64k", "flush")  # the link is back
    msg = a.fails("chdev", "-l", "hdisk3", "-a", "compress=zstd")
    assert f"RPV server {b.addr} does not support compress=zstd" in msg
    assert _attrs(a, "hdisk3")["compress"] == "none"
    qemu_io(a.nbd_uri("hdisk3"), "read -P 7 0 64k")  # still online, uncompressed
    a.ctl("chdev", "-l", "hdisk3", "-a", "compress=lz4")  # this one it accepts
    assert _attrs(a, "hdisk3")["compress"] == "lz4"
    pvid2 = b.make_disk("hdisk3")
    b.serve(pvid2, a.addr)
    msg = a.fails("rpvclient", "add", pvid2, "--server-addr", b.addr, "--local-addr", a.addr,
                  "--port", str(b.port), "--compress", "zstd")
    assert "does not support compress=zstd" in msg
    assert "hdisk4" not in a.ctl("lsdev", "-c", "disk")
    out = a.ctl("rpvclient", "add", pvid2, "--server-addr", b.addr, "--local-addr", a.addr,
                "--port", str(b.port), "--compress", "lz4")
    assert "Available" in out
    assert "must be one of none, zstd, lz4" in a.fails("chdev", "-l", "hdisk3", "-a",
                                                        "compress=gzip")


@pytest.mark.asyncio
async def test_in_process_client_refusal_and_stats():
    disk = MemDisk("hdisk1", 4 * MiB)
    server = await start_server(disk, limits=Limits(compress=()))
    try:
        client = RPVClient("hdisk9", PVID, "127.0.0.1", "127.0.0.1",
                           server_port=port_of(server), io_timeout=5, compress="zstd")
        with pytest.raises(OSError) as exc:
            await client.open(5)
        assert exc.value.errno == errno.EPROTONOSUPPORT
        assert str(exc.value.strerror) == "RPV server 127.0.0.1 does not support compress=zstd"
        await client.close()
        server.limits.compress = ("zstd",)
        client = RPVClient("hdisk9", PVID, "127.0.0.1", "127.0.0.1",
                           server_port=port_of(server), io_timeout=5, compress="zstd")
        await client.open(5)
        await client.write(0, bytes(MiB))
        assert await client.read(0, MiB) == bytes(MiB)
        s = client.stats
        assert s.raw_bytes_written == s.raw_bytes_read == MiB
        assert s.wire_bytes_written < 4096 and s.wire_bytes_read < 4096
        await client.close()
    finally:
        await server.close()
