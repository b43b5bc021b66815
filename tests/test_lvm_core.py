"""The LVM core on its own: varyon (quorum, PV status), dirty-region recovery after a crash,
stale marking and resync, and online verify and repair, against in-memory disks and the
in-memory site services of tests/helpers/memsite.py (no daemon, no socket, no file)."""

from __future__ import annotations

import asyncio
import os

import pytest

from lvm.layout import pp_offset
from rpv.errors import CommandError
from tests.helpers.memsite import MemSite

MiB = 1 << 20
PP = 4 * MiB


def crash(mgr) -> None:
    """The host goes down: nothing is flushed, the DRL is not cleared, nothing runs on."""
    for group in mgr.vgs.values():
        group.stop_writeback()
        if group.resync_task:
            group.resync_task.cancel()
    mgr.vgs.clear()


def copy_bytes(site: MemSite, mgr, lv: str, copy: int, lp: int, within: int, n: int) -> bytes:
    group, vol = mgr.find_lv(lv)
    index, pp = vol.entry.maps[copy][lp]
    disk = site.disk_objs[group.pv_name(index)]
    start = pp_offset(pp, group.vgda.pp_size) + within
    return bytes(disk.buf[start:start + n])


def poke(site: MemSite, mgr, lv: str, copy: int, lp: int, within: int, data: bytes) -> None:
    """Change one copy behind the LVM's back (what a torn write or bit rot leaves)."""
    group, vol = mgr.find_lv(lv)
    index, pp = vol.entry.maps[copy][lp]
    start = pp_offset(pp, group.vgda.pp_size) + within
    site.disk_objs[group.pv_name(index)].buf[start:start + len(data)] = data


async def mirrored(site: MemSite, lps: int = 4):
    site.add_disk("hdisk1")
    site.add_disk("hdisk2")
    mgr = site.manager()
    await mgr.mkvg("datavg", ["hdisk1", "hdisk2"])
    await mgr.lv.mklv("datalv", "datavg", lps, copies=2)
    _, vol = mgr.find_lv("datalv")
    return mgr, vol


async def settle_background(mgr) -> None:
    for group in mgr.vgs.values():
        if group.resync_task:
            await group.resync_task


def test_varyon_after_clean_varyoff_keeps_data():
    async def main():
        site = MemSite()
        mgr, vol = await mirrored(site)
        data = os.urandom(256 * 1024)
        await vol.write(3 * MiB, data)
        await vol.flush()
        await mgr.varyoffvg("datavg")
        mgr = site.manager()  # a restarted daemon
        result = await mgr.varyonvg("datavg")
        assert [p["status"] for p in result["pv_status"]] == ["PVACTIVE", "PVACTIVE"]
        _, vol = mgr.find_lv("datalv")
        assert await vol.read(3 * MiB, len(data)) == data
        for c in (0, 1):
            assert copy_bytes(site, mgr, "datalv", c, 0, 3 * MiB, len(data)) == data
        assert site.claims == {}  # claimed while varying on, released once registered
    asyncio.run(main())


def test_quorum_refuses_then_force_runs_without_missing_pvs():
    async def main():
        site = MemSite()
        for n in ("hdisk1", "hdisk2", "hdisk3"):
            site.add_disk(n)
        mgr = site.manager()
        await mgr.mkvg("datavg", ["hdisk1", "hdisk2", "hdisk3"])
        await mgr.varyoffvg("datavg")
        site.available -= {"hdisk2", "hdisk3"}
        mgr = site.manager()
        with pytest.raises(CommandError, match="0516-052.*1 of 3"):
            await mgr.varyonvg("datavg")
        assert "datavg" not in mgr.vgs
        result = await mgr.varyonvg("datavg", force=True)
        status = {p["name"]: p["status"] for p in result["pv_status"]}
        assert status == {"hdisk1": "PVACTIVE", "hdisk2": "PVMISSING", "hdisk3": "PVMISSING"}
        described = await mgr.lsvg("datavg")
        assert described["active_pvs"] == 1 and described["total_pvs"] == 3
    asyncio.run(main())


def test_dirty_regions_are_made_identical_after_a_crash():
    """A write that reached one copy but not the other when the host went down: varyon copies
    every region the DRL logged, so both copies hold one version (either is allowed: the
    write was not acknowledged). A region that was not written is not touched."""
    async def main():
        site = MemSite()
        mgr, vol = await mirrored(site)
        await vol.write(MiB, b"\x33" * 4096)  # logs the region dirty first
        poke(site, mgr, "datalv", 1, 0, MiB, b"\x44" * 4096)  # the torn write
        poke(site, mgr, "datalv", 1, 3, 0, b"\x55" * 4096)  # never written through the LV
        crash(mgr)
        after = site.manager()
        await after.varyonvg("datavg", nosync=True)  # recovery runs inside varyon
        a = copy_bytes(site, after, "datalv", 0, 0, MiB, 4096)
        b = copy_bytes(site, after, "datalv", 1, 0, MiB, 4096)
        assert a == b and a in (b"\x33" * 4096, b"\x44" * 4096)
        assert (copy_bytes(site, after, "datalv", 0, 3, 0, 4096)
                != copy_bytes(site, after, "datalv", 1, 3, 0, 4096))
        report = await after.lv.verify(lv="datalv")
        assert [m["lp"] for m in report["mismatches"]] == [4]  # only the unlogged one
    asyncio.run(main())


