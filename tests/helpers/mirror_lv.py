"""A two-copy logical volume over in-memory disks, without a manager or a daemon: copy 1 on
a local :class:`PageCacheDisk`, copy 2 on a :class:`RemoteMemDisk` that the test answers."""

from __future__ import annotations

from lvm import layout
from lvm.layout import Kind, MiB
from lvm.metadata import DRL_REGION, VGDA, VGSA, LVEntry, PVEntry
from lvm.vg import VolumeGroup
from lvm.volume import LogicalVolume
from tests.helpers.disks import PageCacheDisk, RemoteMemDisk

PP = 4 * MiB
LOCAL, REMOTE = 1, 2


def make_lv(local: PageCacheDisk, remote: RemoteMemDisk, pp: int = PP) -> LogicalVolume:
    """A two-copy LV of 2 LPs of ``pp`` bytes: copy 1 on the local disk, copy 2 on the
    remote one; its dirty regions durable."""
    entry = LVEntry("lv00", 1, 2, "y", 0, [[(LOCAL, 0), (LOCAL, 1)], [(REMOTE, 0), (REMOTE, 1)]])
    vgda = VGDA("v" * 32, "vg", pp, quorum=False,
                pvs=[PVEntry("a" * 32, LOCAL, 10), PVEntry("b" * 32, REMOTE, 10)],
                lvs={"lv00": entry})
    vgsa = VGSA()  # as varyon reads it: a generation already marked written, on disk
    vgsa.new_generation("g" * 16, "", 0.0)
    vgsa.current["written"] = True
    vg = VolumeGroup(vgda, vgsa, {LOCAL: local, REMOTE: remote}, {k: 0 for k in Kind},
                     is_local=lambda d: d is local, quorum_active=False)
    vg.drl_durable = {(1, r) for r in range((2 * pp - 1) // DRL_REGION + 1)}
    return LogicalVolume(vg, entry)


def vgsa_on(disk: PageCacheDisk) -> dict:
    area = layout.AREAS[Kind.VGSA]
    raw = bytes(disk.buf[area.offset:area.offset + 2 * area.slot_size])
    rec = layout.newest(Kind.VGSA, raw[:area.slot_size], raw[area.slot_size:])
    return rec[1] if rec else {}
