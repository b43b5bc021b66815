"""The white paper's runbooks as scenario tests: two real daemons, site A "Philadelphia" on
127.0.0.1 and site B "Poughkeepsie" on 127.0.0.2, data written and verified through NBD."""

from __future__ import annotations

import json

from tests.conftest import qemu_io, run
from tests.helpers.lvmtools import copies_equal, diff_blocks, read_copy
from tests.helpers.runbooks import configure_airline
from tests.helpers.waits import wait_for_log

MiB = 1 << 20


def test_runbook1_configure_and_verify(geo):
    a = geo.a
    a.make_disk("hdisk5", "64M")
    a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
    a.ctl("mklv", "-y", "datafslv", "datavg", "10")
    a.ctl("mklv", "-y", "dataloglv", "datavg", "1")
    # add-mirror wants super strict LVs and says which chlv to run
    assert "chlv -s s -u N datafslv" in a.fails("gmvg", "add-mirror", "datavg", "--site",
                                                 "Poughkeepsie")
    for lv in ("datafslv", "dataloglv"):
        a.ctl("chlv", "-s", "s", "-u", "2", lv)
    assert "is at site Philadelphia" not in a.fails("gmvg", "add-rpvs", "datavg", "--site",
                                                     "Poughkeepsie", "hdisk5")
    assert "not a remote physical volume" in a.fails("gmvg", "add-rpvs", "datavg", "--site",
                                                     "Poughkeepsie", "hdisk5")
    assert "no physical volume at site Poughkeepsie" in a.fails(
        "gmvg", "add-mirror", "datavg", "--site", "Poughkeepsie")
    a.ctl("gmvg", "add-rpvs", "datavg", "--site", "Poughkeepsie")
    assert {p["name"]: p["vg"] for p in a.json("lspv")}["hdisk4"] == "datavg"
    a.ctl("gmvg", "add-mirror", "datavg", "--site", "Poughkeepsie")
    out = a.ctl("gmvg", "verify", "datavg")
    lines = out.splitlines()
    assert lines[0] == "Checking Volume Group datavg."
    assert lines[1].split() == ["#", "Site", "Copy", "Physical", "Volumes"]
    assert lines[2].split() == ["Philadelphia", "PV1", "hdisk1", "hdisk2"] or \
        lines[2].split() == ["Philadelphia", "PV1", "hdisk1"]
    assert lines[3].split()[:2] == ["Poughkeepsie", "PV2"]
    assert "Checking Logical Volume datafslv." in lines and \
        "Checking Logical Volume dataloglv." in lines
    v = a.json("gmvg", "verify", "datavg")
    assert v["ok"] is True and [c["site"] for c in v["copies"]] == ["Philadelphia",
                                                                       "Poughkeepsie"]
    listing = a.json("gmvg", "list")
    assert listing == [{"vg": "datavg", "state": "active",
                        "sites": ["Philadelphia", "Poughkeepsie"], "copies": 2, "stale_pps": 0}]
    # every listing gives each PV its real site: B's disks are at Poughkeepsie
    sites = {p["name"]: p["site"] for p in a.json("lsvg", "datavg")["pvs"]}
    assert sites == {"hdisk1": "Philadelphia", "hdisk2": "Philadelphia",
                     "hdisk3": "Poughkeepsie", "hdisk4": "Poughkeepsie"}
    assert {p["name"]: p["site"] for p in a.json("lspv")} == {**sites, "hdisk5": "Philadelphia"}
    # the white paper's layout: two copies at the production site and one at the remote one
    a.ctl("mklv", "-y", "threelv", "-c", "3", "datavg", "1", "hdisk1", "hdisk2", "hdisk3")
    v = a.json("gmvg", "verify", "datavg")
    assert v["ok"] is True and {x["name"]: x["problems"] for x in v["lvs"]}["threelv"] == []
    # an LV with no copy at the remote site is caught and named
    a.ctl("mklv", "-y", "badlv", "-c", "2", "datavg", "1", "hdisk1", "hdisk2")
    r = a.run("gmvg", "verify", "datavg")
    assert r.returncode == 1 and "no copy of badlv is at a remote site" in r.stdout


