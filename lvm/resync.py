"""Resynchronisation of stale partitions from a good copy.

Only the changed 64 KiB chunks recorded in the VGSA are copied (all of the PP when it is
wholly stale). Each run of chunks is copied under the LV's range lock, so it cannot interleave
with a write to the same blocks; writes that land on a PP while it is being resynced re-mark
their chunks, and the PP is declared fresh only when a pass finds nothing left, under a lock
on the whole LP. The destination is flushed before the VGSA forgets the PP, so a crash never
leaves a copy marked good whose data was still in flight. Progress survives restarts because
each finished batch of PPs is committed to the VGSA.

Checksum-based resync: a PP marked stale in bulk (wholly, or in at least half of its chunks: a
PV whose flush or write failed has all it took since its last flush marked; a read error or
more than MAX_CHUNKS_PER_PP changed chunks mark a PP whole) mostly holds the same data as its
good copy (see :func:`compares`). For such a PP each run is first compared by 64 KiB
digests computed where each copy lives (the RPV ``CHECKSUM`` request for a remote copy: 16
bytes cross the link per chunk), and only the chunks that differ are copied. The comparison
and the copies it leads to happen under the same range lock as a plain copy, so no write can
land between the comparison and the decision; writes after it re-mark their chunks and the PP
goes round again, as for a copy. A skipped chunk is made durable by the same flush of the
destination that precedes clearing the PP in the VGSA. A few precisely tracked chunks (writes
the copy missed) are copied directly: they are known to differ. When the comparison cannot be
made (a CHECKSUM that failed, a source that went stale meanwhile), the whole run is copied by
copy_range, which applies the usual failure policy. ``syncvg -f`` and a foreground
``mirrorvg`` pass ``checksum=False``: a forced resync recopies every partition, as the
administrator asked, and a new copy is copied whole.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import deque
from collections.abc import Callable

import structlog

from lvm.copy import copy_range
from lvm.layout import pp_offset
from lvm.metadata import CHUNK, Loc
from lvm.throttle import INTERVAL, START_REMOTE, AdaptiveRate, MiB
from lvm.verify import differing
from lvm.vg import VolumeGroup
from rpv.blockdev import digests
from rpv.checksum import CHECKSUM_CHUNK

log = structlog.get_logger("lvm.resync")

RUN_LIMIT = 1024 * 1024  # bytes copied per locked step
RUN_WINDOW = 4  # runs copied at once: the link stays busy
BATCH_PPS = 4  # partitions copied before one flush of their destinations and one VGSA commit
assert CHECKSUM_CHUNK == CHUNK  # one digest per resync chunk


def compares(marked: set[int] | None, chunks_per_pp: int) -> bool:
    """The rule for checksum-based resync: compare digests before copying when the PP is
    wholly stale, or when at least half of its chunks are marked. Both come from bulk
    markings, where most chunks are in fact unchanged: a PV that failed (a flush or a write
    that timed out, a server that restarted) has everything it took since its last flush
    marked, though its host usually still holds it; a read error or more than
    MAX_CHUNKS_PER_PP changed chunks mark the PP whole (so does syncvg -f, but it passes
    ``checksum=False``). A handful of tracked chunks are writes the copy missed: they are
    copied directly."""
    return marked is None or 2 * len(marked) >= chunks_per_pp


class ResyncStats:
    def __init__(self, total: int):
        self.pps_total = total
        self.pps_done = 0
        self.bytes = 0  # bytes copied (read from a good copy and written to the stale one)
        self.chunks_copied = 0
        self.chunks_skipped = 0  # identical on both copies by their digests: not copied
        self.bytes_skipped = 0
        self.bytes_compared = 0  # bytes whose digests were compared before copying
        self.failed: list[str] = []
        self.started = time.monotonic()

    def as_dict(self) -> dict:
        return {"pps_total": self.pps_total, "pps_done": self.pps_done, "bytes": self.bytes,
                "chunks_copied": self.chunks_copied, "chunks_skipped": self.chunks_skipped,
                "bytes_skipped": self.bytes_skipped, "bytes_compared": self.bytes_compared,
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
                 rate: float = 0.0, progress: Callable[[dict], None] | None = None,
                 checksum: bool = True) -> dict:
    """Resync every stale PP selected by ``want`` on usable PVs; return statistics.

    With ``checksum``, wholly stale PPs are compared by digests first and only the chunks
    that differ are copied (see the module docstring); without it every marked chunk is copied.

    Each of ``parallel`` workers takes up to BATCH_PPS partitions at a time and copies them;
    then, while it copies the next batch, it flushes this batch's destinations once, declares
    fresh (under the LP lock) every PP that no write re-marked meanwhile, and commits the VGSA
    once for the batch. A PP written during its copy goes back in the queue for another pass
    over the chunks that changed.
    """
    locs = vg.stale_locs(want)
    stats = ResyncStats(len(locs))
    queue: deque[Loc] = deque(locs)
    limiter = _Throttle(vg, locs, rate)

    async def worker() -> None:
        finishing: asyncio.Future | None = None
        try:
            while queue or finishing:
                batch = [queue.popleft() for _ in range(min(BATCH_PPS, len(queue)))]
                for loc in batch:  # from here on, writes to loc are noted for another pass
                    vg.resyncing[loc] = set()
                try:
                    copied = await _copy_batch(vg, batch, stats, limiter, checksum)
                    if finishing is not None:
                        await finishing
                        finishing = None
                        if progress:
                            progress(stats.as_dict())
                except BaseException:
                    _forget(vg, batch)
                    raise
                if batch:
                    finishing = asyncio.ensure_future(
                        _finish_batch(vg, batch, copied, stats, queue))
        finally:
            if finishing is not None and not finishing.done():
                finishing.cancel()

    log.info("lvm_resync_start", vg=vg.name, stale_pps=len(locs), parallel=parallel,
             floor_mb=round(limiter.ctl.settings.floor / MiB, 1),
             impact_pct=round(limiter.ctl.settings.impact * 100))
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, parallel))))
    finally:
        limiter.close()
    done = stats.as_dict()
    vg.resync_progress = done  # lsvg shows the last resync's counters
    log.info("lvm_resync_done", vg=vg.name, **done)
    return done


async def _copy_batch(vg: VolumeGroup, batch: list[Loc], stats: ResyncStats,
                      limiter, checksum: bool = True) -> list[Loc]:
    """Copy the PPs of ``batch``; return those copied (failures are counted and logged)."""
    window = asyncio.Semaphore(RUN_WINDOW)  # runs in flight, across the whole batch
    results = await asyncio.gather(*(_copy_pp(vg, loc, stats, limiter, window, checksum)
                                     for loc in batch), return_exceptions=True)
    copied = []
    for loc, r in zip(batch, results, strict=True):
        if r is True:
            copied.append(loc)
        elif r is False:
            stats.pps_done += 1
        elif isinstance(r, OSError):
            _failed(vg, loc, stats, r)
        else:
            raise r
    return copied


async def _finish_batch(vg: VolumeGroup, batch: list[Loc], copied: list[Loc],
                        stats: ResyncStats, requeue: deque[Loc]) -> None:
    """Flush the copies, then forget the stale state of every PP not written meanwhile."""
    again_later = []
    try:
        flushed = []
        for index in sorted({loc[0] for loc in copied}):
            if await vg.flush_pv(index):
                flushed.extend(loc for loc in copied if loc[0] == index)
            else:
                for loc in copied:
                    if loc[0] == index:
                        _failed(vg, loc, stats, OSError(errno.EIO, "flush failed"))
        for loc in flushed:  # the data is durable: forget the stale state unless rewritten
            owner = vg.owners.get(loc)
            if owner is None:  # its LV went away meanwhile
                vg.vgsa.stale.pop(loc, None)
                stats.pps_done += 1
                continue
            lv_name, _, lp = owner
            pp_size = vg.vgda.pp_size
            async with vg.lvs[lv_name].lock.acquire(lp * pp_size, (lp + 1) * pp_size):
                again = vg.resyncing.pop(loc)
                if again:
                    vg.vgsa.stale[loc] = set(again)
                    again_later.append(loc)
                    continue
                vg.vgsa.stale.pop(loc, None)
                vg.pv_synced(loc[0])
                stats.pps_done += 1
        await vg.commit_vgsa()
    finally:
        _forget(vg, batch)
    requeue.extend(again_later)  # only now: a worker taking them sets up their tracking anew


def _forget(vg: VolumeGroup, batch: list[Loc]) -> None:
    for loc in batch:
        vg.resyncing.pop(loc, None)


def _failed(vg: VolumeGroup, loc: Loc, stats: ResyncStats, e: OSError) -> None:
    stats.failed.append(f"{vg.pv_name(loc[0])} PP {loc[1] + 1}: {e}")
    stats.pps_done += 1
    log.warning("lvm_resync_pp_failed", vg=vg.name, pv=vg.pv_name(loc[0]), pp=loc[1],
                error=str(e))


async def _copy_pp(vg: VolumeGroup, loc: Loc, stats: ResyncStats, limiter,
                   window: asyncio.Semaphore, checksum: bool = True) -> bool:
    """Copy the stale chunks of ``loc`` from a good copy (comparing digests first when
    :func:`compares` says so); False if no LV uses it any more."""
    owner = vg.owners.get(loc)
    if owner is None:
        vg.vgsa.stale.pop(loc, None)  # committed with the batch
        return False
    lv_name, _copy, lp = owner
    lv = vg.lvs[lv_name]
    pp_size = vg.vgda.pp_size
    lp_base = lp * pp_size
    vg.check_online()
    if not vg.usable(loc[0]):
        raise OSError(5, "destination PV is not usable")
    marked = vg.vgsa.stale.get(loc, set())
    chunks = sorted(range(pp_size // CHUNK) if marked is None else marked)
    compare = checksum and compares(marked, pp_size // CHUNK)

    async def copy(start: int, length: int) -> None:
        await limiter.take(length)  # paced before it goes: no burst on the link
        async with window, lv.lock.acquire(lp_base + start, lp_base + start + length):
            runs = [(start, length)]
            if compare:  # under the lock: no write lands between comparison and decision
                found = await _differing_runs(vg, lv, lp, loc, start, length)
                if found is not None:
                    runs = found
                    same = length - sum(n for _, n in runs)
                    stats.bytes_compared += length
                    stats.bytes_skipped += same
                    stats.chunks_skipped += -(-same // CHUNK)
            moved = 0
            for within, n in runs:
                moved += await copy_range(vg, lv, lp, loc, within, n)
            stats.bytes += moved
            stats.chunks_copied += -(-moved // CHUNK)
        limiter.ctl.refund(length - moved)  # identical chunks did not cross the link

    await asyncio.gather(*(copy(start, length) for start, length in _runs(chunks, CHUNK)))
    return True


async def _differing_runs(vg: VolumeGroup, lv, lp: int, dst: Loc, within: int,
                          length: int) -> list[tuple[int, int]] | None:
    """The runs of ``[within, within+length)`` of LP ``lp`` where the copy at ``dst`` differs
    from the good copy copy_range would read, by chunk digests computed on each side; None
    when they could not be compared (then the caller copies it all, and copy_range deals
    with the failure). The caller holds the range lock."""
    pp_size = vg.vgda.pp_size
    src = vg.source_for(lv, lp, exclude={dst})
    if src is None or not vg.usable(dst[0]):
        return None
    sloc, sdev = src
    got = await asyncio.gather(
        digests(sdev, pp_offset(sloc[1], pp_size) + within, length),
        digests(vg.devices[dst[0]], pp_offset(dst[1], pp_size) + within, length),
        return_exceptions=True)
    for r in got:
        if isinstance(r, BaseException):
            if isinstance(r, OSError):
                log.info("lvm_resync_checksum_failed", vg=vg.name, pv=vg.pv_name(dst[0]),
                         pp=dst[1], error=str(r))
                return None
            raise r
    if sloc in vg.vgsa.stale or not vg.usable(sloc[0]) or not vg.usable(dst[0]):
        return None  # the source went stale while its digests were computed
    a, b = got
    if len(a) != len(b):
        return None
    runs: list[tuple[int, int]] = []
    for c in differing(a, b):
        start = within + c * CHUNK
        n = min(CHUNK, within + length - start)
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((start, n))
    return runs


class _Throttle:
    """The resync's pace (lvm/throttle.py): a token bucket whose rate a PING prober steers
    by the delay on the links to the remote destinations; ``syncvg --rate`` caps it."""

    def __init__(self, vg: VolumeGroup, locs: list[Loc], rate: float):
        settings = vg.resync_settings(ceiling=rate)
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.vg = vg
        self.remote = sorted({loc[0] for loc in locs
                              if hasattr(vg.devices.get(loc[0]), "ping")})
        # no link to protect: full speed at once; over a link, a brisk start that adapts
        self.ctl = AdaptiveRate(settings, loop.time(),
                                START_REMOTE if self.remote else settings.ceiling)
        self.prober = loop.create_task(self._probe()) if self.remote else None
        # the link's own round trip is measured before the resync adds to it
        self.measured = asyncio.Event()
        self.app_ios = vg.app_ios  # the VG's count of application I/Os when last looked
        if self.prober is None:
            self.measured.set()
        vg.resync_rate = self.ctl

    async def take(self, n: int) -> None:
        await self.measured.wait()
        # always yield once: a copy whose I/O completes at once must not starve the prober
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            self._note_app_io()
            if (delay := self.ctl.wait(self.loop.time(), n)) <= 0:
                return

    async def _probe(self) -> None:
        try:
            await self._probe_forever()
        finally:
            self.measured.set()  # never leaves a copy waiting

    def _note_app_io(self) -> None:
        """Tell the controller when the VG's LVs saw application I/O since last asked."""
        if self.vg.app_ios != self.app_ios:
            self.app_ios = self.vg.app_ios
            self.ctl.app_io(self.loop.time())

    async def _probe_forever(self) -> None:
        vg = self.vg
        while True:
            devs = [vg.devices[i] for i in self.remote if vg.usable(i)]
            if devs:
                start = self.loop.time()
                self.ctl.ping_sent(start)
                await asyncio.gather(*(d.ping() for d in devs), return_exceptions=True)
                self._note_app_io()
                self.ctl.delay_seen(self.loop.time(), self.loop.time() - start)
            self.measured.set()  # (or no link is usable: the copies fail on their own)
            await asyncio.sleep(INTERVAL)

    def close(self) -> None:
        if self.prober is not None:
            self.prober.cancel()
        self.vg.resync_rate = None
