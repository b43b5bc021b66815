"""Reading and writing the metadata records of one PV (the areas of lvm/layout.py): each kind
has two slots, written alternately, and the newest valid one wins."""

from __future__ import annotations

from dataclasses import dataclass

from lvm import layout
from lvm.layout import Kind
from rpv.blockdev import BlockDevice


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
