#!/usr/bin/env python3
"""One outage, detected once (issue 15): how long the first write of a link outage takes
with several RPV PVs behind the same blackholed link:

    .venv/bin/python bench/outage_detect.py [--pvs 2 4] [--io-timeout 3]

Site A has one local disk and N RPV clients of site B's disks, all through one fault proxy;
an LV is mirrored on the local disk and the first remote PV (the others hold the VG's
metadata copies, as remote PVs do). The link is blackholed and one 64 KiB write is timed
with qemu-io. Target: io_timeout + 1 s whatever N (before: one io_timeout per PV).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sites import start, two_sites  # noqa: E402
from rpv.faultproxy.client import start_proxy  # noqa: E402


def qemu_write(uri: str, pattern: int, offset: int) -> str:
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern} {offset} 64k", uri],
                       capture_output=True, text=True, timeout=300)
    return r.stdout + r.stderr


def one_run(n: int, io_timeout: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="glvm-outage-bench-"))
    a, b = two_sites(tmp, same_port=True)
    port = b.port
    try:
        start(b, a)
        a.make_disk("hdisk1", "64M")
        pvids = [b.make_disk(f"hdisk{i + 1}", "64M") for i in range(n)]
        for p in pvids:
            b.serve(p, a.addr)
        with start_proxy(f"127.0.0.3:{port}", f"{b.addr}:{port}", source=a.addr,
                         control=str(tmp / "proxy.sock")) as (_, proxy):
            clients = [f"hdisk{i + 2}" for i in range(n)]
            for name, p in zip(clients, pvids, strict=True):
                a.add_client(name, p, b, io_timeout=io_timeout, server_addr="127.0.0.3")
            a.ctl("mkvg", "-y", "datavg", "hdisk1", *clients)
            a.ctl("mklv", "-y", "datalv", "-c", "2", "datavg", "4", "hdisk1", clients[0])
            a.ctl("chvg", "-Q", "n", "datavg")
            a.ctl("varyoffvg", "datavg")
            a.ctl("varyonvg", "datavg")
            uri = a.nbd_uri("datalv")
            qemu_write(uri, 1, 0)
            proxy.set(mode="blackhole")
            t0 = time.monotonic()
            out = qemu_write(uri, 2, 0)
            elapsed = time.monotonic() - t0
            events = a.log_events()
            return {"pvs": n, "io_timeout": io_timeout, "seconds": round(elapsed, 2),
                    "eio": "Input/output error" in out,
                    "timeouts": sum(e["event"] == "rpvc_io_timeout" for e in events),
                    "path_checks": sum(e["event"] == "rpvc_path_check_failed"
                                       for e in events)}
    finally:
        for s in (a, b):
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pvs", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--io-timeout", type=int, default=3)
    args = ap.parse_args()
    rows = [one_run(n, args.io_timeout) for n in args.pvs]
    print("| RPV PVs behind the link | io_timeout | first write s | goal s | "
          "timed out | failed by path check | EIO |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pvs']} | {r['io_timeout']} | {r['seconds']} | <= {r['io_timeout'] + 1} "
              f"| {r['timeouts']} | {r['path_checks']} | {'yes' if r['eio'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
