"""Unit tests of the asynchronous-mirroring cache log (lvm.aiocache) and its adapter."""

from __future__ import annotations

import asyncio
import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvm.aiocache import (
    AREA_START,
    BLOCK,
    HEADER_BLOCK,
    RECORD_HEADER,
    SB_SLOT,
    SUPERBLOCK_AREA,
    Appended,
    CacheLog,
    Full,
    RecordInfo,
    RecordTooLarge,
    Scanner,
    Superblock,
    batches,
    image_size,
    newest_superblock,
    recover_image,
    superseded,
)
from lvm.aiocache_io import CacheLogDevice
from tests.helpers.disks import MemDisk

KiB = 1 << 10
SMALL = AREA_START + 64 * KiB  # a 64 KiB record area: wraps every few records
SMALL_MAX = 8 * KiB


def payload_for(n: int, length: int) -> bytes:
    return random.Random(n).randbytes(length)


class SimDisk:
    """A disk with a volatile cache: writes are pending until flush; a power loss applies each
    pending write wholly, not at all, or torn (a random subset of its sectors, or a prefix of
    its bytes)."""

    def __init__(self, size: int):
        self.stable = bytearray(size)
        self.pending: list[tuple[int, bytes]] = []

    def write(self, w) -> None:
        self.pending.append((w[0], bytes(w[1])))

    def flush(self) -> None:
        for off, data in self.pending:
            self.stable[off:off + len(data)] = data
        self.pending.clear()

    def power_loss(self, rnd: random.Random) -> None:
        for off, data in self.pending:
            fate = rnd.randrange(4)
            if fate == 3:  # torn inside a sector: a prefix of the bytes
                cut = rnd.randrange(len(data))
                self.stable[off:off + cut] = data[:cut]
                continue
            for s in range(0, len(data), 512):
                if fate == 0 or (fate == 1 and rnd.random() < 0.5):
                    self.stable[off + s:off + s + 512] = data[s:s + 512]
        self.pending.clear()


class Harness:
    """A CacheLog on a SimDisk, driven the way the integrator must drive it, plus a model of
    what was appended in the current history."""

    def __init__(self, size: int = SMALL, max_payload: int = SMALL_MAX):
        self.disk = SimDisk(size)
        self.log, cps = CacheLog.format(size, log_id=0x5EED, max_payload=max_payload)
        for cp in cps:
            self.disk.write(cp.write)
        self.disk.flush()
        for cp in cps:
            self.log.persisted(cp)
        self.model: dict[int, tuple[int, int, bytes, int]] = {}
        self.counter = 0
        self.sb_inflight = None

    def append(self, lvid: int, offset: int, length: int) -> Appended | Full:
        self.counter += 1
        payload = payload_for(self.counter, length)
        result = self.log.append(lvid, offset, payload)
        if isinstance(result, Appended):
            for w in result.writes:
                self.disk.write(w)
            self.log.write_done(result.seq)
            self.model[result.seq] = (lvid, offset, payload, result.epoch)
        return result

    def flush(self) -> None:
        mark = self.log.flush_mark()
        self.disk.flush()
        self.log.flush_done(mark)
        if self.sb_inflight is not None:
            self.log.persisted(self.sb_inflight)
            self.sb_inflight = None

    def checkpoint(self) -> None:
        if self.sb_inflight is None:
            self.sb_inflight = self.log.checkpoint()
            self.disk.write(self.sb_inflight.write)

    def persist(self) -> None:
        self.checkpoint()
        self.flush()

    def recover(self, **kw):
        return recover_image(self.disk.stable, **kw)

    def reopen(self, rec) -> None:
        self.log, cp = CacheLog.open(rec)
        self.disk.write(cp.write)
        self.disk.flush()
        self.sb_inflight = None
        assert self.log.persisted(cp) and self.log.ready
        self.model = {s: v for s, v in self.model.items() if s < rec.next_seq}

    def payload(self, rec: RecordInfo) -> bytes:
        return bytes(self.disk.stable[rec.payload_offset:rec.payload_offset + rec.length])

    def check_records(self, records: list[RecordInfo]) -> None:
        """Each replayed record is the one appended with that seq, payload included."""
        for rec in records:
            lvid, offset, payload, epoch = self.model[rec.seq]
            assert (rec.lvid, rec.offset, rec.length, rec.epoch) == \
                (lvid, offset, len(payload), epoch)
            assert self.payload(rec) == payload


