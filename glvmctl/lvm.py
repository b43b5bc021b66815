"""LVM commands with AIX 5L syntax: volume groups, logical volumes, mirroring, resync."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import typer

from glvmctl.context import rpc
from glvmctl.devices import JSON
from glvmctl.output import columns, emit_json, fail

YesNo = Literal["y", "n"]
Strictness = Literal["y", "s", "n"]
STRICTNESS = {"y": "strict", "s": "superstrict", "n": "off"}

# Fixed column widths of AIX's lsvg -p, lsvg -l and lslv -m tables.
LSVG_P = (("PV_NAME", 18), ("PV STATE", 18), ("TOTAL PPs", 12), ("FREE PPs", 12),
          ("STALE PPs", 0))
LSVG_L = (("LV NAME", 20), ("TYPE", 11), ("LPs", 8), ("PPs", 8), ("PVs", 5),
          ("LV STATE", 14), ("COPIES", 0))
MAP_LP, MAP_PP, MAP_PV = 6, 5, 18


def fixed(cells: list, widths: list[int]) -> str:
    """One row of a fixed-width table; a cell always keeps one space before the next."""
    return "".join(f"{c!s:<{w - 1}} " if w else str(c)
                   for c, w in zip(cells, widths, strict=True)).rstrip()


def table(spec: tuple, rows: list[list]) -> None:
    widths = [w for _, w in spec]
    typer.echo(fixed([h for h, _ in spec], widths))
    for r in rows:
        typer.echo(fixed(r, widths))


def pairs(items: list[tuple[str, object]]) -> None:
    """AIX's two-column key/value block (lsvg VG, lslv LV): two pairs per line."""
    left, right = items[0::2], items[1::2]
    kw, rw = (max(len(k) for k, _ in side) + 1 for side in (left, right))
    vw = max(len(str(v)) for _, v in left) + 3
    for i, (k, v) in enumerate(left):
        rk, rv = right[i] if i < len(right) else ("", "")
        typer.echo(f"{k:<{kw}}{v!s:<{vw}}{rk:<{rw}}{rv}".rstrip())


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


def megabytes(mb: int) -> str:
    return f"{mb} megabyte(s)"


def pv_status(rows: list[dict]) -> None:
    """The ``PV Status:`` table varyonvg and importvg print (name, PVID, state)."""
    typer.echo("PV Status:")
    columns([[p["name"] or "", p["pvid"][:16], p["status"]] for p in rows])


def messages(result: dict) -> None:
    for m in result.get("messages") or []:
        typer.echo(m)


def report_failed(failed: list[str] | None) -> None:
    """Print partitions/volumes a resync could not fix to stderr and exit 1."""
    if failed:
        for f in failed:
            typer.echo(f, err=True)
        raise typer.Exit(1)


