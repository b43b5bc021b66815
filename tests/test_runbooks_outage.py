"""The white paper's outage runbooks (issue 5, runbooks 2-6) as scenario tests against two
real daemons: site A "Philadelphia" on 127.0.0.1 and site B "Poughkeepsie" on 127.0.0.2.

Every step is the glvmctl command an administrator would type; data is written and checked
with real NBD clients (qemu-io, qemu-img, nbdcopy, nbdinfo, fio) and, where the copies
themselves matter, straight from the backing files of each site.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from rpv.faultproxy.client import start_proxy
from tests.conftest import qemu_io, run
from tests.helpers.lvmtools import copies_equal, diff_blocks, read_copy
from tests.helpers.runbooks import (
    RPV_CLIENTS,
    RPV_SERVERS,
    a_takes_back,
    b_lets_go,
    configure_airline,
)

MiB = 1 << 20
KiB = 1 << 10
LV_MB = 40  # datafslv: 10 LPs of 4 MiB (configure_airline)
FS_MB = 32  # the ext4 image at the start of datafslv


# -- helpers ---------------------------------------------------------------------------------

def pv_status(out: str) -> dict[str, tuple[str | None, str]]:
    """The ``PV Status:`` table of varyonvg/importvg: {pvid prefix: (name or None, status)}.
    A row without a name (NONAME) starts with blanks."""
    lines = out.splitlines()
    assert "PV Status:" in lines, out
    rows = {}
    for line in lines[lines.index("PV Status:") + 1:]:
        cells = line.split()
        if len(cells) == 3 and cells[2].startswith("PV"):
            rows[cells[1]] = (cells[0], cells[2])
        elif len(cells) == 2 and cells[1] == "NONAME":
            rows[cells[0]] = (None, cells[1])
        else:
            break
    return rows


def pvids(site) -> dict[str, str]:
    return {p["name"]: p["pvid"] for p in site.json("lspv")}


def labels(site) -> list[str]:
    return [e["label"] for e in site.json("errpt")]


def stale_pps(site, vg: str = "datavg") -> int:
    return site.json("lsvg", vg)["stale_pps"]


def syncvg(site, vg: str = "datavg") -> dict:
    """syncvg -v VG in the foreground; its final JSON line (the result)."""
    result = json.loads(site.ctl("syncvg", "-v", vg, "--json").splitlines()[-1])
    assert result["failed"] == [], result
    return result


def all_copies_equal(geo, lv: str) -> None:
    """Every copy of ``lv`` is byte-identical to copy 1, read from the backing files."""
    m = geo.a.json("lslv", "-m", lv)
    first = read_copy(m, 0, geo.files, m["pp_size_mb"])
    for c in range(1, m["copies"]):
        assert diff_blocks(first, read_copy(m, c, geo.files, m["pp_size_mb"])) == [], (lv, c)


def make_fs_image(tmp_path) -> tuple[str, dict[str, bytes]]:
    """An ext4 image (``mke2fs -d``) of FS_MB MiB holding a few files of random content."""
    src = tmp_path / "fsroot"
    (src / "sub").mkdir(parents=True)
    files = {"/reservations.db": os.urandom(3 * MiB + 123), "/log.txt": os.urandom(70_000),
             "/sub/seats.bin": os.urandom(512 * KiB)}
    for name, data in files.items():
        (src / name.lstrip("/")).write_bytes(data)
    img = str(tmp_path / "fs.img")
    run("mke2fs", "-q", "-t", "ext4", "-d", str(src), "-F", img, f"{FS_MB}M")
    return img, files


def check_fs(img: str, files: dict[str, bytes], tmp_path) -> None:
    """e2fsck -fn passes and every file reads back (debugfs dump) with its content."""
    r = run("e2fsck", "-fn", img, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for name, data in files.items():
        out = tmp_path / "cat.out"
        run("debugfs", "-R", f"dump {name} {out}", img)
        assert out.read_bytes() == data, name


def lv_bytes(site, lv: str, tmp_path, tool: str = "nbdcopy") -> bytes:
    """The whole LV read through the site's NBD export with nbdcopy or qemu-img convert."""
    out = tmp_path / f"{lv}.{tool}.out"
    if out.exists():
        out.unlink()
    if tool == "nbdcopy":
        run("nbdcopy", site.nbd_uri(lv), str(out))
    else:
        run("qemu-img", "convert", "-f", "raw", "-O", "raw", site.nbd_uri(lv), str(out))
    return out.read_bytes()


