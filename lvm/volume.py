"""A logical volume as a block device: mirrored writes, local-preferred reads.

Write path: overlapping writes are ordered by a range lock; the touched regions are logged in
the dirty-region log first; every non-stale copy on a usable PV is written concurrently; copies
that are stale, on a missing PV, or whose write failed are marked stale (changed 64 KiB chunks)
and that is made durable in the VGSA before the write is acknowledged. If no copy of some
logical partition took the write, the caller gets EIO.
"""

from __future__ import annotations

import asyncio
import errno

import structlog

from lvm.commit import RangeLock
from lvm.layout import pp_offset
from lvm.metadata import LVEntry, chunks_of
from lvm.vg import VolumeGroup
from rpv.blockdev import check_range

log = structlog.get_logger("lvm")


class LogicalVolume:
    def __init__(self, vg: VolumeGroup, entry: LVEntry):
        self.vg = vg
        self.entry = entry
        self.name = entry.name
        self.lock = RangeLock()

    @property
    def size(self) -> int:
        return self.entry.lps * self.vg.vgda.pp_size

    def _segments(self, offset: int, length: int):
        """(lp, offset within the LP, offset within the request, length) pieces."""
        pp = self.vg.vgda.pp_size
        pos, end = offset, offset + length
        while pos < end:
            lp, within = divmod(pos, pp)
            n = min(pp - within, end - pos)
            yield lp, within, pos - offset, n
            pos += n

    # -- reads ---------------------------------------------------------------------------------
    async def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        self.vg.check_online()
        parts = [self._read_lp(lp, within, n) for lp, within, _, n in
                 self._segments(offset, length)]
        if len(parts) == 1:
            return await parts[0]
        return b"".join(await asyncio.gather(*parts))

    async def _read_lp(self, lp: int, within: int, length: int) -> bytes:
        vg = self.vg
        tried: set = set()
        while True:
            vg.check_online()
            src = vg.source_for(self, lp, exclude=tried)
            if src is None:
                vg._log("LVM_IO_FAIL", self.name, f"no readable copy of LP {lp + 1}")
                raise OSError(errno.EIO, f"{self.name}: no readable copy of LP {lp + 1}")
            loc, dev = src
            tried.add(loc)
            try:
                return await dev.read(pp_offset(loc[1], vg.vgda.pp_size) + within, length)
            except OSError as e:
                log.warning("lvm_read_failed", lv=self.name, lp=lp, pv=dev.name, error=str(e))
                vg.pv_failed(loc[0], f"read failed: {e}")
                if vg.mark_stale(loc, None):
                    await vg.commit_vgsa()

    # -- writes --------------------------------------------------------------------------------
    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        check_range(self.size, offset, len(data))
        vg = self.vg
        vg.check_online()
        if not data:
            return
        async with self.lock.acquire(offset, offset + len(data)):
            regions = vg.drl_regions(self.entry.lvid, offset, len(data))
            await vg.drl_enter(regions)
            try:
                await self._write_copies(offset, data, fua)
            finally:
                vg.drl_leave(regions)
        if vg.needs_written_mark:
            # checked after the copies were written: a PV lost during this write opened a
            # new generation, and it is that one the acknowledgement must mark as written
            await vg.mark_written()

    async def _write_copies(self, offset: int, data: bytes, fua: bool) -> None:
        vg = self.vg
        pp_size = vg.vgda.pp_size
        view = memoryview(data)
        targets, results, missed = [], [], []
        remote: list[tuple[int, asyncio.Future]] = []
        local: list[tuple[int, object, int, memoryview]] = []
        lp_ok: dict[int, int] = {}
        for lp, within, start, n in self._segments(offset, len(data)):
            lp_ok[lp] = 0
            piece = view[start:start + n]
            for m in self.entry.maps:
                loc = m[lp]
                if loc in vg.vgsa.stale or not vg.usable(loc[0]):
                    missed.append((loc, within, n))
                    continue
                dev = vg.devices[loc[0]]
                pos = pp_offset(loc[1], pp_size) + within
                targets.append((lp, loc, within, n))
                results.append(None)
                if not fua and hasattr(dev, "write_now"):
                    local.append((len(results) - 1, dev, pos, piece))
                else:  # remote copies first, so the round trips overlap the local writes
                    submit = getattr(dev, "submit_write", None)
                    remote.append((len(results) - 1,
                                   submit(pos, piece, fua) if submit is not None
                                   else asyncio.ensure_future(dev.write(pos, piece, fua))))
        for i, dev, pos, piece in local:  # page-cache writes: inline, no task
            try:
                dev.write_now(pos, piece)
            except OSError as e:
                results[i] = e
        if remote:
            done = await asyncio.gather(*(f for _, f in remote), return_exceptions=True)
            for (i, _), r in zip(remote, done, strict=True):
                results[i] = r
        for (lp, loc, within, n), r in zip(targets, results, strict=True):
            if r is None:
                lp_ok[lp] += 1
            elif isinstance(r, OSError):
                log.warning("lvm_write_failed", lv=self.name, lp=lp,
                            pv=vg.pv_name(loc[0]), error=str(r))
                vg.pv_failed(loc[0], f"write failed: {r}")
                missed.append((loc, within, n))
            else:
                raise r
        failed_lps = [lp for lp, ok in lp_ok.items() if ok == 0]
        if failed_lps:
            vg._log("LVM_IO_FAIL", self.name,
                    f"write to LP {failed_lps[0] + 1} failed on every copy")
            raise OSError(errno.EIO, f"{self.name}: write failed on every copy of LP "
                                     f"{failed_lps[0] + 1}")
        if missed:
            changed = False
            for loc, within, n in missed:
                changed |= vg.mark_stale(loc, chunks_of(within, n))
            if changed:
                await vg.commit_vgsa()

    async def flush(self) -> None:
        self.vg.check_online()
        await self.vg.flush_pvs()
