"""The VG descriptor (VGDA), status area (VGSA) and dirty-region log (DRL) as data (pure).

LP→PP maps are held in memory as one list per copy (``maps[copy][lp] = (pv_index, pp)``) and
stored as extents ``[lp, pv_index, pp, count]`` so contiguous allocations cost a few bytes.
Stale state is per physical partition: ``stale[(pv_index, pp)]`` is the set of changed
64 KiB chunks of that PP, or ``None`` when the whole PP must be copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: names of volume groups and logical volumes (AIX: 15 characters)
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,14}$")

CHUNK = 64 * 1024  # fine-grained resync unit
MAX_CHUNKS_PER_PP = 256  # beyond this many changed chunks a PP is tracked as wholly stale
DRL_REGION = 4 * 1024 * 1024  # dirty-region log granularity, in LV address space
MAX_GENERATIONS = 32

PV_ACTIVE, PV_MISSING, PV_REMOVED = "active", "missing", "removed"

Loc = tuple[int, int]  # (pv_index, pp)


@dataclass(slots=True)
class PVEntry:
    pvid: str
    index: int
    pp_count: int
    pool: str = ""  # mirror pool (lvm/pools.py); "" for none

    def to_json(self) -> list:
        return [self.pvid, self.index, self.pp_count] + ([self.pool] if self.pool else [])


@dataclass(slots=True)
class LVEntry:
    name: str
    lvid: int
    lps: int
    strictness: str = "y"  # y strict, s super strict, n none
    upperbound: int = 0  # max PVs per copy; 0 = unlimited
    maps: list[list[Loc]] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)  # mirror pool per copy ("" none)
    type: str = "lv"  # or "aio_cache": the I/O cache of asynchronous mirror pools

    @property
    def copies(self) -> int:
        return len(self.maps)

    def to_json(self) -> dict:
        return {"name": self.name, "lvid": self.lvid, "lps": self.lps,
                "strictness": self.strictness, "upperbound": self.upperbound,
                "maps": [to_extents(m) for m in self.maps],
                **({"pools": self.pools} if any(self.pools) else {}),
                **({"type": self.type} if self.type != "lv" else {})}

    @classmethod
    def from_json(cls, d: dict) -> LVEntry:
        return cls(d["name"], d["lvid"], d["lps"], d["strictness"], d["upperbound"],
                   [from_extents(e) for e in d["maps"]], list(d.get("pools", [])),
                   d.get("type", "lv"))

    def pvs_of_copy(self, copy: int) -> set[int]:
        return {pv for pv, _ in self.maps[copy]}


def to_extents(m: list[Loc]) -> list[list[int]]:
    out: list[list[int]] = []
    for lp, (pv, pp) in enumerate(m):
        if out:
            last = out[-1]
            if last[1] == pv and last[2] + last[3] == pp and last[0] + last[3] == lp:
                last[3] += 1
                continue
        out.append([lp, pv, pp, 1])
    return out


def from_extents(extents: list[list[int]]) -> list[Loc]:
    m: list[Loc] = []
    for lp, pv, pp, count in extents:
        if lp != len(m):
            raise ValueError("extents are not contiguous")
        m.extend((pv, pp + i) for i in range(count))
    return m


@dataclass(slots=True)
class VGDA:
    vgid: str
    name: str
    pp_size: int
    quorum: bool = True
    auto_on: bool = False
    pvs: list[PVEntry] = field(default_factory=list)
    lvs: dict[str, LVEntry] = field(default_factory=dict)
    next_lvid: int = 1
    created: float = 0.0
    modified: float = 0.0
    last_site: str = ""
    mirror_pool_strict: str = "n"  # chvg -M: n, y (every copy in a pool) or s (super strict)
    # asynchronous mirror pools: pool -> {"cache_lv": LV name, "hwm": percent}
    async_pools: dict[str, dict] = field(default_factory=dict)
    # chvg --resync-floor/--resync-impact: {"floor_mb": MB/s, "impact_pct": percent}
    resync_limits: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"vgid": self.vgid, "name": self.name, "pp_size": self.pp_size,
                "quorum": self.quorum, "auto_on": self.auto_on,
                "pvs": [p.to_json() for p in self.pvs],
                "lvs": [lv.to_json() for lv in self.lvs.values()],
                "next_lvid": self.next_lvid, "created": self.created,
                "modified": self.modified, "last_site": self.last_site,
                "mirror_pool_strict": self.mirror_pool_strict,
                **({"async_pools": self.async_pools} if self.async_pools else {}),
                **({"resync_limits": self.resync_limits} if self.resync_limits else {})}

    @classmethod
    def from_json(cls, d: dict) -> VGDA:
        lvs = [LVEntry.from_json(x) for x in d["lvs"]]
        return cls(d["vgid"], d["name"], d["pp_size"], d["quorum"], d["auto_on"],
                   [PVEntry(*p) for p in d["pvs"]], {lv.name: lv for lv in lvs},
                   d["next_lvid"], d["created"], d["modified"], d.get("last_site", ""),
                   d.get("mirror_pool_strict", "n"), dict(d.get("async_pools", {})),
                   dict(d.get("resync_limits", {})))

    def pv(self, index: int) -> PVEntry:
        for p in self.pvs:  # a plain loop: this is on the I/O path (VolumeGroup.usable)
            if p.index == index:
                return p
        raise KeyError(f"no PV with index {index} in volume group {self.name}")

    def pv_by_pvid(self, pvid: str) -> PVEntry | None:
        return next((p for p in self.pvs if p.pvid == pvid), None)

    def owners(self) -> dict[Loc, tuple[str, int, int]]:
        """(pv_index, pp) -> (lv name, copy, lp) for every allocated partition."""
        out = {}
        for lv in self.lvs.values():
            for c, m in enumerate(lv.maps):
                for lp, loc in enumerate(m):
                    out[loc] = (lv.name, c, lp)
        return out

    def data_lvs(self) -> list[LVEntry]:
        """The LVs that hold data (not an asynchronous mirror pool's I/O cache)."""
        return [lv for lv in self.lvs.values() if lv.type == "lv"]

    def cache_users(self, lv: str) -> list[str]:
        """The asynchronous mirror pools whose I/O cache is ``lv``."""
        return [p for p, a in self.async_pools.items() if a.get("cache_lv") == lv]

    def used(self) -> set[Loc]:
        return {loc for lv in self.lvs.values() for m in lv.maps for loc in m}

    def free_pps(self, index: int, used: set[Loc] | None = None) -> list[int]:
        used = self.used() if used is None else used
        return [pp for pp in range(self.pv(index).pp_count) if (index, pp) not in used]


@dataclass(slots=True)
class VGSA:
    pv_state: dict[str, str] = field(default_factory=dict)  # pvid -> active/missing/removed
    stale: dict[Loc, set[int] | None] = field(default_factory=dict)
    # generations, oldest first: a new one starts whenever the PVs may diverge (a PV lost,
    # a varyon without all PVs); {"id", "site", "time", "written", "first_write"}
    gens: list[dict] = field(default_factory=list)
    updated: float = 0.0

    def to_json(self) -> dict:
        return {"pv_state": self.pv_state,
                "stale": [[pv, pp, None if ch is None else sorted(ch)]
                          for (pv, pp), ch in sorted(self.stale.items(),
                                                     key=lambda kv: kv[0])],
                "gens": self.gens, "updated": self.updated}

    @classmethod
    def from_json(cls, d: dict) -> VGSA:
        return cls(dict(d["pv_state"]),
                   {(pv, pp): (None if ch is None else set(ch)) for pv, pp, ch in d["stale"]},
                   [dict(g) for g in d.get("gens", [])], d.get("updated", 0.0))

    def new_generation(self, gen_id: str, site: str, now: float) -> None:
        self.gens.append({"id": gen_id, "site": site, "time": now, "written": False,
                          "first_write": 0.0})
        del self.gens[:-MAX_GENERATIONS]

    def absorb(self, gens: list[dict]) -> None:
        """Remember another side's generations as discarded history (after a split brain is
        settled), keeping our own current generation last."""
        known = {g["id"] for g in self.gens}
        extra = [dict(g, discarded=True) for g in gens if g["id"] not in known]
        if extra:
            self.gens[-1:-1] = extra
            del self.gens[:-MAX_GENERATIONS]

    @property
    def current(self) -> dict | None:
        return self.gens[-1] if self.gens else None

    def mark(self, loc: Loc, chunks: set[int] | None) -> bool:
        """Record that ``chunks`` of ``loc`` (None: all of it) missed writes.

        Returns True when this is new information that must be made durable.
        """
        if chunks is not None and not chunks:
            return False
        if loc in self.stale:
            cur = self.stale[loc]
            if cur is None or (chunks is not None and chunks <= cur):
                return False
            new = None if chunks is None else cur | chunks
        else:
            new = None if chunks is None else set(chunks)
        if new is not None and len(new) > MAX_CHUNKS_PER_PP:
            new = None
        self.stale[loc] = new
        return True

    def stale_count(self, pv_index: int | None = None) -> int:
        return sum(1 for (pv, _) in self.stale if pv_index is None or pv == pv_index)


def chunks_of(start: int, length: int) -> set[int]:
    """The 64 KiB chunks within a PP covered by ``[start, start+length)``."""
    return set(range(start // CHUNK, (start + length - 1) // CHUNK + 1)) if length else set()