def seqs(records) -> list[int]:
    return [r.seq for r in records]


# ------------------------------------------------------------------------------------------------
# format
# ------------------------------------------------------------------------------------------------


def test_superblock_round_trip_and_corruption():
    sb = Superblock(5, 99, 1 << 22, 1 << 20, 3, 2, 8192, 17, 4)
    raw = sb.encode()
    assert len(raw) == SB_SLOT and Superblock.decode(raw) == sb
    for i in (0, 9, 30, 67):
        bad = bytearray(raw)
        bad[i] ^= 0x40
        assert Superblock.decode(bad) is None
    assert Superblock.decode(raw[:40]) is None
    area = bytearray(SUPERBLOCK_AREA)
    area[SB_SLOT:] = raw  # generation 5 belongs in slot 1
    assert newest_superblock(area) == sb
    assert newest_superblock(area, device_size=1 << 21) is None  # larger than the device
    area[:SB_SLOT] = raw  # an odd generation in slot 0 is not plausible
    older = Superblock(4, 99, 1 << 22, 1 << 20, 3, 3, 0, 1, 1)
    area[:SB_SLOT] = older.encode()
    assert newest_superblock(area) == sb


def test_format_append_recover_round_trip():
    h = Harness()
    appended = [h.append(lvid, off, n) for lvid, off, n in
                [(1, 0, 512), (2, 4096, 4096), (1, 512, 1536), (3, 1 << 40, SMALL_MAX)]]
    assert [a.seq for a in appended] == [1, 2, 3, 4]
    h.flush()
    rec = h.recover()
    assert rec.ok and rec.stop_reason == "end"
    assert seqs(rec.records) == [1, 2, 3, 4] and rec.next_seq == 5
    assert rec.head_pos == sum(image_size(len(v[2])) for v in h.model.values())
    h.check_records(rec.records)
    for r in rec.records:
        assert r.device_offset % BLOCK == 0 and r.payload_offset == r.device_offset + HEADER_BLOCK


def test_chunked_scan_matches_whole_scan():
    h = Harness()
    for i in range(12):
        h.append(0, i * 512, 512 * (1 + i % 16))
        if i % 3 == 2:
            h.log.release(h.log.tail_seq)
            h.persist()
    h.flush()
    whole = h.recover()
    small = h.recover(read_size=1)
    assert whole == small and len(whole.records) >= 4


def test_geometry_and_append_errors():
    with pytest.raises(ValueError):
        CacheLog.format(AREA_START + 8 * KiB)
    with pytest.raises(ValueError):
        CacheLog.format(SMALL, max_payload=64 * KiB)  # two such records do not fit
    log, cps = CacheLog.format(SMALL, max_payload=SMALL_MAX)
    with pytest.raises(RuntimeError):  # superblock not yet durable
        log.append(0, 0, bytes(512))
    log.persisted(cps[1])
    with pytest.raises(RecordTooLarge):
        log.append(0, 0, bytes(SMALL_MAX + 512))
    with pytest.raises(ValueError):
        log.append(0, 0, b"")
    with pytest.raises(ValueError):
        log.append(-1, 0, bytes(512))
    assert isinstance(log.append(0, 0, bytes(SMALL_MAX)), Appended)


def test_garbage_is_not_a_log_and_open_refuses_it():
    for image in (bytes(SMALL), random.Random(1).randbytes(SMALL)):
        rec = recover_image(image)
        assert not rec.ok and rec.records == [] and rec.stop_reason == "no valid superblock"
        with pytest.raises(ValueError):
            CacheLog.open(rec)
    scan = Scanner(b"short")
    assert scan.next_read() is None and not scan.result().ok


# ------------------------------------------------------------------------------------------------
# accounting, release, back-pressure
# ------------------------------------------------------------------------------------------------


