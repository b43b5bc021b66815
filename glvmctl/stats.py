"""Operations statistics: ``rpvstat`` (per RPV client or network path) and ``gmvgstat``."""

from __future__ import annotations

import time

import typer

from glvmctl.context import rpc
from glvmctl.devices import JSON
from glvmctl.output import columns, emit_json


def register(app: typer.Typer) -> None:
    @app.command()
    def rpvstat(
        interval: int = typer.Option(0, "-i", min=0, help="refresh every SEC seconds"),
        count: int = typer.Option(0, "-n", min=0, help="number of reports with -i "
                                                       "(0: until interrupted)"),
        by_path: bool = typer.Option(False, "-N", help="per network path, not per client"),
        reset: bool = typer.Option(False, "-R", help="reset the counters after reporting"),
        asynchronous: bool = typer.Option(False, "-A", help="asynchronous mirroring: writes "
                                          "cached and sent, cache use, high-water mark hits"),
        as_json: bool = JSON,
    ) -> None:
        """RPV client statistics: completed and pending I/O, KB moved, errors, timeouts,
        average and maximum I/O time."""
        n = 0
        while True:
            rows = rpc("rpvstat", reset=reset, by_path=by_path, asynchronous=asynchronous)
            if as_json:
                emit_json(rows)
            elif asynchronous:
                _print_async(rows)
            else:
                _print_rpvstat(rows, by_path)
            n += 1
            if not interval or (count and n >= count):
                return
            time.sleep(interval)
            typer.echo("")

    @app.command()
    def gmvgstat(vg: str = typer.Argument(None, help="one volume group"),
                 as_json: bool = JSON) -> None:
        """Geographically mirrored VG statistics: PVs, RPVs, stale volumes/PPs, % synced."""
        rows = rpc("gmvgstat", vg=vg)
        if as_json:
            emit_json(rows)
            return
        columns([[r["vg"], r["pvs"], r["rpvs"], r["total_vols"], r["stale_vols"],
                  r["total_pps"], r["stale_pps"], f"{r['synced_pct']:.0f}%",
                  f"{r.get('async_lag_bytes', 0) // 1024} KB/{r.get('async_lag_seconds', 0)} s",
                  "-" if r.get("resync_rate_mb") is None else f"{r['resync_rate_mb']} MB/s"]
                 for r in rows],
                header=["GMVG Name", "PVs", "RPVs", "Tot Vols", "St Vols", "Total PPs",
                        "Stale PPs", "Sync", "Async Lag", "Resync Rate"])


def _print_async(rows: list[dict]) -> None:
    columns([[r["vg"], r["pool"], r["state"], r.get("writes", 0), r.get("bytes", 0) // 1024,
              r.get("sent_writes", 0), r.get("pending_writes", 0),
              r.get("pending_bytes", 0) // 1024, f"{r.get('cache_fill_percent', 0)}%",
              r.get("hwm", ""), r.get("hwm_hits", 0), f"{r.get('lag_seconds', 0)}"]
             for r in rows],
            header=["VG", "Mirror Pool", "State", "Async Wr", "KB Cached", "Sent Wr",
                    "Pend Wr", "Pend KB", "Cache Used", "HWM", "HWM Hits", "Lag s"])


def _print_rpvstat(rows: list[dict], by_path: bool) -> None:
    first = (lambda r: [f"{r['local_addr']}->{r['server_addr']}"]) if by_path else \
        (lambda r: [r["name"], r["server_addr"], r["state"]])
    head = ["Network Path"] if by_path else ["RPV Client", "Server", "State"]
    columns([first(r) + [r["reads"], r["writes"], r["kb_read"], r["kb_written"],
                         r["pend_reads"], r["pend_writes"], r["errors"], r["timeouts"]]
             + ([] if by_path else [r["avg_ms"]]) + [r["max_ms"]]
             + ([] if by_path else [r.get("compress", "none")]) + _payload_kb(r) for r in rows],
            header=head + ["Comp Rd", "Comp Wr", "KB Read", "KB Written", "Pend Rd",
                           "Pend Wr", "Errors", "Timeouts"]
            + ([] if by_path else ["Avg ms"]) + ["Max ms"]
            + ([] if by_path else ["Compress"]) + ["Data KB", "Wire KB"])


def _payload_kb(r: dict) -> list:
    """Data payload KB (reads + writes) on the link before and after compression."""
    raw = r.get("raw_bytes_read", 0) + r.get("raw_bytes_written", 0)
    wire = r.get("wire_bytes_read", 0) + r.get("wire_bytes_written", 0)
    return [raw // 1024, wire // 1024]
