#!/usr/bin/env python3
"""CPU per I/O of each rpvd, for the compiled hot path and its pure-Python twin (issue 16):

    .venv/bin/python bench/cpu_per_io.py [--runtime 8] [--sparse]

Two sites on loopback; at A an LV mirrored on a local disk and an RPV client of B's disk;
fio (nbd engine) runs 4 KiB random writes at QD16, then 4 KiB random reads and 4 KiB
sequential reads (whose adjacent requests leave in one ``preadv``) at QD16, against A's NBD
export. The CPU each rpvd used (utime + stime from /proc/PID/stat) is divided by the
I/Os fio completed (after a 2 s warm-up): steadier than IOPS on a noisy machine. The run is
done with the compiled modules and with GLVM_PURE_PYTHON=1 (rpvd inherits it), ``--repeat``
times each, interleaved. Prefilled by default (the exports are written once first);
``--sparse`` measures fresh sparse files. The reference tools are measured the same way in
the same run: ``nbdkit file`` (one local copy) and qemu-nbd quorum (a local file plus an NBD
child over TCP, served by nbdkit at B), their CPU taken from the same /proc fields.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import SITE_B, quorum_argv  # noqa: E402
from bench.sites import free_port, start, two_sites  # noqa: E402

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


def measure(mode: str, uri: str, pid_a: int, pid_b: int | None, runtime: float,
            sparse: bool) -> dict:
    """fio randwrite then randread at ``uri``; the CPU of the processes at A and B per I/O."""
    if not sparse:
        subprocess.run(["nbdcopy", "--", "[", "nbdkit", "pattern",
                        f"size={(SIZE_MIB - 8) << 20}", "]", uri], check=True,
                       capture_output=True, timeout=600)
    pids = [pid for pid in (pid_a, pid_b) if pid is not None]
    row = {"mode": mode}
    for rw in ("randwrite", "randread", "read"):
        fio(uri, rw, 2)  # warm-up (dirty regions, caches), not counted
        before = [cpu_seconds(pid) for pid in pids]
        ios = fio(uri, rw, runtime)
        used = [cpu_seconds(pid) - t for pid, t in zip(pids, before, strict=True)] + [None]
        row[rw] = {"ios": ios, "iops": round(ios / runtime),
                   "us_a": round(used[0] / ios * 1e6, 1),
                   "us_b": "" if used[1] is None else round(used[1] / ios * 1e6, 1)}
    return row


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
        return measure("pure" if pure else "compiled", a.nbd_uri("datalv"), a.proc.pid,
                       b.proc.pid, runtime, sparse)
    finally:
        for s in (a, b):
            s.stop()


def _serving(proc: subprocess.Popen, uri: str) -> None:
    """Wait (bounded) until ``uri`` answers, or fail if ``proc`` exited."""
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}")
        if subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode == 0:
            return
        time.sleep(0.05)  # a server's start-up has no event to await from here
    raise RuntimeError(f"{uri} not answering")


def reference_run(runtime: float, sparse: bool) -> list[dict]:
    """CPU per I/O of ``nbdkit file`` and of qemu-nbd quorum (A) with its nbdkit child (B)."""
    tmp = Path(tempfile.mkdtemp(prefix="glvm-cpu-bench-ref-"))
    procs: list[subprocess.Popen] = []

    def spawn(argv: list[str]) -> subprocess.Popen:
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        return procs[-1]

    def image(name: str) -> str:
        path = tmp / name
        with open(path, "wb") as f:
            f.truncate((SIZE_MIB + 64) << 20)
        return str(path)
    try:
        sock = str(tmp / "nbdkit.sock")
        nbdkit = spawn(["nbdkit", "-f", "-U", sock, "file", image("nbdkit.img")])
        port = free_port(SITE_B)
        child = spawn(["nbdkit", "-f", "-i", SITE_B, "-p", str(port), "file",
                       image("remote.img")])
        _serving(child, f"nbd://{SITE_B}:{port}")
        qsock = str(tmp / "qemu.sock")
        qemu = spawn(quorum_argv(qsock, image("local.img"), SITE_B, port))
        rows = []
        for mode, uri, a, b in (("nbdkit file (1 copy)", f"nbd+unix:///?socket={sock}",
                                 nbdkit, None),
                                ("qemu-nbd quorum (B: nbdkit)", f"nbd+unix:///?socket={qsock}",
                                 qemu, child)):
            _serving(a, uri)
            rows.append(measure(mode, uri, a.pid, b.pid if b else None, runtime, sparse))
        return rows
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", type=float, default=8)
    ap.add_argument("--sparse", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each, interleaved")
    args = ap.parse_args()
    rows = [one_run(pure, args.runtime, args.sparse)
            for _ in range(args.repeat) for pure in (False, True)]
    rows += reference_run(args.runtime, args.sparse)
    print(f"4 KiB QD16, LV with 2 copies (local + RPV), {'sparse' if args.sparse else 'prefilled'}"
          f", {args.runtime:g} s each")
    print("| implementation | randwrite IOPS | CPU µs/write at A | at B | randread IOPS | "
          "CPU µs/read at A | seq read IOPS | CPU µs/seq read at A | goal (write at A) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        w, rd, sq = r["randwrite"], r["randread"], r["read"]
        goal = "<= 15" if r["mode"] in ("compiled", "pure") else ""
        print(f"| {r['mode']} | {w['iops']} | {w['us_a']} | {w['us_b']} | {rd['iops']} | "
              f"{rd['us_a']} | {sq['iops']} | {sq['us_a']} | {goal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