def test_accounting_and_release():
    h = Harness()
    log, area = h.log, 64 * KiB
    assert (log.used_bytes, log.free_bytes, log.fill_percent) == (0, area, 0.0)
    for _ in range(4):
        h.append(0, 0, 4096)  # 8 KiB each (header block + payload, 4 KiB aligned)
    assert log.used_bytes == log.pending_bytes == 32 * KiB
    assert log.fill_percent == 50.0 and log.above_hwm(50) and not log.above_hwm(51)
    cp = log.release(2)
    assert cp is not None and cp.superblock.tail_seq == 3 and log.tail_seq == 3
    assert log.pending_bytes == 16 * KiB and log.reclaimable_bytes == 16 * KiB
    assert log.used_bytes == 32 * KiB  # not reusable until the new tail is durable
    h.disk.write(cp.write)
    h.disk.flush()
    assert log.persisted(cp)
    assert (log.used_bytes, log.reclaimable_bytes, log.free_bytes) == (16 * KiB, 0, 48 * KiB)
    assert not log.persisted(cp)  # an old checkpoint changes nothing
    assert log.release(2) is None
    assert seqs(log.pending()) == [3, 4]


def test_full_is_back_pressure_until_the_release_is_durable():
    h = Harness()
    appended = 0
    while isinstance(result := h.append(0, 0, SMALL_MAX), Appended):
        appended += 1
    assert isinstance(result, Full) and appended == 5  # five 12 KiB records in 64 KiB
    assert result.needed == 4 * KiB + image_size(SMALL_MAX)  # a pad to the end, then it
    assert result.free == 4 * KiB
    assert result.reclaimable == 0
    h.log.release(2)
    again = h.append(0, 0, SMALL_MAX)
    assert isinstance(again, Full) and again.reclaimable == 24 * KiB
    h.persist()
    assert isinstance(h.append(0, 0, SMALL_MAX), Appended)  # the pad and the record
    h.flush()
    rec = h.recover()
    assert seqs(rec.records) == [3, 4, 5, 6]
    h.check_records(rec.records)


def test_durable_seq_follows_contiguous_completed_writes():
    log, cps = CacheLog.format(SMALL, max_payload=SMALL_MAX)
    log.persisted(cps[1])
    for _ in range(3):
        log.append(0, 0, bytes(512))
    log.write_done(2)
    log.write_done(3)
    mark = log.flush_mark()
    assert mark == 0  # record 1 is still being written
    log.flush_done(mark)
    assert log.sendable() == []
    log.write_done(1)
    log.flush_done(log.flush_mark())
    assert log.durable_seq == 3 and seqs(log.sendable()) == [1, 2, 3]


def test_barrier_starts_a_new_epoch_only_after_a_record():
    h = Harness()
    first = h.log.epoch
    assert h.log.barrier() == first  # nothing to order yet
    h.append(0, 0, 512)
    assert h.log.barrier() == first + 1 == h.log.barrier()
    h.append(0, 0, 512)
    h.flush()
    rec = h.recover()
    assert [r.epoch for r in rec.records] == [first, first + 1]
    h.reopen(rec)
    assert h.log.epoch == first + 2  # a restart is an ordering point too


# ------------------------------------------------------------------------------------------------
# wrap-around and recovery
# ------------------------------------------------------------------------------------------------


def test_wrap_around_many_laps():
    h = Harness()
    rnd = random.Random(3)
    laps_checked = 0
    for i in range(600):
        result = h.append(rnd.randrange(3), rnd.randrange(64) * 512, 512 * rnd.randint(1, 16))
        if isinstance(result, Full):
            h.log.release(h.log.tail_seq + rnd.randrange(3))
            h.persist()
            continue
        if i % 25 == 0:
            h.flush()
            rec = h.recover()
            assert seqs(rec.records) == list(range(h.log.tail_seq, h.log.next_seq))
            h.check_records(rec.records)
            laps_checked += 1
    assert h.log.next_seq > 300
    assert h.log._head_pos > 20 * h.log.area_size  # many laps, across the end each time
    assert laps_checked > 10


def test_torn_record_at_the_head_ends_the_log():
    h = Harness()
    for n in (512, 4096, 1024, 2048):
        h.append(1, 0, n)
    h.flush()
    last = h.recover().records[-1]
    image = bytes(h.disk.stable)
    for damage in ("payload", "header", "truncated"):
        h.disk.stable[:] = image
        if damage == "payload":
            h.disk.stable[last.payload_offset + 700] ^= 1
        elif damage == "header":
            h.disk.stable[last.device_offset + 20] ^= 1
        else:  # only the first sector of the record made it
            h.disk.stable[last.device_offset + 512:last.device_offset + image_size(2048)] = \
                bytes(image_size(2048) - 512)
        rec = h.recover()
        assert seqs(rec.records) == [1, 2, 3], damage
        assert rec.head_pos == last.pos and rec.next_seq == 4
        h.check_records(rec.records)


