"""``glvmctl jobs``: the long operations rpvd is running (syncvg, mirrorvg, syncvg --verify,
gmvg add-mirror, background resyncs): list them, follow one, cancel one."""

from __future__ import annotations

import time

import typer

from glvmctl.context import rpc
from glvmctl.devices import JSON
from glvmctl.lvm import progress_bar
from glvmctl.output import columns, emit_json

app = typer.Typer(help="Long operations: list (the default), wait for, or cancel a job.",
                  invoke_without_command=True)


def _progress(p: dict | None) -> str:
    if not p:
        return "-"
    if "pps_total" in p:
        return f"{p.get('pps_done', 0)}/{p['pps_total']} PPs"
    if "lps" in p:
        return f"{p.get('lv', '')} LP {p.get('lp', 0)}/{p['lps']}"
    return "-"


@app.callback()
def jobs(ctx: typer.Context, as_json: bool = JSON) -> None:
    """List running and recently finished jobs."""
    if ctx.invoked_subcommand is not None:
        return
    rows = rpc("jobs")
    if as_json:
        emit_json(rows)
        return
    columns([[str(j["id"]), j["op"], j["target"] or "-", j["state"], _progress(j["progress"]),
              time.strftime("%H:%M:%S", time.localtime(j["started"])),
              j["error"] or ""] for j in rows],
            ["ID", "OPERATION", "TARGET", "STATE", "PROGRESS", "STARTED", "ERROR"])


@app.command("wait")
def wait(job_id: int = typer.Argument(..., metavar="ID"), as_json: bool = JSON) -> None:
    """Follow a job until it ends (progress on a terminal); exit 1 unless it succeeded."""
    with progress_bar(f"job {job_id}", show=not as_json) as on_event:
        job = rpc("jobs_wait", on_event=on_event, id=job_id)
    if as_json:
        emit_json(job)
    else:
        typer.echo(f"job {job['id']} ({job['op']} {job['target']}): {job['state']}"
                   + (f": {job['error']}" if job["error"] else ""))
    raise typer.Exit(0 if job["state"] == "done" else 1)


@app.command("cancel")
def cancel(job_id: int = typer.Argument(..., metavar="ID")) -> None:
    """Cancel a running job; what it finished stays done, the rest stays stale."""
    job = rpc("jobs_cancel", id=job_id)
    typer.echo(f"job {job['id']} ({job['op']} {job['target']}): {job['state']}")
