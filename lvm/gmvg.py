"""GLVM utilities (the seed's ``smitty glvm_utils``): site-aware VG commands.

A disk's site is the daemon's own site for local disks and, for an RPV client, the site its
server reported at discovery. A geographically mirrored VG is correct when every copy of every
LV lies wholly at one site and no two copies share a site.
"""

from __future__ import annotations

from collections.abc import Callable

from lvm.assembly import is_local
from lvm.manager import LVMManager
from lvm.metadata import LVEntry
from lvm.throttle import MiB
from rpv.errors import CommandError

LOCAL = "local"


class GMVG:
    def __init__(self, lvm: LVMManager):
        self.lvm = lvm
        self.pvs = lvm.pvs

    # -- sites -----------------------------------------------------------------------------
    def _disk_site(self, name: str) -> str:
        info = self.pvs.disk(name)
        if info is None:
            raise CommandError(f"physical volume {name} is not defined")
        if not info.remote:
            return LOCAL
        return info.site or "unknown"

    def _pv_site(self, group, index: int) -> str:
        dev = group.devices.get(index)
        if dev is not None:
            return LOCAL if is_local(dev) else self._disk_site(dev.name)
        name = self.lvm.name_for_pvid(group.vgda.pv(index).pvid)
        return self._disk_site(name) if name else "unknown"

    def _shown(self, site: str) -> str:
        """A site as listings show it: this site by its name (``local`` only if unnamed)."""
        return (self.pvs.site() or LOCAL) if site == LOCAL else site

    def _site_matches(self, site: str, wanted: str) -> bool:
        own = self.pvs.site()
        return site == wanted or (site == LOCAL and wanted in (LOCAL, own))

    # -- commands ----------------------------------------------------------------------------
    async def add_rpvs(self, vg: str, site: str, pvs: list[str] | None = None,
                       force: bool = False) -> dict:
        """extendvg with the RPV client disks of ``site`` (all free ones if none named)."""
        self.lvm.online(vg)
        if pvs:
            for n in pvs:
                info = self.pvs.disk(n)
                if info is None or not info.remote:
                    raise CommandError(f"{n} is not a remote physical volume (RPV client)")
                if self._disk_site(n) != site:
                    raise CommandError(f"{n} is at site {self._disk_site(n)}, not {site}")
        else:
            pvs = [i.name for i in self.pvs.known_disks()
                   if i.remote and i.site == site and i.device is not None
                   and self.lvm.vg_of_pvid(i.pvid) is None]
            if not pvs:
                raise CommandError(f"no free Available remote physical volume at site {site}")
        await self.lvm.extendvg(vg, pvs, force)
        return {"vg": vg, "pvs": pvs}

    async def add_mirror(self, vg: str, site: str, copies: int | None = None,
                         sync: str = "foreground", keep_quorum: bool = False,
                         progress: Callable[[dict], None] | None = None) -> dict:
        """A new copy of every LV wholly on ``site``'s disks of the VG (super strict)."""
        group = self.lvm.online(vg)
        loose = [e.name for e in group.vgda.data_lvs() if e.strictness != "s"]
        if loose:
            raise CommandError("logical volumes must be super strict first: "
                               + "; ".join(f"chlv -s s -u N {n}" for n in loose))
        if not group.vgda.data_lvs():
            raise CommandError(f"volume group {vg} has no logical volumes")
        pvs = [p.index for p in group.vgda.pvs if self._site_matches(
            self._pv_site(group, p.index), site)]
        if not pvs:
            raise CommandError(f"volume group {vg} has no physical volume at site {site}; "
                               f"use gmvg add-rpvs first")
        for e in group.vgda.data_lvs():
            for c in range(e.copies):
                if e.pvs_of_copy(c) & set(pvs):
                    raise CommandError(f"copy {c + 1} of {e.name} already lies at site {site}")
        target = copies or max(e.copies for e in group.vgda.data_lvs()) + 1
        names = [self.lvm.name_for_pvid(group.vgda.pv(i).pvid) for i in pvs]
        return await self.lvm.lv.mirrorvg(vg, names, target, sync, keep_quorum,
                                          progress=progress)

    def verify(self, vg: str) -> dict:
        """The seed's site/copy check; ``ok`` is False when a copy spans sites or an LV has no
        copy at a remote site. One or two copies at the production site plus one at the remote
        site is the white paper's layout, so copies may share a site."""
        group = self.lvm.online(vg)
        lvs = group.vgda.data_lvs()  # an I/O cache LV stays at its site by design
        ncopies = max((e.copies for e in lvs), default=0)
        table = []
        for c in range(ncopies):
            idx = sorted({pv for e in lvs if c < e.copies for pv in e.pvs_of_copy(c)})
            sites = sorted({self._shown(self._pv_site(group, i)) for i in idx})
            table.append({"copy": c + 1, "site": ",".join(sites),
                          "pvs": [group.pv_name(i) for i in idx]})
        checks = [{"name": e.name, "problems": self._problems(group, e)} for e in lvs]
        warnings = [f"the copy in asynchronous mirror pool {p.name} is not a consistent point "
                    f"in time: " + ("it is being resynchronized after the I/O cache "
                                    "overflowed" if p.state == "fallback" else
                                    "it has stale partitions")
                    for p in group.async_pools.values() if not p.consistent]
        return {"vg": vg, "copies": table, "lvs": checks, "warnings": warnings,
                "ok": all(not c["problems"] for c in checks)}

    def _problems(self, group, e: LVEntry) -> list[str]:
        out = []
        sites = []
        for c in range(e.copies):
            s = sorted({self._pv_site(group, pv) for pv in e.pvs_of_copy(c)})
            if len(s) > 1:
                out.append(f"copy {c + 1} of {e.name} spans sites "
                           f"{', '.join(sorted(map(self._shown, s)))}")
            sites.append(s[0] if len(s) == 1 else None)
        if sites and all(s == LOCAL for s in sites):
            out.append(f"no copy of {e.name} is at a remote site (all {e.copies} at "
                       f"{self.pvs.site() or LOCAL})")
        return out

    async def list(self) -> list[dict]:
        out = []
        for name, _vgid, pvids in self.lvm.catalog.vgs():
            group = self.lvm.vgs.get(name)
            if group is None:
                remote = [p for p in pvids if (n := self.lvm.name_for_pvid(p))
                          and self._disk_site(n) != LOCAL]
                if remote:
                    out.append({"vg": name, "state": "inactive", "sites": [], "copies": None,
                                "stale_pps": None})
                continue
            sites = sorted({self._pv_site(group, p.index) for p in group.vgda.pvs})
            if sites == [LOCAL]:
                continue
            out.append({"vg": name, "state": "active" if group.online else "closed",
                        "sites": sorted(map(self._shown, sites)),
                        "copies": max((e.copies for e in group.vgda.lvs.values()), default=0),
                        "stale_pps": group.vgsa.stale_count()})
        return out

    def gmvgstat(self, vg: str | None = None) -> list[dict]:
        """Per geographically mirrored VG: PVs, RPVs, stale volumes and PPs, percent synced."""
        out = []
        for name, group in sorted(self.lvm.vgs.items()):
            if vg is not None and name != vg:
                continue
            pvs = [p.index for p in group.vgda.pvs]
            remote = [i for i in pvs if self._pv_site(group, i) != LOCAL]
            if vg is None and not remote:
                continue
            total = sum(len(m) for e in group.vgda.lvs.values() for m in e.maps)
            stale = group.vgsa.stale_count()
            pools = [p.describe() for p in group.async_pools.values()]
            out.append({"vg": name, "pvs": len(pvs) - len(remote), "rpvs": len(remote),
                        "async_lag_bytes": sum(p.get("pending_bytes", 0) for p in pools),
                        "async_lag_seconds": max((p.get("lag_seconds", 0.0) for p in pools),
                                                 default=0.0),
                        "total_vols": len(pvs),
                        "stale_vols": len({pv for pv, _ in group.vgsa.stale}),
                        "total_pps": total, "stale_pps": stale,
                        "synced_pct": round(100.0 * (total - stale) / total, 2) if total
                        else 100.0,
                        "resync_rate_mb": round(group.resync_rate.rate / MiB, 1)
                        if group.resync_rate else None})
        if vg is not None and not out:
            self.lvm.online(vg)
        return out
