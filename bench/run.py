#!/usr/bin/env python3
"""glvm benchmark harness (issue 6): glvm against ``nbdkit file`` and ``qemu-nbd`` quorum.

    make bench                                   # everything, about 5 minutes
    .venv/bin/python bench/run.py --runtime 3    # shorter runs while iterating
    .venv/bin/python bench/run.py --profile      # py-spy on both rpvd during 4k randwrite
    .venv/bin/python bench/run.py --profile --perf   # the same with perf record -g

Every configuration runs in the same process, on sparse 1 GiB files in one temporary
directory, with ``fio --ioengine=nbd`` over unix sockets:

* ``nbdkit``  -- ``nbdkit file``: one local copy, the upper bound;
* ``qemu``    -- ``qemu-nbd`` with the quorum driver: a local raw file plus a remote NBD child
  served by ``nbdkit file`` on 127.0.0.2 over TCP;
* ``glvm1``   -- a glvm LV with one local copy (the NBD path without mirroring);
* ``glvm2``   -- a glvm LV with two copies: a local file disk on site A (127.0.0.1) and an RPV
  client disk served by site B's rpvd (127.0.0.2), exported on A's NBD socket.

It prints markdown tables and writes ``bench/results/latest.json`` (and ``latest.md``). The
exit status is non-zero only if a system failed to run or a self-check (fio verify, identical
mirror copies) failed; the issue's targets are reported PASS/MISS for information.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sites import free_port  # noqa: E402
from rpv.faultproxy.client import start_proxy  # noqa: E402
from tests.sites import Site  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
FILE_SIZE = GiB
RESYNC_BYTES = 512 * MiB
LAT_MS = 5.0  # one way, through the fault proxy: 10 ms RTT
SITE_A, SITE_B, PROXY_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
RESULTS = REPO / "bench" / "results"

SYSTEMS = {  # key -> label, in table order
    "nbdkit": "nbdkit file (1 copy)",
    "qemu": "qemu-nbd quorum (local + TCP)",
    "glvm1": "glvm 1 copy",
    "glvm2": "glvm 2 copies (local + RPV)",
}
REFS = ("nbdkit", "qemu")
GLVMS = ("glvm2", "glvm1")

# name -> fio job options, the figure reported, and whether higher is better
WORKLOADS = {
    "randwrite_4k_qd16": dict(fio={"rw": "randwrite", "bs": "4k", "iodepth": 16},
                              metric="iops", label="4 KiB random write QD16"),
    "randread_4k_qd16": dict(fio={"rw": "randread", "bs": "4k", "iodepth": 16},
                             metric="iops", label="4 KiB random read QD16"),
    "seqwrite_1m_qd8": dict(fio={"rw": "write", "bs": "1M", "iodepth": 8},
                            metric="mib_s", label="1 MiB sequential write QD8"),
    "seqread_1m_qd8": dict(fio={"rw": "read", "bs": "1M", "iodepth": 8},
                           metric="mib_s", label="1 MiB sequential read QD8"),
    "syncwrite_4k_qd1": dict(fio={"rw": "randwrite", "bs": "4k", "iodepth": 1, "fsync": 1},
                             metric="p50_us", label="4 KiB sync random write QD1 (write+flush)"),
}
LAT_WORKLOADS = {  # the write workloads again, through the 10 ms RTT proxy
    "randwrite_4k_qd1": dict(fio={"rw": "randwrite", "bs": "4k", "iodepth": 1},
                             metric="p50_us", label="4 KiB random write QD1"),
    "randwrite_4k_qd16": WORKLOADS["randwrite_4k_qd16"],
    "seqwrite_1m_qd8": WORKLOADS["seqwrite_1m_qd8"],
    "syncwrite_4k_qd1": WORKLOADS["syncwrite_4k_qd1"],
}
UNITS = {"iops": "IOPS", "mib_s": "MiB/s", "p50_us": "µs p50 / p99"}


class BenchError(RuntimeError):
    pass


def _interrupt(signum, frame):  # SIGTERM/SIGHUP behave like Ctrl-C: clean up, then exit
    raise KeyboardInterrupt


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)



def quorum_argv(sock: str, local: str, host: str, port: int) -> list[str]:
    """qemu-nbd serving on ``sock`` a quorum of a local raw file and a remote NBD child."""
    opts = ("driver=quorum,vote-threshold=1,read-pattern=fifo,"
            f"children.0.driver=raw,children.0.file.driver=file,"
            f"children.0.file.filename={local},"
            "children.1.driver=raw,children.1.file.driver=nbd,"
            "children.1.file.server.type=inet,"
            f"children.1.file.server.host={host},children.1.file.server.port={port}")
    # writeback cache (qemu-nbd's default, like nbdkit file and glvm: page cache, flush on
    # NBD FLUSH), thread-pool AIO (native AIO needs O_DIRECT), -t keeps serving between runs.
    return ["qemu-nbd", "-k", sock, "-t", "--cache=writeback", "--aio=threads",
            "--image-opts", opts]



def first_line(*argv: str) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return f"unavailable ({e})"


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    git = first_line("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "rpv", "lvm",
                            "glvmctl"], capture_output=True, text=True).stdout.strip()
    bin_dir = Path(sys.executable).parent
    return {
        "cores": os.cpu_count(), "cpu": cpu, "memory": mem,
        "kernel": platform.release(), "os": platform.platform(),
        "python": sys.version.split()[0],
        "fio": first_line("fio", "--version"),
        "nbdkit": first_line("nbdkit", "--version"),
        "qemu-nbd": first_line("qemu-nbd", "--version"),
        "nbdcopy": first_line("nbdcopy", "--version"),
        "rpvd": first_line(str(bin_dir / "rpvd"), "--version"),
        "glvm_commit": git + ("-dirty" if dirty else ""),
        "hot_path": ("pure Python (GLVM_PURE_PYTHON=1)"
                     if os.environ.get("GLVM_PURE_PYTHON") == "1" else "compiled"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def fio_summary(job: dict) -> dict:
    """The figures we report from one fio JSON job (group_reporting)."""
    out: dict = {}
    for ddir in ("read", "write"):
        d = job[ddir]
        if not d.get("total_ios"):
            continue
        pct = d.get("clat_ns", {}).get("percentile", {})
        out.update({
            "iops": round(d["iops"], 1),
            "mib_s": round(d["bw_bytes"] / MiB, 1),
            "p50_us": round(pct.get("50.000000", 0) / 1000, 1),
            "p99_us": round(pct.get("99.000000", 0) / 1000, 1),
            "mean_us": round(d["clat_ns"]["mean"] / 1000, 1),
            "ios": d["total_ios"],
        })
    sync = job.get("sync", {})
    if sync.get("total_ios"):
        pct = sync.get("lat_ns", {}).get("percentile", {})
        out.update({"flush_p50_us": round(pct.get("50.000000", 0) / 1000, 1),
                    "flush_p99_us": round(pct.get("99.000000", 0) / 1000, 1),
                    "flushes": sync["total_ios"]})
    if not out:
        raise BenchError("fio reported no completed I/O")
    return out


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="glvm-bench-", dir=args.tmpdir))
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.sites: list[Site] = []
        self.stack = contextlib.ExitStack()
        self.errors: list[dict] = []
        self.uris: dict[str, str] = {}
        self.commands: dict[str, object] = {}
        self.workloads: dict[str, dict] = {}
        self.latency: dict[str, dict] = {}
        self.extra: dict[str, object] = {}
        self.fio_size = FILE_SIZE

    # -- processes ---------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        logf = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        finally:
            logf.close()
        self.procs.append((name, p))
        return p

    def proc_log(self, name: str) -> str:
        p = self.tmp / f"{name}.log"
        return p.read_text(errors="replace")[-2000:] if p.exists() else ""

    def wait_listening(self, name: str, p: subprocess.Popen, *, unix: str | None = None,
                       tcp: tuple[str, int] | None = None, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise BenchError(f"{name} exited {p.returncode}: {self.proc_log(name)}")
            fam = socket.AF_UNIX if unix else socket.AF_INET
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                try:
                    s.connect(unix if unix else tcp)
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise BenchError(f"{name} not listening after {timeout} s: {self.proc_log(name)}")

    def stop(self, name: str) -> None:
        for n, p in list(self.procs):
            if n == name:
                self._terminate(p)
                self.procs.remove((n, p))

    @staticmethod
    def _terminate(p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def cleanup(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # finish cleaning up
            signal.signal(sig, signal.SIG_IGN)
        t0 = time.monotonic()
        with contextlib.suppress(Exception):
            self.stack.close()
        for _, p in reversed(self.procs):
            with contextlib.suppress(Exception):
                self._terminate(p)
        self.procs.clear()
        # SIGKILL: the files are thrown away, and a graceful stop after heavy writes waits for
        # the disks to be flushed (over 10 s seen)
        for s in reversed(self.sites):
            with contextlib.suppress(Exception):
                s.kill()
        t1 = time.monotonic()
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        log(f"cleaned up in {time.monotonic() - t0:.1f} s (processes {t1 - t0:.1f} s)")

    def error(self, what: str, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {e}"
        log(f"FAILED {what}: {msg}")
        if self.args.verbose:
            traceback.print_exc()
        self.errors.append({"what": what, "error": msg[-4000:]})

    # -- fio ---------------------------------------------------------------------------------
    def fio(self, uri: str, name: str, opts: dict, *, runtime: float | None = None,
            size: int | None = None, extra: tuple[str, ...] = ()) -> dict:
        argv = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}",
                f"--size={size or self.fio_size}", "--output-format=json", "--group_reporting"]
        argv += [f"--{k}={v}" for k, v in opts.items()]
        if runtime:
            argv += ["--time_based", f"--runtime={runtime}", f"--ramp_time={self.args.ramp}"]
        if opts.get("rw", "").startswith("rand") and "--verify=crc32c" not in extra:
            argv += ["--norandommap", "--randrepeat=0"]
        argv += list(extra)
        timeout = (runtime or 0) + self.args.ramp + 120
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise BenchError(f"fio {name} exited {r.returncode}: {r.stderr.strip()[-1500:]}"
                             f"{r.stdout.strip()[-500:]}")
        text = r.stdout[r.stdout.index("{"):]  # fio may print notes before the JSON
        job = json.loads(text)["jobs"][0]
        if job.get("error"):
            raise BenchError(f"fio {name}: job error {job['error']}")
        return job

    # -- set-up: references ------------------------------------------------------------------
    def sparse(self, name: str, size: int = FILE_SIZE) -> str:
        path = self.tmp / name
        with open(path, "wb") as f:
            f.truncate(size)
        return str(path)

    def nbdkit_unix(self, name: str, file: str) -> str:
        sock = str(self.tmp / f"{name}.sock")
        argv = ["nbdkit", "-f", "--exit-with-parent", "-U", sock, "file", file]
        self.commands[name] = argv
        self.wait_listening(name, self.spawn(name, argv), unix=sock)
        return sock

    def nbdkit_tcp(self, name: str, host: str, file: str) -> int:
        port = free_port(host)
        argv = ["nbdkit", "-f", "--exit-with-parent", "-i", host, "-p", str(port), "file", file]
        self.commands[name] = argv
        self.wait_listening(name, self.spawn(name, argv), tcp=(host, port))
        return port

    def qemu_quorum(self, name: str, local: str, host: str, port: int) -> str:
        sock = str(self.tmp / f"{name}.sock")
        argv = quorum_argv(sock, local, host, port)
        self.commands[name] = argv
        self.wait_listening(name, self.spawn(name, argv), unix=sock)
        return sock

    def setup_refs(self) -> None:
        sock = self.nbdkit_unix("nbdkit", self.sparse("nbdkit.img"))
        self.uris["nbdkit"] = f"nbd+unix:///?socket={sock}"
        self.qemu_local = self.sparse("qemu-local.img")
        self.qemu_remote_port = self.nbdkit_tcp("qemu-remote-nbdkit", SITE_B,
                                                self.sparse("qemu-remote.img"))
        sock = self.qemu_quorum("qemu", self.qemu_local, SITE_B, self.qemu_remote_port)
        self.uris["qemu"] = f"nbd+unix:///?socket={sock}"

    # -- set-up: glvm ------------------------------------------------------------------------
    def setup_glvm(self) -> None:
        self.b = Site("Poughkeepsie", SITE_B, self.tmp / "siteB", node="nodeB",
                      port=free_port(SITE_B))
        self.a = Site("Philadelphia", SITE_A, self.tmp / "siteA", node="nodeA",
                      port=free_port(SITE_A))
        for s in (self.b, self.a):
            self.sites.append(s)
            s.start()
            s.ctl("rpvserver", "site", s.name)
        a, b = self.a, self.b
        size = f"{FILE_SIZE // MiB}M"
        a.make_disk("hdisk1", size)
        pvid = b.make_disk("hdisk1", size)
        b.serve(pvid, a.addr)
        a.add_client("hdisk2", pvid, b, io_timeout=60)
        a.make_disk("hdisk3", size)
        self.files = {"hdisk1": a.disk_path("hdisk1") + ".img",
                      "hdisk2": b.disk_path("hdisk1") + ".img"}
        # the 2-copy LV: mkvg on the local disk, extendvg with the RPV disk, a 2-copy LV over
        # both (strict: one copy per PV), quorum off, varied off and on. mklv -c 2 instead of
        # mklv + mirrorvg (tests/test_lvm.py) only skips mirrorvg's initial 1 GiB sync, which
        # the prefill overwrites anyway; the steady state is the same.
        a.ctl("mkvg", "-y", "benchvg", "hdisk1")
        a.ctl("extendvg", "benchvg", "hdisk2")
        lps = a.json("lsvg", "benchvg")["free_pps"] // 2
        a.ctl("mklv", "-y", "mirlv", "-c", "2", "benchvg", str(lps))
        a.ctl("chvg", "-Q", "n", "benchvg")
        a.ctl("varyoffvg", "benchvg")
        a.ctl("varyonvg", "benchvg")
        vg = a.json("lsvg", "benchvg")
        if vg["quorum"] or vg["stale_pps"]:
            raise BenchError(f"benchvg not as expected: {vg}")
        a.ctl("mkvg", "-y", "solovg", "hdisk3")
        a.ctl("mklv", "-y", "sololv", "solovg", str(a.json("lsvg", "solovg")["free_pps"]))
        self.uris["glvm2"] = a.nbd_uri("mirlv")
        self.uris["glvm1"] = a.nbd_uri("sololv")
        self.lv_bytes = min(lps * vg["pp_size_mb"] * MiB,
                            a.json("lslv", "sololv")["lps"] * vg["pp_size_mb"] * MiB)
        self.fio_size = min(FILE_SIZE, self.lv_bytes)
        self.commands["glvm"] = {
            "rpvd": [f"rpvd --state-dir {s.state_dir} --listen {s.addr}:{s.port} "
                     f"--node {s.node} --ready-fd N" for s in (a, b)],
            "lv": "site A: hdisk1 (file, 1 GiB) + hdisk2 (RPV client of site B's hdisk1, "
                  "1 GiB file); mkvg -y benchvg hdisk1; extendvg benchvg hdisk2; "
                  f"mklv -y mirlv -c 2 benchvg {lps}; chvg -Q n benchvg; "
                  "varyoffvg benchvg; varyonvg benchvg; "
                  "1 copy: mkvg -y solovg hdisk3; mklv -y sololv solovg N",
            "uri": self.uris["glvm2"],
        }

    # -- measurements ------------------------------------------------------------------------
    def varyon_1tib(self) -> None:
        a = self.a
        for n in ("hdisk4", "hdisk5"):
            a.make_disk(n, "1T")
        a.ctl("mkvg", "-y", "hugevg", "hdisk4", "hdisk5")
        a.ctl("mklv", "-y", "hugelv", "-c", "2", "hugevg", "60000")
        runs = []
        for _ in range(3):
            a.ctl("varyoffvg", "hugevg")
            t0 = time.monotonic()
            a.ctl("varyonvg", "hugevg")
            t1 = time.monotonic()
            vg = a.json("lsvg", "hugevg")
            t2 = time.monotonic()
            runs.append({"varyonvg_s": round(t1 - t0, 3), "lsvg_s": round(t2 - t1, 3),
                         "total_s": round(t2 - t0, 3)})
        a.ctl("varyoffvg", "hugevg")
        self.extra["varyon_1tib"] = {
            "pvs": "2 x 1 TiB sparse file disks, hugelv 60000 LPs x 2 copies",
            "pp_size_mb": vg["pp_size_mb"], "total_pps": vg["total_pps"], "runs": runs,
            "median_total_s": statistics.median(r["total_s"] for r in runs),
            "note": "wall time of the two glvmctl commands, CLI start-up included"}

    def prefill(self) -> None:
        for key in SYSTEMS:
            if key not in self.uris:
                continue
            t0 = time.monotonic()
            try:
                self.fio(self.uris[key], f"prefill-{key}",
                         {"rw": "write", "bs": "1M", "iodepth": 8})
                log(f"prefill {key}: {time.monotonic() - t0:.1f} s")
            except Exception as e:  # noqa: BLE001
                self.error(f"prefill {key}", e)
                self.uris.pop(key)

    def run_workloads(self) -> None:
        for wname, w in WORKLOADS.items():
            row = self.workloads.setdefault(wname, {"label": w["label"], "metric": w["metric"],
                                                    "systems": {}})
            for key in SYSTEMS:
                if key not in self.uris:
                    continue
                try:
                    res = fio_summary(self.fio(self.uris[key], f"{wname}-{key}", w["fio"],
                                               runtime=self.args.runtime))
                    row["systems"][key] = res
                    log(f"{wname} {key}: {brief(res, w['metric'])}")
                except Exception as e:  # noqa: BLE001
                    self.error(f"{wname} {key}", e)
            row["ratios"] = ratios(row["systems"], w["metric"])

    def verify(self) -> None:
        """fio verify (crc32c, read back) on the 2-copy LV; then the copies must be equal."""
        t0 = time.monotonic()
        job = self.fio(self.uris["glvm2"], "verify-glvm2",
                       {"rw": "randwrite", "bs": "4k", "iodepth": 16},
                       size=128 * MiB, extra=("--verify=crc32c", "--do_verify=1",
                                              "--verify_fatal=1", "--offset=256M",
                                              "--verify_state_save=0"))
        self.extra["verify"] = {"fio": "randwrite 4k QD16 over 128 MiB at 256 MiB, "
                                       "--verify=crc32c --do_verify=1 --verify_fatal=1",
                                "result": "pass", "written": job["write"]["io_bytes"],
                                "verified": job["read"]["io_bytes"],
                                "seconds": round(time.monotonic() - t0, 1)}
        if job["read"]["io_bytes"] < 128 * MiB:
            raise BenchError(f"fio verify read back only {job['read']['io_bytes']} bytes")
        log("verify glvm2: pass")

    def copies_equal(self) -> None:
        m = self.a.json("lslv", "-m", "mirlv")
        pp = m["pp_size_mb"] * MiB
        data_start = 8 * MiB  # lvm.layout.DATA_START
        differ = 0
        handles = {n: open(p, "rb") for n, p in self.files.items()}  # noqa: SIM115
        try:
            for row in m["map"]:
                blobs = []
                for c in row["copies"][:2]:
                    f = handles[c["pv"]]
                    f.seek(data_start + (c["pp"] - 1) * pp)
                    blobs.append(f.read(pp))
                differ += blobs[0] != blobs[1]
        finally:
            for f in handles.values():
                f.close()
        self.extra["copies_equal"] = {"lps": len(m["map"]), "lps_differing": differ}
        if differ:
            raise BenchError(f"{differ} LPs of mirlv differ between the two copies")
        log(f"mirror copies identical ({len(m['map'])} LPs)")

    def resync(self) -> None:
        a = self.a
        out: dict = {"bytes_target": RESYNC_BYTES}
        self.extra["resync"] = out
        a.ctl("chdev", "-l", "hdisk2", "-a", "server_addr=none")
        self.fio(self.uris["glvm2"], "stale-write", {"rw": "write", "bs": "1M", "iodepth": 8},
                 size=RESYNC_BYTES)
        a.ctl("chdev", "-l", "hdisk2", "-a", f"server_addr={self.b.addr}")
        a.ctl("varyonvg", "-n", "benchvg")
        out["stale_pps"] = a.json("lsvg", "benchvg")["stale_pps"]
        t0 = time.monotonic()
        lines = a.ctl("syncvg", "-v", "benchvg", "--json", timeout=600).splitlines()
        wall = time.monotonic() - t0
        res = json.loads(lines[-1])
        if res.get("failed"):
            raise BenchError(f"syncvg failed: {res}")
        if a.json("lsvg", "benchvg")["stale_pps"]:
            raise BenchError("stale partitions left after syncvg")
        out["glvm"] = {"command": "glvmctl syncvg -v benchvg --json", "bytes": res["bytes"],
                       "seconds": res["seconds"], "wall_s": round(wall, 3),
                       "mib_s": round(res["bytes"] / MiB / res["seconds"], 1)}
        log(f"resync glvm: {out['glvm']}")
        # nbdcopy between two nbdkit file exports over TCP, 127.0.0.1 -> 127.0.0.2
        src = self.tmp / "nbdcopy-src.img"
        block = bytearray(os.urandom(MiB))
        with open(src, "wb") as f:
            for i in range(RESYNC_BYTES // MiB):
                block[:8] = i.to_bytes(8, "little")
                f.write(block)
        p1 = self.nbdkit_tcp("nbdcopy-src-nbdkit", SITE_A, str(src))
        p2 = self.nbdkit_tcp("nbdcopy-dst-nbdkit", SITE_B,
                             self.sparse("nbdcopy-dst.img", RESYNC_BYTES))
        argv = ["nbdcopy", "--flush", f"nbd://{SITE_A}:{p1}", f"nbd://{SITE_B}:{p2}"]
        self.commands["nbdcopy"] = argv
        t0 = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
        secs = time.monotonic() - t0
        out["nbdcopy"] = {"command": " ".join(argv), "bytes": RESYNC_BYTES,
                          "seconds": round(secs, 3), "mib_s": round(RESYNC_BYTES / MiB / secs, 1)}
        out["ratio_glvm_to_nbdcopy"] = round(out["glvm"]["mib_s"] / out["nbdcopy"]["mib_s"], 3)
        log(f"resync nbdcopy: {out['nbdcopy']}")
        self.stop("nbdcopy-src-nbdkit")
        self.stop("nbdcopy-dst-nbdkit")

    def latency_runs(self) -> None:
        """The write workloads with 5 ms each way (10 ms RTT) through glvm-faultproxy."""
        rt = self.args.lat_runtime
        extra = ["--latency-ms", str(LAT_MS), "--log-level", "warning"]
        self.latency = {"rtt_ms": 2 * LAT_MS, "runtime_s": rt, "workloads": {}}
        lat_uris: dict[str, str] = {}
        # glvm: A's RPV client hdisk2 -> proxy on 127.0.0.3 -> B's rpvd (source 127.0.0.1)
        try:
            _, ctl = self.stack.enter_context(start_proxy(
                f"{PROXY_IP}:0", f"{self.b.addr}:{self.b.port}", source=self.a.addr,
                extra_args=extra))
            host, port = ctl.listen_addr()
            self.a.ctl("chdev", "-l", "hdisk2", "-a", f"server_addr={host}",
                       "-a", f"server_port={port}")
            lat_uris["glvm2"] = self.uris["glvm2"]
            self.commands["proxy_glvm"] = (f"glvm-faultproxy --listen {host}:{port} --target "
                                           f"{self.b.addr}:{self.b.port} --source {self.a.addr}"
                                           f" --latency-ms {LAT_MS}; chdev -l hdisk2 -a "
                                           f"server_addr={host} -a server_port={port}")
        except Exception as e:  # noqa: BLE001
            self.error("latency set-up glvm2", e)
        # qemu quorum: the remote child behind the same kind of proxy
        try:
            self.stop("qemu")
            _, ctl = self.stack.enter_context(start_proxy(
                f"{PROXY_IP}:0", f"{SITE_B}:{self.qemu_remote_port}", source=SITE_A,
                extra_args=extra))
            host, port = ctl.listen_addr()
            sock = self.qemu_quorum("qemu-lat", self.qemu_local, host, port)
            lat_uris["qemu"] = f"nbd+unix:///?socket={sock}"
            self.commands["proxy_qemu"] = (f"glvm-faultproxy --listen {host}:{port} --target "
                                           f"{SITE_B}:{self.qemu_remote_port} --latency-ms "
                                           f"{LAT_MS}")
        except Exception as e:  # noqa: BLE001
            self.error("latency set-up qemu", e)
        for wname, w in LAT_WORKLOADS.items():
            row = self.latency["workloads"].setdefault(
                wname, {"label": w["label"], "metric": w["metric"], "systems": {}})
            for key in ("qemu", "glvm2"):
                if key not in lat_uris:
                    continue
                try:
                    res = fio_summary(self.fio(lat_uris[key], f"lat-{wname}-{key}", w["fio"],
                                               runtime=rt))
                    row["systems"][key] = res
                    log(f"10ms RTT {wname} {key}: {brief(res, w['metric'])}")
                except Exception as e:  # noqa: BLE001
                    self.error(f"10ms RTT {wname} {key}", e)
            row["ratios"] = ratios(row["systems"], w["metric"], refs=("qemu",),
                                   glvms=("glvm2",))
        wl = self.latency["workloads"]
        self.latency["scaling_qd16_over_qd1"] = {
            k: round(wl["randwrite_4k_qd16"]["systems"][k]["iops"]
                     / wl["randwrite_4k_qd1"]["systems"][k]["iops"], 2)
            for k in ("qemu", "glvm2")
            if k in wl["randwrite_4k_qd16"]["systems"] and k in wl["randwrite_4k_qd1"]["systems"]}
        # back to the direct link
        with contextlib.suppress(Exception):
            self.stop("qemu-lat")
        if "glvm2" in lat_uris:
            self.a.ctl("chdev", "-l", "hdisk2", "-a", f"server_addr={self.b.addr}",
                       "-a", f"server_port={self.b.port}")
            vg = self.a.json("lsvg", "benchvg")
            if vg["stale_pps"]:
                raise BenchError(f"latency runs left {vg['stale_pps']} stale PPs")

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> int:
        started = time.monotonic()
        self.extra["load_start"] = os.getloadavg()
        steps = [("reference servers", self.setup_refs), ("glvm sites", self.setup_glvm)]
        for what, fn in steps:
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                self.error(what, e)
        log(f"set up: {sorted(self.uris)} in {time.monotonic() - started:.1f} s")
        sparse = self.args.sparse
        glvm_ok = "glvm2" in self.uris
        if glvm_ok and not sparse:
            self.try_step("varyonvg 1 TiB", self.varyon_1tib)
        if not sparse:
            self.prefill()
        self.run_workloads()
        if "glvm2" in self.uris and not sparse:
            self.try_step("fio verify glvm2", self.verify)
            self.try_step("latency runs", self.latency_runs)
            self.try_step("resync", self.resync)
            self.try_step("mirror copies equal", self.copies_equal)
        self.extra["total_seconds"] = round(time.monotonic() - started, 1)
        return self.report()

    def try_step(self, what: str, fn) -> None:
        t0 = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            self.error(what, e)
        log(f"{what}: {time.monotonic() - t0:.1f} s")

    def report(self) -> int:
        targets = evaluate_targets(self.workloads, self.latency, self.extra)
        targets16 = evaluate_targets_16(self.workloads, prefilled=not self.args.sparse)
        doc = {
            "machine": machine(),
            "config": {"file_size": FILE_SIZE, "fio_size": self.fio_size,
                       "runtime_s": self.args.runtime, "ramp_s": self.args.ramp,
                       "lat_runtime_s": self.args.lat_runtime, "systems": SYSTEMS,
                       "prefilled": not self.args.sparse,
                       "ratio": "glvm figure / reference figure (for latency, lower is "
                                "better: a ratio below 1 means glvm is faster)"},
            "commands": {k: (" ".join(v) if isinstance(v, list) else v)
                         for k, v in self.commands.items()},
            "workloads": self.workloads,
            "latency_10ms_rtt": self.latency,
            "resync": self.extra.get("resync"),
            "varyon_1tib": self.extra.get("varyon_1tib"),
            "verify": self.extra.get("verify"),
            "copies_equal": self.extra.get("copies_equal"),
            "loadavg": {"start": self.extra.get("load_start"), "end": os.getloadavg()},
            "targets": targets,
            "targets_issue16": targets16,
            "errors": self.errors,
            "total_seconds": self.extra.get("total_seconds"),
        }
        md = render(doc)
        print(md)
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = "latest-sparse" if self.args.sparse else "latest"
        (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(md + "\n")
        log(f"wrote {RESULTS / name}.json")
        if self.errors:
            log(f"{len(self.errors)} failure(s): " + "; ".join(e["what"] for e in self.errors))
            return 1
        return 0

    # -- profiling ---------------------------------------------------------------------------
    def profile(self) -> int:
        """py-spy (or ``--perf``: ``perf record -g``) on both rpvd during 4 KiB random
        writes at QD16 on glvm with 2 copies."""
        if self.args.perf:
            tool = shutil.which("perf")
            if not tool:
                raise BenchError("perf not found: apt-get install linux-perf")
        else:
            tool = shutil.which("py-spy", path=str(Path(sys.executable).parent)) \
                or shutil.which("py-spy")
            if not tool:
                raise BenchError("py-spy not found: .venv/bin/pip install py-spy")
        self.setup_glvm()
        out_dir = Path(self.args.profile_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        w = WORKLOADS["randwrite_4k_qd16"]
        dur = self.args.profile_seconds
        fio = subprocess.Popen(
            ["fio", "--name=profile", "--ioengine=nbd", f"--uri={self.uris['glvm2']}",
             f"--size={self.fio_size}", *[f"--{k}={v}" for k, v in w["fio"].items()],
             "--norandommap", "--randrepeat=0", "--time_based", f"--runtime={dur + 4}",
             "--output-format=json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.procs.append(("fio-profile", fio))
        time.sleep(2)
        outputs = {}
        samplers = {}
        for tag, site in (("A", self.a), ("B", self.b)):
            pid = str(site.proc.pid)
            if self.args.perf:
                out = outputs[tag] = out_dir / f"perf-{tag}.data"
                argv = [tool, "record", "-g", "-F", "499", "-p", pid, "-o", str(out),
                        "--", "sleep", str(dur)]
            else:
                out = outputs[tag] = out_dir / f"rpvd-{tag}.txt"
                argv = [tool, "record", "-d", str(dur), "-r", "200", "-p", pid, "--format",
                        "raw", "-o", str(out), *(["--native"] if self.args.native else [])]
            samplers[tag] = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, text=True)
        for tag, p in samplers.items():
            _, err = p.communicate(timeout=dur + 60)
            if p.returncode != 0:
                raise BenchError(f"{Path(tool).name} on site {tag} exited {p.returncode}: {err}")
        stdout, _ = fio.communicate(timeout=60)
        res = fio_summary(json.loads(stdout[stdout.index("{"):])["jobs"][0])
        how = "perf record -g" if self.args.perf else "py-spy"
        print(f"## Profile: glvm 2 copies, 4 KiB random write QD16 under {how} "
              f"({res['iops']:.0f} IOPS while sampled)\n")
        for tag, out in outputs.items():
            print(f"### site {tag} rpvd (pid {(self.a if tag == 'A' else self.b).proc.pid})\n")
            if self.args.perf:
                print(perf_summary(tool, out, self.args.profile_top))
                continue
            summary = summarize_profile(out.read_text(), self.args.profile_top)
            (out_dir / f"rpvd-{tag}-summary.md").write_text(summary)
            print(summary)
        log(f"profiles in {out_dir}")
        return 0


def perf_summary(perf: str, data: Path, top: int) -> str:
    """CPU by shared object (the interpreter, the kernel, uvloop, libc, the compiled hot
    path) and the top symbols. Python 3.11 has no perf trampolines, so Python functions all
    show as the interpreter's own symbols: py-spy (the default) names them."""
    parts = []
    for sort, n in (("dso", 8), ("dso,sym", top)):
        r = subprocess.run([perf, "report", "-i", str(data), "--stdio", "--no-children",
                            "-g", "none", "--percent-limit", "0.5", "--sort", sort],
                           capture_output=True, text=True, timeout=300)
        rows = [ln.strip() for ln in r.stdout.splitlines()
                if ln.strip() and not ln.startswith("#")][:n]
        parts.append(f"by {sort}:\n```\n" + "\n".join(rows) + "\n```\n")
    return "\n".join(parts)


