"""LVM commands (mkvg, mklv, mirrorvg, varyonvg, importvg, ...) over the site's disks.

Physical volumes are the site's Available disk devices: local file disks and RPV clients. The
device database remembers which VGs this site knows (name, VGID, PVIDs); everything else is
read from the PVs' own metadata, so ``importvg`` at another site rebuilds a VG from its disks
alone. Every command validates first and refuses with one clear line, changing nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import structlog

from lvm import layout
from lvm.assembly import Assembler
from lvm.asyncmirror import AsyncMirrors
from lvm.layout import Kind
from lvm.listing import describe_vg
from lvm.lvcommands import LVCommands, copies_on, drop_copies, refuse_last_copy
from lvm.metadata import (
    NAME_RE,
    PV_ACTIVE,
    PV_MISSING,
    PV_REMOVED,
    VGDA,
    VGSA,
    PVEntry,
)
from lvm.poolcommands import PoolCommands
from lvm.ports import ErrorSink, ExportControl, PVDirectory, VGCatalog, name_for_pvid
from lvm.records import read_pv_meta, read_record, write_record
from lvm.scheduler import ResyncScheduler
from lvm.vg import VolumeGroup
from lvm.volume import LogicalVolume
from rpv.blockdev import BlockDevice
from rpv.errors import CommandError
from rpv.jobs import Jobs

log = structlog.get_logger("lvm")

MiB = 1 << 20




class LVMManager:
    def __init__(self, pvs: PVDirectory, catalog: VGCatalog, exports: ExportControl,
                 errors: ErrorSink | None = None, jobs: Jobs | None = None):
        self.pvs = pvs
        self.catalog = catalog
        self.exports = exports
        self.errlog = errors
        self.vgs: dict[str, VolumeGroup] = {}
        self.lock = asyncio.Lock()  # one configuration change at a time
        self.resyncs = ResyncScheduler(jobs)
        self.assembler = Assembler(pvs, errors)
        self.lv = LVCommands(self)  # mklv ... syncvg --verify
        self.pool = PoolCommands(self)  # chpv -p, chvg -M, lsmp, chmp
        self.asyncs = AsyncMirrors(self)  # asynchronous pools at run time
        self.assembler.prepare = self.asyncs.prepare
        self._tasks: set[asyncio.Task] = set()

    # -- lookups -------------------------------------------------------------------------------
    def disk(self, name: str) -> tuple[str, BlockDevice]:
        """(pvid, device) of an Available disk."""
        info = self.pvs.disk(name)
        if info is None:
            raise CommandError(f"physical volume {name} is not defined (see glvmctl lspv)")
        if info.device is None:
            raise CommandError(f"physical volume {name} is Defined, not Available "
                               f"(run mkdev -l {name})")
        return info.pvid, info.device

    def name_for_pvid(self, pvid: str) -> str | None:
        return name_for_pvid(self.pvs, pvid)

    def vg_of_pvid(self, pvid: str) -> str | None:
        return next((n for n, _, pvids in self.catalog.vgs() if pvid in pvids), None)

    def pool_of_pvid(self, pvid: str) -> str | None:
        """The mirror pool of a PV of a varied-on VG (None: no pool, or not known now)."""
        for group in self.vgs.values():
            entry = group.vgda.pv_by_pvid(pvid)
            if entry is not None:
                return entry.pool or None
        return None

    def online(self, name: str) -> VolumeGroup:
        vg = self.vgs.get(name)
        if vg is None:
            if self.catalog.get_vg(name) is None:
                raise CommandError(f"volume group {name} does not exist")
            raise CommandError(f"volume group {name} is not varied on")
        return vg

    def find_lv(self, name: str) -> tuple[VolumeGroup, LogicalVolume]:
        for vg in self.vgs.values():
            if name in vg.lvs:
                return vg, vg.lvs[name]
        raise CommandError(f"logical volume {name} does not exist in any varied-on "
                           f"volume group")

    def get_lv(self, name: str) -> LogicalVolume | None:
        for vg in self.vgs.values():
            lv = vg.lvs.get(name)
            if lv is not None and vg.online and not vg.maintenance and lv.entry.type == "lv":
                return lv
        return None

    def list_lvs(self) -> list[tuple[str, str]]:
        return [(n, f"logical volume of {vg.name}") for vg in self.vgs.values()
                if vg.online and not vg.maintenance
                for n, lv in vg.lvs.items() if lv.entry.type == "lv"]

    def disk_in_use(self, name: str) -> str | None:
        info = self.pvs.disk(name)
        vg = self.vg_of_pvid(info.pvid) if info and info.pvid else None
        return vg if vg in self.vgs else None

    @contextlib.asynccontextmanager
    async def _claiming(self, vg: str, names: list[str | None]):
        """While ``vg`` takes these disks into use, and until it is registered, NBD exports
        of them are read-only (see DeviceManager.claim_disks)."""
        names = [n for n in names if n]
        await self.exports.claim_disks(names, f"a physical volume of volume group {vg}, "
                                              f"which is being varied on")
        try:
            yield
        finally:
            self.exports.release_disks(names)

    # -- creating and changing VGs ------------------------------------------------------------
    async def _check_new_pvs(self, names: list[str], force: bool) -> list[tuple[str, str,
                                                                              BlockDevice]]:
        if not names:
            raise CommandError("name at least one physical volume")
        if len(set(names)) != len(names):
            raise CommandError("a physical volume is named twice")
        out = []
        for n in names:
            pvid, dev = self.disk(n)
            owner = self.vg_of_pvid(pvid)
            if owner is not None:
                raise CommandError(f"{n} already belongs to volume group {owner}")
            try:
                header = await read_record(dev, Kind.PVHEADER)
            except OSError as e:
                raise CommandError(f"cannot read {n}: {e.strerror or e}") from None
            if header is not None and not force:
                raise CommandError(f"{n} holds metadata of volume group "
                                   f"{header[1].get('vg_name')} (VGID {header[1].get('vgid')}); "
                                   f"use -f to overwrite it")
            out.append((n, pvid, dev))
        return out

    async def mkvg(self, vg: str, pvs: list[str], pp_size_mb: int | None = None,
                   force: bool = False, pool: str | None = None) -> dict:
        async with self.lock:
            if not NAME_RE.match(vg or ""):
                raise CommandError(f"volume group name '{vg}' must be 1-15 letters, digits "
                                   f"or _, starting with a letter")
            if self.catalog.get_vg(vg) is not None or self.name_taken(vg):
                raise CommandError(f"the name {vg} is already used")
            disks = await self._check_new_pvs(pvs, force)
            sizes = [d.size for _, _, d in disks]
            if pp_size_mb is None:
                pp = layout.default_pp_size(sizes)
            else:
                if pp_size_mb < 1 or pp_size_mb > 1024 or pp_size_mb & (pp_size_mb - 1):
                    raise CommandError(f"PP size {pp_size_mb} MB must be a power of 2 "
                                       f"between 1 and 1024")
                pp = pp_size_mb * MiB
            for (n, _, d) in disks:
                if layout.pp_count(d.size, pp) < 1:
                    raise CommandError(f"{n} ({d.size // MiB} MB) is too small for one "
                                       f"{pp // MiB} MB partition after the "
                                       f"{layout.DATA_START // MiB} MB metadata area")
                if layout.pp_count(d.size, pp) > 65536:
                    raise CommandError(f"{n} would have more than 65536 partitions of "
                                       f"{pp // MiB} MB; choose a larger -s")
            now = time.time()
            vgda = VGDA(vgid=os.urandom(8).hex() + "0" * 16, name=vg, pp_size=pp,
                        pvs=[PVEntry(pvid, i + 1, layout.pp_count(d.size, pp))
                             for i, (_, pvid, d) in enumerate(disks)],
                        created=now, modified=now, last_site=self.pvs.site())
            if pool is not None:
                self.pool.assign(vgda, [p.index for p in vgda.pvs], pool)
            vgsa = VGSA({pvid: PV_ACTIVE for _, pvid, _ in disks})
            devmap = {i + 1: d for i, (_, _, d) in enumerate(disks)}
            async with self._claiming(vg, [n for n, _, _ in disks]):
                try:
                    for i, d in devmap.items():
                        await self._write_header(d, vgda, i)
                except OSError as e:
                    raise CommandError(f"cannot write to {d.name}: {e.strerror or e}") from None
                group = self.assembler.build(vgda, vgsa, devmap, {k: 0 for k in Kind},
                                             quorum=True)
                self.vgs[vgda.name] = group
                group.new_generation()
                await group.write_vgda()
                await group.commit_vgsa()
                await group.drl_clear()
                self.catalog.put_vg(vg, vgda.vgid, [p.pvid for p in vgda.pvs])
                log.info("lvm_mkvg", vg=vg, pvs=pvs, pp_size=pp)
                return {"vg": vg, "pp_size_mb": pp // MiB}

    def name_taken(self, name: str) -> bool:
        return self.pvs.is_device(name) or any(name in g.lvs or name == g.name
                                                    for g in self.vgs.values())

    @staticmethod
    async def _write_header(dev: BlockDevice, vgda: VGDA, index: int) -> None:
        pvid = vgda.pv(index).pvid
        body = {"pvid": pvid, "vgid": vgda.vgid, "vg_name": vgda.name, "index": index}
        for seq in (1, 2):  # both slots, so no older header survives
            await write_record(dev, Kind.PVHEADER, seq, body)

    async def extendvg(self, vg: str, pvs: list[str], force: bool = False,
                       pool: str | None = None) -> dict:
        async with self.lock:
            group = self.online(vg)
            disks = await self._check_new_pvs(pvs, force)
            vgda = group.vgda
            for n, _pvid, d in disks:
                count = layout.pp_count(d.size, vgda.pp_size)
                if count < 1:
                    raise CommandError(f"{n} is too small for one {vgda.pp_size // MiB} MB "
                                       f"partition")
            first = max(p.index for p in vgda.pvs) + 1
            added = [PVEntry(pvid, first + i, layout.pp_count(d.size, vgda.pp_size))
                     for i, (_n, pvid, d) in enumerate(disks)]
            async with self._claiming(vg, [n for n, _, _ in disks]):
                vgda.pvs.extend(added)
                try:
                    if pool is not None:
                        self.pool.assign(vgda, [p.index for p in added], pool)
                except CommandError:
                    del vgda.pvs[-len(added):]
                    raise
                for (_n, pvid, d), entry in zip(disks, added, strict=True):
                    index = entry.index
                    group.devices[index] = d
                    group.vgsa.pv_state[pvid] = PV_ACTIVE
                    await self._write_header(d, vgda, index)
                await group.write_vgda()
                await group.commit_vgsa()
                await group.commit_drl()
                self.catalog.put_vg(vg, vgda.vgid, [p.pvid for p in vgda.pvs])
                return {"vg": vg}

    async def reducevg(self, vg: str, pv: str, delete_lvs: bool = False) -> dict:
        async with self.lock:
            group = self.online(vg)
            pvid, dev = self.disk(pv)
            entry = group.vgda.pv_by_pvid(pvid)
            if entry is None:
                raise CommandError(f"{pv} is not in volume group {vg}")
            if len(group.vgda.pvs) == 1:
                raise CommandError(f"{pv} is the last physical volume of {vg}; use "
                                   f"varyoffvg and exportvg to remove the volume group")
            holders = {n for (p, _), (n, _, _) in group.owners.items() if p == entry.index}
            if holders and not delete_lvs:
                raise CommandError(f"{pv} holds partitions of {', '.join(sorted(holders))}; "
                                   f"move them or use reducevg -d")
            plan = copies_on(group, {entry.index})
            refuse_last_copy(group, plan)
            drop_copies(group, plan)
            group.vgda.pvs.remove(entry)
            group.devices.pop(entry.index, None)
            group.vgsa.pv_state.pop(pvid, None)
            await group.commit_vgsa()
            await group.write_vgda()
            try:
                for seq in (1, 2):
                    await dev.write(layout.AREAS[Kind.PVHEADER].slot_offset(seq),
                                    bytes(layout.AREAS[Kind.PVHEADER].slot_size), fua=True)
            except OSError as e:
                log.warning("lvm_reducevg_header_clear_failed", pv=pv, error=str(e))
            self.catalog.put_vg(vg, group.vgda.vgid, [p.pvid for p in group.vgda.pvs])
            return {"vg": vg, "pv": pv}

    # -- varyon / varyoff / import / export -------------------------------------------------------
    async def varyonvg(self, vg: str, force: bool = False, nosync: bool = False,
                       maintenance: bool = False, discard_site: str | None = None) -> dict:
        async with self.lock:
            if vg in self.vgs:
                return await self._reactivate(self.vgs[vg], nosync, discard_site)
            rec = self.catalog.get_vg(vg)
            if rec is None:
                raise CommandError(f"volume group {vg} does not exist (see importvg)")
            if not force:
                self.assembler.fence(vg, rec[2])
            return await self._varyon(vg, rec[1], rec[2], force, nosync, maintenance,
                                      discard_site)

    async def _varyon(self, name: str, vgid: str, pvids: list[str], force: bool, nosync: bool,
                      maintenance: bool, discard_site: str | None = None) -> dict:
        async with self._claiming(name, [self.name_for_pvid(p) for p in pvids]):
            group, pv_status = await self.assembler.assemble(name, vgid, pvids, force,
                                                             maintenance, discard_site)
        self.vgs[name] = group
        self.asyncs.started(group)
        if not nosync:
            self.resyncs.start_background(group)
        return {"pv_status": pv_status,
                "messages": [f"varyonvg: Volume group {name} is varied on."]}

    async def _reactivate(self, group: VolumeGroup, nosync: bool,
                          discard_site: str | None = None) -> dict:
        """varyonvg on a varied-on VG: take back PVs that failed and are reachable again."""
        if not group.online:
            raise CommandError(f"volume group {group.name} was closed ({group.closed_reason}); "
                               f"run varyoffvg {group.name} first")
        returned = await self.assembler.probe_back(group, [p.index for p in group.vgda.pvs
                                                   if group.pv_state(p.index) == PV_MISSING],
                                           "LVM_MISSPVRET", discard_site)
        if returned:
            await self.assembler.bring_current(group)
        if not nosync:
            self.resyncs.start_background(group)
        status = [self.assembler.pv_status(p.pvid, group.pv_state(p.index), group.usable(p.index))
                  for p in group.vgda.pvs]
        return {"pv_status": status, "returned": returned,
                "messages": [f"varyonvg: Volume group {group.name} is varied on."]}

    def pv_server_restarted(self, disk: str, rebooted: bool) -> bool:
        """The RPV server behind ``disk`` answered as a new instance (it restarted, perhaps
        after a power loss): mark what it took since its last flush stale, make that durable
        (acknowledgements wait for it), then resync. False when no varied-on VG uses it."""
        for group in self.vgs.values():
            for index, dev in group.devices.items():
                if dev is not None and dev.name == disk:
                    group.server_restarted(index, rebooted)
                    self._background(self._settle_and_resync(group))
                    return True
        return False

    async def _settle_and_resync(self, group: VolumeGroup) -> None:
        try:
            await group.settle()
            group.accept_boots()
            await group.commit_drl()
        except OSError as e:
            log.warning("lvm_settle_failed", vg=group.name, error=str(e))
            return
        if group.online and self.vgs.get(group.name) is group:
            self.resyncs.start_background(group)

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def pv_came_back(self, disk: str) -> None:
        """An RPV client resumed by itself (auto_resume): as varyonvg on the online VG."""
        vg = self.disk_in_use(disk)
        if vg is None:
            return
        async with self.lock:
            group = self.vgs.get(vg)
            if group is None or not group.online:
                return
            try:
                await self._reactivate(group, nosync=False)
            except (OSError, CommandError) as e:
                log.warning("lvm_auto_reactivate_failed", vg=vg, device=disk, error=str(e))

    async def varyoffvg(self, vg: str, force: bool = False) -> dict:
        async with self.lock:
            group = self.online(vg)
            opened = self.exports.in_use(sorted(group.lvs))
            if opened and not force:
                raise CommandError(f"0516-012 varyoffvg: Logical volume must be closed: "
                                   f"open in {vg}: {', '.join(opened)} (NBD clients or "
                                   f"attached devices); unmount and detach first, or "
                                   f"varyoffvg -f to disconnect them")
            await self._close(group)
            return {"vg": vg, "disconnected": opened}

    async def _close(self, group: VolumeGroup) -> None:
        """Stop exporting the LVs (in-flight requests finish), stop resync, flush, and mark
        the dirty-region log clean."""
        self.vgs.pop(group.name, None)
        for name in list(group.lvs):
            await self._disconnect(name)
        if group.resync_task:
            group.resync_task.cancel()
            await asyncio.gather(group.resync_task, return_exceptions=True)
        group.stop_writeback()
        await self.asyncs.close(group)
        if group.online:
            try:
                await group.flush_pvs()
                await group.drl_clear()
            except OSError as e:
                log.warning("lvm_varyoff_unclean", vg=group.name, error=str(e))
        group.online = False
        group.closed_reason = "varied off"
        log.info("lvm_varyoff", vg=group.name)

    async def _disconnect(self, lv: str) -> None:
        await self.exports.withdraw(lv)

    async def importvg(self, vg: str, pv: str, force: bool = False) -> dict:
        async with self.lock:
            if not NAME_RE.match(vg or ""):
                raise CommandError(f"volume group name '{vg}' is not valid")
            if self.catalog.get_vg(vg) is not None or self.name_taken(vg):
                raise CommandError(f"the name {vg} is already used")
            pvid, dev = self.disk(pv)
            try:
                meta = await read_pv_meta(dev)
            except OSError as e:
                raise CommandError(f"cannot read {pv}: {e.strerror or e}") from None
            if meta.header is None or meta.vgda is None:
                raise CommandError(f"{pv} does not hold volume group metadata")
            vgid = meta.header["vgid"]
            known = next((n for n, v, _ in self.catalog.vgs() if v == vgid), None)
            if known:
                raise CommandError(f"{pv} belongs to volume group {known}, already known here")
            pvids = [p[0] for p in meta.vgda[1]["pvs"]]
            self.assembler.fence(vg, pvids)  # -f overrides quorum here, never the fence
            self.catalog.put_vg(vg, vgid, pvids)
            try:
                result = await self._varyon(vg, vgid, pvids, force, False, False)
            except CommandError:
                self.catalog.delete_vg(vg)
                raise
            group = self.vgs[vg]
            self.catalog.put_vg(vg, vgid, [p.pvid for p in group.vgda.pvs])
            # as AIX's importvg: the imported VG varies on at start-up and checks quorum
            group.vgda.auto_on = group.vgda.quorum = group.quorum_active = True
            await group.write_vgda()
            missing = [s["pvid"] for s in result["pv_status"] if s["name"] is None]
            result["messages"] += [
                *(f"0516-510 synclvodm: Physical volume not found for physical volume "
                  f"identifier {pvid}." for pvid in missing),
                *([f"0516-548 synclvodm: Partially successful with updating volume group "
                   f"{vg}."] if missing else []),
                f"importvg: {vg} will be varied on automatically when rpvd starts, and quorum "
                f"checking is on. If the other site may come back, turn both off: "
                f"chvg -a n -Q n {vg}"]
            return result

    async def exportvg(self, vg: str) -> dict:
        async with self.lock:
            if self.catalog.get_vg(vg) is None:
                raise CommandError(f"volume group {vg} does not exist")
            if vg in self.vgs:
                raise CommandError(f"volume group {vg} is varied on; run varyoffvg first")
            self.catalog.delete_vg(vg)
            return {"vg": vg}

    async def chvg(self, vg: str, auto_on: str | None = None, quorum: str | None = None,
                   mirror_pool_strict: str | None = None, resync_floor_mb: float | None = None,
                   resync_impact_pct: int | None = None) -> dict:
        async with self.lock:
            group = self.online(vg)
            if auto_on is None and quorum is None and mirror_pool_strict is None and \
                    resync_floor_mb is None and resync_impact_pct is None:
                raise CommandError("chvg needs -a, -Q, -M, --resync-floor or --resync-impact")
            if resync_floor_mb is not None and not 0 < resync_floor_mb <= 100_000:
                raise CommandError("chvg --resync-floor must be between 0 and 100000 MB/s")
            if resync_impact_pct is not None and not 0 <= resync_impact_pct <= 10_000:
                raise CommandError("chvg --resync-impact must be between 0 and 10000 %")
            if mirror_pool_strict is not None:
                self.pool.set_strict(group.vgda, mirror_pool_strict)
            for key, v in (("floor_mb", resync_floor_mb), ("impact_pct", resync_impact_pct)):
                if v is not None:
                    group.vgda.resync_limits[key] = v
            for flag, v in (("-a", auto_on), ("-Q", quorum)):
                if v is not None and v not in ("y", "n"):
                    raise CommandError(f"chvg {flag} must be y or n")
            messages = []
            if auto_on is not None:
                group.vgda.auto_on = auto_on == "y"
            if quorum is not None and (quorum == "y") != group.vgda.quorum:
                group.vgda.quorum = quorum == "y"
                messages.append(f"0516-1011 chvg: Quorum requirement turned "
                                f"{'on' if quorum == 'y' else 'off'}, varyoff and varyon "
                                f"volume group for this to take effect.")
            await group.write_vgda()
            return {"messages": messages}

    async def chpv(self, pv: str, state: str) -> dict:
        async with self.lock:
            info = self.pvs.disk(pv)
            pvid = info.pvid if info is not None else None
            vgname = self.vg_of_pvid(pvid) if pvid else None
            if vgname is None:
                raise CommandError(f"{pv} is not in a volume group")
            group = self.online(vgname)
            index = group.vgda.pv_by_pvid(pvid).index
            if state == "r":
                group.vgsa.pv_state[pvid] = PV_REMOVED
                await group.commit_vgsa()
            elif state == "a":
                if group.pv_state(index) == PV_ACTIVE:
                    return {"pv": pv}
                if not await self.assembler.probe_back(group, [index], "LVM_MISSPVADDED"):
                    raise CommandError(f"{pv} cannot be read; it stays "
                                       f"{group.pv_state(index)}")
                await self.assembler.bring_current(group)
            else:
                raise CommandError("chpv -v must be a or r")
            return {"pv": pv}

    # -- listing ---------------------------------------------------------------------------------
    async def lsvg(self, vg: str | None = None) -> object:
        if vg is None:
            return [n for n, _, _ in self.catalog.vgs()]
        rec = self.catalog.get_vg(vg)
        if rec is None:
            raise CommandError(f"volume group {vg} does not exist")
        group = self.vgs.get(vg)
        if group is None:
            return {"name": vg, "vgid": rec[1], "state": "inactive", "pvs": [
                {"name": self.name_for_pvid(p), "pvid": p} for p in rec[2]], "lvs": []}
        return describe_vg(group, self.pvs)

    async def shutdown(self) -> None:
        for group in list(self.vgs.values()):
            await self._close(group)
