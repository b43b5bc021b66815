"""Mirror pools (AIX 6.1+ syntax): chpv/extendvg/mkvg -p, mklv/mirrorvg -p copyN=POOL,
chvg -M, lsmp, and GLVM's rule that local and remote PVs never share a pool."""

from __future__ import annotations

import json

import pytest

from lvm import pools
from lvm.metadata import VGDA, LVEntry, PVEntry


def copy_pvs(site, lv: str) -> list[set[str]]:
    """The PVs each copy of ``lv`` lies on (lslv -m)."""
    m = site.json("lslv", "-m", lv)
    return [{row["copies"][c]["pv"] for row in m["map"]} for c in range(m["copies"])]


def test_pools_place_copies_and_keep_sites_apart(geo):
    a = geo.a
    a.ctl("mkvg", "-p", "PoolA", "-y", "datavg", "hdisk1", "hdisk2")
    assert {p["name"]: p["pool"] for p in a.json("lspv") if p["vg"]} == \
        {"hdisk1": "PoolA", "hdisk2": "PoolA"}
    # an RPV client (Poughkeepsie's disk) never joins a pool of local disks; nothing changes
    err = a.fails("extendvg", "-p", "PoolA", "datavg", "hdisk3")
    assert "local and remote physical volumes never share a mirror pool" in err
    assert "Philadelphia" in err and "Poughkeepsie" in err
    assert len(a.json("lsvg", "datavg")["pvs"]) == 2
    a.ctl("extendvg", "-p", "PoolB", "datavg", "hdisk3", "hdisk4")

    # super strict: every copy needs a pool of its own
    a.ctl("chvg", "-M", "s", "datavg")
    assert "give a mirror pool for copy 1" in a.fails("mklv", "-y", "lv1", "datavg", "4")
    assert "needs its own mirror pool" in a.fails(
        "mklv", "-y", "lv1", "-c", "2", "-p", "copy1=PoolA", "-p", "copy2=PoolA", "datavg", "4")
    assert "copy3=PoolB" in a.fails("mklv", "-y", "lv1", "-p", "copy3=PoolB", "datavg", "4")
    assert "mirror pool NoPool does not exist" in a.fails(
        "mklv", "-y", "lv1", "-p", "copy1=NoPool", "datavg", "4")
    assert [lv["name"] for lv in a.json("lsvg", "datavg")["lvs"]] == []

    a.ctl("mklv", "-y", "datafslv", "-p", "copy1=PoolA", "datavg", "70")  # > one disk
    assert copy_pvs(a, "datafslv") == [{"hdisk1", "hdisk2"}]
    a.ctl("mirrorvg", "-s", "-c", "2", "-p", "copy2=PoolB", "datavg")  # -s: copy left stale
    assert copy_pvs(a, "datafslv") == [{"hdisk1", "hdisk2"}, {"hdisk3", "hdisk4"}]
    lv = a.json("lslv", "datafslv")
    assert lv["mirror_pools"] == ["PoolA", "PoolB"] and lv["stale_pps"] == 70
    assert "COPY 2 MIRROR POOL:" in a.ctl("lslv", "datafslv")

    want = {"vg": "datavg", "mirror_pool_strict": "s", "pools": [
        {"pool": "PoolA", "mode": "sync", "async": None, "site": "Philadelphia",
         "pvs": ["hdisk1", "hdisk2"],
         "copies": [{"lv": "datafslv", "copy": 1}]},
        {"pool": "PoolB", "mode": "sync", "async": None, "site": "Poughkeepsie",
         "pvs": ["hdisk3", "hdisk4"],
         "copies": [{"lv": "datafslv", "copy": 2}]}]}
    assert a.json("lsmp", "datavg") == want
    human = a.ctl("lsmp", "datavg")
    assert "Mirror Pool Strictness: super strict" in human
    assert [line.split()[2] for line in human.splitlines()
            if line.startswith("MIRROR POOL:")] == ["PoolA", "PoolB"]
    assert "SYNC" in human and "datafslv (copy 2)" in human
    only_b = json.loads(a.ctl("lsmp", "-m", "PoolB", "datavg", "--json"))
    assert [p["pool"] for p in only_b["pools"]] == ["PoolB"]
    assert "mirror pool PoolC does not exist" in a.fails("lsmp", "-m", "PoolC", "datavg")

    # a PV keeps the copies placed on it: it cannot leave their pool
    assert "copy 2 of datafslv is in mirror pool PoolB" in a.fails("chpv", "-P", "hdisk3")
    assert "copy 1 of datafslv is in mirror pool PoolA" in a.fails("chpv", "-p", "PoolC",
                                                                    "hdisk1")
    assert "exactly one of -v, -p and -P" in a.fails("chpv", "-P", "-p", "PoolA", "hdisk1")

    # chvg -M s is refused while an LV copy is outside the pools
    a.ctl("chvg", "-M", "n", "datavg")
    a.ctl("mklv", "-y", "scratch", "datavg", "1")
    assert "copy 1 of scratch is not in a mirror pool" in a.fails("chvg", "-M", "s", "datavg")
    assert a.json("lsvg", "datavg")["mirror_pool_strict"] == "n"

    # it is all in the VG's metadata: a varyoff/varyon keeps it
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
    assert a.json("lsmp", "-m", "PoolB", "datavg")["pools"] == want["pools"][1:]
    assert a.json("lslv", "datafslv")["mirror_pools"] == ["PoolA", "PoolB"]
    assert a.json("lslv", "scratch")["mirror_pools"] == [None]
    # unmirrorvg drops copy 2 and its pool assignment; hdisk3 may then leave PoolB
    a.ctl("unmirrorvg", "datavg", "hdisk3", "hdisk4")
    assert a.json("lslv", "datafslv")["mirror_pools"] == ["PoolA"]
    a.ctl("chpv", "-P", "hdisk3")
    assert a.json("lsmp", "-m", "PoolB", "datavg")["pools"][0]["pvs"] == ["hdisk4"]


