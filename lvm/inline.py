"""The inline read and write paths of a logical volume, the NBD server's fast path
(pure-Python reference; compiled twin ``_inline.pyx``, which :mod:`rpv.speedups` picks unless
``GLVM_PURE_PYTHON=1``; both pass the same tests and give the same results).

A read is served now from the first fresh copy on a usable local disk when it lies inside
one LP; a batch of reads (:meth:`InlineIO.read_many`) that follow each other on a disk
leaves in one ``preadv``. Anything else (no such copy, several LPs, a failed read) is left to
``LogicalVolume.read``, which tries the other copies and marks the failed one.

A write starts without a task when it needs nothing but the data: one LP, every copy fresh
on a usable PV and ready, its dirty regions already durable, no overlapping write, no
generation waiting for its 'written' mark, no FUA, no asynchronous pool. Remote copies are
submitted with a callback; local ones are written at the end of the loop iteration (after
the remote requests of the whole batch left), a run of adjacent writes to one disk in one
``pwritev``. ``done`` runs when the last copy answered; if any copy failed, the volume's
slow end (``LogicalVolume._finish_inline``: PV missing, stale chunks made durable, EIO if no
copy took it) runs first, in a task.

:class:`RegionSet` is the dirty-region log's set of durable regions, ``(lvid, region)``
pairs, kept compact (a bitmap per LV in the compiled twin) so the check is one call.
"""

from __future__ import annotations

import asyncio
import errno
from functools import partial

from lvm.layout import pp_offset
from rpv.blockdev import read_batch

WRITEV_MAX = 64  # local writes joined into one pwritev, at most (IOV_MAX is 1024)


class RegionSet:
    """Durable dirty-log regions, ``(lvid, region)`` pairs: a set with :meth:`covers`."""

    __slots__ = ("_set",)

    def __init__(self, regions=()):
        self._set: set[tuple[int, int]] = set()
        for item in regions:
            self.add(item)

    def __contains__(self, item) -> bool:
        return item in self._set

    def __len__(self) -> int:
        return len(self._set)

    def __iter__(self):
        return iter(sorted(self._set))

    def add(self, item) -> None:
        lvid, r = item
        if r < 0:
            raise ValueError(f"negative dirty-log region {r}")
        self._set.add((int(lvid), int(r)))

    def difference_update(self, items) -> None:
        self._set.difference_update(items)

    def covers(self, lvid: int, first: int, last: int) -> bool:
        """Whether regions ``first``..``last`` (inclusive) of LV ``lvid`` are all in."""
        s = self._set
        if first == last:  # the common case: a write inside one region
            return (lvid, first) in s
        return all((lvid, r) in s for r in range(first, last + 1))


