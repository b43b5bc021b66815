"""Listings: lsvg and lslv descriptions of varied-on volume groups and their LVs, as the
JSON the control API returns (glvmctl renders them AIX-style)."""

from __future__ import annotations

from lvm.assembly import is_local
from lvm.metadata import PV_ACTIVE, PV_MISSING
from lvm.ports import PVDirectory, name_for_pvid
from lvm.vg import VolumeGroup
from lvm.volume import LogicalVolume
from rpv.blockdev import BlockDevice

MiB = 1 << 20


def describe_vg(group: VolumeGroup, directory: PVDirectory) -> dict:
    """lsvg: one varied-on volume group, its PVs and LVs."""
    vgda, vgsa = group.vgda, group.vgsa
    used = vgda.used()
    pvs = []
    for p in vgda.pvs:
        free = p.pp_count - sum(1 for loc in used if loc[0] == p.index)
        dev = group.devices.get(p.index)
        pvs.append({"name": name_for_pvid(directory, p.pvid), "pvid": p.pvid,
                    "state": group.pv_state(p.index) if dev is not None or
                    group.pv_state(p.index) != PV_ACTIVE else PV_MISSING,
                    "total_pps": p.pp_count, "free_pps": free,
                    "stale_pps": vgsa.stale_count(p.index),
                    "site": site_of(dev, directory), "pool": p.pool or None})
    total = sum(p.pp_count for p in vgda.pvs)
    limits = group.resync_settings()
    lvs = [{"name": e.name, "type": e.type, "lps": e.lps, "pps": e.lps * e.copies,
            "pvs": len({pv for m in e.maps for pv, _ in m}), "copies": e.copies,
            "state": ("open" if group.online else "closed") + (
                "/stale" if any(loc in vgsa.stale for m in e.maps for loc in m)
                else "/syncd")} for e in vgda.lvs.values()]
    return {"name": group.name, "vgid": vgda.vgid,
            "state": "active" if group.online else "closed",
            "quorum": vgda.quorum, "quorum_active": group.quorum_active,
            "auto_on": vgda.auto_on, "pp_size_mb": vgda.pp_size // MiB,
            "total_pps": total, "free_pps": total - len(used), "used_pps": len(used),
            "stale_pps": vgsa.stale_count(),
            "stale_pvs": len({pv for pv, _ in vgsa.stale}),
            "active_pvs": len(group.usable_pvs()), "total_pvs": len(vgda.pvs),
            "lvs_count": len(lvs), "open_lvs": len(lvs) if group.online else 0,
            "maintenance": group.maintenance,
            "mirror_pool_strict": vgda.mirror_pool_strict,
            "resyncing": bool(group.resync_task and not group.resync_task.done()),
            "resync_floor_mb": round(limits.floor / MiB, 1),
            "resync_impact_pct": round(limits.impact * 100),
            "resync_rate_mb": round(group.resync_rate.rate / MiB, 1) if group.resync_rate
            else None,  # the pace of the resync running now
            "last_resync": dict(group.resync_progress),  # counters of the last resync pass
            "pvs": pvs, "lvs": lvs}


def site_of(dev: BlockDevice | None, pvs: PVDirectory) -> str:
    """The site a PV's data is at, for listings: this site's name for a local disk, the
    serving site (as its RPV server said in HELLO) for an RPV client."""
    if dev is None:
        return ""
    if is_local(dev):
        return pvs.site() or "local"
    info = pvs.disk(dev.name)
    return (info.site if info else "") or "unknown"


def describe_lv(group: VolumeGroup, vol: LogicalVolume, map: bool) -> dict:  # noqa: A002
    """lslv: one logical volume (with ``map``, where each copy of each LP lies)."""
    lv = vol.name
    e = vol.entry
    stale = [loc for m in e.maps for loc in m if loc in group.vgsa.stale]
    out = {"name": lv, "vg": group.name, "copies": e.copies, "lps": e.lps,
           "pps": e.lps * e.copies, "stale_pps": len(stale), "strictness": e.strictness,
           "type": e.type,
           "upperbound": e.upperbound, "pp_size_mb": group.vgda.pp_size // MiB,
           "mirror_pools": [e.pools[c] if c < len(e.pools) and e.pools[c] else None
                            for c in range(e.copies)],
           "size_bytes": vol.size,
           "state": ("opened" if group.online else "closed") + ("/stale" if stale
                                                                  else "/syncd")}
    if map:
        out["map"] = [{"lp": lp + 1, "copies": [
            {"pv": group.pv_name(m[lp][0]), "pp": m[lp][1] + 1,
             "stale": m[lp] in group.vgsa.stale} for m in e.maps]} for lp in range(e.lps)]
    return out
