"""Unit tests for the pure modules of the LVM core: lvm.layout, lvm.metadata and lvm.policy."""

from __future__ import annotations

import json
import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvm import layout, metadata
from lvm.layout import (
    AREAS,
    DATA_START,
    MAGIC,
    SLOT_HEADER,
    Kind,
    MiB,
    RecordTooLarge,
    decode,
    default_pp_size,
    encode,
    newest,
    pp_count,
    pp_offset,
)
from lvm.metadata import (
    CHUNK,
    MAX_CHUNKS_PER_PP,
    VGDA,
    VGSA,
    LVEntry,
    PVEntry,
    chunks_of,
    from_extents,
    to_extents,
)
from lvm.policy import AllocationError, allocate_copy, check_strictness, has_quorum, vgda_counts

GiB, TiB = 1 << 30, 1 << 40


def roundtrip_json(d: dict) -> dict:
    """What a record looks like after being written to disk and read back."""
    return json.loads(json.dumps(d))


# ================================================================================================
# layout
# ================================================================================================

SAMPLE = {"vgid": "00f6f5d000004c000000011a4b2d3e4f", "pvs": [[1, 2, 3]], "nested": {"a": None},
          "flag": True, "f": 1.5, "s": "héllo"}


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("seq", [0, 1, 2, 7, 2**63 + 5])
def test_encode_decode_roundtrip_every_kind(kind, seq):
    raw = encode(kind, seq, SAMPLE)
    assert decode(kind, raw) == (seq, SAMPLE)


@pytest.mark.parametrize("kind", list(Kind))
def test_encoded_slot_is_padded_to_4k_and_fits_its_slot(kind):
    raw = encode(kind, 3, SAMPLE)
    assert len(raw) % 4096 == 0
    assert 0 < len(raw) <= AREAS[kind].slot_size
    assert raw.startswith(MAGIC)
    magic, k, seq, length, crc = SLOT_HEADER.unpack_from(raw)
    assert (magic, k, seq) == (MAGIC, kind, 3)
    assert layout._crc(kind, 3, raw[SLOT_HEADER.size:SLOT_HEADER.size + length]) == crc


@pytest.mark.parametrize("kind", list(Kind))
def test_empty_payload_roundtrips(kind):
    assert decode(kind, encode(kind, 0, {})) == (0, {})


@pytest.mark.parametrize("kind", list(Kind))
def test_decode_of_zeroed_or_short_slot_is_none(kind):
    assert decode(kind, bytes(AREAS[kind].slot_size)) is None
    assert decode(kind, b"") is None
    assert decode(kind, encode(kind, 1, SAMPLE)[:SLOT_HEADER.size - 1]) is None


@pytest.mark.parametrize("kind", list(Kind))
def test_newest_picks_higher_seq_in_either_slot(kind):
    old, new = encode(kind, 4, {"gen": "old"}), encode(kind, 5, {"gen": "new"})
    assert newest(kind, old, new) == (5, {"gen": "new"})
    assert newest(kind, new, old) == (5, {"gen": "new"})


def test_newest_compares_seq_numerically_not_by_slot():
    # seq 10 lives in slot A (even), seq 9 in slot B (odd): A wins although B is "later"
    a, b = encode(Kind.VGDA, 10, {"g": 10}), encode(Kind.VGDA, 9, {"g": 9})
    assert newest(Kind.VGDA, a, b) == (10, {"g": 10})
    big, small = encode(Kind.VGDA, 2**40, {"g": "big"}), encode(Kind.VGDA, 3, {"g": 3})
    assert newest(Kind.VGDA, small, big) == (2**40, {"g": "big"})


def test_newest_of_two_empty_slots_is_none():
    assert newest(Kind.VGSA, bytes(4096), bytes(4096)) is None


def test_newest_with_one_valid_slot():
    rec = encode(Kind.DRL, 1, {"regions": []})
    assert newest(Kind.DRL, bytes(4096), rec) == (1, {"regions": []})
    assert newest(Kind.DRL, rec, bytes(4096)) == (1, {"regions": []})