class InlineIO:
    """The inline read and write paths of one logical volume (see the module docstring)."""

    __slots__ = ("lv", "queue")

    def __init__(self, lv):
        self.lv = lv
        self.queue: list = []  # local copies queued in this loop iteration

    def source(self, offset: int, length: int):
        """Where a read can be served now: ``(device, offset on it, length)`` on the first
        fresh copy on a usable local disk, or None."""
        lv = self.lv
        vg = lv.vg
        vg.app_ios += 1
        where = lv._one_lp(offset, length)
        if where is None:
            return None
        lp, within = where
        stale = vg.vgsa.stale
        for m in lv.entry.maps:
            loc = m[lp]
            if loc in stale:
                continue
            dev = vg.devices.get(loc[0])
            if getattr(dev, "read_now", None) is not None and vg.usable(loc[0]):
                return (dev, pp_offset(loc[1], vg.vgda.pp_size) + within, length)
        return None

    def read(self, offset: int, length: int):
        """The data, read now, or None to let ``LogicalVolume.read`` serve."""
        src = self.source(offset, length)
        if src is None:
            return None
        try:
            return src[0].read_now(src[1], length)
        except OSError:
            return None

    def read_many(self, reqs: list) -> list:
        """:meth:`read` of each ``(offset, length)``; reads that follow each other on a disk
        in one ``preadv``."""
        return [None if isinstance(d, OSError) else d
                for d in read_batch([self.source(o, n) for o, n in reqs])]

    def write(self, offset: int, data, fua: bool, done) -> bool:
        """Start the write, or return False, having done nothing, when it must take
        ``LogicalVolume.write``."""
        lv = self.lv
        vg = lv.vg
        vg.app_ios += 1
        if fua or vg.needs_written_mark or vg.vgsa_ahead:
            return False
        entry = lv.entry
        if vg.async_pools and vg.async_pool_for(entry) is not None:
            return False
        n = len(data)
        where = lv._one_lp(offset, n)
        if where is None:
            return False
        lp, within = where
        regions = lv._regions(offset, n)
        durable = vg.drl_durable
        for r in regions:
            if r not in durable:
                return False
        pp_size = vg.vgda.pp_size
        stale = vg.vgsa.stale
        local, remote = [], []
        for m in entry.maps:
            loc = m[lp]
            if loc in stale or not vg.usable(loc[0]):
                return False
            dev = vg.devices[loc[0]]
            pos = pp_offset(loc[1], pp_size) + within
            if getattr(dev, "write_now", None) is not None:
                local.append((loc, dev, pos))
            elif getattr(dev, "accepts", None) is not None and dev.accepts(n):
                remote.append((loc, dev, pos))
            else:
                return False
        held = lv.lock.try_acquire(offset, offset + n)
        if held is None:
            return False
        vg.drl_hold(regions)
        op = InlineWrite(lv, held, regions, done, lp, within, n,
                         len(remote) + len(local) + 1)
        for loc, dev, pos in remote:
            if not dev.submit_write_cb(pos, data, False, partial(op.copy_done, loc)):
                op.copy_done(loc, OSError(errno.EIO, f"{dev.name}: write not accepted"))
        if local:
            queue = self.queue
            if not queue:
                asyncio.get_running_loop().call_soon(self.write_queued)
            for loc, dev, pos in local:
                queue.append((op, loc, dev, pos, data))
        op.copy_done(None, None)  # the submitter's own count: done can only run from here on
        return True

    def write_queued(self) -> None:
        """Write the local copies queued in this loop iteration: a run of writes that follow
        each other on one disk (a sequential stream) in one ``pwritev``."""
        queue, self.queue = self.queue, []
        i, n = 0, len(queue)
        while i < n:
            dev, pos = queue[i][2], queue[i][3]
            end = pos + len(queue[i][4])
            j = i + 1
            if hasattr(dev, "writev_now"):
                while j < n and j - i < WRITEV_MAX and queue[j][2] is dev and queue[j][3] == end:
                    end += len(queue[j][4])
                    j += 1
            try:
                if j - i == 1:
                    dev.write_now(pos, queue[i][4])
                else:
                    dev.writev_now(pos, [q[4] for q in queue[i:j]])
            except OSError as e:
                failure = e
            else:
                failure = None
            for k in range(i, j):
                queue[k][0].copy_done(queue[k][1], failure)
            i = j


class InlineWrite:
    """One write on the inline path: counts the copies still to answer."""

    __slots__ = ("lv", "entry", "regions", "done", "lp", "within", "n", "pending", "locs",
                 "failures")

    def __init__(self, lv, entry, regions, done, lp: int, within: int, n: int, pending: int):
        self.lv, self.entry, self.regions, self.done = lv, entry, regions, done
        self.lp, self.within, self.n, self.pending = lp, within, n, pending
        self.locs: list = []
        self.failures: dict = {}

    def copy_done(self, loc, exc: OSError | None) -> None:
        if loc is not None:
            self.locs.append(loc)
            if exc is not None:
                self.failures[loc] = exc
            else:
                self.lv.vg.note_written(loc, self.within, self.n)
        self.pending -= 1
        if self.pending:
            return
        lv = self.lv
        vg = lv.vg
        if self.failures or vg.needs_written_mark or vg.vgsa_ahead:
            task = asyncio.get_running_loop().create_task(lv._finish_inline(self))
            lv.tasks.add(task)
            task.add_done_callback(lv.tasks.discard)
            return
        vg.drl_leave(self.regions)
        lv.lock.release(self.entry)
        self.done(None)
