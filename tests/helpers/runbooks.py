"""Site set-ups from the white paper's runbooks, shared by the scenario tests."""

from __future__ import annotations


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
