"""Mirror pool commands: chpv -p/-P, chvg -M, lsmp, and the pool checks mkvg, extendvg,
mklv and mirrorvg share. They work on varied-on volume groups, under the manager's lock."""

from __future__ import annotations

import structlog

from lvm import pools
from lvm.metadata import VGDA
from lvm.ports import DiskInfo, name_for_pvid
from lvm.vg import VolumeGroup
from rpv.errors import CommandError

log = structlog.get_logger("lvm")


def disk_site(info: DiskInfo | None, local_site: str) -> str:
    """The site a disk's data is at: this site for a local disk, the serving site (from the
    RPV server's HELLO) for an RPV client; "" when the disk is unknown here."""
    if info is None:
        return ""
    if not info.remote:
        return local_site or "local"
    return info.site or "unknown"


class PoolCommands:
    def __init__(self, core):
        self.core = core  # lvm.manager.LVMManager

    def sites(self, vgda: VGDA) -> dict[int, str]:
        """PV index -> site, for every PV of the VG this site knows."""
        directory = self.core.pvs
        return {p.index: disk_site(directory.disk(name_for_pvid(directory, p.pvid) or ""),
                                   directory.site()) for p in vgda.pvs}

    def assign(self, vgda: VGDA, indexes: list[int], pool: str | None) -> None:
        """Put PVs in ``pool`` (None: take them out of their pool); all checks first."""
        try:
            if pool is not None:
                pools.check_name(pool)
                pools.check_site(vgda, pool, indexes, self.sites(vgda))
            for i in indexes:
                pools.check_pv_change(vgda, i, pool or "")
        except pools.PoolError as e:
            raise CommandError(str(e)) from None
        for i in indexes:
            vgda.pv(i).pool = pool or ""

    async def chpv_pool(self, pvs: list[str], pool: str | None = None) -> dict:
        """chpv -p POOL PV... / chpv -P PV...: the PVs must be in one varied-on VG."""
        async with self.core.lock:
            if not pvs:
                raise CommandError("give at least one physical volume")
            groups = {self.core.vg_of_pvid(self.core.disk(n)[0]) for n in pvs}
            if None in groups:
                raise CommandError("every physical volume must be in a volume group")
            if len(groups) != 1:
                raise CommandError(f"the physical volumes are in different volume groups "
                                   f"({', '.join(sorted(groups))})")
            group = self.core.online(groups.pop())
            indexes = [group.vgda.pv_by_pvid(self.core.disk(n)[0]).index for n in pvs]
            self.assign(group.vgda, indexes, pool)
            await group.write_vgda()
            log.info("lvm_chpv_pool", vg=group.name, pvs=pvs, pool=pool)
            return {"vg": group.name, "pvs": pvs, "pool": pool}

    def copy_candidates(self, group: VolumeGroup, candidates: list[int],
                        copy_pools: dict[int, str], copy: int) -> list[int]:
        """The PVs copy ``copy`` may use: ``candidates`` within its pool, if it has one."""
        pool = copy_pools.get(copy)
        if not pool:
            return candidates
        try:
            members = set(pools.pool_members(group.vgda, pool))
        except pools.PoolError as e:
            raise CommandError(str(e)) from None
        inside = [i for i in candidates if i in members]
        if not inside:
            raise CommandError(f"no usable physical volume of mirror pool {pool} among the "
                               f"ones allowed for copy {copy + 1}")
        return inside

    def plan(self, vgda: VGDA, lv: str, specs: list[str] | None, copies: range,
             existing: list[str]) -> dict[int, str]:
        """Parse ``-p copyN=POOL`` for new ``copies`` of ``lv`` (``existing``: pools of the
        copies it has) and check them against the VG's strictness."""
        try:
            wanted = pools.parse_copy_pools(specs, range(copies.stop))
            for c in wanted:
                if c not in copies:
                    raise pools.PoolError(f"copy {c + 1} of {lv} already exists")
                pools.pool_members(vgda, wanted[c])
            full = existing + [wanted.get(c, "") for c in copies]
            pools.check_copy_pools(vgda, lv, full)
        except pools.PoolError as e:
            raise CommandError(str(e)) from None
        return wanted

    def local_pool(self, vgda: VGDA, pool: str) -> bool:
        sites = self.sites(vgda)
        local = self.core.pvs.site() or "local"
        return all(sites.get(i) == local for i in pools.pool_members(vgda, pool))

    def check_cache_placement(self, vgda: VGDA, lv: str, copies: int,
                              copy_pools: dict[int, str]) -> None:
        """An I/O cache LV lives in local mirror pools only: it is never mirrored across
        sites."""
        for c in range(copies):
            pool = copy_pools.get(c)
            if not pool or not self.local_pool(vgda, pool):
                raise CommandError(f"copy {c + 1} of the aio_cache logical volume {lv} must "
                                   f"be placed in a mirror pool of this site's disks "
                                   f"(-p copy{c + 1}=LOCALPOOL)")

    async def chmp(self, vg: str, pool: str, mode: str | None = None,
                   cache_lv: str | None = None, hwm: int | None = None,
                   force: bool = False) -> dict:
        """chmp -A (asynchronous) / -S (synchronous) / -h HWM for a remote mirror pool."""
        async with self.core.lock:
            group = self.core.online(vg)
            vgda = group.vgda
            try:
                pools.pool_members(vgda, pool)
            except pools.PoolError as e:
                raise CommandError(str(e)) from None
            if hwm is not None and not 1 <= hwm <= 100:
                raise CommandError("the high-water mark (-h) is a percentage, 1-100")
            current = vgda.async_pools.get(pool)
            if mode == "async":
                cache = cache_lv or (current or {}).get("cache_lv")
                self._check_async(group, pool, cache)
                vgda.async_pools[pool] = {"cache_lv": cache,
                                          "hwm": hwm or (current or {}).get("hwm") or 100}
            elif mode == "sync":
                if current is None:
                    raise CommandError(f"mirror pool {pool} is already synchronous")
                await self.core.asyncs.stop(group, pool, force)
                del vgda.async_pools[pool]
            elif hwm is not None:
                if current is None:
                    raise CommandError(f"mirror pool {pool} is synchronous: -h needs -A")
                current["hwm"] = hwm
            else:
                raise CommandError("chmp needs -A, -S or -h")
            await group.write_vgda()
            if mode == "async":
                await self.core.asyncs.start(group, pool)
            log.info("lvm_chmp", vg=vg, pool=pool, mode=mode, hwm=hwm)
            return {"vg": vg, "pool": pool,
                    "mode": "async" if pool in vgda.async_pools else "sync"}

    def _check_async(self, group: VolumeGroup, pool: str, cache_lv: str | None) -> None:
        vgda = group.vgda
        if vgda.mirror_pool_strict != "s":
            raise CommandError(f"asynchronous mirroring needs a super strict volume group: "
                               f"chvg -M s {group.name}")
        if self.local_pool(vgda, pool):
            raise CommandError(f"mirror pool {pool} holds this site's disks; only a pool of "
                               f"remote physical volumes mirrors asynchronously")
        if not cache_lv:
            raise CommandError("give the I/O cache logical volume: chmp -A -c CACHELV ...")
        entry = vgda.lvs.get(cache_lv)
        if entry is None or entry.type != "aio_cache":
            raise CommandError(f"{cache_lv} is not an aio_cache logical volume of "
                               f"{group.name} (mklv -t aio_cache -p copy1=LOCALPOOL ...)")
        current = vgda.async_pools.get(pool, {}).get("cache_lv")
        if current and current != cache_lv:
            raise CommandError(f"mirror pool {pool} caches in {current}; switch it back "
                               f"first (chmp -S -m {pool} {group.name}) to change the cache")
        for lv in vgda.data_lvs():
            others = [p for p in lv.pools if p != pool and p in vgda.async_pools]
            if pool in lv.pools and others:
                raise CommandError(f"{lv.name} already has a copy in asynchronous mirror "
                                   f"pool {others[0]}; one asynchronous pool per LV")
        others = [p for p in vgda.cache_users(cache_lv) if p != pool]
        if others:
            raise CommandError(f"{cache_lv} is already the I/O cache of mirror pool "
                               f"{', '.join(others)}")

    def set_strict(self, vgda: VGDA, mode: str) -> None:
        """chvg -M n|y|s: refused when an LV does not comply."""
        if mode not in pools.STRICT_MODES:
            raise CommandError("chvg -M must be n, y or s")
        if vgda.async_pools and mode != "s":
            raise CommandError(f"mirror pool {', '.join(vgda.async_pools)} is asynchronous: "
                               f"the volume group stays super strict (chmp -S first)")
        why = pools.strictness_problem(vgda, mode)
        if why:
            raise CommandError(f"0516-1930 chvg: cannot make {vgda.name} mirror pool "
                               f"{pools.STRICT_MODES[mode]}: {why}")
        vgda.mirror_pool_strict = mode

    def lsmp(self, vg: str, pool: str | None = None) -> dict:
        """The VG's mirror pools: members, site, mode, and the LV copies placed in each."""
        group = self.core.online(vg)
        vgda = group.vgda
        members = pools.pools_of(vgda)
        if pool is not None and pool not in members:
            raise CommandError(f"mirror pool {pool} does not exist in volume group {vg}")
        sites = self.sites(vgda)
        rows = []
        for name, indexes in members.items():
            if pool is not None and name != pool:
                continue
            asynchronous = name in vgda.async_pools
            rows.append({
                "pool": name, "mode": "async" if asynchronous else "sync",
                "async": self.core.asyncs.describe(group, name) if asynchronous else None,
                "site": next((sites[i] for i in indexes if sites.get(i)), ""),
                "pvs": [group.pv_name(i) for i in indexes],
                "copies": [{"lv": lv.name, "copy": c + 1} for lv in vgda.lvs.values()
                           for c in range(lv.copies) if pools.copy_pool(lv, c) == name]})
        return {"vg": vg, "mirror_pool_strict": vgda.mirror_pool_strict, "pools": rows}
