"""Checksum-based resync between two real daemons, the link through the fault proxy: the
remote copy took a whole LV of writes, then its link went silent before a flush, so the
whole copy is marked stale; only the few chunks written while it was missing really differ,
and syncvg sends little more than those over the link."""

from __future__ import annotations

import os
import subprocess
from types import SimpleNamespace

import pytest

from rpv.faultproxy.client import start_proxy
from tests.helpers.lvmtools import copies_equal

MiB = 1 << 20
CHUNK = 64 * 1024
LPS = 12


SYSTEM_PYTHON = "/usr/bin/python3"  # libnbd's Python binding (python3-libnbd)


def have_libnbd() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import nbd"], capture_output=True,
                          check=False).returncode == 0 if os.path.exists(SYSTEM_PYTHON) else False


def write_unflushed(uri: str, writes: list[tuple[int, int, int]]) -> None:
    """``(offset, length, byte)`` writes through libnbd, which sends no FLUSH (not even at
    close, unlike qemu-io, which flushes an NBD export even with cache=unsafe)."""
    script = (f"import nbd\nh = nbd.NBD()\nh.connect_uri({uri!r})\n"
              + "".join(f"h.pwrite(bytes([{byte}]) * {n}, {off})\n"
                        for o, ln, byte in writes
                        for off, n in ((o + i, min(4 << 20, ln - i))
                                       for i in range(0, ln, 4 << 20)))
              + "h.shutdown()\n")
    subprocess.run([SYSTEM_PYTHON, "-c", script], capture_output=True, text=True,
                   timeout=120, check=True)


@pytest.mark.skipif(not have_libnbd(), reason="needs libnbd's Python binding (python3-libnbd)")
def test_a_wholly_stale_remote_copy_resyncs_only_what_changed(site_a, site_b, tmp_path):
    a, b = site_a, site_b
    pvid = b.make_disk("hdisk2", "64M")
    b.serve(pvid, a.addr)
    a.make_disk("hdisk1", "64M")
    with start_proxy(f"127.0.0.3:{b.port}", f"{b.addr}:{b.port}", source=a.addr,
                     control=str(tmp_path / "proxy.sock")) as (_, proxy):
        a.add_client("hdisk3", pvid, b, io_timeout=2, server_addr="127.0.0.3")
        a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk3")
        a.ctl("chvg", "-a", "n", "-Q", "n", "datavg")
        a.ctl("varyoffvg", "datavg")
        a.ctl("varyonvg", "datavg")  # quorum off takes effect
        a.ctl("mklv", "-y", "datalv", "-c", "2", "datavg", str(LPS))
        pp = a.json("lslv", "-m", "datalv")["pp_size_mb"] * MiB
        size = LPS * pp
        uri = a.nbd_uri("datalv")
        # the whole LV written to both copies, not flushed
        write_unflushed(uri, [(0, size, 90)])
        # the link goes silent: the first write times out, hdisk3 is missing and everything
        # it took since its last flush is marked stale; the others miss it
        proxy.set(mode="blackhole")
        changed = [lp * pp + (lp % 5) * 7 * CHUNK for lp in range(0, LPS, 2)]
        write_unflushed(uri, [(off, CHUNK, 7) for off in changed])
        vg = a.json("lsvg", "datavg")
        assert vg["stale_pps"] == LPS, vg
        proxy.set(mode="pass")
        a.ctl("chdev", "-l", "hdisk3", "-a", "resume=yes")
        a.ctl("varyonvg", "-n", "datavg")  # takes hdisk3 back, no background resync
        before = proxy.stats()
        result = a.rpc("syncvg", vg="datavg", lv=None, pv=None, parallel=1, force=False,
                       rate_mb=0.0)
        after = proxy.stats()
        assert result["failed"] == [] and result["pps_done"] == LPS, result
        assert result["chunks_copied"] == len(changed), result
        assert result["bytes"] == len(changed) * CHUNK
        assert result["chunks_skipped"] == size // CHUNK - len(changed)
        assert result["bytes_compared"] == size
        moved = after["bytes_up"] - before["bytes_up"]
        back = after["bytes_down"] - before["bytes_down"]
        print(f"resync of a wholly stale {size // MiB} MiB copy: {moved} bytes sent, "
              f"{back} received, {len(changed) * CHUNK} changed")
        assert len(changed) * CHUNK <= moved < size // 20  # ≤ 5% of the copy crossed
        assert back < size // 100  # the digests coming back are small
        vg = a.json("lsvg", "datavg")
        assert vg["stale_pps"] == 0
        assert vg["last_resync"]["chunks_skipped"] == result["chunks_skipped"]
        files = {"hdisk1": a.disk_path("hdisk1") + ".img",
                 "hdisk3": b.disk_path("hdisk2") + ".img"}
        # read back through the page cache: both files hold what each copy holds
        assert copies_equal(SimpleNamespace(a=a, files=files), "datalv") == []