def json_line(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def json_line_event(ev: dict) -> None:
    json_line({"event": "progress", **ev})


@contextmanager
def progress_bar(title: str, show: bool = True) -> Iterator[Callable[[dict], None] | None]:
    """An ``on_event`` callback drawing resync progress on stderr; None unless it is a TTY."""
    if not (show and sys.stderr.isatty()):
        yield None
        return
    from rich import progress as rp
    from rich.console import Console
    with rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                     rp.MofNCompleteColumn(), rp.TextColumn("PPs, {task.fields[mb]:.1f} MB"),
                     rp.TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(title, total=None, mb=0.0)

        def on_event(ev: dict) -> None:
            bar.update(task, total=ev.get("pps_total"), completed=ev.get("pps_done", 0),
                       mb=ev.get("bytes", 0) / (1 << 20))
        yield on_event


def lv_map(r: dict) -> None:
    """lslv -m: ``LP PP1 PV1 PP2 PV2 ...`` with one PP/PV pair per copy."""
    typer.echo(f"{r['name']}:N/A")
    n = max([r["copies"]] + [len(row["copies"]) for row in r["map"]])
    widths = [MAP_LP] + [MAP_PP, MAP_PV] * n
    typer.echo(fixed(["LP"] + [h for i in range(1, n + 1)
                               for h in (f"PP{i}", f"PV{i}")], widths))
    for row in r["map"]:
        cells = [f"{row['lp']:04d}"]
        for c in row["copies"]:
            cells += [f"{c['pp']:04d}", c["pv"] + (" (stale)" if c["stale"] else "")]
        typer.echo(fixed(cells, widths[:len(cells)]))


def verify_copies(lv: str | None, pv: str | None, vg: str | None, repair: bool,
                  as_json: bool) -> None:
    """syncvg --verify: report differing 64 KiB chunks; exit 1 if any is left unrepaired."""
    if pv is not None:
        fail("syncvg --verify takes -l LV or -v VG")
    r = rpc("syncvg_verify", lv=lv, vg=vg, repair=repair)
    if as_json:
        json_line(r)
    else:
        for m in r["mismatches"]:
            typer.echo(f"syncvg: {m['lv']} LP {m['lp']}: bytes {m['offset']}+{m['length']} "
                       f"differ between {' '.join(m['pvs'])}")
        for x in r.get("failed", []):
            typer.echo(f"syncvg: {x['lv']} LP {x['lp']}: repair at byte {x['offset']} failed: "
                       f"{x['error']} (see lsvg -p for the copy's PV)")
        typer.echo(f"syncvg: verified {r['regions']} regions ({r['bytes']} bytes), "
                   f"{len(r['mismatches'])} differing chunks, {r['repaired']} repaired")
    if len(r["mismatches"]) > r["repaired"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    # ---- volume groups ---------------------------------------------------------------------

    @app.command()
    def mkvg(
        vg: str = typer.Option(..., "-y", help="volume group name"),
        pp_size: int = typer.Option(None, "-s", help="physical partition size, MB "
                                                     "(power of 2)"),
        force: bool = typer.Option(False, "-f", help="take PVs that look like they belong "
                                                     "to another volume group"),
        pool: str = typer.Option(None, "-p", help="put the PVs in this mirror pool"),
        pvs: list[str] = typer.Argument(..., help="physical volumes"),
    ) -> None:
        """Create a volume group on one or more physical volumes."""
        r = rpc("mkvg", vg=vg, pvs=pvs, pp_size_mb=pp_size, force=force, pool=pool)
        typer.echo(r["vg"])

    @app.command()
    def extendvg(
        force: bool = typer.Option(False, "-f", help="take PVs that look like they belong "
                                                     "to another volume group"),
        pool: str = typer.Option(None, "-p", help="put the new PVs in this mirror pool"),
        vg: str = typer.Argument(..., help="volume group"),
        pvs: list[str] = typer.Argument(..., help="physical volumes to add"),
    ) -> None:
        """Add physical volumes to a volume group."""
        rpc("extendvg", vg=vg, pvs=pvs, force=force, pool=pool)

    @app.command()
    def reducevg(
        delete_lvs: bool = typer.Option(False, "-d", help="also remove the LV copies that "
                                                          "have partitions on the PV (never "
                                                          "an LV's last copy)"),
        vg: str = typer.Argument(..., help="volume group"),
        pv: str = typer.Argument(..., help="physical volume to remove"),
    ) -> None:
        """Remove a physical volume from a volume group."""
        rpc("reducevg", vg=vg, pv=pv, delete_lvs=delete_lvs)

    @app.command()
    def mirrorvg(
        background: bool = typer.Option(False, "-S", help="synchronize in the background"),
        no_sync: bool = typer.Option(False, "-s", help="do not synchronize; the new copy "
                                                       "stays stale until syncvg"),
        copies: int = typer.Option(2, "-c", min=2, max=3, help="copies after mirroring "
                                                               "(2 or 3)"),
        keep_quorum: bool = typer.Option(False, "-Q", help="keep quorum checking on"),
        mirror_pools: list[str] = typer.Option(None, "-p", help="copyN=POOL: place copy N "
                                               "in mirror pool POOL (repeatable)"),
        vg: str = typer.Argument(..., help="volume group"),
        pvs: list[str] = typer.Argument(None, help="physical volumes for the new copy "
                                        "(default with -p: the mirror pool's)"),
    ) -> None:
        """Add a mirror copy of every logical volume in a volume group."""
        if background and no_sync:
            fail("give at most one of -S and -s")
        sync = "background" if background else "none" if no_sync else "foreground"
        with progress_bar(f"mirrorvg {vg}", sync == "foreground") as on_event:
            r = rpc("mirrorvg", on_event=on_event, vg=vg, pvs=pvs or [], copies=copies,
                    sync=sync, keep_quorum=keep_quorum, mirror_pools=mirror_pools or [])
        messages(r)
        report_failed((r.get("resync") or {}).get("failed"))

    @app.command()
    def unmirrorvg(
        vg: str = typer.Argument(..., help="volume group"),
        pvs: list[str] = typer.Argument(..., help="physical volumes whose copy to remove"),
    ) -> None:
        """Remove the mirror copy on the given physical volumes."""
        rpc("unmirrorvg", vg=vg, pvs=pvs)

    @app.command()
    def varyonvg(
        force: bool = typer.Option(False, "-f", help="vary on without a quorum"),
        nosync: bool = typer.Option(False, "-n", help="do not resynchronize stale "
                                                      "partitions"),
        maintenance: bool = typer.Option(False, "-s", help="systems management mode: "
                                                           "logical volumes stay closed"),
        discard_site: str = typer.Option(None, "--discard-site",
                                         help="after a split brain: drop the changes made "
                                              "at this site and recopy its disks"),
        vg: str = typer.Argument(..., help="volume group"),
    ) -> None:
        """Activate a volume group (also returns missing PVs that came back)."""
        args = {"discard_site": discard_site} if discard_site else {}
        r = rpc("varyonvg", vg=vg, force=force, nosync=nosync, maintenance=maintenance, **args)
        if nosync or maintenance or any(p["status"] != "PVACTIVE" for p in r["pv_status"]):
            pv_status(r["pv_status"])
        messages(r)

    @app.command()
    def varyoffvg(force: bool = typer.Option(False, "-f", help="even with open logical volumes: "
                                                              "their NBD clients are "
                                                              "disconnected"),
                  vg: str = typer.Argument(..., help="volume group")) -> None:
        """Deactivate a volume group (refused while a logical volume is open)."""
        rpc("varyoffvg", vg=vg, force=force)

    @app.command()
    def importvg(
        vg: str = typer.Option(..., "-y", help="name for the imported volume group"),
        force: bool = typer.Option(False, "-f", help="vary on without a quorum"),
        pv: str = typer.Argument(..., help="any one physical volume of the group"),
    ) -> None:
        """Import a volume group from a physical volume's metadata and vary it on."""
        r = rpc("importvg", vg=vg, pv=pv, force=force)
        pv_status(r["pv_status"])
        messages(r)
        typer.echo(vg)

    @app.command()
    def exportvg(vg: str = typer.Argument(..., help="volume group (varied off)")) -> None:
        """Remove a volume group's definition from this system (the disks keep it)."""
        rpc("exportvg", vg=vg)

    @app.command()
    def chvg(
        auto_on: YesNo = typer.Option(None, "-a", help="vary on at daemon start (y/n)"),
        quorum: YesNo = typer.Option(None, "-Q", help="quorum checking (y/n)"),
        pool_strict: Strictness = typer.Option(None, "-M", help="mirror pool strictness: "
                                               "n off, y every copy in a pool, s super strict "
                                               "(each copy in its own pool)"),
        floor: float = typer.Option(None, "--resync-floor", min=0.1, help="MB/s every resync "
                                    "gets, however busy the link (default 4)"),
        impact: int = typer.Option(None, "--resync-impact", min=0, help="how much longer, in "
                                   "percent, a resync may make I/O on the link take before it "
                                   "slows down (default 50)"),
        vg: str = typer.Argument(..., help="volume group"),
    ) -> None:
        """Change a volume group's auto-varyon, quorum, mirror pool strictness or resync
        limits."""
        if auto_on is None and quorum is None and pool_strict is None and floor is None \
                and impact is None:
            fail("give -a y|n, -Q y|n, -M n|y|s, --resync-floor and/or --resync-impact")
        messages(rpc("chvg", vg=vg, auto_on=auto_on, quorum=quorum,
                     mirror_pool_strict=pool_strict, resync_floor_mb=floor,
                     resync_impact_pct=impact))

    @app.command()
    def chpv(
        state: Literal["a", "r"] = typer.Option(None, "-v", help="a: return a removed PV "
                                                                "to use; r: remove it"),
        pool: str = typer.Option(None, "-p", help="put the PVs in this mirror pool"),
        no_pool: bool = typer.Option(False, "-P", help="take the PVs out of their mirror "
                                                       "pool"),
        pvs: list[str] = typer.Argument(..., help="physical volumes"),
    ) -> None:
        """Make physical volumes available to (-v a) or removed from (-v r) their volume
        group, or change their mirror pool (-p POOL, -P)."""
        if (state is not None) + (pool is not None) + no_pool != 1:
            fail("give exactly one of -v, -p and -P")
        if state is not None:
            for pv in pvs:
                rpc("chpv", pv=pv, state=state)
        else:
            rpc("chpv_pool", pvs=pvs, pool=pool)

    @app.command()
    def lsmp(
        pool: str = typer.Option(None, "-m", help="only this mirror pool"),
        show_async: bool = typer.Option(False, "-A", help="also the asynchronous state: "
                                        "cache use, writes not yet at the remote site, lag"),
        vg: str = typer.Argument(..., help="volume group"),
        as_json: bool = JSON,
    ) -> None:
        """List a volume group's mirror pools: mode, site, physical volumes, LV copies."""
        r = rpc("lsmp", vg=vg, pool=pool)
        if as_json:
            emit_json(r)
            return
        strict = {"n": "no", "y": "yes", "s": "super strict"}[r["mirror_pool_strict"]]
        pairs([("VOLUME GROUP:", r["vg"]), ("Mirror Pool Strictness:", strict)])
        for p in r["pools"]:
            typer.echo("")
            pairs([("MIRROR POOL:", p["pool"]), ("Mirroring Mode:", p["mode"].upper()),
                   ("SITE:", p["site"] or "unknown"), ("PHYSICAL VOLUMES:", " ".join(p["pvs"]))])
            copies = [f"{c['lv']} (copy {c['copy']})" for c in p["copies"]]
            typer.echo(f"LV COPIES:          {' '.join(copies) or 'none'}")
            a = p.get("async")
            if show_async and a:
                pairs([("ASYNC MIRROR STATE:", a["state"]),
                       ("ASYNC CACHE LV:", a.get("cache_lv") or "none"),
                       ("ASYNC CACHE VALID:", yes_no(a["cache_valid"])),
                       ("ASYNC CACHE EMPTY:", yes_no(a.get("cache_empty", True))),
                       ("ASYNC CACHE HWM:", a.get("hwm", "")),
                       ("ASYNC DATA DIVERGED:", yes_no(not a.get("consistent", True))),
                       ("ASYNC CACHE USED:", f"{a.get('cache_fill_percent', 0)}%"),
                       ("ASYNC LAG:", f"{a.get('lag_seconds', 0)} s"),
                       ("WRITES NOT AT REMOTE:", a.get("pending_writes", 0)),
                       ("BYTES NOT AT REMOTE:", a.get("pending_bytes", 0))])

    @app.command()
    def chmp(
        to_async: bool = typer.Option(False, "-A", help="mirror the pool asynchronously"),
        to_sync: bool = typer.Option(False, "-S", help="drain the I/O cache and mirror "
                                     "synchronously again"),
        cache_lv: str = typer.Option(None, "-c", help="with -A: the aio_cache logical volume"),
        hwm: int = typer.Option(None, "-h", min=1, max=100, help="I/O cache high-water "
                                "mark, percent: writes wait above it"),
        force: bool = typer.Option(False, "-f", help="with -S while the remote site is down: "
                                   "the cached writes become stale partitions"),
        pool: str = typer.Option(..., "-m", help="mirror pool (of remote disks)"),
        vg: str = typer.Argument(..., help="volume group"),
    ) -> None:
        """Change a mirror pool's mirroring mode (-A / -S) or high-water mark (-h)."""
        if to_async and to_sync:
            fail("give at most one of -A and -S")
        if not (to_async or to_sync or hwm is not None):
            fail("give -A, -S or -h")
        r = rpc("chmp", vg=vg, pool=pool, mode="async" if to_async else "sync" if to_sync
                else None, cache_lv=cache_lv, hwm=hwm, force=force)
        typer.echo(f"mirror pool {r['pool']} of {r['vg']}: {r['mode']}")

    @app.command()
    def lsvg(
        vg: str = typer.Argument(None, help="volume group; omit to list all"),
        pvs: bool = typer.Option(False, "-p", help="list the group's physical volumes"),
        lvs: bool = typer.Option(False, "-l", help="list the group's logical volumes"),
        as_json: bool = JSON,
    ) -> None:
        """List volume groups, or show one (its PVs with -p, its LVs with -l)."""
        if pvs and lvs:
            fail("give at most one of -p and -l")
        if vg is None and (pvs or lvs):
            fail("-p and -l need a volume group")
        r = rpc("lsvg", vg=vg)
        if as_json:
            emit_json(r)
        elif vg is not None and r["state"] == "inactive":
            fail(f"0516-010 lsvg: Volume group {vg} must be varied on; use varyonvg command.")
        elif vg is None:
            for name in r:
                typer.echo(name)
        elif pvs:
            typer.echo(f"{r['name']}:")
            table(LSVG_P, [[p["name"] or p["pvid"][:16], p["state"], p["total_pps"],
                            p["free_pps"],
                            p["stale_pps"]] for p in r["pvs"]])
        elif lvs:
            typer.echo(f"{r['name']}:")
            table(LSVG_L, [[v["name"], v["type"], v["lps"], v["pps"], v["pvs"], v["state"],
                            v["copies"]] for v in r["lvs"]])
        else:
            mb = r["pp_size_mb"]
            pairs([("VOLUME GROUP:", r["name"]), ("VG IDENTIFIER:", r["vgid"]),
                   ("VG STATE:", r["state"]), ("PP SIZE:", megabytes(mb)),
                   ("LVs:", r["lvs_count"]),
                   ("TOTAL PPs:", f"{r['total_pps']} ({r['total_pps'] * mb} megabytes)"),
                   ("OPEN LVs:", r["open_lvs"]),
                   ("FREE PPs:", f"{r['free_pps']} ({r['free_pps'] * mb} megabytes)"),
                   ("TOTAL PVs:", r["total_pvs"]),
                   ("USED PPs:", f"{r['used_pps']} ({r['used_pps'] * mb} megabytes)"),
                   ("STALE PVs:", r["stale_pvs"]), ("STALE PPs:", r["stale_pps"]),
                   ("ACTIVE PVs:", r["active_pvs"]), ("QUORUM:", on_off(r["quorum"])),
                   ("AUTO ON:", yes_no(r["auto_on"])),
                   *((("RESYNC FLOOR:", f"{r['resync_floor_mb']:g} MB/s"),
                      ("RESYNC IMPACT:", f"{r['resync_impact_pct']}%"))
                     if "resync_floor_mb" in r else ()),
                   *((("RESYNC RATE:", f"{r['resync_rate_mb']:g} MB/s"),)
                     if r.get("resync_rate_mb") is not None else ())])

    # ---- logical volumes -------------------------------------------------------------------

    @app.command()
    def mklv(
        lv: str = typer.Option(..., "-y", help="logical volume name"),
        copies: int = typer.Option(1, "-c", min=1, max=3, help="copies of each logical "
                                                               "partition (1-3)"),
        strictness: Strictness = typer.Option("y", "-s", help="y: strict, s: super strict, "
                                                              "n: copies may share a PV"),
        upperbound: int = typer.Option(0, "-u", min=0, help="most PVs one copy may span "
                                                            "(0: no limit)"),
        mirror_pools: list[str] = typer.Option(None, "-p", help="copyN=POOL: place copy N "
                                               "in mirror pool POOL (repeatable)"),
        lv_type: Literal["lv", "aio_cache"] = typer.Option("lv", "-t", help="aio_cache: the "
                                                           "I/O cache of asynchronous mirror "
                                                           "pools (never exported)"),
        vg: str = typer.Argument(..., help="volume group"),
        lps: int = typer.Argument(..., min=1, help="number of logical partitions"),
        pvs: list[str] = typer.Argument(None, help="physical volumes to allocate from"),
    ) -> None:
        """Create a logical volume."""
        r = rpc("mklv", lv=lv, vg=vg, lps=lps, copies=copies, strictness=strictness,
                upperbound=upperbound, pvs=pvs or [], mirror_pools=mirror_pools or [],
                lv_type=lv_type)
        typer.echo(r["lv"])

    @app.command()
    def chlv(
        strictness: Strictness = typer.Option(None, "-s", help="y: strict, s: super strict, "
                                                               "n: copies may share a PV"),
        upperbound: int = typer.Option(None, "-u", min=0, help="most PVs one copy may span"),
        name: str = typer.Option(None, "-n", help="new name (the LV must be closed)"),
        lv: str = typer.Argument(..., help="logical volume"),
    ) -> None:
        """Change a logical volume's allocation policy (strictness, upper bound) or name."""
        if name is not None:
            if strictness is not None or upperbound is not None:
                fail("chlv -n renames only; change -s/-u in another chlv")
            rpc("chlv", lv=lv, name=name)
            return
        if strictness is None and upperbound is None:
            fail("give -s y|s|n and/or -u N, or -n NEWNAME")
        rpc("chlv", lv=lv, strictness=strictness, upperbound=upperbound)

    @app.command()
    def rmlv(
        force: bool = typer.Option(False, "-f", help="even while open: its NBD clients are "
                                                     "disconnected (glvmctl never asks)"),
        lv: str = typer.Argument(..., help="logical volume"),
    ) -> None:
        """Remove a logical volume (refused while it is open)."""
        rpc("rmlv", lv=lv, force=force)
        typer.echo(f"rmlv: Logical volume {lv} is removed.")

    @app.command()
    def lslv(
        show_map: bool = typer.Option(False, "-m", help="show each logical partition's "
                                                        "physical partitions"),
        lv: str = typer.Argument(..., help="logical volume"),
        as_json: bool = JSON,
    ) -> None:
        """Show a logical volume, or with -m its logical-to-physical partition map."""
        r = rpc("lslv", lv=lv, map=show_map)
        if as_json:
            emit_json(r)
        elif show_map:
            lv_map(r)
        else:
            pairs([("LOGICAL VOLUME:", r["name"]), ("VOLUME GROUP:", r["vg"]),
                   ("LV STATE:", r["state"]), ("PP SIZE:", megabytes(r["pp_size_mb"])),
                   ("COPIES:", r["copies"]), ("SIZE:", f"{r['size_bytes']} bytes"),
                   ("LPs:", r["lps"]), ("PPs:", r["pps"]),
                   ("STALE PPs:", r["stale_pps"]), ("UPPER BOUND:", r["upperbound"]),
                   ("STRICTNESS:", STRICTNESS.get(r["strictness"], r["strictness"])),
                   *((f"COPY {c + 1} MIRROR POOL:", pool or "None")
                     for c, pool in enumerate(r.get("mirror_pools") or []))])

    @app.command()
    def syncvg(
        force: bool = typer.Option(False, "-f", help="resynchronize every partition, "
                                                     "stale or not"),
        parallel: int = typer.Option(1, "-P", min=1, help="partitions to copy at once"),
        rate: float = typer.Option(0.0, "--rate", min=0, help="copy rate limit, MB/s (0: "
                                   "none); below it the rate adapts to the link (chvg "
                                   "--resync-floor/--resync-impact)"),
        lv: str = typer.Option(None, "-l", help="resynchronize this logical volume"),
        pv: str = typer.Option(None, "-p", help="resynchronize partitions on this PV"),
        vg: str = typer.Option(None, "-v", help="resynchronize this volume group"),
        as_json: bool = typer.Option(False, "--json", help="print each progress event and "
                                                           "the result as JSON lines"),
        verify: bool = typer.Option(False, "--verify", help="compare the copies (by digests "
                                                            "computed where each copy lives) "
                                                            "instead of resynchronizing"),
        repair: bool = typer.Option(False, "--repair", help="with --verify: rewrite differing "
                                                            "chunks from the preferred copy"),
    ) -> None:
        """Resynchronize stale partitions of a logical volume, physical volume or VG, or
        verify that the copies are identical (--verify [--repair])."""
        if sum(x is not None for x in (lv, pv, vg)) != 1:
            fail("give exactly one of -l LV, -p PV, -v VG")
        if verify or repair:
            verify_copies(lv, pv, vg, repair, as_json)
            return
        args = dict(lv=lv, pv=pv, vg=vg, parallel=parallel, force=force, rate_mb=rate)
        if as_json:
            r = rpc("syncvg", on_event=json_line_event, **args)
            json_line(r)
        else:
            with progress_bar(f"syncvg {lv or pv or vg}") as on_event:
                r = rpc("syncvg", on_event=on_event, **args)
            typer.echo(f"syncvg: {r['pps_done']} stale partitions resynchronized, "
                       f"{r['bytes']} bytes copied in {r['seconds']:.1f} s")
        report_failed(r.get("failed"))

