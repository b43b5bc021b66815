"""The LVM core against real daemons: volume groups, mirrored LVs, stale tracking, quorum,
varyon/import, resync, crash consistency. Data goes through the LVs' NBD exports."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess

import pytest

from lvm.resync import BATCH_PPS
from tests.conftest import qemu_io, run
from tests.helpers.lvmtools import copies_equal, diff_blocks, read_copy
from tests.helpers.waits import wait_for_log

MiB = 1 << 20


def build_datavg(geo, lps: int = 10) -> None:
    """mkvg on A's local disks, two LVs, super strict, then a mirror on B's disks."""
    a = geo.a
    assert a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2").strip() == "datavg"
    a.ctl("mklv", "-y", "datafslv", "datavg", str(lps))
    a.ctl("mklv", "-y", "dataloglv", "datavg", "1")
    for lv in ("datafslv", "dataloglv"):
        a.ctl("chlv", "-s", "s", "-u", "2", lv)
    a.ctl("extendvg", "datavg", "hdisk3", "hdisk4")
    out = a.ctl("mirrorvg", "-c", "2", "datavg", "hdisk3", "hdisk4")
    assert "Quorum requirement turned off" in out
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")


def test_vg_lv_listings_and_lv_export(geo):
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
    a.ctl("mklv", "-y", "datafslv", "datavg", "12")
    vg = a.json("lsvg", "datavg")
    assert set(vg) >= {"name", "state", "quorum", "pp_size_mb", "total_pps", "free_pps",
                       "stale_pps", "pvs"}
    assert (vg["name"], vg["state"], vg["quorum"], vg["pp_size_mb"]) == \
        ("datavg", "active", True, 4)
    assert vg["total_pps"] == 2 * ((256 - 8) // 4) and vg["free_pps"] == vg["total_pps"] - 12
    assert [(p["name"], p["state"], p["stale_pps"]) for p in vg["pvs"]] == \
        [("hdisk1", "active", 0), ("hdisk2", "active", 0)]
    assert all(set(p) >= {"name", "pvid", "state", "total_pps", "stale_pps"} for p in vg["pvs"])
    lv = a.json("lslv", "datafslv")
    assert {k: lv[k] for k in ("name", "vg", "copies", "lps", "stale_pps", "strictness",
                               "upperbound")} == {
        "name": "datafslv", "vg": "datavg", "copies": 1, "lps": 12, "stale_pps": 0,
        "strictness": "y", "upperbound": 0}
    m = a.json("lslv", "-m", "datafslv")["map"]
    assert [r["lp"] for r in m] == list(range(1, 13))
    assert m[0]["copies"][0]["pv"] == "hdisk1" and m[0]["copies"][0]["pp"] == 1
    assert {p["name"]: p["vg"] for p in a.json("lspv")} == {
        "hdisk1": "datavg", "hdisk2": "datavg", "hdisk3": None, "hdisk4": None}
    assert a.json("lsvg") == ["datavg"]
    human = a.ctl("lslv", "-m", "datafslv").splitlines()
    assert human[0].startswith("datafslv") and "PP1" in human[1] and "hdisk1" in human[2]
    assert "hdisk1" in a.ctl("lsvg", "-p", "datavg")
    assert "datafslv" in a.ctl("lsvg", "-l", "datavg")
    exports = json.loads(run("nbdinfo", "--list", "--json",
                             f"nbd+unix://?socket={a.nbd_socket}").stdout)["exports"]
    sizes = {e["export-name"]: e["export-size"] for e in exports}
    assert sizes["datafslv"] == 12 * 4 * MiB
    qemu_io(a.nbd_uri("datafslv"), "write -P 0x5a 0 1M", "read -P 0x5a 0 1M",
            "write -P 0x5b 47M 1M", "read -P 0x5b 47M 1M")
    with open(geo.files["hdisk1"], "rb") as f:
        f.seek(8 * MiB)
        assert f.read(MiB) == b"\x5a" * MiB
    a.ctl("varyoffvg", "datavg")
    assert a.json("lsvg", "datavg")["state"] == "inactive"
    r = qemu_io(a.nbd_uri("datafslv"), "read 0 4k", check=False)
    assert r.returncode != 0
    a.ctl("varyonvg", "datavg")
    qemu_io(a.nbd_uri("datafslv"), "read -P 0x5a 0 1M")


def test_bad_lvm_input_changes_nothing(geo):
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1")
    a.ctl("mklv", "-y", "lv1", "datavg", "4")
    before = a.json("lsvg", "datavg")
    cases = [
        (("mkvg", "-y", "datavg", "hdisk2"), "already used"),
        (("mkvg", "-y", "othervg", "hdisk1"), "already belongs to volume group datavg"),
        (("mkvg", "-y", "othervg", "hdisk9"), "not defined"),
        (("mkvg", "-y", "9bad", "hdisk2"), "must be 1-15 letters"),
        (("mkvg", "-y", "othervg", "-s", "3", "hdisk2"), "power of 2"),
        (("extendvg", "novg", "hdisk2"), "does not exist"),
        (("extendvg", "datavg", "hdisk1"), "already belongs"),
        (("mklv", "-y", "lv2", "datavg", "1000"), "not enough free partitions"),
        (("mklv", "-y", "lv2", "-c", "2", "datavg", "2"), "need at least 2 physical volumes"),
        (("mklv", "-y", "lv1", "datavg", "1"), "already used"),
        (("mklv", "-y", "lv2", "datavg", "1", "hdisk2"), "not in volume group datavg"),
        (("lslv", "nolv"), "does not exist"),
        (("rmlv", "nolv"), "does not exist"),
        (("reducevg", "datavg", "hdisk1"), "last physical volume"),
        (("varyonvg", "novg"), "does not exist"),
        (("importvg", "-y", "vg2", "hdisk2"), "does not hold volume group metadata"),
        (("exportvg", "datavg"), "varyoffvg first"),
        (("unmirrorvg", "datavg", "hdisk1"), "last copy"),
    ]
    for args, message in cases:
        assert message in a.fails(*args), args
    for args, message in [  # refused by the CLI itself, as usage errors
        (("mklv", "-y", "lv2", "-c", "4", "datavg", "1"), "Invalid value for '-c'"),
        (("chlv", "-u", "-1", "lv1"), "Invalid value for '-u'"),
    ]:
        r = a.run(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert a.json("lsvg", "datavg") == before
    assert a.json("lsvg") == ["datavg"]
    # a PV of the VG cannot be unconfigured under it
    assert "varyoffvg datavg first" in a.fails("rmdev", "-l", "hdisk1")


def test_super_strict_refusals(geo):
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
    a.ctl("mklv", "-y", "lv1", "-c", "2", "datavg", "4")  # strict: copy 2 on hdisk2
    a.ctl("chlv", "-s", "s", "lv1")
    a.ctl("mklv", "-y", "lv2", "-c", "1", "datavg", "80")  # spans hdisk1 and hdisk2
    assert "upper bound 1" in a.fails("chlv", "-u", "1", "lv2")
    # super strict + upper bound: a copy needing more PVs than allowed is refused
    assert "not enough free partitions" in a.fails("mklv", "-y", "lv3", "-s", "s", "-u", "1",
                                                   "datavg", "80")


def test_mirror_failure_resync_failover_and_failback(geo, tmp_path):
    """The issue's walk-through: stale partitions while site B is stopped, resume, resync
    to zero, then failover reads back every byte written, including during the outage;
    then the seed's failback (varyonvg -n -s, chpv -v a) brings B's writes home."""
    a, b = geo.a, geo.b
    build_datavg(geo, lps=10)
    data = bytearray(os.urandom(40 * MiB))
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    run("nbdcopy", str(src), a.nbd_uri("datafslv"))
    assert copies_equal(geo, "datafslv") == []
    b.pause()
    try:
        # the first write waits for the RPV deadline, then continues on the local copy
        qemu_io(a.nbd_uri("datafslv"), "write -P 0x61 0 256k")
        qemu_io(a.nbd_uri("datafslv"), "write -P 0x62 20M 64k", "read -P 0x62 20M 64k")
        data[0:256 * 1024] = b"\x61" * 256 * 1024
        data[20 * MiB:20 * MiB + 65536] = b"\x62" * 65536
        vg = a.json("lsvg", "datavg")
        assert vg["state"] == "active" and vg["stale_pps"] >= 2
        states = {p["name"]: p["state"] for p in vg["pvs"]}
        assert states["hdisk1"] == "active" and states["hdisk3"] == "missing"
        labels = [e["label"] for e in a.json("errpt")]
        assert labels.count("LVM_SA_STALEPP") >= 1 and "LVM_SA_PVMISS" in labels
        assert "RPVC_IO_TIMEOUT" in labels
        assert a.json("lslv", "datafslv")["stale_pps"] >= 2
        # varyonvg cannot take the PVs back while B is stopped: it lists them and logs why
        out = a.ctl("varyonvg", "datavg")
        assert "hdisk3" in out and "PVMISSING" in out
        why = [e for e in a.log_events() if e["event"] == "lvm_pv_unreadable"
               and e.get("vg") == "datavg"]
        assert {e["pv"] for e in why} >= {"hdisk3"} and all(e["error"] for e in why)
    finally:
        b.cont()
    for d in ("hdisk3", "hdisk4"):
        a.ctl("chdev", "-l", d, "-a", "resume=yes")
    out = a.ctl("varyonvg", "datavg")
    assert "varied on" in out
    result = json.loads(a.ctl("syncvg", "-v", "datavg", "--json").splitlines()[-1])
    assert result["failed"] == []
    vg = a.json("lsvg", "datavg")
    assert vg["stale_pps"] == 0 and all(p["state"] == "active" for p in vg["pvs"])
    assert "LVM_MISSPVRET" in [e["label"] for e in a.json("errpt")]
    assert copies_equal(geo, "datafslv") == []
    # failover: A lets go, B takes the VG from its own disks
    a.ctl("varyoffvg", "datavg")
    for s in ("rpvserver0", "rpvserver1"):
        b.ctl("chdev", "-l", s, "-a", "auto_online=n")
        b.ctl("rmdev", "-l", s)
    out = b.ctl("importvg", "-f", "-y", "datavg", "hdisk2")
    assert "PV Status:" in out and out.count("PVACTIVE") == 2 and out.count("NONAME") == 2
    back = tmp_path / "back.bin"
    run("nbdcopy", b.nbd_uri("datafslv"), str(back))
    assert back.read_bytes() == bytes(data)
    # production runs at B for a while
    qemu_io(b.nbd_uri("datafslv"), "write -P 0x63 8M 192k")
    data[8 * MiB:8 * MiB + 192 * 1024] = b"\x63" * 192 * 1024
    assert [p["state"] for p in b.json("lsvg", "datavg")["pvs"] if p["name"]] == \
        ["active", "active"]
    # failback: B lets go and serves its disks again; A finds its own copy removed
    b.ctl("varyoffvg", "datavg")
    for s in ("rpvserver0", "rpvserver1"):
        b.ctl("chdev", "-l", s, "-a", "auto_online=y")
        b.ctl("mkdev", "-l", s)
    for d in ("hdisk3", "hdisk4"):
        a.ctl("chdev", "-l", d, "-a", "resume=yes")
    out = a.ctl("varyonvg", "-n", "-s", "datavg")
    status = dict(line.split()[::2] for line in out.splitlines()[1:5])
    assert status == {"hdisk1": "PVREMOVED", "hdisk2": "PVREMOVED", "hdisk3": "PVACTIVE",
                      "hdisk4": "PVACTIVE"}, out
    a.ctl("chpv", "-v", "a", "hdisk1")
    a.ctl("chpv", "-v", "a", "hdisk2")
    assert "LVM_MISSPVADDED" in [e["label"] for e in a.json("errpt")]
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
    a.ctl("syncvg", "-v", "datavg")
    assert a.json("lsvg", "datavg")["stale_pps"] == 0
    run("nbdcopy", a.nbd_uri("datafslv"), str(back))
    assert back.read_bytes() == bytes(data)
    assert copies_equal(geo, "datafslv") == []


def test_fine_grained_resync_moves_only_changed_chunks(site_a, site_b, tmp_path):
    a, b = site_a, site_b
    a.make_disk("hdisk1", "300M")
    pvid = b.make_disk("hdisk2", "300M")
    b.serve(pvid, a.addr)
    a.add_client("hdisk2", pvid, b, io_timeout=5)
    a.ctl("mkvg", "-y", "bigvg", "hdisk1")
    a.ctl("mklv", "-y", "biglv", "bigvg", "64")  # 256 MiB
    a.ctl("extendvg", "bigvg", "hdisk2")
    a.ctl("mirrorvg", "-c", "2", "bigvg", "hdisk2")
    a.ctl("varyoffvg", "bigvg")
    a.ctl("varyonvg", "bigvg")
    a.ctl("chdev", "-l", "hdisk2", "-a", "server_addr=none")  # planned outage
    rng = random.Random(7)
    cmds = [f"write -P {rng.randrange(1, 255)} {rng.randrange(0, 65536) * 4096} 4k"
            for _ in range(500)]
    for i in range(0, len(cmds), 250):
        qemu_io(a.nbd_uri("biglv"), *cmds[i:i + 250])
    assert a.json("lsvg", "bigvg")["stale_pps"] > 0
    assert not [e for e in a.json("errpt") if e["label"] == "RPVC_IO_TIMEOUT"]
    a.ctl("chdev", "-l", "hdisk2", "-a", f"server_addr={b.addr}")
    a.ctl("varyonvg", "-n", "bigvg")  # take the PV back; resync below, measured
    events = [json.loads(line) for line in
              a.ctl("syncvg", "-v", "bigvg", "--json").splitlines()]
    result = events[-1]
    assert result["failed"] == [] and result["pps_done"] == result["pps_total"] > 0
    # a whole-partition resync would copy every stale 4 MiB partition (most of 256 MiB);
    # only the 64 KiB chunks the writes touched are copied
    assert 500 * 4096 <= result["bytes"] < 500 * 64 * 1024, result
    assert a.json("lsvg", "bigvg")["stale_pps"] == 0
    m = a.json("lslv", "-m", "biglv")
    files = {"hdisk1": a.disk_path("hdisk1") + ".img", "hdisk2": b.disk_path("hdisk2") + ".img"}
    assert diff_blocks(read_copy(m, 0, files, 4), read_copy(m, 1, files, 4)) == []


def test_overlapping_concurrent_writes_leave_copies_identical(geo):
    build_datavg(geo, lps=4)
    a = geo.a
    # four writers hammering the same 256 KiB with random sizes and offsets
    procs = [subprocess.Popen(
        ["fio", "--name=overlap", "--ioengine=nbd", f"--uri={a.nbd_uri('datafslv')}",
         "--rw=randwrite", "--bsrange=4k-64k", "--size=256k", "--io_size=8m",
         "--iodepth=16", f"--randseed={s}", "--random_generator=lfsr", "--norandommap",
         "--output-format=terse"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True) for s in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert copies_equal(geo, "datafslv") == []


def test_kill_mid_write_then_varyon_resyncs_dirty_regions(geo):
    build_datavg(geo, lps=8)
    a = geo.a
    mark = len(a.log_events())
    writer = subprocess.Popen(
        ["fio", "--name=crash", "--ioengine=nbd", f"--uri={a.nbd_uri('datafslv')}",
         "--rw=randwrite", "--bs=64k", "--size=32m", "--iodepth=32", "--time_based",
         "--runtime=30", "--output-format=terse"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # wait until the writer is mid-flight: the DRL has recorded dirty regions
        wait_for_log(a, lambda e: e["event"] == "lvm_drl_commit" and e["regions"] > 0,
                     since=mark)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait()
    finally:
        writer.kill()
        writer.wait()
    a.start()
    for d in ("hdisk3", "hdisk4"):
        a.ctl("mkdev", "-l", d)
    a.ctl("varyonvg", "datavg")
    recovered = [e for e in a.log_events() if e["event"] == "lvm_drl_recovered"]
    assert recovered and recovered[-1]["regions"] > 0
    a.ctl("syncvg", "-v", "datavg")
    assert copies_equal(geo, "datafslv") == []


def test_torn_metadata_falls_back_to_previous_generation(geo):
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
    a.ctl("mklv", "-y", "lv1", "datavg", "3")
    a.ctl("chlv", "-u", "2", "lv1")  # one more descriptor generation
    a.ctl("varyoffvg", "datavg")
    # find the newest VGDA slot on every PV and tear it
    for n in ("hdisk1", "hdisk2"):
        path = geo.files[n]
        with open(path, "r+b") as f:
            seqs = []
            for slot in (0, 1):
                f.seek(4 * MiB + slot * 2 * MiB)
                head = f.read(24)
                seqs.append(int.from_bytes(head[12:20], "big"))
            newest = seqs.index(max(seqs))
            f.seek(4 * MiB + newest * 2 * MiB + 40)
            f.write(b"\xff" * 64)
    a.ctl("varyonvg", "datavg")
    lv = a.json("lslv", "lv1")
    assert lv["lps"] == 3 and lv["upperbound"] == 0  # the generation before chlv
    # both slots torn on every PV: the VG cannot be varied on, with a clear message
    a.ctl("varyoffvg", "datavg")
    for n in ("hdisk1", "hdisk2"):
        with open(geo.files[n], "r+b") as f:
            for slot in (0, 1):
                f.seek(4 * MiB + slot * 2 * MiB + 40)
                f.write(b"\x00" * 64)
    assert "no physical volume of datavg is reachable" in a.fails("varyonvg", "datavg")


def test_quorum_rules_at_varyon(site_a):
    a = site_a
    for n in ("hdisk1", "hdisk2", "hdisk3"):
        a.make_disk(n, "64M")
    a.ctl("mkvg", "-y", "qvg", "hdisk1", "hdisk2", "hdisk3")
    a.ctl("varyoffvg", "qvg")
    a.ctl("rmdev", "-l", "hdisk3")
    out = a.ctl("varyonvg", "qvg")  # 2 of 3: quorum
    assert "hdisk3" in out and "PVMISSING" in out
    a.ctl("varyoffvg", "qvg")
    a.ctl("rmdev", "-l", "hdisk2")
    assert "without a quorum" in a.fails("varyonvg", "qvg")  # 1 of 3
    a.ctl("varyonvg", "-f", "qvg")
    a.ctl("chvg", "-Q", "n", "qvg")
    a.ctl("varyoffvg", "qvg")
    a.ctl("mkdev", "-l", "hdisk2")
    a.ctl("mkdev", "-l", "hdisk3")
    a.ctl("varyonvg", "qvg")
    assert a.json("lsvg", "qvg")["quorum"] is False
    a.ctl("varyoffvg", "qvg")
    a.ctl("rmdev", "-l", "hdisk3")
    assert "all 3 physical volumes" in a.fails("varyonvg", "qvg")  # quorum off: all needed


def test_quorum_loss_online_closes_vg(geo):
    a, b = geo.a, geo.b
    a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk3", "hdisk4")  # 1 local + 2 remote
    a.ctl("mklv", "-y", "lv1", "datavg", "2", "hdisk1")
    b.pause()
    try:
        r = qemu_io(a.nbd_uri("lv1"), "write -P 0x1 0 64k", check=False)
    finally:
        b.cont()
    # the LV's only copy is local, but the VGSA/DRL could not reach a majority of the VGDAs
    assert r.returncode != 0 or a.json("lsvg", "datavg")["state"] == "closed"
    assert a.json("lsvg", "datavg")["state"] == "closed"
    assert "LVM_SA_QUORCLOSE" in [e["label"] for e in a.json("errpt")]
    assert "run varyoffvg datavg first" in a.fails("varyonvg", "datavg")


def test_scale_one_tib_pvs_metadata_only(site_a):
    a = site_a
    for n in ("hdisk1", "hdisk2"):
        a.make_disk(n, "1T")
    a.ctl("mkvg", "-y", "hugevg", "hdisk1", "hdisk2")
    a.ctl("mklv", "-y", "hugelv", "-c", "2", "hugevg", "60000")
    a.ctl("varyoffvg", "hugevg")
    a.ctl("varyonvg", "hugevg")
    vg = a.json("lsvg", "hugevg")
    assert vg["pp_size_mb"] == 16 and vg["total_pps"] == 2 * (((1 << 20) - 8) // 16)
    assert vg["free_pps"] == vg["total_pps"] - 120000
    for n in ("hdisk1", "hdisk2"):
        st = os.stat(a.disk_path(n) + ".img")
        assert st.st_size == 1 << 40 and st.st_blocks * 512 < 16 * MiB


@pytest.mark.parametrize("sync", ["-S", "-s"])
def test_mirrorvg_background_and_nosync(geo, sync):
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1")
    a.ctl("mklv", "-y", "lv1", "datavg", "4")
    qemu_io(a.nbd_uri("lv1"), "write -P 0x33 0 1M")
    a.ctl("extendvg", "datavg", "hdisk3")
    a.ctl("mirrorvg", sync, "-Q", "datavg", "hdisk3")
    if sync == "-s":
        assert a.json("lsvg", "datavg")["stale_pps"] == 4
    a.ctl("syncvg", "-l", "lv1")
    assert a.json("lsvg", "datavg")["stale_pps"] == 0
    assert a.json("lsvg", "datavg")["quorum"] is True
    assert copies_equal(geo, "lv1") == []
    # reads prefer the local copy: with B stopped, reads still answer at once
    geo.b.pause()
    try:
        qemu_io(a.nbd_uri("lv1"), "read -P 0x33 0 1M")
    finally:
        geo.b.cont()


def test_failed_read_retries_another_copy(geo):
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1")
    a.ctl("mklv", "-y", "lv1", "datavg", "2")
    qemu_io(a.nbd_uri("lv1"), "write -P 0x44 0 1M")
    a.ctl("extendvg", "datavg", "hdisk3")
    a.ctl("mirrorvg", "datavg", "hdisk3")  # quorum off: one PV may fail
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
    # the local disk loses its data area behind the daemon's back: reads from it fail
    os.truncate(geo.files["hdisk1"], 8 * MiB)
    qemu_io(a.nbd_uri("lv1"), "read -P 0x44 0 1M")
    vg = a.json("lsvg", "datavg")
    pv = {p["name"]: p for p in vg["pvs"]}
    assert pv["hdisk1"]["state"] == "missing" and pv["hdisk1"]["stale_pps"] >= 1
    assert "LVM_SA_PVMISS" in [e["label"] for e in a.json("errpt")]


def test_resync_resumes_after_restart(geo):
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1")
    a.ctl("mklv", "-y", "lv1", "datavg", "12")
    a.ctl("extendvg", "datavg", "hdisk2")
    a.ctl("mirrorvg", "-s", "-Q", "datavg", "hdisk2")  # 12 stale PPs, not synced
    syncer = subprocess.Popen(
        [str(__import__("tests.sites", fromlist=["GLVMCTL"]).GLVMCTL), "--socket", a.socket,
         "syncvg", "-v", "datavg", "--rate", "8", "--json"],
        stdout=subprocess.PIPE, text=True)
    first = json.loads(syncer.stdout.readline())  # one batch of PPs done, durably
    assert first["pps_done"] == BATCH_PPS
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait()
    syncer.wait()
    a.start()
    out = a.ctl("varyonvg", "-n", "datavg")
    assert "varied on" in out
    left = a.json("lsvg", "datavg")["stale_pps"]
    assert 0 < left < 12
    result = json.loads(a.ctl("syncvg", "-v", "datavg", "--json").splitlines()[-1])
    assert result["pps_done"] == left
    assert a.json("lsvg", "datavg")["stale_pps"] == 0


def test_lsvg_of_a_varied_off_vg(geo):
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1")
    a.ctl("varyoffvg", "datavg")
    assert "must be varied on" in a.fails("lsvg", "datavg")
    assert "must be varied on" in a.fails("lsvg", "-p", "datavg")
    assert a.json("lsvg", "datavg")["state"] == "inactive"
