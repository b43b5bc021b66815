"""Quorum arithmetic and partition allocation (pure functions).

Quorum follows AIX: a VG of one PV keeps two VGDA copies on it, a VG of two PVs keeps two on
the first and one on the second, and larger VGs keep one per PV. Quorum is a strict majority
of all copies.

Allocation honours the LV's strictness: ``y`` (no two copies of one LP on the same PV),
``s`` super strict (no PV holds partitions of two different copies) and ``n`` (none), and
the upper bound on the number of PVs each copy may use.
"""

from __future__ import annotations

from lvm.metadata import VGDA, Loc, LVEntry


class AllocationError(ValueError):
    pass


def vgda_counts(pv_indexes: list[int]) -> dict[int, int]:
    if len(pv_indexes) == 1:
        return {pv_indexes[0]: 2}
    if len(pv_indexes) == 2:
        return {pv_indexes[0]: 2, pv_indexes[1]: 1}
    return dict.fromkeys(pv_indexes, 1)


def has_quorum(pv_indexes: list[int], reachable: set[int]) -> bool:
    counts = vgda_counts(sorted(pv_indexes))
    total = sum(counts.values())
    return 2 * sum(n for pv, n in counts.items() if pv in reachable) > total


def check_strictness(lv: LVEntry, strictness: str | None = None,
                     upperbound: int | None = None) -> str | None:
    """Why ``lv``'s current map violates the policy, or None if it complies."""
    strictness = lv.strictness if strictness is None else strictness
    upperbound = lv.upperbound if upperbound is None else upperbound
    if strictness in ("y", "s"):
        for lp in range(lv.lps):
            pvs = [m[lp][0] for m in lv.maps]
            if len(set(pvs)) != len(pvs):
                return f"LP {lp + 1} of {lv.name} has two copies on one physical volume"
    if strictness == "s":
        for a in range(lv.copies):
            for b in range(a + 1, lv.copies):
                shared = lv.pvs_of_copy(a) & lv.pvs_of_copy(b)
                if shared:
                    return (f"copies {a + 1} and {b + 1} of {lv.name} share a physical "
                            f"volume; super strict needs disjoint PVs")
    if upperbound:
        for c in range(lv.copies):
            if len(lv.pvs_of_copy(c)) > upperbound:
                return (f"copy {c + 1} of {lv.name} spans {len(lv.pvs_of_copy(c))} physical "
                        f"volumes, more than the upper bound {upperbound}")
    return None


def allocate_copy(vg: VGDA, lv: LVEntry, candidates: list[int], lps: range,
                  copy: int, used: set[Loc]) -> list[Loc]:
    """Partitions for LPs ``lps`` of copy ``copy`` of ``lv`` on ``candidates`` (in order).

    ``used`` is updated with what is taken. Raises AllocationError (and takes nothing) when
    no placement is found. The greedy pass follows the candidate order; when that fails it
    tries again preferring PVs that no other copy uses, which keeps strict copies apart.
    """
    try:
        return _allocate_greedy(vg, lv, candidates, lps, copy, used)
    except AllocationError:
        others = set()
        for c in range(lv.copies):
            if c != copy:
                others |= lv.pvs_of_copy(c)
        reordered = ([pv for pv in candidates if pv not in others]
                     + [pv for pv in candidates if pv in others])
        if reordered == candidates:
            raise
        return _allocate_greedy(vg, lv, reordered, lps, copy, used)


def _allocate_greedy(vg: VGDA, lv: LVEntry, candidates: list[int], lps: range,
                     copy: int, used: set[Loc]) -> list[Loc]:
    strict = lv.strictness
    # PVs this copy may not use at all (super strict) and PVs it already uses
    forbidden_all: set[int] = set()
    if strict == "s":
        for c in range(lv.copies):
            if c != copy:
                forbidden_all |= lv.pvs_of_copy(c)
    own: list[int] = []
    if copy < lv.copies:
        own = [pv for pv in candidates if pv in lv.pvs_of_copy(copy)]
    order = own + [pv for pv in candidates if pv not in own and pv not in forbidden_all]
    free = {pv: [pp for pp in vg.free_pps(pv, used)] for pv in order}
    taken: list[Loc] = []
    pvs_used: set[int] = set(own)
    for lp in lps:
        banned = set()
        if strict in ("y", "s"):
            banned = {lv.maps[c][lp][0] for c in range(lv.copies)
                      if c != copy and lp < len(lv.maps[c])}
        for pv in order:
            if pv in banned or not free[pv]:
                continue
            if lv.upperbound and pv not in pvs_used and len(pvs_used) >= lv.upperbound:
                continue
            pp = free[pv].pop(0)
            taken.append((pv, pp))
            pvs_used.add(pv)
            break
        else:
            raise AllocationError(
                f"not enough free partitions for copy {copy + 1} of {lv.name} "
                f"(LP {lp + 1} of {lv.lps}) on the allowed physical volumes under "
                f"strictness {strict}" + (f" and upper bound {lv.upperbound}"
                                          if lv.upperbound else ""))
    used.update(taken)
    return taken