def test_stale_record_from_a_previous_lap_is_not_replayed():
    h = Harness()
    for _ in range(7):  # 8 KiB each: fill 56 of the 64 KiB
        h.append(0, 0, 4096)
    h.log.release(7)
    h.persist()
    for _ in range(2):  # seq 8 ends the lap, seq 9 overwrites old seq 1
        h.append(0, 0, 4096)
    h.flush()
    rec = h.recover()
    assert seqs(rec.records) == [8, 9]
    assert rec.stop_reason == "stale record"  # old seq 2 sits right after seq 9
    assert rec.records[1].device_offset == AREA_START
    h.check_records(rec.records)


def test_abandoned_record_after_a_crash_is_not_replayed():
    h = Harness()
    for _ in range(3):
        h.append(0, 0, 4096)
    h.flush()
    second = h.recover().records[1]
    h.disk.stable[second.payload_offset] ^= 0xFF  # record 2 torn, record 3 intact
    rec = h.recover()
    assert seqs(rec.records) == [1]
    h.reopen(rec)
    h.append(5, 512, 4096)  # the new record 2 lands where the old one was
    h.flush()
    rec = h.recover()
    assert seqs(rec.records) == [1, 2] and rec.records[1].lvid == 5
    assert rec.stop_reason == "record of an abandoned incarnation"  # old 3 is not its successor
    h.check_records(rec.records)


def test_abandoned_record_at_the_released_tail_is_not_replayed():
    h = Harness()
    for _ in range(3):
        h.append(0, 0, 512)
    h.flush()
    h.disk.stable[h.recover().records[1].payload_offset] ^= 1  # 2 torn, 3 intact
    h.reopen(h.recover())
    h.append(0, 0, 512)  # the new record 2, where the old one was
    h.log.release(2)
    h.persist()  # the tail now points at the old record 3, of the abandoned incarnation
    rec = h.recover()
    assert rec.records == [] and rec.superblock.tail_seq == 3
    assert rec.stop_reason == "record of an abandoned incarnation"


def test_record_claiming_another_lap_is_stale_even_with_a_valid_checksum():
    h = Harness()
    h.append(0, 0, 512)
    h.append(0, 0, 512)
    h.flush()
    second = h.recover().records[1]
    fields = list(RECORD_HEADER.unpack_from(h.disk.stable, second.device_offset))
    fields[6] += h.log.area_size  # pos
    raw = RECORD_HEADER.pack(*fields)[:-4]
    crc = zlib.crc32(h.payload(second), zlib.crc32(raw))
    h.disk.stable[second.device_offset:second.device_offset + RECORD_HEADER.size] = \
        raw + crc.to_bytes(4, "big")
    rec = h.recover()
    assert seqs(rec.records) == [1] and rec.stop_reason == "stale record"


def test_torn_superblock_write_recovers_from_the_other_copy():
    h = Harness()
    for _ in range(4):
        h.append(0, 0, 4096)
    h.log.release(1)
    h.persist()  # durable: tail at seq 2
    durable = h.log.superblock
    h.log.release(3)
    h.checkpoint()
    off, data = h.sb_inflight.write
    assert off != durable.slot_offset  # the other slot
    torn = bytearray(data)
    torn[40] ^= 0x10
    h.disk.pending[-1] = (off, bytes(torn))
    h.disk.flush()
    rec = h.recover()
    assert rec.superblock == durable and seqs(rec.records) == [2, 3, 4]
    h.disk.stable[durable.slot_offset + 3] ^= 1  # both copies bad: not a log, no exception
    assert not h.recover().ok


def test_recovery_from_an_older_persisted_tail_replays_in_order():
    h = Harness()
    for i in range(6):
        h.append(i % 2, 0, 512 * (i + 1))
    h.log.release(2)
    h.persist()
    h.log.release(5)  # the remote has 3..5, but the tail stays lazily at 3
    h.flush()
    rec = h.recover()
    assert rec.superblock.tail_seq == 3 and seqs(rec.records) == [3, 4, 5, 6]
    h.check_records(rec.records)
    assert h.log.used_bytes == rec.records[-1].end_pos - rec.records[0].pos


