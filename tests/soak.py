"""Fault-injection soak: two real daemons, a mirrored LV under load, faults on a seeded schedule.

    python -m tests.soak --seed 1 --faults 200 [--duration SECONDS] [--io-timeout 2] [--keep]

Topology (the white paper's airline example, DESIGN.md §7): site A "Philadelphia" (127.0.0.1)
owns volume group datavg with two copies of datafslv, super strict: copy 1 on A's local file
disks hdisk1/hdisk2, copy 2 on RPV clients hdisk3/hdisk4 that reach site B "Poughkeepsie"
(127.0.0.2, rpvserver0/1 over its hdisk2/hdisk3) THROUGH a ``glvm-faultproxy`` on 127.0.0.3.
Quorum is off (mirrorvg, then varyoffvg/varyonvg), io_timeout is small (2 s by default).

Workload: an in-process NBD client (fixed newstyle, OPT_GO, pipelined simple replies) writes
to the LV export at random offsets and sizes (4 KiB-256 KiB, half of them in a small hot zone
so they overlap), with FLUSH and FUA, and reads ranges back to check them as it goes. Every
4 KiB block of every write is unique: a header (magic, seed, sequence number, block index)
and SHAKE-128 bytes derived from it, so any block read back names the write it came from.
A write counts as acknowledged only when its NBD reply arrived without error. The model keeps,
per block, the set of contents it may hold: exactly the last acknowledged write, plus every
later write whose outcome is unknown (error reply, connection lost at a kill) -- those may or
may not have landed. Overlapping requests are never in flight together (a range lock in the
client, as a filesystem would do), so "last acknowledged" is well defined.

Each round: let the workload run, inject one fault, wait for it to be detected (the daemon's
JSON log, the workload's failed I/O), let writes go on past it, check what ``lsvg``/``lspv``/
``errpt`` say while it lasts, repair it as an administrator would, then check:

1. every acknowledged write reads back through NBD at the site that serves the VG (before the
   resync too: reads must never return stale data);
2. after ``syncvg -v datavg`` both copies are byte-identical (read from the backing files);
3. ``lsvg`` shows no stale partitions and all PVs active; ``errpt`` has the labels that fit
   what happened (RPVC_IO_TIMEOUT for a silent link or server, LVM_SA_PVMISS/LVM_SA_STALEPP
   when a copy missed writes, LVM_MISSPVRET when varyonvg took the PV back, ...);
4. the fault was detected (first RPVC_IO_TIMEOUT, diverted write or failed I/O) within
   io_timeout + 1 s of its injection.

Fault kinds: blackhole, stall_up, stall_down (one-way partitions), reset (the link keeps
resetting), reset_once (one reset, the client must reconnect and re-send by itself), latency
(slow link, optional bandwidth cap), sigstop_b, kill_b (kill -9), restart_b (SIGTERM + start),
kill_a (kill -9 of the production daemon mid-write), restart_a, disk_a / disk_b (a disk file
made unwritable: every write to it fails, even through the daemon's open descriptor; repaired
after), failover (kill -9 of A or a planned varyoffvg, ``importvg -f`` / ``varyonvg -f`` at B,
production at B, then the seed's failback), and the power losses (``POWER_KINDS``): every
site's disks sit on a LazyFS mount (tests/lazyfs.py) that keeps written data in memory until
fsync; a power loss kills -9 the site's rpvd, drops that unsynced data, gives the "host" a new
boot id and restarts it. The checker knows what was promised: every acknowledged write
survives a power loss while the other site's copy was good; when A held the only good copy
(``ONLY_COPY_LOST``), every write followed by a completed FLUSH (or written with FUA)
survives.

With ``--async`` copy 2 is in an asynchronous mirror pool (README "Asynchronous mirroring"):
datavg's local PVs in PoolA, the RPV clients in PoolB, super strict pools, datafslv with
copy1=PoolA and copy2=PoolB, an ``aio_cache`` LV ``aiocache`` in PoolA (``--cache-lps``; by
default large for most seeds, small -- 2 partitions, so the high-water mark and the fallback
are reached -- when ``seed % 3 == 1``) and ``chmp -A -c aiocache -h 90 -m PoolB``. The
expectations change with the semantics (lvm/asyncmirror.py):

* a link or remote-site outage does not make writes wait for io_timeout or fail while the
  cache has room: B's copy is not marked stale (the cache holds what it misses) unless the
  pool fell back (``lvm_async_fallback``, errpt LVM_AIO_CACHE_FULL), and after the repair the
  cache drains (``lsmp -A``: active, cache empty, consistent) before the copies are compared;
* kill -9 of A loses no acknowledged write (the cache is replayed at the next varyon); a
  power loss of A may take what was not flushed (A held the only copy of what the cache had
  not sent), never what a FLUSH or FUA made durable;
* a failover after kill -9 of A finds at B a prefix of A's writes, not all of them: every
  block must hold a write of its own history (since the copies were last equal), and no
  write present at B may have been submitted after a write B lacks was acknowledged (the
  real-time order the cache keeps; "a cut in the write order"). The writes B lacks are
  counted as *at risk*, not lost; at the failback A discards them (LVM_AIO_DISCARD, whose
  byte count must cover them) and B's content is the truth from then on. A planned
  failover (varyoffvg sends the cache first) must find every write at B;
* power_a_mirrorvg (unmirrorvg/mirrorvg of the remote copy) is not run: it is about adding a
  synchronous copy, not about the asynchronous one.

The report then also says how many fallbacks happened, how many writes were at risk at the
failovers, the highest cache fill ``lsmp -A`` showed and the slowest write while the remote
site was out.

The schedule (kinds and their parameters) is derived from ``--seed`` only; the first faults
are a seeded permutation of every kind, so short runs cover as many kinds as they can. The
workload's exact interleaving depends on timing and is not part of the replay.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import itertools
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from glvmctl.client import call
from rpv.faultproxy.client import FaultProxyControl, start_proxy
from tests.helpers.lvmtools import diff_blocks, read_copy
from tests.sites import GLVMCTL, CommandFailed, Site

KiB, MiB = 1 << 10, 1 << 20
BLOCK = 4096
VG, LV = "datavg", "datafslv"
LPS = 10  # 40 MiB with 4 MiB partitions
DISK_SIZE = "128M"
RPV_CLIENTS = ("hdisk3", "hdisk4")
RPV_SERVERS = ("rpvserver0", "rpvserver1")
LOCAL_PVS = ("hdisk1", "hdisk2")
A_ADDR, B_ADDR, PROXY_ADDR = "127.0.0.1", "127.0.0.2", "127.0.0.3"

DETECT_SLACK = 1.0  # detection must happen within io_timeout + this
WARMUP_ACKS = 24  # acknowledged writes before each fault
AFTER_ACKS = 12  # acknowledged writes after a fault was detected (the copy misses them)
HOLD_ACKS = 24  # acknowledged writes while a transient fault (latency, ...) lasts

# events in A's log that show a fault was noticed: the deadline, a write or read that failed
# on one copy and went on with the other, a PV taken out of use
DETECT_EVENTS = ("rpvc_io_timeout", "lvm_write_failed", "lvm_read_failed", "lvm_pv_missing")

TIMEOUT_KINDS = ("blackhole", "stall_up", "stall_down", "reset", "sigstop_b", "kill_b")
DISK_KINDS = ("disk_a", "disk_b")
TRANSIENT_KINDS = ("latency", "reset_once")
A_DOWN_KINDS = ("kill_a", "restart_a")
# power losses: kill -9 of the site's rpvd, its disks' unsynced data dropped (LazyFS), a new
# boot id, a restart. power_b restarts at once (inside io_timeout), power_b_slow after the
# clients timed out; power_a_stale / power_a_resync take A while it holds the only fresh copy
# of some blocks (link down / resync running), power_b_resync takes B in the middle of a
# resync towards it, power_a_mirrorvg takes A in the middle of a mirrorvg (its metadata
# updates and the synchronisation of the new copy).
POWER_KINDS = ("power_a", "power_b", "power_b_slow", "power_a_stale", "power_a_resync",
               "power_b_resync", "power_a_mirrorvg")
# where A held the only good copy: the promise is then what a FLUSH made durable
ONLY_COPY_LOST = ("power_a_stale", "power_a_resync", "power_a_mirrorvg")
KINDS = TIMEOUT_KINDS + DISK_KINDS + TRANSIENT_KINDS + A_DOWN_KINDS + (
    "restart_b", "kill_a_resync", "failover") + POWER_KINDS
WEIGHTS = {"blackhole": 3, "stall_up": 2, "stall_down": 2, "reset": 2, "sigstop_b": 2,
           "kill_b": 3, "disk_a": 2, "disk_b": 2, "latency": 3, "reset_once": 2, "kill_a": 3,
           "restart_a": 1, "restart_b": 2, "kill_a_resync": 2, "failover": 1,
           "power_a": 3, "power_b": 3, "power_b_slow": 2, "power_a_stale": 2,
           "power_a_resync": 2, "power_b_resync": 2, "power_a_mirrorvg": 2}
# kinds where the application's I/O fails (A's daemon goes away): not an error there
IO_FAILS = A_DOWN_KINDS + ("kill_a_resync", "failover", "power_a", "power_a_stale",
                           "power_a_resync", "power_a_mirrorvg")

# --async: copy 2 in an asynchronous mirror pool with its I/O cache in PoolA
POOL_A, POOL_B, CACHE_LV = "PoolA", "PoolB", "aiocache"
CACHE_HWM = 90  # percent
ASYNC_LOCAL_DISK_SIZE = "512M"  # A's disks hold the cache too
CACHE_LPS_LARGE, CACHE_LPS_SMALL = 96, 2  # 384 MiB (~20 s of the workload), 8 MiB
ASYNC_SKIP = ("power_a_mirrorvg",)  # a synchronous copy added back: not an async fault
# known product failures with --async, left out of the default kinds (run them with --kinds):
# disk_a -- a failed local disk that holds part of the aio_cache LV leaves partitions of
# datafslv with no fresh copy at all (LVM_IO_FAIL "no readable copy", syncvg "no good copy")
ASYNC_KNOWN_BAD = ("disk_a",)
ASYNC_KINDS = tuple(k for k in KINDS if k not in ASYNC_SKIP + ASYNC_KNOWN_BAD)
DRAIN_TIMEOUT = 120.0  # the cache must be empty (and the pool active) this soon after repair


class SoakAbort(Exception):
    """The run cannot go on (a repair step failed, the workload is stuck)."""


# ---------------------------------------------------------------------------------------------
# block contents: every 4 KiB block names the write it came from

SOAK_MAGIC = b"GLVMSOAK"
HEADER = struct.Struct(">8sQQQ")  # magic, seed, write sequence number, LV block index
ZERO_BLOCK = bytes(BLOCK)


def block_content(seed: int, seq: int, blk: int) -> bytes:
    head = HEADER.pack(SOAK_MAGIC, seed, seq, blk)
    return head + hashlib.shake_128(head).digest(BLOCK - HEADER.size)


def identify(seed: int, blk: int, data: bytes) -> int | str:
    """The write sequence number a block holds (0: never written), or a description of why it
    is no write's content at that place."""
    if data == ZERO_BLOCK:
        return 0
    magic, s, seq, b = HEADER.unpack_from(data)
    if magic != SOAK_MAGIC:
        return "garbage"
    if s != seed or b != blk:
        return f"misplaced(seq {seq} of block {b})"
    if data != block_content(seed, seq, blk):
        return f"torn(seq {seq})"
    return seq


# ---------------------------------------------------------------------------------------------
# a minimal NBD client: fixed newstyle, OPT_GO, simple replies, pipelined requests

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
OPT_GO, REP_ACK, REP_INFO, INFO_EXPORT = 7, 1, 3, 0
REQUEST_MAGIC, SIMPLE_REPLY_MAGIC = 0x25609513, 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
FLAG_FUA = 1
REQ = struct.Struct(">IHHQQI")
REPLY = struct.Struct(">IIQ")


