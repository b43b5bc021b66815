#!/usr/bin/env python3
"""Asynchronous vs synchronous mirroring over a slow link (issue 14), side by side with a
local-only LV, at several round-trip times through glvm-faultproxy:

    .venv/bin/python bench/async_latency.py [--rtt 10 50] [--runtime 5]

Site A has a local disk (PoolA) and an RPV client of site B's disk behind the proxy (PoolB);
``synclv`` and ``asynclv`` have one copy in each pool, ``sololv`` only the local one. The
pools are switched between runs with ``chmp -A`` / ``chmp -S``. fio (nbd engine) measures 4 KiB
random writes at QD1 (p50/p99 latency) and QD16 (IOPS), next to qemu-nbd quorum (a local file
plus an nbdkit child behind a proxy with the same latency). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import quorum_argv  # noqa: E402
from bench.sites import free_port, proxied_client, start, two_sites  # noqa: E402
from rpv.faultproxy.client import start_proxy  # noqa: E402

SIZE = "512M"
WORKLOADS = {"qd1": {"rw": "randwrite", "bs": "4k", "iodepth": 1},
             "qd16": {"rw": "randwrite", "bs": "4k", "iodepth": 16}}



def fio(uri: str, opts: dict, runtime: float, size: str = "256M") -> dict:
    argv = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
            "--output-format=json", "--time_based", f"--runtime={runtime}", "--ramp_time=1",
            "--norandommap", "--randrepeat=0", *[f"--{k}={v}" for k, v in opts.items()]]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=runtime + 120, check=True)
    w = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]["write"]
    pct = w["clat_ns"].get("percentile", {})
    return {"iops": round(w["iops"]), "p50_us": round(pct.get("50.000000", 0) / 1000),
            "p99_us": round(pct.get("99.000000", 0) / 1000)}


def qemu_quorum(stack: contextlib.ExitStack, tmp: Path, a_addr: str, b_addr: str):
    """The reference: qemu-nbd quorum of a local file and an nbdkit file at site B reached
    through a fault proxy of its own. Returns (NBD URI, the proxy's control)."""
    files = []
    for name in ("qemu-local.img", "qemu-remote.img"):
        files.append(str(tmp / name))
        with open(files[-1], "wb") as f:
            f.truncate(int(SIZE[:-1]) << 20)
    port = free_port(b_addr)
    nbdkit = subprocess.Popen(["nbdkit", "-f", "-i", b_addr, "-p", str(port), "file",
                               files[1]], stderr=subprocess.DEVNULL)
    stack.callback(nbdkit.wait)
    stack.callback(nbdkit.terminate)
    _wait(lambda: _connects(b_addr, port), "nbdkit")
    _, ctl = stack.enter_context(start_proxy("127.0.0.4:0", f"{b_addr}:{port}", source=a_addr,
                                             control=str(tmp / "qemu-proxy.sock")))
    host, pport = ctl.listen_addr()
    sock = str(tmp / "qemu.sock")
    qemu = subprocess.Popen(quorum_argv(sock, files[0], host, pport), stderr=subprocess.DEVNULL)
    stack.callback(qemu.wait)
    stack.callback(qemu.terminate)
    _wait(lambda: os.path.exists(sock), "qemu-nbd")
    return f"nbd+unix:///?socket={sock}", ctl


def _connects(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
        return True
    return False


def _wait(ready, what: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > end:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtt", type=float, nargs="+", default=[10.0, 50.0],
                    help="round-trip times to measure, ms")
    ap.add_argument("--runtime", type=float, default=5.0, help="seconds per fio run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="glvm-async-bench-"))
    a, b = two_sites(tmp)
    rows = []
    try:
        start(b, a)
        a.make_disk("hdisk1", SIZE)
        with contextlib.ExitStack() as stack:
            proxy = proxied_client(stack, a, b, tmp, SIZE, 60)
            qemu_uri, qemu_proxy = qemu_quorum(stack, tmp, a.addr, b.addr)
            a.ctl("mkvg", "-p", "PoolA", "-y", "benchvg", "hdisk1")
            a.ctl("extendvg", "-p", "PoolB", "benchvg", "hdisk2")
            a.ctl("chvg", "-Q", "n", "-M", "s", "benchvg")
            a.ctl("mklv", "-y", "mirlv", "-c", "2", "-p", "copy1=PoolA", "-p", "copy2=PoolB",
                  "benchvg", "64", "hdisk1", "hdisk2")
            # the I/O cache on a local disk of its own, as AIX advises: its group commits
            # then flush only the cache, not the data copy's dirty pages as well
            a.make_disk("hdisk4", SIZE)
            a.ctl("extendvg", "-p", "PoolA", "benchvg", "hdisk4")
            a.ctl("mklv", "-y", "aiocache", "-t", "aio_cache", "-p", "copy1=PoolA",
                  "benchvg", "16", "hdisk4")
            a.make_disk("hdisk3", SIZE)
            a.ctl("mkvg", "-y", "solovg", "hdisk3")
            a.ctl("mklv", "-y", "sololv", "solovg", "64")
            for rtt in args.rtt:
                proxy.set(latency_ms=rtt / 2)
                qemu_proxy.set(latency_ms=rtt / 2)
                for mode in ("local", "sync", "async", "qemu quorum"):
                    if mode == "async":
                        a.ctl("chmp", "-A", "-c", "aiocache", "-h", "90", "-m", "PoolB",
                              "benchvg")
                    uri = {"local": a.nbd_uri("sololv"),
                           "qemu quorum": qemu_uri}.get(mode, a.nbd_uri("mirlv"))
                    row = {"rtt_ms": rtt, "mode": mode}
                    for w, opts in WORKLOADS.items():
                        res = fio(uri, opts, args.runtime)
                        row[w] = res
                        print(f"rtt {rtt:g} ms {mode:5} {w}: {res}", file=sys.stderr)
                    if mode == "async":
                        print(f"rtt {rtt:g} ms async pool: {a.json('rpvstat', '-A')[0]}",
                              file=sys.stderr)
                        a.ctl("chmp", "-S", "-m", "PoolB", "benchvg", timeout=600)
                    rows.append(row)
            vg = a.json("lsvg", "benchvg")
            assert vg["stale_pps"] == 0, vg
    finally:
        for s in (a, b):
            s.stop()
    print("| RTT | LV | QD1 p50 µs | QD1 p99 µs | QD1 IOPS | QD16 IOPS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rtt_ms']:g} ms | {r['mode']} | {r['qd1']['p50_us']} | "
              f"{r['qd1']['p99_us']} | {r['qd1']['iops']} | {r['qd16']['iops']} |")
    print()
    for line in targets(rows):
        print(line)
    return 0


def targets(rows: list[dict]) -> list[str]:
    """Issue 14's two speed targets, from the rows of one run (informational)."""
    by = {(r["rtt_ms"], r["mode"]): r for r in rows}
    out = []
    for rtt in sorted({r["rtt_ms"] for r in rows if r["rtt_ms"] > 0}):
        a, local = by.get((rtt, "async")), by.get((rtt, "local"))
        if a and local:
            extra = (a["qd1"]["p50_us"] - local["qd1"]["p50_us"]) / 1000
            out.append(f"- {rtt:g} ms: async QD1 p50 is local-only + {extra:.2f} ms "
                       f"(target <= 1 ms): {'PASS' if extra <= 1 else 'MISS'}")
        zero = by.get((0.0, "async"))
        if a and zero and zero["qd16"]["iops"]:
            ratio = a["qd16"]["iops"] / zero["qd16"]["iops"]
            out.append(f"- {rtt:g} ms: async QD16 IOPS is {ratio:.2f}x those at 0 ms "
                       f"(target >= 0.8x): {'PASS' if ratio >= 0.8 else 'MISS'}")
    return out


if __name__ == "__main__":
    sys.exit(main())
