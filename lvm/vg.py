"""A varied-on volume group: metadata on its PVs, PV failure handling, quorum, resync.

The VG keeps the descriptor (VGDA), the status area (VGSA) and the dirty-region log (DRL) in
memory and writes each, as a new generation, to every usable PV. A PV whose I/O fails is
marked missing at once: later I/O skips it without waiting, and every partition on it that
misses a write is marked stale — durably, in the VGSA on the remaining PVs, before that write
is acknowledged.

Two rules keep acknowledgements honest when machines, not only processes, fail:

* No acknowledgement while the VGSA in memory is ahead of the VGSA on disk: every change
  (a stale mark, a PV state, a generation's "written" mark) bumps a version, and an I/O path
  that acknowledges first waits until a commit covering that version has completed.
* Each PV remembers what was written to it since its last completed flush. When the PV stops
  being usable, or its server turns out to be a new instance, those regions may have been
  lost with a page cache: they are marked stale, like the writes the PV missed.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable

import structlog

from lvm.commit import GroupCommit
from lvm.layout import Kind
from lvm.metadata import (
    CHUNK,
    DRL_REGION,
    MAX_CHUNKS_PER_PP,
    PV_ACTIVE,
    PV_MISSING,
    VGDA,
    VGSA,
    Loc,
)
from lvm.policy import has_quorum
from lvm.records import write_record
from lvm.throttle import (
    DEFAULT_CEILING,
    DEFAULT_FLOOR,
    DEFAULT_IMPACT,
    AdaptiveRate,
    MiB,
    RateSettings,
)
from rpv import speedups
from rpv.blockdev import BlockDevice
from rpv.instance import boot_hash, boot_of

log = structlog.get_logger("lvm")
INLINE = speedups.pick("lvm.inline", "lvm._inline")  # the inline write path (compiled twin)

DRL_MAX_ACTIVE = 256
# partitions of one PV that may hold writes no flush covered yet; beyond, a flush of that PV
# starts in the background (like the kernel's writeback), which bounds both this memory and
# what a failure of the PV can cost in resync
UNFLUSHED_MAX_PPS = 1024
_NONE = object()


class VGClosed(OSError):
    pass


class VolumeGroup:
    """Runtime state of one varied-on VG."""

    def __init__(self, vgda: VGDA, vgsa: VGSA, devices: dict[int, BlockDevice | None],
                 seqs: dict[Kind, int], *, is_local: Callable[[BlockDevice], bool],
                 errlog=None, quorum_active: bool = True, maintenance: bool = False,
                 site: str = ""):
        self.site = site
        self.vgda = vgda
        self.vgsa = vgsa
        self.devices = devices  # pv index -> device (None when not found at varyon)
        self.seq = dict(seqs)
        self.is_local = is_local
        self.errlog = errlog
        self.quorum_active = quorum_active
        self.maintenance = maintenance
        self.online = True
        self.closed_reason = ""
        self.owners = vgda.owners()
        self.lvs: dict = {}  # name -> LogicalVolume (set by the manager)
        self.drl_active: dict[tuple[int, int], float] = {}  # (lvid, region) -> last use
        self.drl_inflight: dict[tuple[int, int], int] = {}
        self._drl_durable = INLINE.RegionSet()  # listed in a completed DRL write
        self.resyncing: dict[Loc, set[int]] = {}
        self.app_ios = 0  # application reads and writes of its LVs (the resync pacer looks)
        self._episode: set[int] = set()  # PVs whose STALEPP was logged this episode
        self._vgsa_commit = GroupCommit(self._flush_vgsa)
        self._drl_commit = GroupCommit(self._flush_drl)
        self.resync_task: asyncio.Task | None = None
        self.resync_wanted = False  # asked for while the background resync was running
        self.resync_progress: dict = {}
        self.resync_rate: AdaptiveRate | None = None  # the pace of the resync running now
        self._vgsa_version = 0  # in-memory VGSA changes an acknowledgement may rely on
        self._vgsa_durable = 0  # the version the last completed VGSA commit wrote
        # per PV index: PP -> 64 KiB chunks written since the PV's last completed flush
        # (None: all of the PP); and the sets a flush in progress is making durable
        self.unflushed: dict[int, dict[int, set[int] | None]] = {}
        self._flushing: dict[int, list[dict[int, set[int] | None]]] = {}
        self.unflushed_max_pps = UNFLUSHED_MAX_PPS
        self._writeback: dict[int, asyncio.Task] = {}
        self.boot = boot_hash().hex()
        # PV index -> the boot of its host that the dirty-region log may record: a host's new
        # boot is accepted only once what it may have lost is durably marked
        self._accepted_boot: dict[int, str] = {}
        self.async_pools: dict = {}  # pool name -> lvm.asyncmirror.AsyncPool
        self.background: set[asyncio.Task] = set()  # tasks the VG owns (kept referenced)

    # -- PV state ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.vgda.name

    def pv_state(self, index: int) -> str:
        return self.vgsa.pv_state.get(self.vgda.pv(index).pvid, PV_ACTIVE)

    def usable(self, index: int) -> bool:
        return self.devices.get(index) is not None and self.pv_state(index) == PV_ACTIVE

    def usable_pvs(self) -> list[int]:
        return [p.index for p in self.vgda.pvs if self.usable(p.index)]

    def pv_name(self, index: int) -> str:
        dev = self.devices.get(index)
        return dev.name if dev is not None else self.vgda.pv(index).pvid[:16]

    def pv_failed(self, index: int, reason: str) -> None:
        """Stop using a PV whose I/O failed (in memory; callers commit the VGSA). What it
        took since its last completed flush may be lost with it: that is marked stale."""
        pvid = self.vgda.pv(index).pvid
        if self.vgsa.pv_state.get(pvid, PV_ACTIVE) != PV_ACTIVE:
            return
        self.vgsa.pv_state[pvid] = PV_MISSING
        self.vgsa_changed()
        self.lose_unflushed(index)
        self.new_generation()  # from here on the PVs may hold different histories
        log.error("lvm_pv_missing", vg=self.name, device=self.pv_name(index), reason=reason)
        self._log("LVM_SA_PVMISS", self.pv_name(index), reason)
        self._check_quorum()

    def new_generation(self) -> None:
        self.vgsa.new_generation(os.urandom(8).hex(), self.site, time.time())
        self.vgsa_changed()

    # -- what acknowledgements rely on ---------------------------------------------------------
    def vgsa_changed(self) -> None:
        """The VGSA in memory changed: acknowledgements wait until a commit covers it."""
        self._vgsa_version += 1

    @property
    def vgsa_ahead(self) -> bool:
        """Whether the VGSA in memory holds changes no completed commit has written."""
        return self._vgsa_durable < self._vgsa_version

    async def settle(self) -> None:
        """Return once the VGSA on disk covers every change made in memory so far (changes
        made while a commit was finishing included)."""
        while self._vgsa_durable < self._vgsa_version:
            await self.commit_vgsa()

    def note_written(self, loc: Loc, within: int, length: int) -> None:
        """A PV took a write into its cache: remember it until the PV's next flush."""
        pps = self.unflushed.get(loc[0])
        if pps is None:
            pps = self.unflushed[loc[0]] = {}
        chunks = pps.get(loc[1], _NONE)
        if chunks is None:  # all of the PP already
            return
        if chunks is _NONE:
            chunks = pps[loc[1]] = set()
            if len(pps) > self.unflushed_max_pps and loc[0] not in self._writeback:
                self._start_writeback(loc[0])
        first, last = within // CHUNK, (within + length - 1) // CHUNK
        if first == last:
            chunks.add(first)
        else:
            chunks.update(range(first, last + 1))
            if len(chunks) > MAX_CHUNKS_PER_PP:
                pps[loc[1]] = None

    def stop_writeback(self) -> None:
        for task in list(self._writeback.values()):
            task.cancel()

    def _start_writeback(self, index: int) -> None:
        async def writeback() -> None:
            try:
                await self.flush_pv(index)
                await self.settle()
            except OSError as e:  # the VG closed meanwhile: nothing more to do
                log.warning("lvm_writeback_failed", vg=self.name, device=self.pv_name(index),
                            error=str(e))
            finally:
                self._writeback.pop(index, None)

        self._writeback[index] = asyncio.get_running_loop().create_task(writeback())

    def lose_unflushed(self, index: int) -> None:
        """Mark stale (in memory) everything PV ``index`` took since its last completed
        flush, including what a flush in progress covers: it may be gone."""
        for pps in (self.unflushed.pop(index, {}), *self._flushing.get(index, ())):
            self._mark_lost(index, pps)

    def _mark_lost(self, index: int, pps: dict[int, set[int] | None]) -> None:
        for pp, chunks in pps.items():
            loc = (index, pp)
            owner = self.owners.get(loc)
            if owner is None:  # an LV removed meanwhile has nothing to lose
                continue
            if self._other_fresh_copy(loc, owner):
                self.mark_stale(loc, chunks)
            else:  # stale with nothing to resync from would only make the LP unreadable
                log.warning("lvm_unflushed_lost_single_copy", vg=self.name,
                            device=self.pv_name(index), pp=pp + 1, lv=owner[0], lp=owner[2] + 1)

    def _other_fresh_copy(self, loc: Loc, owner: tuple[str, int, int]) -> bool:
        lv = self.vgda.lvs.get(owner[0])
        if lv is None:
            return False
        for m in lv.maps:
            other = m[owner[2]]
            if other != loc and other not in self.vgsa.stale and self.usable(other[0]):
                return True
        return False

    # -- asynchronous mirror pools ---------------------------------------------------------------
    def deferred(self, index: int) -> bool:
        """PV ``index`` is in an asynchronous pool whose copies the sender writes: the write
        path, reads, resync sources and the dirty-region log leave it alone."""
        return any(p.defers(index) for p in self.async_pools.values())

    def resync_settings(self, ceiling: float = 0.0) -> RateSettings:
        """The limits of a resync: the VG's floor and impact (chvg), ``ceiling`` bytes/s
        (syncvg --rate; 0: none)."""
        lim = self.vgda.resync_limits
        return RateSettings(floor=lim.get("floor_mb", DEFAULT_FLOOR / MiB) * MiB,
                            ceiling=ceiling or DEFAULT_CEILING,
                            impact=lim.get("impact_pct", DEFAULT_IMPACT * 100) / 100)

    def lagging(self, index: int, lvid: int, lp: int) -> bool:
        """The copy of LP ``lp`` of LV ``lvid`` on PV ``index`` misses writes the I/O cache
        still holds."""
        return any(p.lags(index, lvid, lp) for p in self.async_pools.values())

    def async_pool_for(self, entry):
        """The asynchronous pool (not inactive) holding a copy of LV ``entry``, or None."""
        for p in self.async_pools.values():
            if p.name in entry.pools and p.state != "inactive":
                return p
        return None

    def server_restarted(self, index: int, rebooted: bool) -> None:
        """The RPV server behind PV ``index`` answered as a new instance: it may have lost
        what it acknowledged since the last flush. Marked stale in memory here; the caller
        commits (acknowledgements wait for that commit) and resyncs."""
        lost = sum(len(p) for p in (self.unflushed.get(index, {}),
                                    *self._flushing.get(index, ())))
        log.warning("lvm_pv_server_restarted", vg=self.name, device=self.pv_name(index),
                    host_rebooted=rebooted, unflushed_pps=lost)
        self.lose_unflushed(index)
        for p in self.async_pools.values():  # the sender resends what it did not release
            if index in p.members:
                p.restarts += 1
                p.wake.set()

    @property
    def needs_written_mark(self) -> bool:
        gen = self.vgsa.current
        return gen is not None and not gen["written"]

    async def mark_written(self) -> None:
        """Record, durably and once per generation, that this generation changed data: the
        evidence split-brain detection needs. Writers that find the mark already set in
        memory still wait for it to be durable (``vgsa_ahead``) before they acknowledge."""
        gen = self.vgsa.current
        if gen is not None and not gen["written"]:
            gen["written"] = True
            gen["first_write"] = time.time()
            self.vgsa_changed()
        await self.settle()

    def note_stale(self, index: int) -> None:
        if index not in self._episode:
            self._episode.add(index)
            self._log("LVM_SA_STALEPP", self.pv_name(index),
                      f"volume group {self.name}: partitions on this PV are stale")

    def pv_synced(self, index: int) -> None:
        """A resync left no stale partition on the PV: the next miss is a new episode."""
        if not any(loc[0] == index for loc in self.vgsa.stale):
            self._episode.discard(index)

    def pv_returned(self, index: int, label: str) -> None:
        self.lose_unflushed(index)  # writes it answered while missing: its host may be new
        self.vgsa.pv_state[self.vgda.pv(index).pvid] = PV_ACTIVE
        self.vgsa_changed()
        self._episode.discard(index)
        self._log(label, self.pv_name(index), f"volume group {self.name}")

    def _check_quorum(self) -> None:
        all_pvs = [p.index for p in self.vgda.pvs]
        usable = set(self.usable_pvs())
        if not usable:
            self.close("no physical volume of the volume group is reachable")
        elif self.quorum_active and not has_quorum(all_pvs, usable):
            self.close("quorum lost")

    def close(self, reason: str) -> None:
        if not self.online:
            return
        self.online = False
        self.closed_reason = reason
        log.error("lvm_vg_closed", vg=self.name, reason=reason)
        self._log("LVM_SA_QUORCLOSE", self.name, reason)
        if self.resync_task:
            self.resync_task.cancel()

    def check_online(self) -> None:
        if not self.online:
            raise VGClosed(errno.EIO, f"volume group {self.name} is closed "
                                      f"({self.closed_reason}); vary it off and on again")

    def _log(self, label: str, resource: str, detail: str) -> None:
        if self.errlog is not None:
            self.errlog.log(label, resource, "vg" if resource == self.name else "disk",
                            "lvm", detail)

    # -- stale marking ---------------------------------------------------------------------------
    def mark_stale(self, loc: Loc, chunks: set[int] | None) -> bool:
        """Record missed writes on ``loc`` (None: all of it); True if that was news, which
        :meth:`settle` then makes durable."""
        pending = self.resyncing.get(loc)
        if pending is not None:
            pending |= chunks if chunks is not None else set(range(self.chunks_per_pp))
        self.note_stale(loc[0])
        if self.vgsa.mark(loc, chunks):
            self.vgsa_changed()
            return True
        return False

    @property
    def chunks_per_pp(self) -> int:
        return self.vgda.pp_size // CHUNK

    async def commit_vgsa(self) -> None:
        await self._vgsa_commit.commit()

    async def _flush_vgsa(self) -> None:
        self.vgsa.updated = time.time()
        written = 0

        def payload() -> dict:
            nonlocal written
            written = self._vgsa_version  # what this very serialisation contains
            return self.vgsa.to_json()

        await self._write_everywhere(Kind.VGSA, payload)
        self._vgsa_durable = max(self._vgsa_durable, written)

    async def write_vgda(self) -> None:
        self.vgda.modified = time.time()
        self.owners = self.vgda.owners()
        await self._write_everywhere(Kind.VGDA, lambda: self.vgda.to_json())

    async def _write_everywhere(self, kind: Kind, payload: Callable[[], dict]) -> None:
        """Write a new generation of ``kind`` to every usable PV.

        A PV that fails is marked missing and the write is repeated on the others (for the
        VGSA the record itself changed). Newly missing PVs are then recorded in the VGSA.
        Raises (the VG closes) when no PV is left.
        """
        lost = False
        while True:
            self.check_online()
            targets = self.usable_pvs()
            if kind is Kind.DRL and self.async_pools:  # the sender keeps those copies
                targets = [i for i in targets if not self.deferred(i)]
            self.seq[kind] += 1
            seq, body = self.seq[kind], payload()
            results = await asyncio.gather(
                *(write_record(self.devices[i], kind, seq, body) for i in targets),
                return_exceptions=True)
            failed = [(i, r) for i, r in zip(targets, results, strict=True)
                      if isinstance(r, BaseException)]
            for i, exc in failed:
                if not isinstance(exc, OSError):
                    raise exc
                self.pv_failed(i, f"metadata write failed: {exc}")
            if not failed:
                break
            lost = True
        if lost and kind is not Kind.VGSA:
            await self.commit_vgsa()

    # -- dirty-region log --------------------------------------------------------------------------
    @property
    def drl_durable(self):
        """The regions a completed DRL write listed, ``(lvid, region)`` pairs (compact: the
        inline write path checks them in one call)."""
        return self._drl_durable

    @drl_durable.setter
    def drl_durable(self, regions) -> None:
        self._drl_durable = INLINE.RegionSet(regions)

    def drl_regions(self, lvid: int, offset: int, length: int) -> list[tuple[int, int]]:
        return [(lvid, r) for r in range(offset // DRL_REGION,
                                         (offset + length - 1) // DRL_REGION + 1)]

    async def drl_enter(self, regions: list[tuple[int, int]]) -> None:
        """Make sure ``regions`` are durably logged dirty before data is written to them.

        A region counts only once a DRL write that lists it has completed: a writer that
        finds its region merely active (another writer's commit still in flight) waits too.
        """
        self.drl_hold(regions)
        if any(r not in self.drl_durable for r in regions):
            await self._drl_commit.commit()

    def drl_hold(self, regions: list[tuple[int, int]]) -> None:
        """Count a writer in ``regions`` (keeps them from being retired); pair with drl_leave.
        On its own, for a writer that found every region already durable."""
        now = time.monotonic()
        for r in regions:
            self.drl_inflight[r] = self.drl_inflight.get(r, 0) + 1
            self.drl_active[r] = now

    def drl_leave(self, regions: list[tuple[int, int]]) -> None:
        for r in regions:
            n = self.drl_inflight[r] - 1
            if n:
                self.drl_inflight[r] = n
            else:
                del self.drl_inflight[r]

    async def _flush_drl(self) -> None:
        if len(self.drl_active) > DRL_MAX_ACTIVE:
            # retire the least recently used idle regions; their data must be durable on
            # every copy before the log forgets them
            excess = len(self.drl_active) - DRL_MAX_ACTIVE // 2
            idle = [r for _, r in sorted((t, r) for r, t in self.drl_active.items()
                                         if r not in self.drl_inflight)][:excess]
            if idle:
                self.drl_durable.difference_update(idle)  # late writers now wait for us
                await self.flush_pvs()
                for r in idle:
                    if r not in self.drl_inflight:  # a writer may have arrived meanwhile
                        self.drl_active.pop(r, None)
        snapshot = set(self.drl_active)
        await self._write_everywhere(Kind.DRL, lambda: {"regions": sorted(snapshot),
                                                        "boots": self.host_boots()})
        self.drl_durable = snapshot
        log.info("lvm_drl_commit", vg=self.name, regions=len(snapshot))

    async def commit_drl(self) -> None:
        """Write the dirty-region log again (its active regions, and the boot of each PV's
        host as it is now): after a host rebooted and what it lost was marked stale, its
        copies are trusted again by the next dirty-region recovery."""
        await self._drl_commit.commit()

    async def drl_clear(self) -> None:
        self.drl_active.clear()
        self.drl_durable = ()
        await self._write_everywhere(Kind.DRL, lambda: {"regions": [],
                                                        "boots": self.host_boots()})

    async def flush_pvs(self) -> None:
        """Flush every usable PV (:meth:`flush_pv`); return once the VGSA on disk records
        any PV that failed. PVs that failed earlier had their unflushed writes marked then."""
        pools = [(p, p.barrier()) for p in self.async_pools.values() if p.cache is not None
                 and p.state in ("active", "draining")]
        # remote PVs first: their FLUSH leaves at once, and the peer's fdatasync runs while
        # the local ones wait for an executor thread (and for the GIL)
        pvs = sorted(self.usable_pvs(), key=lambda i: self.is_local(self.devices[i]))
        ok = await asyncio.gather(*(self.flush_pv(i) for i in pvs
                                    if not pools or not self.deferred(i)))
        await self.settle()
        if all(ok):
            for p, mark in pools:  # the cache LV was flushed with the local PVs
                p.flushed(mark)

    async def flush_pv(self, index: int) -> bool:
        """Flush one PV. The writes it took before the flush started are then durable and
        forgotten; if the flush fails, the PV is marked missing and those writes stale (in
        memory: the caller settles) and False is returned."""
        snap = self.unflushed.pop(index, None) or {}
        self._flushing.setdefault(index, []).append(snap)
        try:
            await self.devices[index].flush()
        except OSError as e:
            self._mark_lost(index, snap)  # pv_failed alone skips a PV already missing
            self.pv_failed(index, f"flush failed: {e}")
            return False
        except BaseException:  # cancelled: nothing was proven durable
            self._merge_unflushed(index, snap)
            raise
        finally:
            self._flush_done(index, snap)
        return True

    def _flush_done(self, index: int, snap: dict) -> None:
        left = [s for s in self._flushing.get(index, ()) if s is not snap]
        if left:
            self._flushing[index] = left
        else:
            self._flushing.pop(index, None)

    def _merge_unflushed(self, index: int, snap: dict) -> None:
        pps = self.unflushed.setdefault(index, {})
        for pp, chunks in snap.items():
            cur = pps.get(pp, _NONE)
            if chunks is None or cur is None:
                pps[pp] = None
            elif cur is _NONE:
                pps[pp] = set(chunks)
            else:
                cur |= chunks

    # -- resync --------------------------------------------------------------------------------
    def stale_locs(self, want: Callable[[Loc], bool] | None = None) -> list[Loc]:
        return sorted(loc for loc in self.vgsa.stale
                      if (want is None or want(loc)) and self.usable(loc[0]))

    def source_for(self, lv, lp: int, exclude: set[Loc],
                   avoid: frozenset[int] = frozenset()) -> tuple[Loc, BlockDevice] | None:
        """A good copy of ``lp``: usable, not stale, not excluded; local disks first, and
        copies on the PVs ``avoid`` (whose host may have lost its page cache) last."""
        ranked = []
        for loc in (m[lp] for m in lv.entry.maps):
            if loc in exclude or loc in self.vgsa.stale or not self.usable(loc[0]):
                continue
            dev = self.devices[loc[0]]
            rank = (loc[0] in avoid, not self.is_local(dev))
            if rank == (False, False) and not (self.async_pools and
                                               self.lagging(loc[0], lv.entry.lvid, lp)):
                return loc, dev
            ranked.append((rank, loc, dev))
        for _, loc, dev in sorted(ranked, key=lambda r: r[0]):
            if not (self.async_pools and self.lagging(loc[0], lv.entry.lvid, lp)):
                return loc, dev  # (not behind the local copies by what the cache holds)
        return None

    # -- which hosts rebooted ----------------------------------------------------------------
    def host_boot(self, index: int) -> str | None:
        """The boot of the host that holds PV ``index`` now (hex), if known."""
        dev = self.devices.get(index)
        if dev is None:
            return None
        if self.is_local(dev):
            return self.boot
        instance = getattr(dev, "instance", None)
        return boot_of(instance).hex() if instance else None

    def host_boots(self) -> dict[str, str]:
        """PV index -> boot of its host, for the dirty-region log: the accepted one (see
        :meth:`accept_boots`), or the current one for a PV seen for the first time."""
        out = {}
        for p in self.vgda.pvs:
            boot = self._accepted_boot.get(p.index) or self.host_boot(p.index)
            if boot is not None:
                self._accepted_boot.setdefault(p.index, boot)
                out[str(p.index)] = boot
        return out

    def accept_boots(self) -> None:
        """What every PV's host may have lost is durably marked: record their boots as they
        are now in the next dirty-region log write."""
        for p in self.vgda.pvs:
            boot = self.host_boot(p.index)
            if boot is not None:
                self._accepted_boot[p.index] = boot

    def rebooted_since(self, boots: dict[str, str]) -> frozenset[int]:
        """PVs whose host booted again since ``boots`` (from :meth:`host_boots`) was
        recorded: what they had not synced then may be gone."""
        out = set()
        for key, then in boots.items():
            now = self.host_boot(int(key))
            if now is not None and now != then:
                out.add(int(key))
        return frozenset(out)
