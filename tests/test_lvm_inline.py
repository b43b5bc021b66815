"""The logical volume's inline fast paths (``write_inline`` / ``read_inline``), which the NBD
server uses without a task per request: they must keep every rule of the async path.

A write is acknowledged only when every copy answered; a copy that failed is marked stale and
that is durable before the acknowledgement; anything the fast path cannot do exactly (FUA,
several LPs, a region not yet logged, an overlapping write, a stale or missing copy, a remote
disk that is not ready, a generation still waiting for its mark) is refused untouched, so the
async path serves it.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

import lvm.vg
import lvm.volume
from lvm.layout import pp_offset
from lvm.metadata import PV_MISSING
from tests.helpers.disks import PageCacheDisk, RemoteMemDisk
from tests.helpers.mirror_lv import LOCAL, PP, REMOTE, make_lv, vgsa_on
from tests.helpers.twins import TWINS, twin_module
from tests.helpers.waits import settle


def at(disk: PageCacheDisk, pp: int, within: int, n: int) -> bytes:
    return bytes(disk.buf[pp_offset(pp, PP) + within:pp_offset(pp, PP) + within + n])


class Done:
    def __init__(self):
        self.calls: list = []
        self.kept: list = []  # whether the device said it may still read the data
        self.event = asyncio.Event()

    def __call__(self, exc, kept=False):
        self.calls.append(exc)
        self.kept.append(kept)
        self.event.set()


@pytest.fixture(autouse=True, params=TWINS)
def twin(request, monkeypatch):
    """Every test runs on the pure-Python inline path and on its compiled twin."""
    module = twin_module(request.param)
    monkeypatch.setattr(lvm.vg, "INLINE", module)
    monkeypatch.setattr(lvm.volume, "INLINE", module)
    return module


@pytest.fixture
def disks():
    return PageCacheDisk("hdisk1"), RemoteMemDisk("hdisk2")


@pytest.mark.asyncio
async def test_write_is_acknowledged_only_when_every_copy_answered(disks):
    local, remote = disks
    lv = make_lv(local, remote)
    done = Done()
    data = b"\xab" * 4096
    assert lv.write_inline(8192, data, False, done) is True
    assert len(remote.waiting) == 1  # the remote copy is submitted at once
    await asyncio.sleep(0)
    assert at(local, 0, 8192, 4096) == data  # the local one by the end of the iteration
    assert done.calls == []
    assert lv.lock.busy() == 1 and lv.vg.drl_inflight == {(1, 0): 1}
    remote.answer()
    assert done.calls == [None] and done.kept == [False]
    assert at(remote, 0, 8192, 4096) == data
    assert lv.lock.busy() == 0 and lv.vg.drl_inflight == {}
    assert lv.vg.vgsa.stale == {}


@pytest.mark.asyncio
async def test_failed_remote_copy_is_durably_stale_before_the_acknowledgement(disks):
    local, remote = disks
    lv = make_lv(local, remote)
    done = Done()
    assert lv.write_inline(PP + 65536, b"x" * 4096, False, done)
    remote.answer(OSError(errno.EIO, "link down"))
    assert done.calls == []  # not before the stale mark is on disk
    await asyncio.wait_for(done.event.wait(), 5)
    assert done.calls == [None]  # one good copy: the write succeeded
    assert done.kept == [True]  # the failed copy's request may still hold the data
    assert lv.vg.vgsa.stale == {(REMOTE, 1): {1}}
    on_disk = vgsa_on(local)
    assert [REMOTE, 1, [1]] in on_disk["stale"]
    assert on_disk["pv_state"]["b" * 32] == PV_MISSING
    assert lv.lock.busy() == 0 and lv.vg.drl_inflight == {}
    # the next write skips the missing PV: it is not inline any more (a copy is stale)
    assert lv.write_inline(0, b"y" * 4096, False, Done()) is False


@pytest.mark.asyncio
async def test_write_that_no_copy_took_fails_with_eio(disks):
    local, remote = disks
    lv = make_lv(local, remote)
    local.fail = True
    done = Done()
    assert lv.write_inline(0, b"z" * 512, False, done)
    remote.answer(OSError(errno.EIO, "link down"))
    await asyncio.wait_for(done.event.wait(), 5)
    assert isinstance(done.calls[0], OSError) and done.calls[0].errno == errno.EIO
    assert done.kept == [True]
    assert lv.lock.busy() == 0 and lv.vg.drl_inflight == {}


@pytest.mark.asyncio
async def test_new_generation_during_the_write_is_marked_written_first(disks):
    local, remote = disks
    lv = make_lv(local, remote)
    done = Done()
    assert lv.write_inline(0, b"g" * 4096, False, done)
    lv.vg.new_generation()  # as if another write lost a PV meanwhile
    remote.answer()
    assert done.calls == []
    await asyncio.wait_for(done.event.wait(), 5)
    assert done.calls == [None] and done.kept == [False]  # every copy answered: reusable
    assert lv.vg.vgsa.current["written"] is True
    assert vgsa_on(local)["gens"][-1]["written"] is True


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ["fua", "two_lps", "drl_not_durable", "overlap", "stale_copy",
                                  "missing_pv", "remote_not_ready", "unmarked_generation",
                                  "vg_closed", "out_of_range"])
async def test_refused_requests_are_left_untouched_for_the_async_path(disks, case):
    local, remote = disks
    lv = make_lv(local, remote)
    vg = lv.vg
    offset, n, fua = 4096, 4096, False
    if case == "fua":
        fua = True
    elif case == "two_lps":
        offset = PP - 2048
    elif case == "drl_not_durable":
        vg.drl_durable = set()
    elif case == "overlap":
        held = lv.lock.try_acquire(0, 8192)
        assert held is not None
    elif case == "stale_copy":
        vg.vgsa.mark((REMOTE, 0), {0})
    elif case == "missing_pv":
        vg.vgsa.pv_state["b" * 32] = PV_MISSING
    elif case == "remote_not_ready":
        remote.ready = False
    elif case == "unmarked_generation":
        vg.new_generation()
    elif case == "vg_closed":
        vg.online = False
    elif case == "out_of_range":
        offset = 2 * PP
    busy = lv.lock.busy()
    done = Done()
    assert lv.write_inline(offset, b"r" * n, fua, done) is False
    assert done.calls == [] and remote.waiting == []
    assert at(local, 0, 4096, 4096) == bytes(4096)
    assert lv.lock.busy() == busy and vg.drl_inflight == {}


@pytest.mark.asyncio
async def test_async_write_overlapping_an_inline_write_waits_for_it(disks):
    local, remote = disks
    lv = make_lv(local, remote)
    first = Done()
    assert lv.write_inline(0, b"1" * 8192, False, first)
    second = asyncio.ensure_future(lv.write(4096, b"2" * 4096))
    await settle(10)
    assert not second.done()
    assert at(local, 0, 4096, 4096) == b"1" * 4096  # the later write did not overtake
    remote.answer()
    await asyncio.wait_for(second, 5)
    assert at(local, 0, 0, 8192) == b"1" * 4096 + b"2" * 4096
    assert at(remote, 0, 0, 8192) == b"1" * 4096 + b"2" * 4096


@pytest.mark.asyncio
async def test_read_inline_serves_the_local_copy_or_defers(disks):
    local, remote = disks
    lv = make_lv(local, remote)
    local.buf[pp_offset(1, PP) + 512:pp_offset(1, PP) + 1024] = b"L" * 512
    remote.buf[pp_offset(1, PP) + 512:pp_offset(1, PP) + 1024] = b"R" * 512
    assert lv.read_inline(PP + 512, 512) == b"L" * 512
    assert lv.read_inline(PP - 512, 1024) is None  # two LPs: the async read joins them
    lv.vg.vgsa.mark((LOCAL, 1), {0})
    assert lv.read_inline(PP + 512, 512) is None  # stale local copy: the remote one serves
    assert await lv.read(PP + 512, 512) == b"R" * 512
    lv.vg.vgsa.stale.clear()
    local.fail = True
    assert lv.read_inline(PP + 512, 512) is None  # a failing disk: the async path retries
    assert await lv.read(PP + 512, 512) == b"R" * 512
    assert lv.vg.pv_state(LOCAL) == PV_MISSING


@pytest.mark.asyncio
async def test_a_batch_of_reads_that_follow_each_other_leaves_in_one_readv(disks):
    """``read_inline_many`` answers as ``read_inline`` would, request by request; reads that
    continue each other on the local disk are one ``readv``."""
    local, remote = disks
    lv = make_lv(local, remote)
    for lp in (0, 1):
        local.buf[pp_offset(lp, PP):pp_offset(lp, PP) + PP] = bytes([lp + 1]) * PP
    reqs = [(PP + i * 4096, 4096) for i in range(8)]  # a sequential stream in LP 1
    reqs += [(0, 512), (PP - 512, 1024), (8192, 4096), (12288, 4096), (PP + 65536, 512)]
    got = lv.read_inline_many(reqs)
    assert got == [lv.read_inline(o, n) for o, n in reqs]
    assert [bytes(d) if d is not None else None for d in got] == (
        [b"\x02" * 4096] * 8 + [b"\x01" * 512, None] + [b"\x01" * 4096] * 2 + [b"\x02" * 512])
    assert local.readvs == [8, 2]  # the stream, and 8192+12288; the others one read each
    lv.vg.vgsa.mark((LOCAL, 1), {0})  # LP 1's local copy stale: the async path serves
    local.readvs.clear()
    assert lv.read_inline_many(reqs[:8]) == [None] * 8 and local.readvs == []
    lv.vg.vgsa.stale.clear()
    local.fail = True  # a failing disk: the async path retries (and marks it)
    assert lv.read_inline_many(reqs[:8]) == [None] * 8


@pytest.mark.asyncio
async def test_local_copies_that_follow_each_other_leave_in_one_writev(disks):
    """Writes of one loop iteration that continue each other on a local disk (a sequential
    stream) are written with one pwritev; the others one by one; each is answered."""
    local, remote = disks
    lv = make_lv(local, remote)
    dones = [Done() for _ in range(4)]
    for i, off in enumerate((0, 4096, 8192, 65536)):
        assert lv.write_inline(off, bytes([i + 1]) * 4096, False, dones[i])
    await asyncio.sleep(0)
    assert local.writevs == [3]  # 0, 4096, 8192 joined; 65536 alone
    for i, off in enumerate((0, 4096, 8192, 65536)):
        assert at(local, 0, off, 4096) == bytes([i + 1]) * 4096
    remote.answer()
    assert [d.calls for d in dones] == [[None]] * 4


@pytest.mark.asyncio
async def test_a_failed_writev_fails_each_of_its_writes(disks):
    local, remote = disks
    lv = make_lv(local, remote)
    dones = [Done() for _ in range(2)]
    for i in range(2):
        assert lv.write_inline(i * 4096, b"w" * 4096, False, dones[i])
    local.fail = True
    await asyncio.sleep(0)
    remote.answer()
    for d in dones:
        await asyncio.wait_for(d.event.wait(), 5)
    assert [d.calls for d in dones] == [[None], [None]]  # the remote copy took both
    assert lv.vg.vgsa.stale  # and the local copy is stale for them


def test_filedisk_writev_now_writes_back_to_back_and_checks_the_range(tmp_path):
    from rpv.blockdev import FileDisk, create_sparse_file

    path = str(tmp_path / "d.img")
    create_sparse_file(path, 1 << 20)
    disk = FileDisk("hdisk1", path)
    disk.writev_now(4096, [b"a" * 4096, bytearray(b"b" * 512), memoryview(b"c" * 1024)])
    assert disk.read_now(4096, 5632) == b"a" * 4096 + b"b" * 512 + b"c" * 1024
    with pytest.raises(OSError):
        disk.writev_now((1 << 20) - 4096, [b"x" * 4096, b"y" * 512])
    assert disk.read_now((1 << 20) - 4096, 4096) == bytes(4096)  # nothing written
    disk.close()


def test_filedisk_writev_now_finishes_a_short_write(tmp_path, monkeypatch):
    """pwritev may write less than asked (a signal, a full disk later refused): the rest
    goes out buffer by buffer, each at its own offset."""
    import os

    from rpv import blockdev

    path = str(tmp_path / "d.img")
    blockdev.create_sparse_file(path, 1 << 20)
    disk = blockdev.FileDisk("hdisk1", path)
    real = os.pwritev
    monkeypatch.setattr(blockdev.os, "pwritev",
                        lambda fd, bufs, off: real(fd, [bufs[0], bytes(bufs[1])[:100]], off))
    bufs = [os.urandom(512), os.urandom(4096), os.urandom(512)]
    disk.writev_now(8192, bufs)
    assert disk.read_now(8192, 5120) == b"".join(bufs)
    disk.close()
