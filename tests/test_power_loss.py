"""Host power loss between real daemons (DESIGN invariant 10): site B's disks sit on a LazyFS,
so a power loss really drops what B had acknowledged but not synced. Site A must notice that
the RPV server came back as a new instance, mark what B had not flushed stale before it
acknowledges the next FLUSH, and resync it, so that the copies end identical and hold every
write. The same LazyFS makes B's disk die under an online repair.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import TEST_PORT
from tests.helpers.lvmtools import diff_blocks, read_copy
from tests.sites import Site, start_together
from tests.soak import LogFollower, NBDClient

MiB = 1 << 20
pytestmark = pytest.mark.integration


@pytest.fixture
def sites(tmp_path):
    a = Site("Philadelphia", "127.0.0.1", tmp_path / "a", node="nodeA", port=TEST_PORT)
    b = Site("Poughkeepsie", "127.0.0.2", tmp_path / "b", node="nodeB", port=TEST_PORT,
             lazy=True)
    try:
        start_together(a, b)
        for s in (a, b):
            s.rpc("site", name=s.name)
        yield a, b
    finally:
        a.close()
        b.close()


def mirrored_lv(a: Site, b: Site) -> dict[str, str]:
    """datavg: copy 1 on A's hdisk1, copy 2 on B's hdisk2 (A's RPV client hdisk3)."""
    a.make_disk("hdisk1", "64M")
    pvid = b.make_disk("hdisk2", "64M")
    b.serve(pvid, a.addr)
    a.add_client("hdisk3", pvid, b, io_timeout=20)  # room for B to come back inside it
    # set-up: glvmctl's requests for mkvg, mklv, extendvg, mirrorvg, varyoffvg, varyonvg
    a.rpc("mkvg", vg="datavg", pvs=["hdisk1"], pp_size_mb=None, force=False)
    a.rpc("mklv", lv="datalv", vg="datavg", lps=4, copies=1, strictness="y", upperbound=0,
          pvs=[])
    a.rpc("extendvg", vg="datavg", pvs=["hdisk3"], force=False)
    r = a.rpc("mirrorvg", vg="datavg", pvs=["hdisk3"], copies=2, sync="foreground",
              keep_quorum=False)
    assert not (r.get("resync") or {}).get("failed"), r  # glvmctl would exit 1
    a.rpc("varyoffvg", vg="datavg", force=False)
    a.rpc("varyonvg", vg="datavg", force=False, nosync=False, maintenance=False)
    return {"hdisk1": a.disk_path("hdisk1") + ".img", "hdisk3": b.disk_path("hdisk2") + ".img"}


@pytest.mark.asyncio
async def test_power_loss_of_b_between_write_and_flush_is_marked_and_resynced(sites):
    a, b = sites
    files = mirrored_lv(a, b)
    m = a.json("lslv", "-m", "datalv")
    pp = m["pp_size_mb"] * MiB
    data = os.urandom(MiB)
    c = NBDClient()
    await c.connect(a.nbd_socket, "datalv")
    try:
        # a first write into the region logs it dirty and marks the generation written:
        # metadata writes sync whole disks, so they come first, then a flush
        await c.write(pp, bytes(4096))
        await c.flush()
        await c.write(pp + 256 * 1024, data)  # LP 2, acknowledged by both copies
        # B's host loses power: what it acknowledged is only in its page cache
        b.power_loss(restart=False)
        b_copy = read_copy(m, 1, files, m["pp_size_mb"])
        assert b_copy[pp + 256 * 1024:pp + 256 * 1024 + MiB] != data, \
            "the power loss did not drop B's unsynced data"
        log_a = LogFollower(a)
        t = time.time()
        b.start()  # auto_online: back well inside io_timeout
        await c.flush()  # reaches the new instance: only after the loss is marked
        marked = a.json("lsvg", "datavg")
        a.ctl("syncvg", "-v", "datavg")  # waits for the background resync, then one pass
        vg = a.json("lsvg", "datavg")
        assert vg["stale_pps"] == 0, vg
        assert await c.read(pp + 256 * 1024, MiB) == data
    finally:
        await c.close()
    copies = [read_copy(m, i, files, m["pp_size_mb"]) for i in range(2)]
    assert diff_blocks(copies[0], copies[1]) == []
    assert copies[1][pp + 256 * 1024:pp + 256 * 1024 + MiB] == data
    # how: the new instance was noticed and B's unflushed chunks marked stale, with no outage
    ev = log_a.wait(t, ("lvm_pv_server_restarted",), 5)
    assert ev is not None and ev["host_rebooted"] is True, ev
    assert marked["stale_pps"] >= 1 or log_a.since(t, ("lvm_resync_done",)), marked
    assert all(p["state"] == "active" for p in marked["pvs"]), marked
    assert not [e for e in a.json("errpt") if e["label"] == "RPVC_IO_TIMEOUT"]


@pytest.mark.asyncio
async def test_flushed_writes_survive_the_power_loss_of_b(sites):
    a, b = sites
    files = mirrored_lv(a, b)
    m = a.json("lslv", "-m", "datalv")
    data = os.urandom(MiB)
    c = NBDClient()
    await c.connect(a.nbd_socket, "datalv")
    try:
        await c.write(0, data)
        await c.flush()  # durable on both copies from here on
        b.power_loss(restart=True)
        await c.flush()  # reaches the new instance
    finally:
        await c.close()
    # nothing was lost at B: its copy holds the data, and nothing had to be marked stale
    assert read_copy(m, 1, files, m["pp_size_mb"])[:MiB] == data
    assert a.json("lsvg", "datavg")["stale_pps"] == 0


def test_repair_that_cannot_write_marks_the_copy_stale(sites):
    """syncvg --verify --repair shares the copy routine's failure policy: a copy whose write
    fails is marked stale and its PV missing, and the repair goes on and says so."""
    a, b = sites
    files = mirrored_lv(a, b)
    m = a.json("lslv", "-m", "datalv")
    pp = m["pp_size_mb"] * MiB
    c = m["map"][1]["copies"][1]  # LP 2 at site B: corrupt it behind the daemons' back
    with open(files[c["pv"]], "r+b") as f:
        f.seek((8 << 20) + (c["pp"] - 1) * pp + 192 * 1024 + 100)
        f.write(b"corrupt")
        f.flush()
        os.fsync(f.fileno())
    b.lazyfs.fail("hdisk2.img")  # and B's disk stops taking writes
    r = a.run("syncvg", "--verify", "--repair", "-v", "datavg")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "repair at byte" in r.stdout and "0 repaired" in r.stdout, r.stdout
    vg = a.json("lsvg", "datavg")
    states = {p["name"]: p["state"] for p in vg["pvs"]}
    assert states == {"hdisk1": "active", "hdisk3": "missing"}, vg
    assert vg["stale_pps"] >= 1, vg
    stale = [row["lp"] for row in a.json("lslv", "-m", "datalv")["map"]
             if row["copies"][1]["stale"]]
    assert 2 in stale, stale
    assert {"LVM_SA_PVMISS", "LVM_SA_STALEPP"} <= {e["label"] for e in a.json("errpt")}
    b.lazyfs.heal("hdisk2.img")  # the disk is back: the PV returns and the copy is resynced
    a.ctl("varyonvg", "datavg")
    a.ctl("syncvg", "-v", "datavg")
    assert "0 differing chunks" in a.ctl("syncvg", "--verify", "-v", "datavg")
    copies = [read_copy(m, i, files, m["pp_size_mb"]) for i in range(2)]
    assert diff_blocks(copies[0], copies[1]) == []
