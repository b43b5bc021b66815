"""The pace of a resync over a link (lvm/throttle.py in lvm/resync.py), in memory: chvg sets
the VG's floor and impact, a resync to a remote PV probes it with PINGs and paces its copies,
lsvg and gmvgstat show the rate while it runs, and a slow link holds it near the floor."""

from __future__ import annotations

import asyncio

import pytest

from lvm.gmvg import GMVG
from lvm.throttle import MiB
from rpv.errors import CommandError
from tests.helpers.disks import MemDisk
from tests.helpers.memsite import MemSite

LPS = 4


class LinkDisk(MemDisk):
    """A remote PV behind a link of ``bandwidth`` bytes/s and a 10 ms round trip: what is
    written queues on the link, and a PING waits behind that queue."""

    def __init__(self, name: str):
        super().__init__(name, 64 * MiB, local=False)
        self.bandwidth = 0.0  # 0: no limit
        self.drained = 0.0  # loop time when the queued bytes are through
        self.pings = 0

    async def write(self, offset: int, data, fua: bool = False) -> None:
        if self.bandwidth:
            now = asyncio.get_running_loop().time()
            self.drained = max(now, self.drained) + len(data) / self.bandwidth
        await asyncio.sleep(0)  # a write over a link always lets the loop run
        await super().write(offset, data, fua)

    async def ping(self) -> None:
        self.pings += 1
        queued = max(0.0, self.drained - asyncio.get_running_loop().time())
        await asyncio.sleep(0.010 + queued)


async def site_with_link(bandwidth: float):
    site = MemSite()
    site.add_disk("hdisk1")
    remote = site.add_disk("hdisk2", disk=LinkDisk("hdisk2"))
    mgr = site.manager()
    await mgr.mkvg("datavg", ["hdisk1", "hdisk2"])
    await mgr.lv.mklv("datalv", "datavg", LPS, copies=2)
    group, vol = mgr.find_lv("datalv")
    await vol.write(0, bytes([7]) * LPS * 4 * MiB)
    remote.bandwidth = bandwidth
    for lp in range(LPS):  # writes the copy missed (20 chunks a PP): copied without comparing
        group.mark_stale(vol.entry.maps[1][lp], set(range(0, 40, 2)))
    await group.settle()
    return site, mgr, group, remote


def test_chvg_sets_the_resync_limits_and_lsvg_shows_them():
    async def main():
        site, mgr, group, _ = await site_with_link(0)
        vg = await mgr.lsvg("datavg")
        assert (vg["resync_floor_mb"], vg["resync_impact_pct"], vg["resync_rate_mb"]) == \
            (4.0, 50, None)
        await mgr.chvg("datavg", resync_floor_mb=8, resync_impact_pct=20)
        vg = await mgr.lsvg("datavg")
        assert (vg["resync_floor_mb"], vg["resync_impact_pct"]) == (8.0, 20)
        assert group.resync_settings(ceiling=2 * MiB).floor == 2 * MiB  # --rate caps it
        for bad in ({"resync_floor_mb": 0}, {"resync_impact_pct": -1}):
            with pytest.raises(CommandError):
                await mgr.chvg("datavg", **bad)
    asyncio.run(main())


def test_a_slow_link_slows_the_resync_down_to_its_floor_and_gmvgstat_shows_it():
    async def main():
        site, mgr, group, remote = await site_with_link(4 * MiB)
        await mgr.chvg("datavg", resync_floor_mb=2)
        _, vol = mgr.find_lv("datalv")
        seen = []
        task = asyncio.ensure_future(mgr.lv.syncvg(vg="datavg", rate_mb=16))
        while not task.done():  # the application reads meanwhile: its I/O is protected
            await vol.read(0, 4096)
            await asyncio.sleep(0.05)
            row = GMVG(mgr).gmvgstat("datavg")[0]
            if row["resync_rate_mb"] is not None:
                seen.append(row["resync_rate_mb"])
        result = task.result()
        assert result["failed"] == [] and group.vgsa.stale == {}
        assert remote.pings >= 2
        assert seen and seen[0] == 16.0  # a brisk start (syncvg --rate caps it),
        assert 2.0 <= min(seen) < 4, seen  # then below what the link carries, not below the floor
        assert group.resync_rate is None  # gone with the resync
    asyncio.run(main())


def test_with_no_application_io_the_resync_is_not_slowed():
    """Nothing to protect: the same slow link does not bring the rate down (as DRBD
    throttles only while it sees application I/O)."""
    async def main():
        site, mgr, group, remote = await site_with_link(4 * MiB)
        seen = []
        task = asyncio.ensure_future(mgr.lv.syncvg(vg="datavg", rate_mb=16))
        while not task.done():
            await asyncio.sleep(0.05)
            row = GMVG(mgr).gmvgstat("datavg")[0]
            if row["resync_rate_mb"] is not None:
                seen.append(row["resync_rate_mb"])
        assert task.result()["failed"] == [] and remote.pings >= 2
        assert seen and min(seen) == 16.0, seen
    asyncio.run(main())
