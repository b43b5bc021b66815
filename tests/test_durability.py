"""Durability when machines fail (DESIGN invariants 1 and 10), against in-memory disks and a
real in-process RPV server: what a PV took since its last completed flush is marked stale
when the PV stops being usable or its server turns out to be a new instance; nothing is
acknowledged while the VGSA in memory is ahead of the disk; EIO comes only after the
accounting; a replaced link resends what was in flight; a lower io_timeout applies at once.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

from lvm.layout import DATA_START, Kind
from lvm.metadata import CHUNK, PV_ACTIVE, PV_MISSING, VGDA, VGSA, LVEntry, PVEntry
from lvm.scheduler import ResyncScheduler
from lvm.vg import VolumeGroup
from lvm.volume import LogicalVolume
from rpv.client.device import RPVClient
from rpv.server.server import Limits
from tests.helpers.disks import PageCacheDisk, ReadOnlyMemDisk, RemoteMemDisk
from tests.helpers.mirror_lv import LOCAL, PP, REMOTE, make_lv, vgsa_on
from tests.helpers.rpv_server import PVID, port_of, start_server
from tests.helpers.waits import settle

MiB = 1 << 20


def stale_on(disk, pv: int, pp: int):
    """The stale chunks the VGSA on ``disk`` records for (pv, pp), or False if none."""
    for spv, spp, chunks in vgsa_on(disk).get("stale", []):
        if (spv, spp) == (pv, pp):
            return None if chunks is None else set(chunks)
    return False


def pv_state_on(disk, pvid: str) -> str:
    return vgsa_on(disk)["pv_state"].get(pvid, PV_ACTIVE)


# -- defect 1: a server that restarted between a write and a flush ----------------------------

@pytest.mark.asyncio
async def test_restarted_server_marks_unflushed_writes_stale_before_the_flush_is_acked():
    local, remote = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    vg = lv.vg
    await lv.write(0, b"a" * 4096)  # acknowledged by both copies, not flushed
    await lv.write(3 * CHUNK, b"b" * 8192)
    vg.server_restarted(REMOTE, rebooted=True)
    assert vg.vgsa_ahead  # known in memory, not yet on disk: nothing may be acknowledged
    assert not lv.write_inline(8 * CHUNK, b"c" * 4096, False, lambda e: None)
    await lv.flush()
    assert not vg.vgsa_ahead
    assert stale_on(local, REMOTE, 0) == {0, 3}  # exactly the chunks it may have lost
    assert stale_on(remote, REMOTE, 0) == {0, 3}  # its own VGSA says so too
    assert stale_on(local, LOCAL, 0) is False
    assert vg.usable(REMOTE)  # the PV stays in use; resync brings the chunks back


@pytest.mark.asyncio
async def test_flushed_writes_are_not_marked_when_the_server_restarts():
    local, remote = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    await lv.write(0, b"a" * 4096)
    await lv.flush()
    await lv.write(PP + 5 * CHUNK, b"b" * 4096)  # LP 2, after the flush
    lv.vg.server_restarted(REMOTE, rebooted=False)
    await lv.flush()
    assert stale_on(local, REMOTE, 0) is False
    assert stale_on(local, REMOTE, 1) == {5}


@pytest.mark.asyncio
async def test_unflushed_tracking_is_bounded_by_a_background_flush():
    local, remote = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    vg = lv.vg
    vg.unflushed_max_pps = 1  # a PV may hold unflushed writes in one partition only
    await lv.write(0, b"a" * 4096)
    assert remote.flushes == 0 and set(vg.unflushed[REMOTE]) == {0}
    await lv.write(PP, b"b" * 4096)  # a second partition: a flush of each PV starts
    await asyncio.gather(*vg._writeback.values())
    assert remote.flushes == 1 and local.flushes == 1
    assert not vg.unflushed.get(REMOTE) and not vg.unflushed.get(LOCAL)
    vg.server_restarted(REMOTE, rebooted=True)  # nothing left that could be lost
    await lv.flush()
    assert stale_on(local, REMOTE, 0) is False and stale_on(local, REMOTE, 1) is False


# -- defect 2: a PV that fails after a write it acknowledged ---------------------------------

@pytest.mark.asyncio
async def test_pv_that_fails_later_loses_what_it_took_since_its_last_flush():
    local, remote = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    await lv.write(0, b"x" * 4096)  # X: acknowledged on both copies
    remote.fail = True
    await lv.write(2 * CHUNK, b"y" * 4096)  # fails on the remote PV, which goes missing
    await lv.flush()  # flushes only the usable PVs, and succeeds
    assert pv_state_on(local, "b" * 32) == PV_MISSING
    assert stale_on(local, REMOTE, 0) == {0, 2}  # X's chunk too, not only the missed one


@pytest.mark.asyncio
async def test_failed_flush_marks_exactly_the_unflushed_writes():
    local, remote = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    await lv.write(0, b"x" * 4096)
    await lv.flush()
    await lv.write(PP + 7 * CHUNK, b"y" * 4096)

    async def broken_flush():
        raise OSError(errno.EIO, "flush failed")

    remote.flush = broken_flush
    await lv.flush()
    assert stale_on(local, REMOTE, 0) is False  # flushed before: durable
    assert stale_on(local, REMOTE, 1) == {7}
    assert pv_state_on(local, "b" * 32) == PV_MISSING


# -- defect 3: EIO on one LP after others were written ---------------------------------------

class FailingDisk(PageCacheDisk):
    async def write(self, offset, data, fua=False):
        if self.fail:
            raise OSError(errno.EIO, f"{self.name}: injected write error")
        self.write_now(offset, data)

    def write_now(self, offset, data):
        if self.fail:
            raise OSError(errno.EIO, f"{self.name}: injected write error")
        super().write_now(offset, data)


@pytest.mark.asyncio
async def test_eio_on_one_lp_comes_after_the_other_lps_are_accounted():
    a, r, c = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3"), FailingDisk("hdisk2")
    entry = LVEntry("lv00", 1, 2, "y", 0, [[(1, 0), (3, 0)], [(2, 0), (2, 1)]])
    vgda = VGDA("v" * 32, "vg", PP, quorum=False,
                pvs=[PVEntry("a" * 32, 1, 10), PVEntry("b" * 32, 2, 10),
                     PVEntry("c" * 32, 3, 10)], lvs={"lv00": entry})
    vgsa = VGSA()
    vgsa.new_generation("g" * 16, "", 0.0)
    vgsa.current["written"] = True
    vg = VolumeGroup(vgda, vgsa, {1: a, 2: r, 3: c}, {k: 0 for k in Kind},
                     is_local=lambda d: d is not r, quorum_active=False)
    vg.drl_durable = {(1, 0), (1, 1)}
    lv = LogicalVolume(vg, entry)
    vg.lvs = {"lv00": lv}
    r.fail = c.fail = True
    # LP 1 ends on copy 1 (hdisk1, fine) and copy 2 (hdisk3, fails); LP 2 has no copy left
    with pytest.raises(OSError) as exc:
        await lv.write(PP - 4096, b"z" * 8192)
    assert exc.value.errno == errno.EIO
    assert stale_on(a, 2, 0) == {PP // CHUNK - 1}  # LP 1's missed copy: durably stale
    assert pv_state_on(a, "b" * 32) == PV_MISSING and pv_state_on(a, "c" * 32) == PV_MISSING
    assert bytes(a.buf[DATA_START + PP - 4096:DATA_START + PP]) == b"z" * 4096


# -- defect 4: the generation's "written" mark --------------------------------------------------

class GatedDisk(PageCacheDisk):
    """Metadata writes wait for ``gate``; ``arrived`` is set when one is waiting."""

    def __init__(self, name):
        super().__init__(name)
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()

    async def write(self, offset, data, fua=False):
        if offset < DATA_START:
            self.arrived.set()
            await self.gate.wait()
        self.write_now(offset, data)


@pytest.mark.asyncio
async def test_no_writer_is_acknowledged_before_the_written_mark_is_durable():
    local, remote = GatedDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    lv.vg.vgsa.current["written"] = False  # a generation nobody wrote yet (as on disk)
    first = asyncio.ensure_future(lv.write(0, b"1" * 4096))
    await local.arrived.wait()  # the first writer's VGSA commit is on its way
    second = asyncio.ensure_future(lv.write(4 * CHUNK, b"2" * 4096))
    inline_done = []
    assert not lv.write_inline(8 * CHUNK, b"3" * 4096, False, inline_done.append)
    await settle(50)  # let the second writer run as far as it can
    assert not first.done() and not second.done()
    local.gate.set()
    await asyncio.gather(first, second)
    assert vgsa_on(local)["gens"][-1]["written"] is True


# -- defect 6a: syncvg -f during a background resync -----------------------------------------

def test_forced_resync_reaches_the_partitions_a_running_resync_holds():
    local, remote = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    vg = lv.vg
    vg.lvs = {"lv00": lv}
    vg.resyncing[(REMOTE, 0)] = set()  # in the batch a resync is copying now
    ResyncScheduler.force_stale(vg, [lv.entry], None)
    assert vg.resyncing[(REMOTE, 0)] == set(range(PP // CHUNK))  # copied again, not forgotten
    assert vg.vgsa_ahead


# -- the RPV client: a new server instance, a replaced link, a lower io_timeout ------------

class HeldDisk(ReadOnlyMemDisk):
    """Writes land in memory; the first ``hold`` of them wait until released."""

    def __init__(self, size: int, hold: int = 0):
        super().__init__(bytearray(size))
        self.hold = hold
        self.release = asyncio.Event()
        self.all_held = asyncio.Event()
        self.writes = 0
        self.flushes = 0

    async def write(self, offset, data, fua=False):
        self.writes += 1
        if self.writes <= self.hold:
            if self.writes == self.hold:
                self.all_held.set()
            await self.release.wait()
        self.data[offset:offset + len(data)] = data

    async def flush(self):
        self.flushes += 1


@pytest.mark.asyncio
@pytest.mark.parametrize("owner", [False, True])
async def test_new_server_instance_between_write_and_flush(owner):
    disk = HeldDisk(MiB)
    server = await start_server(disk)
    port = port_of(server)
    calls = []
    client = RPVClient("hdisk3", PVID, "127.0.0.1", "127.0.0.1", server_port=port,
                       io_timeout=30,
                       on_new_instance=(lambda c, rebooted: calls.append(rebooted) or True)
                       if owner else None)
    try:
        await client.open(5)
        first = client.instance
        await client.write(0, b"w" * 4096)
        await server.close()  # the daemon goes; a new one answers on the same address
        server = await start_server(disk, port)
        if owner:  # the LVM took it: the flush goes on, on the new instance
            await client.flush()
            assert calls == [False]  # same boot: a daemon restart, not a reboot
        else:  # nobody marked the lost write: the flush must not claim it is durable
            with pytest.raises(OSError) as exc:
                await client.flush()
            assert exc.value.errno == errno.EIO and "restarted" in str(exc.value)
            await client.flush()  # reported once; later flushes cover later writes
        assert client.instance != first
    finally:
        await client.close()
        await server.close()


@pytest.mark.asyncio
async def test_replaced_link_resends_what_was_in_flight():
    disk = HeldDisk(MiB, hold=2)
    server = await start_server(disk, limits=Limits(max_outstanding=2))
    # a second listener for the same disk: its new session does not tear the old one down,
    # as when the old connection's reset is lost on the way (a stalled link, a proxy)
    other = await start_server(disk, limits=Limits(max_outstanding=2))
    client = RPVClient("hdisk3", PVID, "127.0.0.1", "127.0.0.1", server_port=port_of(server),
                       io_timeout=120)
    try:
        await client.open(5)
        writes = [client.submit_write(i * 4096, bytes([65 + i]) * 4096) for i in range(2)]
        await asyncio.wait_for(disk.all_held.wait(), 10)  # both in flight, held by the disk
        client.server_port = port_of(other)
        await client.resume(5)  # chdev -a resume=yes on a busy client: a new link
        await asyncio.wait_for(asyncio.gather(*writes), 10)  # resent at once, not at 120 s
        assert bytes(disk.data[:8192]) == b"A" * 4096 + b"B" * 4096
        assert client.outstanding() == 0
    finally:
        disk.release.set()
        await client.close()
        await server.close()
        await other.close()


@pytest.mark.asyncio
async def test_lower_io_timeout_brings_outstanding_deadlines_forward():
    disk = HeldDisk(MiB, hold=1)
    server = await start_server(disk)
    client = RPVClient("hdisk3", PVID, "127.0.0.1", "127.0.0.1", server_port=port_of(server),
                       io_timeout=600)
    try:
        await client.open(5)
        write = client.submit_write(0, b"x" * 4096)
        client.set_io_timeout(0.3)
        with pytest.raises(OSError) as exc:
            await asyncio.wait_for(write, 10)
        assert exc.value.errno == errno.EIO
    finally:
        disk.release.set()
        await client.close()
        await server.close()


# -- review follow-ups: a last copy, a read that raced a restart, the boots the DRL records --

@pytest.mark.asyncio
async def test_unflushed_loss_never_leaves_an_lp_without_a_fresh_copy():
    local, remote = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    vg = lv.vg
    vg.mark_stale((LOCAL, 0), None)  # LP 1's only fresh copy is the remote one
    await lv.write(0, b"r" * 4096)
    vg.server_restarted(REMOTE, rebooted=True)
    await lv.flush()
    assert stale_on(local, REMOTE, 0) is False  # stale with no source: unreadable for good
    assert await lv.read(0, 4096) == b"r" * 4096


class SlowReadDisk(RemoteMemDisk):
    def __init__(self, name):
        super().__init__(name)
        self.reading = asyncio.Event()
        self.go = asyncio.Event()

    async def read(self, offset, length):
        self.reading.set()
        await self.go.wait()
        return await super().read(offset, length)


@pytest.mark.asyncio
async def test_read_from_a_copy_that_went_stale_meanwhile_is_retried_elsewhere():
    b, c = SlowReadDisk("hdisk3"), RemoteMemDisk("hdisk4")
    entry = LVEntry("lv00", 1, 1, "y", 0, [[(2, 0)], [(3, 0)]])
    vgda = VGDA("v" * 32, "vg", PP, quorum=False,
                pvs=[PVEntry("b" * 32, 2, 10), PVEntry("c" * 32, 3, 10)], lvs={"lv00": entry})
    vgsa = VGSA()
    vgsa.new_generation("g" * 16, "", 0.0)
    vgsa.current["written"] = True
    vg = VolumeGroup(vgda, vgsa, {2: b, 3: c}, {k: 0 for k in Kind},
                     is_local=lambda d: False, quorum_active=False)
    vg.drl_durable = {(1, 0)}
    lv = LogicalVolume(vg, entry)
    vg.lvs = {"lv00": lv}
    await lv.write(0, b"w" * 4096)  # both copies took it, unflushed
    b.go.set()
    await lv.flush()
    b.go.clear()
    await lv.write(0, b"W" * 4096)
    b.buf[DATA_START:DATA_START + 4096] = b"w" * 4096  # B's host lost it...
    read = asyncio.ensure_future(lv.read(0, 4096))
    await b.reading.wait()  # ...while a read was out to it
    vg.server_restarted(2, rebooted=True)
    b.go.set()
    assert await read == b"W" * 4096  # retried on C, not B's old data


def test_dirty_region_log_records_a_new_boot_only_once_the_losses_are_durable():
    local, remote = PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk3")
    lv = make_lv(local, remote)
    vg = lv.vg
    remote.instance = bytes(range(16))
    before = vg.host_boots()[str(REMOTE)]
    remote.instance = bytes(range(16, 32))  # the server came back after a reboot
    vg.server_restarted(REMOTE, rebooted=True)
    assert vg.host_boots()[str(REMOTE)] == before  # a DRL write now would keep the old boot
    vg.accept_boots()  # what the manager does once the marks are durable
    assert vg.host_boots()[str(REMOTE)] == bytes(range(16, 24)).hex()
    assert vg.rebooted_since({str(REMOTE): before}) == {REMOTE}
