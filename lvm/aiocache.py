"""The I/O cache log of asynchronous mirroring (issue 14): a sans-IO core, no I/O, no clocks.

Every write to an LV of an asynchronous mirror pool is appended here before it is
acknowledged; a sender streams the records, in order, to the remote copy, and the log releases
them once the remote site has them durably. The log lives in a dedicated ``aio_cache`` LV::

    0      superblock slot 0 (4 KiB)   generation g written to slot g % 2
    4 KiB  superblock slot 1 (4 KiB)
    8 KiB  record area, circular, every record 4 KiB aligned and a multiple of 4 KiB long

A record is a 512-byte header block (:data:`RECORD_HEADER`, zero padded) followed by the
payload, padded to 4 KiB. Positions are *logical*: a byte count that only grows, so
``pos % area_size`` is where a record sits and ``pos // area_size`` which lap of the circle it
belongs to. A record never crosses the end of the area: a pad record fills the rest first.

A record is valid when its magic, log id, position and sequence number are the expected ones
and its CRC-32 (over the header and the payload) matches: a torn record fails the CRC, a record
from a previous lap has the wrong position and sequence number, one from a previous format has
another log id. Each open of the log bumps an *incarnation* that is persisted before the first
append; incarnations never decrease along the chain, starting from the superblock's tail
incarnation. After a crash the head is rewritten from the last valid record on, so an
unflushed record of the crashed incarnation lying just beyond the new records (same position,
same seq) is never mistaken for their successor, nor for the next record after the tail.

Decoding never raises: corrupt or torn bytes end the valid log.
"""

from __future__ import annotations

import secrets
import struct
import zlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby, takewhile
from typing import NamedTuple

KiB, MiB = 1 << 10, 1 << 20

VERSION = 1
BLOCK = 4 * KiB  # record alignment and granularity
SB_SLOT = 4 * KiB
SUPERBLOCK_AREA = 2 * SB_SLOT  # bytes to read for recovery, at offset 0
AREA_START = SUPERBLOCK_AREA
HEADER_BLOCK = 512  # the payload starts this far into a record
MIN_LOG_SIZE = AREA_START + 4 * BLOCK
DEFAULT_MAX_PAYLOAD = 1 * MiB
MAX_PAYLOAD_LIMIT = 16 * MiB  # bounds what a (valid) superblock may ask the scanner to buffer
DEFAULT_READ_SIZE = 1 * MiB

SB_MAGIC = b"GLVMAIOC"
# magic, version, generation, log id, log size, max payload, incarnation, tail incarnation,
# tail pos, tail seq, epoch, crc32 of everything before it
SUPERBLOCK = struct.Struct(">8sIQQQIIIQQQI")

REC_MAGIC = b"GAIO"
KIND_DATA, KIND_PAD = 1, 2
# magic, kind, flags, reserved, incarnation, seq, pos, epoch, log id, lvid, length, LV offset,
# crc32 (of the header before it, then the payload)
RECORD_HEADER = struct.Struct(">4sBBHIQQQQIIQI")


class RecordTooLarge(ValueError):
    """An append larger than the configured maximum payload: the caller splits the write."""


class DeviceWrite(NamedTuple):
    """Bytes to write at an offset of the cache LV."""

    offset: int
    data: bytes


