"""``glvmctl attach LV`` / ``detach LV|DEVICE``: a local block device for a logical volume (to
mkfs, fsck and mount it); ``attach`` alone lists what is attached."""

from __future__ import annotations

import typer

from glvmctl.context import rpc
from glvmctl.devices import JSON
from glvmctl.output import columns, emit_json


def register(app: typer.Typer) -> None:
    @app.command()
    def attach(lv: str = typer.Argument(None, help="logical volume of a varied-on volume group"),
               as_json: bool = JSON) -> None:
        """Give a logical volume a local block device and print its path (no LV: list)."""
        if lv is None:
            rows = rpc("attachments")
            if as_json:
                emit_json(rows)
            else:
                columns([[r["lv"], r["device"], r["via"]] for r in rows],
                        ["LV", "DEVICE", "VIA"])
            return
        r = rpc("attach", lv=lv)
        if as_json:
            emit_json(r)
        else:
            typer.echo(r["device"])

    @app.command()
    def detach(target: str = typer.Argument(..., metavar="LV|DEVICE",
                                            help="an attached logical volume or its device")
               ) -> None:
        """Remove a logical volume's local block device (refused while it is mounted)."""
        r = rpc("detach", target=target)
        typer.echo(f"{r['device']} ({r['lv']}) detached")
