"""GLVM utilities: ``gmvg add-rpvs``, ``add-mirror``, ``verify``, ``list`` (smitty glvm_utils)."""

from __future__ import annotations

import typer

from glvmctl.context import rpc
from glvmctl.devices import JSON
from glvmctl.lvm import messages, progress_bar, report_failed
from glvmctl.output import columns, emit_json

app = typer.Typer(help="Geographically mirrored volume groups: add a site's RPVs, add a "
                       "remote-site mirror copy, verify copy/site placement, list.",
                  no_args_is_help=True)


@app.command("add-rpvs")
def add_rpvs(
    vg: str = typer.Argument(..., help="volume group"),
    site: str = typer.Option(..., "--site", help="site whose remote physical volumes to add"),
    pvs: list[str] = typer.Argument(None, help="RPV client disks (default: all free ones "
                                               "of the site)"),
    force: bool = typer.Option(False, "-f", help="add disks holding old VG metadata"),
) -> None:
    """Add remote physical volumes of one site to a volume group (extendvg)."""
    r = rpc("gmvg_add_rpvs", vg=vg, site=site, pvs=pvs or None, force=force)
    typer.echo(f"{vg}: added {' '.join(r['pvs'])}")


@app.command("add-mirror")
def add_mirror(
    vg: str = typer.Argument(..., help="volume group"),
    site: str = typer.Option(..., "--site", help="site that gets the new mirror copy"),
    copies: int = typer.Option(None, "-c", min=2, max=3, help="copies after mirroring "
                                                              "(default: one more)"),
    background: bool = typer.Option(False, "-S", help="synchronize in the background"),
    no_sync: bool = typer.Option(False, "-s", help="do not synchronize now"),
    keep_quorum: bool = typer.Option(False, "-Q", help="keep quorum checking on"),
) -> None:
    """Add a mirror copy of every (super strict) LV wholly on one site's disks."""
    if background and no_sync:
        typer.echo("glvmctl: give at most one of -S and -s", err=True)
        raise typer.Exit(1)
    sync = "background" if background else "none" if no_sync else "foreground"
    with progress_bar(f"gmvg add-mirror {vg}", sync == "foreground") as on_event:
        r = rpc("gmvg_add_mirror", on_event=on_event, vg=vg, site=site, copies=copies,
                sync=sync, keep_quorum=keep_quorum)
    messages(r)
    report_failed((r.get("resync") or {}).get("failed"))


@app.command("verify")
def verify(vg: str = typer.Argument(..., help="volume group"), as_json: bool = JSON) -> None:
    """Check that each copy lies at exactly one site and no two copies share a site."""
    r = rpc("gmvg_verify", vg=vg)
    if as_json:
        emit_json(r)
    else:
        typer.echo(f"Checking Volume Group {vg}.")
        columns([["", c["site"], f"PV{c['copy']}", " ".join(c["pvs"])] for c in r["copies"]],
                header=["#", "Site", "Copy", "Physical Volumes"])
        for lv in r["lvs"]:
            typer.echo(f"Checking Logical Volume {lv['name']}.")
            for p in lv["problems"]:
                typer.echo(f"  ERROR: {p}")
        for w in r.get("warnings", []):
            typer.echo(f"WARNING: {w}")
    if not r["ok"]:
        raise typer.Exit(1)


@app.command("list")
def list_(as_json: bool = JSON) -> None:
    """Geographically mirrored volume groups: sites, copies, state, stale PPs."""
    rows = rpc("gmvg_list")
    if as_json:
        emit_json(rows)
        return
    columns([[r["vg"], r["state"], ",".join(r["sites"]) or "-",
              "-" if r["copies"] is None else str(r["copies"]),
              "-" if r["stale_pps"] is None else str(r["stale_pps"])] for r in rows],
            header=["VG", "STATE", "SITES", "COPIES", "STALE PPs"])
