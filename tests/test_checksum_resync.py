"""Checksum-based resync with in-memory disks: a wholly stale PP is compared by 64 KiB digests
computed where each copy lives and only the chunks that differ are copied; precisely tracked
chunks are copied directly; a write that arrives while a run is being compared is not lost."""

from __future__ import annotations

import asyncio
import os

from lvm.layout import pp_offset
from lvm.metadata import CHUNK
from rpv.checksum import chunk_digests
from tests.helpers.disks import MemDisk
from tests.helpers.memsite import MemSite

MiB = 1 << 20
PP = 4 * MiB
LPS = 4


class ChecksumDisk(MemDisk):
    """A MemDisk that computes digests itself (as FileDisk and the RPV client do), counting
    the bytes it checksummed and the data (not metadata) bytes written to it; ``gate``, when
    set, holds every checksum until it is opened."""

    def __init__(self, name: str, size: int = 64 * MiB):
        super().__init__(name, size)
        self.checksummed = 0
        self.written = 0
        self.gate: asyncio.Event | None = None
        self.checking = asyncio.Event()
        self.flushes = 0

    async def checksum(self, offset: int, length: int) -> bytes:
        self._check()
        self.checking.set()
        if self.gate is not None:
            await self.gate.wait()
        self.checksummed += length
        return chunk_digests(self.buf[offset:offset + length])

    async def flush(self) -> None:
        self.flushes += 1
        await super().flush()

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        if offset >= pp_offset(0, PP):  # data, not metadata (VGDA, VGSA, DRL)
            self.written += len(data)
        await super().write(offset, data, fua)


async def mirrored_vg(site: MemSite):
    site.add_disk("hdisk1")
    site.add_disk("hdisk2", disk=ChecksumDisk("hdisk2"))
    mgr = site.manager()
    await mgr.mkvg("datavg", ["hdisk1", "hdisk2"])
    await mgr.lv.mklv("datalv", "datavg", LPS, copies=2)
    group, vol = mgr.find_lv("datalv")
    data = os.urandom(LPS * PP)
    await vol.write(0, data)
    await vol.flush()
    return mgr, group, vol, data


def copy_of(site: MemSite, group, vol, copy: int) -> bytes:
    out = []
    for lp in range(vol.entry.lps):
        index, pp = vol.entry.maps[copy][lp]
        start = pp_offset(pp, group.vgda.pp_size)
        out.append(bytes(site.disk_objs[group.pv_name(index)].buf[start:start + PP]))
    return b"".join(out)


def poke(site: MemSite, group, vol, copy: int, lp: int, within: int, data: bytes) -> None:
    index, pp = vol.entry.maps[copy][lp]
    start = pp_offset(pp, group.vgda.pp_size) + within
    site.disk_objs[group.pv_name(index)].buf[start:start + len(data)] = data


async def whole_stale(group, vol, copy: int = 1) -> None:
    """What a flush failure or a missing PV leaves: every PP of the copy wholly stale."""
    for lp in range(vol.entry.lps):
        group.mark_stale(vol.entry.maps[copy][lp], None)
    await group.settle()


def test_identical_chunks_are_skipped_and_differing_ones_copied():
    async def main():
        site = MemSite()
        mgr, group, vol, data = await mirrored_vg(site)
        dst = site.disk_objs["hdisk2"]
        await whole_stale(group, vol)
        # the copy really missed three chunks (two adjacent) and one partial chunk
        poke(site, group, vol, 1, 0, 5 * CHUNK, os.urandom(2 * CHUNK))
        poke(site, group, vol, 1, 2, 17 * CHUNK + 100, b"x" * 10)
        dst.written = dst.checksummed = 0
        result = await mgr.lv.syncvg(vg="datavg")
        assert result["failed"] == [] and result["pps_done"] == LPS
        assert result["chunks_copied"] == 3 and result["bytes"] == 3 * CHUNK
        assert result["chunks_skipped"] == LPS * PP // CHUNK - 3
        assert result["bytes_skipped"] == LPS * PP - 3 * CHUNK
        assert result["bytes_compared"] == LPS * PP
        assert dst.written == 3 * CHUNK  # nothing else went to the stale copy
        assert dst.checksummed == LPS * PP  # its digests were computed where it lives
        assert group.vgsa.stale == {}
        assert copy_of(site, group, vol, 1) == copy_of(site, group, vol, 0) == data
        assert (await mgr.lsvg("datavg"))["last_resync"]["chunks_skipped"] == \
            result["chunks_skipped"]
    asyncio.run(main())


def test_nothing_changed_nothing_copied_but_the_copy_is_flushed_before_it_is_fresh():
    """Skipped chunks may sit unflushed in the copy's page cache: the destination is flushed
    before the VGSA forgets the stale PPs, as after a copy."""
    async def main():
        site = MemSite()
        mgr, group, vol, data = await mirrored_vg(site)
        dst = site.disk_objs["hdisk2"]
        await whole_stale(group, vol)
        dst.flushes = dst.written = 0
        flushed_when_fresh = []
        commit = group.commit_vgsa

        async def commit_vgsa():
            if not group.vgsa.stale:
                flushed_when_fresh.append(dst.flushes)
            await commit()

        group.commit_vgsa = commit_vgsa
        result = await mgr.lv.syncvg(vg="datavg")
        assert result["bytes"] == 0 and result["chunks_skipped"] == LPS * PP // CHUNK
        assert dst.written == 0 and group.vgsa.stale == {}
        assert flushed_when_fresh and flushed_when_fresh[0] >= 1
    asyncio.run(main())


