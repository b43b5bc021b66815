#!/usr/bin/env python3
"""A resync that is gentle on the WAN (issue 15): the application's QD1 write latency while
a background resync runs over a 10 ms, 100 Mbit/s link, against the same without a resync,
and how fast the resync still progresses:

    .venv/bin/python bench/resync_impact.py [--rtt 10] [--mbit 100] [--stale-mb 512]

Site A mirrors an LV on a local disk and an RPV client of site B's disk, the link through the
fault proxy. With the link blackholed, --stale-mb of new data is written at A (B's copy goes
stale); the link comes back, varyonvg starts the background resync, and fio (nbd engine)
measures 4 KiB random writes at QD1 meanwhile. Targets: p50 during the resync <= 1.5x the p50
without one, and the resync at least at its floor rate (lsvg's resync_floor_mb).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sites import free_port  # noqa: E402
from rpv.faultproxy.client import start_proxy  # noqa: E402
from tests.sites import Site, start_together  # noqa: E402

MiB = 1 << 20



def fio_qd1(uri: str, runtime: float, offset_mb: int) -> dict:
    argv = ["fio", "--name=app", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
            "--bs=4k", "--iodepth=1", f"--offset={offset_mb}M", "--size=64M",
            "--time_based", f"--runtime={runtime}", "--norandommap", "--randrepeat=0",
            "--output-format=json"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=runtime + 120, check=True)
    w = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]["write"]
    pct = w["clat_ns"]["percentile"]
    return {"iops": round(w["iops"]), "p50_ms": round(pct["50.000000"] / 1e6, 2),
            "p99_ms": round(pct["99.000000"] / 1e6, 2)}


def stale_pps(a: Site) -> int:
    return a.json("lsvg", "datavg")["stale_pps"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtt", type=float, default=10.0, help="round trip, ms")
    ap.add_argument("--mbit", type=float, default=100.0, help="link bandwidth, Mbit/s")
    ap.add_argument("--stale-mb", type=int, default=512, help="data the resync must copy")
    ap.add_argument("--runtime", type=float, default=8.0, help="seconds per fio run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="glvm-resync-bench-"))
    port = free_port("127.0.0.2")
    b = Site("Poughkeepsie", "127.0.0.2", tmp / "b", node="nodeB", port=port)
    a = Site("Philadelphia", "127.0.0.1", tmp / "a", node="nodeA", port=port)
    size_mb = args.stale_mb + 256
    try:
        start_together(a, b)
        for s in (a, b):
            s.ctl("rpvserver", "site", s.name)
        a.make_disk("hdisk1", f"{size_mb}M")
        pvid = b.make_disk("hdisk1", f"{size_mb}M")
        b.serve(pvid, a.addr)
        with start_proxy(f"127.0.0.3:{port}", f"{b.addr}:{port}", source=a.addr,
                         control=str(tmp / "proxy.sock")) as (_, proxy):
            a.add_client("hdisk2", pvid, b, io_timeout=3, server_addr="127.0.0.3")
            a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
            lps = (size_mb - 64) // 4
            a.ctl("mklv", "-y", "datalv", "-c", "2", "datavg", str(lps), "hdisk1", "hdisk2")
            a.ctl("chvg", "-Q", "n", "datavg")
            a.ctl("varyoffvg", "datavg")
            a.ctl("varyonvg", "datavg")
            proxy.set(latency_ms=args.rtt / 2, bandwidth_bps=int(args.mbit * 1e6 / 8))
            uri = a.nbd_uri("datalv")
            quiet = fio_qd1(uri, args.runtime, 0)
            print(f"no resync: {quiet}", file=sys.stderr)
            proxy.set(mode="blackhole")
            subprocess.run(["nbdcopy", "--", "[", "nbdkit", "random",
                            f"size={args.stale_mb}M", "]", uri], check=True, timeout=600)
            pps = stale_pps(a)
            proxy.set(mode="pass")
            a.ctl("chdev", "-l", "hdisk2", "-a", "resume=yes")
            a.ctl("varyonvg", "datavg")  # starts the background resync
            t0, before = time.monotonic(), stale_pps(a)
            busy = fio_qd1(uri, args.runtime, args.stale_mb)
            t1, after = time.monotonic(), stale_pps(a)
            print(f"during the resync: {busy}", file=sys.stderr)
            vg = a.json("lsvg", "datavg")
            rate = (before - after) * vg["pp_size_mb"] / (t1 - t0)
            floor = vg.get("resync_floor_mb", 0)
            while stale_pps(a):
                time.sleep(0.5)
    finally:
        for s in (a, b):
            s.stop()
    print("| link | stale PPs | QD1 p50 ms, no resync | QD1 p50 ms, during resync | ratio "
          "(goal <= 1.5) | resync MB/s meanwhile | floor MB/s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.rtt:g} ms, {args.mbit:g} Mbit/s | {pps} | {quiet['p50_ms']} | "
          f"{busy['p50_ms']} | {busy['p50_ms'] / quiet['p50_ms']:.2f} | {rate:.1f} | {floor} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
