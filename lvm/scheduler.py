"""Resync scheduling: one resync (or verify) at a time per volume group, background resyncs
after varyonvg and after a PV returns, and ``syncvg -f``'s forced staleness. The copying
itself is lvm/resync.py."""

from __future__ import annotations

import asyncio

import structlog

from lvm.metadata import LVEntry
from lvm.resync import resync
from lvm.vg import VolumeGroup
from rpv.jobs import Jobs

log = structlog.get_logger("lvm")

BACKGROUND_PASSES = 8  # resync passes one background resync makes at most


class ResyncScheduler:
    def __init__(self, jobs: Jobs | None = None) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._jobs = jobs  # background resyncs are listed there (glvmctl jobs)

    def lock(self, vg: str) -> asyncio.Lock:
        return self._locks.setdefault(vg, asyncio.Lock())

    async def run(self, group: VolumeGroup, want, parallel: int, rate: float,
                  progress, checksum: bool = True) -> dict:
        async with self.lock(group.name):
            return await resync(group, want, parallel, rate, progress, checksum)

    def start_background(self, group: VolumeGroup) -> None:
        if group.resync_task and not group.resync_task.done():
            group.resync_wanted = True  # the running task makes another pass
            return
        if not group.stale_locs():
            return

        async def run(progress=None):
            try:
                # partitions that go stale while a pass runs (a copy that missed writes, a
                # server that restarted) are taken by the next pass
                for _ in range(BACKGROUND_PASSES):
                    group.resync_wanted = False
                    stats = await self.run(group, None, 2, 0.0, progress)
                    if not group.stale_locs() or stats["failed"] and not group.resync_wanted:
                        break
            except OSError as e:
                log.warning("lvm_background_resync_stopped", vg=group.name, error=str(e))

        if self._jobs is not None:
            group.resync_task = self._jobs.start("resync", group.name, run).task
        else:
            group.resync_task = asyncio.get_running_loop().create_task(run())

    @staticmethod
    def force_stale(group: VolumeGroup, lvs: list[LVEntry], want) -> None:
        """syncvg -f: every copy but the preferred good one of each LP is recopied."""
        for e in lvs:
            vol = group.lvs[e.name]
            for lp in range(e.lps):
                src = group.source_for(vol, lp, exclude=set())
                for m in e.maps:
                    if src is not None and m[lp] != src[0] and (want is None or want(m[lp])):
                        group.mark_stale(m[lp], None)  # a running resync sees it too
