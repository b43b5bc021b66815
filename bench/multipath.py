#!/usr/bin/env python3
"""Several networks per RPV client (issue 15): how much faster a bulk copy to a remote disk
goes over two links than over one, each link a fault proxy capped at the same bandwidth:

    .venv/bin/python bench/multipath.py [--mbit 100] [--mib 48]

Site A's RPV client of a disk at site B reaches it through the proxy on 127.0.0.3 (one path)
or through those on 127.0.0.3 and 127.0.0.4 (two paths, requests spread over both); nbdcopy
writes the same random data to an LV mirrored on a local disk and that client both times.
Goal: two paths carry at least 1.8x what one does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sites import start, two_sites  # noqa: E402
from rpv.faultproxy.client import start_proxy  # noqa: E402

PROXIES = ("127.0.0.3", "127.0.0.4")


def one_run(paths: int, mbit: int, mib: int, latency_ms: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="glvm-multipath-bench-"))
    a, b = two_sites(tmp, same_port=True)
    port = b.port
    src = tmp / "data.bin"
    src.write_bytes(os.urandom(mib << 20))
    try:
        start(b, a)
        pvid = b.make_disk("hdisk1", f"{mib + 64}M")
        b.serve(pvid, a.addr)
        with contextlib.ExitStack() as stack:
            for n, host in enumerate(PROXIES[:paths]):
                _, proxy = stack.enter_context(start_proxy(
                    f"{host}:{port}", f"{b.addr}:{port}", source=a.addr,
                    control=str(tmp / f"proxy{n}.sock")))
                proxy.set(bandwidth_bps=mbit * 1_000_000 // 8, latency_ms=latency_ms / 2)
            a.make_disk("hdisk1", f"{mib + 64}M")
            a.ctl("mkdev", "-c", "disk", "-t", "rpvclient", "-a", f"pvid={pvid}",
                  "-a", "server_addr=" + ",".join(PROXIES[:paths]), "-a", f"server_port={port}",
                  "-a", "local_addr=" + ",".join([a.addr] * paths), "-a", "io_timeout=60",
                  "-l", "hdisk2")
            a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
            pp_mib = a.json("lsvg", "datavg")["pp_size_mb"]
            a.ctl("mklv", "-y", "datalv", "-c", "2", "datavg", str(mib // pp_mib - 1),
                  "hdisk1", "hdisk2")
            uri = a.nbd_uri("datalv")
            subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0 0 64k", uri],
                           check=True, capture_output=True, timeout=120)  # sessions open
            size = (mib // pp_mib - 1) * pp_mib << 20
            with open(src, "r+b") as f:
                f.truncate(size)
            t0 = time.monotonic()
            subprocess.run(["nbdcopy", "--requests=16", str(src), uri], check=True,
                           capture_output=True, timeout=600)
            seconds = time.monotonic() - t0
            rows = a.json("rpvstat", "-N")
            return {"paths": paths, "seconds": seconds, "mb_s": size / seconds / 1e6,
                    "per_path": [r.get("kb_written", 0) // 1024 for r in rows]}
    finally:
        for s in (a, b):
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbit", type=int, default=100, help="each link's bandwidth, Mbit/s")
    ap.add_argument("--mib", type=int, default=48, help="data copied, MiB")
    ap.add_argument("--rtt", type=float, default=2.0, help="each link's round trip, ms")
    args = ap.parse_args()
    rows = [one_run(n, args.mbit, args.mib, args.rtt) for n in (1, 2)]
    print(f"nbdcopy of {args.mib} MiB to an RPV client, each link {args.mbit} Mbit/s, "
          f"{args.rtt:g} ms RTT")
    print("| paths | seconds | MB/s | MiB per path | ratio | goal |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["mb_s"] / rows[0]["mb_s"]
        print(f"| {r['paths']} | {r['seconds']:.2f} | {r['mb_s']:.1f} | {r['per_path']} | "
              f"{ratio:.2f}x | {'>= 1.80x' if r['paths'] == 2 else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
