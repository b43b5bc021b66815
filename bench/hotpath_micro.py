#!/usr/bin/env python3
"""Per-event CPU of the decoders with a compiled twin (issue 16), in one process, for the
compiled modules and the pure-Python references side by side:

    .venv/bin/python bench/hotpath_micro.py

* NBD: a batch of 16 WRITE requests of 4 KiB decoded by ``rpv.nbd.protocol`` (site A);
* RPV at the client: 16 successful WRITE replies turned into events (site A);
* RPV at the server: 16 WRITE requests of 4 KiB turned into events (site B);
* the headers of 16 WRITE requests (site A) and of their replies (site B) built;
* the logical volume's inline write path (``lvm.inline``) for 16 writes of 4 KiB to a
  2-copy LV (site A): the checks, the remote copy submitted, the local copy written, both
  answered (the disks are in memory and do nothing, so this is the LV's own cost);
* the LV's inline read path for 16 adjacent reads of 4 KiB from a file in the page cache,
  one ``pread`` each (``read_inline``) and as one batch in one ``preadv``
  (``read_inline_many``, what the NBD server does with reads parsed together).

Each figure is the best of 5 rounds, in µs per request; the whole per-write cost at A is
about 40-100 µs on this machine (bench/cpu_per_io.py), so this shows what the compiled part
saves of it, not the whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROUND = r'''
import struct, sys, time
from rpv import protocol as pc, speedups
from rpv.nbd import protocol as nbd
from rpv.protocol import Opcode

def best(fn, n=2000):
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n / 16 * 1e6)
    return min(times)

class Disk:
    size = 1 << 30
    name = "d"

def nbd_round():
    req = b"".join(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, 1, i, i * 4096, 4096)
                   + bytes(4096) for i in range(16))
    def run():
        c = nbd.ServerConnection()
        c.state = nbd.State.TRANSMISSION
        c.size = 1 << 30
        c.receive_data(req)
        while c.next_event() is not nbd.NEED_DATA:
            pass
    return run

def client_round():
    def run():
        c = pc.Connection(pc.Role.CLIENT)
        c._state = pc.connection.State.READY
        for i in range(16):
            c._outstanding[i] = (Opcode.WRITE, 4096)
        c.receive_data(data)
        while c.next_event() is not pc.NEED_DATA:
            pass
    data = b"".join(struct.pack(">IBBHQII", pc.MAGIC, pc.VERSION, 4, 1, i, 0, 0)
                    for i in range(16))
    return run

def server_round():
    data = b"".join(struct.pack(">IBBHQIQII", pc.MAGIC, pc.VERSION, 4, 0, i, 4096,
                                i * 4096, 4096, 1000) + bytes(4096) for i in range(16))
    def run():
        c = pc.Connection(pc.Role.SERVER, max_outstanding=64)
        c._state = pc.connection.State.READY
        c.receive_data(data)
        while c.next_event() is not pc.NEED_DATA:
            pass
    return run

def send_round():
    payload = bytes(4096)
    def run():
        c = pc.Connection(pc.Role.CLIENT, max_outstanding=64)
        c._state = pc.connection.State.READY
        for i in range(16):
            c.send_write(i, i * 4096, payload, 1000)
    return run

def reply_round():
    def run():
        c = pc.Connection(pc.Role.SERVER, max_outstanding=64)
        c._state = pc.connection.State.READY
        for i in range(16):
            c._outstanding[i] = (Opcode.WRITE, 4096)
        for i in range(16):
            c.send_reply(i, Opcode.WRITE)
    return run

def lv_round():
    from tests.helpers.mirror_lv import make_lv

    class Local:
        name = "hdisk1"
        def write_now(self, pos, data): pass
        def writev_now(self, pos, bufs): pass

    class Remote:
        name = "hdisk2"
        def __init__(self): self.callbacks = []
        def accepts(self, n): return True
        def submit_write_cb(self, pos, data, fua, cb): self.callbacks.append(cb); return True

    remote = Remote()
    lv = make_lv(Local(), remote)
    data, done = bytes(4096), lambda exc, kept=False: None
    def run():
        for i in range(16):
            lv.write_inline(i * 65536, data, False, done)
        lv._inline.write_queued()
        callbacks, remote.callbacks = remote.callbacks, []
        for cb in callbacks:
            cb(None)
        lv.vg.unflushed.clear()  # as a flush would
    return run

def lv_read_round(batched):
    import tempfile
    from rpv.blockdev import FileDisk
    from tests.helpers.mirror_lv import make_lv

    class Remote:
        name = "hdisk2"

    f = tempfile.NamedTemporaryFile()
    f.write(bytes(16 << 20))  # a prefilled file, in the page cache
    f.flush()
    local = FileDisk("hdisk1", f.name)
    lv = make_lv(local, Remote())
    reqs = [(i * 4096, 4096) for i in range(16)]  # a sequential stream
    if batched:
        return lambda: lv.read_inline_many(reqs)
    return lambda: [lv.read_inline(o, n) for o, n in reqs]

async def lv_best():
    return best(lv_round())

import asyncio
import lvm.vg
print(speedups.summary())
for name, make in (("nbd", nbd_round), ("client", client_round), ("server", server_round),
                   ("send", send_round), ("reply", reply_round)):
    print(name, round(best(make()), 2))
print("lv", round(asyncio.run(lv_best()), 2))
print("lv_read1", round(best(lv_read_round(False)), 2))
print("lv_readv", round(best(lv_read_round(True)), 2))
'''


def measure(pure: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("GLVM_PURE_PYTHON", None)
    if pure:
        env["GLVM_PURE_PYTHON"] = "1"
    out = subprocess.run([sys.executable, "-c", ROUND], capture_output=True, text=True,
                         env=env, check=True).stdout.splitlines()
    return {"chosen": out[0], **{k: float(v) for k, v in (line.split() for line in out[1:])}}


def main() -> int:
    rows = {"compiled": measure(False), "pure": measure(True)}
    print("| per request | compiled µs | pure µs | saved |")
    print("|---|---|---|---|")
    for key, label in (("nbd", "NBD WRITE request 4 KiB decoded (site A)"),
                       ("send", "RPV WRITE request encoded (site A)"),
                       ("client", "RPV WRITE reply decoded (site A)"),
                       ("server", "RPV WRITE request 4 KiB decoded (site B)"),
                       ("reply", "RPV WRITE reply encoded (site B)"),
                       ("lv", "LV inline write, 2 copies (site A)"),
                       ("lv_read1", "LV inline read 4 KiB, 16 adjacent, a pread each (A)"),
                       ("lv_readv", "LV inline read 4 KiB, 16 adjacent, one preadv (A)")):
        c, p = rows["compiled"][key], rows["pure"][key]
        print(f"| {label} | {c:.2f} | {p:.2f} | {p - c:.2f} ({(p - c) / p:.0%}) |")
    print(f"({rows['compiled']['chosen']} / {rows['pure']['chosen']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
