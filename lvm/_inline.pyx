# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled twin of :mod:`lvm.inline` (the reference: same results). Durable dirty-log
regions are a bitmap per LV; the checks of a write run on C integers, and the volume group's
per-write questions (``needs_written_mark``, ``vgsa_ahead``, ``usable``, ``drl_hold``,
``drl_leave``) are answered here from the same state instead of through its methods (the
pure twin calls them: tests/test_lvm_inline_twins.py compares the two step by step)."""

import asyncio
import errno
from functools import partial
from time import monotonic

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

from lvm.layout import DATA_START as _DATA_START
from lvm.metadata import DRL_REGION as _DRL_REGION
from lvm.metadata import PV_ACTIVE
from lvm.inline import WRITEV_MAX as _WRITEV_MAX
from rpv.blockdev import read_batch

cdef Py_ssize_t WRITEV_MAX = _WRITEV_MAX
cdef long long DATA_START = _DATA_START
cdef long long DRL_REGION = _DRL_REGION
cdef long long OFFSET_LIMIT = 1LL << 62  # beyond any volume: refused before C arithmetic


cdef inline bint _ack_waits(vg):
    """``vg.needs_written_mark or vg.vgsa_ahead``: an acknowledgement must wait for a VGSA
    commit (the generation's 'written' mark, or changes not yet on disk)."""
    cdef list gens = vg.vgsa.gens
    if gens and not (<dict>gens[len(gens) - 1])["written"]:
        return True
    return vg._vgsa_durable < vg._vgsa_version


cdef inline bint _usable(vg, index):
    """``vg.usable(index)``: the PV has a device and its state is active."""
    if vg.devices.get(index) is None:
        return False
    for p in vg.vgda.pvs:
        if p.index == index:
            return (<dict>vg.vgsa.pv_state).get(p.pvid, PV_ACTIVE) == PV_ACTIVE
    raise KeyError(f"no PV with index {index} in volume group {vg.vgda.name}")


cdef inline void _drl_hold(vg, list regions):
    """``vg.drl_hold(regions)``."""
    if not regions:
        return
    cdef dict inflight = vg.drl_inflight, active = vg.drl_active
    now = monotonic()
    for r in regions:
        inflight[r] = inflight.get(r, 0) + 1
        active[r] = now


cdef inline void _drl_leave(vg, list regions):
    """``vg.drl_leave(regions)``."""
    cdef dict inflight = vg.drl_inflight
    for r in regions:
        n = inflight[r] - 1
        if n:
            inflight[r] = n
        else:
            del inflight[r]


cdef class RegionSet:
    """Durable dirty-log regions, ``(lvid, region)`` pairs: a set with :meth:`covers`."""

    cdef dict _bits  # lvid -> bytearray, bit r set when region r is in
    cdef Py_ssize_t _count

    def __init__(self, regions=()):
        self._bits = {}
        self._count = 0
        for lvid, r in regions:
            self.add((lvid, r))

    cdef bint _has(self, object lvid, long long r):
        cdef object bits = self._bits.get(lvid)
        if bits is None or r < 0 or (r >> 3) >= PyByteArray_GET_SIZE(bits):
            return False
        return (PyByteArray_AS_STRING(bits)[r >> 3] >> (r & 7)) & 1

    def __contains__(self, item):
        lvid, r = item
        return self._has(int(lvid), r)

    def __len__(self):
        return self._count

    def __iter__(self):
        cdef long long r
        cdef bytearray bits
        out = []
        for lvid in sorted(self._bits):
            bits = self._bits[lvid]
            for r in range(PyByteArray_GET_SIZE(bits) * 8):
                if (PyByteArray_AS_STRING(bits)[r >> 3] >> (r & 7)) & 1:
                    out.append((lvid, r))
        return iter(out)

    def add(self, item):
        cdef long long r
        lvid, r = item
        if r < 0:
            raise ValueError(f"negative dirty-log region {r}")
        lvid = int(lvid)
        cdef bytearray bits = self._bits.get(lvid)
        if bits is None:
            bits = self._bits[lvid] = bytearray()
        if (r >> 3) >= PyByteArray_GET_SIZE(bits):
            bits.extend(bytes((r >> 3) + 1 - PyByteArray_GET_SIZE(bits)))
        cdef char *p = PyByteArray_AS_STRING(bits)
        if not (p[r >> 3] >> (r & 7)) & 1:
            p[r >> 3] |= <char>(1 << (r & 7))
            self._count += 1

    def difference_update(self, items):
        cdef long long r
        cdef object bits
        for lvid, r in items:
            bits = self._bits.get(lvid)
            if bits is None or r < 0 or (r >> 3) >= PyByteArray_GET_SIZE(bits):
                continue
            p = PyByteArray_AS_STRING(bits)
            if (p[r >> 3] >> (r & 7)) & 1:
                p[r >> 3] &= <char>~(1 << (r & 7))
                self._count -= 1

    def covers(self, lvid, long long first, long long last):
        """Whether regions ``first``..``last`` (inclusive) of LV ``lvid`` are all in."""
        cdef long long r
        for r in range(first, last + 1):
            if not self._has(lvid, r):
                return False
        return True


cdef class InlineIO:
    """The inline read and write paths of one logical volume (see :mod:`lvm.inline`)."""

    cdef public object lv
    cdef public list queue

    def __init__(self, lv):
        self.lv = lv
        self.queue = []

    cpdef source(self, offset, length):
        """Where a read can be served now: ``(device, offset on it, length)`` on the first
        fresh copy on a usable local disk, or None."""
        cdef long long off, n, pp_size, lp, within
        lv = self.lv
        vg = lv.vg
        vg.app_ios += 1
        if not vg.online or offset < 0 or offset >= OFFSET_LIMIT or length <= 0:
            return None
        off, n = offset, length
        entry = lv.entry
        pp_size = vg.vgda.pp_size
        lp = off // pp_size
        within = off - lp * pp_size
        if within + n > pp_size or lp >= entry.lps:
            return None
        cdef dict stale = vg.vgsa.stale
        devices = vg.devices
        for m in entry.maps:
            loc = m[lp]
            if loc in stale:
                continue
            dev = devices.get(loc[0])
            if getattr(dev, "read_now", None) is not None and _usable(vg, loc[0]):
                return (dev, DATA_START + <long long>loc[1] * pp_size + within, length)
        return None

    def read(self, offset, length):
        """The data, read now, or None to let ``LogicalVolume.read`` serve."""
        src = self.source(offset, length)
        if src is None:
            return None
        try:
            return (<tuple>src)[0].read_now((<tuple>src)[1], length)
        except OSError:
            return None

    def read_many(self, list reqs):
        """:meth:`read` of each ``(offset, length)``; reads that follow each other on a disk
        in one ``preadv``."""
        cdef list out = read_batch([self.source(o, n) for o, n in reqs])
        cdef Py_ssize_t i
        for i in range(len(out)):
            if isinstance(out[i], OSError):
                out[i] = None
        return out

    def write(self, offset, data, fua, done):
        """Start the write, or return False, having done nothing, when it must take
        ``LogicalVolume.write``."""
        cdef long long off, n, pp_size, lp, within, first, last, r
        cdef Py_ssize_t copies
        lv = self.lv
        vg = lv.vg
        vg.app_ios += 1
        if fua or _ack_waits(vg) or not vg.online:
            return False
        entry = lv.entry
        if vg.async_pools and vg.async_pool_for(entry) is not None:
            return False
        n = len(data)
        if n <= 0 or offset < 0 or offset >= OFFSET_LIMIT:
            return False
        off = offset
        pp_size = vg.vgda.pp_size
        lp = off // pp_size
        within = off - lp * pp_size
        if within + n > pp_size or lp >= entry.lps:
            return False
        cdef list maps = entry.maps
        lvid = entry.lvid
        cdef list regions
        if len(maps) >= 2:  # a single copy logs no dirty regions (LogicalVolume._regions)
            first, last = off // DRL_REGION, (off + n - 1) // DRL_REGION
            if not vg.drl_durable.covers(lvid, first, last):
                return False
            regions = [(lvid, r) for r in range(first, last + 1)]
        else:
            regions = []
        cdef dict stale = vg.vgsa.stale
        devices = vg.devices
        cdef list local = [], remote = []
        for m in maps:
            loc = m[lp]
            if loc in stale or not _usable(vg, loc[0]):
                return False
            dev = devices[loc[0]]
            pos = DATA_START + <long long>loc[1] * pp_size + within  # layout.pp_offset
            if getattr(dev, "write_now", None) is not None:
                local.append((loc, dev, pos))
            elif getattr(dev, "accepts", None) is not None and dev.accepts(n):
                remote.append((loc, dev, pos))
            else:
                return False
        held = lv.lock.try_acquire(off, off + n)
        if held is None:
            return False
        _drl_hold(vg, regions)
        cdef InlineWrite op = InlineWrite(lv, held, regions, done, lp, within, n,
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

    def write_queued(self):
        """Write the local copies queued in this loop iteration: a run of writes that follow
        each other on one disk (a sequential stream) in one ``pwritev``."""
        cdef list queue = self.queue
        cdef Py_ssize_t i = 0, j, k, n = len(queue)
        cdef tuple q
        self.queue = []
        while i < n:
            q = queue[i]
            dev, pos = q[2], q[3]
            end = pos + len(q[4])
            j = i + 1
            if hasattr(dev, "writev_now"):
                while (j < n and j - i < WRITEV_MAX and (<tuple>queue[j])[2] is dev
                       and (<tuple>queue[j])[3] == end):
                    end += len((<tuple>queue[j])[4])
                    j += 1
            try:
                if j - i == 1:
                    dev.write_now(pos, q[4])
                else:
                    dev.writev_now(pos, [(<tuple>queue[k])[4] for k in range(i, j)])
            except OSError as e:
                failure = e
            else:
                failure = None
            for k in range(i, j):
                q = queue[k]
                (<InlineWrite>q[0]).copy_done(q[1], failure)
            i = j


cdef class InlineWrite:
    """One write on the inline path: counts the copies still to answer."""

    cdef public object lv, entry, done
    cdef public list regions, locs
    cdef public dict failures
    cdef public long long lp, within, n
    cdef public Py_ssize_t pending

    def __init__(self, lv, entry, list regions, done, long long lp, long long within,
                 long long n, Py_ssize_t pending):
        self.lv, self.entry, self.regions, self.done = lv, entry, regions, done
        self.lp, self.within, self.n, self.pending = lp, within, n, pending
        self.locs = []
        self.failures = {}

    cpdef copy_done(self, loc, exc):
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
        if self.failures or _ack_waits(vg):
            task = asyncio.get_running_loop().create_task(lv._finish_inline(self))
            lv.tasks.add(task)
            task.add_done_callback(lv.tasks.discard)
            return
        _drl_leave(vg, self.regions)
        lv.lock.release(self.entry)
        self.done(None)
