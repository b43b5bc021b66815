"""The white paper's runbooks as scenario tests: two real daemons, site A "Philadelphia" on
127.0.0.1 and site B "Poughkeepsie" on 127.0.0.2, data written and verified through NBD."""

from __future__ import annotations

import json

from tests.conftest import run

MiB = 1 << 20


def configure_airline(geo) -> None:
    """Runbook 1: the seed's airline example, step by step."""
    a = geo.a
    a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
    a.ctl("mklv", "-y", "datafslv", "datavg", "10")
    a.ctl("mklv", "-y", "dataloglv", "datavg", "1")
    a.ctl("chvg", "-a", "n", "datavg")
    for lv in ("datafslv", "dataloglv"):
        a.ctl("chlv", "-s", "s", "-u", "2", lv)
    assert "hdisk3 hdisk4" in a.ctl("gmvg", "add-rpvs", "datavg", "--site", "Poughkeepsie")
    out = a.ctl("gmvg", "add-mirror", "datavg", "--site", "Poughkeepsie")
    assert "0516-1125 mirrorvg: Quorum requirement turned off" in out


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
    assert lines[2].split() == ["local", "PV1", "hdisk1", "hdisk2"] or \
        lines[2].split() == ["local", "PV1", "hdisk1"]
    assert lines[3].split()[:2] == ["Poughkeepsie", "PV2"]
    assert "Checking Logical Volume datafslv." in lines and \
        "Checking Logical Volume dataloglv." in lines
    v = a.json("gmvg", "verify", "datavg")
    assert v["ok"] is True and [c["site"] for c in v["copies"]] == ["local", "Poughkeepsie"]
    listing = a.json("gmvg", "list")
    assert listing == [{"vg": "datavg", "state": "active", "sites": ["Poughkeepsie", "local"],
                        "copies": 2, "stale_pps": 0}]
    # a copy spanning both sites is caught and named
    a.ctl("mklv", "-y", "badlv", "-c", "2", "datavg", "1", "hdisk1", "hdisk2")
    r = a.run("gmvg", "verify", "datavg")
    assert r.returncode == 1 and "copies 1 and 2 of badlv are both at site local" in r.stdout


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
