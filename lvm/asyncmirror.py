"""Asynchronous mirror pools at run time: the I/O cache, the sender, and the states a pool
goes through (issue 14).

A write to an LV with a copy in an *active* asynchronous pool is written to the LV's other
(local) copies and appended to the pool's cache log (lvm/aiocache.py, in an ``aio_cache``
LV); it is acknowledged when both are done. A FLUSH makes the local copies and the cache
durable and starts a new epoch. The sender streams the durable records, in order, to the
remote copy (epoch by epoch: a remote flush ends each one, so the remote copy's durable
state is always the local state after a whole number of epochs plus part of the next), and
releases them once the remote site has flushed them.

States (one table, :data:`TRANSITIONS`):

* ``active``: the remote copy is written by the sender only.
* ``draining`` (``chmp -S``): new writes wait until the sender has emptied the cache; then
  the pool is synchronous.
* ``fallback``: the remote site was down longer than the cache could hold (or the cache
  failed). Every range the cache still held is marked stale on the remote copy and the
  records are dropped; the copy is then written synchronously (stale while its PVs are
  missing) until a resync leaves no stale partition on it, and the pool is active again.
  While it is in fallback the remote copy is not a consistent point in time.
* ``inactive``: the cache LV has no usable copy here (at the disaster-recovery site after a
  failover): the pool's copies are ordinary synchronous copies.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from itertools import groupby

import structlog

from lvm import pools
from lvm.aiocache import HEADER_BLOCK, Appended, RecordInfo
from lvm.aiocache_io import CacheLogDevice
from lvm.layout import pp_offset
from lvm.metadata import DRL_REGION, LVEntry, chunks_of
from lvm.vg import VolumeGroup
from rpv.client.device import ignore_outcome
from rpv.errors import CommandError

log = structlog.get_logger("lvm")

ACTIVE, DRAINING, FALLBACK, INACTIVE = "active", "draining", "fallback", "inactive"

TRANSITIONS = {
    (ACTIVE, "drain"): DRAINING,
    (ACTIVE, "overflow"): FALLBACK,
    (DRAINING, "overflow"): FALLBACK,
    (DRAINING, "abort"): ACTIVE,  # the remote site went away during chmp -S (no -f)
    (FALLBACK, "caught_up"): ACTIVE,
    (DRAINING, "drained"): INACTIVE,
    (FALLBACK, "drain"): INACTIVE,  # nothing is cached in fallback: sync at once
}

SEND_WINDOW = 32 << 20  # bytes the sender keeps in flight to the remote site, at most
SEND_BURST = 32  # records the sender submits before it lets the application's I/O run
KEEP_PAYLOADS = 64 << 20  # recent payloads kept in memory for the sender (else read back)
CHECKPOINT_SECONDS = 1.0  # how often the sender persists the cache's tail, at most
RETRY_SECONDS = 1.0  # how often a sender whose remote PVs are missing looks again
REPLAY_TRIES = 3  # sends a varyon replay tries before it turns the cache into stale marks


class CacheLV:
    """The aio_cache LV as the cache log's device: reads and writes through the LV (its
    local copies), and a flush of its own PVs only (never the remote site's)."""

    def __init__(self, group: VolumeGroup, lv):
        self.group, self.lv = group, lv
        self.name = lv.name

    @property
    def size(self) -> int:
        return self.lv.size

    async def read(self, offset: int, length: int) -> bytes:
        return await self.lv.read(offset, length)

    async def write(self, offset: int, data, fua: bool = False) -> None:
        """A record within one partition goes the LV's inline way (no range-lock wait, no
        task: the cache LV has one copy and logs no dirty regions); anything else, or what
        the inline path refuses, the general way."""
        if not fua:
            done = asyncio.get_running_loop().create_future()
            if self.lv.write_inline(offset, data, False, partial(_settle, done)):
                await done
                return
        await self.lv.write(offset, bytes(data), fua)

    async def flush(self) -> None:
        pvs = {pv for m in self.lv.entry.maps for pv, _ in m if self.group.usable(pv)}
        ok = await asyncio.gather(*(self.group.flush_pv(i) for i in pvs))
        await self.group.settle()
        if not all(ok):
            raise OSError(errno.EIO, f"{self.name}: flush of the I/O cache failed")


class AsyncPool:
    """One asynchronous mirror pool of a varied-on VG."""

    def __init__(self, group: VolumeGroup, name: str, cache: CacheLogDevice | None,
                 state: str = ACTIVE, now: Callable[[], float] = time.monotonic,
                 resync: Callable[[], None] | None = None):
        self.group, self.name, self.cache, self.state = group, name, cache, state
        self.members = frozenset(pools.pools_of(group.vgda).get(name, []))
        self.now = now
        self.resync = resync  # starts the VG's background resync (after a fallback)
        self.wake = asyncio.Event()  # new records, a flush, a PV back
        self.space = asyncio.Event()  # records released, or the state changed
        self.ordered: list[tuple[int, int, asyncio.Future]] = []  # heap: writers waiting for
        # every append up to a seq to be complete (in-order acknowledgement)
        self.checkpointed_at = 0.0  # when the cache's tail was last persisted by the sender
        self.restarts = 0  # a member's server answered as a new instance
        self.writers = 0  # writes between "defer" and "appended"
        self.idle = asyncio.Event()
        self.idle.set()
        self.sending = asyncio.Lock()  # one sender pass, or one fallback, at a time
        self.broken = False  # an append failed: the log is reformatted before reuse
        self.appended_at: deque[tuple[int, float]] = deque()  # (seq, when) of pending records
        self.payloads: dict[int, memoryview] = {}  # seq -> payload, within KEEP_PAYLOADS
        self.kept = 0  # bytes in ``payloads``
        self.kept_seqs: deque[int] = deque()  # their seqs, in the order they were kept
        self.stats = {"writes": 0, "bytes": 0, "sent_writes": 0, "sent_bytes": 0,
                      "hwm_hits": 0, "waits": 0, "fallbacks": 0}
        self.at_hwm = False
        self.drain_forced = False
        self.task: asyncio.Task | None = None
        self.falling: asyncio.Task | None = None  # the fallback in progress

    # -- state ---------------------------------------------------------------------------------
    def event(self, what: str) -> None:
        new = TRANSITIONS.get((self.state, what))
        if new is None:
            raise RuntimeError(f"mirror pool {self.name}: {what} in state {self.state}")
        log.info("lvm_async_state", vg=self.group.name, pool=self.name, old=self.state,
                 on=what, new=new)
        self.state = new
        self.wake.set()
        self.space.set()

    def defers(self, index: int) -> bool:
        """Copies on PV ``index`` are written by the sender, not by the write path."""
        return self.state in (ACTIVE, DRAINING) and index in self.members

    def lags(self, index: int, lvid: int, lp: int) -> bool:
        """The copy of LP ``lp`` of LV ``lvid`` on PV ``index`` misses writes the cache still
        holds (not a read source). The records are looked at only when the cache is not
        empty, which matters only when no local copy can serve the read."""
        if not self.defers(index) or self.cache is None or not self.cache.log.pending_bytes:
            return False
        pp = self.group.vgda.pp_size
        start, end = lp * pp, (lp + 1) * pp
        return self.writers > 0 or any(
            r.lvid == lvid and r.offset < end and r.end > start for r in self.cache.log.pending())

    @property
    def hwm(self) -> int:
        return int(self.group.vgda.async_pools.get(self.name, {}).get("hwm", 100))

    def copy_of(self, entry: LVEntry) -> int | None:
        return next((c for c, p in enumerate(entry.pools) if p == self.name), None)

    def remote_usable(self) -> bool:
        return all(self.group.usable(i) for i in self.members)

    def _caching(self) -> bool:
        return self.state in (ACTIVE, DRAINING) and not self.broken

    # -- the write path ------------------------------------------------------------------------
    async def admit(self) -> bool:
        """Before a write to an LV with a copy in this pool: wait while the pool drains;
        True when the write is to be deferred (logged), False to write it synchronously."""
        while self.state == DRAINING:
            self.space.clear()
            await self.space.wait()
        if self.state != ACTIVE or self.broken:
            return False
        self.writers += 1
        self.idle.clear()
        return True

    async def log_write(self, lvid: int, offset: int, data, fua: bool = False) -> bool:
        """Append a deferred write to the cache (after :meth:`admit` said so) and return
        once it and every earlier append are complete (so a FLUSH, and a crash replay, never
        find a later write without an earlier one); with ``fua`` also durable. Waits at the
        high-water mark and when the cache is full (back-pressure). False when the pool fell
        back instead: the caller marks the copy stale for this write."""
        try:
            if not await self._below_hwm():
                return False
            view = memoryview(data)
            step = self.cache.log.max_payload
            last = 0
            for start in range(0, len(view), step):
                seq = await self._append(lvid, offset + start, view[start:start + step])
                if seq is None:
                    return False
                last = seq
            if self.cache.log.flush_mark() < last:  # earlier appends still being written
                fut = asyncio.get_running_loop().create_future()
                heapq.heappush(self.ordered, (last, id(fut), fut))
                await fut
                if self.broken:
                    return False
            if fua:
                await self.cache.flush()
            self.stats["writes"] += 1
            self.stats["bytes"] += len(view)
            self.wake.set()
            return True
        finally:
            self.writers -= 1
            if not self.writers:
                self.idle.set()

    async def _append(self, lvid: int, offset: int, data) -> int | None:
        """One record: reserved when there is room (else wait, or fall back with the remote
        site down), then written. None when the pool stopped caching meanwhile."""
        log_ = self.cache.log
        while True:
            if not self._caching():
                return None
            result = log_.append(lvid, offset, data)
            if isinstance(result, Appended):
                break
            if result.reclaimable:
                await self.cache.checkpoint()
                continue
            if not await self._wait_for_space("is full"):
                return None
        try:
            for off, buf in result.writes:
                await self.cache.dev.write(off, buf)
        except BaseException as e:  # the reserved record may be torn: never send it
            self.broken = True
            self._wake_ordered()  # writers waiting for this record's completion give up
            log.error("lvm_async_cache_write_failed", vg=self.group.name, pool=self.name,
                      error=repr(e))
            self.overflow_soon(f"the I/O cache cannot be written: {e!r}")
            raise
        log_.write_done(result.seq)
        self.appended_at.append((result.seq, self.now()))
        if self.ordered:
            self._wake_ordered()
        if self.kept + len(data) <= KEEP_PAYLOADS:  # the sender need not read it back
            image = result.writes[-1].data
            self.payloads[result.seq] = memoryview(image)[HEADER_BLOCK:HEADER_BLOCK + len(data)]
            self.kept += len(data)
            self.kept_seqs.append(result.seq)
        return result.seq

    def _wake_ordered(self) -> None:
        """Writers whose appends, and every earlier one, are complete go on (all of them
        when the cache broke)."""
        mark = self.cache.log.flush_mark()
        while self.ordered and (self.ordered[0][0] <= mark or self.broken):
            fut = heapq.heappop(self.ordered)[2]
            if not fut.done():
                fut.set_result(None)

    async def _below_hwm(self) -> bool:
        log_ = self.cache.log
        while log_.above_hwm(self.hwm) and self._caching():
            if log_.reclaimable_bytes:  # released space the sender has not yet checkpointed
                await self.cache.checkpoint()
                continue
            if not self.at_hwm:
                self.at_hwm = True
                self.stats["hwm_hits"] += 1
                log.warning("lvm_async_hwm", vg=self.group.name, pool=self.name,
                            fill=round(log_.fill_percent, 1), hwm=self.hwm)
            if not await self._wait_for_space("reached its high-water mark"):
                return False
        self.at_hwm = False
        return self._caching()

    async def _wait_for_space(self, why: str) -> bool:
        """Back-pressure: wait until the sender frees space; False, falling back, when the
        remote site is unreachable and nothing would free it."""
        if not self.remote_usable():
            self.overflow_soon(f"the I/O cache {why} while the remote site is unreachable")
            return False
        self.stats["waits"] += 1
        self.space.clear()
        await self.space.wait()
        return True

    def barrier(self) -> int:
        """A FLUSH arrived: later appends join a new epoch. Returns the flush mark."""
        self.cache.barrier()
        return self.cache.log.flush_mark()

    def flushed(self, mark: int) -> None:
        self.cache.log.flush_done(mark)
        self.wake.set()

    # -- the sender ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.task is None and self.cache is not None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the sender; a fallback in progress is finished first (its stale marks are
        what keeps the remote copy honest)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self.falling is not None:
            await asyncio.gather(self.falling, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                progressed = await self.send_once()
                if self.state == ACTIVE and self._remote_stale():
                    await self.overflow("the remote copy has stale partitions")
                if self.state == FALLBACK:
                    await self.catch_up_check()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - logged; the sender must not die silently
                log.error("lvm_async_sender_error", vg=self.group.name, pool=self.name,
                          error=repr(e))
                progressed = False
            if not progressed:
                self.wake.clear()
                try:
                    async with asyncio.timeout(RETRY_SECONDS):
                        await self.wake.wait()
                except TimeoutError:
                    pass

    @property
    def consistent(self) -> bool:
        """The remote copy is a point in time of the local one (not falling back, nothing
        stale on it)."""
        return self.state != FALLBACK and not self._remote_stale()

    def _remote_stale(self) -> bool:
        return any(loc[0] in self.members for loc in self.group.vgsa.stale)

    async def send_once(self) -> bool:
        """Send what is sendable, epoch by epoch; True if anything was released."""
        async with self.sending:
            return await self._send_pass()

    async def _send_pass(self) -> bool:
        if not self._caching() or not self.group.online:
            return False
        log_ = self.cache.log
        records = log_.sendable()
        if not records:
            if log_.pending() and log_.durable_seq < log_.flush_mark():
                before = log_.durable_seq
                await self.cache.flush()  # make appended records sendable (group commit)
                return log_.durable_seq > before
            if self.state == DRAINING and not log_.pending():
                await self.cache.checkpoint()  # leave an empty log behind
                self.event("drained")
            return False
        if not self.remote_usable():
            if self.state == DRAINING:
                if not self.drain_forced:
                    self.event("abort")  # chmp -S fails: the remote site went away
                    return False
                self.overflow_soon("the remote site is unreachable (chmp -S -f)")
            elif self.at_hwm:
                self.overflow_soon("the remote site is unreachable")
            return False
        restarts = self.restarts
        released = False
        for epoch in _by_epoch(records):
            if not await self._stream(epoch):
                return released
            if not await self._flush_remote() or self.restarts != restarts:
                return released  # a server restarted: resend from the tail
            await self.cache.release(epoch[-1].seq, persist=self._checkpoint_due())
            self._released(epoch[-1].seq)
            released = True
        return released

    def _checkpoint_due(self) -> bool:
        """Persist the cache's tail after a release only now and then: a lost checkpoint
        costs only a resend of records the remote site already has (in order, so it ends
        where it was). Space that waits for a checkpoint is reclaimed when writers need it."""
        log_ = self.cache.log
        now = self.now()
        if now - self.checkpointed_at < CHECKPOINT_SECONDS and \
                log_.reclaimable_bytes < log_.area_size // 4:
            return False
        self.checkpointed_at = now
        return True

    async def _stream(self, records: list[RecordInfo]) -> bool:
        """Send one epoch's records in seq order with many in flight; False on a failure.

        A server applies one connection's writes in arrival order, so the remote copy holds
        a prefix of this stream at every instant. What would break that waits until the
        writes in flight are confirmed: a record for another remote PV than theirs, one that
        overlaps one of them, one that spans partitions (sent alone), a full window."""
        flight: deque[tuple[list, set, RecordInfo]] = deque()  # oldest first
        busy: set[tuple[int, int]] = set()  # (PV, 4 KiB block) written by records in flight
        nbytes = 0
        try:
            for n, rec in enumerate(records, 1):
                if not n % SEND_BURST:
                    # a backlog (thousands of records after a long round trip) would
                    # otherwise be submitted in one go while the application's writes wait
                    await asyncio.sleep(0)
                if not self._caching():
                    return False
                writes = await self._targets(rec)
                if not writes:
                    continue  # the LV (or its copy in this pool) was removed since
                keys = {(i, b) for i, pos, view in writes
                        for b in range(pos >> 12, ((pos + len(view) - 1) >> 12) + 1)}
                solo = len(writes) > 1
                while flight and (solo or flight[0][0][0][0] != writes[0][0]
                                  or nbytes >= SEND_WINDOW or not busy.isdisjoint(keys)):
                    futs, done_keys, done = flight.popleft()
                    if not await self._confirmed(futs, done):
                        return False
                    busy -= done_keys
                    nbytes -= done.length
                futs = [(i, self._submit(i, pos, view)) for i, pos, view in writes]
                if solo and not await self._confirmed(futs, rec):
                    return False
                if not solo:
                    flight.append((futs, keys, rec))
                    busy |= keys
                    nbytes += rec.length
            while flight:
                futs, _, done = flight.popleft()
                if not await self._confirmed(futs, done):
                    return False
            return True
        finally:
            for futs, _, _ in flight:  # abandoned on a failure: their outcome is not needed
                for _, fut in futs:
                    fut.add_done_callback(ignore_outcome)

    async def _targets(self, rec: RecordInfo) -> list[tuple[int, int, memoryview]] | None:
        """Where the remote copy of a record goes: (PV index, byte position, payload)."""
        group = self.group
        vol = _lv_by_id(group, rec.lvid)
        copy = self.copy_of(vol.entry) if vol is not None else None
        if copy is None:
            return None
        view = self.payloads.get(rec.seq)
        if view is None:
            view = memoryview(await self.cache.read_payload(rec))
        out = []
        for lp, within, start, n in vol.segments(rec.offset, rec.length):
            index, pp = vol.entry.maps[copy][lp]
            if group.devices.get(index) is None or not group.usable(index):
                raise OSError(errno.EIO, f"{group.pv_name(index)} is not usable")
            out.append((index, pp_offset(pp, group.vgda.pp_size) + within, view[start:start + n]))
        return out

    def _submit(self, index: int, pos: int, view) -> asyncio.Future:
        """Start one write now, applied in call order: RPV clients queue it without a task,
        on the one connection that keeps the order when they have several paths."""
        dev = self.group.devices[index]
        submit = getattr(dev, "submit_write", None)
        return submit(pos, view, ordered=True) if submit is not None else asyncio.ensure_future(
            dev.write(pos, view))

    async def _confirmed(self, futs: list, rec: RecordInfo) -> bool:
        ok = True
        for index, fut in futs:
            try:
                await fut
            except OSError as e:
                self.group.pv_failed(index, f"asynchronous mirror write failed: {e}")
                ok = False
        if ok:
            self.stats["sent_writes"] += 1
            self.stats["sent_bytes"] += rec.length
            self.last_contact = self.now()
        return ok

    async def _flush_remote(self) -> bool:
        ok = await asyncio.gather(*(self.group.flush_pv(i) for i in self.members
                                    if self.group.usable(i)))
        await self.group.settle()
        return all(ok) and self.remote_usable()

    def _released(self, seq: int) -> None:
        while self.appended_at and self.appended_at[0][0] <= seq:
            self.appended_at.popleft()
        while self.kept_seqs and self.kept_seqs[0] <= seq:
            self.kept -= len(self.payloads.pop(self.kept_seqs.popleft()))
        self.space.set()

    # -- falling back, catching up, draining ---------------------------------------------------
    def overflow_soon(self, reason: str) -> None:
        """Fall back from a writer or the sender, which must not wait for it: the state
        changes now; the stale marking runs in its own task (see :meth:`overflow`)."""
        if self.state not in (ACTIVE, DRAINING):
            return
        self.event("overflow")
        self.falling = asyncio.get_running_loop().create_task(self._fall_back(reason))
        self.group.background.add(self.falling)
        self.falling.add_done_callback(self.group.background.discard)

    async def overflow(self, reason: str) -> None:
        """The remote copy cannot be kept as a consistent lagging copy: mark every range
        still in the cache stale on it (durably), drop the records, write it synchronously
        from now on (stale while its PVs are missing) until a resync catches it up."""
        self.overflow_soon(reason)
        if self.falling is not None:
            await asyncio.shield(self.falling)

    async def _fall_back(self, reason: str) -> None:
        await self.idle.wait()  # writes already admitted finish (or give up) their appends
        async with self.sending:  # and no sender pass is half way through a batch
            group = self.group
            pending = self.cache.log.pending()
            nbytes = sum(r.length for r in pending)
            for rec in pending:
                self.mark_remote_stale(rec.lvid, rec.offset, rec.length)
            await group.settle()
            if pending:
                try:
                    await self.cache.release(pending[-1].seq)
                except OSError as e:  # the cache LV failed: its records are stale marks now
                    log.warning("lvm_async_release_failed", pool=self.name, error=str(e))
                self._released(pending[-1].seq)
        self.stats["fallbacks"] += 1
        log.error("lvm_async_fallback", vg=group.name, pool=self.name, reason=reason,
                  writes=len(pending), bytes=nbytes)
        group._log("LVM_AIO_CACHE_FULL", group.name,
                   f"mirror pool {self.name}: {reason}; {len(pending)} cached writes "
                   f"({nbytes} bytes) are now stale partitions to resynchronize")
        if self.resync is not None and self.remote_usable():
            self.resync()

    def mark_remote_stale(self, lvid: int, offset: int, length: int) -> None:
        vol = _lv_by_id(self.group, lvid)
        copy = self.copy_of(vol.entry) if vol is not None else None
        if copy is None:
            return
        for lp, within, _, n in vol.segments(offset, length):
            self.group.mark_stale(vol.entry.maps[copy][lp], chunks_of(within, n))

    async def catch_up_check(self) -> None:
        """Back to active once the fallback is done, the remote PVs answer and no copy of
        the VG is stale (a stale local copy would have no source while the cache lags);
        a cache that failed is formatted again first."""
        if self.state != FALLBACK or not self.remote_usable() or self.group.vgsa.stale:
            return
        if self.falling is not None and not self.falling.done():
            return
        if self.broken:
            try:
                self.cache = await CacheLogDevice.format(self.cache.dev)
            except (OSError, ValueError) as e:
                log.warning("lvm_async_cache_reformat_failed", pool=self.name, error=str(e))
                return
            self.broken = False
            self.appended_at.clear()
            self.payloads.clear()  # the new log numbers its records from the start again
            self.kept_seqs.clear()
            self.kept = 0
        self.event("caught_up")

    async def drain(self, force: bool) -> None:
        """chmp -S: stop caching; return once the remote copy has every cached write (or,
        with ``force`` and the remote site down, once they are stale partitions). Raises
        OSError when the remote site is (or goes) down without ``force``."""
        if self.state == INACTIVE:
            return
        if self.state == FALLBACK:
            if self.falling is not None:
                await asyncio.shield(self.falling)
            self.event("drain")
            return
        if self.state == ACTIVE:
            if self.cache.log.pending() and not self.remote_usable() and not force:
                raise OSError(errno.EHOSTDOWN, "the remote site is unreachable")
            self.drain_forced = force
            self.event("drain")
        if self.task is None:
            self.start()
        while self.state == DRAINING:
            self.wake.set()
            self.space.clear()
            await self.space.wait()  # set by every release and every state change
        if self.state == ACTIVE:  # aborted: the remote site went away
            raise OSError(errno.EHOSTDOWN, "the remote site became unreachable")
        if self.state == FALLBACK:  # forced with the remote site down: stale, then sync
            if self.falling is not None:
                await asyncio.shield(self.falling)
            self.event("drain")

    # -- listing -------------------------------------------------------------------------------
    def describe(self) -> dict:
        log_ = self.cache.log if self.cache is not None else None
        pending = log_.pending() if log_ is not None else []
        oldest = self.appended_at[0][1] if self.appended_at else None
        stale = sum(1 for loc in self.group.vgsa.stale if loc[0] in self.members)
        return {
            "state": self.state,
            "cache_lv": self.group.vgda.async_pools.get(self.name, {}).get("cache_lv"),
            "hwm": self.hwm,
            "cache_valid": log_ is not None,
            "cache_empty": not pending,
            "cache_fill_percent": round(log_.fill_percent, 2) if log_ is not None else 0.0,
            "cache_size": log_.area_size if log_ is not None else 0,
            "pending_writes": len(pending),
            "pending_bytes": sum(r.length for r in pending),
            "lag_seconds": round(self.now() - oldest, 3) if oldest is not None else 0.0,
            "consistent": self.consistent,
            "stale_pps": stale,
            **self.stats}


def _by_epoch(records: list[RecordInfo]) -> list[list[RecordInfo]]:
    """Records (in seq order) cut into epochs, in order."""
    return [list(g) for _, g in groupby(records, key=lambda r: r.epoch)]


class AsyncMirrors:
    """The asynchronous pools of the varied-on VGs: opened at varyon (the cache replayed
    before dirty-region recovery), started by ``chmp -A``, drained by ``chmp -S``, stopped at
    varyoff."""

    def __init__(self, core):
        self.core = core  # lvm.manager.LVMManager

    async def prepare(self, group: VolumeGroup, drls: dict | None = None) -> None:
        """At varyon, before dirty-region recovery: open each pool's cache. Records left by
        a crash are applied again to the local copies and sent to the remote copy (or, with
        the remote site down, become stale partitions). A varyon at another site than the
        cache's (a failover) records in the VGDA that the cache is superseded; the cache's
        site then discards what it still held and resynchronizes those ranges from the
        other site's copy, never merging them. ``drls``: the dirty-region log each PV holds
        (pvid -> (seq, log)), for the writes that were in flight when the cache's site
        stopped."""
        changed = False
        for name in list(group.vgda.async_pools):
            pool, flagged = await self._open(group, name, drls or {})
            group.async_pools[name] = pool
            changed |= flagged
        if changed:
            await group.write_vgda()

    def started(self, group: VolumeGroup) -> None:
        """After varyon (dirty regions recovered): the senders run."""
        for pool in group.async_pools.values():
            pool.start()

    async def start(self, group: VolumeGroup, name: str) -> None:
        pool = group.async_pools.get(name)
        if pool is None or pool.state == INACTIVE:
            pool, _ = await self._open(group, name)
            group.async_pools[name] = pool
        if pool.state == INACTIVE:
            raise OSError(errno.EIO, f"the I/O cache of mirror pool {name} is not usable")
        pool.start()

    async def stop(self, group: VolumeGroup, name: str, force: bool) -> None:
        pool = group.async_pools.get(name)
        if pool is None:
            return
        try:
            await pool.drain(force)
        except OSError as e:
            pending = len(pool.cache.log.pending()) if pool.cache else 0
            raise CommandError(f"chmp: mirror pool {name} still holds {pending} cached writes "
                               f"and {e.strerror or e}; bring the remote site back, or use "
                               f"-f to turn the cached writes into stale partitions") from None
        await pool.stop()
        del group.async_pools[name]

    async def close(self, group: VolumeGroup, timeout: float = 120.0) -> None:
        """At varyoff: send what the cache holds while the remote site answers (a planned
        failover must find every write there), then stop the senders; what could not be
        sent stays in the cache and is replayed at the next varyon here."""
        for pool in group.async_pools.values():
            await pool.stop()  # a fallback in progress finishes first
            if pool.state == ACTIVE and pool.cache is not None:
                try:
                    await asyncio.wait_for(_send_all(pool), timeout)
                except (TimeoutError, OSError) as e:
                    log.warning("lvm_async_varyoff_left", vg=group.name, pool=pool.name,
                                writes=len(pool.cache.log.pending()), error=repr(e))
            if pool.cache is not None:
                try:
                    await pool.cache.checkpoint()
                except OSError as e:
                    log.warning("lvm_async_checkpoint_failed", vg=group.name, pool=pool.name,
                                error=str(e))
        group.async_pools.clear()

    def stats(self) -> list[dict]:
        """rpvstat -A, gmvgstat and the metrics: one row per asynchronous pool."""
        return [{"vg": g.name, "pool": p.name, **p.describe()}
                for g in list(self.core.vgs.values()) for p in g.async_pools.values()]

    def describe(self, group: VolumeGroup, name: str) -> dict:
        pool = group.async_pools.get(name)
        if pool is None:
            return {"state": INACTIVE, "cache_valid": False}
        return pool.describe()

    async def _open(self, group: VolumeGroup, name: str, drls: dict | None = None
                    ) -> tuple[AsyncPool, bool]:
        """The pool, and whether its VGDA entry changed (superseded here, or cleared)."""
        cfg = group.vgda.async_pools[name]
        vol = group.lvs.get(cfg.get("cache_lv", ""))
        here = self.core.pvs.site() or "local"
        if vol is not None and not self._cache_is_here(group, vol, here):
            # another site runs the VG (a failover): the cache's writes never reached us
            flagged = cfg.get("superseded_by") != here
            cfg["superseded_by"] = here
            log.warning("lvm_async_cache_elsewhere", vg=group.name, pool=name)
            return AsyncPool(group, name, None, INACTIVE), flagged
        if vol is None or not _readable(group, vol):
            log.warning("lvm_async_cache_unusable", vg=group.name, pool=name,
                        cache_lv=cfg.get("cache_lv"))
            return AsyncPool(group, name, None, INACTIVE), False
        dev = CacheLV(group, vol)
        try:
            cache, _ = await CacheLogDevice.open(dev)
        except ValueError:
            cache = await CacheLogDevice.format(dev)
        pool = AsyncPool(group, name, cache,
                         resync=lambda: self.core.resyncs.start_background(group))
        if pool._remote_stale():  # a resync must catch the remote copy up first
            pool.state = FALLBACK
        records = cache.log.pending()
        other = cfg.pop("superseded_by", None)
        if other:
            # this site's own last dirty-region log (on the cache's PVs): the writes in
            # flight when it stopped, whose cache records may be torn
            own = [d for pvid, d in (drls or {}).items()
                   if (pv := group.vgda.pv_by_pvid(pvid)) is not None
                   and any(pv.index == i for m in vol.entry.maps for i, _ in m)]
            regions = max(own, key=lambda r: r[0])[1].get("regions", []) if own else []
            await self._discard(pool, records, regions, other)
        elif records:
            await self._replay(pool, records)
        return pool, other is not None

    def _cache_is_here(self, group: VolumeGroup, vol, here: str) -> bool:
        sites = self.core.pool.sites(group.vgda)
        return all(sites.get(pv) == here for m in vol.entry.maps for pv, _ in m)

    async def _replay(self, pool: AsyncPool, records: list[RecordInfo]) -> None:
        group = pool.group
        nbytes = sum(r.length for r in records)
        log.warning("lvm_async_replay", vg=group.name, pool=pool.name, writes=len(records),
                    bytes=nbytes)
        for rec in records:  # the local copies get every durable record again, in order
            await _redo_local(pool, rec)
        failures = 0
        while pool.cache.log.pending() and pool.state == ACTIVE:
            if pool.remote_usable() and await pool.send_once():
                failures = 0
                continue
            failures += 1
            if failures >= REPLAY_TRIES or not pool.remote_usable():
                await pool.overflow("the remote site is unreachable while the I/O cache is "
                                    "replayed at varyon")
            else:
                await asyncio.sleep(RETRY_SECONDS)

    async def _discard(self, pool: AsyncPool, records: list[RecordInfo], regions: list,
                       other: str) -> None:
        """Another site ran the VG since: what this site's copies hold beyond the remote
        copy (the cached writes, and the dirty regions of the writes in flight when it
        stopped) is marked stale here, to be copied back from the other site's copy."""
        group = pool.group
        nbytes = sum(r.length for r in records)
        ranges = [(r.lvid, r.offset, r.length) for r in records]
        ranges += [(lvid, region * DRL_REGION, DRL_REGION) for lvid, region in regions]
        if not ranges:
            return
        for lvid, offset, length in ranges:
            vol = _lv_by_id(group, lvid)
            if vol is None or pool.copy_of(vol.entry) is None:
                continue
            length = max(0, min(length, vol.size - offset))
            for c, m in enumerate(vol.entry.maps):
                if c == pool.copy_of(vol.entry):
                    continue
                for lp, within, _, n in vol.segments(offset, length):
                    group.mark_stale(m[lp], chunks_of(within, n))
        await group.settle()
        if records:
            await pool.cache.release(records[-1].seq)
        log.error("lvm_async_discarded", vg=group.name, pool=pool.name, writes=len(records),
                  bytes=nbytes, regions=len(regions), site=other)
        group._log("LVM_AIO_DISCARD", group.name,
                   f"mirror pool {pool.name}: {len(records)} writes ({nbytes} bytes) never "
                   f"reached site {other}, which ran the volume group since, and "
                   f"{len(regions)} dirty regions had writes in flight; they are discarded "
                   f"here and resynchronized from {other}")


async def _send_all(pool: AsyncPool) -> None:
    log_ = pool.cache.log
    while log_.pending() and pool.remote_usable() and pool.state == ACTIVE:
        if not await pool.send_once():
            await asyncio.sleep(RETRY_SECONDS / 10)  # a failed pass: do not spin
    if log_.pending():
        raise OSError(errno.EHOSTDOWN, f"{len(log_.pending())} writes are still cached")


def _lv_by_id(group: VolumeGroup, lvid: int):
    return next((v for v in group.lvs.values() if v.entry.lvid == lvid), None)


def _readable(group: VolumeGroup, vol) -> bool:
    """Every LP of the LV has a fresh copy on a usable PV."""
    return all(any(m[lp] not in group.vgsa.stale and group.usable(m[lp][0])
                   for m in vol.entry.maps) for lp in range(vol.entry.lps))


async def _redo_local(pool: AsyncPool, rec: RecordInfo) -> None:
    group = pool.group
    vol = _lv_by_id(group, rec.lvid)
    if vol is None:
        return
    data = memoryview(await pool.cache.read_payload(rec))
    skip = pool.copy_of(vol.entry)
    for lp, within, start, n in vol.segments(rec.offset, rec.length):
        for c, m in enumerate(vol.entry.maps):
            loc = m[lp]
            if c == skip or loc in group.vgsa.stale or not group.usable(loc[0]):
                continue
            pos = pp_offset(loc[1], group.vgda.pp_size) + within
            try:
                await group.devices[loc[0]].write(pos, data[start:start + n])
            except OSError as e:
                group.pv_failed(loc[0], f"write failed: {e}")
                group.mark_stale(loc, chunks_of(within, n))


def _settle(fut: asyncio.Future, failure: BaseException | None, kept: bool = False) -> None:
    """``done`` of an inline write, for a writer that awaits ``fut``."""
    if fut.done():
        return
    if failure is None:
        fut.set_result(None)
    else:
        fut.set_exception(failure)