def test_tracked_chunks_are_copied_without_comparing():
    async def main():
        site = MemSite()
        mgr, group, vol, data = await mirrored_vg(site)
        dst = site.disk_objs["hdisk2"]
        group.mark_stale(vol.entry.maps[1][1], {3, 4, 9})  # precisely tracked: known to differ
        await group.settle()
        dst.written = dst.checksummed = 0
        result = await mgr.lv.syncvg(vg="datavg")
        assert result["bytes"] == 3 * CHUNK and result["chunks_copied"] == 3
        assert result["chunks_skipped"] == 0 and result["bytes_compared"] == 0
        assert dst.checksummed == 0 and dst.written == 3 * CHUNK
        assert group.vgsa.stale == {}
        assert copy_of(site, group, vol, 1) == data
    asyncio.run(main())


def test_checksum_off_copies_everything():
    async def main():
        from lvm.resync import resync
        site = MemSite()
        mgr, group, vol, data = await mirrored_vg(site)
        await whole_stale(group, vol)
        result = await resync(group, checksum=False)
        assert result["bytes"] == LPS * PP and result["chunks_skipped"] == 0
        assert copy_of(site, group, vol, 1) == data
    asyncio.run(main())


def test_a_write_during_the_check_is_not_lost():
    async def main():
        site = MemSite()
        mgr, group, vol, data = await mirrored_vg(site)
        dst = site.disk_objs["hdisk2"]
        await whole_stale(group, vol)
        dst.gate = asyncio.Event()
        dst.checking.clear()
        sync = asyncio.ensure_future(mgr.lv.syncvg(vg="datavg"))
        await asyncio.wait_for(dst.checking.wait(), 5)
        # digests of the first runs are being computed: an application write into LP 1
        new = os.urandom(CHUNK)
        write = asyncio.ensure_future(vol.write(CHUNK, new))
        await asyncio.sleep(0.01)
        assert not write.done()  # the comparison holds the range lock, as a copy does
        dst.gate.set()
        await write
        result = await sync
        assert result["failed"] == []
        # whatever the order, the written chunk was not skipped on the strength of old digests
        if group.vgsa.stale:
            result = await mgr.lv.syncvg(vg="datavg")
        assert group.vgsa.stale == {}
        expect = data[:CHUNK] + new + data[2 * CHUNK:]
        assert copy_of(site, group, vol, 0) == expect
        assert copy_of(site, group, vol, 1) == expect
        assert (await mgr.lv.verify(vg="datavg"))["mismatches"] == []
    asyncio.run(main())


def test_a_write_after_the_comparison_goes_round_again():
    """A write to a wholly stale PP lands after its run was compared and found identical:
    the PP goes back in the queue and the chunk is copied on the next pass."""
    async def main():
        site = MemSite()
        mgr, group, vol, data = await mirrored_vg(site)
        dst = site.disk_objs["hdisk2"]
        await whole_stale(group, vol)
        seen = asyncio.Event()
        orig = dst.checksum
        new = os.urandom(CHUNK)
        writes: list[asyncio.Future] = []

        async def checksum(offset, length):
            out = await orig(offset, length)
            if not seen.is_set():  # after the first digests, before the decision
                seen.set()
                writes.append(asyncio.ensure_future(vol.write(0, new)))
            return out

        dst.checksum = checksum
        result = await mgr.lv.syncvg(vg="datavg")
        await asyncio.gather(*writes)
        assert result["failed"] == [] and group.vgsa.stale == {}
        expect = new + data[CHUNK:]
        assert copy_of(site, group, vol, 0) == expect
        assert copy_of(site, group, vol, 1) == expect
    asyncio.run(main())


def test_a_failed_checksum_falls_back_to_copying():
    async def main():
        site = MemSite()
        mgr, group, vol, data = await mirrored_vg(site)
        dst = site.disk_objs["hdisk2"]
        await whole_stale(group, vol)

        async def broken(offset, length):
            raise OSError(5, "checksum failed")

        dst.checksum = broken
        result = await mgr.lv.syncvg(vg="datavg")
        assert result["failed"] == [] and result["bytes"] == LPS * PP
        assert result["chunks_skipped"] == 0
        assert group.vgsa.stale == {} and copy_of(site, group, vol, 1) == data
    asyncio.run(main())


def test_a_failed_pv_has_what_it_took_unflushed_compared_not_recopied():
    """The copy took a whole LP of writes, then failed before a flush: everything it took is
    marked stale (a set of all the chunks), though it still holds it. Only the chunks written
    while it was missing cross over."""
    async def main():
        site = MemSite()
        mgr, group, vol, _ = await mirrored_vg(site)
        dst = site.disk_objs["hdisk2"]
        data = os.urandom(2 * PP)
        await vol.write(0, data)  # taken by both copies, not flushed
        dst.fail = True
        late = os.urandom(CHUNK)
        await vol.write(PP + 8 * CHUNK, late)  # fails on the copy: PV missing, marks stale
        assert {loc for loc in group.vgsa.stale} >= {vol.entry.maps[1][0], vol.entry.maps[1][1]}
        assert all(ch is not None and len(ch) == PP // CHUNK
                   for loc, ch in group.vgsa.stale.items())
        dst.fail = False
        await mgr.chpv("hdisk2", "a")
        dst.written = dst.checksummed = 0
        result = await mgr.lv.syncvg(vg="datavg")
        assert result["failed"] == [] and group.vgsa.stale == {}
        assert result["chunks_copied"] == 1 and dst.written == CHUNK
        assert result["chunks_skipped"] == 2 * PP // CHUNK - 1
        assert copy_of(site, group, vol, 1) == copy_of(site, group, vol, 0)
    asyncio.run(main())
