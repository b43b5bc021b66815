"""Helpers for LVM tests: read a copy of an LV straight from the backing files and compare
copies."""

from __future__ import annotations

DATA_START = 8 << 20  # lvm.layout.DATA_START, restated so tests check the on-disk format


def read_copy(lslv_map: dict, copy: int, files: dict[str, str], pp_mb: int) -> bytes:
    """Copy ``copy`` (0-based) of an LV, assembled from its PVs' files via ``lslv -m``."""
    pp = pp_mb << 20
    out = []
    for row in lslv_map["map"]:
        c = row["copies"][copy]
        with open(files[c["pv"]], "rb") as f:
            f.seek(DATA_START + (c["pp"] - 1) * pp)
            out.append(f.read(pp))
    return b"".join(out)


def diff_blocks(x: bytes, y: bytes, block: int = 4096) -> list[int]:
    """Offsets of the blocks that differ."""
    assert len(x) == len(y)
    return [o for o in range(0, len(x), block) if x[o:o + block] != y[o:o + block]]


def copies_equal(geo, lv: str) -> list[int]:
    """Offsets of the blocks where copy 2 of ``lv`` differs from copy 1 (``[]``: identical),
    read from the backing files of a :class:`tests.conftest.Geo`."""
    m = geo.a.json("lslv", "-m", lv)
    return diff_blocks(read_copy(m, 0, geo.files, m["pp_size_mb"]),
                       read_copy(m, 1, geo.files, m["pp_size_mb"]))