def image_size(length: int) -> int:
    """Bytes a record of ``length`` payload bytes occupies in the area."""
    return -(-(HEADER_BLOCK + length) // BLOCK) * BLOCK


# ------------------------------------------------------------------------------------------------
# superblock
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Superblock:
    """One superblock generation: the log's geometry and its persisted tail."""

    generation: int
    log_id: int
    log_size: int
    max_payload: int
    incarnation: int
    tail_incarnation: int  # the least incarnation the record at the tail may have
    tail_pos: int  # logical position of the first unreleased record
    tail_seq: int  # its sequence number (released: every seq below it)
    epoch: int
    version: int = VERSION

    @property
    def area_size(self) -> int:
        return self.log_size - AREA_START

    @property
    def slot_offset(self) -> int:
        return (self.generation % 2) * SB_SLOT

    def encode(self) -> bytes:
        """The 4 KiB slot image."""
        raw = SUPERBLOCK.pack(SB_MAGIC, self.version, self.generation, self.log_id,
                              self.log_size, self.max_payload, self.incarnation,
                              self.tail_incarnation, self.tail_pos, self.tail_seq, self.epoch,
                              0)[:-4]
        return raw + struct.pack(">I", zlib.crc32(raw)) + bytes(SB_SLOT - SUPERBLOCK.size)

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> Superblock | None:
        """The superblock in a slot image, or None if it is empty, torn or implausible."""
        if len(raw) < SUPERBLOCK.size:
            return None
        fields = SUPERBLOCK.unpack_from(raw)
        magic, version, crc = fields[0], fields[1], fields[-1]
        if magic != SB_MAGIC or version != VERSION:
            return None
        if zlib.crc32(bytes(raw[:SUPERBLOCK.size - 4])) != crc:
            return None
        sb = cls(*fields[2:-1], version=version)
        return sb if _geometry_error(sb.log_size, sb.max_payload) is None and \
            sb.tail_pos % BLOCK == 0 else None


def newest_superblock(raw: bytes | bytearray | memoryview,
                      device_size: int | None = None) -> Superblock | None:
    """The valid slot of the two (``raw`` = the first :data:`SUPERBLOCK_AREA` bytes) with the
    higher generation; a slot describing a log larger than ``device_size`` is ignored."""
    found = [Superblock.decode(raw[i * SB_SLOT:(i + 1) * SB_SLOT]) for i in (0, 1)]
    valid = [sb for i, sb in enumerate(found) if sb is not None and sb.generation % 2 == i
             and (device_size is None or sb.log_size <= device_size)]
    return max(valid, key=lambda sb: sb.generation, default=None)


def _geometry_error(log_size: int, max_payload: int) -> str | None:
    """Why this geometry is unusable, or None. The area must hold two records of maximum size,
    so that a pad plus a record always fit in an empty log."""
    if log_size < MIN_LOG_SIZE or log_size % BLOCK:
        return f"log size {log_size} must be a multiple of {BLOCK} and at least {MIN_LOG_SIZE}"
    if not 0 < max_payload <= MAX_PAYLOAD_LIMIT:
        return f"max payload {max_payload} must be in 1..{MAX_PAYLOAD_LIMIT}"
    if log_size - AREA_START < 2 * image_size(max_payload):
        return f"log of {log_size} bytes too small for records of {max_payload} bytes"
    return None


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """An unreleased record (its payload stays on disk at :attr:`payload_offset`)."""

    seq: int
    epoch: int
    lvid: int
    offset: int  # LV byte offset
    length: int
    pos: int  # logical position in the log
    device_offset: int  # where the record starts in the cache LV
    incarnation: int

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def payload_offset(self) -> int:
        return self.device_offset + HEADER_BLOCK

    @property
    def end_pos(self) -> int:
        return self.pos + image_size(self.length)

    def overlaps(self, other: RecordInfo) -> bool:
        return self.lvid == other.lvid and self.offset < other.end and other.offset < self.end


class _Header(NamedTuple):
    magic: bytes
    kind: int
    flags: int
    reserved: int
    incarnation: int
    seq: int
    pos: int
    epoch: int
    log_id: int
    lvid: int
    length: int
    offset: int
    crc: int


def _header_bytes(kind: int, incarnation: int, seq: int, pos: int, epoch: int, log_id: int,
                  lvid: int, length: int, offset: int, payload: bytes | memoryview) -> bytes:
    raw = RECORD_HEADER.pack(REC_MAGIC, kind, 0, 0, incarnation, seq, pos, epoch, log_id, lvid,
                             length, offset, 0)[:-4]
    return raw + struct.pack(">I", zlib.crc32(payload, zlib.crc32(raw)))


def _record_crc_ok(header: bytes | memoryview, payload: bytes | memoryview) -> bool:
    crc = struct.unpack_from(">I", header, RECORD_HEADER.size - 4)[0]
    return zlib.crc32(payload, zlib.crc32(header[:RECORD_HEADER.size - 4])) == crc


# ------------------------------------------------------------------------------------------------
# recovery
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovery:
    """What a scan found: the unreleased records in order and where the log continues."""

    superblock: Superblock | None
    records: list[RecordInfo]
    head_pos: int
    next_seq: int
    stop_reason: str  # why the scan stopped: "end" (no further record) or what was wrong

    @property
    def ok(self) -> bool:
        """A valid superblock was found (the records may still be empty)."""
        return self.superblock is not None


class Scanner:
    """Sans-IO recovery: give it the superblock area, then answer its reads until
    :meth:`next_read` returns None, then take :meth:`result`::

        scan = Scanner(dev_bytes[:SUPERBLOCK_AREA], device_size=size)
        while (req := scan.next_read()) is not None:
            scan.feed(read(*req))                       # req = (device offset, length)
        recovery = scan.result()

    Reads are at most ``max(read_size, largest record)`` bytes, and so is the buffer. The scan
    stops at the first record that is torn, corrupt, stale or would overrun the tail.
    """

    def __init__(self, superblock_bytes: bytes | bytearray | memoryview, *,
                 device_size: int | None = None, read_size: int = DEFAULT_READ_SIZE):
        self.superblock = sb = newest_superblock(superblock_bytes, device_size)
        self._read_size = max(BLOCK, read_size)
        self._records: list[RecordInfo] = []
        self._pos = sb.tail_pos if sb else 0
        self._seq = sb.tail_seq if sb else 0
        self._epoch = 0
        self._incarnation = sb.tail_incarnation if sb else 0
        self._buf = b""
        self._buf_pos = self._pos
        self._want: tuple[int, int] | None = None  # (logical position, length)
        self._reason = "" if sb else "no valid superblock"
        self._advance()

    def next_read(self) -> tuple[int, int] | None:
        """(device offset, length) to read next, or None when the scan is over."""
        if self._reason or self._want is None:
            return None
        pos, length = self._want
        return AREA_START + pos % self.superblock.area_size, length

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """The bytes read for the last :meth:`next_read` (a short read ends the scan)."""
        if self._reason or self._want is None:
            return
        want, self._want = self._want, None
        if len(data) != want[1]:
            self._reason = "short read"
            return
        self._buf = bytes(self._buf) + bytes(data)
        self._advance()

    def result(self) -> Recovery:
        """The records found so far (all of them once :meth:`next_read` returned None)."""
        return Recovery(self.superblock, list(self._records), self._pos, self._seq,
                        self._reason or "incomplete")

    def _advance(self) -> None:
        while not self._reason and self._step():
            pass

    def _need(self, n: int) -> memoryview | None:
        """``n`` bytes at the scan position, or None after asking for a read."""
        off = self._pos - self._buf_pos
        if 0 <= off and off + n <= len(self._buf):
            return memoryview(self._buf)[off:off + n]
        self._buf = self._buf[off:] if 0 <= off < len(self._buf) else b""
        self._buf_pos = self._pos
        start = self._pos + len(self._buf)
        room = self.superblock.area_size - start % self.superblock.area_size
        self._want = (start, min(max(n - len(self._buf), self._read_size), room))
        return None

    def _step(self) -> bool:
        """Take one record; False when waiting for bytes or finished."""
        raw = self._need(RECORD_HEADER.size)
        if raw is None:
            return False
        h = _Header._make(RECORD_HEADER.unpack(raw))
        reason = self._check_header(h)
        if reason:
            self._reason = reason
            return False
        if h.kind == KIND_PAD:
            if not _record_crc_ok(raw, b""):
                self._reason = "torn pad"
                return False
            size = h.length
        else:
            body = self._need(HEADER_BLOCK + h.length)
            if body is None:
                return False
            if not _record_crc_ok(body[:RECORD_HEADER.size], body[HEADER_BLOCK:]):
                self._reason = "torn or corrupt record"
                return False
            self._records.append(RecordInfo(
                h.seq, h.epoch, h.lvid, h.offset, h.length, h.pos,
                AREA_START + h.pos % self.superblock.area_size, h.incarnation))
            self._seq, size = self._seq + 1, image_size(h.length)
        self._pos += size
        self._epoch, self._incarnation = h.epoch, h.incarnation
        return True

    def _check_header(self, h: _Header) -> str:
        """Why the header at the scan position does not continue the log ('' if it does)."""
        sb = self.superblock
        if h.magic != REC_MAGIC or h.log_id != sb.log_id or h.kind not in (KIND_DATA, KIND_PAD):
            return "end"
        if h.pos != self._pos or h.seq != self._seq:
            return "stale record"
        if not self._incarnation <= h.incarnation <= sb.incarnation or h.epoch < self._epoch:
            return "record of an abandoned incarnation"
        room = sb.area_size - self._pos % sb.area_size
        if h.kind == KIND_PAD:
            ok = h.length == room and room % BLOCK == 0
            size = h.length
        else:
            ok = 0 < h.length <= sb.max_payload and image_size(h.length) <= room
            size = image_size(h.length)
        if not ok:
            return "bad record length"
        if self._pos + size - sb.tail_pos > sb.area_size:
            return "record would overrun the tail"
        return ""


def recover_image(image: bytes | bytearray | memoryview, *,
                  read_size: int = DEFAULT_READ_SIZE) -> Recovery:
    """Recover from a whole cache-LV image held in memory (small logs and tests)."""
    view = memoryview(image)
    scan = Scanner(view[:SUPERBLOCK_AREA], device_size=len(view), read_size=read_size)
    while (req := scan.next_read()) is not None:
        scan.feed(view[req[0]:req[0] + req[1]])
    return scan.result()


# ------------------------------------------------------------------------------------------------
# the log
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Appended:
    """The record is reserved: perform ``writes`` (any order), then call
    :meth:`CacheLog.write_done`."""

    seq: int
    epoch: int
    writes: list[DeviceWrite]


@dataclass(frozen=True, slots=True)
class Full:
    """Not enough free space: wait for releases (back-pressure; never drop the write).
    ``reclaimable`` bytes are released but wait for a persisted checkpoint."""

    needed: int
    free: int
    reclaimable: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A superblock write persisting the tail. Write it, flush, then call
    :meth:`CacheLog.persisted`; one such write in flight at a time."""

    write: DeviceWrite
    superblock: Superblock

    @property
    def generation(self) -> int:
        return self.superblock.generation


class CacheLog:
    """The in-memory state of an open cache log; methods return the writes to perform.

    Space freed by :meth:`release` becomes reusable only once a :class:`Checkpoint` carrying
    the new tail is durable (:meth:`persisted`), so a crash at any moment finds the records from
    the persisted tail on intact. Superblock generations alternate slots and a new generation
    is only handed out once the previous one is durable, so a torn superblock write always
    leaves the last durable generation readable in the other slot.
    """

    def __init__(self, sb: Superblock, records: Iterable[RecordInfo], head_pos: int,
                 next_seq: int, epoch: int):
        self._sb = sb  # the newest superblock known durable
        self._pending: deque[RecordInfo] = deque(records)
        self._head_pos, self._next_seq, self._epoch = head_pos, next_seq, epoch
        self._tail_pos, self._tail_seq = sb.tail_pos, sb.tail_seq
        self._epoch_used = False
        self._done_seq = next_seq - 1  # every seq up to this one has its writes completed
        self._done_above: set[int] = set()
        self._durable_seq = next_seq - 1
        self._incarnation = sb.incarnation
        self._ready = False

    # -- creation ------------------------------------------------------------------------------

    @classmethod
    def format(cls, size: int, *, log_id: int | None = None,
               max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[CacheLog, list[Checkpoint]]:
        """A new empty log on a device of ``size`` bytes (rounded down to 4 KiB). Write both
        checkpoints, flush, and call :meth:`persisted` before appending."""
        size -= size % BLOCK
        error = _geometry_error(size, max_payload)
        if error:
            raise ValueError(error)
        log_id = log_id if log_id is not None else secrets.randbits(64) | 1
        log = cls(Superblock(-1, log_id, size, max_payload, 1, 1, 0, 1, 1), (), 0, 1, 1)
        return log, [log._checkpoint_for(0), log._checkpoint_for(1)]

    @classmethod
    def open(cls, recovery: Recovery) -> tuple[CacheLog, Checkpoint]:
        """Continue a recovered log in a new incarnation. Write the checkpoint, flush, and call
        :meth:`persisted` before appending; the recovered records count as durable.
        Raises ValueError when the recovery found no valid superblock."""
        sb = recovery.superblock
        if sb is None:
            raise ValueError(f"not a cache log: {recovery.stop_reason}")
        last = recovery.records[-1].epoch if recovery.records else 0
        log = cls(sb, recovery.records, recovery.head_pos, recovery.next_seq,
                  max(sb.epoch, last) + 1)
        log._incarnation = sb.incarnation + 1
        return log, log.checkpoint()

    # -- accounting ----------------------------------------------------------------------------

    @property
    def superblock(self) -> Superblock:
        """The newest superblock known durable."""
        return self._sb

    @property
    def ready(self) -> bool:
        """Appends are allowed: this incarnation's superblock is durable."""
        return self._ready

    @property
    def area_size(self) -> int:
        return self._sb.area_size

    @property
    def max_payload(self) -> int:
        return self._sb.max_payload

    @property
    def used_bytes(self) -> int:
        """Bytes not available to appends (unreleased, or released but not yet persisted)."""
        return self._head_pos - self._sb.tail_pos

    @property
    def free_bytes(self) -> int:
        return self.area_size - self.used_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes of unreleased records (and pads between them)."""
        return self._head_pos - self._tail_pos

    @property
    def reclaimable_bytes(self) -> int:
        """Released bytes that a persisted checkpoint would free."""
        return self._tail_pos - self._sb.tail_pos

    @property
    def fill_percent(self) -> float:
        return 100.0 * self.used_bytes / self.area_size

    def above_hwm(self, hwm_percent: float) -> bool:
        """The high-water mark is reached: new writes should wait."""
        return self.fill_percent >= hwm_percent

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def tail_seq(self) -> int:
        """The oldest unreleased seq (every seq below it is released)."""
        return self._tail_seq

    @property
    def epoch(self) -> int:
        """The epoch the next append joins."""
        return self._epoch

    @property
    def durable_seq(self) -> int:
        """Every record up to this seq is on stable storage in the cache LV."""
        return self._durable_seq

    def pending(self) -> list[RecordInfo]:
        """Unreleased records in seq order."""
        return list(self._pending)

    def sendable(self) -> list[RecordInfo]:
        """Unreleased records already on stable storage in the cache LV. Send only these:
        a record sent before it is durable here could reach the remote site and then vanish
        here in a power loss, leaving the remote copy ahead of the recovered local one."""
        if not self._ready:
            return []
        return list(takewhile(lambda r: r.seq <= self._durable_seq, self._pending))

    # -- appending -----------------------------------------------------------------------------

    def append(self, lvid: int, offset: int, data: bytes | bytearray | memoryview
               ) -> Appended | Full:
        """Reserve a record for a write of ``data`` at ``offset`` of LV ``lvid``. Any length
        up to ``max_payload`` is accepted; the record image is 4 KiB aligned either way.

        Raises RecordTooLarge above ``max_payload`` (split the write), ValueError for an empty
        write or out-of-range fields, RuntimeError before the log is :attr:`ready`."""
        length = len(data)
        self._check_append(lvid, offset, length)
        size = image_size(length)
        room = self.area_size - self._head_pos % self.area_size
        pad = room if room < size else 0
        if pad + size > self.free_bytes:
            return Full(pad + size, self.free_bytes, self.reclaimable_bytes)
        writes = []
        if pad:
            writes.append(DeviceWrite(self._device_offset(self._head_pos),
                                      self._pad_bytes(pad)))
            self._head_pos += pad
        rec = RecordInfo(self._next_seq, self._epoch, lvid, offset, length, self._head_pos,
                         self._device_offset(self._head_pos), self._incarnation)
        writes.append(DeviceWrite(rec.device_offset, self._record_bytes(rec, data)))
        self._pending.append(rec)
        self._head_pos, self._next_seq, self._epoch_used = rec.end_pos, rec.seq + 1, True
        return Appended(rec.seq, rec.epoch, writes)

    def _check_append(self, lvid: int, offset: int, length: int) -> None:
        if not self._ready:
            raise RuntimeError("cache log not ready: persist its superblock first")
        if length > self.max_payload:
            raise RecordTooLarge(f"write of {length} bytes exceeds the cache record limit of "
                                 f"{self.max_payload}: split it")
        if length == 0:
            raise ValueError("empty write")
        if not (0 <= lvid < 1 << 32 and 0 <= offset < 1 << 64):
            raise ValueError(f"lvid {lvid} or offset {offset} out of range")

    def _device_offset(self, pos: int) -> int:
        return AREA_START + pos % self.area_size

    def _record_bytes(self, rec: RecordInfo, data: bytes | bytearray | memoryview) -> bytes:
        header = _header_bytes(KIND_DATA, self._incarnation, rec.seq, rec.pos, rec.epoch,
                               self._sb.log_id, rec.lvid, rec.length, rec.offset, data)
        tail = image_size(rec.length) - HEADER_BLOCK - rec.length
        return b"".join((header, bytes(HEADER_BLOCK - len(header)), data, bytes(tail)))

    def _pad_bytes(self, length: int) -> bytes:
        header = _header_bytes(KIND_PAD, self._incarnation, self._next_seq, self._head_pos,
                               self._epoch, self._sb.log_id, 0, length, 0, b"")
        return header + bytes(BLOCK - len(header))

    def barrier(self) -> int:
        """An ordering point (a FLUSH was received, or the caller wants one): appends from now
        on join a new epoch, unless the current one is still empty. Returns the new epoch."""
        if self._epoch_used:
            self._epoch, self._epoch_used = self._epoch + 1, False
        return self._epoch

    # -- durability of appends -----------------------------------------------------------------

    def write_done(self, seq: int) -> None:
        """All writes of record ``seq`` completed (they may still be in a volatile cache)."""
        if seq <= self._done_seq:
            return
        self._done_above.add(seq)
        while self._done_seq + 1 in self._done_above:
            self._done_seq += 1
            self._done_above.remove(self._done_seq)

    def flush_mark(self) -> int:
        """Call before a device flush; pass the result to :meth:`flush_done` after it."""
        return self._done_seq

    def flush_done(self, mark: int) -> None:
        self._durable_seq = max(self._durable_seq, mark)

    # -- releasing -----------------------------------------------------------------------------

    def release(self, up_to_seq: int) -> Checkpoint | None:
        """The remote site has every record up to ``up_to_seq`` durably: advance the tail.
        Returns the checkpoint persisting it (None if nothing moved); it may be written
        lazily, but the space it frees is reusable only after :meth:`persisted`."""
        moved = False
        while self._pending and self._pending[0].seq <= up_to_seq:
            rec = self._pending.popleft()
            self._tail_pos, self._tail_seq, moved = rec.end_pos, rec.seq + 1, True
        return self.checkpoint() if moved else None

    def checkpoint(self) -> Checkpoint:
        """A superblock write with the current tail and epoch. Only write the newest one
        obtained: an older checkpoint of an already persisted generation must be dropped."""
        return self._checkpoint_for(self._sb.generation + 1)

    def _checkpoint_for(self, generation: int) -> Checkpoint:
        first = self._pending[0].incarnation if self._pending else self._incarnation
        sb = Superblock(generation, self._sb.log_id, self._sb.log_size, self._sb.max_payload,
                        self._incarnation, first, self._tail_pos, self._tail_seq, self._epoch)
        return Checkpoint(DeviceWrite(sb.slot_offset, sb.encode()), sb)

    def persisted(self, cp: Checkpoint) -> bool:
        """``cp`` is written and flushed: its tail is durable and the space before it is free.
        False (and nothing changes) for a checkpoint older than the durable one."""
        if cp.generation <= self._sb.generation:
            return False
        self._sb = cp.superblock
        self._ready = self._ready or cp.superblock.incarnation == self._incarnation
        return True


# ------------------------------------------------------------------------------------------------
# ordering helpers for the sender
# ------------------------------------------------------------------------------------------------


class _Levels:
    """Disjoint byte ranges of one LV, each with the batch level of its latest writer."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.levels: list[int] = []

    def assign(self, start: int, end: int) -> int:
        """The level for a write of [start, end): one above every earlier overlapping one."""
        lo, hi = bisect_right(self.ends, start), bisect_left(self.starts, end)
        level = max(self.levels[lo:hi], default=-1) + 1
        pieces = []
        if lo < hi and self.starts[lo] < start:
            pieces.append((self.starts[lo], start, self.levels[lo]))
        pieces.append((start, end, level))
        if lo < hi and self.ends[hi - 1] > end:
            pieces.append((end, self.ends[hi - 1], self.levels[hi - 1]))
        self.starts[lo:hi] = [p[0] for p in pieces]
        self.ends[lo:hi] = [p[1] for p in pieces]
        self.levels[lo:hi] = [p[2] for p in pieces]
        return level


def batches(records: Iterable[RecordInfo]) -> Iterator[list[RecordInfo]]:
    """Cut records (in seq order) into batches to send one after the other: all records of a
    batch may be in flight together, and the next batch starts once the remote site has
    confirmed the whole batch. A batch never mixes epochs, and two overlapping records are
    never in one batch; the later of them is in a later batch, so they apply in seq order.
    Every record of an epoch is in a batch before every record of the next epoch."""
    ordered = sorted(records, key=lambda r: r.seq)
    for _, group in groupby(ordered, key=lambda r: r.epoch):
        levels: dict[int, _Levels] = {}
        buckets: list[list[RecordInfo]] = []
        for rec in group:
            level = levels.setdefault(rec.lvid, _Levels()).assign(rec.offset, rec.end)
            if level == len(buckets):
                buckets.append([])
            buckets[level].append(rec)
        yield from buckets


class _Cover:
    """A union of byte ranges, kept as sorted disjoint (merged) intervals."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def covers(self, start: int, end: int) -> bool:
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def add(self, start: int, end: int) -> None:
        lo, hi = bisect_left(self.ends, start), bisect_right(self.starts, end)
        if lo < hi:
            start, end = min(start, self.starts[lo]), max(end, self.ends[hi - 1])
        self.starts[lo:hi], self.ends[lo:hi] = [start], [end]


def superseded(records: Sequence[RecordInfo]) -> set[int]:
    """Seqs of records wholly overwritten by later records *of the same epoch* (information;
    :func:`batches` never uses it).

    Skipping such a record changes which intermediate states the remote copy passes through.
    Within one epoch that is harmless only if the record is skipped as part of sending its
    overwriters, and its release waits for theirs: no FLUSH separates them, so a disk could
    have reordered them too. Across an epoch boundary it is not: if record 1 (epoch 1) is
    skipped because record 9 (epoch 2) rewrites its blocks, the remote copy shows epoch 2's
    records 2..8 without record 1 until record 9 lands. That state is not a prefix of the
    acknowledged writes, which is exactly what a crash (or failover) must never expose; so
    overwrites by later epochs are not reported here.
    """
    result: set[int] = set()
    ordered = sorted(records, key=lambda r: r.seq, reverse=True)
    for _, group in groupby(ordered, key=lambda r: r.epoch):
        covers: dict[int, _Cover] = {}
        for rec in group:
            cover = covers.setdefault(rec.lvid, _Cover())
            if cover.covers(rec.offset, rec.end):
                result.add(rec.seq)
            cover.add(rec.offset, rec.end)
    return result