class AckedWriter(threading.Thread):
    """Writes 64 KiB blocks, one qemu-io per write: a qemu-io exits 0 (with "wrote ...") only
    after the NBD server acknowledged its write, so ``acked`` is exactly the set of writes
    the application was told are done. Stops at the first failure (the server died)."""

    BLOCK = 64 * KiB

    def __init__(self, uri: str, count: int):
        super().__init__(daemon=True)
        self.uri, self.count = uri, count
        self.acked: list[tuple[int, int]] = []  # (offset, pattern)
        self.failed: tuple[int, int] | None = None  # the first write not acknowledged
        self.cond = threading.Condition()

    def run(self) -> None:
        for i in range(self.count):
            off, pat = i * self.BLOCK, 1 + i % 250
            r = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {pat} {off} 64k",
                                self.uri], capture_output=True, text=True, timeout=120)
            with self.cond:
                if r.returncode == 0 and f"wrote {self.BLOCK}/{self.BLOCK}" in r.stdout:
                    self.acked.append((off, pat))
                else:
                    self.failed = (off, pat)
                self.cond.notify_all()
                if self.failed:
                    return

    def wait_acked(self, n: int, timeout: float) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.acked) >= n or self.failed, timeout)
        assert ok and len(self.acked) >= n, (len(self.acked), self.failed)


def airline(geo) -> None:
    """Runbook 1, then varyoffvg/varyonvg so that "quorum turned off" (add-mirror) takes
    effect, as the seed assumes for the remote-failure sections."""
    configure_airline(geo)
    # set-up, not the scenario: straight to the control socket (glvmctl's requests)
    geo.a.rpc("varyoffvg", vg="datavg", force=False)
    geo.a.rpc("varyonvg", vg="datavg", force=False, nosync=False, maintenance=False)
    vg = geo.a.rpc("lsvg", vg="datavg")
    assert (vg["quorum"], vg["quorum_active"]) == (False, False)


def failover_to_b(b, quorum_message: str) -> str:
    """The seed's "Moving Workload to Disaster Recovery Site" at B; importvg's output."""
    for s in RPV_SERVERS:
        b.ctl("chdev", "-l", s, "-a", "auto_online=n")
        b.ctl("rmdev", "-l", s)
    assert {d["name"]: d["state"] for d in b.json("lsdev", "-c", "rpvserver")} == \
        dict.fromkeys(RPV_SERVERS, "Defined")
    # half the PVs or fewer: a normal importvg fails; the seed's answer is -f
    assert quorum_message in b.fails("importvg", "-y", "datavg", "hdisk2")
    assert b.json("lsvg") == []
    return b.ctl("importvg", "-f", "-y", "datavg", "hdisk2")


# -- runbooks 2 and 3: production site outage, failover, failback ---------------------------

