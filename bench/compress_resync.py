#!/usr/bin/env python3
"""Resync over a 100 Mbit/s link with RPV payload compression off and on (issue 15):

    .venv/bin/python bench/compress_resync.py [--source /usr/lib/python3.11] [--mb 96]

Site A has a local disk and an RPV client (hdisk2) of site B's disk reached through
glvm-faultproxy capped at ``--bandwidth`` bytes/s (default 12 500 000 = 100 Mbit/s). An LV on
the local disk holds an ext4 image made with ``mke2fs -d SOURCE`` (a source tree: typical
compressible data). For each of compress=none, zstd, lz4: the remote PPs are first filled
with random bytes (so no chunk of the remote copy matches and a checksum-skipping resync must
still copy everything), ``mirrorvg -s`` adds the stale remote copy, and ``syncvg -l`` is
timed. Bytes through the proxy and rpvstat's before/after-compression counters are printed
with a markdown table and the speed-up against compress=none (goal: >= 2x for zstd).
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

from bench.sites import proxied_client, start, two_sites  # noqa: E402

GOAL = 2.0
MiB = 1 << 20



def run(*argv: str, timeout: float = 600) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=timeout)


def fs_image(path: Path, source: str, mb: int) -> float:
    """An ext4 image of ``mb`` MiB holding ``source`` (a source tree); how full it is, %."""
    with open(path, "wb") as f:
        f.truncate(mb * MiB)
    run("mke2fs", "-q", "-F", "-t", "ext4", "-E", "root_owner=0:0", "-d", source, str(path))
    info = subprocess.run(["tune2fs", "-l", str(path)], capture_output=True, text=True,
                          check=True).stdout
    field = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in info.splitlines())}
    total, free = int(field["Block count"]), int(field["Free blocks"])
    return 100.0 * (total - free) / total


def auto_size(source: str) -> int:
    """MiB for an image of ``source`` about 80% full (a multiple of the 4 MiB PP)."""
    used = int(subprocess.run(["du", "-sk", source], capture_output=True, text=True,
                              check=True).stdout.split()[0]) * 1024
    return max(16, -(-int(used * 1.25) // (4 * MiB)) * 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=f"/usr/lib/python3.{sys.version_info.minor}",
                    help="directory tree to put in the filesystem image")
    ap.add_argument("--mb", type=int, default=0, help="LV and image size, MiB (default: "
                    "the source's size / 0.8)")
    ap.add_argument("--bandwidth", type=int, default=12_500_000, help="link cap, bytes/s")
    ap.add_argument("--codecs", nargs="+", default=["none", "zstd", "lz4"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="glvm-compress-bench-"))
    image = tmp / "fs.img"
    args.mb = args.mb or auto_size(args.source)
    full = fs_image(image, args.source, args.mb)
    noise = tmp / "noise.bin"
    noise.write_bytes(os.urandom(args.mb * MiB))
    a, b = two_sites(tmp)
    rows = []
    try:
        start(b, a)
        size = f"{args.mb * 2 + 64}M"
        a.make_disk("hdisk1", size)
        with contextlib.ExitStack() as stack:
            proxy = proxied_client(stack, a, b, tmp, size, 120)
            a.ctl("mkvg", "-s", "4", "-y", "benchvg", "hdisk1")
            a.ctl("extendvg", "benchvg", "hdisk2")
            a.ctl("chvg", "-Q", "n", "benchvg")
            lps = str(args.mb // 4)
            a.ctl("mklv", "-y", "datalv", "benchvg", lps, "hdisk1")
            run("nbdcopy", str(image), a.nbd_uri("datalv"))
            for codec in args.codecs:
                proxy.set(bandwidth_bps=0)
                a.ctl("chdev", "-l", "hdisk2", "-a", f"compress={codec}")
                # random bytes where the new copy will go: every chunk must be copied
                a.ctl("mklv", "-y", "junklv", "benchvg", lps, "hdisk2")
                run("nbdcopy", str(noise), a.nbd_uri("junklv"))
                a.ctl("rmlv", "-f", "junklv")
                a.ctl("mirrorvg", "-s", "benchvg", "hdisk2")
                proxy.set(bandwidth_bps=args.bandwidth)
                a.ctl("rpvstat", "-R")
                before = proxy.stats()
                t0 = time.monotonic()
                a.ctl("syncvg", "-l", "datalv", timeout=3600)
                seconds = time.monotonic() - t0
                after = proxy.stats()
                st = a.json("rpvstat")[0]
                vg = a.json("lsvg", "benchvg")
                assert vg["stale_pps"] == 0, vg
                rows.append({
                    "codec": codec, "seconds": seconds,
                    "link_mb": (after["bytes_up"] + after["bytes_down"] - before["bytes_up"]
                                - before["bytes_down"]) / MiB,
                    "raw_mb": st["raw_bytes_written"] / MiB,
                    "wire_mb": st["wire_bytes_written"] / MiB,
                })
                print(f"{codec}: {rows[-1]}", file=sys.stderr)
                proxy.set(bandwidth_bps=0)
                a.ctl("unmirrorvg", "benchvg", "hdisk2")
            # the last copy made is identical to the image (read back from site A's LV)
            back = tmp / "back.img"
            run("nbdcopy", a.nbd_uri("datalv"), str(back))
            assert back.read_bytes() == image.read_bytes()
    finally:
        for s in (a, b):
            s.stop()
    base = next((r["seconds"] for r in rows if r["codec"] == "none"), None)
    print(f"Resync of a {args.mb} MiB ext4 image ({full:.0f}% used) of {args.source} over "
          f"{args.bandwidth * 8 / 1e6:g} Mbit/s")
    print()
    print("| compress | seconds | speed-up | MiB written (before → after compression) "
          "| MiB through the link | goal |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        speed = base / r["seconds"] if base else 0.0
        goal = f"≥ {GOAL:g}× — {'met' if speed >= GOAL else 'NOT met'}" \
            if r["codec"] == "zstd" else ""
        print(f"| {r['codec']} | {r['seconds']:.1f} | {speed:.2f}× | "
              f"{r['raw_mb']:.1f} → {r['wire_mb']:.1f} | {r['link_mb']:.1f} | {goal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
