"""On-disk layout of a physical volume and the two-slot record format (pure, no I/O).

Every PV starts with a metadata area; logical-volume data begins at :data:`DATA_START`::

    0        PV header      slot A (4 KiB)   4 KiB   PV header      slot B
    64 KiB   dirty-region log slot A (64 KiB) 128 KiB dirty-region log slot B
    1 MiB    VG status area slot A (1 MiB)   2 MiB   VG status area slot B
    4 MiB    VG descriptor  slot A (2 MiB)   6 MiB   VG descriptor  slot B
    8 MiB    physical partitions, pp_size each

A record is written to slot ``seq % 2``, so the previous generation stays intact in the other
slot. A slot is ``MAGIC | kind | seq | length | crc32`` (the CRC covers kind, seq, length
and body) followed by a zlib-compressed JSON
payload; a torn or corrupt slot fails its checksum and the other slot is used.
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from dataclasses import dataclass

KiB, MiB = 1 << 10, 1 << 20

MAGIC = b"GLVMMD01"
SLOT_HEADER = struct.Struct(">8sIQII")  # magic, kind, seq, payload length, crc32
DATA_START = 8 * MiB
MAX_PAYLOAD = 64 * MiB  # inflated size cap: a corrupt slot cannot balloon memory


class Kind(enum.IntEnum):
    PVHEADER = 1
    DRL = 2
    VGSA = 3
    VGDA = 4


@dataclass(frozen=True, slots=True)
class Area:
    offset: int
    slot_size: int

    def slot_offset(self, seq: int) -> int:
        return self.offset + (seq % 2) * self.slot_size


AREAS: dict[Kind, Area] = {
    Kind.PVHEADER: Area(0, 4 * KiB),
    Kind.DRL: Area(64 * KiB, 64 * KiB),
    Kind.VGSA: Area(1 * MiB, 1 * MiB),
    Kind.VGDA: Area(4 * MiB, 2 * MiB),
}


class RecordTooLarge(ValueError):
    pass


def encode(kind: Kind, seq: int, payload: dict) -> bytes:
    """A full slot image (padded to 4 KiB) holding ``payload`` as generation ``seq``."""
    body = zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)
    area = AREAS[kind]
    if SLOT_HEADER.size + len(body) > area.slot_size:
        raise RecordTooLarge(f"{kind.name} record of {len(body)} bytes exceeds its "
                             f"{area.slot_size}-byte slot")
    raw = SLOT_HEADER.pack(MAGIC, kind, seq, len(body), _crc(kind, seq, body)) + body
    pad = -len(raw) % (4 * KiB)
    return raw + bytes(pad)


def decode(kind: Kind, raw: bytes) -> tuple[int, dict] | None:
    """(seq, payload) of a slot image, or None if it is empty, torn or of another kind."""
    if len(raw) < SLOT_HEADER.size:
        return None
    magic, k, seq, length, crc = SLOT_HEADER.unpack_from(raw)
    if magic != MAGIC or k != kind or SLOT_HEADER.size + length > len(raw):
        return None
    body = raw[SLOT_HEADER.size:SLOT_HEADER.size + length]
    if _crc(k, seq, body) != crc:
        return None
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body, MAX_PAYLOAD)
        if inflater.unconsumed_tail:
            return None
        payload = json.loads(text)
    except (zlib.error, ValueError, RecursionError):
        return None
    return (seq, payload) if isinstance(payload, dict) else None


def _crc(kind: int, seq: int, body: bytes) -> int:
    """Checksum over the kind, the sequence number and the body, so a flipped header bit
    cannot promote an old slot."""
    return zlib.crc32(body, zlib.crc32(struct.pack(">IQI", kind, seq, len(body))))


def newest(kind: Kind, slot_a: bytes, slot_b: bytes) -> tuple[int, dict] | None:
    """The valid slot with the higher sequence number."""
    found = [r for r in (decode(kind, slot_a), decode(kind, slot_b)) if r is not None]
    return max(found, key=lambda r: r[0]) if found else None


def pp_count(disk_size: int, pp_size: int) -> int:
    return max(0, (disk_size - DATA_START) // pp_size)


def default_pp_size(disk_sizes: list[int], minimum: int = 4 * MiB) -> int:
    """4 MiB, doubled until no PV has more than 65,536 PPs (as mkvg does)."""
    pp = minimum
    while any(pp_count(s, pp) > 65536 for s in disk_sizes):
        pp *= 2
    return pp


def pp_offset(pp: int, pp_size: int) -> int:
    return DATA_START + pp * pp_size