# ------------------------------------------------------------------------------------------------
# property tests: crashes at random points
# ------------------------------------------------------------------------------------------------

# (kind, argument) pairs: kind < 50 append, < 65 flush, < 78 release, < 88 checkpoint,
# < 93 barrier, else crash; the argument picks the append's shape, the release's distance or
# the crash's fate
ops_strategy = st.lists(st.tuples(st.integers(0, 99), st.integers(0, 2**32)), min_size=10,
                        max_size=200)


def crash_and_check(h: Harness, seed: int) -> None:
    """Power loss; the replay is a gap-free run of appended records from the persisted tail
    holding every flushed unreleased record; then the log continues in a new incarnation."""
    exact = not h.disk.pending
    flushed, tail, durable_tail = h.log.durable_seq, h.log.tail_seq, h.log.superblock.tail_seq
    last = h.log.next_seq - 1
    h.disk.power_loss(random.Random(seed))
    rec = h.recover()
    got = seqs(rec.records)
    assert rec.ok
    assert durable_tail <= rec.superblock.tail_seq <= tail
    start = rec.superblock.tail_seq
    assert got == list(range(start, start + len(got)))  # in order, never after a gap
    assert start + len(got) - 1 >= flushed  # nothing flushed and unreleased is lost
    assert start + len(got) - 1 <= last
    if exact:
        assert got == list(range(durable_tail, last + 1))
    h.check_records(rec.records)
    h.reopen(rec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops_strategy, st.integers(0, 2**32))
def test_random_appends_releases_and_crashes(ops, final_seed):
    h = Harness()
    for kind, arg in ops:
        if kind < 50:
            result = h.append(arg % 3, (arg >> 2) % 64 * 512, (arg >> 8) % 16 * 512 + 512)
            if isinstance(result, Full):
                assert result.free < result.needed
        elif kind < 65:
            h.flush()
        elif kind < 78:
            h.log.release(h.log.tail_seq + arg % 7 - 1)
        elif kind < 88:
            h.checkpoint()
        elif kind < 93:
            h.log.barrier()
        else:
            crash_and_check(h, arg)
    crash_and_check(h, final_seed)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.tuples(st.integers(0, SMALL - 1), st.integers(0, 255)),
                                       max_size=8))
def test_corrupt_bytes_never_raise_and_only_end_the_log(seed, flips):
    h = Harness()
    rnd = random.Random(seed)
    for _ in range(rnd.randrange(30)):
        if isinstance(h.append(0, 0, 512 * rnd.randint(1, 16)), Full):
            h.log.release(h.log.tail_seq)
            h.persist()
    h.flush()
    for where, value in flips:
        h.disk.stable[where] = value
    rec = h.recover(read_size=rnd.choice([BLOCK, 1 << 20]))
    got = seqs(rec.records)
    if got:
        assert got == list(range(got[0], got[0] + len(got)))
    h.check_records(rec.records)  # a flipped record fails its checksum: never replayed


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=3 * BLOCK), st.integers(0, 3))
def test_random_bytes_never_raise(blob, slot):
    image = bytearray(SMALL)
    image[:len(blob)] = blob
    sb = Superblock(slot, 1, SMALL, SMALL_MAX, 1, 1, 0, 1, 1)
    image[sb.slot_offset:sb.slot_offset + SB_SLOT] = sb.encode()
    image[AREA_START:AREA_START + len(blob)] = blob
    rec = recover_image(image)
    assert rec.ok and rec.records == []


# ------------------------------------------------------------------------------------------------
# ordering helpers
# ------------------------------------------------------------------------------------------------


def rec_info(seq: int, epoch: int, lvid: int, offset: int, length: int) -> RecordInfo:
    return RecordInfo(seq, epoch, lvid, offset, length, 0, AREA_START, 1)


def test_batches_example():
    recs = [rec_info(1, 1, 0, 0, 4096), rec_info(2, 1, 0, 4096, 4096),
            rec_info(3, 1, 0, 2048, 4096), rec_info(4, 1, 1, 0, 4096),
            rec_info(5, 1, 0, 8192, 512), rec_info(6, 2, 0, 100000, 512)]
    assert [seqs(b) for b in batches(recs)] == [[1, 2, 4, 5], [3], [6]]
    # 5 shares no byte with 1..4; 3 overlaps both 1 and 2; epoch 2 waits for epoch 1
    chained = [rec_info(1, 1, 0, 0, 1024), rec_info(2, 1, 0, 1000, 1024),
               rec_info(3, 1, 0, 0, 512)]
    assert [seqs(b) for b in batches(chained)] == [[1], [2, 3]]  # 3 overlaps 1 only


