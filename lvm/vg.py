"""A varied-on volume group: metadata on its PVs, PV failure handling, quorum, resync.

The VG keeps the descriptor (VGDA), the status area (VGSA) and the dirty-region log (DRL) in
memory and writes each, as a new generation, to every usable PV. A PV whose I/O fails is
marked missing at once: later I/O skips it without waiting, and every partition on it that
misses a write is marked stale — durably, in the VGSA on the remaining PVs, before that write
is acknowledged.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from lvm import layout
from lvm.commit import GroupCommit
from lvm.layout import Kind
from lvm.metadata import (
    CHUNK,
    DRL_REGION,
    PV_ACTIVE,
    PV_MISSING,
    VGDA,
    VGSA,
    Loc,
)
from lvm.policy import has_quorum
from rpv.blockdev import BlockDevice

log = structlog.get_logger("lvm")

DRL_MAX_ACTIVE = 256


@dataclass(slots=True)
class PVMeta:
    """What one PV's metadata area says (None where a record is absent or unreadable)."""

    header: dict | None
    vgda: tuple[int, dict] | None
    vgsa: tuple[int, dict] | None
    drl: tuple[int, dict] | None


async def read_record(dev: BlockDevice, kind: Kind) -> tuple[int, dict] | None:
    area = layout.AREAS[kind]
    raw = await dev.read(area.offset, 2 * area.slot_size)
    return layout.newest(kind, raw[:area.slot_size], raw[area.slot_size:])


async def read_pv_meta(dev: BlockDevice) -> PVMeta:
    header = await read_record(dev, Kind.PVHEADER)
    if header is None:
        return PVMeta(None, None, None, None)
    return PVMeta(header[1], await read_record(dev, Kind.VGDA), await read_record(dev, Kind.VGSA),
                  await read_record(dev, Kind.DRL))


async def write_record(dev: BlockDevice, kind: Kind, seq: int, payload: dict) -> None:
    await dev.write(layout.AREAS[kind].slot_offset(seq), layout.encode(kind, seq, payload),
                    fua=True)


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
        self.drl_durable: set[tuple[int, int]] = set()  # listed in a completed DRL write
        self.resyncing: dict[Loc, set[int]] = {}
        self._episode: set[int] = set()  # PVs whose STALEPP was logged this episode
        self._vgsa_commit = GroupCommit(self._flush_vgsa)
        self._drl_commit = GroupCommit(self._flush_drl)
        self.resync_task: asyncio.Task | None = None
        self.resync_progress: dict = {}

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
        """Stop using a PV whose I/O failed (in memory; callers commit the VGSA)."""
        pvid = self.vgda.pv(index).pvid
        if self.vgsa.pv_state.get(pvid, PV_ACTIVE) != PV_ACTIVE:
            return
        self.vgsa.pv_state[pvid] = PV_MISSING
        self.new_generation()  # from here on the PVs may hold different histories
        log.error("lvm_pv_missing", vg=self.name, device=self.pv_name(index), reason=reason)
        self._log("LVM_SA_PVMISS", self.pv_name(index), reason)
        self._check_quorum()

    def new_generation(self) -> None:
        self.vgsa.new_generation(os.urandom(8).hex(), self.site, time.time())

    @property
    def needs_written_mark(self) -> bool:
        gen = self.vgsa.current
        return gen is not None and not gen["written"]

    async def mark_written(self) -> None:
        """Record, durably and once per generation, that this generation changed data: the
        evidence split-brain detection needs."""
        gen = self.vgsa.current
        if gen is not None and not gen["written"]:
            gen["written"] = True
            gen["first_write"] = time.time()
            await self.commit_vgsa()

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
        self.vgsa.pv_state[self.vgda.pv(index).pvid] = PV_ACTIVE
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
            self.errlog.log(label, resource, "disk" if label != "LVM_SA_QUORCLOSE" else "vg",
                            "lvm", detail)

    # -- stale marking ---------------------------------------------------------------------------
    def mark_stale(self, loc: Loc, chunks: set[int] | None) -> bool:
        """Record missed writes on ``loc``; True if the VGSA must be committed."""
        pending = self.resyncing.get(loc)
        if pending is not None:
            pending |= chunks if chunks is not None else set(range(self.chunks_per_pp))
        self.note_stale(loc[0])
        return self.vgsa.mark(loc, chunks)

    @property
    def chunks_per_pp(self) -> int:
        return self.vgda.pp_size // CHUNK

    async def commit_vgsa(self) -> None:
        await self._vgsa_commit.commit()

    async def _flush_vgsa(self) -> None:
        self.vgsa.updated = time.time()
        await self._write_everywhere(Kind.VGSA, lambda: self.vgsa.to_json())

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
        await self._write_everywhere(Kind.DRL, lambda: {"regions": sorted(snapshot)})
        self.drl_durable = snapshot
        log.info("lvm_drl_commit", vg=self.name, regions=len(snapshot))

    async def drl_clear(self) -> None:
        self.drl_active.clear()
        self.drl_durable = set()
        await self._write_everywhere(Kind.DRL, lambda: {"regions": []})

    async def flush_pvs(self) -> None:
        """Flush every usable PV; a PV that fails is marked missing (and its data stale)."""
        targets = self.usable_pvs()
        results = await asyncio.gather(*(self.devices[i].flush() for i in targets),
                                       return_exceptions=True)
        failed = [i for i, r in zip(targets, results, strict=True)
                  if isinstance(r, BaseException)]
        for i in failed:
            self.pv_failed(i, "flush failed")
            # writes acknowledged on it may not be durable: its partitions can no longer be
            # trusted, so all of them become stale
            for loc in self.owners:
                if loc[0] == i:
                    self.mark_stale(loc, None)
        if failed:
            await self.commit_vgsa()

    # -- resync --------------------------------------------------------------------------------
    def stale_locs(self, want: Callable[[Loc], bool] | None = None) -> list[Loc]:
        return sorted(loc for loc in self.vgsa.stale
                      if (want is None or want(loc)) and self.usable(loc[0]))

    def source_for(self, lv, lp: int, exclude: set[Loc]) -> tuple[Loc, BlockDevice] | None:
        """A good copy of ``lp``: usable, not stale, not excluded, local disks first."""
        best = None
        for loc in (m[lp] for m in lv.entry.maps):
            if loc in exclude or loc in self.vgsa.stale or not self.usable(loc[0]):
                continue
            dev = self.devices[loc[0]]
            if self.is_local(dev):
                return loc, dev
            best = best or (loc, dev)
        return best