def test_a_single_copy_lv_logs_no_dirty_regions_and_a_copy_added_later_is_made_whole():
    """An LV with one copy has no other copy to bring in line after a crash, so its writes
    cost no DRL commit (an I/O cache LV, a local-only LV); mirrorvg then starts the new copy
    stale and copies all of it, so nothing written before, or during a crash, is lost."""
    async def main():
        site = MemSite()
        mgr, vol = await mirrored(site)
        await mgr.lv.mklv("solo", "datavg", 2)
        group, solo = mgr.find_lv("solo")
        await solo.write(MiB, b"\x66" * 4096)
        await solo.write(2 * MiB, b"\x67" * 4096)
        assert not any(lvid == solo.entry.lvid for lvid, _ in group.drl_active)
        await vol.write(MiB, b"\x33" * 4096)
        assert (vol.entry.lvid, 0) in group.drl_durable  # a mirrored LV still logs first
        crash(mgr)
        after = site.manager()
        await after.varyonvg("datavg", nosync=True)
        await after.lv.mirrorvg("datavg", ["hdisk1", "hdisk2"])  # copies the new copy whole
        for copy in (0, 1):
            assert copy_bytes(site, after, "solo", copy, 0, MiB, 4096) == b"\x66" * 4096
            assert copy_bytes(site, after, "solo", copy, 0, 2 * MiB, 4096) == b"\x67" * 4096
        assert not after.find_lv("solo")[0].vgsa.stale
    asyncio.run(main())


def test_verify_finds_and_repairs_a_silent_difference():
    async def main():
        site = MemSite()
        mgr, vol = await mirrored(site)
        await vol.write(0, os.urandom(2 * PP))
        await vol.flush()
        await mgr.varyoffvg("datavg")  # clean: the DRL is empty, nothing is recopied
        mgr = site.manager()
        await mgr.varyonvg("datavg")
        poke(site, mgr, "datalv", 1, 1, 3 * 65536 + 100, b"rot")  # LP 2, chunk 3
        report = await mgr.lv.verify(lv="datalv")
        [m] = report["mismatches"]
        assert (m["lp"], m["offset"], m["length"]) == (2, PP + 3 * 65536, 65536)
        assert m["pvs"] == ["hdisk1", "hdisk2"] and report["repaired"] == 0
        report = await mgr.lv.verify(lv="datalv", repair=True)
        assert report["repaired"] == 1 and report["failed"] == []
        assert (copy_bytes(site, mgr, "datalv", 0, 1, 0, PP)
                == copy_bytes(site, mgr, "datalv", 1, 1, 0, PP))
        assert (await mgr.lv.verify(vg="datavg"))["mismatches"] == []
    asyncio.run(main())


def test_a_failed_copy_is_marked_stale_before_the_write_completes_then_resynced():
    async def main():
        site = MemSite()
        mgr, vol = await mirrored(site)
        site.disk_objs["hdisk2"].fail = True
        data = os.urandom(65536)
        await vol.write(5 * MiB, data)  # completes on the surviving copy
        described = await mgr.lsvg("datavg")
        assert described["stale_pps"] > 0
        assert {p["name"]: p["state"] for p in described["pvs"]}["hdisk2"] != "active"
        assert ("LVM_SA_PVMISS", "hdisk2") in site.errors
        site.disk_objs["hdisk2"].fail = False
        await mgr.chpv("hdisk2", "a")
        await mgr.lv.syncvg(vg="datavg")
        assert (await mgr.lsvg("datavg"))["stale_pps"] == 0
        assert copy_bytes(site, mgr, "datalv", 1, 1, MiB, 65536) == data
    asyncio.run(main())


@pytest.mark.asyncio
async def test_a_flush_sends_the_remote_flush_before_the_local_one_starts():
    """The peer's FLUSH leaves first, so its fdatasync runs while the local one waits for an
    executor thread; both are done before the flush returns."""
    from tests.helpers.disks import PageCacheDisk, RemoteMemDisk
    from tests.helpers.mirror_lv import make_lv
    from tests.helpers.waits import settle

    started, local, remote = [], PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk2")
    gate = asyncio.Event()

    def recording(disk):
        async def flush():
            started.append(disk.name)
            await gate.wait()
            disk.flushes += 1
        return flush
    local.flush, remote.flush = recording(local), recording(remote)
    lv = make_lv(local, remote)
    flushing = asyncio.ensure_future(lv.flush())
    await settle(10)
    assert started == ["hdisk2", "hdisk1"] and not flushing.done()
    gate.set()
    await asyncio.wait_for(flushing, 5)
    assert (local.flushes, remote.flushes) == (1, 1)
