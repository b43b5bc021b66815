"""Golden keys: the JSON documents the README's "JSON for scripts" table promises, as the LVM
core and the job table produce them (the daemon passes them through unchanged). Adding keys is
allowed; losing or renaming one breaks scripts and fails here."""

from __future__ import annotations

import asyncio

from rpv.jobs import Jobs
from tests.helpers.memsite import MemSite

VG_KEYS = {"name", "state", "quorum", "pp_size_mb", "total_pps", "free_pps", "stale_pps", "pvs",
           "vgid", "auto_on", "used_pps", "lvs"}
VG_PV_KEYS = {"name", "pvid", "state", "total_pps", "stale_pps"}
INACTIVE_VG_KEYS = {"name", "vgid", "state", "pvs", "lvs"}
LV_KEYS = {"name", "vg", "copies", "lps", "stale_pps", "strictness", "upperbound"}
LV_MAP_KEYS = {"lp", "copies"}
LV_MAP_COPY_KEYS = {"pv", "pp", "stale"}
SYNC_KEYS = {"pps_total", "pps_done", "bytes", "failed", "seconds"}
JOB_KEYS = {"id", "op", "target", "state", "progress", "started", "finished", "error"}


def test_lsvg_lslv_syncvg_and_jobs_keys():
    async def main():
        site = MemSite()
        site.add_disk("hdisk1")
        site.add_disk("hdisk2")
        mgr = site.manager()
        await mgr.mkvg("datavg", ["hdisk1", "hdisk2"])
        await mgr.lv.mklv("datalv", "datavg", 2, copies=2)
        assert await mgr.lsvg() == ["datavg"]
        vg = await mgr.lsvg("datavg")
        assert set(vg) >= VG_KEYS and vg["state"] == "active"
        assert all(set(p) >= VG_PV_KEYS and p["state"] == "active" for p in vg["pvs"])
        lv = mgr.lv.lslv("datalv", map=True)
        assert set(lv) >= LV_KEYS | {"map"} and lv["strictness"] in ("y", "s", "n")
        assert [row["lp"] for row in lv["map"]] == [1, 2]  # counted from 1
        assert all(set(row) >= LV_MAP_KEYS for row in lv["map"])
        assert all(set(c) >= LV_MAP_COPY_KEYS and c["pp"] >= 1
                   for row in lv["map"] for c in row["copies"])
        sync = await mgr.lv.syncvg(vg="datavg", force=True)
        assert set(sync) >= SYNC_KEYS
        await mgr.varyoffvg("datavg")
        inactive = await mgr.lsvg("datavg")
        assert set(inactive) >= INACTIVE_VG_KEYS and inactive["state"] == "inactive"
        assert inactive["lvs"] == [] and all(set(p) >= {"name", "pvid"}
                                             for p in inactive["pvs"])
        jobs = Jobs()
        job = jobs.start("syncvg", "datavg", lambda progress: asyncio.sleep(0))
        await job.task
        assert set(jobs.list()[0]) >= JOB_KEYS
    asyncio.run(main())
