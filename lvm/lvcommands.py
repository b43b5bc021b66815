"""Logical volume and mirroring commands: mklv, chlv, rmlv, lslv, mirrorvg, unmirrorvg,
syncvg and syncvg --verify. They work on volume groups the manager (lvm/manager.py) has varied
on, under its configuration lock."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from lvm import policy
from lvm.listing import describe_lv
from lvm.metadata import NAME_RE, LVEntry
from lvm.verify import verify as verify_lvs
from lvm.vg import VolumeGroup
from lvm.volume import LogicalVolume
from rpv.errors import CommandError

log = structlog.get_logger("lvm")

MiB = 1 << 20


def copies_on(group: VolumeGroup, pv_indexes: set[int]) -> dict[str, list[int]]:
    """LV name -> copies (indexes) having any partition on ``pv_indexes``."""
    plan: dict[str, list[int]] = {}
    for lv in group.vgda.lvs.values():
        hit = [c for c in range(lv.copies) if lv.pvs_of_copy(c) & pv_indexes]
        if hit:
            plan[lv.name] = hit
    return plan

def refuse_last_copy(group: VolumeGroup, plan: dict[str, list[int]]) -> None:
    for name, copies in plan.items():
        if len(copies) >= group.vgda.lvs[name].copies:
            raise CommandError(f"that would remove the last copy of logical volume {name}")

def drop_copies(group: VolumeGroup, plan: dict[str, list[int]]) -> None:
    for name, copies in plan.items():
        lv = group.vgda.lvs[name]
        for c in sorted(copies, reverse=True):
            for loc in lv.maps[c]:
                group.vgsa.stale.pop(loc, None)
            del lv.maps[c]
            if c < len(lv.pools):
                del lv.pools[c]


class LVCommands:
    def __init__(self, core):
        self.core = core  # lvm.manager.LVMManager: the varied-on VGs, lookups and the lock

    async def mklv(self, lv: str, vg: str, lps: int, copies: int = 1, strictness: str = "y",
                   upperbound: int = 0, pvs: list[str] | None = None,
                   mirror_pools: list[str] | None = None, lv_type: str = "lv") -> dict:
        async with self.core.lock:
            group = self.core.online(vg)
            group.check_online()
            if not NAME_RE.match(lv or ""):
                raise CommandError(f"logical volume name '{lv}' must be 1-15 letters, digits "
                                   f"or _, starting with a letter")
            if self.core.name_taken(lv):
                raise CommandError(f"the name {lv} is already used")
            if not 1 <= copies <= 3:
                raise CommandError("copies must be 1, 2 or 3")
            if strictness not in ("y", "s", "n"):
                raise CommandError("strictness (-s) must be y, s or n")
            if lps < 1:
                raise CommandError("the number of logical partitions must be at least 1")
            if upperbound < 0:
                raise CommandError("upper bound (-u) must not be negative")
            candidates = self._candidates(group, pvs)
            if strictness != "n" and copies > len(candidates):
                raise CommandError(f"{copies} copies need at least {copies} physical volumes; "
                                   f"{len(candidates)} available")
            vgda = group.vgda
            copy_pools = self.core.pool.plan(vgda, lv, mirror_pools, range(copies), [])
            if lv_type not in ("lv", "aio_cache"):
                raise CommandError(f"logical volume type (-t) '{lv_type}' is not lv or "
                                   f"aio_cache")
            if lv_type == "aio_cache":
                self.core.pool.check_cache_placement(vgda, lv, copies, copy_pools)
            entry = LVEntry(lv, vgda.next_lvid, lps, strictness, upperbound, type=lv_type)
            self._allocate(group, entry, range(copies), candidates, copy_pools)
            vgda.lvs[lv] = entry
            vgda.next_lvid += 1
            await group.write_vgda()
            group.lvs[lv] = LogicalVolume(group, entry)
            log.info("lvm_mklv", vg=vg, lv=lv, lps=lps, copies=copies, strictness=strictness)
            return {"lv": lv}

    def _candidates(self, group: VolumeGroup, pvs: list[str] | None) -> list[int]:
        if not pvs:
            return group.usable_pvs()
        out = []
        for n in pvs:
            pvid, _ = self.core.disk(n)
            entry = group.vgda.pv_by_pvid(pvid)
            if entry is None:
                raise CommandError(f"{n} is not in volume group {group.name}")
            if not group.usable(entry.index):
                raise CommandError(f"{n} is {group.pv_state(entry.index)}, not active")
            out.append(entry.index)
        return out

    def _allocate(self, group: VolumeGroup, entry: LVEntry, copies: range,
                  candidates: list[int], copy_pools: dict[int, str]) -> list:
        """Allocate whole copies (each within its mirror pool, if it has one); on failure
        nothing is taken and CommandError is raised."""
        used = group.vgda.used()
        added = []
        pools_before = list(entry.pools)
        try:
            for c in copies:
                allowed = self.core.pool.copy_candidates(group, candidates, copy_pools, c)
                m = policy.allocate_copy(group.vgda, entry, allowed, range(entry.lps), c, used)
                entry.maps.append(m)
                added.append(m)
                entry.pools = (entry.pools + [""] * c)[:c] + [copy_pools.get(c, "")]
        except (policy.AllocationError, CommandError) as e:
            for m in added:
                entry.maps.remove(m)
            entry.pools = pools_before
            raise CommandError(str(e)) from None
        if not any(entry.pools):
            entry.pools = []
        return added

    async def chlv(self, lv: str, strictness: str | None = None,
                   upperbound: int | None = None, name: str | None = None) -> dict:
        async with self.core.lock:
            group, vol = self.core.find_lv(lv)
            if name is not None:
                return await self._rename(group, vol, name)
            if strictness is None and upperbound is None:
                raise CommandError("chlv needs -s, -u or -n")
            if strictness is not None and strictness not in ("y", "s", "n"):
                raise CommandError("strictness (-s) must be y, s or n")
            if upperbound is not None and upperbound < 0:
                raise CommandError("upper bound (-u) must not be negative")
            why = policy.check_strictness(vol.entry, strictness, upperbound)
            if why:
                raise CommandError(f"cannot change {lv}: {why}")
            if strictness is not None:
                vol.entry.strictness = strictness
            if upperbound is not None:
                vol.entry.upperbound = upperbound
            await group.write_vgda()
            return {"lv": lv}

    async def _rename(self, group: VolumeGroup, vol: LogicalVolume, name: str) -> dict:
        """chlv -n: the LV must be closed, as on AIX; its NBD export takes the new name."""
        old = vol.name
        if not NAME_RE.match(name or ""):
            raise CommandError(f"logical volume name '{name}' must be 1-15 letters, digits "
                               f"or _, starting with a letter")
        if self.core.name_taken(name):
            raise CommandError(f"the name {name} is already used")
        if self.core.exports.in_use([old]):
            raise CommandError(f"0516-1008 chlv: Logical volume {old} must be closed to be "
                               f"renamed: unmount and detach it first")
        if group.vgda.cache_users(old):
            raise CommandError(f"{old} is the I/O cache of mirror pool "
                               f"{', '.join(group.vgda.cache_users(old))}; it keeps its name")
        await self.core.exports.withdraw(old)
        group.vgda.lvs[name] = group.vgda.lvs.pop(old)
        group.vgda.lvs[name].name = name
        group.lvs[name] = group.lvs.pop(old)
        vol.name = name
        await group.write_vgda()
        log.info("lvm_chlv_rename", vg=group.name, lv=old, new=name)
        return {"lv": name, "old": old}

    async def rmlv(self, lv: str, force: bool = False) -> dict:
        async with self.core.lock:
            group, vol = self.core.find_lv(lv)
            if group.vgda.cache_users(lv):
                raise CommandError(f"{lv} is the I/O cache of asynchronous mirror pool "
                                   f"{', '.join(group.vgda.cache_users(lv))}; switch it back "
                                   f"first (chmp -S -m POOL {group.name})")
            if self.core.exports.in_use([lv]) and not force:
                raise CommandError(f"0516-1008 rmlv: Logical volume {lv} must be closed: it is "
                                   f"open (an NBD client or an attached device); unmount and "
                                   f"detach it first, or rmlv -f to disconnect it")
            entry = group.vgda.lvs.pop(lv)
            for m in entry.maps:
                for loc in m:
                    group.vgsa.stale.pop(loc, None)
            group.lvs.pop(lv, None)
            await self.core.exports.withdraw(lv)
            await group.write_vgda()
            await group.commit_vgsa()
            return {"lv": lv}

    def lslv(self, lv: str, map: bool = False) -> dict:  # noqa: A002 — the wire name
        group, vol = self.core.find_lv(lv)
        return describe_lv(group, vol, map)

    # -- mirroring --------------------------------------------------------------------------------
    async def mirrorvg(self, vg: str, pvs: list[str] | None = None, copies: int = 2,
                       sync: str = "foreground", keep_quorum: bool = False,
                       mirror_pools: list[str] | None = None,
                       progress: Callable[[dict], None] | None = None) -> dict:
        async with self.core.lock:
            group = self.core.online(vg)
            group.check_online()
            if copies not in (2, 3):
                raise CommandError("mirrorvg -c must be 2 or 3")
            if sync not in ("foreground", "background", "none"):
                raise CommandError("sync must be foreground, background or none")
            if not pvs and not mirror_pools:
                raise CommandError("give the physical volumes or the mirror pool "
                                   "(-p copyN=POOL) for the new copies")
            candidates = self._candidates(group, pvs)
            new_locs = []
            lvs = [e for e in group.vgda.data_lvs() if e.copies < copies]
            if not lvs:
                raise CommandError(f"every logical volume of {vg} already has {copies} copies")
            plans = {e.name: self.core.pool.plan(
                group.vgda, e.name, mirror_pools, range(e.copies, copies),
                [e.pools[c] if c < len(e.pools) else "" for c in range(e.copies)])
                for e in lvs}
            snapshot = {e.name: (len(e.maps), list(e.pools)) for e in lvs}
            try:
                for e in lvs:
                    for m in self._allocate(group, e, range(e.copies, copies), candidates,
                                            plans[e.name]):
                        new_locs.extend(m)
            except CommandError:
                for e in lvs:
                    del e.maps[snapshot[e.name][0]:]
                    e.pools = snapshot[e.name][1]
                raise
            messages = []
            for loc in new_locs:  # stale before the VGDA makes the copies visible
                group.vgsa.mark(loc, None)
            await group.commit_vgsa()
            if not keep_quorum and group.vgda.quorum:
                group.vgda.quorum = False
                messages.append("0516-1125 mirrorvg: Quorum requirement turned off, varyoff "
                                "and varyon volume group for this to take effect.")
            await group.write_vgda()
        result = None
        if sync == "foreground":
            # a new copy is copied whole, as syncvg -f does: no digest comparison
            result = await self.core.resyncs.run(group, None, 1, 0.0, progress,
                                                 checksum=False)
        elif sync == "background":
            self.core.resyncs.start_background(group)
        return {"messages": messages, "resync": result}

    async def unmirrorvg(self, vg: str, pvs: list[str]) -> dict:
        async with self.core.lock:
            group = self.core.online(vg)
            indexes = set(self._candidates_any(group, pvs))
            plan = copies_on(group, indexes)
            if not plan:
                raise CommandError(f"no copy of any logical volume of {vg} lies on "
                                   f"{' '.join(pvs)}")
            refuse_last_copy(group, plan)
            drop_copies(group, plan)
            await group.write_vgda()
            await group.commit_vgsa()
            return {"vg": vg, "lvs": sorted(plan)}

    def _candidates_any(self, group: VolumeGroup, pvs: list[str]) -> list[int]:
        out = []
        for n in pvs:
            info = self.core.pvs.disk(n)
            pvid = info.pvid if info else None
            entry = group.vgda.pv_by_pvid(pvid) if pvid else None
            if entry is None:
                raise CommandError(f"{n} is not in volume group {group.name}")
            out.append(entry.index)
        return out

    # -- resync -----------------------------------------------------------------------------------
    async def syncvg(self, lv: str | None = None, pv: str | None = None, vg: str | None = None,
                     parallel: int = 1, force: bool = False, rate_mb: float = 0.0,
                     progress: Callable[[dict], None] | None = None) -> dict:
        if sum(x is not None for x in (lv, pv, vg)) != 1:
            raise CommandError("syncvg needs exactly one of -l LV, -p PV, -v VG")
        if not 1 <= parallel <= 32:
            raise CommandError("-P must be between 1 and 32")
        if rate_mb < 0:
            raise CommandError("--rate must not be negative")
        if lv is not None:
            group, vol = self.core.find_lv(lv)
            locs = {loc for m in vol.entry.maps for loc in m}
            want = locs.__contains__
            scope_lvs = [vol.entry]
        elif pv is not None:
            pvid, _ = self.core.disk(pv)
            vgname = self.core.vg_of_pvid(pvid)
            if vgname is None:
                raise CommandError(f"{pv} is not in a volume group")
            group = self.core.online(vgname)
            index = group.vgda.pv_by_pvid(pvid).index
            want = lambda loc: loc[0] == index  # noqa: E731
            scope_lvs = list(group.vgda.lvs.values())
        else:
            group = self.core.online(vg)
            want = None
            scope_lvs = list(group.vgda.lvs.values())
        group.check_online()
        if force:
            self.core.resyncs.force_stale(group, scope_lvs, want)
            await group.commit_vgsa()
        # -f recopies every partition as asked: no digest comparison (see lvm/resync.py)
        return await self.core.resyncs.run(group, want, parallel, rate_mb * MiB, progress,
                                           checksum=not force)

    async def verify(self, lv: str | None = None, vg: str | None = None, repair: bool = False,
                     progress: Callable[[dict], None] | None = None) -> dict:
        """syncvg --verify: compare the copies of every non-stale partition by 64 KiB digests
        computed where each copy lives; with ``repair`` rewrite differing chunks from the
        preferred copy (local first)."""
        if (lv is None) == (vg is None):
            raise CommandError("syncvg --verify needs exactly one of -l LV or -v VG")
        if lv is not None:
            group, vol = self.core.find_lv(lv)
            vols = [vol]
        else:
            group = self.core.online(vg)
            vols = [group.lvs[n] for n in group.vgda.lvs]
        group.check_online()
        return await verify_lvs(group, vols, repair, progress, self.core.resyncs.lock(group.name))