class NBDError(OSError):
    """The server answered a request with an error."""


class NBDDisconnected(ConnectionError):
    """The connection broke before the reply arrived: the request's outcome is unknown."""


class NBDClient:
    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.size = 0
        self.broken: str | None = None
        self._pending: dict[int, tuple[asyncio.Future, int, int]] = {}
        self._handles = itertools.count(1)
        self._rx: asyncio.Task | None = None

    async def connect(self, path: str, export: str, timeout: float = 10.0) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=4 * MiB), timeout)
        try:
            await asyncio.wait_for(self._handshake(export), timeout)
        except BaseException:
            self.writer.close()
            raise
        self._rx = asyncio.get_running_loop().create_task(self._receive())

    async def _handshake(self, export: str) -> None:
        r, w = self.reader, self.writer
        magic, opt_magic, flags = struct.unpack(">8sQH", await r.readexactly(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT or not flags & 1:
            raise ConnectionError(f"not a fixed-newstyle NBD server: {magic!r} {opt_magic:#x}")
        w.write(struct.pack(">I", 1 | (flags & 2)))  # FIXED_NEWSTYLE (+ NO_ZEROES if offered)
        name = export.encode()
        body = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        w.write(struct.pack(">QII", IHAVEOPT, OPT_GO, len(body)) + body)
        await w.drain()
        while True:
            magic, _, rep, length = struct.unpack(">QIII", await r.readexactly(20))
            data = await r.readexactly(length) if length else b""
            if magic != OPT_REPLY_MAGIC:
                raise ConnectionError(f"bad option reply magic {magic:#x}")
            if rep & (1 << 31):
                raise NBDError(errno.ENOENT, f"NBD_OPT_GO {export} refused ({rep:#x}): "
                                             f"{data.decode(errors='replace')}")
            if rep == REP_INFO and len(data) >= 12 and \
                    struct.unpack_from(">H", data)[0] == INFO_EXPORT:
                _, self.size, _ = struct.unpack_from(">HQH", data)
            elif rep == REP_ACK:
                return

    async def _receive(self) -> None:
        r = self.reader
        try:
            while True:
                magic, err, handle = REPLY.unpack(await r.readexactly(REPLY.size))
                if magic != SIMPLE_REPLY_MAGIC:
                    raise ConnectionError(f"bad reply magic {magic:#x}")
                fut, cmd, length = self._pending.pop(handle, (None, None, 0))
                if fut is None:
                    raise ConnectionError(f"reply for unknown handle {handle}")
                data = await r.readexactly(length) if cmd == CMD_READ and not err else None
                if fut.done():
                    continue
                if err:
                    fut.set_exception(NBDError(err, f"NBD error {errno.errorcode.get(err, err)}"))
                else:
                    fut.set_result(data)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            self._break(f"{type(e).__name__}: {e}")
        except asyncio.CancelledError:
            self._break("closed")
            raise

    def _break(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
        pending, self._pending = self._pending, {}
        for fut, _, _ in pending.values():
            if not fut.done():
                fut.set_exception(NBDDisconnected(why))
        if self.writer is not None:
            self.writer.close()

    async def _request(self, cmd: int, flags: int, offset: int, length: int,
                       payload: bytes | None = None):
        if self.broken is not None:
            raise NBDDisconnected(self.broken)
        handle = next(self._handles)
        fut = asyncio.get_running_loop().create_future()
        self._pending[handle] = (fut, cmd, length)
        head = REQ.pack(REQUEST_MAGIC, flags, cmd, handle, offset, length)
        try:
            self.writer.writelines([head, payload] if payload else [head])
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            self._break(f"{type(e).__name__}: {e}")
        return await fut

    async def read(self, offset: int, length: int) -> bytes:
        return await self._request(CMD_READ, 0, offset, length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self._request(CMD_WRITE, FLAG_FUA if fua else 0, offset, len(data), data)

    async def flush(self) -> None:
        await self._request(CMD_FLUSH, 0, 0, 0)

    async def close(self) -> None:
        if self.broken is None and self.writer is not None:
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write(REQ.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
                await self.writer.drain()
        self._break("closed")
        if self._rx is not None:
            self._rx.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._rx
        if self.writer is not None:
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()


async def read_all(path: str, size: int, chunk: int = MiB, depth: int = 8) -> bytes:
    """The whole export, read with a few requests in flight; raises on any failure."""
    c = NBDClient()
    await c.connect(path, LV)
    try:
        if c.size != size:
            raise AssertionError(f"export {LV} at {path} has {c.size} bytes, expected {size}")
        out = bytearray(size)
        offsets = iter(range(0, size, chunk))

        async def reader():
            for off in offsets:
                n = min(chunk, size - off)
                out[off:off + n] = await asyncio.wait_for(c.read(off, n), 60)
        await asyncio.gather(*(reader() for _ in range(depth)))
        return bytes(out)
    finally:
        await c.close()


# ---------------------------------------------------------------------------------------------
# the model: what each block may hold

@dataclasses.dataclass
class WriteRec:
    seq: int
    offset: int
    length: int
    digest: str  # blake2b of the payload
    fua: bool
    site: str
    t_submit: float  # wall clock
    t_done: float = 0.0
    state: str = "inflight"  # inflight | acked | unknown
    error: str = ""


class Model:
    """Per 4 KiB block: the write sequence numbers whose content the block may hold.

    It also knows what a FLUSH promised: per block, the last write that a completed FLUSH
    (or FUA) made durable, and the writes after it. When a power loss may take unflushed
    writes (the host holding the only good copy lost power), :meth:`allow_unflushed_loss`
    lets each block hold any of those again, but never less than the durable one.
    """

    def __init__(self, seed: int, size: int, journal=None):
        self.seed = seed
        self.journal = journal  # a text file: one JSON line per acknowledged write
        self.nblocks = size // BLOCK
        self.possible: list[frozenset[int]] = [frozenset({0})] * self.nblocks
        self.durable: list[int] = [0] * self.nblocks
        self.after: list[tuple[int, ...]] = [()] * self.nblocks  # since the durable one
        self.writes: dict[int, WriteRec] = {}
        self._seq = itertools.count(1)
        self._unflushed: list[WriteRec] = []  # acknowledged since the last FLUSH was sent
        self.lock = threading.Lock()
        self.acked = self.unknown = 0
        self.last_seq = 0  # the highest sequence number handed out

    def new_write(self, offset: int, length: int, fua: bool, site: str) -> tuple[WriteRec,
                                                                                  bytes]:
        with self.lock:
            seq = next(self._seq)
            self.last_seq = seq
        first = offset // BLOCK
        data = b"".join(block_content(self.seed, seq, first + i) for i in range(length // BLOCK))
        rec = WriteRec(seq, offset, length, hashlib.blake2b(data, digest_size=16).hexdigest(),
                       fua, site, time.time())
        with self.lock:
            self.writes[seq] = rec
        return rec, data

    def _blocks(self, rec: WriteRec) -> range:
        return range(rec.offset // BLOCK, (rec.offset + rec.length) // BLOCK)

    def ack(self, rec: WriteRec) -> None:
        only = frozenset({rec.seq})
        for b in self._blocks(rec):
            self.possible[b] = only
            if rec.fua:  # durable by itself
                self.durable[b], self.after[b] = rec.seq, ()
            else:
                self.after[b] += (rec.seq,)
        if not rec.fua:
            self._unflushed.append(rec)
        with self.lock:
            rec.state, rec.t_done = "acked", time.time()
            self.acked += 1
        if self.journal is not None:
            self.journal.write(json.dumps(dataclasses.astuple(rec)[:7] + (rec.t_done,)) + "\n")

    def unknown_outcome(self, rec: WriteRec, error: str) -> None:
        for b in self._blocks(rec):
            self.possible[b] = self.possible[b] | {rec.seq}
            self.after[b] += (rec.seq,)
        with self.lock:
            rec.state, rec.t_done, rec.error = "unknown", time.time(), error
            self.unknown += 1

    def flush_started(self) -> list[WriteRec]:
        """A FLUSH is being sent: it covers the writes acknowledged so far."""
        covered, self._unflushed = self._unflushed, []
        return covered

    def flush_done(self, covered: list[WriteRec]) -> None:
        for rec in covered:
            for b in self._blocks(rec):
                if rec.seq > self.durable[b]:
                    self.durable[b] = rec.seq
                    self.after[b] = tuple(s for s in self.after[b] if s > rec.seq)

    def flush_failed(self, covered: list[WriteRec]) -> None:
        self._unflushed[:0] = covered

    def allow_unflushed_loss(self) -> int:
        """The only good copy's host lost power: unflushed writes may be gone. Returns how
        many blocks that widened. A later FLUSH cannot make those writes durable any more:
        they are dropped from what the next FLUSH covers (call this after the workload
        stopped, so a FLUSH that failed has given its writes back first)."""
        self._unflushed = []
        n = 0
        for b in range(self.nblocks):
            if self.after[b]:
                self.possible[b] = self.possible[b] | {self.durable[b], *self.after[b]}
                n += 1
        return n

    def check(self, offset: int, data: bytes) -> list[tuple[int, int | str, frozenset[int]]]:
        """(block, what it holds, what it may hold) for every block that is wrong."""
        bad = []
        first = offset // BLOCK
        for i in range(len(data) // BLOCK):
            b = first + i
            got = identify(self.seed, b, data[i * BLOCK:(i + 1) * BLOCK])
            if got not in self.possible[b]:
                bad.append((b, got, self.possible[b]))
        return bad

    def collapse(self, offset: int, data: bytes) -> None:
        """The content is settled (copies identical, or only one copy left): what was read is
        now the only thing each block may hold."""
        first = offset // BLOCK
        for i in range(len(data) // BLOCK):
            got = identify(self.seed, first + i, data[i * BLOCK:(i + 1) * BLOCK])
            if isinstance(got, int):
                self.possible[first + i] = frozenset({got})

    def rebase(self, offset: int, data: bytes) -> None:
        """Another copy became the truth (a failover to a copy that lags, as an asynchronous
        one does): what was read is what each block holds from now on, durably; writes it
        lacks are forgotten, and no later FLUSH can make them durable."""
        self._unflushed = []
        first = offset // BLOCK
        for i in range(len(data) // BLOCK):
            got = identify(self.seed, first + i, data[i * BLOCK:(i + 1) * BLOCK])
            if isinstance(got, int):
                b = first + i
                self.possible[b] = frozenset({got})
                self.durable[b], self.after[b] = got, ()

    def prefix_check(self, base_seq: int, base: list[frozenset[int]], data: bytes) -> dict:
        """Is ``data`` (the whole LV, read from a copy that lags) the content after a prefix
        of the writes made since the copies were last equal (``base``: what each block held
        then; ``base_seq``: the last write issued before)?

        Per block, the writes since then that touched it are ordered (the client's range
        lock), so the block must hold one of them (or its base content): the ones after it
        are missing. The cache sends in the order the writes were made, and a write
        acknowledged before another was submitted was made before it; so no write present
        may have been submitted after a missing write was acknowledged. Writes whose outcome
        is unknown may be missing anywhere. Returns bad blocks (not in their history), the
        order violation if any, and the acknowledged writes missing ("at risk")."""
        hist: dict[int, list[WriteRec]] = collections.defaultdict(list)
        with self.lock:
            recs = sorted((r for s, r in self.writes.items() if s > base_seq
                           and r.state in ("acked", "unknown")), key=lambda r: r.seq)
        for r in recs:
            for b in self._blocks(r):
                hist[b].append(r)
        bad: list[tuple[int, int | str, list[int]]] = []
        at_risk: dict[int, WriteRec] = {}
        latest_present: WriteRec | None = None  # the present write submitted last
        first_missing: WriteRec | None = None  # the missing acknowledged write acked first
        missing = 0  # (acknowledged write, block) pairs B lacks
        for b in range(self.nblocks):
            got = identify(self.seed, b, data[b * BLOCK:(b + 1) * BLOCK])
            chain = hist.get(b, [])
            if got in base[b]:
                j = 0
            else:
                j = next((i + 1 for i, r in enumerate(chain) if r.seq == got), None)
                if j is None:
                    bad.append((b, got, sorted(base[b]) + [r.seq for r in chain]))
                    continue
                r = chain[j - 1]
                if latest_present is None or r.t_submit > latest_present.t_submit:
                    latest_present = r
            for r in chain[j:]:
                if r.state == "acked":
                    at_risk[r.seq] = r
                    missing += 1
                    if first_missing is None or r.t_done < first_missing.t_done:
                        first_missing = r
        order = None
        if latest_present is not None and first_missing is not None and \
                first_missing.t_done < latest_present.t_submit:
            order = (first_missing, latest_present)
        return {"bad": bad, "order": order, "at_risk": at_risk, "missing_blocks": missing}

    def prune(self) -> None:
        """Forget writes no block may hold any more (the journal keeps them)."""
        keep = set().union(*self.possible, self.durable, *self.after)
        with self.lock:
            self.writes = {s: r for s, r in self.writes.items() if s in keep}

    def describe(self, seq: int | str) -> str:
        if not isinstance(seq, int):
            return seq
        if seq == 0:
            return "0 (never written: zeros)"
        r = self.writes.get(seq)
        if r is None:
            return f"{seq} (unknown write)"
        return (f"{seq} ({r.state} write {r.offset}+{r.length} at {r.site}, submitted "
                f"{_iso(r.t_submit)}, done {_iso(r.t_done)}{', ' + r.error if r.error else ''})")


def _iso(t: float) -> str:
    if not t:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%H:%M:%S.%f")[:-3]


# ---------------------------------------------------------------------------------------------
# the workload: an asyncio loop in its own thread, driven by the harness

class Workload:
    REQUEST_TIMEOUT = 60.0  # a request unanswered this long is a hang, reported as such

    def __init__(self, model: Model, seed: int, size: int, depth: int = 4):
        self.model = model
        self.size = size
        self.depth = depth
        self.rng = random.Random(seed * 7919 + 1)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="soak-workload",
                                       daemon=True)
        self.cond = threading.Condition()
        self.acks = 0  # acknowledged writes, all sessions
        self.reads = self.flushes = self.fua = 0
        self.failures: list[tuple[float, str]] = []  # (wall time, what failed)
        self.read_violations: list[str] = []
        self.client: NBDClient | None = None
        self.site = ""
        self.stopping = False
        self.workers: list[asyncio.Task] = []
        self.hot = (0, 0)
        self._ranges: list[tuple[int, int]] = []
        self._range_cond: asyncio.Condition | None = None

    # -- control from the harness (main thread) -----------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def attached(self) -> bool:
        return bool(self.workers)

    def attach(self, site: Site) -> None:
        self._call(self._attach(site.nbd_socket, site.name), 30)

    def detach(self) -> None:
        """Stop issuing, let every request in flight finish (bounded), disconnect."""
        self._call(self._detach(), self.REQUEST_TIMEOUT + 30)

    def new_hot_zone(self) -> None:
        span = 2 * MiB
        start = self.rng.randrange(0, self.size - span + 1, BLOCK)
        self.hot = (start, span)

    def wait_acks(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` more writes were acknowledged; False on timeout or a failure."""
        with self.cond:
            start, fails = self.acks, len(self.failures)
            return self.cond.wait_for(
                lambda: self.acks >= start + n or len(self.failures) > fails, timeout) and \
                self.acks >= start + n

    def wait_failure(self, since: float, timeout: float) -> tuple[float, str] | None:
        with self.cond:
            self.cond.wait_for(lambda: any(t >= since for t, _ in self.failures), timeout)
            return next(((t, w) for t, w in self.failures if t >= since), None)

    def close(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                if self.attached:
                    self._call(self._detach(), 30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()

    # -- inside the loop -----------------------------------------------------------------------
    async def _attach(self, path: str, site: str) -> None:
        assert not self.workers, "already attached"
        c = NBDClient()
        await c.connect(path, LV)
        if c.size != self.size:
            await c.close()
            raise AssertionError(f"{LV} at site {site} has {c.size} bytes, not {self.size}")
        self.client, self.site, self.stopping = c, site, False
        self._range_cond = asyncio.Condition()
        self._ranges = []
        self.workers = [self.loop.create_task(self._worker(c)) for _ in range(self.depth)]

    async def _detach(self) -> None:
        self.stopping = True
        if self._range_cond is not None:
            async with self._range_cond:
                self._range_cond.notify_all()
        await asyncio.gather(*self.workers, return_exceptions=True)
        self.workers = []
        if self.client is not None:
            await self.client.close()
            self.client = None

    def _failed(self, what: str) -> None:
        self.stopping = True
        with self.cond:
            self.failures.append((time.time(), what))
            self.cond.notify_all()

    def _pick(self) -> tuple[int, int]:
        rng = self.rng
        nblk = rng.randint(1, 64) if rng.random() < 0.5 else 1 << rng.randrange(0, 7)
        length = nblk * BLOCK
        start, span = self.hot if rng.random() < 0.5 and self.hot[1] else (0, self.size)
        return start + rng.randrange(0, span - length + 1, BLOCK), length

    async def _lock(self, lo: int, hi: int) -> bool:
        async with self._range_cond:
            await self._range_cond.wait_for(
                lambda: self.stopping or all(hi <= a or lo >= b for a, b in self._ranges))
            if self.stopping:
                return False
            self._ranges.append((lo, hi))
            return True

    async def _unlock(self, lo: int, hi: int) -> None:
        async with self._range_cond:
            self._ranges.remove((lo, hi))
            self._range_cond.notify_all()

    async def _worker(self, c: NBDClient) -> None:
        rng = self.rng
        while not self.stopping:
            op = rng.random()
            if op < 0.06:
                covered = self.model.flush_started()
                try:
                    await asyncio.wait_for(c.flush(), self.REQUEST_TIMEOUT)
                except (OSError, TimeoutError) as e:
                    self.model.flush_failed(covered)
                    self._failed(f"FLUSH at {self.site}: {_what(e)}")
                    return
                self.model.flush_done(covered)
                self.flushes += 1
                continue
            offset, length = self._pick()
            if not await self._lock(offset, offset + length):
                return
            try:
                if op < 0.25:
                    await self._read(c, offset, length)
                else:
                    await self._write(c, offset, length, fua=rng.random() < 0.1)
            finally:
                await self._unlock(offset, offset + length)

    async def _write(self, c: NBDClient, offset: int, length: int, fua: bool) -> None:
        rec, data = self.model.new_write(offset, length, fua, self.site)
        try:
            await asyncio.wait_for(c.write(offset, data, fua), self.REQUEST_TIMEOUT)
        except (OSError, TimeoutError) as e:
            self.model.unknown_outcome(rec, _what(e))
            self._failed(f"WRITE {offset}+{length} (seq {rec.seq}) at {self.site}: {_what(e)}")
            return
        self.model.ack(rec)
        if fua:
            self.fua += 1
        with self.cond:
            self.acks += 1
            self.cond.notify_all()

    async def _read(self, c: NBDClient, offset: int, length: int) -> None:
        try:
            data = await asyncio.wait_for(c.read(offset, length), self.REQUEST_TIMEOUT)
        except (OSError, TimeoutError) as e:
            self._failed(f"READ {offset}+{length} at {self.site}: {_what(e)}")
            return
        self.reads += 1
        for b, got, may in self.model.check(offset, data)[:3]:
            self.read_violations.append(
                f"read at {self.site} {_iso(time.time())}: LV offset {b * BLOCK} holds "
                f"{self.model.describe(got)}; expected one of "
                f"{[self.model.describe(s) for s in sorted(may)]}")


def _what(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no reply (hung request)"
    return f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# the daemons' JSON logs, followed

class LogFollower:
    """New lines of a site's ``state/rpvd.log`` (appended across restarts), parsed, with
    their time as epoch seconds in ``_t``."""

    def __init__(self, site: Site):
        self.path = site.state_dir / "rpvd.log"
        self.offset = 0
        self.events: collections.deque[dict] = collections.deque(maxlen=50000)
        self._partial = b""

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                ev = json.loads(line)
                ev["_t"] = datetime.datetime.fromisoformat(ev["time"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            self.events.append(ev)

    def since(self, t: float, names: tuple[str, ...] | None = None) -> list[dict]:
        """Events logged at or after ``t``, oldest first (the log is in time order, so only
        its tail is looked at)."""
        self.poll()
        out = []
        for e in reversed(self.events):
            if e["_t"] < t:
                break
            if names is None or e.get("event") in names:
                out.append(e)
        out.reverse()
        return out

    def wait(self, t: float, names: tuple[str, ...], timeout: float) -> dict | None:
        """The first event named in ``names`` logged at or after ``t``; None after
        ``timeout`` seconds (bounded polls of a regular file, 20 ms apart)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.since(t, names)
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([], [], [], min(0.02, left))


def log_excerpt(follower: LogFollower, since: float, limit: int = 15) -> list[str]:
    """The round's warning/error events of a daemon, compactly."""
    out = []
    for e in follower.since(since):
        if e.get("level") in ("warning", "error") or e.get("event") in (
                "lvm_varyon", "lvm_resync_done", "lvm_drl_recovered", "rpvc_resumed"):
            extra = {k: v for k, v in e.items() if k not in ("time", "_t", "event", "level")}
            out.append(f"{e['time']} {e.get('level')} {e.get('event')} "
                       f"{json.dumps(extra, default=str)[:300]}")
    return out[-limit:]


# ---------------------------------------------------------------------------------------------
# the schedule

@dataclasses.dataclass
class Fault:
    index: int
    kind: str
    params: dict

    def label(self) -> str:
        p = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({p})" if p else self.kind


def schedule(seed: int, count: int, kinds: tuple[str, ...] = KINDS) -> list[Fault]:
    rng = random.Random(seed)
    order = list(kinds)
    rng.shuffle(order)
    pool = [k for k in kinds for _ in range(WEIGHTS[k])]
    names = order[:count] + [rng.choice(pool) for _ in range(count - len(order))]
    faults = []
    for i, kind in enumerate(names, 1):
        params: dict = {}
        if kind in ("blackhole", "stall_up", "stall_down"):
            params["silence"] = rng.choice(("drop", "drop", "hold"))
        elif kind == "latency":
            params["latency_ms"] = rng.choice((20, 50, 100, 200, 300))
            params["jitter_ms"] = rng.choice((0, 0, params["latency_ms"] // 5))
            params["bandwidth_bps"] = rng.choice((0, 0, 8 * MiB, 32 * MiB))
        elif kind == "failover":
            params["how"] = rng.choice(("kill", "planned"))
        elif kind in ("kill_a_resync", "power_a_resync", "power_b_resync",
                      "power_a_mirrorvg"):
            params["latency_ms"] = rng.choice((100, 200, 300))
        elif kind in DISK_KINDS:
            params["pick"] = rng.randrange(1 << 30)
        faults.append(Fault(i, kind, params))
    return faults


# ---------------------------------------------------------------------------------------------
# the report

@dataclasses.dataclass
class Report:
    seed: int
    io_timeout: float
    faults: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    detections: dict = dataclasses.field(default_factory=dict)  # kind -> list of seconds
    acked: int = 0
    unknown: int = 0
    reads: int = 0
    flushes: int = 0
    lost: set = dataclasses.field(default_factory=set)  # promised seqs not read back
    power_losses: int = 0
    dropped_kib: int = 0  # unsynced data the power losses dropped
    corrupt_blocks: int = 0
    diverged_blocks: int = 0
    escalated: list = dataclasses.field(default_factory=list)
    violations: list = dataclasses.field(default_factory=list)
    elapsed: float = 0.0
    aborted: str = ""
    # --async only
    async_mode: bool = False
    cache_mib: int = 0
    fallbacks: int = 0  # lvm_async_fallback events at A
    fallback_faults: list = dataclasses.field(default_factory=list)
    kill_failovers: int = 0
    at_risk: int = 0  # acknowledged writes B lacked at failovers after kill -9 of A
    at_risk_kib: int = 0
    discarded: list = dataclasses.field(default_factory=list)  # LVM_AIO_DISCARD (writes, bytes)
    max_fill: float = 0.0  # lsmp -A cache_fill_percent, highest seen
    max_pending: int = 0  # lsmp -A pending_writes, highest seen
    hwm_episodes: int = 0  # lvm_async_hwm events at A
    replayed: int = 0  # writes replayed from the cache at varyons (lvm_async_replay)
    outage_latency: float = 0.0  # slowest acknowledged write while the remote copy was out

    @property
    def worst_detection(self) -> tuple[float, str]:
        worst = (0.0, "-")
        for kind, ts in self.detections.items():
            for t in ts:
                worst = max(worst, (t, kind))
        return worst

    @property
    def ok(self) -> bool:
        return not self.violations and not self.aborted

    def summary(self) -> str:
        worst, kind = self.worst_detection
        lines = [
            f"soak: seed {self.seed}, io_timeout {self.io_timeout:g} s, "
            f"{self.elapsed:.1f} s" + (", asynchronous mirroring" if self.async_mode else ""),
            f"  faults injected        {sum(self.faults.values())}: "
            + ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())),
            f"  acknowledged writes    {self.acked} (plus {self.unknown} with unknown outcome, "
            f"{self.reads} verified reads, {self.flushes} flushes)",
            f"  power losses           {self.power_losses} of {sum(self.faults.values())} "
            f"faults ({self.dropped_kib} KiB of unsynced data dropped)",
            f"  promised writes lost   {len(self.lost)}",
            f"  corrupt blocks         {self.corrupt_blocks}",
            f"  diverged copies        {self.diverged_blocks} blocks",
        ]
        if self.async_mode:
            lines += [
                f"  async mirror pool      PoolB, cache {self.cache_mib} MiB, hwm {CACHE_HWM}%",
                f"  async fallbacks        {self.fallbacks}"
                + (f" (faults {', '.join(self.fallback_faults)})" if self.fallback_faults
                   else ""),
                f"  writes at risk         {self.at_risk} ({self.at_risk_kib} KiB) at "
                f"{self.kill_failovers} failovers after kill -9 of A; discarded at failback: "
                + (", ".join(f"{w} writes/{b // KiB} KiB" for w, b in self.discarded)
                   or "none"),
                f"  max cache fill seen    {self.max_fill:.1f}% ({self.max_pending} writes not "
                f"at remote), {self.hwm_episodes} high-water-mark episodes",
                f"  cache replayed         {self.replayed} writes at varyons after a crash",
                f"  slowest write, remote out {self.outage_latency:.2f} s (io_timeout "
                f"{self.io_timeout:g} s)",
            ]
        lines += [
            f"  worst detection        {worst:.2f} s ({kind}); bound "
            f"{self.io_timeout + DETECT_SLACK:g} s",
        ]
        for k, ts in sorted(self.detections.items()):
            lines.append(f"    {k:<12} n={len(ts):<3} max {max(ts):.2f} s  "
                         f"mean {sum(ts) / len(ts):.2f} s")
        if self.escalated:
            lines.append(f"  transient faults that escalated: {len(self.escalated)}")
            lines += [f"    {e}" for e in self.escalated]
        if self.aborted:
            lines.append(f"  ABORTED: {self.aborted}")
        if self.violations:
            lines.append(f"  VIOLATIONS: {len(self.violations)}")
            lines += ["    " + v.replace("\n", "\n      ") for v in self.violations]
        else:
            lines.append("  violations             0")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the harness

def free_port() -> int:
    """A TCP port free on all three loopback addresses (A, B, the proxy)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((B_ADDR, 0))
            port = s.getsockname()[1]
        try:
            for host in (A_ADDR, PROXY_ADDR):
                with socket.socket() as t:
                    t.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port on 127.0.0.1-3")


class Soak:
    def __init__(self, seed: int = 1, faults: int = 200, duration: float = 0.0,
                 io_timeout: float = 2.0, port: int | None = None, root: str | None = None,
                 keep: bool = False, kinds: tuple[str, ...] | None = None, out=None,
                 async_mode: bool = False, cache_lps: int | None = None):
        self.seed, self.nfaults, self.duration = seed, faults, duration
        self.async_mode = async_mode
        if kinds is None:
            kinds = ASYNC_KINDS if async_mode else KINDS
        elif async_mode and set(kinds) & set(ASYNC_SKIP):
            raise ValueError(f"not run with --async: {', '.join(ASYNC_SKIP)}")
        self.cache_lps = cache_lps or (CACHE_LPS_SMALL if seed % 3 == 1 else CACHE_LPS_LARGE)
        self.io_timeout = io_timeout
        self.port = port or int(os.environ.get("GLVM_TEST_PORT") or 0) or free_port()
        self.given_root = root
        self.keep = keep
        self.kinds = kinds
        self.out = out or sys.stdout
        self.report = Report(seed, io_timeout, async_mode=async_mode)
        self.cmdlog: list[str] = []  # commands of the current round
        # --async: the base of the prefix check (the copies were last equal after write
        # base_seq, each block then held base[b]); lsmp -A sampled in a thread
        self.base_seq = 0
        self.base: list[frozenset[int]] = []
        self._sampling = threading.Event()

    # -- output ----------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def violation(self, fault: Fault | None, step: str, expected: str, actual: str,
                  since: float | None = None) -> None:
        where = f"seed {self.seed}, fault {fault.index} {fault.label()}" if fault else \
            f"seed {self.seed}, set-up"
        lines = [f"[{where}] {step}: expected {expected}; actual {actual}"]
        if self.cmdlog:
            lines.append("commands this round: " + "; ".join(self.cmdlog[-25:]))
        if since is not None:
            for name, fol in (("A", self.log_a), ("B", self.log_b)):
                ex = log_excerpt(fol, since)
                if ex:
                    lines.append(f"{name} rpvd.log:\n" + "\n".join(ex))
        text = "\n".join(lines)
        self.report.violations.append(text)
        self.say("  VIOLATION " + lines[0])  # the details are in the summary

    # -- commands --------------------------------------------------------------------------------
    def ctl(self, site: Site, *args: str, timeout: float = 120) -> str:
        self.cmdlog.append(f"{site.name[0]}$ glvmctl {' '.join(args)}")
        try:
            return site.ctl(*args, timeout=timeout)
        except CommandFailed as e:
            self.cmdlog[-1] += " -> FAILED"
            raise SoakAbort(str(e)) from None
        except subprocess.TimeoutExpired:
            self.cmdlog[-1] += " -> TIMED OUT"
            raise SoakAbort(f"glvmctl {' '.join(args)} at {site.name} did not finish in "
                            f"{timeout} s") from None

    def json(self, site: Site, *args: str):
        return json.loads(self.ctl(site, *args, "--json"))

    def note(self, what: str) -> None:
        self.cmdlog.append(what)

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self, stack: contextlib.ExitStack) -> None:
        root = Path(self.given_root) if self.given_root else \
            Path(tempfile.mkdtemp(prefix="glvm-soak-"))
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        if not self.given_root and not self.keep:
            stack.callback(shutil.rmtree, root, True)
        # every disk on a LazyFS: a power loss drops what its host had not synced
        self.a = Site("Philadelphia", A_ADDR, root / "a", node="nodeA", port=self.port,
                      lazy=True)
        self.b = Site("Poughkeepsie", B_ADDR, root / "b", node="nodeB", port=self.port,
                      lazy=True)
        for s in (self.a, self.b):
            stack.callback(s.close)
            s.start()
            self.ctl(s, "rpvserver", "site", s.name)
        _, self.proxy = stack.enter_context(start_proxy(
            f"{PROXY_ADDR}:{self.port}", f"{B_ADDR}:{self.port}", source=A_ADDR,
            control=str(root / "proxy.sock"),
            extra_args=["--log-level", "error", "--seed", str(self.seed)]))
        self.proxy: FaultProxyControl
        self.log_a, self.log_b = LogFollower(self.a), LogFollower(self.b)
        a, b = self.a, self.b
        for n in LOCAL_PVS:
            a.make_disk(n, ASYNC_LOCAL_DISK_SIZE if self.async_mode else DISK_SIZE)
        remote = [b.make_disk(n, DISK_SIZE) for n in ("hdisk2", "hdisk3")]
        for p in remote:
            b.serve(p, A_ADDR)
        for n, p in zip(RPV_CLIENTS, remote, strict=True):
            a.add_client(n, p, b, io_timeout=int(self.io_timeout), server_addr=PROXY_ADDR)
        # A's PV -> (the site whose disk it is, the file's name on that site's LazyFS)
        self.disks = {"hdisk1": (a, "hdisk1.img"), "hdisk2": (a, "hdisk2.img"),
                      "hdisk3": (b, "hdisk2.img"), "hdisk4": (b, "hdisk3.img")}
        self.files = {pv: site.disk_path(name[:-4]) + ".img"
                      for pv, (site, name) in self.disks.items()}
        if self.async_mode:
            self.setup_async_pools()
        else:
            self.ctl(a, "mkvg", "-y", VG, *LOCAL_PVS)
            self.ctl(a, "mklv", "-y", LV, VG, str(LPS))
            self.ctl(a, "chlv", "-s", "s", "-u", "2", LV)
            self.ctl(a, "extendvg", VG, *RPV_CLIENTS)
            out = self.ctl(a, "mirrorvg", "-c", "2", VG, *RPV_CLIENTS)
            assert "Quorum requirement turned off" in out, out
            self.ctl(a, "varyoffvg", VG)
            self.ctl(a, "varyonvg", VG)
        vg = self.json(a, "lsvg", VG)
        assert (vg["quorum"], vg["quorum_active"], vg["stale_pps"]) == (False, False, 0), vg
        self.lv_map = self.json(a, "lslv", "-m", LV)
        self.size = LPS * self.lv_map["pp_size_mb"] * MiB
        journal = stack.enter_context(open(root / "acked.jsonl", "a", buffering=1 << 20))
        journal.write(json.dumps(["seq", "offset", "length", "blake2b", "fua", "site",
                                  "t_submit", "t_ack"]) + "\n")
        self.model = Model(self.seed, self.size, journal)
        self.workload = Workload(self.model, self.seed, self.size)
        stack.callback(self.workload.close)
        self.workload.start()
        self.workload.new_hot_zone()
        if self.async_mode:
            self.base = list(self.model.possible)
            sampler = threading.Thread(target=self._sample_pool, name="soak-lsmp", daemon=True)
            stack.callback(sampler.join, 5)
            stack.callback(self._sampling.set)
            sampler.start()
        self.workload.attach(a)
        self.serving = a
        self.cmdlog = []

    def setup_async_pools(self) -> None:
        """tests/test_async_link.py's async_pools(): PoolA (local) and PoolB (RPV clients),
        quorum off, super strict pools, datafslv copy1=PoolA copy2=PoolB, the aio_cache LV
        in PoolA, PoolB asynchronous."""
        a = self.a
        self.ctl(a, "mkvg", "-p", POOL_A, "-y", VG, *LOCAL_PVS)
        self.ctl(a, "extendvg", "-p", POOL_B, VG, *RPV_CLIENTS)
        self.ctl(a, "chvg", "-a", "n", "-Q", "n", VG)
        self.ctl(a, "varyoffvg", VG)
        self.ctl(a, "varyonvg", VG)  # quorum off takes effect
        self.ctl(a, "chvg", "-M", "s", VG)
        self.ctl(a, "mklv", "-y", LV, "-c", "2", "-s", "s", "-p", f"copy1={POOL_A}",
                 "-p", f"copy2={POOL_B}", VG, str(LPS))
        self.ctl(a, "mklv", "-y", CACHE_LV, "-t", "aio_cache", "-p", f"copy1={POOL_A}", VG,
                 str(self.cache_lps))
        out = self.ctl(a, "chmp", "-A", "-c", CACHE_LV, "-h", str(CACHE_HWM), "-m", POOL_B, VG)
        assert f"{POOL_B} of {VG}: async" in out, out
        pool = self.pool_state()
        assert pool["state"] == "active" and pool["cache_empty"], pool
        self.report.cache_mib = pool["cache_size"] // MiB

    # -- --async: the pool's state ---------------------------------------------------------------
    def pool_state(self, site: Site | None = None) -> dict:
        """``lsmp -A -m PoolB`` (--json): the asynchronous state of PoolB."""
        pool = self.json(site or self.a, "lsmp", "-A", "-m", POOL_B, VG)["pools"][0]
        state = pool.get("async") or {"state": "inactive"}
        self._saw(state)
        return state

    def _saw(self, state: dict) -> None:
        r = self.report
        r.max_fill = max(r.max_fill, float(state.get("cache_fill_percent") or 0.0))
        r.max_pending = max(r.max_pending, int(state.get("pending_writes") or 0))

    def _sample_pool(self) -> None:
        """lsmp -A straight through A's control socket every 0.25 s, for the highest cache
        fill (failures while A is down are expected and ignored)."""
        while not self._sampling.wait(0.25):
            try:
                r = call(self.a.socket, "lsmp", timeout=2, vg=VG, pool=POOL_B)
                state = r["pools"][0].get("async") or {}
            except Exception:  # noqa: BLE001 - A down, VG varied off, a reply in between
                continue
            self._saw(state)

    def wait_pool_drained(self, fault: Fault, since: float) -> dict | None:
        """After the repair: PoolB active, consistent, its cache empty (the sender caught up
        or the resync after a fallback finished) within DRAIN_TIMEOUT."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            st = self.pool_state()
            if st["state"] == "active" and st.get("cache_empty") and st.get("consistent"):
                return st
            if time.monotonic() > deadline:
                self.violation(fault, "lsmp -A after the repair",
                               f"PoolB active, consistent, cache empty within "
                               f"{DRAIN_TIMEOUT:g} s",
                               f"state {st['state']}, consistent {st.get('consistent')}, "
                               f"{st.get('pending_writes')} writes / "
                               f"{st.get('pending_bytes')} bytes not at remote, stale_pps "
                               f"{st.get('stale_pps')}", since=since)
                return None
            select.select([], [], [], 0.2)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> Report:
        t0 = time.monotonic()
        try:
            with contextlib.ExitStack() as stack:
                self.setup(stack)
                plan = schedule(self.seed, self.nfaults, self.kinds)
                self.say(f"soak: seed {self.seed}, {len(plan)} faults planned, port "
                         f"{self.port}, state under {self.root}")
                for fault in plan:
                    if self.duration and time.monotonic() - t0 > self.duration:
                        self.say(f"soak: duration {self.duration:g} s reached")
                        break
                    try:
                        self.round(fault)
                    except SoakAbort as e:
                        self.report.aborted = f"fault {fault.index} {fault.label()}: {e}"
                        self.violation(fault, "repair/check", "every step to succeed",
                                       str(e), since=self.round_start)
                        break
                    except (OSError, RuntimeError, TimeoutError, AssertionError) as e:
                        self.report.aborted = f"fault {fault.index} {fault.label()}: " \
                                              f"{type(e).__name__}: {e}"
                        self.violation(fault, "harness", "the round to complete",
                                       f"{type(e).__name__}: {e}", since=self.round_start)
                        break
                if not self.report.aborted and self.workload.attached:
                    self.workload.detach()
                if self.keep:
                    self.say(f"soak: state kept in {self.root}")
        finally:
            if hasattr(self, "model"):
                self.report.acked, self.report.unknown = self.model.acked, self.model.unknown
                self.report.reads = self.workload.reads
                self.report.flushes = self.workload.flushes
                for v in self.workload.read_violations:
                    self.report.violations.append(f"[seed {self.seed}] online {v}")
            self.report.elapsed = time.monotonic() - t0
        return self.report

    # -- one round -------------------------------------------------------------------------------
    round_start = 0.0

    def round(self, fault: Fault) -> None:
        self.cmdlog = []
        self.round_start = time.time()
        t_mono = time.monotonic()
        w = self.workload
        w.new_hot_zone()
        if not w.wait_acks(WARMUP_ACKS, 30):
            raise SoakAbort(f"the workload made no progress before the fault "
                            f"(failures: {w.failures[-1:]})")
        self.report.faults[fault.kind] += 1
        self.dropped = None
        info = getattr(self, f"fault_{fault.kind}")(fault)
        if self.dropped is not None:
            info["dropped"] = self.dropped
        self.check(fault, info)
        self.say(f"[{fault.index:>3}/{self.nfaults}] {fault.label():<40} "
                 f"{info.get('summary', '')} ({time.monotonic() - t_mono:.1f} s, "
                 f"{self.model.acked} acked)")

    # -- detection -------------------------------------------------------------------------------
    def detect(self, fault: Fault, t_inject: float, how: str) -> float | None:
        """Wait for the fault to be noticed; record and check the detection time."""
        bound = self.io_timeout + DETECT_SLACK
        if how == "disconnect":
            hit = self.workload.wait_failure(t_inject, bound + 10)
            t = hit[0] if hit else None
        else:
            ev = self.log_a.wait(t_inject, DETECT_EVENTS, bound + 10)
            t = ev["_t"] if ev else None
            hit = self.workload.wait_failure(t_inject, 0)
            if hit and (t is None or hit[0] < t):
                t = hit[0]
        if t is None:
            self.violation(fault, "detection", f"a failed or diverted I/O within {bound:g} s",
                           f"nothing after {bound + 10:g} s", since=t_inject)
            return None
        d = max(0.0, t - t_inject)
        self.report.detections.setdefault(fault.kind, []).append(d)
        if d > bound:
            self.violation(fault, "detection", f"within {bound:g} s of injection",
                           f"{d:.2f} s", since=t_inject)
        return d

    def errpt_since(self, site: Site, t: float) -> list[dict]:
        return [e for e in self.json(site, "errpt") if e["timestamp"] >= t - 0.001]

    def during(self, fault: Fault, t_inject: float, bad_pvs: set[str], timeout_expected: bool,
               info: dict) -> None:
        """While one copy is out: writes go on, lsvg/lspv/errpt tell the same story."""
        if self.async_mode:
            self._during_async(fault, t_inject, bad_pvs, timeout_expected, info)
            return
        if not self.workload.wait_acks(AFTER_ACKS, 4 * self.io_timeout + 20):
            self.violation(fault, "writes during the fault",
                           f"{AFTER_ACKS} more acknowledged writes on the surviving copy",
                           f"stalled or failed: {self.workload.failures[-1:]}", since=t_inject)
        vg = self.json(self.a, "lsvg", VG)
        states = {p["name"]: p["state"] for p in vg["pvs"]}
        info["stale"] = vg["stale_pps"]
        missing = {n for n, s in states.items() if s != "active"}
        if vg["state"] != "active" or vg["stale_pps"] == 0 or not missing & bad_pvs or \
                missing - bad_pvs:
            self.violation(fault, "lsvg during the fault",
                           f"VG active, stale_pps > 0, missing PVs among {sorted(bad_pvs)}",
                           f"state {vg['state']}, stale_pps {vg['stale_pps']}, PVs {states}",
                           since=t_inject)
        entries = self.errpt_since(self.a, t_inject)
        self._errpt_during(fault, t_inject, entries, {"LVM_SA_PVMISS", "LVM_SA_STALEPP"},
                           timeout_expected)
        info["pvmiss"] = sorted(missing)

    def _errpt_during(self, fault: Fault, t_inject: float, entries: list[dict], want: set,
                      timeout_expected: bool) -> None:
        """The error log since the fault has every label of ``want`` (and RPVC_IO_TIMEOUT
        exactly when a timeout is expected); the clients that timed out are failed."""
        labels = {e["label"] for e in entries}
        want = want | ({"RPVC_IO_TIMEOUT"} if timeout_expected else set())
        if not want <= labels or (not timeout_expected and "RPVC_IO_TIMEOUT" in labels):
            self.violation(fault, "errpt during the fault",
                           f"{sorted(want)}" + ("" if timeout_expected else
                                                " and no RPVC_IO_TIMEOUT"),
                           f"{sorted(labels)}", since=t_inject)
        if timeout_expected:
            self._failed_clients(fault, t_inject, entries)

    def _failed_clients(self, fault: Fault, t_inject: float, entries: list[dict]) -> None:
        # the clients that logged RPVC_IO_TIMEOUT are failed, and only those (errpt is
        # read before and after lspv: a client may time out in between)
        before = {e["resource"] for e in entries if e["label"] == "RPVC_IO_TIMEOUT"}
        failed = {p["name"] for p in self.json(self.a, "lspv") if p["state"] == "failed"}
        after = {e["resource"] for e in self.errpt_since(self.a, t_inject)
                 if e["label"] == "RPVC_IO_TIMEOUT"}
        if not failed or not before <= failed <= after:
            self.violation(fault, "lspv during the fault",
                           f"the RPV clients that logged RPVC_IO_TIMEOUT "
                           f"({sorted(after)}) in state failed",
                           f"failed: {sorted(failed)}", since=t_inject)
        first = min((e["timestamp"] for e in entries if e["label"] == "RPVC_IO_TIMEOUT"),
                    default=None)
        bound = self.io_timeout + DETECT_SLACK
        if first is not None and first - t_inject > bound:
            self.violation(fault, "errpt RPVC_IO_TIMEOUT timestamp",
                           f"within {bound:g} s of injection",
                           f"{first - t_inject:.2f} s", since=t_inject)

    def _during_async(self, fault: Fault, t_inject: float, bad_pvs: set[str],
                      timeout_expected: bool, info: dict) -> None:
        """--async: while a copy is out, writes go on at local speed. When the remote copy
        is what went out, it is not marked stale: the cache holds what it misses, unless
        the pool fell back (the cache reached its high-water mark while the remote site was
        unreachable). A local disk that fails is marked stale as in synchronous mode."""
        if not self.workload.wait_acks(AFTER_ACKS, 4 * self.io_timeout + 20):
            self.violation(fault, "writes during the fault",
                           f"{AFTER_ACKS} more acknowledged writes (cached for the remote copy)",
                           f"stalled or failed: {self.workload.failures[-1:]}", since=t_inject)
        vg = self.json(self.a, "lsvg", VG)
        entries = self.errpt_since(self.a, t_inject)
        st = self.pool_state()  # after lsvg and errpt: "active" here means it was then too
        fell = st["state"] == "fallback" or bool(
            self.log_a.since(t_inject, ("lvm_async_fallback",)))
        states = {p["name"]: p["state"] for p in vg["pvs"]}
        missing = {n for n, s in states.items() if s != "active"}
        labels = {e["label"] for e in entries}
        local = bad_pvs <= set(LOCAL_PVS)
        info.update(stale=vg["stale_pps"], pool=st["state"], fill=st.get("cache_fill_percent"))
        if vg["state"] != "active" or not missing & bad_pvs or missing - bad_pvs or \
                (local and vg["stale_pps"] == 0):
            self.violation(fault, "lsvg during the fault",
                           f"VG active, missing PVs among {sorted(bad_pvs)}"
                           + (", stale_pps > 0" if local else ""),
                           f"state {vg['state']}, stale_pps {vg['stale_pps']}, PVs {states}",
                           since=t_inject)
        if not local and not fell and (vg["stale_pps"] or "LVM_SA_STALEPP" in labels):
            self.violation(fault, "remote copy during the fault (pool active, no fallback)",
                           "cached, not stale: stale_pps 0, no LVM_SA_STALEPP",
                           f"stale_pps {vg['stale_pps']}, errpt {sorted(labels)}, lsmp -A "
                           f"{st}", since=t_inject)
        self._errpt_during(fault, t_inject, entries,
                           {"LVM_SA_PVMISS"} | ({"LVM_SA_STALEPP"} if local else set()),
                           timeout_expected)
        # writes went on at local speed: none waited for the deadline, unless the cache
        # reached its high-water mark (writes wait for room while the remote site still
        # counts as reachable, i.e. until io_timeout) or the pool fell back
        with self.model.lock:
            took = [r.t_done - r.t_submit for r in self.model.writes.values()
                    if r.state == "acked" and r.t_submit >= t_inject]
        slowest = max(took, default=0.0)
        info["slowest"] = slowest
        hwm = bool(self.log_a.since(t_inject, ("lvm_async_hwm",)))
        if not local:
            self.report.outage_latency = max(self.report.outage_latency, slowest)
            bound = max(1.0, 0.75 * self.io_timeout)
            if slowest > bound and not hwm and not fell:
                self.violation(fault, "write latency while the remote copy is out",
                               f"local speed (no write over {bound:g} s; the cache had room)",
                               f"a write took {slowest:.2f} s; lsmp -A {st}", since=t_inject)
        info["pvmiss"] = sorted(missing)

    # -- repair (the administrator) --------------------------------------------------------------
    def take_back(self) -> bool:
        """resume=yes for failed RPV clients, varyonvg if a PV is out; True if it was."""
        for p in self.json(self.a, "lspv"):
            if p["name"] in RPV_CLIENTS and p["state"] == "failed":
                self.ctl(self.a, "chdev", "-l", p["name"], "-a", "resume=yes")
        vg = self.json(self.a, "lsvg", VG)
        if any(p["state"] != "active" for p in vg["pvs"]):
            self.ctl(self.a, "varyonvg", VG)
            return True
        return False

    def restart_a_and_varyon(self) -> None:
        self.a.start()
        for c in RPV_CLIENTS:
            self.ctl(self.a, "mkdev", "-l", c)
        self.ctl(self.a, "varyonvg", VG)

    # -- fault kinds -----------------------------------------------------------------------------
    def _link_fault(self, fault: Fault, **settings) -> dict:
        t = self._inject(lambda: self.proxy.set(**settings), f"proxy {settings}")
        info = {"detect": self.detect(fault, t, "log")}
        self.during(fault, t, set(RPV_CLIENTS), True, info)
        self.proxy.clear()
        self.note("proxy clear")
        info["varyon"] = self.take_back()
        return info

    def _inject(self, action, what: str) -> float:
        """Run the fault's action; the injection time is taken just before it, so detection
        times include the action itself (conservative)."""
        t = time.time()
        self.note(f"{_iso(t)} inject: {what}")
        action()
        return t

    def fault_blackhole(self, f: Fault) -> dict:
        return self._link_fault(f, mode="blackhole", silence=f.params["silence"])

    def fault_stall_up(self, f: Fault) -> dict:
        return self._link_fault(f, mode="stall_up", silence=f.params["silence"])

    def fault_stall_down(self, f: Fault) -> dict:
        return self._link_fault(f, mode="stall_down", silence=f.params["silence"])

    def fault_reset(self, f: Fault) -> dict:
        return self._link_fault(f, mode="reset")

    def fault_sigstop_b(self, f: Fault) -> dict:
        t = self._inject(self.b.pause, "SIGSTOP B")
        try:
            info = {"detect": self.detect(f, t, "log")}
            self.during(f, t, set(RPV_CLIENTS), True, info)
        finally:
            self.b.cont()
            self.note("SIGCONT B")
        info["varyon"] = self.take_back()
        return info

    def fault_kill_b(self, f: Fault) -> dict:
        return self._b_down_then_back(f, self._inject(lambda: _kill9(self.b), "kill -9 B"))

    def _b_down_then_back(self, f: Fault, t: float) -> dict:
        """B went down at ``t`` and stays down past io_timeout: detected, checked while it
        lasts, then B starts again and A takes its PVs back."""
        info = {"detect": self.detect(f, t, "log")}
        self.during(f, t, set(RPV_CLIENTS), True, info)
        self.b.start()
        self.note("start B")
        info["varyon"] = self.take_back()
        return info

    def _disk_fault(self, f: Fault, pvs: list[str]) -> dict:
        """The disk under one PV dies: its writes and syncs fail with EIO (LazyFS ``fail``),
        even through the daemon's open descriptor; then it is repaired (``heal``)."""
        pv = pvs[f.params["pick"] % len(pvs)]
        site, name = self.disks[pv]
        t = self._inject(lambda: site.lazyfs.fail(name), f"disk {name} of {site.name} "
                                                         f"fails ({pv})")
        try:
            info = {"detect": self.detect(f, t, "log"), "pv": pv}
            self.during(f, t, {pv}, False, info)
        finally:
            site.lazyfs.heal(name)
            self.note(f"disk {name} of {site.name} repaired")
        info["varyon"] = self.take_back()
        return info

    def _data_pvs(self, copy: int) -> list[str]:
        return sorted({row["copies"][copy]["pv"] for row in self.lv_map["map"]})

    def fault_disk_a(self, f: Fault) -> dict:
        return self._disk_fault(f, self._data_pvs(0))

    def fault_disk_b(self, f: Fault) -> dict:
        return self._disk_fault(f, self._data_pvs(1))

    def _transient(self, f: Fault, t: float, info: dict) -> None:
        """A fault the product must ride through by itself: nothing detected, nothing stale."""
        escalated = []
        if not self.workload.wait_acks(HOLD_ACKS, 30):
            escalated.append(f"writes stalled or failed: {self.workload.failures[-1:]}")
        evs = self.log_a.since(t, DETECT_EVENTS)
        if evs:
            escalated.append(f"{evs[0]['event']} {evs[0].get('device', '')} at "
                             f"{evs[0]['time']}")
        info["stale"] = self.json(self.a, "lsvg", VG)["stale_pps"]
        # a server that came back as a new instance had what it did not flush marked stale
        info["restarted"] = bool(self.log_a.since(t, ("lvm_pv_server_restarted",)))
        if info["stale"] and not evs and not info["restarted"]:
            self.violation(f, "lsvg after a transient fault", "stale_pps 0 (nothing failed)",
                           f"stale_pps {info['stale']}", since=t)
        if escalated:
            self.report.escalated.append(f"fault {f.index} {f.label()}: "
                                         + "; ".join(escalated))
        info["escalated"] = bool(escalated)

    def fault_latency(self, f: Fault) -> dict:
        t = self._inject(lambda: self.proxy.set(**f.params), f"proxy {f.params}")
        info: dict = {}
        try:
            self._transient(f, t, info)
        finally:
            self.proxy.clear()
            self.note("proxy clear")
        info["varyon"] = self.take_back()
        return info

    def fault_reset_once(self, f: Fault) -> dict:
        before = self.proxy.stats()["connections_reset"]

        def reset():
            self.proxy.set(mode="reset")
            self.proxy.set(mode="pass")
        t = self._inject(reset, "proxy reset, then pass")
        info: dict = {"resets": self.proxy.stats()["connections_reset"] - before}
        self._transient(f, t, info)
        info["varyon"] = self.take_back()
        return info

    def fault_restart_b(self, f: Fault) -> dict:
        t = time.time()  # the fault starts with the stop, not when B is back
        self.note(f"{_iso(t)} inject: stop B (SIGTERM), start B")
        self.b.stop()
        self.b.start()
        info: dict = {}
        # B is back within io_timeout or not: either nothing happened, or the clients timed
        # out and the copy went stale -- and then everything must say so
        if self.log_a.since(t, ("rpvc_io_timeout",)) or \
                self.log_a.wait(t, ("rpvc_io_timeout",), self.io_timeout + DETECT_SLACK):
            info["detect"] = self.detect(f, t, "log")
            self.during(f, t, set(RPV_CLIENTS), True, info)
        else:
            self._transient(f, t, info)
        info["varyon"] = self.take_back()
        return info

    def _a_down(self, f: Fault, action, what: str) -> dict:
        t = self._inject(action, what)
        info = {"detect": self.detect(f, t, "disconnect")}
        self.workload.detach()  # its connection is gone; in-flight writes: outcome unknown
        self.restart_a_and_varyon()
        info["drl"] = sum(e.get("regions", 0) for e in self.log_a.since(
            t, ("lvm_drl_recovered",)))
        return info

    def fault_kill_a(self, f: Fault) -> dict:
        return self._a_down(f, lambda: _kill9(self.a), "kill -9 A")

    def fault_restart_a(self, f: Fault) -> dict:
        return self._a_down(f, self.a.stop, "stop A (SIGTERM)")

    def fault_kill_a_resync(self, f: Fault) -> dict:
        """The remote copy misses writes (blackhole); once the link is back, with a slow
        link so the resync takes a while, varyonvg starts the background resync and A is
        killed (-9) in the middle of it. A restarts; the resync resumes from the VGSA."""
        info = self._mid_resync(f)
        self.note(f"{_iso(time.time())} kill -9 A")
        _kill9(self.a)
        self.workload.detach()
        self.proxy.clear()
        self.note("proxy clear")
        self.restart_a_and_varyon()
        return info

    def fault_failover(self, f: Fault) -> dict:
        a, b = self.a, self.b
        lagging = self.async_mode and f.params["how"] == "kill"  # B may lack recent writes
        info: dict = {}
        if lagging:  # what A's cache held just before (writes go on until the kill)
            info["pending_before"] = self.pool_state()["pending_writes"]
        if f.params["how"] == "kill":
            t = self._inject(lambda: _kill9(a), "kill -9 A (site disaster)")
            info["detect"] = self.detect(f, t, "disconnect")
            self.workload.detach()
        else:
            t = time.time()
            self.workload.detach()
            self.ctl(a, "varyoffvg", VG)
        # at B: the seed's "Moving Workload to Disaster Recovery Site"
        for s in RPV_SERVERS:
            self.ctl(b, "rmdev", "-l", s)
        if VG in self.json(b, "lsvg"):
            self.ctl(b, "varyonvg", "-f", VG)
        else:
            self.ctl(b, "importvg", "-f", "-y", VG, "hdisk2")
            # the seed's next step: importvg turned auto-varyon and quorum on; A may come back
            self.ctl(b, "chvg", "-a", "n", "-Q", "n", VG)
        self.serving = b
        if lagging:
            # an asynchronous copy: a prefix of A's writes is here, not necessarily all
            self.verify_prefix(f, b, t, info)
        else:
            # every write A acknowledged is here; B's copy is the only one from now on
            self.verify_lv(f, b, "at B after the failover", collapse=True, since=t)
        if self.async_mode:
            st = self.pool_state(b)  # no cache at B: PoolB's copies are synchronous there
            if st["state"] != "inactive":
                self.violation(f, "lsmp -A at B after the failover", "PoolB inactive",
                               f"{st}", since=t)
        self.workload.attach(b)
        if not self.workload.wait_acks(HOLD_ACKS, 30):
            self.violation(f, "production at B", f"{HOLD_ACKS} acknowledged writes",
                           f"{self.workload.failures[-1:]}", since=t)
        self.workload.detach()
        self.verify_lv(f, b, "at B before the failback", collapse=False, since=t)
        # failback: B lets go, serves its disks again; A takes its copy back and resyncs
        self.ctl(b, "varyoffvg", VG)
        for s in RPV_SERVERS:
            self.ctl(b, "mkdev", "-l", s)
        if f.params["how"] == "kill":
            a.start()
            self.note("start A")
            for c in RPV_CLIENTS:
                self.ctl(a, "mkdev", "-l", c)
        out = self.ctl(a, "varyonvg", "-n", "-s", VG)
        removed = {ln.split()[0] for ln in out.splitlines() if ln.endswith("PVREMOVED")}
        if removed != set(LOCAL_PVS):
            self.violation(f, "varyonvg -n -s at A after the failover",
                           f"{sorted(LOCAL_PVS)} PVREMOVED", out.strip(), since=t)
        for pv in LOCAL_PVS:
            self.ctl(a, "chpv", "-v", "a", pv)
        self.ctl(a, "varyoffvg", VG)
        self.ctl(a, "varyonvg", VG)
        self.serving = a
        self.lv_map = self.json(a, "lslv", "-m", LV)
        info["varyon"] = True
        if lagging:
            self._check_discard(f, t, info)
        return info

    def verify_prefix(self, f: Fault, site: Site, since: float, info: dict) -> None:
        """--async, failover after kill -9 of A: B's copy must be A's content after a prefix
        of the writes (Model.prefix_check); the acknowledged writes it lacks are at risk,
        not lost. From then on what B holds is the truth."""
        try:
            data = asyncio.run(read_all(site.nbd_socket, self.size))
        except (OSError, ConnectionError, TimeoutError, AssertionError) as e:
            raise SoakAbort(f"reading {LV} at {site.name} after the failover: {_what(e)}") \
                from None
        res = self.model.prefix_check(self.base_seq, self.base, data)
        if res["bad"]:
            self.report.corrupt_blocks += sum(1 for _, got, _ in res["bad"]
                                              if isinstance(got, str))
            sample = "\n".join(
                f"LV offset {b * BLOCK}: holds {self.model.describe(got)}; its writes since "
                f"the copies were equal: {may[-6:]}" for b, got, may in res["bad"][:5])
            self.violation(f, "prefix at B after the failover",
                           "every block holds a write of its history (or its old content)",
                           f"{len(res['bad'])} blocks hold something else:\n{sample}",
                           since=since)
        if res["order"] is not None:
            missing, present = res["order"]
            self.violation(f, "write order at B after the failover",
                           "a prefix: no write present that was submitted after a missing "
                           "one was acknowledged",
                           f"missing {self.model.describe(missing.seq)}; present "
                           f"{self.model.describe(present.seq)}", since=since)
        risk = res["at_risk"]
        info["at_risk"] = len(risk)
        info["at_risk_blocks"] = res["missing_blocks"]
        self.report.kill_failovers += 1
        self.report.at_risk += len(risk)
        self.report.at_risk_kib += sum(r.length for r in risk.values()) // KiB
        self.model.rebase(0, data)

    def _check_discard(self, f: Fault, since: float, info: dict) -> None:
        """After the failback: A discarded what its cache held (LVM_AIO_DISCARD), at least
        every block of the writes B lacked at the failover."""
        found = [e for e in self.json(self.a, "errpt", "-a") if e["timestamp"] >= since - 0.001
                 and e["label"] == "LVM_AIO_DISCARD"]
        got = [re.search(r"(\d+) writes \((\d+) bytes\)", e["description"] + " " +
                         json.dumps(e, default=str)) for e in found]
        pairs = [(int(m[1]), int(m[2])) for m in got if m]
        if pairs:
            info["discarded"] = (sum(w for w, _ in pairs), sum(b for _, b in pairs))
            self.report.discarded.append(info["discarded"])
        need = info.get("at_risk_blocks", 0) * BLOCK
        if need and (not pairs or info["discarded"][1] < need):
            self.violation(f, "LVM_AIO_DISCARD at A after the failback",
                           f"cached writes discarded, at least {need} bytes (the blocks B "
                           f"lacked)", f"{pairs or [e['description'] for e in found]}",
                           since=since)

    # -- power losses ----------------------------------------------------------------------------
    def _power_a(self, f: Fault, what: str) -> float:
        """Power loss of A: its rpvd killed, the unsynced data of its disks dropped, a new
        boot; the workload's connection is gone (writes in flight: outcome unknown)."""
        return self._power(self.a, what, restart=False)

    def _power_b(self, what: str, restart: bool) -> float:
        return self._power(self.b, what, restart)

    def _power(self, site: Site, what: str, restart: bool) -> float:
        # cut the power while the site holds unsynced data (the workload flushes often, so
        # wait for such a moment, briefly): that is the loss the product must cope with
        deadline = time.monotonic() + 2.0
        while site.lazyfs.stats()["dirty_bytes"] == 0 and time.monotonic() < deadline:
            select.select([], [], [], 0.005)
        dropped = []
        t = self._inject(lambda: dropped.append(site.power_loss(restart=restart)), what)
        self.note(f"{dropped[0] // KiB} KiB unsynced dropped at {site.name}")
        self.report.power_losses += 1
        self.report.dropped_kib += dropped[0] // KiB
        self.dropped = dropped[0]
        return t

    def _back_after_only_copy_lost(self, info: dict) -> None:
        """A lost power while it held the only good copy of some blocks: what was not
        flushed may be gone there (never what a FLUSH or FUA made durable). The link is
        repaired, A restarts and varies the VG on, and takes back the PVs it had lost."""
        self.workload.detach()
        self.proxy.clear()
        self.note("proxy clear")
        info["widened"] = self.model.allow_unflushed_loss()
        self.restart_a_and_varyon()
        self._return_removed_pvs()

    def _return_removed_pvs(self) -> None:
        """After A's varyon, PVs another varyon saw fail are PVREMOVED: chpv -v a."""
        for p in self.json(self.a, "lsvg", VG)["pvs"]:
            if p["state"] == "removed":
                self.ctl(self.a, "chpv", "-v", "a", p["name"])

    def fault_power_a(self, f: Fault) -> dict:
        t = self._power_a(f, "power loss A")
        info = {"detect": self.detect(f, t, "disconnect")}
        self.workload.detach()
        if self.async_mode:  # A held the only copy of what the cache had not sent yet
            info["widened"] = self.model.allow_unflushed_loss()
        self.restart_a_and_varyon()
        info["drl"] = sum(e.get("regions", 0) for e in self.log_a.since(
            t, ("lvm_drl_recovered",)))
        return info

    def fault_power_b(self, f: Fault) -> dict:
        """B loses power and is back at once: A's clients reconnect to a new instance, mark
        what B had not flushed stale and resync it -- or, if B took longer than io_timeout,
        time out like kill_b."""
        t = self._power_b("power loss B, quick restart", restart=True)
        info: dict = {}
        if self.log_a.since(t, ("rpvc_io_timeout",)) or \
                self.log_a.wait(t, ("rpvc_io_timeout",), self.io_timeout + DETECT_SLACK):
            info["detect"] = self.detect(f, t, "log")
            self.during(f, t, set(RPV_CLIENTS), True, info)
            info["timed_out"] = True
        else:
            if not self.workload.wait_acks(HOLD_ACKS, 30):
                self.violation(f, "writes after B's restart", f"{HOLD_ACKS} more acknowledged",
                               f"{self.workload.failures[-1:]}", since=t)
            # stop writing now: later writes would overwrite what B lost before the copies
            # are compared, and hide a loss nobody marked
            self.workload.detach()
            ev = self.log_a.wait(t, ("lvm_pv_server_restarted",), self.io_timeout + 10)
            if ev is None:
                self.violation(f, "new instance noticed", "lvm_pv_server_restarted in A's log",
                               "nothing", since=t)
            else:
                info["restart_seen"] = round(ev["_t"] - t, 2)
            info["stale"] = self.json(self.a, "lsvg", VG)["stale_pps"]
        info["varyon"] = self.take_back()
        return info

    def fault_power_b_slow(self, f: Fault) -> dict:
        return self._b_down_then_back(
            f, self._power_b("power loss B (down past io_timeout)", restart=False))

    def fault_power_a_stale(self, f: Fault) -> dict:
        """The link goes down, A writes alone (B's copy goes stale), and A loses power while
        it holds the only fresh copy."""
        t = self._inject(lambda: self.proxy.set(mode="blackhole"), "proxy blackhole")
        info = {"detect": self.detect(f, t, "log")}
        self.during(f, t, set(RPV_CLIENTS), True, info)
        self._power_a(f, "power loss A while B's copy is stale")
        self._back_after_only_copy_lost(info)
        return info

    def fault_power_a_resync(self, f: Fault) -> dict:
        """As kill_a_resync, with a power loss of A in the middle of the resync."""
        info = self._mid_resync(f)
        self._power_a(f, "power loss A mid-resync")
        self._back_after_only_copy_lost(info)
        return info

    def fault_power_b_resync(self, f: Fault) -> dict:
        """B's copy is being resynced when B loses power and comes back at once: what the
        resync and the writes had not flushed there is marked stale and copied again."""
        info = self._mid_resync(f)
        self._power_b("power loss B mid-resync, quick restart", restart=True)
        self.proxy.clear()
        self.note("proxy clear")
        if not self.workload.wait_acks(HOLD_ACKS, 4 * self.io_timeout + 20):
            self.violation(f, "writes after B's restart", f"{HOLD_ACKS} more acknowledged",
                           f"{self.workload.failures[-1:]}", since=self.round_start)
        self.take_back()
        return info

    def fault_power_a_mirrorvg(self, f: Fault) -> dict:
        """unmirrorvg drops the copy at B; mirrorvg adds it back and synchronises it in the
        foreground over a slow link; A loses power in the middle of that."""
        a = self.a
        self.ctl(a, "unmirrorvg", VG, *RPV_CLIENTS)
        self.proxy.set(mode="pass", latency_ms=f.params["latency_ms"])
        self.note(f"proxy pass, latency {f.params['latency_ms']} ms")
        t0 = time.time()
        self.note(f"{_iso(t0)} A$ glvmctl mirrorvg {VG} {' '.join(RPV_CLIENTS)} (in the "
                  f"background)")
        cmd = subprocess.Popen([GLVMCTL, "mirrorvg", VG, *RPV_CLIENTS],
                               env=dict(os.environ, GLVM_SOCKET=a.socket),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            started = self.log_a.wait(t0, ("lvm_resync_start",), 30)
            self._power_a(f, "power loss A during mirrorvg")
        finally:
            cmd.wait(60)  # its daemon went away
        info: dict = {"mid_resync": bool(started and not self.log_a.since(
            t0, ("lvm_resync_done",)))}
        self._back_after_only_copy_lost(info)
        if self.json(a, "lslv", LV)["copies"] < 2:  # the power went before mirrorvg's VGDA
            self.ctl(a, "mirrorvg", VG, *RPV_CLIENTS)
        self.lv_map = self.json(a, "lslv", "-m", LV)  # the new copy may lie elsewhere
        return info

    def _mid_resync(self, f: Fault) -> dict:
        """Blackhole until B's copy is stale, then a slow link and varyonvg: the background
        resync is running when this returns (info['mid_resync'] says whether it was)."""
        t = self._inject(lambda: self.proxy.set(mode="blackhole"), "proxy blackhole")
        info = {"detect": self.detect(f, t, "log")}
        self.during(f, t, set(RPV_CLIENTS), True, info)
        self.proxy.set(mode="pass", latency_ms=f.params["latency_ms"])
        self.note(f"proxy pass, latency {f.params['latency_ms']} ms")
        t_sync = time.time()
        self.take_back()
        if self.async_mode:  # the sender catching up over the slow link (a resync only
            # after a fallback): the fault hits while the cache still holds writes
            info["mid_catchup"] = self.pool_state()["pending_writes"]
            info["mid_resync"] = bool(self.log_a.since(t_sync, ("lvm_resync_start",)) and
                                      not self.log_a.since(t_sync, ("lvm_resync_done",)))
            return info
        started = self.log_a.wait(t_sync, ("lvm_resync_start",), 5)
        done = self.log_a.since(t_sync, ("lvm_resync_done",))
        info["mid_resync"] = bool(started and not done)
        return info

    # -- checks after the repair -----------------------------------------------------------------
    def verify_lv(self, fault: Fault, site: Site, when: str, collapse: bool,
                  since: float) -> None:
        """Check 1: the whole LV through NBD at ``site`` against the model."""
        try:
            data = asyncio.run(read_all(site.nbd_socket, self.size))
        except (OSError, ConnectionError, TimeoutError, AssertionError) as e:
            raise SoakAbort(f"reading {LV} at {site.name} {when}: {_what(e)}") from None
        bad = self.model.check(0, data)
        if bad:
            lost = {s for _, _, may in bad for s in may
                    if isinstance(s, int) and s and self.model.writes[s].state == "acked"}
            new_lost = lost - self.report.lost
            self.report.lost |= lost
            self.report.corrupt_blocks += sum(1 for _, got, _ in bad if isinstance(got, str))
            sample = "\n".join(
                f"LV offset {b * BLOCK}: holds {self.model.describe(got)}; may hold "
                f"{[self.model.describe(s) for s in sorted(may)]}" for b, got, may in bad[:5])
            self.violation(fault, f"read-back {when}",
                           "every acknowledged write (or a later unacknowledged one)",
                           f"{len(bad)} wrong blocks, {len(new_lost)} acknowledged writes "
                           f"lost:\n{sample}", since=since)
        if collapse:
            self.model.collapse(0, data)

    def check(self, fault: Fault, info: dict) -> None:
        a, since = self.a, self.round_start
        if self.workload.attached:
            self.workload.detach()
        if self.workload.failures and self.workload.failures[-1][0] >= since and \
                fault.kind not in IO_FAILS:
            self.violation(fault, "NBD I/O", "no failed request while one copy was healthy",
                           self.workload.failures[-1][1], since=since)
        # 1. reads never return stale data, even before the resync
        self.verify_lv(fault, a, "after the repair, before syncvg", collapse=False,
                       since=since)
        # 2. resync; the copies are identical
        result = json.loads(self.ctl(a, "syncvg", "-v", VG, "--json").splitlines()[-1])
        if result.get("failed"):
            self.violation(fault, "syncvg -v", "no failed partitions", str(result["failed"]),
                           since=since)
        if self.async_mode:
            # the remote copy lags until the sender has caught up (or the resync after a
            # fallback is done): only then may the copies be compared
            st = self.wait_pool_drained(fault, since)
            if st is not None:
                info["drain"] = round(time.time() - since, 1)
            self._async_round_events(fault, info, since)
        m = self.lv_map
        copies = [read_copy(m, c, self.files, m["pp_size_mb"]) for c in range(2)]
        diff = diff_blocks(copies[0], copies[1])
        if diff:
            self.report.diverged_blocks += len(diff)
            self.violation(fault, "copies after syncvg", "byte-identical",
                           f"{len(diff)} blocks differ, first at LV offsets {diff[:8]}",
                           since=since)
            self.ctl(a, "syncvg", "-f", "-v", VG)  # so the next rounds start from equal copies
        # 3. lsvg and errpt agree with what happened
        vg = self.json(a, "lsvg", VG)
        if vg["state"] != "active" or vg["stale_pps"] != 0 or \
                any(p["state"] != "active" for p in vg["pvs"]):
            self.violation(fault, "lsvg after syncvg", "active, stale_pps 0, all PVs active",
                           f"{vg['state']}, stale_pps {vg['stale_pps']}, "
                           f"{[(p['name'], p['state']) for p in vg['pvs']]}", since=since)
        self.verify_lv(fault, a, "after syncvg", collapse=True, since=since)
        self.model.prune()
        self.check_errpt(fault, info, set(e["label"] for e in self.errpt_since(a, since)))
        info["summary"] = self._summary(info)
        if self.async_mode:  # the copies are equal here: the base of the next prefix check
            self.base_seq, self.base = self.model.last_seq, list(self.model.possible)
        self.workload.attach(a)

    def _async_round_events(self, fault: Fault, info: dict, since: float) -> None:
        """Fallbacks, high-water-mark episodes and cache replays of the round (A's log)."""
        r = self.report
        fell = self.log_a.since(since, ("lvm_async_fallback",))
        info["fell"] = len(fell)
        if fell:
            r.fallbacks += len(fell)
            r.fallback_faults.append(f"{fault.index} {fault.kind}")
        r.hwm_episodes += len(self.log_a.since(since, ("lvm_async_hwm",)))
        replays = self.log_a.since(since, ("lvm_async_replay",))
        info["replayed"] = sum(e.get("writes", 0) for e in replays)
        r.replayed += info["replayed"]

    def check_errpt(self, fault: Fault, info: dict, labels: set[str]) -> None:
        kind, want, unwanted = fault.kind, set(), set()
        if kind in TIMEOUT_KINDS + ("kill_a_resync",) or (kind == "restart_b" and "stale" in info
                                     and "detect" in info):
            want = {"RPVC_IO_TIMEOUT", "LVM_SA_PVMISS", "LVM_SA_STALEPP", "LVM_MISSPVRET"}
        elif kind in DISK_KINDS:
            want, unwanted = {"LVM_SA_PVMISS", "LVM_SA_STALEPP", "LVM_MISSPVRET"}, \
                {"RPVC_IO_TIMEOUT"}
        elif kind in TRANSIENT_KINDS + ("restart_b",):
            if not info.get("escalated"):
                unwanted = {"RPVC_IO_TIMEOUT", "LVM_SA_PVMISS"} | (
                    set() if info.get("restarted") else {"LVM_SA_STALEPP"})
        elif kind in A_DOWN_KINDS + ("power_a",):
            unwanted = {"RPVC_IO_TIMEOUT", "LVM_SA_PVMISS", "LVM_SA_STALEPP"}
        elif kind == "power_b_slow" or (kind == "power_b" and info.get("timed_out")):
            want = {"RPVC_IO_TIMEOUT", "LVM_SA_PVMISS", "LVM_MISSPVRET"}
        elif kind == "power_b":  # back inside io_timeout: a restart, not an outage
            unwanted = {"RPVC_IO_TIMEOUT", "LVM_SA_PVMISS"}
        elif kind in ("power_a_stale", "power_a_resync", "power_b_resync"):
            want = {"RPVC_IO_TIMEOUT", "LVM_SA_PVMISS", "LVM_SA_STALEPP"}
        elif kind == "failover":
            want = {"LVM_MISSPVADDED"}
        if self.async_mode:
            want, unwanted = set(want), set(unwanted)
            if info.get("fell"):  # the cached ranges became stale partitions of B's copy
                want.add("LVM_AIO_CACHE_FULL")
                unwanted.discard("LVM_SA_STALEPP")
            else:
                unwanted.add("LVM_AIO_CACHE_FULL")
                if kind != "disk_a":  # B's copy was out: cached, never stale
                    want.discard("LVM_SA_STALEPP")
            if info.get("at_risk"):  # A's cache held writes B lacked: discarded at failback
                want.add("LVM_AIO_DISCARD")
            elif not (kind == "failover" and fault.params["how"] == "kill"):
                unwanted.add("LVM_AIO_DISCARD")
        if not want <= labels or labels & unwanted:
            self.violation(fault, "errpt after the repair",
                           f"labels {sorted(want)}" + (f", none of {sorted(unwanted)}"
                                                       if unwanted else ""),
                           f"{sorted(labels)}", since=self.round_start)

    @staticmethod
    def _summary(info: dict) -> str:
        parts = []
        if info.get("detect") is not None:
            parts.append(f"detected {info['detect']:.2f} s")
        if info.get("stale"):
            parts.append(f"{info['stale']} stale PPs")
        if info.get("pvmiss"):
            parts.append("out: " + ",".join(info["pvmiss"]))
        if info.get("drl"):
            parts.append(f"DRL {info['drl']} regions")
        if info.get("escalated"):
            parts.append("ESCALATED")
        if info.get("dropped") is not None:
            parts.append(f"{info['dropped'] // KiB} KiB unsynced lost")
        if "restart_seen" in info:
            parts.append(f"new instance seen {info['restart_seen']:.2f} s")
        if info.get("widened"):
            parts.append(f"{info['widened']} blocks may lose unflushed writes")
        if "mid_resync" in info:
            parts.append("hit " + ("mid-resync" if info["mid_resync"] else
                                      "after the resync"))
        if info.get("varyon"):
            parts.append("varyonvg")
        if info.get("mid_catchup"):
            parts.append(f"hit mid-catch-up ({info['mid_catchup']} writes cached)")
        if "at_risk" in info:
            parts.append(f"{info['at_risk']} writes at risk at B")
        if info.get("discarded"):
            parts.append(f"{info['discarded'][0]} writes discarded at failback")
        if info.get("replayed"):
            parts.append(f"{info['replayed']} cached writes replayed")
        if info.get("fell"):
            parts.append("FALLBACK")
        if info.get("slowest") is not None:
            parts.append(f"slowest write {info['slowest']:.2f} s")
        if info.get("drain") is not None:
            parts.append(f"drained {info['drain']:.1f} s")
        return ", ".join(parts) or "ridden through"


def _kill9(site: Site) -> None:
    os.kill(site.proc.pid, signal.SIGKILL)
    site.proc.wait()


def run_soak(seed: int = 1, faults: int = 200, duration: float = 0.0, **kw) -> Report:
    return Soak(seed, faults, duration, **kw).run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--faults", type=int, default=200)
    ap.add_argument("--duration", type=float, default=0.0,
                    help="stop injecting new faults after this many seconds (0: no limit)")
    ap.add_argument("--io-timeout", type=int, default=2, help="RPV client io_timeout, s")
    ap.add_argument("--port", type=int, default=None,
                    help="RPV port (default: $GLVM_TEST_PORT, else a free one)")
    ap.add_argument("--root", default=None, help="state directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the state directory")
    ap.add_argument("--kinds", default=None,
                    help=f"comma-separated fault kinds (default: all of {','.join(KINDS)}; "
                         f"with --async all but {','.join(ASYNC_SKIP + ASYNC_KNOWN_BAD)})")
    ap.add_argument("--async", dest="async_mode", action="store_true",
                    help="copy 2 in an asynchronous mirror pool (PoolB, I/O cache aiocache)")
    ap.add_argument("--cache-lps", type=int, default=None,
                    help=f"with --async: partitions of the aio_cache LV (default "
                         f"{CACHE_LPS_SMALL} when seed %% 3 == 1, else {CACHE_LPS_LARGE})")
    args = ap.parse_args(argv)
    allowed = ASYNC_KINDS + ASYNC_KNOWN_BAD if args.async_mode else KINDS
    kinds = None if args.kinds is None else tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds or ()) - set(allowed)
    if unknown:
        ap.error(f"unknown fault kinds{' with --async' if args.async_mode else ''}: "
                 f"{', '.join(sorted(unknown))}")
    if args.cache_lps is not None and not args.async_mode:
        ap.error("--cache-lps needs --async")
    report = run_soak(args.seed, args.faults, args.duration, io_timeout=args.io_timeout,
                      port=args.port, root=args.root, keep=args.keep, kinds=kinds,
                      async_mode=args.async_mode, cache_lps=args.cache_lps)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
