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
