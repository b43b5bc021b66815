"""One copy routine, with one failure policy, for resync, dirty-region recovery and repair.

The source is a good copy of the LP (fresh, on a usable PV; local first, and copies the
caller wants to avoid last). A source whose read fails has its PV marked missing and its
partition stale, and the next good copy is tried; so is the next one when the source went
stale while its read was out. A destination whose write fails has its PV
marked missing and the chunks stale, and the error is raised. Every change to the VGSA is in
memory; callers make it durable (``VolumeGroup.settle`` or a commit) before they report
success. The caller holds whatever lock keeps writers out of the range.
"""

from __future__ import annotations

import errno

import structlog

from lvm.layout import pp_offset
from lvm.metadata import Loc, chunks_of
from lvm.vg import VolumeGroup

log = structlog.get_logger("lvm.copy")


async def copy_range(vg: VolumeGroup, lv, lp: int, dst: Loc, within: int, length: int, *,
                     avoid: frozenset[int] = frozenset(), fua: bool = False) -> int:
    """Copy ``[within, within+length)`` of LP ``lp`` of ``lv`` onto its copy at ``dst`` from
    a good copy; return the bytes copied. Raises OSError when no good copy could be read or
    the destination failed (see the module docstring for what is marked)."""
    pp_size = vg.vgda.pp_size
    tried = {dst}
    while True:
        vg.check_online()
        src = vg.source_for(lv, lp, exclude=tried, avoid=avoid)
        if src is None:
            raise OSError(errno.EIO, f"no good copy of LP {lp + 1} of {lv.name}")
        loc, dev = src
        tried.add(loc)
        try:
            data = await dev.read(pp_offset(loc[1], pp_size) + within, length)
        except OSError as e:
            log.warning("lvm_copy_read_failed", lv=lv.name, lp=lp, pv=vg.pv_name(loc[0]),
                        error=str(e))
            vg.pv_failed(loc[0], f"read failed: {e}")
            vg.mark_stale(loc, None)
            continue
        if loc in vg.vgsa.stale or not vg.usable(loc[0]):
            continue  # went stale while the read was out (its server restarted)
        break
    if not vg.usable(dst[0]):
        raise OSError(errno.EIO, f"{vg.pv_name(dst[0])} is not usable")
    try:
        await vg.devices[dst[0]].write(pp_offset(dst[1], pp_size) + within, data, fua)
    except OSError as e:
        vg.pv_failed(dst[0], f"copy write failed: {e}")
        vg.mark_stale(dst, chunks_of(within, length))
        raise
    if not fua:
        vg.note_written(dst, within, length)
    return length
