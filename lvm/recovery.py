"""Dirty-region recovery at varyon: the regions the DRL logged as possibly written on some
copies but not others are copied from one copy to the rest (or those copies are marked
stale), through the one copy routine (lvm/copy.py)."""

from __future__ import annotations

import structlog

from lvm.copy import copy_range
from lvm.metadata import DRL_REGION, chunks_of
from lvm.vg import VolumeGroup

log = structlog.get_logger("lvm")


async def recover_dirty_regions(group: VolumeGroup, drl: dict) -> None:
    """Make the copies of every region logged dirty identical again (from one copy), or
    mark the copies that cannot be written stale; then flush every PV (so what they
    hold is durable before tracking starts) and clear the log.

    The source is a copy on a host that has not booted again since the log was written
    (its page cache still holds what it acknowledged), local first."""
    regions = drl.get("regions", [])
    avoid = group.rebooted_since(drl.get("boots", {}))
    if avoid and regions:
        log.warning("lvm_drl_host_rebooted", vg=group.name,
                    pvs=[group.pv_name(i) for i in sorted(avoid)],
                    boots_logged=drl.get("boots", {}), boots_now=group.host_boots())
    by_id = {e.lvid: group.lvs[e.name] for e in group.vgda.lvs.values()}
    copied = 0
    for lvid, region in regions:
        vol = by_id.get(lvid)
        if vol is None or vol.entry.copies < 2:
            continue  # one copy has nothing to agree with (stale would mean unreadable)
        start = region * DRL_REGION
        end = min(start + DRL_REGION, vol.size)
        for lp, within, _, n in vol.segments(start, max(0, end - start)):
            src = group.source_for(vol, lp, exclude=set(), avoid=avoid)
            for m in vol.entry.maps:
                loc = m[lp]
                if src is not None and loc == src[0]:
                    continue
                if src is None or loc in group.vgsa.stale or not group.usable(loc[0]):
                    group.mark_stale(loc, chunks_of(within, n))
                    continue
                try:
                    copied += await copy_range(group, vol, lp, loc, within, n,
                                               avoid=avoid)
                except OSError as e:  # copy_range marked what failed
                    log.warning("lvm_drl_recovery_failed", vg=group.name, lv=vol.name,
                                lp=lp, error=str(e))
    await group.flush_pvs()
    if regions:
        log.info("lvm_drl_recovered", vg=group.name, regions=len(regions), bytes=copied)
    group.accept_boots()
    await group.drl_clear()
