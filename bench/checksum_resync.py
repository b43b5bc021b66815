#!/usr/bin/env python3
"""Checksum-based resync (issue 15): bytes a resync moves over the link when a whole remote
PV was marked stale but only a small part of it really changed.

    .venv/bin/python bench/checksum_resync.py [--size-mb 1024] [--changed 1.0] [--rtt 0]
                                              [--mbps 0]

Two real daemons; site A's RPV client of site B's disk goes through glvm-faultproxy, whose
counters give the bytes that crossed the link. The LV (one copy at each site) is written
whole without a flush, then the link goes silent and ``--changed`` percent of its 64 KiB
chunks are rewritten: the first write times out, the remote PV goes missing and everything it
took since its last flush (all of it) is marked stale. With the link back, ``syncvg`` compares
digests and copies only what differs; then ``syncvg -f`` (which recopies everything) gives the
plain-copy figure on the same data. Needs libnbd's Python binding for the unflushed writes
(qemu-io flushes an NBD export even with cache=unsafe). Prints a markdown table; the target
is ≤ 5% of the PV's bytes over the link.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sites import proxied_client, start, two_sites  # noqa: E402
from tests.helpers.lvmtools import read_copy  # noqa: E402
from tests.sites import Site  # noqa: E402

MiB = 1 << 20
CHUNK = 64 * 1024
SYSTEM_PYTHON = "/usr/bin/python3"  # libnbd's Python binding (python3-libnbd)
TARGET = 0.05



def write_unflushed(uri: str, script: str) -> None:
    """Run ``script`` with ``h``, an NBD handle on ``uri``; libnbd sends no FLUSH."""
    prog = (f"import os, nbd\nh = nbd.NBD()\nh.connect_uri({uri!r})\n{script}\n"
            "h.shutdown()\n")
    subprocess.run([SYSTEM_PYTHON, "-c", prog], check=True, timeout=1800)


def link(proxy) -> tuple[int, int]:
    st = proxy.stats()
    return st["bytes_up"], st["bytes_down"]


def syncvg(a: Site, proxy, force: bool) -> dict:
    up0, down0 = link(proxy)
    t0 = time.monotonic()
    r = a.rpc("syncvg", vg="benchvg", lv=None, pv=None, parallel=1, force=force, rate_mb=0.0)
    secs = time.monotonic() - t0
    up1, down1 = link(proxy)
    assert not r["failed"], r
    return dict(r, up=up1 - up0, down=down1 - down0, wall=secs)


def copies_digest(a: Site, files: dict[str, str]) -> tuple[str, str]:
    m = a.json("lslv", "-m", "benchlv")
    return tuple(hashlib.blake2b(read_copy(m, c, files, m["pp_size_mb"])).hexdigest()
                 for c in (0, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="LV (and remote copy) size, MiB")
    ap.add_argument("--changed", type=float, default=1.0,
                    help="percent of the 64 KiB chunks really changed")
    ap.add_argument("--rtt", type=float, default=0.0, help="link round-trip time during the "
                                                           "resyncs, ms")
    ap.add_argument("--mbps", type=float, default=0.0, help="link bandwidth cap during the "
                                                             "resyncs, Mbit/s (0: none)")
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="glvm-csum-bench-"))
    a, b = two_sites(tmp)
    disk = f"{args.size_mb + 64}M"
    rows = []
    try:
        start(b, a)
        a.make_disk("hdisk1", disk)
        with contextlib.ExitStack() as stack:
            proxy = proxied_client(stack, a, b, tmp, disk, 3)
            a.ctl("mkvg", "-y", "benchvg", "hdisk1", "hdisk2")
            a.ctl("chvg", "-a", "n", "-Q", "n", "benchvg")
            a.ctl("varyoffvg", "benchvg")
            a.ctl("varyonvg", "benchvg")  # quorum off takes effect
            pp = a.json("lsvg", "benchvg")["pp_size_mb"] * MiB
            lps = args.size_mb * MiB // pp
            a.ctl("mklv", "-y", "benchlv", "-c", "2", "benchvg", str(lps), "hdisk1", "hdisk2")
            size = lps * pp
            uri = a.nbd_uri("benchlv")
            t0 = time.monotonic()
            write_unflushed(uri, f"for off in range(0, {size}, {4 * MiB}):\n"
                                 f"    h.pwrite(os.urandom({4 * MiB}), off)")
            print(f"wrote {size // MiB} MiB unflushed in {time.monotonic() - t0:.1f} s",
                  file=sys.stderr)
            proxy.set(mode="blackhole")
            n = max(1, round(size // CHUNK * args.changed / 100))
            changed = sorted(random.Random(args.seed).sample(range(size // CHUNK), n))
            write_unflushed(uri, f"for c in {changed!r}:\n"
                                 f"    h.pwrite(os.urandom({CHUNK}), c * {CHUNK})")
            vg = a.json("lsvg", "benchvg")
            assert vg["stale_pps"] == lps, f"{vg['stale_pps']} of {lps} PPs stale"
            proxy.set(mode="pass")
            a.ctl("chdev", "-l", "hdisk2", "-a", "resume=yes")
            a.ctl("varyonvg", "-n", "benchvg")  # takes hdisk2 back, no background resync
            if args.rtt or args.mbps:  # latency each way; cap in bytes/s
                proxy.set(latency_ms=args.rtt / 2, bandwidth_bps=int(args.mbps * 125_000))
            files = {"hdisk1": a.disk_path("hdisk1") + ".img",
                     "hdisk2": b.disk_path("hdisk1") + ".img"}
            r = syncvg(a, proxy, force=False)
            rows.append(("checksum (syncvg)", r))
            d = copies_digest(a, files)
            assert d[0] == d[1], "copies differ after the checksum resync"
            r = syncvg(a, proxy, force=True)
            rows.append(("plain copy (syncvg -f)", r))
            assert a.json("lsvg", "benchvg")["stale_pps"] == 0
    finally:
        for s in (a, b):
            s.stop()
    print(f"\nRemote copy of {size // MiB} MiB wholly stale ({lps} PPs of {pp // MiB} MiB), "
          f"{len(changed)} of {size // CHUNK} chunks ({args.changed:g}%) really changed; "
          f"RTT {args.rtt:g} ms, link {f'{args.mbps:g} Mbit/s' if args.mbps else 'uncapped'}\n")
    print("| resync | sent A→B | % of PV | received B→A | chunks copied | chunks skipped "
          "| seconds | target ≤ 5% |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        pct = r["up"] / size
        ok = "met" if pct <= TARGET else "missed"
        print(f"| {name} | {r['up'] / MiB:.1f} MiB | {100 * pct:.2f}% | "
              f"{r['down'] / MiB:.2f} MiB | {r['chunks_copied']} | {r['chunks_skipped']} | "
              f"{r['wall']:.1f} | {ok if name.startswith('checksum') else '—'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
