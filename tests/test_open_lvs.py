"""Open logical volumes: as AIX refuses to vary off a volume group with open LVs, varyoffvg and
rmlv refuse while an NBD client (or an attached device) holds an LV, naming it; -f disconnects
the clients. exportvg needs a varied-off VG, so it is covered too."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from rpv.errors import CommandError
from tests.helpers.memsite import MemSite

HOLD = """
import sys
print("open", flush=True)
sys.stdin.readline()
try:
    h.pread(4096, 0)
    print("still open", flush=True)
except nbd.Error as e:
    print("disconnected", flush=True)
"""


async def two_lvs():
    """A one-disk datavg with datafslv (2 LPs) and dataloglv (1 LP), in memory."""
    site = MemSite()
    site.add_disk("hdisk1")
    mgr = site.manager()
    await mgr.mkvg("datavg", ["hdisk1"])
    await mgr.lv.mklv("datafslv", "datavg", 2)
    await mgr.lv.mklv("dataloglv", "datavg", 1)
    return site, mgr


def test_core_refuses_open_lvs_unless_forced():
    async def main():
        site, mgr = await two_lvs()
        site.opened = {"datafslv"}
        with pytest.raises(CommandError, match=r"0516-012 .*open in datavg: datafslv \("):
            await mgr.varyoffvg("datavg")
        with pytest.raises(CommandError, match="0516-1008 rmlv: Logical volume datafslv"):
            await mgr.lv.rmlv("datafslv")
        await mgr.lv.rmlv("dataloglv")  # not open: removed
        assert "datavg" in mgr.vgs
        assert (await mgr.varyoffvg("datavg", force=True))["disconnected"] == ["datafslv"]
        assert "datafslv" in site.withdrawn and "datavg" not in mgr.vgs
    asyncio.run(main())


def test_varyoffvg_and_rmlv_refuse_an_lv_an_nbd_client_holds(site_a):
    a = site_a
    a.make_disk("hdisk1", "64M")
    a.ctl("mkvg", "-y", "datavg", "hdisk1")
    a.ctl("mklv", "-y", "datafslv", "datavg", "2")
    env = {**os.environ, "PATH": "/usr/bin:" + os.environ.get("PATH", "")}
    holder = subprocess.Popen(["nbdsh", "-u", a.nbd_uri("datafslv"), "-c", HOLD],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "open"
        err = a.fails("varyoffvg", "datavg")
        assert "0516-012" in err and "datafslv" in err and "varyoffvg -f" in err
        err = a.fails("rmlv", "datafslv")
        assert "0516-1008" in err and "datafslv" in err
        assert a.json("lsvg", "datavg")["state"] == "active"  # nothing changed
        a.fails("exportvg", "datavg")  # a varied-on VG is never exported
        a.ctl("varyoffvg", "-f", "datavg")
        out, _ = holder.communicate("go\n", timeout=30)
    finally:
        holder.kill()
    assert out.strip() == "disconnected"
    assert a.json("lsvg", "datavg")["state"] == "inactive"


def test_chlv_renames_a_closed_lv_and_its_export_follows():
    async def main():
        site, mgr = await two_lvs()
        _, vol = mgr.find_lv("datafslv")
        await vol.write(0, b"\x5a" * 4096)
        with pytest.raises(CommandError, match="already used"):
            await mgr.lv.chlv("datafslv", name="dataloglv")
        with pytest.raises(CommandError, match="must be 1-15"):
            await mgr.lv.chlv("datafslv", name="9bad")
        site.opened = {"datafslv"}
        with pytest.raises(CommandError, match="must be closed"):
            await mgr.lv.chlv("datafslv", name="prodfslv")
        site.opened = set()
        assert await mgr.lv.chlv("datafslv", name="prodfslv") == {"lv": "prodfslv",
                                                                  "old": "datafslv"}
        assert mgr.get_lv("datafslv") is None
        assert await mgr.get_lv("prodfslv").read(0, 4096) == b"\x5a" * 4096
        names = sorted(lv["name"] for lv in (await mgr.lsvg("datavg"))["lvs"])
        assert names == ["dataloglv", "prodfslv"]
        await mgr.varyoffvg("datavg")  # the new name is in the VGDA on disk
        mgr = site.manager()
        await mgr.varyonvg("datavg")
        assert mgr.lv.lslv("prodfslv")["lps"] == 2
    asyncio.run(main())
