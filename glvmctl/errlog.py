"""Error log commands: errpt, errclear, errnotify."""

from __future__ import annotations

import time

import typer

from glvmctl.context import rpc
from glvmctl.devices import JSON
from glvmctl.output import columns, emit_json

SUMMARY_KEYS = ("identifier", "label", "timestamp", "sequence", "type", "class", "resource",
                "description")

notify_app = typer.Typer(help="Error notification objects (run a command on new entries).",
                         no_args_is_help=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def errpt(
        detailed: bool = typer.Option(False, "-a", help="detailed report of each entry"),
        identifier: str = typer.Option(None, "-j", help="only entries with this identifier"),
        resource: str = typer.Option(None, "-N", help="only entries for this resource name"),
        as_json: bool = JSON,
    ) -> None:
        """Report error log entries, newest first."""
        entries = rpc("errpt", identifier=identifier, resource=resource)
        if as_json:
            emit_json([e if detailed else {k: e[k] for k in SUMMARY_KEYS} for e in entries])
        elif entries:
            typer.echo(format_detail(entries) if detailed else format_summary(entries))

    @app.command()
    def errclear() -> None:
        """Delete all error log entries."""
        n = rpc("errclear")
        typer.echo(f"{n} entries cleared")

    app.add_typer(notify_app, name="errnotify")


@notify_app.command("add")
def notify_add(
    method: str = typer.Option(..., "--method", help="shell command; $1 sequence, "
                               "$2 identifier, $3 class, $4 type, $6 resource, $9 label"),
    label: str = typer.Option(None, "--label", help="only entries with this label"),
    resource: str = typer.Option(None, "--resource", help="only entries for this resource"),
) -> None:
    """Add a notification object."""
    r = rpc("errnotify_add", method=method, label=label, resource=resource)
    typer.echo(f"errnotify object {r['id']} added")


@notify_app.command("list")
def notify_list(as_json: bool = JSON) -> None:
    """List notification objects."""
    rows = rpc("errnotify_list")
    if as_json:
        emit_json(rows)
        return
    columns([[str(r["id"]), r["label"] or "*", r["resource"] or "*", r["method"]]
             for r in rows], header=["ID", "LABEL", "RESOURCE", "METHOD"])


@notify_app.command("rm")
def notify_rm(notify_id: int = typer.Argument(..., help="object id from errnotify list")) -> None:
    """Remove a notification object."""
    rpc("errnotify_rm", id=notify_id)
    typer.echo(f"errnotify object {notify_id} removed")


# -- errpt formatting (pure functions of the entries rpvd returns) ---------------------------

def errpt_timestamp(ts: float) -> str:
    """AIX errpt summary timestamp: MMDDhhmmYY in local time."""
    return time.strftime("%m%d%H%M%y", time.localtime(ts))


def format_summary(entries: list[dict]) -> str:
    lines = ["IDENTIFIER TIMESTAMP  T C RESOURCE_NAME  DESCRIPTION"]
    for e in sorted(entries, key=lambda e: -e["sequence"]):
        lines.append(f"{e['identifier']:<10} {errpt_timestamp(e['timestamp'])} "
                     f"{e['type'][0]} {e['class']} {e['resource']:<14} "
                     f"{e['description'][:40]}")
    return "\n".join(lines)


def format_detail(entries: list[dict]) -> str:
    blocks = []
    for e in sorted(entries, key=lambda e: -e["sequence"]):
        when = time.strftime("%a %b %d %H:%M:%S %Z %Y", time.localtime(e["timestamp"]))
        lines = [
            "-" * 75,
            f"LABEL:          {e['label']}",
            f"IDENTIFIER:     {e['identifier']}",
            "",
            f"Date/Time:       {when}",
            f"Sequence Number: {e['sequence']}",
            f"Machine Id:      {e['machine_id']}",
            f"Node Id:         {e['node']}",
            f"Class:           {e['class']}",
            f"Type:            {e['type']}",
            f"Resource Name:   {e['resource']}",
            f"Resource Class:  {e['resource_class']}",
            f"Resource Type:   {e['resource_type']}",
            f"Location:        {e.get('location', '')}",
            "VPD:",
            *(f"        {line}" for line in e.get("vpd", [])),
            "",
            "Description",
            e["description"],
            "",
            "Probable Causes",
            *e["probable_causes"],
            "",
            "Failure Causes",
            *e["failure_causes"],
            "",
            "Recommended Actions",
            *e["recommended_actions"],
        ]
        if e.get("detail"):
            lines += ["", "Detail Data", e["detail"]]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
