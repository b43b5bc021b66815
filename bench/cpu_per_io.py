#!/usr/bin/env python3
"""CPU per I/O of each rpvd, for the compiled hot path and its pure-Python twin (issue 16):

    .venv/bin/python bench/cpu_per_io.py [--runtime 8] [--sparse]

Two sites on loopback; at A an LV mirrored on a local disk and an RPV client of B's disk;
fio (nbd engine) runs 4 KiB random writes at QD16, then 4 KiB random reads at QD16, against
A's NBD export. The CPU each rpvd used (utime + stime from /proc/PID/stat) is divided by the
I/Os fio completed (after a 2 s warm-up): steadier than IOPS on a noisy machine. The run is
done with the compiled modules and with GLVM_PURE_PYTHON=1 (rpvd inherits it), ``--repeat``
times each, interleaved. Prefilled by default (the exports are written once first);
``--sparse`` measures fresh sparse files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sites import start, two_sites  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SIZE_MIB = 256


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def fio(uri: str, rw: str, runtime: float) -> int:
    argv = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--size={SIZE_MIB - 8}M",
            "--output-format=json", "--time_based", f"--runtime={runtime}",
            "--norandommap", "--randrepeat=0", f"--rw={rw}", "--bs=4k", "--iodepth=16"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=runtime + 120, check=True)
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    return job["write" if "write" in rw else "read"]["total_ios"]


def one_run(pure: bool, runtime: float, sparse: bool) -> dict:
    if pure:
        os.environ["GLVM_PURE_PYTHON"] = "1"
    else:
        os.environ.pop("GLVM_PURE_PYTHON", None)
    tmp = Path(tempfile.mkdtemp(prefix="glvm-cpu-bench-"))
    a, b = two_sites(tmp)
    try:
        start(a, b)
        a.make_disk("hdisk1", f"{SIZE_MIB + 64}M")
        pvid = b.make_disk("hdisk1", f"{SIZE_MIB + 64}M")
        b.serve(pvid, a.addr)
        a.add_client("hdisk2", pvid, b, io_timeout=30)
        a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
        pp = a.json("lsvg", "datavg")["pp_size_mb"]
        a.ctl("mklv", "-y", "datalv", "-c", "2", "datavg", str(SIZE_MIB // pp), "hdisk1", "hdisk2")
        uri = a.nbd_uri("datalv")
        if not sparse:
            subprocess.run(["nbdcopy", "--", "[", "nbdkit", "pattern",
                            f"size={(SIZE_MIB - 8) << 20}", "]", uri], check=True,
                           capture_output=True, timeout=600)
        row = {"mode": "pure" if pure else "compiled"}
        for rw in ("randwrite", "randread"):
            fio(uri, rw, 2)  # warm-up (dirty regions, caches), not counted
            before = [cpu_seconds(s.proc.pid) for s in (a, b)]
            ios = fio(uri, rw, runtime)
            after = [cpu_seconds(s.proc.pid) for s in (a, b)]
            row[rw] = {"ios": ios, "iops": round(ios / runtime),
                       "us_a": round((after[0] - before[0]) / ios * 1e6, 1),
                       "us_b": round((after[1] - before[1]) / ios * 1e6, 1)}
        return row
    finally:
        for s in (a, b):
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", type=float, default=8)
    ap.add_argument("--sparse", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each, interleaved")
    args = ap.parse_args()
    rows = [one_run(pure, args.runtime, args.sparse)
            for _ in range(args.repeat) for pure in (False, True)]
    print(f"4 KiB QD16, LV with 2 copies (local + RPV), {'sparse' if args.sparse else 'prefilled'}"
          f", {args.runtime:g} s each")
    print("| implementation | randwrite IOPS | CPU µs/write at A | at B | randread IOPS | "
          "CPU µs/read at A | goal (write at A) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        w, rd = r["randwrite"], r["randread"]
        print(f"| {r['mode']} | {w['iops']} | {w['us_a']} | {w['us_b']} | {rd['iops']} | "
              f"{rd['us_a']} | <= 15 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