def test_fencing_between_rpv_servers_and_varyon(geo):
    a, b = geo.a, geo.b
    configure_airline(geo)
    a.ctl("varyoffvg", "datavg")
    # B cannot import the VG while it still serves those disks to A
    err = b.fails("importvg", "-f", "-y", "datavg", "hdisk2")
    assert "rmdev -l rpvserver0" in err
    assert b.json("lsvg") == []
    for s in ("rpvserver0", "rpvserver1"):
        b.ctl("rmdev", "-l", s)
    b.ctl("importvg", "-f", "-y", "datavg", "hdisk2")
    # and while B has it varied on, its RPV servers refuse to come back
    assert "varied on at this site" in b.fails("mkdev", "-l", "rpvserver0")
    b.ctl("varyoffvg", "datavg")
    b.ctl("mkdev", "-l", "rpvserver0")
    assert "rmdev -l rpvserver0" in b.fails("varyonvg", "datavg")
    out = b.ctl("varyonvg", "-f", "datavg")  # the administrator overrides
    assert "varied on" in out


def test_nothing_varies_on_at_daemon_start(geo):
    a = geo.a
    configure_airline(geo)
    assert a.json("lsvg", "datavg")["auto_on"] is False
    a.stop()
    a.start()
    assert a.json("lsvg", "datavg")["state"] == "inactive"
    exports = json.loads(run("nbdinfo", "--list", "--json",
                             f"nbd+unix://?socket={a.nbd_socket}").stdout)["exports"]
    assert [e["export-name"] for e in exports] == ["hdisk1", "hdisk2"]


def b_writes_alone_then_links_back(a, b) -> None:
    """Site B takes the VG over on its own disk and writes 0xbb at 0, then gives its disks
    back to its RPV servers and A's RPV clients point at B again."""
    for s in ("rpvserver0", "rpvserver1"):
        b.ctl("rmdev", "-l", s)
    b.ctl("importvg", "-f", "-y", "datavg", "hdisk2")
    qemu_io(b.nbd_uri("datafslv"), "write -P 0xbb 0 64k")
    b.ctl("varyoffvg", "datavg")
    for s in ("rpvserver0", "rpvserver1"):
        b.ctl("mkdev", "-l", s)
    for d in ("hdisk3", "hdisk4"):
        a.ctl("chdev", "-l", d, "-a", f"server_addr={b.addr}")


def test_split_brain_is_detected_not_merged(geo, tmp_path):
    """Both sites write while apart (A with quorum off, B after a forced import): the join
    refuses and names both sides until the administrator picks the survivor."""
    a, b = geo.a, geo.b
    configure_airline(geo)
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")  # quorum off from here
    qemu_io(a.nbd_uri("datafslv"), "write -P 0x10 0 1M")
    for d in ("hdisk3", "hdisk4"):  # the link goes away
        a.ctl("chdev", "-l", d, "-a", "server_addr=none")
    qemu_io(a.nbd_uri("datafslv"), "write -P 0xaa 0 64k")  # A keeps writing
    b_writes_alone_then_links_back(a, b)
    err = a.fails("varyonvg", "datavg")
    assert "split brain" in err and "Poughkeepsie" in err and "--discard-site" in err
    assert a.json("lsvg", "datavg")["pvs"][2]["state"] == "missing"  # nothing merged
    # the administrator keeps A's data: B's disks are recopied wholesale
    a.ctl("varyonvg", "--discard-site", "Poughkeepsie", "datavg")
    a.ctl("syncvg", "-v", "datavg")
    assert a.json("lsvg", "datavg")["stale_pps"] == 0
    qemu_io(a.nbd_uri("datafslv"), "read -P 0xaa 0 64k", "read -P 0x10 64k 960k")
    assert copies_equal(geo, "datafslv") == []