# -- the pure rules ---------------------------------------------------------------------------

def vg_with_pools() -> VGDA:
    lv = LVEntry("lv1", 1, 2, "s", 0, [[(1, 0), (2, 0)], [(3, 0), (3, 1)]], ["A", "B"])
    return VGDA("v" * 32, "vg", 4 << 20, pvs=[PVEntry("a" * 32, 1, 10, "A"),
                                               PVEntry("b" * 32, 2, 10, "A"),
                                               PVEntry("c" * 32, 3, 10, "B")],
                lvs={"lv1": lv})


def test_pool_metadata_round_trips_and_old_descriptors_read():
    vgda = vg_with_pools()
    vgda.mirror_pool_strict = "s"
    again = VGDA.from_json(json.loads(json.dumps(vgda.to_json())))
    assert again == vgda
    old = vgda.to_json()
    old["pvs"] = [p[:3] for p in old["pvs"]]
    del old["mirror_pool_strict"]
    for lv in old["lvs"]:
        del lv["pools"]
    before = VGDA.from_json(old)  # a descriptor written before mirror pools existed
    assert [p.pool for p in before.pvs] == ["", "", ""]
    assert before.lvs["lv1"].pools == [] and before.mirror_pool_strict == "n"
    assert pools.strictness_problem(before, "n") is None


@pytest.mark.parametrize("specs, copies, message", [
    (["copy1PoolA"], range(1), "is not copyN=POOL"),
    (["copy4=PoolA"], range(3), "is not copyN=POOL"),
    (["copy2=PoolA"], range(1), "there is no copy 2"),
    (["copy1=A", "copy1=B"], range(2), "two mirror pools"),
    (["copy1=1bad"], range(1), "must be 1-15 letters"),
    (["copy1=" + "p" * 16], range(1), "must be 1-15 letters"),
])
def test_bad_copy_pool_specs(specs, copies, message):
    with pytest.raises(pools.PoolError, match=message):
        pools.parse_copy_pools(specs, copies)


def test_strictness_rules():
    vgda = vg_with_pools()
    assert pools.strictness_problem(vgda, "s") is None
    vgda.lvs["lv1"].pools = ["A", "A"]
    assert "same mirror pool" in pools.strictness_problem(vgda, "s")
    assert pools.strictness_problem(vgda, "y") is not None  # copy 2 lies outside pool A
    vgda.lvs["lv1"].pools = ["A", ""]
    assert "copy 2 of lv1 is not in a mirror pool" in pools.strictness_problem(vgda, "y")
    vgda.lvs["lv1"].pools = ["A", "B"]
    vgda.pvs[2].pool = "C"  # copy 2's partitions are no longer inside pool B
    assert "outside mirror pool B" in pools.strictness_problem(vgda, "s")
    assert pools.strictness_problem(vgda, "n") is None
