"""Varyon assembly: a volume group built from its PVs' own metadata.

Which PVs answer, whose history is newest (split-brain detection, lvm/splitbrain.py), quorum,
the state of each PV, dirty-region recovery (lvm/recovery.py), and taking back PVs that answer
again. The manager registers what this builds; nothing here exports or schedules anything.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog

from lvm import policy, splitbrain
from lvm.layout import Kind
from lvm.metadata import PV_ACTIVE, PV_MISSING, PV_REMOVED, VGDA, VGSA
from lvm.ports import ErrorSink, PVDirectory, device_for_pvid, name_for_pvid
from lvm.records import PVMeta, read_pv_meta, read_record
from lvm.recovery import recover_dirty_regions
from lvm.vg import VolumeGroup
from lvm.volume import LogicalVolume
from rpv.blockdev import BlockDevice
from rpv.errors import CommandError

log = structlog.get_logger("lvm")


def is_local(dev: BlockDevice) -> bool:
    """Whether a PV's data is on this host (a local disk, not an RPV client)."""
    return dev.local


class Assembler:
    def __init__(self, pvs: PVDirectory, errors: ErrorSink | None):
        self.pvs = pvs
        self.errlog = errors
        # run at varyon before dirty-region recovery (lvm.asyncmirror.AsyncMirrors.prepare)
        self.prepare: Callable[[VolumeGroup, dict], Awaitable[None]] | None = None

    def build(self, vgda: VGDA, vgsa: VGSA, devmap: dict, seqs: dict, quorum: bool,
              maintenance: bool = False) -> VolumeGroup:
        """A VolumeGroup over ``devmap`` (PV index -> device) with its logical volumes."""
        group = VolumeGroup(vgda, vgsa, devmap, seqs, is_local=is_local, errlog=self.errlog,
                            quorum_active=quorum, maintenance=maintenance,
                            site=self.pvs.site())
        group.lvs = {n: LogicalVolume(group, e) for n, e in vgda.lvs.items()}
        return group

    async def scan(self, pvids: list[str], vgid: str) -> dict[str, tuple[BlockDevice, PVMeta]]:
        """Read the metadata of every Available disk among ``pvids`` that belongs to ``vgid``."""
        found = {}
        for pvid in pvids:
            dev = device_for_pvid(self.pvs, pvid)
            if dev is None:
                continue
            try:
                meta = await read_pv_meta(dev)
            except OSError as e:
                log.warning("lvm_pv_unreadable", pv=dev.name, error=str(e))
                continue
            if meta.header and meta.header.get("vgid") == vgid and meta.vgda:
                found[pvid] = (dev, meta)
        return found

    def fence(self, vg: str, pvids: list[str]) -> None:
        """Refuse to use disks that this site is serving to a remote RPV client."""
        for pvid in pvids:
            server = self.pvs.serving(pvid)
            if server is not None:
                raise CommandError(
                    f"0516-1777 varyonvg: {name_for_pvid(self.pvs, pvid)} of {vg} is exported "
                    f"by {server}, which is Available: the volume group may be in use at "
                    f"another site. Run rmdev -l {server} first (or varyonvg -f)")

    async def assemble(self, name: str, vgid: str, pvids: list[str], force: bool,
                       maintenance: bool, discard_site: str | None
                       ) -> tuple[VolumeGroup, list[dict]]:
        """The VG ``name`` built from the metadata its reachable PVs hold, with each PV's
        status: the newest history wins (a split brain is refused unless ``discard_site``
        names the side to drop), quorum is checked (``force`` overrides), missing and
        returning PVs are marked, and the regions the DRL logged dirty are made consistent.
        Not registered: the caller does that, and its LVs are exported from then on."""
        found = await self.scan(pvids, vgid)
        if not found:
            raise CommandError(f"0516-013 varyonvg: no physical volume of {name} is "
                               f"reachable")
        # the newest descriptor names the full PV set; look for any PV we did not know about
        vgda = VGDA.from_json(max((m.vgda for _, m in found.values()), key=lambda r: r[0])[1])
        found.update(await self.scan([p.pvid for p in vgda.pvs if p.pvid not in found], vgid))
        winners, dropped = self.newest_history(found, discard_site)
        seq_vgda, best = max((found[p][1].vgda for p in winners), key=lambda r: r[0])
        vgda = VGDA.from_json(best)
        vgda.name = name
        metas = {p.index: found.get(p.pvid) for p in vgda.pvs}
        reachable = {i for i, f in metas.items() if f is not None}
        all_pvs = [p.index for p in vgda.pvs]
        if vgda.quorum:
            if not policy.has_quorum(all_pvs, reachable) and not force:
                raise CommandError(
                    f"0516-052 varyonvg: Volume group {name} cannot be varied on without a "
                    f"quorum: {len(reachable)} of {len(all_pvs)} physical volumes reachable; "
                    f"use -f to force")
        elif len(reachable) < len(all_pvs) and not force:
            raise CommandError(
                f"0516-052 varyonvg: quorum is off, so all {len(all_pvs)} physical volumes of "
                f"{name} must be reachable ({len(reachable)} are); use -f to force")
        vgsa_rec = max((found[p][1].vgsa for p in winners if found[p][1].vgsa),
                       key=lambda r: r[0], default=(0, VGSA().to_json()))
        drl_rec = max((found[p][1].drl for p in winners if found[p][1].drl),
                      key=lambda r: r[0], default=(0, {"regions": []}))
        vgsa = VGSA.from_json(vgsa_rec[1])
        for pvid in dropped:  # the discarded side of a split brain: recopy all of it
            vgsa.absorb(found[pvid][1].vgsa[1].get("gens", []))
            vgsa.pv_state[pvid] = PV_REMOVED
            index = vgda.pv_by_pvid(pvid).index
            for loc in vgda.used():
                if loc[0] == index:
                    vgsa.mark(loc, None)
        pv_status = []
        for p in vgda.pvs:
            recorded = vgsa.pv_state.get(p.pvid, PV_ACTIVE)
            if p.index not in reachable:
                vgsa.pv_state[p.pvid] = PV_MISSING if recorded == PV_ACTIVE else recorded
            elif recorded != PV_ACTIVE:
                # another varyon saw this PV fail: it missed updates; the administrator
                # returns it with chpv -v a
                vgsa.pv_state[p.pvid] = PV_REMOVED
            pv_status.append(self.pv_status(p.pvid, vgsa.pv_state[p.pvid],
                                              p.index in reachable))
        devmap = {i: (f[0] if f else None) for i, f in metas.items()}
        seqs = {Kind.PVHEADER: 0, Kind.VGDA: seq_vgda, Kind.VGSA: vgsa_rec[0],
                Kind.DRL: drl_rec[0]}
        vgda.last_site = self.pvs.site()
        # not registered (so no LV is exported) until dirty regions are recovered
        group = self.build(vgda, vgsa, devmap, seqs, quorum=vgda.quorum,
                               maintenance=maintenance, )
        try:
            if not group.usable_pvs():
                raise CommandError(f"varyonvg: no active physical volume left in {name}")
            if len(group.usable_pvs()) < len(all_pvs):
                group.new_generation()  # running without some PVs: histories may diverge
            await group.commit_vgsa()
            await group.write_vgda()
            if self.prepare is not None:  # asynchronous pools: the cache first
                await self.prepare(group, {pvid: f[1].drl for pvid, f in found.items()
                                           if f[1].drl})
            await recover_dirty_regions(group, drl_rec[1])
        except (OSError, CommandError) as e:
            raise CommandError(f"varyonvg {name} failed: {e}") from None
        log.info("lvm_varyon", vg=name, reachable=len(reachable), total=len(all_pvs),
                 forced=force, maintenance=maintenance)
        return group, pv_status

    def newest_history(self, found: dict, discard_site: str | None) -> tuple[list, list]:
        """(PVIDs carrying the newest state, PVIDs of a discarded split-brain side)."""
        pvids = list(found)
        chains = {i: (found[p][1].vgsa[1].get("gens", []) if found[p][1].vgsa else [])
                  for i, p in enumerate(pvids)}
        seqs = {i: (found[p][1].vgsa[0] if found[p][1].vgsa else 0)
                for i, p in enumerate(pvids)}

        def describe(side, gen) -> str:
            names = " ".join(name_for_pvid(self.pvs, pvids[i]) or pvids[i][:16] for i in side.pvs)
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                 time.gmtime(gen["first_write"] if gen else 0))
            last = max(found[pvids[i]][1].vgsa[1].get("updated", 0) for i in side.pvs)
            return (f"site {side.site or '?'} ({names}) wrote from {when} until "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(last))}")

        try:
            winners, dropped = splitbrain.choose(chains, seqs, discard_site, describe)
        except splitbrain.SplitBrain as e:
            raise CommandError(f"0516-1999 varyonvg: {e}") from None
        return [pvids[i] for i in winners], [pvids[i] for i in dropped]

    def pv_status(self, pvid: str, state: str, reachable: bool) -> dict:
        name = name_for_pvid(self.pvs, pvid)
        if state == PV_REMOVED:
            status = "PVREMOVED"
        elif reachable and state == PV_ACTIVE:
            status = "PVACTIVE"
        else:
            status = "NONAME" if name is None else "PVMISSING"
        return {"name": name, "pvid": pvid, "status": status}

    async def probe_back(self, group: VolumeGroup, indexes: list[int], label: str,
                          discard_site: str | None = None) -> list:
        """Take back PVs that answer again. A PV whose history diverged from ours and was
        written meanwhile (split brain) is refused unless its site's changes are discarded,
        in which case all of it is recopied."""
        answered = []
        for i in indexes:
            pvid = group.vgda.pv(i).pvid
            dev = device_for_pvid(self.pvs, pvid)
            if dev is None:
                continue
            try:
                header = await read_record(dev, Kind.PVHEADER)
                theirs = await read_record(dev, Kind.VGSA)
            except OSError as e:  # stays missing; say why (varyonvg lists it as PVMISSING)
                log.warning("lvm_pv_unreadable", pv=dev.name, vg=group.name, error=str(e))
                continue
            if header is None or header[1].get("vgid") != group.vgda.vgid:
                continue
            wrote = splitbrain.written_since_shared(
                theirs[1].get("gens", []) if theirs else [],
                {g["id"] for g in group.vgsa.gens})
            if wrote:
                site = wrote[-1].get("site", "")
                if discard_site != site:
                    when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                         time.gmtime(wrote[0]["first_write"]))
                    raise CommandError(
                        f"0516-1999 varyonvg: split brain: {dev.name} was written at site "
                        f"{site or '?'} from {when} while this site ({group.site or '?'}) "
                        f"also wrote the volume group. Choose the survivor: varyonvg "
                        f"--discard-site {site or 'SITE'} {group.name} keeps this site's "
                        f"data; to keep {site}'s, vary off here and vary on there")
            answered.append((i, dev, theirs[1].get("gens", []) if wrote else None))
        for i, dev, diverged in answered:  # nothing changes unless every PV is acceptable
            if diverged is not None:
                group.vgsa.absorb(diverged)
                for loc in group.owners:
                    if loc[0] == i:
                        group.vgsa.mark(loc, None)
            group.devices[i] = dev
            group.pv_returned(i, label)
        return [dev.name for _, dev, _ in answered]

    @staticmethod
    async def bring_current(group: VolumeGroup) -> None:
        await group.commit_vgsa()
        await group.write_vgda()
        group.accept_boots()
        await group.commit_drl()