def test_runbooks2_3_site_outage_failover_and_failback(geo, tmp_path):
    a, b = geo.a, geo.b
    configure_airline(geo)
    a_pvids, b_pvids = pvids(a), pvids(b)

    # interop: the LV export as nbdinfo sees it
    info = json.loads(run("nbdinfo", "--json", a.nbd_uri("datafslv")).stdout)
    export = info["exports"][0]
    assert export["export-name"] == "datafslv" and export["export-size"] == LV_MB * MiB
    assert export["can_flush"] is True and export["is_read_only"] is False

    # the application's data: an ext4 filesystem on datafslv (nbdcopy file -> LV)
    img, files = make_fs_image(tmp_path)
    run("nbdcopy", img, a.nbd_uri("datafslv"))
    image = Path(img).read_bytes()
    all_copies_equal(geo, "datafslv")

    # a background writer on the rest of datafslv keeps A busy when the site goes down
    fio = subprocess.Popen(
        ["fio", "--name=busy", "--ioengine=nbd", f"--uri={a.nbd_uri('datafslv')}",
         "--rw=randwrite", "--bs=64k", f"--offset={FS_MB}m", f"--size={LV_MB - FS_MB}m",
         "--iodepth=4", "--time_based", "--runtime=60", "--output-format=terse"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writer = AckedWriter(a.nbd_uri("dataloglv"), count=64)
    try:
        writer.start()
        writer.wait_acked(8, timeout=60)
        assert fio.poll() is None, "the background writer should still be running"
        a.kill()  # kill -9: the disaster, Philadelphia is gone mid-write
    finally:
        writer.join(120)
        fio.kill()
        fio.wait()
    assert not writer.is_alive()
    acked = list(writer.acked)
    assert len(acked) >= 8

    # -- at B: the seed's failover, step by step
    out = failover_to_b(b, "all 4 physical volumes")
    status = pv_status(out)
    assert status == {b_pvids["hdisk2"][:16]: ("hdisk2", "PVACTIVE"),
                      b_pvids["hdisk3"][:16]: ("hdisk3", "PVACTIVE"),
                      a_pvids["hdisk1"][:16]: (None, "NONAME"),
                      a_pvids["hdisk2"][:16]: (None, "NONAME")}, out
    assert "varyonvg: Volume group datavg is varied on." in out
    assert out.splitlines()[-1] == "datavg"
    # the seed's synclvodm lines for the PVs B has no device for, and AIX's import defaults
    for pvid in (a_pvids["hdisk1"], a_pvids["hdisk2"]):
        assert ("0516-510 synclvodm: Physical volume not found for physical volume "
                f"identifier {pvid}.") in out
    assert "0516-548 synclvodm: Partially successful with updating volume group datavg." in out
    assert "chvg -a n -Q n datavg" in out
    vg = b.json("lsvg", "datavg")
    assert (vg["quorum"], vg["quorum_active"], vg["auto_on"]) == (True, True, True)
    b.ctl("chvg", "-a", "n", "-Q", "n", "datavg")
    assert "varied on" in b.ctl("varyonvg", "datavg")
    vg = b.json("lsvg", "datavg")
    assert (vg["state"], vg["quorum"], vg["auto_on"]) == ("active", False, False)

    # every write A acknowledged before it died is at B
    r = qemu_io(b.nbd_uri("dataloglv"),
                *[f"read -P {pat} {off} 64k" for off, pat in acked], check=False)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout, r.stdout
    if writer.failed:  # the write in flight: old or new, block by block, never a mix
        off, pat = writer.failed
        log_b = lv_bytes(b, "dataloglv", tmp_path)
        for o in range(off, off + AckedWriter.BLOCK, 4096):
            assert log_b[o:o + 4096] in (bytes(4096), bytes([pat]) * 4096), o

    # the filesystem: the image is there byte for byte and fsck-clean (nbdcopy LV -> file)
    fs_b = lv_bytes(b, "datafslv", tmp_path)
    assert fs_b[:FS_MB * MiB] == image
    fs_img = tmp_path / "fs_at_b.img"
    fs_img.write_bytes(fs_b[:FS_MB * MiB])
    check_fs(str(fs_img), files, tmp_path)
    # qemu-img reads the same bytes as nbdcopy
    assert lv_bytes(b, "datafslv", tmp_path, tool="qemu-img") == fs_b

    # production runs at B for a while
    qemu_io(b.nbd_uri("datafslv"), f"write -P 0xb1 {FS_MB + 1}M 256k",
            f"read -P 0xb1 {FS_MB + 1}M 256k")
    qemu_io(b.nbd_uri("dataloglv"), "write -P 0xb2 0 64k")
    expect_fs = bytearray(lv_bytes(b, "datafslv", tmp_path))
    expect_log = lv_bytes(b, "dataloglv", tmp_path)
    assert expect_fs[(FS_MB + 1) * MiB:(FS_MB + 1) * MiB + 256 * KiB] == b"\xb1" * 256 * KiB

    # -- runbook 3: failback. Philadelphia is repaired and restarts.
    a.start()
    assert {d["name"]: d["state"] for d in a.json("lsdev", "-c", "disk")} == {
        "hdisk1": "Available", "hdisk2": "Available",
        "hdisk3": "Defined", "hdisk4": "Defined"}  # RPV clients never come up by themselves
    assert a.json("lsvg", "datavg")["state"] == "inactive"
    b_lets_go(b)
    for d in RPV_CLIENTS:
        a.ctl("mkdev", "-l", d)
    out = a.ctl("varyonvg", "-n", "-s", "datavg")
    assert {name: st for name, st in pv_status(out).values()} == {
        "hdisk1": "PVREMOVED", "hdisk2": "PVREMOVED",
        "hdisk3": "PVACTIVE", "hdisk4": "PVACTIVE"}, out
    assert "varyonvg: Volume group datavg is varied on." in out
    a.ctl("chpv", "-v", "a", "hdisk1")
    a.ctl("chpv", "-v", "a", "hdisk2")
    a.ctl("varyoffvg", "datavg")
    out = a.ctl("varyonvg", "datavg")
    assert "varied on" in out
    syncvg(a)
    vg = a.json("lsvg", "datavg")
    assert vg["stale_pps"] == 0 and [p["state"] for p in vg["pvs"]] == ["active"] * 4
    # everything written at B during the outage (and before it) reads back at A
    assert lv_bytes(a, "datafslv", tmp_path) == bytes(expect_fs)
    assert lv_bytes(a, "dataloglv", tmp_path) == expect_log
    all_copies_equal(geo, "datafslv")
    all_copies_equal(geo, "dataloglv")

    # back in the original direction: a verifying fio through the mirrored LV at A
    r = run("fio", "--name=verify", "--ioengine=nbd", f"--uri={a.nbd_uri('datafslv')}",
            "--rw=randwrite", "--bs=4k", f"--offset={FS_MB}m", "--size=8m",
            "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--iodepth=8",
            "--verify_state_save=0", "--output-format=terse")
    assert r.returncode == 0
    all_copies_equal(geo, "datafslv")
    fs_img.write_bytes(lv_bytes(a, "datafslv", tmp_path)[:FS_MB * MiB])
    check_fs(str(fs_img), files, tmp_path)


# -- runbook 4: remote physical volume failure -----------------------------------------------

@pytest.mark.parametrize("fault", ["sigstop", "blackhole"])
def test_runbook4_remote_pv_failure_and_recovery(geo, tmp_path, fault):
    a, b = geo.a, geo.b
    io_timeout = 2  # the geo fixture's RPV clients
    proxied = fault == "blackhole"
    link = start_proxy(f"127.0.0.3:{b.port}", f"{b.addr}:{b.port}", source=a.addr,
                       control=str(tmp_path / "proxy.sock")) if proxied else \
        contextlib.nullcontext((None, None))
    with link as (_, proxy):
        if proxied:  # A's RPV clients reach B through the fault proxy
            for d in RPV_CLIENTS:
                a.ctl("chdev", "-l", d, "-a", "server_addr=127.0.0.3")
        airline(geo)  # quorum off: the seed's assumption for this section
        if proxied:
            st = proxy.stats()
            assert st["connections_accepted"] >= 2 and st["bytes_up"] > LV_MB * MiB
        qemu_io(a.nbd_uri("datafslv"), "write -P 0x40 0 1M")
        assert copies_equal(geo, "datafslv") == []

        proxy.set(mode="blackhole") if proxied else b.pause()
        try:
            # the first write waits for the RPV deadline, then completes on the local copy
            t0 = time.monotonic()
            qemu_io(a.nbd_uri("datafslv"), "write -P 0x41 4M 256k")
            elapsed = time.monotonic() - t0
            assert io_timeout * 0.9 <= elapsed < io_timeout + 15, elapsed
            # from now on I/O goes on at local speed
            t0 = time.monotonic()
            qemu_io(a.nbd_uri("datafslv"), "write -P 0x42 20M 64k", "read -P 0x42 20M 64k",
                    "read -P 0x40 0 1M", "read -P 0x41 4M 256k")
            qemu_io(a.nbd_uri("dataloglv"), "write -P 0x43 0 64k")
            assert time.monotonic() - t0 < io_timeout, "I/O waited for the dead link again"
            vg = a.json("lsvg", "datavg")
            assert vg["state"] == "active" and vg["stale_pps"] >= 2
            states = {p["name"]: p["state"] for p in vg["pvs"]}
            assert states["hdisk1"] == states["hdisk2"] == "active"
            assert "missing" in (states["hdisk3"], states["hdisk4"])
            entries = a.json("errpt")
            timeouts = [e for e in entries if e["label"] == "RPVC_IO_TIMEOUT"]
            assert timeouts and {e["resource"] for e in timeouts} <= set(RPV_CLIENTS)
            assert "LVM_SA_STALEPP" in [e["label"] for e in entries]
            assert a.json("lslv", "datafslv")["stale_pps"] >= 2
        finally:
            proxy.set(mode="pass") if proxied else b.cont()

        # repair done: the RPV clients resume, varyonvg on the online VG takes the PVs back
        for d in RPV_CLIENTS:
            a.ctl("chdev", "-l", d, "-a", "resume=yes")
        # the RPV clients talk again, but LVM does not know yet: still stale
        vg = a.json("lsvg", "datavg")
        assert vg["stale_pps"] >= 2 and "missing" in [p["state"] for p in vg["pvs"]]
        assert "varied on" in a.ctl("varyonvg", "datavg")
        syncvg(a)
        vg = a.json("lsvg", "datavg")
        assert vg["stale_pps"] == 0 and [p["state"] for p in vg["pvs"]] == ["active"] * 4
        assert "LVM_MISSPVRET" in labels(a)
        assert copies_equal(geo, "datafslv") == [] and copies_equal(geo, "dataloglv") == []
        qemu_io(a.nbd_uri("datafslv"), "read -P 0x41 4M 256k", "read -P 0x42 20M 64k")
        # mirroring to Poughkeepsie resumed as before
        qemu_io(a.nbd_uri("datafslv"), "write -P 0x44 8M 64k")
        assert stale_pps(a) == 0 and copies_equal(geo, "datafslv") == []


# -- runbook 5: planned outage -----------------------------------------------------------------

def test_runbook5_planned_outage_server_addr_none(geo, tmp_path):
    a, b = geo.a, geo.b
    airline(geo)
    qemu_io(a.nbd_uri("datafslv"), "write -P 0x50 0 1M")
    # a long I/O timeout: any wait for it would be unmistakable
    for d in RPV_CLIENTS:
        a.ctl("chdev", "-l", d, "-a", "io_timeout=60")
    for d in RPV_CLIENTS:
        a.ctl("chdev", "-l", d, "-a", "server_addr=none")
    t0 = time.monotonic()
    qemu_io(a.nbd_uri("datafslv"), "write -P 0x51 4M 256k", "read -P 0x51 4M 256k")
    assert time.monotonic() - t0 < 10, "a planned outage must not wait for io_timeout"
    qemu_io(a.nbd_uri("dataloglv"), "write -P 0x52 0 64k")
    assert {p["name"]: p["state"] for p in a.json("lspv")}["hdisk3"] == "disabled"
    vg = a.json("lsvg", "datavg")
    assert vg["state"] == "active" and vg["stale_pps"] >= 2
    got = labels(a)
    assert "RPVC_IO_TIMEOUT" not in got  # you caused it, you need not be told
    assert "LVM_SA_STALEPP" in got  # LVM logs as for an unplanned outage
    # the planned work at B happens; then A points its RPV clients back
    for d in RPV_CLIENTS:
        a.ctl("chdev", "-l", d, "-a", f"server_addr={b.addr}")
    assert stale_pps(a) >= 2  # LVM uses the PVs again only after varyonvg
    assert "varied on" in a.ctl("varyonvg", "datavg")
    syncvg(a)
    assert stale_pps(a) == 0
    assert copies_equal(geo, "datafslv") == [] and copies_equal(geo, "dataloglv") == []
    assert "RPVC_IO_TIMEOUT" not in labels(a)
    # interop: qemu-img convert of the LV sees what the NBD writes put there
    data = lv_bytes(a, "datafslv", tmp_path, tool="qemu-img")
    assert data[:MiB] == b"\x50" * MiB and data[4 * MiB:4 * MiB + 256 * KiB] == \
        b"\x51" * 256 * KiB
    m = a.json("lslv", "-m", "datafslv")
    assert read_copy(m, 1, geo.files, 4)[4 * MiB:4 * MiB + 256 * KiB] == b"\x51" * 256 * KiB


# -- runbook 6: the seed's six-disk quorum example ------------------------------------------

def six_disk_vg(geo) -> None:
    """Two copies at A (hdisk1/hdisk2 and hdisk5/hdisk6), one at B (RPV clients hdisk3/hdisk4),
    every LV super strict with 3 copies; quorum stays on (mirrorvg -Q)."""
    a = geo.a
    for n in ("hdisk5", "hdisk6"):
        a.make_disk(n, "256M")
        geo.files[n] = a.disk_path(n) + ".img"
    # set-up, not the scenario: straight to the control socket (glvmctl's requests for
    # mkvg, mklv -s s -u 2, mirrorvg -Q -c 2, gmvg add-rpvs, mirrorvg -Q -c 3)
    a.rpc("mkvg", vg="datavg", pvs=["hdisk1", "hdisk2", "hdisk5", "hdisk6"], pp_size_mb=None,
          force=False)
    a.rpc("mklv", lv="datafslv", vg="datavg", lps=4, copies=1, strictness="s", upperbound=2,
          pvs=["hdisk1", "hdisk2"])
    r = a.rpc("mirrorvg", vg="datavg", pvs=["hdisk5", "hdisk6"], copies=2, sync="foreground",
              keep_quorum=True)
    assert not (r.get("resync") or {}).get("failed"), r  # glvmctl would exit 1
    a.rpc("gmvg_add_rpvs", vg="datavg", site="Poughkeepsie", pvs=None, force=False)
    r = a.rpc("mirrorvg", vg="datavg", pvs=["hdisk3", "hdisk4"], copies=3, sync="foreground",
              keep_quorum=True)
    assert not (r.get("resync") or {}).get("failed"), r
    m = a.rpc("lslv", lv="datafslv", map=True)
    sites = [{c["copies"][i]["pv"] for c in m["map"]} for i in range(3)]
    assert sites[0] <= {"hdisk1", "hdisk2"} and sites[1] <= {"hdisk5", "hdisk6"} and \
        sites[2] <= {"hdisk3", "hdisk4"}, sites
    assert a.rpc("lsvg", vg="datavg")["quorum"] is True


@pytest.mark.parametrize("quorum", ["on", "off"])
def test_runbook6_six_disks_quorum_and_stale_data(geo, quorum):
    a, b = geo.a, geo.b
    six_disk_vg(geo)
    if quorum == "off":
        out = a.ctl("chvg", "-Q", "n", "datavg")
        assert "Quorum requirement turned off" in out
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
    assert a.json("lsvg", "datavg")["quorum"] is (quorum == "on")
    qemu_io(a.nbd_uri("datafslv"), "write -P 0x0a 0 1M", "write -P 0x0a 12M 1M")
    all_copies_equal(geo, "datafslv")
    lv_map = a.json("lslv", "-m", "datafslv")

    # a massive power outage at Philadelphia; the workload moves to Poughkeepsie
    a.kill()  # kill -9
    out = failover_to_b(b, "all 6 physical volumes" if quorum == "off" else "without a quorum")
    assert sorted(st for _, st in pv_status(out).values()) == ["NONAME"] * 4 + ["PVACTIVE"] * 2
    b.ctl("chvg", "-a", "n", "-Q", "n", "datavg")
    qemu_io(b.nbd_uri("datafslv"), "write -P 0x0b 0 1M")  # only B's copy gets the update
    b_lets_go(b)

    # Philadelphia is back; its RPV clients are Defined after the restart
    a.start()
    assert {d["name"]: d["state"] for d in a.json("lsdev", "-c", "disk", "-t", "rpvclient")} \
        == dict.fromkeys(RPV_CLIENTS, "Defined")
    if quorum == "on":
        # The seed ("Quorum and Remote Physical Volume Failure"): "If quorum was enabled, and
        # you forgot to make the remote physical volumes accessible, then the four stale local
        # physical volumes would be enough to satisfy the quorum requirement, and the volume
        # group would be varied online with only the stale data. LVM would not even realize
        # that the data is stale". That hazard, exactly: 4 of 6 PVs, varied on, OLD data.
        out = a.ctl("varyonvg", "datavg")
        assert {n: st for n, st in pv_status(out).values()} == {
            "hdisk1": "PVACTIVE", "hdisk2": "PVACTIVE", "hdisk5": "PVACTIVE",
            "hdisk6": "PVACTIVE", "hdisk3": "PVMISSING", "hdisk4": "PVMISSING"}, out
        assert a.json("lsvg", "datavg")["state"] == "active"
        qemu_io(a.nbd_uri("datafslv"), "read -P 0x0a 0 1M")  # stale, and served as good
        m = a.json("lslv", "-m", "datafslv")
        assert not any(c["stale"] for row in m["map"] for c in row["copies"][:2])
        # while the up-to-date copy sits unread at Poughkeepsie
        assert read_copy(lv_map, 2, geo.files, 4)[:MiB] == b"\x0b" * MiB
        return

    # quorum off: all six PVs must be reachable, so the stale copies alone are refused
    refused = a.fails("varyonvg", "datavg")
    assert "all 6 physical volumes" in refused
    assert a.json("lsvg", "datavg")["state"] == "inactive"
    for d in RPV_CLIENTS:
        a.ctl("mkdev", "-l", d)
    out = a.ctl("varyonvg", "-n", "-s", "datavg")
    assert {n: st for n, st in pv_status(out).values()} == {
        "hdisk1": "PVREMOVED", "hdisk2": "PVREMOVED", "hdisk5": "PVREMOVED",
        "hdisk6": "PVREMOVED", "hdisk3": "PVACTIVE", "hdisk4": "PVACTIVE"}, out
    for d in ("hdisk1", "hdisk2", "hdisk5", "hdisk6"):
        a.ctl("chpv", "-v", "a", d)
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
    syncvg(a)
    assert stale_pps(a) == 0
    qemu_io(a.nbd_uri("datafslv"), "read -P 0x0b 0 1M", "read -P 0x0a 12M 1M")
    all_copies_equal(geo, "datafslv")


# -- a mounted filesystem through failover and failback -------------------------------------


def write_files(point: Path, n: int, seed: int) -> dict[str, bytes]:
    files = {f"f{seed}_{i}.bin": os.urandom(100_000 + 997 * i) for i in range(n)}
    for name, data in files.items():
        (point / name).write_bytes(data)
    return files


def test_mounted_filesystem_failover_and_failback(geo, mounts, tmp_path):
    """The white paper's filesystem steps for real: mkfs and mount the attached LV at A, files
    written and synced; A killed (kill -9) while a writer is busy; at B importvg -f, attach,
    fsck -f clean, mount, every synced file intact; then production at B and failback."""
    a, b = geo.a, geo.b
    configure_airline(geo)
    dev_a, mnt_a = mounts.mount(a, "datafslv", "mnt_a")
    run("mkfs.ext4", "-q", dev_a)
    run("mount", dev_a, str(mnt_a))
    synced = write_files(mnt_a, 12, seed=1)
    run("sync", "-f", str(mnt_a / "f1_0.bin"))
    assert "0516-012" in a.fails("varyoffvg", "datavg")  # the LV is open (attached)
    # the disaster, mid-write: a writer fills a file that is never synced
    busy = subprocess.Popen(["dd", "if=/dev/urandom", f"of={mnt_a / 'unsynced.bin'}", "bs=64k",
                             "count=200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        a.kill()
    finally:
        busy.kill()
        busy.wait()
    subprocess.run(["umount", "-l", str(mnt_a)], capture_output=True)

    # -- at B: failover
    out = failover_to_b(b, "all 4 physical volumes")
    assert "varyonvg: Volume group datavg is varied on." in out
    dev_b, mnt_b = mounts.mount(b, "datafslv", "mnt_b")
    r = subprocess.run(["e2fsck", "-f", "-y", dev_b], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1: the journal was replayed
    r = subprocess.run(["e2fsck", "-f", "-n", dev_b], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr  # clean
    run("mount", dev_b, str(mnt_b))
    for name, data in synced.items():
        assert (mnt_b / name).read_bytes() == data, name
    at_b = write_files(mnt_b, 3, seed=2)  # production at B
    run("umount", str(mnt_b))
    assert b.ctl("attach").count("datafslv") == 1
    assert "detached" in b.ctl("detach", dev_b)
    assert b.ctl("attach", "--json").strip() == "[]"

    # -- failback: A restarts, takes its copy back and resyncs
    b_lets_go(b)
    a.start()
    a_takes_back(a)
    syncvg(a)
    assert stale_pps(a) == 0
    dev_a2, mnt_a2 = mounts.mount(a, "datafslv", "mnt_a2")
    r = subprocess.run(["e2fsck", "-f", "-n", dev_a2], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    run("mount", dev_a2, str(mnt_a2))
    for name, data in {**synced, **at_b}.items():
        assert (mnt_a2 / name).read_bytes() == data, name
    run("umount", str(mnt_a2))
    a.ctl("detach", "datafslv")
    all_copies_equal(geo, "datafslv")