def test_superseded_example():
    recs = [rec_info(1, 1, 0, 0, 4096), rec_info(2, 1, 0, 0, 2048),
            rec_info(3, 1, 0, 2048, 2048), rec_info(4, 1, 1, 0, 512),
            rec_info(5, 2, 1, 0, 512)]
    # 1 is covered by 2+3 within epoch 1; 4 is covered only by epoch 2's record 5
    assert superseded(recs) == {1}


records_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 40), st.integers(1, 8)),
    max_size=60,
).map(lambda rows: [
    rec_info(i + 1, sum(r[0] == 0 for r in rows[:i + 1]), r[1], r[2] * 512, r[3] * 512)
    for i, r in enumerate(rows)])


@settings(max_examples=300, deadline=None)
@given(records_strategy, st.randoms(use_true_random=False))
def test_batches_order_overlaps_and_epochs(recs, rnd):
    out = list(batches(recs))
    assert sorted(r.seq for b in out for r in b) == seqs(recs)
    where = {r.seq: i for i, b in enumerate(out) for r in b}
    for b in out:
        assert len({r.epoch for r in b}) == 1
        assert not any(x.overlaps(y) for x in b for y in b if x is not y)
    assert [b[0].epoch for b in out] == sorted(b[0].epoch for b in out)
    for x in recs:
        for y in recs:
            if x.seq < y.seq and x.overlaps(y):
                assert where[x.seq] < where[y.seq]
    # applying each batch in any order inside it gives what applying in seq order gives
    def apply(order):
        disk = {}
        for r in order:
            for sector in range(r.offset // 512, r.end // 512):
                disk[(r.lvid, sector)] = r.seq
        return disk
    shuffled = []
    for b in out:
        shuffled += rnd.sample(b, len(b))
    assert apply(shuffled) == apply(recs)


@settings(max_examples=200, deadline=None)
@given(records_strategy)
def test_superseded_matches_brute_force(recs):
    expected = set()
    for x in recs:
        covered = {s for y in recs if y.seq > x.seq and y.epoch == x.epoch and y.lvid == x.lvid
                   for s in range(y.offset // 512, y.end // 512)}
        if set(range(x.offset // 512, x.end // 512)) <= covered:
            expected.add(x.seq)
    assert superseded(recs) == expected


# ------------------------------------------------------------------------------------------------
# the async adapter
# ------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_adapter_format_append_release_reopen():
    disk = MemDisk("cachelv", size=SMALL)
    cache = await CacheLogDevice.format(disk, log_id=11, max_payload=SMALL_MAX)
    data = [payload_for(i, 512 * (i + 1)) for i in range(4)]
    got = [await cache.append(7, i * 4096, d) for i, d in enumerate(data)]
    assert got == [1, 2, 3, 4]
    cache.barrier()
    await cache.flush()
    assert seqs(cache.log.sendable()) == [1, 2, 3, 4]
    await cache.release(2)
    assert cache.log.superblock.tail_seq == 3  # persisted
    reopened, rec = await CacheLogDevice.open(disk, read_size=BLOCK)
    assert seqs(rec.records) == [3, 4] and reopened.log.ready
    assert [await reopened.read_payload(r) for r in rec.records] == data[2:]
    assert await reopened.append(7, 0, data[0]) == 5


@pytest.mark.asyncio
async def test_adapter_append_waits_for_space():
    disk = MemDisk("cachelv", size=SMALL)
    cache = await CacheLogDevice.format(disk, log_id=12, max_payload=SMALL_MAX)
    for _ in range(5):
        await cache.append(0, 0, bytes(SMALL_MAX))
    waiter = asyncio.create_task(cache.append(0, 0, bytes(SMALL_MAX)))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # back-pressure, not an error
    await cache.release(2)
    assert await asyncio.wait_for(waiter, 1) == 6
    rec = recover_image(disk.buf)
    assert seqs(rec.records) == [3, 4, 5, 6]
