"""Online verify (``syncvg --verify``) and repair: compare the copies of every fresh partition
by 64 KiB digests computed where each copy lives; with repair, rewrite the differing chunks
from the preferred copy (local first) through the one copy routine (lvm/copy.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from lvm import layout
from lvm.copy import copy_range
from lvm.metadata import CHUNK
from lvm.vg import VolumeGroup
from lvm.volume import LogicalVolume
from rpv.blockdev import digests
from rpv.checksum import DIGEST_SIZE

log = structlog.get_logger("lvm")

MiB = 1 << 20
VERIFY_REGION = 4 * MiB


def differing(a: bytes, b: bytes) -> list[int]:
    """Indexes of the chunks whose digests differ between two CHECKSUM-style digest strings."""
    return [i // DIGEST_SIZE for i in range(0, len(a), DIGEST_SIZE)
            if a[i:i + DIGEST_SIZE] != b[i:i + DIGEST_SIZE]]


async def verify(group: VolumeGroup, vols: list[LogicalVolume], repair: bool,
                 progress: Callable[[dict], None] | None, lock: asyncio.Lock) -> dict:
    """Verify (and with ``repair`` fix) ``vols`` of ``group`` holding ``lock`` (the VG's
    resync lock); the report lists mismatches, repairs and repairs that failed."""
    report = {"regions": 0, "bytes": 0, "mismatches": [], "repaired": 0, "skipped": 0,
              "failed": []}
    async with lock:
        try:
            for vol in vols:
                for lp in range(vol.entry.lps):
                    await _verify_lp(group, vol, lp, repair, report)
                    if progress:
                        progress({"lv": vol.name, "lp": lp + 1, "lps": vol.entry.lps,
                                  "mismatches": len(report["mismatches"])})
        finally:
            await group.settle()  # a repair that failed marked a PV missing
    log.info("lvm_verify_done", vg=group.name, regions=report["regions"],
             mismatches=len(report["mismatches"]), repaired=report["repaired"])
    return report


async def _verify_lp(group: VolumeGroup, vol: LogicalVolume, lp: int, repair: bool,
                     report: dict) -> None:
    pp = group.vgda.pp_size
    region = VERIFY_REGION
    for within in range(0, pp, region):
        n = min(region, pp - within)
        start = lp * pp + within
        async with vol.lock.acquire(start, start + n):
            copies = [m[lp] for m in vol.entry.maps
                      if m[lp] not in group.vgsa.stale and group.usable(m[lp][0])]
            if len(copies) < 2:
                report["skipped"] += 1
                continue
            sums = await asyncio.gather(*(
                digests(group.devices[loc[0]], layout.pp_offset(loc[1], pp) + within, n)
                for loc in copies))
            report["regions"] += 1
            report["bytes"] += n * len(copies)
            bad = sorted({c for d in sums[1:] for c in differing(sums[0], d)})
            for c in bad:
                off = c * CHUNK
                report["mismatches"].append({
                    "lv": vol.name, "lp": lp + 1, "offset": start + off,
                    "length": min(CHUNK, n - off),
                    "pvs": [group.pv_name(loc[0]) for loc in copies]})
            src = group.source_for(vol, lp, exclude=set())
            if repair and bad and src is not None:
                for c in bad:
                    off, ln = within + c * CHUNK, min(CHUNK, n - c * CHUNK)
                    try:
                        for loc in copies:
                            if loc != src[0]:
                                await copy_range(group, vol, lp, loc, off, ln, fua=True)
                    except OSError as e:  # copy_range marked the PV and chunks
                        report["failed"].append({"lv": vol.name, "lp": lp + 1,
                                                 "offset": start + c * CHUNK,
                                                 "error": str(e)})
                        continue
                    report["repaired"] += 1