def _big_payload(n: int) -> dict:
    """A payload whose compressed body spans several 4 KiB sectors (incompressible)."""
    return {"data": random.Random(n).randbytes((n + 1) // 2).hex()[:n]}


def _tear_truncate(raw: bytes) -> bytes:
    length = SLOT_HEADER.unpack_from(raw)[3]
    return raw[:SLOT_HEADER.size + length // 2]


def _tear_flip_payload_byte(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[SLOT_HEADER.size + 10] ^= 0x40
    return bytes(b)


def _tear_flip_last_payload_byte(raw: bytes) -> bytes:
    length = SLOT_HEADER.unpack_from(raw)[3]
    b = bytearray(raw)
    b[SLOT_HEADER.size + length - 1] ^= 0x01
    return bytes(b)


def _tear_zero(raw: bytes) -> bytes:
    return bytes(len(raw))


def _tear_old_tail(raw: bytes, old: bytes) -> bytes:
    """The first sector of the new record reached the disk, the rest still holds old data."""
    return raw[:4096] + old[4096:len(raw)]


TEARS = [_tear_truncate, _tear_flip_payload_byte, _tear_flip_last_payload_byte, _tear_zero]


@pytest.mark.parametrize("kind", [Kind.DRL, Kind.VGSA, Kind.VGDA])
@pytest.mark.parametrize("tear", TEARS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("newer_in_b", [True, False])
def test_torn_newer_slot_falls_back_to_older(kind, tear, newer_in_b):
    older = encode(kind, 6, _big_payload(9000) | {"gen": 6})
    newer = encode(kind, 7, _big_payload(9001) | {"gen": 7})
    assert len(newer) > 4096  # the tear really cuts a multi-sector record
    torn = tear(newer)
    assert decode(kind, torn) is None
    slots = (older, torn) if newer_in_b else (torn, older)
    got = newest(kind, *slots)
    assert got is not None and got[0] == 6 and got[1]["gen"] == 6


@pytest.mark.parametrize("kind", [Kind.DRL, Kind.VGSA, Kind.VGDA])
def test_partially_written_multi_sector_record_is_rejected(kind):
    # a write of seq 8 over the slot that held seq 6 only got its first sector out
    gen6 = encode(kind, 6, _big_payload(12000) | {"gen": 6})
    gen7 = encode(kind, 7, {"gen": 7})
    gen8 = encode(kind, 8, _big_payload(12001) | {"gen": 8})
    torn = _tear_old_tail(gen8, gen6)
    assert decode(kind, torn) is None
    assert newest(kind, torn, gen7) == (7, {"gen": 7})


def test_torn_pvheader_falls_back():
    older, newer = encode(Kind.PVHEADER, 0, {"pvid": "a"}), encode(Kind.PVHEADER, 1, {"pvid": "b"})
    for tear in TEARS:
        assert newest(Kind.PVHEADER, older, tear(newer)) == (0, {"pvid": "a"})


@pytest.mark.parametrize("kind", list(Kind))
def test_wrong_kind_is_none(kind):
    raw = encode(kind, 1, SAMPLE)
    for other in Kind:
        if other is not kind:
            assert decode(other, raw) is None


def test_wrong_magic_is_none():
    raw = bytearray(encode(Kind.VGDA, 1, SAMPLE))
    raw[0:8] = b"GLVMMD02"
    assert decode(Kind.VGDA, bytes(raw)) is None
    raw[0:8] = b"\x00" * 8
    assert decode(Kind.VGDA, bytes(raw)) is None


def _slot(kind: int, seq: int, body: bytes, crc: int | None = None, magic: bytes = MAGIC) -> bytes:
    crc = zlib.crc32(body) if crc is None else crc
    return SLOT_HEADER.pack(magic, kind, seq, len(body), crc) + body


def test_length_beyond_buffer_is_none():
    body = zlib.compress(b"{}")
    raw = SLOT_HEADER.pack(MAGIC, Kind.VGDA, 1, len(body) + 1, zlib.crc32(body)) + body
    assert decode(Kind.VGDA, raw) is None


def test_valid_crc_but_not_zlib_is_none():
    assert decode(Kind.VGDA, _slot(Kind.VGDA, 1, b"not zlib at all")) is None


def test_valid_zlib_but_not_json_is_none():
    assert decode(Kind.VGDA, _slot(Kind.VGDA, 1, zlib.compress(b"{nope"))) is None
    assert decode(Kind.VGDA, _slot(Kind.VGDA, 1, zlib.compress(b"\xff\xfe\x00"))) is None


@pytest.mark.parametrize("doc", [b"[1,2]", b"3", b"null", b'"x"', b"true"])
def test_json_that_is_not_an_object_is_none(doc):
    assert decode(Kind.VGDA, _slot(Kind.VGDA, 1, zlib.compress(doc))) is None


def test_decode_never_raises_on_deeply_nested_json():
    """A slot with a valid checksum whose JSON nests too deeply is corrupt metadata: decode's
    contract is None for anything it cannot use, never an exception."""
    for doc in (b"[" * 100_000, b'{"a":' * 100_000):
        assert decode(Kind.VGDA, _slot(Kind.VGDA, 1, zlib.compress(doc))) is None


@pytest.mark.parametrize("kind", list(Kind))
def test_record_too_large(kind):
    size = AREAS[kind].slot_size
    with pytest.raises(RecordTooLarge):
        encode(kind, 1, _big_payload(2 * size + 100))
    assert issubclass(RecordTooLarge, ValueError)


def test_record_size_boundary_pvheader():
    """The largest payload that fits a 4 KiB PV header slot encodes; one more char does not."""
    slot = AREAS[Kind.PVHEADER].slot_size
    text = random.Random(1).randbytes(slot).hex()

    def body_len(n):
        return len(zlib.compress(json.dumps({"d": text[:n]}, separators=(",", ":")).encode(), 6))

    fits = max(n for n in range(0, 2 * slot, 1) if SLOT_HEADER.size + body_len(n) <= slot)
    raw = encode(Kind.PVHEADER, 1, {"d": text[:fits]})
    assert len(raw) == slot
    assert decode(Kind.PVHEADER, raw) == (1, {"d": text[:fits]})
    first_too_big = next(n for n in range(fits + 1, 2 * slot)
                         if SLOT_HEADER.size + body_len(n) > slot)
    with pytest.raises(RecordTooLarge):
        encode(Kind.PVHEADER, 1, {"d": text[:first_too_big]})


@pytest.mark.parametrize("kind", list(Kind))
def test_slot_offset_alternates_with_seq_parity(kind):
    area = AREAS[kind]
    assert area.slot_offset(0) == area.offset
    assert area.slot_offset(1) == area.offset + area.slot_size
    for seq in range(2, 12):
        assert area.slot_offset(seq) == area.slot_offset(seq - 2)
        assert area.slot_offset(seq) != area.slot_offset(seq - 1)
    assert area.slot_offset(2**64 - 1) == area.offset + area.slot_size


def test_areas_are_disjoint_and_before_data_start():
    spans = sorted((a.offset, a.offset + 2 * a.slot_size) for a in AREAS.values())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
    assert spans[-1][1] <= DATA_START
    assert set(AREAS) == set(Kind)


def test_default_pp_size_examples():
    assert default_pp_size([64 * MiB]) == 4 * MiB
    assert default_pp_size([1 * GiB]) == 4 * MiB
    assert default_pp_size([256 * GiB]) == 4 * MiB
    assert default_pp_size([257 * GiB]) == 8 * MiB
    assert default_pp_size([512 * GiB]) == 8 * MiB
    assert default_pp_size([1 * TiB]) == 16 * MiB
    assert default_pp_size([2 * TiB]) == 32 * MiB
    assert default_pp_size([]) == 4 * MiB


def test_default_pp_size_boundary():
    exact = DATA_START + 65536 * 4 * MiB  # exactly 65,536 PPs of 4 MiB
    assert pp_count(exact, 4 * MiB) == 65536
    assert default_pp_size([exact]) == 4 * MiB
    assert default_pp_size([exact + 4 * MiB - 1]) == 4 * MiB  # partial PP does not count
    assert default_pp_size([exact + 4 * MiB]) == 8 * MiB  # 65,537 PPs: double


def test_default_pp_size_uses_largest_disk_and_minimum():
    assert default_pp_size([64 * MiB, 1 * TiB, 10 * GiB]) == 16 * MiB
    assert default_pp_size([64 * MiB], minimum=32 * MiB) == 32 * MiB
    assert default_pp_size([1 * TiB], minimum=64 * MiB) == 64 * MiB


@given(st.lists(st.integers(0, 64 * TiB), max_size=4))
def test_default_pp_size_is_smallest_doubling_within_limit(sizes):
    pp = default_pp_size(sizes)
    assert pp >= 4 * MiB and (pp // (4 * MiB)) & (pp // (4 * MiB) - 1) == 0  # 4 MiB * 2^k
    assert all(pp_count(s, pp) <= 65536 for s in sizes)
    if pp > 4 * MiB:
        assert any(pp_count(s, pp // 2) > 65536 for s in sizes)


def test_pp_count_subtracts_data_start():
    assert pp_count(DATA_START, 4 * MiB) == 0
    assert pp_count(DATA_START - 1, 4 * MiB) == 0
    assert pp_count(0, 4 * MiB) == 0
    assert pp_count(DATA_START + 4 * MiB - 1, 4 * MiB) == 0
    assert pp_count(DATA_START + 4 * MiB, 4 * MiB) == 1
    assert pp_count(64 * MiB, 4 * MiB) == 14
    assert pp_count(64 * MiB, 8 * MiB) == 7


def test_pp_offset():
    assert pp_offset(0, 4 * MiB) == DATA_START
    assert pp_offset(3, 8 * MiB) == DATA_START + 24 * MiB


json_scalars = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=8)


@given(kind=st.sampled_from(list(Kind)), seq=st.integers(0, 2**64 - 1), payload=json_objects)
def test_hypothesis_payload_roundtrip(kind, seq, payload):
    try:
        raw = encode(kind, seq, payload)
    except RecordTooLarge:  # only possible for the 4 KiB PV header slot
        assert kind is Kind.PVHEADER
        return
    assert decode(kind, raw) == (seq, payload)
    assert newest(kind, raw, bytes(len(raw))) == (seq, payload)


@given(kind=st.sampled_from(list(Kind)), raw=st.binary(max_size=2048))
def test_hypothesis_random_bytes_never_raise(kind, raw):
    assert decode(kind, raw) is None or isinstance(decode(kind, raw)[1], dict)
    newest(kind, raw, raw[::-1])


@given(kind=st.sampled_from(list(Kind)), body=st.binary(max_size=512),
       seq=st.integers(0, 2**64 - 1), compress=st.booleans())
def test_hypothesis_random_body_with_valid_header_never_raises(kind, body, seq, compress):
    if compress:
        body = zlib.compress(body)
    r = decode(kind, _slot(kind, seq, body))
    assert r is None or (r[0] == seq and isinstance(r[1], dict))


@given(kind=st.sampled_from(list(Kind)), payload=json_objects, pos=st.integers(0, 10**6),
       bit=st.integers(0, 7))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_hypothesis_single_bit_flip_in_body_is_detected(kind, payload, pos, bit):
    try:
        raw = bytearray(encode(kind, 2, payload))
    except RecordTooLarge:
        return
    length = struct.unpack_from(">I", raw, 20)[0]
    i = SLOT_HEADER.size + pos % length
    raw[i] ^= 1 << bit
    assert decode(kind, bytes(raw)) is None


# ================================================================================================
# metadata
# ================================================================================================

def test_to_extents_compacts_contiguous_runs():
    m = [(0, 0), (0, 1), (0, 2), (1, 5), (1, 6), (0, 3), (0, 10)]
    assert to_extents(m) == [[0, 0, 0, 3], [3, 1, 5, 2], [5, 0, 3, 1], [6, 0, 10, 1]]
    assert from_extents(to_extents(m)) == m


def test_to_extents_empty():
    assert to_extents([]) == []
    assert from_extents([]) == []


def test_to_extents_backwards_and_repeated_pps_break_runs():
    assert to_extents([(0, 5), (0, 4)]) == [[0, 0, 5, 1], [1, 0, 4, 1]]
    assert to_extents([(0, 5), (0, 5)]) == [[0, 0, 5, 1], [1, 0, 5, 1]]
    assert to_extents([(0, 5), (1, 6)]) == [[0, 0, 5, 1], [1, 1, 6, 1]]


def test_contiguous_65536_lps_is_one_extent():
    m = [(3, 100 + i) for i in range(65536)]
    ext = to_extents(m)
    assert ext == [[0, 3, 100, 65536]]
    assert from_extents(ext) == m
    assert len(json.dumps(ext)) < 30


def test_from_extents_rejects_gaps_and_overlaps():
    with pytest.raises(ValueError):
        from_extents([[0, 0, 0, 2], [3, 0, 2, 1]])
    with pytest.raises(ValueError):
        from_extents([[0, 0, 0, 2], [1, 0, 2, 1]])
    with pytest.raises(ValueError):
        from_extents([[1, 0, 0, 1]])


locs = st.tuples(st.integers(0, 3), st.integers(0, 40))


@st.composite
def lp_maps(draw, max_runs=12):
    """Maps built from runs, so both contiguous stretches and breaks occur."""
    m: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, max_runs))):
        pv, pp = draw(locs)
        n = draw(st.integers(1, 6))
        m.extend((pv, pp + i) for i in range(n))
    return m


@given(lp_maps())
def test_hypothesis_extents_roundtrip(m):
    ext = to_extents(m)
    assert from_extents(roundtrip_json({"e": ext})["e"]) == m
    # compactness: one extent per maximal contiguous run
    breaks = sum(1 for a, b in zip(m, m[1:], strict=False)
                 if not (a[0] == b[0] and a[1] + 1 == b[1]))
    assert len(ext) == (breaks + 1 if m else 0)
    assert sum(e[3] for e in ext) == len(m)


@given(st.lists(locs, max_size=50))
def test_hypothesis_extents_roundtrip_arbitrary(m):
    assert from_extents(to_extents(m)) == m


def _lv(name="lv00", lvid=1, maps=None, strictness="y", upperbound=0):
    maps = maps or []
    lps = len(maps[0]) if maps else 0
    return LVEntry(name, lvid, lps, strictness, upperbound, [list(m) for m in maps])


def test_lventry_json_roundtrip():
    lv = _lv(maps=[[(0, i) for i in range(10)], [(1, 20 + i) for i in range(5)]
                   + [(2, i) for i in range(5)]], strictness="s", upperbound=2)
    d = roundtrip_json(lv.to_json())
    assert d["maps"] == [[[0, 0, 0, 10]], [[0, 1, 20, 5], [5, 2, 0, 5]]]
    back = LVEntry.from_json(d)
    assert back == lv
    assert back.copies == 2
    assert back.pvs_of_copy(1) == {1, 2}
    assert all(isinstance(loc, tuple) for m in back.maps for loc in m)


def test_lventry_defaults():
    lv = LVEntry("x", 1, 0)
    assert (lv.strictness, lv.upperbound, lv.maps, lv.copies) == ("y", 0, [], 0)
    assert LVEntry.from_json(roundtrip_json(lv.to_json())) == lv


def _vgda():
    vg = VGDA("00f6f5d000004c000000011a4b2d3e4f", "datavg", 4 * MiB, quorum=False, auto_on=True,
              pvs=[PVEntry("a" * 32, 0, 10), PVEntry("b" * 32, 1, 8), PVEntry("c" * 32, 3, 5)],
              next_lvid=3, created=1700000000.25, modified=1700000100.5, last_site="Phila")
    vg.lvs["lv01"] = LVEntry("lv01", 1, 3, "y", 0, [[(0, 0), (0, 1), (0, 2)],
                                                    [(1, 4), (1, 5), (3, 0)]])
    vg.lvs["lv02"] = LVEntry("lv02", 2, 2, "n", 1, [[(0, 5), (0, 6)]])
    return vg


def test_vgda_json_roundtrip():
    vg = _vgda()
    back = VGDA.from_json(roundtrip_json(vg.to_json()))
    assert back == vg
    assert list(back.lvs) == ["lv01", "lv02"]
    assert back.pvs[2] == PVEntry("c" * 32, 3, 5)


def test_vgda_json_roundtrip_through_layout_record():
    vg = _vgda()
    seq, payload = decode(Kind.VGDA, encode(Kind.VGDA, 9, vg.to_json()))
    assert seq == 9 and VGDA.from_json(payload) == vg


def test_vgda_from_json_without_last_site():
    d = roundtrip_json(_vgda().to_json())
    del d["last_site"]
    assert VGDA.from_json(d).last_site == ""


def test_vgda_pv_lookup():
    vg = _vgda()
    assert vg.pv(3).pvid == "c" * 32
    assert vg.pv_by_pvid("b" * 32).index == 1
    assert vg.pv_by_pvid("nope") is None


def test_vgda_owners_used_free():
    vg = _vgda()
    owners = vg.owners()
    assert owners[(0, 1)] == ("lv01", 0, 1)
    assert owners[(3, 0)] == ("lv01", 1, 2)
    assert owners[(0, 6)] == ("lv02", 0, 1)
    assert len(owners) == 8
    assert vg.used() == set(owners)
    assert vg.free_pps(0) == [3, 4, 7, 8, 9]
    assert vg.free_pps(1) == [0, 1, 2, 3, 6, 7]
    assert vg.free_pps(3) == [1, 2, 3, 4]
    # an explicit used set replaces the VGDA's own
    assert vg.free_pps(3, used=set()) == [0, 1, 2, 3, 4]
    assert vg.free_pps(3, used={(3, 4), (0, 1)}) == [0, 1, 2, 3]


def test_vgda_empty():
    vg = VGDA("id", "vg", 4 * MiB, pvs=[PVEntry("p", 0, 3)])
    assert vg.owners() == {} and vg.used() == set()
    assert vg.free_pps(0) == [0, 1, 2]
    assert VGDA.from_json(roundtrip_json(vg.to_json())) == vg


def test_vgsa_json_roundtrip():
    sa = VGSA({"a" * 32: metadata.PV_ACTIVE, "b" * 32: metadata.PV_MISSING},
              {(1, 4): {3, 1, 2}, (0, 0): None, (1, 2): set()})
    d = roundtrip_json(sa.to_json())
    assert d["stale"] == [[0, 0, None], [1, 2, []], [1, 4, [1, 2, 3]]]  # sorted by location
    assert VGSA.from_json(d) == sa
    assert VGSA.from_json(roundtrip_json(VGSA().to_json())) == VGSA()


@given(st.dictionaries(st.text(min_size=1, max_size=32),
                       st.sampled_from([metadata.PV_ACTIVE, metadata.PV_MISSING,
                                        metadata.PV_REMOVED]), max_size=4),
       st.dictionaries(locs, st.none() | st.sets(st.integers(0, 300), max_size=20), max_size=20))
def test_hypothesis_vgsa_roundtrip(pv_state, stale):
    sa = VGSA(pv_state, stale)
    assert VGSA.from_json(roundtrip_json(sa.to_json())) == sa


@given(st.lists(st.tuples(st.text(max_size=5), st.integers(1, 4)), max_size=3,
                unique_by=lambda t: t[0]),
       st.integers(0, 6))
def test_hypothesis_vgda_roundtrip(lvspecs, npvs):
    vg = VGDA("vgid", "vg", 8 * MiB, pvs=[PVEntry(f"pv{i}", i, 50) for i in range(npvs)])
    for n, (name, copies) in enumerate(lvspecs):
        vg.lvs[name] = LVEntry(name, n + 1, 3, "n", 0,
                               [[(c, 3 * n + i) for i in range(3)] for c in range(copies)])
    assert VGDA.from_json(roundtrip_json(vg.to_json())) == vg


def test_vgsa_mark_new_location_is_new():
    sa = VGSA()
    chunks = {1, 2}
    assert sa.mark((0, 3), chunks) is True
    assert sa.stale == {(0, 3): {1, 2}}
    chunks.add(9)  # the VGSA keeps its own copy
    assert sa.stale[(0, 3)] == {1, 2}


def test_vgsa_mark_subset_is_not_new():
    sa = VGSA()
    sa.mark((0, 3), {1, 2, 3})
    assert sa.mark((0, 3), {2}) is False
    assert sa.mark((0, 3), {1, 2, 3}) is False
    assert sa.mark((0, 3), set()) is False
    assert sa.stale[(0, 3)] == {1, 2, 3}


def test_vgsa_mark_superset_and_overlap_store_union():
    sa = VGSA()
    sa.mark((0, 3), {1, 2})
    assert sa.mark((0, 3), {1, 2, 5}) is True
    assert sa.stale[(0, 3)] == {1, 2, 5}
    assert sa.mark((0, 3), {5, 7}) is True  # neither subset nor superset
    assert sa.stale[(0, 3)] == {1, 2, 5, 7}


def test_vgsa_mark_whole_dominates():
    sa = VGSA()
    sa.mark((1, 0), {4})
    assert sa.mark((1, 0), None) is True
    assert sa.stale[(1, 0)] is None
    assert sa.mark((1, 0), None) is False
    assert sa.mark((1, 0), {4, 5, 6}) is False
    assert sa.mark((1, 0), set(range(MAX_CHUNKS_PER_PP + 10))) is False
    assert sa.stale[(1, 0)] is None
    assert sa.mark((1, 1), None) is True
    assert sa.stale[(1, 1)] is None


def test_vgsa_mark_collapses_beyond_max_chunks():
    sa = VGSA()
    assert sa.mark((0, 0), set(range(MAX_CHUNKS_PER_PP))) is True
    assert sa.stale[(0, 0)] == set(range(MAX_CHUNKS_PER_PP))  # exactly the limit: still chunks
    assert sa.mark((0, 0), {MAX_CHUNKS_PER_PP}) is True
    assert sa.stale[(0, 0)] is None
    assert sa.mark((0, 1), set(range(MAX_CHUNKS_PER_PP + 1))) is True  # new loc, too many
    assert sa.stale[(0, 1)] is None
    # growing one chunk at a time collapses on the 257th
    for i in range(MAX_CHUNKS_PER_PP):
        assert sa.mark((0, 2), {i}) is True
        assert sa.stale[(0, 2)] is not None
    assert sa.mark((0, 2), {MAX_CHUNKS_PER_PP + 3}) is True
    assert sa.stale[(0, 2)] is None


def test_vgsa_stale_count():
    sa = VGSA()
    assert sa.stale_count() == 0
    sa.mark((0, 0), None)
    sa.mark((0, 1), {1})
    sa.mark((0, 1), {2})
    sa.mark((2, 7), {0})
    assert sa.stale_count() == 3
    assert sa.stale_count(0) == 2
    assert sa.stale_count(2) == 1
    assert sa.stale_count(1) == 0


@given(st.lists(st.tuples(locs, st.none() | st.sets(st.integers(0, 400), max_size=300)),
                max_size=30))
def test_hypothesis_vgsa_mark_model(ops):
    """mark() against a simple model: the stored value only grows, True iff it changed."""
    sa = VGSA()
    model: dict = {}
    for loc, chunks in ops:
        before = model.get(loc, "absent")
        if chunks is not None and not chunks:  # nothing missed: no change, no entry
            assert sa.mark(loc, chunks) is False
            assert sa.stale == model
            continue
        if before is None:
            after = None
        elif chunks is None:
            after = None
        else:
            after = (set() if before == "absent" else before) | chunks
            if len(after) > MAX_CHUNKS_PER_PP:
                after = None
        changed = sa.mark(loc, chunks)
        if before != "absent" and (before is None or (chunks is not None and chunks <= before)):
            assert changed is False
        else:
            assert changed is True
        model[loc] = after
        assert sa.stale == model


def test_chunks_of_boundaries():
    assert chunks_of(0, 0) == set()
    assert chunks_of(12345, 0) == set()
    assert chunks_of(0, 1) == {0}
    assert chunks_of(0, CHUNK) == {0}
    assert chunks_of(0, CHUNK + 1) == {0, 1}
    assert chunks_of(CHUNK - 1, 1) == {0}
    assert chunks_of(CHUNK - 1, 2) == {0, 1}
    assert chunks_of(CHUNK, CHUNK) == {1}
    assert chunks_of(CHUNK, 1) == {1}
    assert chunks_of(3 * CHUNK + 5, 2 * CHUNK) == {3, 4, 5}
    assert chunks_of(0, 4 * MiB) == set(range(64))


@given(st.integers(0, 64 * MiB), st.integers(0, 8 * MiB))
def test_hypothesis_chunks_of_covers_exactly(start, length):
    got = chunks_of(start, length)
    if length == 0:
        assert got == set()
        return
    assert min(got) * CHUNK <= start < (min(got) + 1) * CHUNK
    assert max(got) * CHUNK <= start + length - 1 < (max(got) + 1) * CHUNK
    assert got == set(range(min(got), max(got) + 1))


# ================================================================================================
# policy: quorum
# ================================================================================================

def test_vgda_counts():
    assert vgda_counts([5]) == {5: 2}
    assert vgda_counts([0, 1]) == {0: 2, 1: 1}
    assert vgda_counts([3, 1]) == {3: 2, 1: 1}  # the first one listed gets two
    assert vgda_counts([0, 1, 2]) == {0: 1, 1: 1, 2: 1}
    assert vgda_counts(list(range(6))) == dict.fromkeys(range(6), 1)


def test_quorum_one_pv():
    assert has_quorum([0], {0})
    assert not has_quorum([0], set())


def test_quorum_two_pvs_only_first_alone_has_it():
    assert has_quorum([0, 1], {0, 1})
    assert has_quorum([0, 1], {0})  # 2 of 3 copies
    assert not has_quorum([0, 1], {1})  # 1 of 3 copies
    assert not has_quorum([0, 1], set())
    # "first" means the lowest index, whatever order the caller lists them in
    assert has_quorum([4, 2], {2})
    assert not has_quorum([4, 2], {4})


def test_quorum_three_pvs():
    assert has_quorum([0, 1, 2], {0, 1})
    assert has_quorum([0, 1, 2], {1, 2})
    assert not has_quorum([0, 1, 2], {2})


def test_quorum_four_pvs_needs_three():
    pvs = [0, 1, 2, 3]
    assert has_quorum(pvs, {0, 1, 2, 3})
    assert has_quorum(pvs, {1, 2, 3})
    assert has_quorum(pvs, {0, 2, 3})
    assert not has_quorum(pvs, {0, 1})
    assert not has_quorum(pvs, {2, 3})


def test_quorum_six_pvs_needs_four():
    pvs = list(range(6))
    assert has_quorum(pvs, {0, 1, 2, 3})
    assert has_quorum(pvs, {2, 3, 4, 5})
    assert not has_quorum(pvs, {0, 1, 2})
    assert not has_quorum(pvs, {3, 4, 5})


def test_quorum_ignores_unknown_reachable_pvs():
    assert not has_quorum([0, 1, 2, 3], {0, 1, 7, 8, 9})
    assert not has_quorum([], {0})


@given(st.sets(st.integers(0, 20), min_size=1, max_size=10), st.data())
def test_hypothesis_quorum_is_strict_majority_of_copies(pvs, data):
    pvs = sorted(pvs)
    reachable = data.draw(st.sets(st.sampled_from(pvs)))
    counts = vgda_counts(pvs)
    assert sum(counts.values()) == (2 if len(pvs) == 1 else 3 if len(pvs) == 2 else len(pvs))
    have = sum(counts[p] for p in reachable)
    assert has_quorum(pvs, reachable) == (have * 2 > sum(counts.values()))
    # monotone: adding a reachable PV never loses quorum
    if has_quorum(pvs, reachable):
        assert has_quorum(pvs, set(pvs))


# ================================================================================================
# policy: allocation
# ================================================================================================

def _vg(*sizes: int) -> VGDA:
    return VGDA("vgid", "vg", 4 * MiB, pvs=[PVEntry(f"pv{i}", i, n) for i, n in enumerate(sizes)])


def _alloc(vg: VGDA, lv: LVEntry, candidates: list[int], copies: int) -> list[list]:
    """Allocate ``copies`` whole copies the way lvm.manager does (one after another)."""
    used = vg.used()
    for c in range(lv.copies, lv.copies + copies):
        lv.maps.append(allocate_copy(vg, lv, candidates, range(lv.lps), c, used))
    return lv.maps


def test_allocate_single_copy_takes_free_pps_in_order():
    vg = _vg(5, 5)
    vg.lvs["old"] = LVEntry("old", 1, 2, "y", 0, [[(0, 1), (0, 3)]])
    lv = LVEntry("new", 2, 4)
    used = vg.used()
    m = allocate_copy(vg, lv, [0, 1], range(4), 0, used)
    assert m == [(0, 0), (0, 2), (0, 4), (1, 0)]
    assert used == {(0, 1), (0, 3)} | set(m)


def test_allocate_respects_candidate_order():
    vg = _vg(3, 3, 3)
    lv = LVEntry("lv", 1, 5, "n")
    m = allocate_copy(vg, lv, [2, 0, 1], range(5), 0, set())
    assert m == [(2, 0), (2, 1), (2, 2), (0, 0), (0, 1)]
    m = allocate_copy(vg, lv, [1], range(3), 0, set())
    assert m == [(1, 0), (1, 1), (1, 2)]


def test_allocate_only_on_candidates():
    vg = _vg(10, 10, 10)
    lv = LVEntry("lv", 1, 4)
    m = allocate_copy(vg, lv, [1], range(4), 0, set())
    assert {pv for pv, _ in m} == {1}
    with pytest.raises(AllocationError):
        allocate_copy(vg, lv, [1], range(11), 0, set())


def test_strict_y_never_puts_two_copies_of_an_lp_on_one_pv():
    vg = _vg(3, 10, 10)
    lv = LVEntry("lv", 1, 5, "y")
    maps = _alloc(vg, lv, [0, 1, 2], 2)
    assert maps[0] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    for lp in range(5):
        assert maps[0][lp][0] != maps[1][lp][0]
    # copy 2 goes to pv1 where copy 1 is on pv0, and elsewhere where copy 1 is on pv1
    assert [pv for pv, _ in maps[1]] == [1, 1, 1, 2, 2]
    assert check_strictness(lv) is None


def test_strict_y_third_copy():
    vg = _vg(4, 4, 4)
    lv = LVEntry("lv", 1, 4, "y")
    maps = _alloc(vg, lv, [0, 1, 2], 3)
    for lp in range(4):
        assert len({m[lp][0] for m in maps}) == 3
    assert check_strictness(lv) is None


def test_strict_y_fails_when_only_one_pv_has_room():
    vg = _vg(3, 10)
    lv = LVEntry("lv", 1, 5, "y")
    lv.maps.append(allocate_copy(vg, lv, [0, 1], range(5), 0, vg.used()))
    used = vg.used() | set(lv.maps[0])
    snapshot = set(used)
    with pytest.raises(AllocationError, match="copy 2 of lv"):
        allocate_copy(vg, lv, [0, 1], range(5), 1, used)
    assert used == snapshot  # takes nothing


def test_strict_n_allows_copies_on_one_pv():
    vg = _vg(10)
    lv = LVEntry("lv", 1, 4, "n")
    maps = _alloc(vg, lv, [0], 2)
    assert maps[0] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert maps[1] == [(0, 4), (0, 5), (0, 6), (0, 7)]
    assert check_strictness(lv) is None
    assert check_strictness(lv, "y") is not None


def test_super_strict_copies_use_disjoint_pvs():
    vg = _vg(3, 10, 10, 10)
    lv = LVEntry("lv", 1, 5, "s")
    maps = _alloc(vg, lv, [0, 1, 2, 3], 2)
    assert lv.pvs_of_copy(0) == {0, 1}
    assert lv.pvs_of_copy(1).isdisjoint(lv.pvs_of_copy(0))
    assert [pv for pv, _ in maps[1]] == [2] * 5
    assert check_strictness(lv) is None


def test_super_strict_fails_without_enough_disjoint_space():
    vg = _vg(3, 10, 4)
    lv = LVEntry("lv", 1, 5, "s")
    lv.maps.append(allocate_copy(vg, lv, [0, 1, 2], range(5), 0, set()))
    assert lv.pvs_of_copy(0) == {0, 1}
    used = set(lv.maps[0])
    with pytest.raises(AllocationError, match="strictness s"):
        allocate_copy(vg, lv, [0, 1, 2], range(5), 1, used)  # pv2 holds 4 < 5
    assert used == set(lv.maps[0])
    # strict y could have mixed pv0/pv1/pv2 for the second copy
    lv_y = LVEntry("lv", 1, 5, "y", 0, [list(lv.maps[0])])
    m = allocate_copy(vg, lv_y, [0, 1, 2], range(5), 1, set(lv.maps[0]))
    assert 1 in {pv for pv, _ in m}


def test_upper_bound_limits_pvs_per_copy():
    vg = _vg(2, 2, 2, 2)
    lv = LVEntry("lv", 1, 4, "n", upperbound=2)
    m = allocate_copy(vg, lv, [0, 1, 2, 3], range(4), 0, set())
    assert {pv for pv, _ in m} == {0, 1}
    lv1 = LVEntry("lv", 1, 5, "n", upperbound=2)
    used: set = set()
    with pytest.raises(AllocationError, match="upper bound 2"):
        allocate_copy(vg, lv1, [0, 1, 2, 3], range(5), 0, used)
    assert used == set()
    lv2 = LVEntry("lv", 1, 5, "n", upperbound=3)
    m = allocate_copy(vg, lv2, [0, 1, 2, 3], range(5), 0, set())
    assert {pv for pv, _ in m} == {0, 1, 2}


def test_upper_bound_one_with_mirrors():
    vg = _vg(6, 6, 6)
    lv = LVEntry("lv", 1, 6, "y", upperbound=1)
    maps = _alloc(vg, lv, [0, 1, 2], 3)
    assert [lv.pvs_of_copy(c) for c in range(3)] == [{0}, {1}, {2}]
    assert check_strictness(lv) is None
    assert maps[2] == [(2, i) for i in range(6)]


def test_allocation_error_when_space_insufficient_takes_nothing():
    vg = _vg(2, 2)
    vg.lvs["a"] = LVEntry("a", 1, 1, "y", 0, [[(1, 0)]])
    used = vg.used()
    before = set(used)
    lv = LVEntry("lv", 2, 4, "n")
    with pytest.raises(AllocationError, match=r"LP 4 of 4"):
        allocate_copy(vg, lv, [0, 1], range(4), 0, used)
    assert used == before
    assert lv.maps == []
    # with exactly enough room it succeeds
    m = allocate_copy(vg, lv, [0, 1], range(3), 0, used)
    assert m == [(0, 0), (0, 1), (1, 1)]


def test_allocation_error_with_too_few_pvs():
    vg = _vg(10)
    lv = LVEntry("lv", 1, 2, "y")
    lv.maps.append(allocate_copy(vg, lv, [0], range(2), 0, set()))
    with pytest.raises(AllocationError):
        allocate_copy(vg, lv, [0], range(2), 1, set(lv.maps[0]))
    with pytest.raises(AllocationError):
        allocate_copy(vg, LVEntry("lv2", 2, 2, "y"), [], range(2), 0, set(lv.maps[0]))
    assert issubclass(AllocationError, ValueError)


def test_allocate_zero_lps():
    vg = _vg(0)
    used: set = set()
    assert allocate_copy(vg, LVEntry("lv", 1, 0), [0], range(0), 0, used) == []
    assert used == set()


def test_allocate_partial_range_of_lps():
    vg = _vg(10, 10)
    lv = LVEntry("lv", 1, 4, "y", 0, [[(0, 0), (0, 1), (0, 2), (0, 3)]])
    m = allocate_copy(vg, lv, [0, 1], range(2, 4), 1, set(lv.maps[0]))
    assert m == [(1, 0), (1, 1)]


def test_allocate_fails_where_a_compliant_placement_exists():
    """Docstring: AllocationError 'when the policy cannot be met'. Here it can be: copy 2 fits
    entirely on hdisk2 (pv index 2), yet the allocator first puts LP 1 on pv1, uses pv0 for LP 2
    and is then stuck at the upper bound of 2 for LP 3."""
    vg = _vg(10, 2, 10, 10)
    lv = LVEntry("lv", 1, 3, "y", 2, [[(0, 0), (1, 0), (0, 1)]])
    vg.lvs["lv"] = lv
    placement = [(2, 0), (2, 1), (2, 2)]  # a valid second copy ...
    trial = LVEntry("lv", 1, 3, "y", 2, lv.maps + [placement])
    assert check_strictness(trial) is None  # ... by the module's own check
    m = allocate_copy(vg, lv, [0, 1, 2, 3], range(3), 1, vg.used())
    lv.maps.append(m)
    assert check_strictness(lv) is None


def test_check_strictness_compliant_maps():
    assert check_strictness(_lv(maps=[[(0, 0), (1, 0)], [(1, 1), (0, 1)]])) is None
    assert check_strictness(_lv(maps=[[(0, 0), (0, 1)], [(1, 0), (1, 1)]], strictness="s")) is None
    assert check_strictness(_lv(maps=[[(0, 0), (0, 1)]], upperbound=1)) is None
    assert check_strictness(_lv(maps=[])) is None
    assert check_strictness(_lv(maps=[[(0, 0)], [(0, 1)]], strictness="n")) is None


def test_check_strictness_two_copies_on_one_pv():
    lv = _lv(maps=[[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1), (0, 3)]])
    why = check_strictness(lv)
    assert why is not None and "LP 3" in why and "lv00" in why
    assert check_strictness(lv, "s") is not None
    assert check_strictness(lv, "n") is None


def test_check_strictness_three_copies_two_on_one_pv():
    lv = _lv(maps=[[(0, 0)], [(1, 0)], [(0, 1)]])
    assert "LP 1" in check_strictness(lv)


def test_check_strictness_super_strict_shared_pv():
    # every LP has its copies on different PVs (strict y holds) but the copies share pv0 and pv1
    lv = _lv(maps=[[(0, 0), (1, 0)], [(1, 1), (0, 1)]], strictness="s")
    why = check_strictness(lv)
    assert why is not None and "copies 1 and 2" in why and "share" in why
    assert check_strictness(lv, "y") is None


def test_check_strictness_super_strict_third_copy():
    lv = _lv(maps=[[(0, 0)], [(1, 0)], [(2, 0)]], strictness="s")
    assert check_strictness(lv) is None
    lv = _lv(maps=[[(0, 0), (0, 1)], [(1, 0), (2, 1)], [(2, 0), (1, 1)]], strictness="s")
    assert check_strictness(lv, "y") is None
    assert "copies 2 and 3" in check_strictness(lv)


def test_check_strictness_upper_bound():
    lv = _lv(maps=[[(0, 0), (1, 0), (2, 0)]], strictness="n", upperbound=2)
    why = check_strictness(lv)
    assert why is not None and "copy 1" in why and "spans 3" in why and "upper bound 2" in why
    assert check_strictness(lv, upperbound=3) is None
    assert check_strictness(lv, upperbound=0) is None  # 0 = unlimited
    ok = _lv(maps=[[(0, 0), (1, 0), (2, 0)]], upperbound=3)
    assert check_strictness(ok) is None
    assert "upper bound 1" in check_strictness(ok, upperbound=1)
    second = _lv(maps=[[(0, 0), (0, 1)], [(1, 0), (2, 1)]], upperbound=1)
    assert "copy 2 of lv00 spans 2" in check_strictness(second)


@st.composite
def allocation_cases(draw):
    npvs = draw(st.integers(1, 6))
    sizes = draw(st.lists(st.integers(0, 12), min_size=npvs, max_size=npvs))
    vg = _vg(*sizes)
    # some partitions already belong to another LV
    taken = draw(st.sets(st.tuples(st.integers(0, npvs - 1), st.integers(0, 11)), max_size=10))
    taken = sorted((pv, pp) for pv, pp in taken if pp < sizes[pv])
    if taken:
        vg.lvs["other"] = LVEntry("other", 9, len(taken), "n", 0, [taken])
    lps = draw(st.integers(1, 12))
    copies = draw(st.integers(1, 3))
    strictness = draw(st.sampled_from("ysn"))
    upperbound = draw(st.integers(0, 4))
    candidates = draw(st.permutations(range(npvs)))
    candidates = candidates[:draw(st.integers(0, npvs))]
    return vg, lps, copies, strictness, upperbound, list(candidates)


@given(allocation_cases())
@settings(max_examples=300)
def test_hypothesis_successful_allocations_comply(case):
    vg, lps, copies, strictness, upperbound, candidates = case
    lv = LVEntry("lv", 1, lps, strictness, upperbound)
    used = vg.used()
    pre_used = set(used)
    for c in range(copies):
        before = set(used)
        try:
            m = allocate_copy(vg, lv, candidates, range(lps), c, used)
        except AllocationError:
            assert used == before  # a failed call takes nothing
            break
        assert len(m) == lps
        assert all(pv in candidates and 0 <= pp < vg.pv(pv).pp_count for pv, pp in m)
        assert len(set(m)) == lps
        assert not (set(m) & before)
        assert used == before | set(m)
        lv.maps.append(m)
        assert check_strictness(lv) is None, (lv, candidates)
    assert not (pre_used & {loc for m in lv.maps for loc in m})
    # with no strictness and no bound, the greedy allocator fails only when space runs out
    if strictness == "n" and upperbound == 0:
        free = sum(len(vg.free_pps(pv, pre_used)) for pv in candidates)
        assert lv.copies == min(copies, free // lps)


def test_flipped_sequence_number_is_caught_by_the_checksum():
    """The CRC covers the header: an older slot whose seq bit-flipped cannot win."""
    old = encode(Kind.VGDA, 4, {"gen": "old"})
    new = encode(Kind.VGDA, 5, {"gen": "new"})
    bad = bytearray(old)
    struct.pack_into(">Q", bad, 12, 4 | (1 << 40))  # seq field of the older slot
    assert decode(Kind.VGDA, bytes(bad)) is None
    assert newest(Kind.VGDA, bytes(bad), new) == (5, {"gen": "new"})


def _gen(i, written=False, site="S"):
    return {"id": i, "site": site, "time": 0.0, "written": written, "first_write": 0.0}


def test_split_brain_choice():
    from lvm.splitbrain import SplitBrain, choose
    g0 = _gen("g0", True)
    # PV 1 is merely behind PV 0 (failback): PV 0 wins, nothing dropped
    assert choose({0: [g0, _gen("gb", True, "B")], 1: [g0]}, {0: 5, 1: 3}) == ([0], [])
    # diverged, only one side wrote: it wins
    chains = {0: [g0, _gen("ga", False, "A")], 1: [g0, _gen("gb", True, "B")]}
    assert choose(chains, {0: 9, 1: 2}) == ([1], [])
    # diverged, nobody wrote: the higher sequence wins
    chains = {0: [g0, _gen("ga", False, "A")], 1: [g0, _gen("gb", False, "B")]}
    assert choose(chains, {0: 9, 1: 2}) == ([0], [])
    # both wrote: split brain, unless one site is discarded
    chains = {0: [g0, _gen("ga", True, "A")], 1: [g0, _gen("gb", True, "B")],
              2: [g0, _gen("gb", True, "B")]}
    with pytest.raises(SplitBrain):
        choose(chains, {0: 1, 1: 1, 2: 1})
    assert choose(chains, {0: 1, 1: 1, 2: 1}, discard_site="A") == ([1, 2], [0])
    assert choose(chains, {0: 1, 1: 1, 2: 1}, discard_site="B") == ([0], [1, 2])
    with pytest.raises(SplitBrain):
        choose(chains, {0: 1, 1: 1, 2: 1}, discard_site="C")


def test_split_brain_ignores_generations_trimmed_from_one_chain():
    from lvm.splitbrain import choose
    old = [_gen(f"o{i}", True) for i in range(5)]
    shared = _gen("s", True)
    a = old + [shared, _gen("a", True, "A")]  # A still lists old written generations
    b = [shared, _gen("b", False, "B")]  # B's bounded chain dropped them
    assert choose({0: a, 1: b}, {0: 1, 1: 1}) == ([0], [])