_FRAME = re.compile(r"^(.*) \((.*?)(?::(\d+))?\)$")


def _split_frame(frame: str) -> tuple[str, str]:
    """``"f (file.py:12)"`` -> ``("f (file.py)", "12")``."""
    m = _FRAME.match(frame)
    return (f"{m.group(1)} ({m.group(2)})", m.group(3) or "") if m else (frame, "")


def summarize_profile(collapsed: str, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks.

    Time that py-spy (without --native) attributes to ``Runner.run (asyncio/runners.py)``
    itself is time inside uvloop's C event loop: socket syscalls, epoll, callback dispatch.
    """
    self_fn: Counter = Counter()
    self_line: dict[str, Counter] = defaultdict(Counter)
    incl: Counter = Counter()
    where: Counter = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        while frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        n = int(n)
        total += n
        where["thread pool" if any(f.startswith("_worker (") and "futures/thread.py" in f
                                   for f in frames) else "event loop thread"] += n
        fn, ln = _split_frame(frames[-1])
        self_fn[fn] += n
        self_line[fn][ln] += n
        for f in {_split_frame(f)[0] for f in frames}:
            incl[f] += n
    if not total:
        return "(no samples)\n"
    pct = lambda c: f"{100 * c / total:.1f}"  # noqa: E731
    lines = [f"{total} samples of active threads: "
             + ", ".join(f"{k} {pct(v)} %" for k, v in where.most_common()) + "\n",
             "| self % | function (file) | hottest lines (share %) |", "|---:|---|---|"]
    for f, c in self_fn.most_common(top):
        hot = ", ".join(f":{ln} ({pct(k)})" for ln, k in self_line[f].most_common(3) if ln)
        lines.append(f"| {pct(c)} | `{f}` | {hot} |")
    lines += ["", "| inclusive % | function (file) |", "|---:|---|"]
    shown = 0
    for f, c in incl.most_common():
        if c / total > 0.6 and f.split(" (")[0] in ("<module>", "main", "run", "Runner.run"):
            continue  # the entry point and the event loop: everything is under them
        lines.append(f"| {pct(c)} | `{f}` |")
        shown += 1
        if shown == top:
            break
    return "\n".join(lines) + "\n"


# -- figures, ratios, targets, tables ----------------------------------------------------------
def brief(res: dict, metric: str) -> str:
    if metric == "p50_us":
        s = f"p50 {res['p50_us']:.0f} µs p99 {res['p99_us']:.0f} µs, {res['iops']:.0f} IOPS"
        if "flush_p50_us" in res:
            s += f", flush p50 {res['flush_p50_us']:.0f} µs"
        return s
    return f"{res[metric]:.1f} {UNITS[metric]}"


def ratios(systems: dict, metric: str, refs=REFS, glvms=GLVMS) -> dict:
    out = {}
    for g in glvms:
        for r in refs:
            if g in systems and r in systems and systems[r][metric]:
                out[f"{g}/{r}"] = round(systems[g][metric] / systems[r][metric], 3)
    return out


def judge(name: str, measured, want: float, higher: bool = True,
          fmt: str = "{:.2f}x") -> dict:
    """One target's row: PASS or MISS against ``want`` (n/a when nothing was measured)."""
    if measured is None:
        status = "n/a"
    else:
        status = "PASS" if (measured >= want if higher else measured <= want) else "MISS"
    return {"target": name, "measured": measured, "threshold": want, "status": status,
            "display": "-" if measured is None else fmt.format(measured)}


def evaluate_targets(workloads: dict, latency: dict, extra: dict) -> list[dict]:
    def ratio(w: str, key: str):
        return workloads.get(w, {}).get("ratios", {}).get(key)

    lat = latency.get("workloads", {}) if latency else {}
    t = []

    def add(*args, **kwargs):
        t.append(judge(*args, **kwargs))

    add("4 KiB randwrite QD16, glvm 2 copies >= 2.0x qemu quorum",
        ratio("randwrite_4k_qd16", "glvm2/qemu"), 2.0)
    add("4 KiB randwrite QD16, glvm 2 copies >= 0.3x nbdkit",
        ratio("randwrite_4k_qd16", "glvm2/nbdkit"), 0.3)
    add("1 MiB seq write QD8, glvm 2 copies >= 1.0x qemu quorum",
        ratio("seqwrite_1m_qd8", "glvm2/qemu"), 1.0)
    add("4 KiB randread QD16, glvm 2 copies >= 0.8x nbdkit",
        ratio("randread_4k_qd16", "glvm2/nbdkit"), 0.8)
    rtt = latency.get("rtt_ms", 2 * LAT_MS) if latency else 2 * LAT_MS
    p50 = lat.get("randwrite_4k_qd1", {}).get("systems", {}).get("glvm2", {}).get("p50_us")
    add(f"{rtt:.0f} ms RTT: glvm write p50 (QD1) <= RTT + 2 ms",
        None if p50 is None else round(p50 / 1000, 2), rtt + 2, higher=False,
        fmt="{:.2f} ms")
    add(f"{rtt:.0f} ms RTT: glvm QD16 IOPS >= 8x QD1",
        (latency or {}).get("scaling_qd16_over_qd1", {}).get("glvm2"), 8.0)
    add("resync >= 0.8x nbdcopy over the same link",
        (extra.get("resync") or {}).get("ratio_glvm_to_nbdcopy"), 0.8)
    v = extra.get("varyon_1tib") or {}
    add("varyonvg + lsvg on 2 x 1 TiB PVs < 1 s", v.get("median_total_s"), 1.0, higher=False,
        fmt="{:.2f} s")
    return t


def evaluate_targets_16(workloads: dict, prefilled: bool) -> list[dict]:
    """Issue 16's targets for glvm with 2 copies: against qemu-nbd quorum and nbdkit on fresh
    sparse exports; on prefilled ones, at least par with qemu on every workload."""
    t = []

    def add(name: str, w: str, key: str, want: float, higher: bool = True):
        t.append(judge(name, workloads.get(w, {}).get("ratios", {}).get(key), want, higher))

    if prefilled:
        for w, spec in WORKLOADS.items():
            higher = spec["metric"] != "p50_us"
            add(f"{spec['label']}: glvm 2 copies {'>=' if higher else '<='} 1.0x qemu quorum",
                w, "glvm2/qemu", 1.0, higher)
        return t
    add("4 KiB randwrite QD16: glvm 2 copies >= 1.5x qemu quorum", "randwrite_4k_qd16",
        "glvm2/qemu", 1.5)
    add("4 KiB randwrite QD16: glvm 2 copies >= 0.3x nbdkit", "randwrite_4k_qd16",
        "glvm2/nbdkit", 0.3)
    add("1 MiB seq write QD8: glvm 2 copies >= 1.2x qemu quorum", "seqwrite_1m_qd8",
        "glvm2/qemu", 1.2)
    add("4 KiB randread QD16: glvm 2 copies >= 1.0x nbdkit", "randread_4k_qd16",
        "glvm2/nbdkit", 1.0)
    add("4 KiB write+flush QD1 p50: glvm 2 copies <= 1.0x qemu quorum", "syncwrite_4k_qd1",
        "glvm2/qemu", 1.0, higher=False)
    return t


def cell(res: dict | None, metric: str) -> str:
    if not res:
        return "failed"
    if metric == "p50_us":
        s = f"{res['p50_us']:.0f} / {res['p99_us']:.0f}"
        if "flush_p50_us" in res:
            s += f" (flush {res['flush_p50_us']:.0f} / {res['flush_p99_us']:.0f})"
        return s
    return f"{res[metric]:,.0f}" if metric == "iops" else f"{res[metric]:,.1f}"


def render(doc: dict) -> str:
    m = doc["machine"]
    out = [f"# glvm benchmark ({m['date']})", "",
           f"{m['cores']} cores ({m['cpu']}), {m['memory']}, kernel {m['kernel']}, "
           f"Python {m['python']}, {m['fio']}, {m['nbdkit']}, {m['qemu-nbd']}, "
           f"{m['nbdcopy']}, glvm {m['glvm_commit']}", "",
           f"fio --ioengine=nbd over unix sockets, {doc['config']['fio_size'] // MiB} MiB "
           f"region of sparse {doc['config']['file_size'] // MiB} MiB files "
           f"({'prefilled' if doc['config'].get('prefilled', True) else 'fresh: not prefilled'}), "
           f"{doc['config']['runtime_s']} s + {doc['config']['ramp_s']} s ramp per run. "
           "Ratios are glvm / reference; for latency (µs, p50 / p99) lower is better. "
           f"Load average at start {doc['loadavg']['start'][0]:.2f}, at end "
           f"{doc['loadavg']['end'][0]:.2f} (other work on the machine skews the figures).",
           ""]
    ratio_keys = [f"{g}/{r}" for g in GLVMS for r in REFS]
    out.append("| workload | unit | " + " | ".join(SYSTEMS.values()) + " | "
               + " | ".join(ratio_keys) + " |")
    out.append("|---|---|" + "---:|" * (len(SYSTEMS) + len(ratio_keys)))
    for w in doc["workloads"].values():
        cells = [cell(w["systems"].get(k), w["metric"]) for k in SYSTEMS]
        rs = [f"{w['ratios'][k]:.2f}" if k in w["ratios"] else "-" for k in ratio_keys]
        out.append(f"| {w['label']} | {UNITS[w['metric']]} | " + " | ".join(cells) + " | "
                   + " | ".join(rs) + " |")
    if not doc["config"].get("prefilled", True):
        out += ["", "On fresh sparse files the sequential writes are time-based, so each system "
                "leaves as much of its file unwritten as it was slow; the sequential reads "
                "after them read those holes, which the kernel zero-fills into the page cache "
                "(on the development VM about 100-140 MiB/s, `dd` included). That row "
                "measures how much of each file the earlier runs wrote, not the read path."]
    lat = doc["latency_10ms_rtt"]
    if lat:
        out += ["", f"## Through glvm-faultproxy: {LAT_MS:g} ms each way, "
                    f"RTT {lat['rtt_ms']:g} ms ({lat['runtime_s']} s per run)", "",
                "| workload | unit | qemu-nbd quorum (remote child via proxy) | "
                "glvm 2 copies (RPV via proxy) | glvm2/qemu |", "|---|---|---:|---:|---:|"]
        for w in lat["workloads"].values():
            r = w["ratios"].get("glvm2/qemu")
            out.append(f"| {w['label']} | {UNITS[w['metric']]} | "
                       f"{cell(w['systems'].get('qemu'), w['metric'])} | "
                       f"{cell(w['systems'].get('glvm2'), w['metric'])} | "
                       f"{'-' if r is None else f'{r:.2f}'} |")
        for key in ("randwrite_4k_qd1", "syncwrite_4k_qd1"):
            w = lat["workloads"].get(key, {}).get("systems", {})
            out.append(f"| {LAT_WORKLOADS[key]['label']} | IOPS | "
                       + " | ".join(f"{w[k]['iops']:,.0f}" if k in w else "failed"
                                    for k in ("qemu", "glvm2")) + " | |")
        sc = lat.get("scaling_qd16_over_qd1", {})
        out.append("| QD16 / QD1 IOPS (4 KiB random write) | x | "
                   + " | ".join(f"{sc[k]:.1f}" if k in sc else "-" for k in ("qemu", "glvm2"))
                   + " | |")
    rs = doc.get("resync")
    if rs and "nbdcopy" in rs:
        out += ["", f"## Resync of {rs['bytes_target'] // MiB} MiB "
                    f"({rs['stale_pps']} stale PPs)", "",
                "| copier | bytes | seconds | MiB/s |", "|---|---:|---:|---:|",
                f"| glvm syncvg (127.0.0.1 -> 127.0.0.2, RPV) | {rs['glvm']['bytes']:,} | "
                f"{rs['glvm']['seconds']:.2f} | {rs['glvm']['mib_s']:.1f} |",
                f"| nbdcopy nbdkit -> nbdkit (TCP 127.0.0.1 -> 127.0.0.2) | "
                f"{rs['nbdcopy']['bytes']:,} | {rs['nbdcopy']['seconds']:.2f} | "
                f"{rs['nbdcopy']['mib_s']:.1f} |",
                f"| glvm / nbdcopy | | | {rs['ratio_glvm_to_nbdcopy']:.2f} |"]
    v = doc.get("varyon_1tib")
    if v:
        out += ["", "## varyonvg + lsvg, 2 x 1 TiB sparse PVs (60000 LPs x 2 copies)", "",
                "| run | varyonvg s | lsvg s | total s |", "|---|---:|---:|---:|"]
        out += [f"| {i + 1} | {r['varyonvg_s']:.3f} | {r['lsvg_s']:.3f} | {r['total_s']:.3f} |"
                for i, r in enumerate(v["runs"])]
    out += ["", "## Targets (issue 6; informational)", "",
            "| target | measured | status |", "|---|---:|---|"]
    out += [f"| {t['target']} | {t['display']} | {t['status']} |" for t in doc["targets"]]
    kind = "prefilled exports" if doc["config"].get("prefilled", True) else "fresh sparse exports"
    out += ["", f"## Targets (issue 16, {kind}; hot path: {doc['machine'].get('hot_path', '?')})",
            "", "| target | measured | status |", "|---|---:|---|"]
    out += [f"| {t['target']} | {t['display']} | {t['status']} |"
            for t in doc.get("targets_issue16", [])]
    checks = []
    if doc.get("verify"):
        checks.append(f"fio verify (crc32c) on glvm 2 copies: {doc['verify']['result']}")
    if doc.get("copies_equal"):
        c = doc["copies_equal"]
        checks.append(f"mirror copies identical after all runs: "
                      f"{c['lps'] - c['lps_differing']}/{c['lps']} LPs")
    out += ["", "## Self-checks", ""] + [f"- {c}" for c in checks]
    if doc["errors"]:
        out += [f"- FAILED {e['what']}: {e['error'][:300]}" for e in doc["errors"]]
    out += ["", f"Total {doc['total_seconds']} s."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", type=float, default=8, help="seconds per fio run (8)")
    ap.add_argument("--ramp", type=float, default=1, help="fio ramp_time seconds (1)")
    ap.add_argument("--lat-runtime", type=float, default=6,
                    help="seconds per fio run through the latency proxy (6)")
    ap.add_argument("--tmpdir", help="where to make the temporary directory (default $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--sparse", action="store_true",
                    help="fresh sparse exports (no prefill), the local workloads only: where "
                         "per-request CPU shows (writes latest-sparse.json/.md)")
    ap.add_argument("--verbose", "-v", action="store_true", help="tracebacks on failures")
    ap.add_argument("--profile", action="store_true",
                    help="only profile glvm 2 copies under 4k randwrite QD16 with py-spy")
    ap.add_argument("--profile-dir", default=str(RESULTS / "profile"))
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--profile-top", type=int, default=15)
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--perf", action="store_true",
                    help="with --profile: perf record -g instead of py-spy")
    args = ap.parse_args(argv)
    for tool in ("fio", "nbdkit", "qemu-nbd", "nbdcopy"):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (apt-get install fio nbdkit qemu-utils "
                  "libnbd-bin)", file=sys.stderr)
            return 2
    # Ctrl-C, kill and a closed terminal all stop the run and clean up (SIGINT is set
    # explicitly: a shell starting us in the background would have it ignored)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    bench = Bench(args)
    try:
        return bench.profile() if args.profile else bench.run()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
