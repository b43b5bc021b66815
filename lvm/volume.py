"""A logical volume as a block device: mirrored writes, local-preferred reads.

Write path: overlapping writes are ordered by a range lock; the touched regions are logged in
the dirty-region log first; every non-stale copy on a usable PV is written concurrently; copies
that are stale, on a missing PV, or whose write failed are marked stale (changed 64 KiB chunks)
and that is made durable in the VGSA before the write is acknowledged. If no copy of some
logical partition took the write, the caller gets EIO (after that accounting). Every copy
that took a write is remembered until its PV's next flush (``VolumeGroup.note_written``), and
nothing is acknowledged while the VGSA in memory is ahead of the disk
(``VolumeGroup.settle``).
"""

from __future__ import annotations

import asyncio
import errno
from functools import partial

import structlog

from lvm.commit import RangeLock
from lvm.layout import pp_offset
from lvm.metadata import LVEntry, chunks_of
from lvm.vg import INLINE, VolumeGroup
from rpv.blockdev import check_range

log = structlog.get_logger("lvm")


class LogicalVolume:
    def __init__(self, vg: VolumeGroup, entry: LVEntry):
        self.vg = vg
        self.entry = entry
        self.name = entry.name
        self.lock = RangeLock()
        self.tasks: set[asyncio.Task] = set()  # inline writes finishing the slow way
        self._inline = INLINE.InlineIO(self)

    @property
    def size(self) -> int:
        return self.entry.lps * self.vg.vgda.pp_size

    def segments(self, offset: int, length: int):
        """(lp, offset within the LP, offset within the request, length) pieces."""
        pp = self.vg.vgda.pp_size
        pos, end = offset, offset + length
        while pos < end:
            lp, within = divmod(pos, pp)
            n = min(pp - within, end - pos)
            yield lp, within, pos - offset, n
            pos += n

    def _regions(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The dirty-region-log regions a write must have logged first: none for an LV with
        one copy, which has no other copy to bring back in line after a crash (an I/O cache
        LV, a local-only LV); a copy added later starts stale and is copied whole."""
        if len(self.entry.maps) < 2:
            return []
        return self.vg.drl_regions(self.entry.lvid, offset, length)

    def _one_lp(self, offset: int, length: int) -> tuple[int, int] | None:
        """(lp, offset within it) when the request lies inside one LP of an online VG."""
        vg = self.vg
        if not vg.online or length <= 0 or offset < 0 or offset + length > self.size:
            return None
        lp, within = divmod(offset, vg.vgda.pp_size)
        return (lp, within) if within + length <= vg.vgda.pp_size else None

    # -- reads ---------------------------------------------------------------------------------
    def read_inline(self, offset: int, length: int) -> bytes | None:
        """The NBD fast path (:mod:`lvm.inline`): read now from a fresh local copy, or None
        to let :meth:`read` serve (no local copy, several LPs, a failed read: it retries
        other copies)."""
        return self._inline.read(offset, length)

    def read_inline_many(self, reqs: list[tuple[int, int]]) -> list:
        """:meth:`read_inline` of a batch: reads that follow each other on a disk in one
        ``preadv``."""
        return self._inline.read_many(reqs)

    async def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        self.vg.check_online()
        self.vg.app_ios += 1
        parts = [self._read_lp(lp, within, n) for lp, within, _, n in
                 self.segments(offset, length)]
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
                data = await dev.read(pp_offset(loc[1], vg.vgda.pp_size) + within, length)
            except OSError as e:
                log.warning("lvm_read_failed", lv=self.name, lp=lp, pv=dev.name, error=str(e))
                vg.pv_failed(loc[0], f"read failed: {e}")
                vg.mark_stale(loc, None)
                await vg.settle()
                continue
            if loc in vg.vgsa.stale or not vg.usable(loc[0]):
                continue  # went stale while the read was out (its server restarted): retry
            return data

    # -- writes --------------------------------------------------------------------------------
    def write_inline(self, offset: int, data, fua: bool, done) -> bool:
        """The NBD fast path (:mod:`lvm.inline`): start a write without a task, or return
        False, having done nothing, when it must take :meth:`write`."""
        return self._inline.write(offset, data, fua, done)

    async def _finish_inline(self, op) -> None:
        """The slow end of an inline write: a copy failed, or a generation wants its mark."""
        vg = self.vg
        failure = None
        try:
            try:
                if op.failures:
                    await self._account(
                        (op.lp,), [(op.lp, loc, op.within, op.n, op.failures.get(loc))
                                   for loc in op.locs], [])
            finally:
                vg.drl_leave(op.regions)
                self.lock.release(op.entry)
            await vg.mark_written()  # and wait for every VGSA change made so far
        except Exception as e:
            failure = e
        except BaseException as e:  # cancelled at shutdown: still answer, then go
            op.done(e, True)
            raise
        if op.failures:  # a failed copy's request may still sit on its link: data is kept
            op.done(failure, True)
        else:
            op.done(failure)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        check_range(self.size, offset, len(data))
        vg = self.vg
        vg.check_online()
        vg.app_ios += 1
        if not data:
            return
        async with self.lock.acquire(offset, offset + len(data)):
            regions = self._regions(offset, len(data))
            await vg.drl_enter(regions)
            try:
                await self._write_copies(offset, data, fua)
            finally:
                vg.drl_leave(regions)
        # after the copies were written: a PV lost during this write opened a new generation,
        # and it is that one the acknowledgement must mark as written
        await vg.mark_written()

    async def _write_copies(self, offset: int, data: bytes, fua: bool) -> None:
        vg = self.vg
        pool = vg.async_pool_for(self.entry) if vg.async_pools else None
        logged = None  # the append to an asynchronous pool's cache, for the copy it defers
        if pool is not None and await pool.admit():
            logged = asyncio.ensure_future(pool.log_write(self.entry.lvid, offset, data,
                                                          fua))
        else:
            pool = None
        pp_size = vg.vgda.pp_size
        view = memoryview(data)
        targets, results, missed, deferred = [], [], [], []
        remote: list[tuple[int, asyncio.Future]] = []
        local: list[tuple[int, object, int, memoryview]] = []
        lps = []
        for lp, within, start, n in self.segments(offset, len(data)):
            lps.append(lp)
            piece = view[start:start + n]
            for m in self.entry.maps:
                loc = m[lp]
                if pool is not None and loc[0] in pool.members:
                    deferred.append((loc, within, n))
                    continue
                if loc in vg.vgsa.stale or not vg.usable(loc[0]):
                    missed.append((loc, within, n))
                    continue
                dev = vg.devices[loc[0]]
                pos = pp_offset(loc[1], pp_size) + within
                targets.append((lp, loc, within, n))
                results.append(None)
                if not fua and hasattr(dev, "write_now"):
                    local.append((len(results) - 1, loc, within, dev, pos, piece))
                    continue
                # remote copies first, so the round trips overlap the local writes
                submit = getattr(dev, "submit_write", None)
                fut = (submit(pos, piece, fua) if submit is not None
                       else asyncio.ensure_future(dev.write(pos, piece, fua)))
                if not fua:  # noted as it completes, before anything else can happen
                    fut.add_done_callback(partial(_note_if_written, vg, loc, within, n))
                remote.append((len(results) - 1, fut))
        for i, loc, within, dev, pos, piece in local:  # page-cache writes: inline, no task
            try:
                dev.write_now(pos, piece)
            except OSError as e:
                results[i] = e
            else:
                vg.note_written(loc, within, len(piece))
        if remote:
            done = await asyncio.gather(*(f for _, f in remote), return_exceptions=True)
            for (i, _), r in zip(remote, done, strict=True):
                results[i] = r
        if logged is not None:
            try:
                if not await logged:  # the pool fell back: the remote copy missed it
                    missed.extend(deferred)
            except OSError as e:  # no cache record: the remote copy misses this write
                log.error("lvm_async_cache_write_failed", lv=self.name, error=str(e))
                missed.extend(deferred)
                pool.overflow_soon(f"the I/O cache cannot be written: {e}")
        await self._account(lps, [(*t, r) for t, r in zip(targets, results, strict=True)],
                            missed)

    async def _account(self, lps, outcomes, missed: list) -> None:
        """After the copies of a write answered: a PV whose copy failed is marked missing,
        every copy that missed the write is marked stale and that is made durable; then EIO
        when some LP took the write on no copy at all (the LPs that did take it stay
        accounted for). ``outcomes``: (lp, loc, within, n, None or the exception) per copy
        written; ``missed``: (loc, within, n) per copy skipped."""
        vg = self.vg
        lp_ok = dict.fromkeys(lps, 0)
        for lp, loc, within, n, r in outcomes:
            if r is None:
                lp_ok[lp] += 1
            elif isinstance(r, OSError):
                log.warning("lvm_write_failed", lv=self.name, lp=lp,
                            pv=vg.pv_name(loc[0]), error=str(r))
                vg.pv_failed(loc[0], f"write failed: {r}")
                missed.append((loc, within, n))
            else:
                raise r
        for loc, within, n in missed:
            vg.mark_stale(loc, chunks_of(within, n))
        await vg.settle()
        failed_lps = [lp for lp, ok in lp_ok.items() if ok == 0]
        if failed_lps:
            vg._log("LVM_IO_FAIL", self.name,
                    f"write to LP {failed_lps[0] + 1} failed on every copy")
            raise OSError(errno.EIO, f"{self.name}: write failed on every copy of LP "
                                     f"{failed_lps[0] + 1}")

    async def flush(self) -> None:
        self.vg.check_online()
        await self.vg.flush_pvs()


def _note_if_written(vg: VolumeGroup, loc, within: int, n: int, fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        vg.note_written(loc, within, n)
