"""Mirror pools (AIX 6.1+): named sets of a VG's PVs that LV copies are placed in (pure).

A PV belongs to at most one pool. GLVM's rule: a pool's PVs are all at one site, so local
disks and RPV clients never share a pool. An LV copy may be assigned a pool (``mklv -p
copy1=POOL``); it is then allocated only on that pool's PVs. With ``chvg -M s`` (super
strict) every copy of every LV must be in a pool and the copies of one LV in different
pools; asynchronous mirroring needs that.
"""

from __future__ import annotations

import re

from lvm.metadata import VGDA, LVEntry

POOL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,14}$")
COPY_POOL_RE = re.compile(r"^copy([123])=(.*)$")
STRICT_MODES = {"n": "no", "y": "yes", "s": "superstrict"}


class PoolError(ValueError):
    pass


def check_name(pool: str) -> str:
    if not POOL_RE.match(pool or ""):
        raise PoolError(f"mirror pool name '{pool}' must be 1-15 letters, digits or _, "
                        f"starting with a letter")
    return pool


def parse_copy_pools(specs: list[str] | None, copies: range) -> dict[int, str]:
    """``["copy1=PoolA", "copy2=PoolB"]`` -> {0: "PoolA", 1: "PoolB"} for copies in range."""
    out: dict[int, str] = {}
    for spec in specs or []:
        m = COPY_POOL_RE.match(spec)
        if not m:
            raise PoolError(f"'{spec}' is not copyN=POOL (N is 1, 2 or 3)")
        copy = int(m.group(1)) - 1
        if copy not in copies:
            raise PoolError(f"{spec}: there is no copy {copy + 1} to place here (copies "
                            f"{copies.start + 1}-{copies.stop})")
        if copy in out:
            raise PoolError(f"copy {copy + 1} is given two mirror pools")
        out[copy] = check_name(m.group(2))
    return out


def pools_of(vgda: VGDA) -> dict[str, list[int]]:
    """Pool name -> PV indexes, in PV order."""
    out: dict[str, list[int]] = {}
    for p in vgda.pvs:
        if p.pool:
            out.setdefault(p.pool, []).append(p.index)
    return out


def copy_pool(lv: LVEntry, copy: int) -> str:
    return lv.pools[copy] if copy < len(lv.pools) else ""


def check_site(vgda: VGDA, pool: str, indexes: list[int], site_of: dict[int, str]) -> None:
    """Refuse to put PVs of two sites in one pool (counting the PVs already in it)."""
    members = set(pools_of(vgda).get(pool, [])) | set(indexes)
    sites = {site_of.get(i, "") for i in members}
    if len(sites) > 1:
        raise PoolError(f"mirror pool {pool} would hold physical volumes of sites "
                        f"{', '.join(sorted(s or 'unknown' for s in sites))}; local and "
                        f"remote physical volumes never share a mirror pool")


def pool_members(vgda: VGDA, pool: str) -> list[int]:
    members = pools_of(vgda).get(pool)
    if not members:
        raise PoolError(f"mirror pool {pool} does not exist in volume group {vgda.name}")
    return members


def check_pv_change(vgda: VGDA, index: int, pool: str) -> None:
    """A PV keeps the copies placed on it: it may not leave the pool those copies are in."""
    for lv in vgda.lvs.values():
        for c, m in enumerate(lv.maps):
            here = copy_pool(lv, c)
            if here and here != pool and any(pv == index for pv, _ in m):
                raise PoolError(f"copy {c + 1} of {lv.name} is in mirror pool {here} and has "
                                f"partitions on this physical volume")


def strictness_problem(vgda: VGDA, mode: str) -> str | None:
    """Why the VG's LVs break mirror pool strictness ``mode`` (y or s), or None."""
    if mode == "n":
        return None
    for lv in vgda.lvs.values():
        names = [copy_pool(lv, c) for c in range(lv.copies)]
        if not all(names):
            missing = [str(c + 1) for c, n in enumerate(names) if not n]
            return f"copy {', '.join(missing)} of {lv.name} is not in a mirror pool"
        if mode == "s" and len(set(names)) != len(names):
            return f"two copies of {lv.name} are in the same mirror pool"
        for c, name in enumerate(names):
            members = set(pools_of(vgda).get(name, []))
            stray = {pv for pv, _ in lv.maps[c]} - members
            if stray:
                return f"copy {c + 1} of {lv.name} has partitions outside mirror pool {name}"
    return None


def check_copy_pools(vgda: VGDA, lv: str, pools: list[str]) -> None:
    """An LV's copies (pool per copy, "" for none) against the VG's mirror pool strictness:
    under y or s every copy needs a pool, under s each its own."""
    mode = vgda.mirror_pool_strict
    if mode == "n":
        return
    missing = [str(c + 1) for c, name in enumerate(pools) if not name]
    if missing:
        raise PoolError(f"volume group {vgda.name} has mirror pool strictness "
                        f"{STRICT_MODES[mode]}: give a mirror pool for copy "
                        f"{', '.join(missing)} of {lv} (-p copyN=POOL)")
    if mode == "s" and len(set(pools)) != len(pools):
        raise PoolError(f"volume group {vgda.name} is mirror pool super strict: each copy "
                        f"of {lv} needs its own mirror pool")