def test_split_brain_at_fresh_varyon(geo):
    """The same at a fresh varyon: each side's disks carry their own history."""
    a, b = geo.a, geo.b
    configure_airline(geo)
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
    for d in ("hdisk3", "hdisk4"):
        a.ctl("chdev", "-l", d, "-a", "server_addr=none")
    qemu_io(a.nbd_uri("datafslv"), "write -P 0xaa 0 64k")
    a.ctl("varyoffvg", "datavg")
    b_writes_alone_then_links_back(a, b)
    err = a.fails("varyonvg", "datavg")
    assert "split brain" in err and "Philadelphia" in err and "Poughkeepsie" in err
    # keep B's data this time: A's own disks are the ones recopied
    out = a.ctl("varyonvg", "--discard-site", "Philadelphia", "datavg")
    assert "PVREMOVED" in out
    a.ctl("chpv", "-v", "a", "hdisk1")
    a.ctl("chpv", "-v", "a", "hdisk2")
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
    a.ctl("syncvg", "-v", "datavg")
    qemu_io(a.nbd_uri("datafslv"), "read -P 0xbb 0 64k")
    assert copies_equal(geo, "datafslv") == []


def test_auto_resume_reactivates_and_resyncs(geo):
    """auto_resume=y: after the RPV server answers again, nobody has to run chdev or
    varyonvg; the PVs come back and the stale partitions are resynced."""
    a, b = geo.a, geo.b
    configure_airline(geo)
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
    for d in ("hdisk3", "hdisk4"):
        a.ctl("chdev", "-l", d, "-a", "auto_resume=y", "-a", "io_timeout=1")
    b.pause()
    try:
        qemu_io(a.nbd_uri("datafslv"), "write -P 0x71 0 128k")
        assert a.json("lsvg", "datavg")["stale_pps"] > 0
        mark = len(a.log_events())
    finally:
        b.cont()
    for disk in ("hdisk3", "hdisk4"):  # each client resumes and its PV comes back by itself
        wait_for_log(a, lambda e, d=disk: e["event"] == "errlog_entry"
                     and e["label"] == "LVM_MISSPVRET" and e["device"] == d, since=mark)
    a.ctl("syncvg", "-v", "datavg")  # waits for the background resync the return started
    vg = a.json("lsvg", "datavg")
    assert vg["stale_pps"] == 0 and all(p["state"] == "active" for p in vg["pvs"])
    labels = [e["label"] for e in a.json("errpt")]
    assert "RPVC_IO_TIMEOUT" in labels and "LVM_MISSPVRET" in labels
    assert copies_equal(geo, "datafslv") == []


def test_online_verify_finds_and_repairs_exactly_the_corrupt_chunk(geo):
    a = geo.a
    configure_airline(geo)
    qemu_io(a.nbd_uri("datafslv"), "write -P 0x42 0 8M")
    assert "0 differing chunks" in a.ctl("syncvg", "--verify", "-v", "datavg")
    m = a.json("lslv", "-m", "datafslv")
    # flip bytes of copy 2 (at site B) behind the daemons' back: LP 2, 192 KiB in
    c = m["map"][1]["copies"][1]
    with open(geo.files[c["pv"]], "r+b") as f:
        f.seek((8 << 20) + (c["pp"] - 1) * (4 << 20) + 192 * 1024 + 100)
        f.write(b"corrupt")
    r = a.run("syncvg", "--verify", "-l", "datafslv", "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert [(x["lp"], x["offset"], x["length"]) for x in report["mismatches"]] == \
        [(2, (4 << 20) + 192 * 1024, 64 * 1024)]
    # only digests crossed the link: far fewer bytes than the LV read back over RPV
    stats = a.json("rpvstat")
    assert sum(s["kb_read"] for s in stats) < 1024
    out = a.ctl("syncvg", "--verify", "--repair", "-l", "datafslv")
    assert "1 differing chunks, 1 repaired" in out
    assert "0 differing chunks" in a.ctl("syncvg", "--verify", "-v", "datavg")
    assert diff_blocks(read_copy(m, 0, geo.files, 4), read_copy(m, 1, geo.files, 4)) == []
