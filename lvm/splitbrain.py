"""Split-brain analysis at varyon (pure): which PVs carry the newest state of the VG.

Every PV's VGSA holds the chain of generations it has seen. A PV whose newest generation
appears in another PV's chain is merely behind (it missed updates: the normal failback case).
Two PVs whose chains diverged are two histories; if both were written after they parted the
VG is split-brained and must not be merged silently: the administrator names the site whose
changes to discard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Side:
    """PVs sharing one newest generation."""

    gen: str
    pvs: tuple[int, ...]
    chain: tuple[dict, ...]

    @property
    def site(self) -> str:
        return self.chain[-1].get("site", "") if self.chain else ""

    def ids(self) -> list[str]:
        return [g["id"] for g in self.chain]


class SplitBrain(Exception):
    def __init__(self, sides: list[Side], message: str):
        super().__init__(message)
        self.sides = sides


def written_since_shared(chain, seen: set[str]) -> list[dict]:
    """The written generations of ``chain`` after the newest one whose id is in ``seen``
    (older entries may have been trimmed from a bounded chain without being foreign)."""
    common = max((k for k, g in enumerate(chain) if g["id"] in seen), default=-1)
    return [g for g in chain[common + 1:] if g.get("written")]


def _wrote_after(side: Side, other: Side) -> dict | None:
    """The newest generation ``side`` wrote that ``other`` has not seen."""
    wrote = written_since_shared(side.chain, set(other.ids()))
    return wrote[-1] if wrote else None


def choose(chains: dict[int, list[dict]], seqs: dict[int, int],
           discard_site: str | None = None, describe=None) -> tuple[list[int], list[int]]:
    """(PVs carrying the winning state, PVs to drop wholesale) from each PV's chain.

    Raises SplitBrain when two sides wrote while apart and ``discard_site`` does not settle it.
    ``describe(side, gen)`` formats one side for the message.
    """
    sides: dict[str, Side] = {}
    for pv, chain in chains.items():
        gen = chain[-1]["id"] if chain else ""
        s = sides.get(gen)
        sides[gen] = Side(gen, (s.pvs if s else ()) + (pv,), tuple(chain))
    heads = [s for s in sides.values()
             if not any(s.gen in o.ids()[:-1] for o in sides.values() if o is not s)]
    if len(heads) == 1:
        return list(heads[0].pvs), []
    writers = [s for s in heads if any(_wrote_after(s, o) for o in heads if o is not s)]
    dropped: list[Side] = []
    if len(writers) > 1:
        if discard_site is not None:
            dropped = [s for s in writers if s.site == discard_site]
            writers = [s for s in writers if s.site != discard_site]
        if len(writers) != 1:
            def fmt(s: Side) -> str:
                other = next(o for o in heads if o is not s)
                return describe(s, _wrote_after(s, other)) if describe else s.site
            raise SplitBrain(heads, "split brain: the volume group was written on both sides "
                             "while they were apart: " + "; ".join(fmt(s) for s in heads)
                             + ". Choose the survivor: varyonvg --discard-site SITE VG")
    best = writers[0] if writers else max(heads, key=lambda s: max(seqs[p] for p in s.pvs))
    losers = [p for s in dropped for p in s.pvs]
    return list(best.pvs), losers
