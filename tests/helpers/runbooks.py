"""Site set-ups from the white paper's runbooks, shared by the scenario tests."""

from __future__ import annotations


def configure_airline(geo) -> None:
    """Runbook 1: the seed's airline example, step by step. The scenario tests start from
    here; what the commands print is test_runbook1's and the CLI tests' business, so the
    steps go straight to A's control socket (the requests glvmctl sends for them)."""
    a = geo.a
    a.rpc("mkvg", vg="datavg", pvs=["hdisk1", "hdisk2"], pp_size_mb=None, force=False)
    for lv, lps in (("datafslv", 10), ("dataloglv", 1)):
        a.rpc("mklv", lv=lv, vg="datavg", lps=lps, copies=1, strictness="y", upperbound=0,
              pvs=[])
    a.rpc("chvg", vg="datavg", auto_on="n", quorum=None)
    for lv in ("datafslv", "dataloglv"):
        a.rpc("chlv", lv=lv, strictness="s", upperbound=2)
    r = a.rpc("gmvg_add_rpvs", vg="datavg", site="Poughkeepsie", pvs=None, force=False)
    assert "hdisk3 hdisk4" in " ".join(r["pvs"]), r
    r = a.rpc("gmvg_add_mirror", vg="datavg", site="Poughkeepsie", copies=None,
              sync="foreground", keep_quorum=False)
    assert "0516-1125 mirrorvg: Quorum requirement turned off" in "\n".join(
        r.get("messages") or []), r
    assert not (r.get("resync") or {}).get("failed"), r  # glvmctl would exit 1


RPV_SERVERS = ("rpvserver0", "rpvserver1")  # at B, serving B's hdisk2/hdisk3 to A
RPV_CLIENTS = ("hdisk3", "hdisk4")  # at A


def b_lets_go(b) -> None:
    """The seed's "Taking Down Disaster Recovery Site": varyoffvg, RPV servers Available."""
    for s in RPV_SERVERS:
        b.ctl("chdev", "-l", s, "-a", "auto_online=y")
    b.ctl("varyoffvg", "datavg")
    for s in RPV_SERVERS:
        b.ctl("mkdev", "-l", s)
    assert {d["name"]: d["state"] for d in b.json("lsdev", "-c", "rpvserver")} == \
        dict.fromkeys(RPV_SERVERS, "Available")


def a_takes_back(a) -> None:
    """The seed's failback at A (its rpvd running again): RPV clients first, varyonvg -n -s
    shows A's own PVs removed, chpv -v a returns them, and a normal varyon resyncs them."""
    for d in RPV_CLIENTS:
        a.ctl("mkdev", "-l", d)
    a.ctl("varyonvg", "-n", "-s", "datavg")
    a.ctl("chpv", "-v", "a", "hdisk1")
    a.ctl("chpv", "-v", "a", "hdisk2")
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")
