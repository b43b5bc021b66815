"""Resynchronisation of stale partitions from a good copy.

Only the changed 64 KiB chunks recorded in the VGSA are copied (all of the PP when it is
wholly stale). Each run of chunks is copied under the LV's range lock, so it cannot interleave
with a write to the same blocks; writes that land on a PP while it is being resynced re-mark
their chunks, and the PP is declared fresh only when a pass finds nothing left, under a lock
on the whole LP. The destination is flushed before the VGSA forgets the PP, so a crash never
leaves a copy marked good whose data was still in flight. Progress survives restarts because
each finished PP is committed to the VGSA.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from lvm.layout import pp_offset
from lvm.metadata import CHUNK, Loc
from lvm.vg import VolumeGroup

log = structlog.get_logger("lvm.resync")

RUN_LIMIT = 1024 * 1024  # bytes copied per locked step


class ResyncStats:
    def __init__(self, total: int):
        self.pps_total = total
        self.pps_done = 0
        self.bytes = 0
        self.failed: list[str] = []
        self.started = time.monotonic()

    def as_dict(self) -> dict:
        return {"pps_total": self.pps_total, "pps_done": self.pps_done, "bytes": self.bytes,
                "failed": self.failed, "seconds": round(time.monotonic() - self.started, 3)}


def _runs(chunks: list[int], chunk: int) -> list[tuple[int, int]]:
    """Coalesce sorted chunk indexes into (byte offset, length) runs of at most RUN_LIMIT."""
    runs: list[tuple[int, int]] = []
    for c in chunks:
        start = c * chunk
        if runs and runs[-1][0] + runs[-1][1] == start and runs[-1][1] + chunk <= RUN_LIMIT:
            runs[-1] = (runs[-1][0], runs[-1][1] + chunk)
        else:
            runs.append((start, chunk))
    return runs


async def resync(vg: VolumeGroup, want: Callable[[Loc], bool] | None = None, parallel: int = 1,
                 rate: float = 0.0, progress: Callable[[dict], None] | None = None) -> dict:
    """Resync every stale PP selected by ``want`` on usable PVs; return statistics."""
    locs = vg.stale_locs(want)
    stats = ResyncStats(len(locs))
    queue: asyncio.Queue[Loc] = asyncio.Queue()
    for loc in locs:
        queue.put_nowait(loc)
    limiter = _RateLimiter(rate)

    async def worker() -> None:
        while not queue.empty():
            loc = queue.get_nowait()
            try:
                await _resync_pp(vg, loc, stats, limiter)
            except OSError as e:
                stats.failed.append(f"{vg.pv_name(loc[0])} PP {loc[1] + 1}: {e}")
                log.warning("lvm_resync_pp_failed", vg=vg.name, pv=vg.pv_name(loc[0]),
                            pp=loc[1], error=str(e))
            stats.pps_done += 1
            if progress:
                progress(stats.as_dict())

    log.info("lvm_resync_start", vg=vg.name, stale_pps=len(locs), parallel=parallel)
    await asyncio.gather(*(worker() for _ in range(max(1, parallel))))
    log.info("lvm_resync_done", vg=vg.name, **stats.as_dict())
    return stats.as_dict()


async def _resync_pp(vg: VolumeGroup, loc: Loc, stats: ResyncStats, limiter) -> None:
    owner = vg.owners.get(loc)
    if owner is None:  # no LV uses it any more
        vg.vgsa.stale.pop(loc, None)
        await vg.commit_vgsa()
        return
    lv_name, _copy, lp = owner
    lv = vg.lvs[lv_name]
    pp_size = vg.vgda.pp_size
    lp_base = lp * pp_size
    dst = vg.devices[loc[0]]
    vg.resyncing[loc] = set()
    try:
        while True:
            vg.check_online()
            if not vg.usable(loc[0]):
                raise OSError(5, "destination PV is not usable")
            marked = vg.vgsa.stale.get(loc, set())
            chunks = sorted(range(pp_size // CHUNK) if marked is None else marked)
            vg.resyncing[loc] = set()
            for start, length in _runs(chunks, CHUNK):
                async with lv.lock.acquire(lp_base + start, lp_base + start + length):
                    src = vg.source_for(lv, lp, exclude={loc})
                    if src is None:
                        raise OSError(5, f"no good copy of LP {lp + 1} of {lv_name}")
                    data = await src[1].read(pp_offset(src[0][1], pp_size) + start, length)
                    try:
                        await dst.write(pp_offset(loc[1], pp_size) + start, data)
                    except OSError as e:
                        vg.pv_failed(loc[0], f"resync write failed: {e}")
                        raise
                stats.bytes += length
                await limiter.take(length)
            await dst.flush()
            async with lv.lock.acquire(lp_base, lp_base + pp_size):
                again = vg.resyncing[loc]
                if not again:
                    vg.vgsa.stale.pop(loc, None)
                    vg.pv_synced(loc[0])
                    break
                vg.vgsa.stale[loc] = set(again)
        await vg.commit_vgsa()
    finally:
        vg.resyncing.pop(loc, None)


class _RateLimiter:
    """At most ``rate`` bytes per second (0: unlimited)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        self.sent += n
        due = self.start + self.sent / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
