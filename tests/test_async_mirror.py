"""Asynchronous mirror pools in the LVM core (in memory): the write completes at local speed,
the remote copy follows in write order from the I/O cache, the cache survives a crash and is
replayed, the high-water mark holds writes back, and an outage longer than the cache falls
back to stale partitions and a resync."""

from __future__ import annotations

import asyncio
import os

import pytest

from lvm.aiocache import BLOCK
from lvm.layout import pp_offset
from tests.helpers.disks import MemDisk, MiB
from tests.helpers.memsite import MemSite
from tests.helpers.waits import until

LPS = 8


class GatedDisk(MemDisk):
    """A remote disk whose writes wait while ``gate`` is clear (a slow or stalled link);
    ``applied`` records every write in the order it reached the disk."""

    def __init__(self, name: str, size: int = 64 * MiB):
        super().__init__(name, size, local=False)
        self.gate = asyncio.Event()
        self.gate.set()
        self.applied: list[tuple[int, bytes]] = []

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self.gate.wait()
        await super().write(offset, data, fua)
        self.applied.append((offset, bytes(data)))


async def async_site(cache_lps: int = 1, hwm: int = 100):
    """A at site A: datalv with copy 1 in PoolA (local hdisk1) and copy 2 in PoolB (remote
    hdisk3), cachelv (aio_cache) in PoolA; PoolB asynchronous."""
    site = MemSite()
    site.add_disk("hdisk1")
    remote = site.add_disk("hdisk3", disk=GatedDisk("hdisk3"))
    mgr = site.manager()
    await mgr.mkvg("datavg", ["hdisk1"], pool="PoolA")
    await mgr.extendvg("datavg", ["hdisk3"], pool="PoolB")
    await mgr.chvg("datavg", mirror_pool_strict="s")
    await mgr.lv.mklv("datalv", "datavg", LPS, copies=2, strictness="s",
                      mirror_pools=["copy1=PoolA", "copy2=PoolB"])
    await mgr.lv.mklv("cachelv", "datavg", cache_lps, lv_type="aio_cache",
                      mirror_pools=["copy1=PoolA"])
    await mgr.pool.chmp("datavg", "PoolB", mode="async", cache_lv="cachelv", hwm=hwm)
    return site, mgr, remote


def copy_bytes(site, mgr, copy: int, offset: int, n: int) -> bytes:
    group, vol = mgr.find_lv("datalv")
    lp, within = divmod(offset, group.vgda.pp_size)
    index, pp = vol.entry.maps[copy][lp]
    start = pp_offset(pp, group.vgda.pp_size) + within
    return bytes(site.disk_objs[group.pv_name(index)].buf[start:start + n])


def async_state(mgr) -> dict:
    return mgr.pool.lsmp("datavg", "PoolB")["pools"][0]["async"]


def test_writes_complete_at_local_speed_and_the_remote_copy_follows():
    async def main():
        site, mgr, remote = await async_site()
        _, vol = mgr.find_lv("datalv")
        remote.gate.clear()  # the remote site answers nothing for now
        data = os.urandom(256 * 1024)
        await asyncio.wait_for(vol.write(1 * MiB, data), 5)  # not held up by the remote
        await vol.flush()
        assert copy_bytes(site, mgr, 0, 1 * MiB, len(data)) == data
        assert copy_bytes(site, mgr, 1, 1 * MiB, len(data)) == bytes(len(data))
        state = async_state(mgr)
        assert (state["state"], state["pending_writes"], state["pending_bytes"]) == \
            ("active", 1, len(data))
        assert not state["cache_empty"] and state["consistent"]
        assert await vol.read(1 * MiB, len(data)) == data  # reads never use the lagging copy
        remote.gate.set()
        await until(lambda: async_state(mgr)["cache_empty"])
        assert copy_bytes(site, mgr, 1, 1 * MiB, len(data)) == data
        assert async_state(mgr)["sent_writes"] == 1
        await mgr.varyoffvg("datavg")


def test_metrics_show_cache_fill_and_lag():
    from rpv.daemon.metrics import GLVMCollector

    async def main():
        site, mgr, remote = await async_site()
        _, vol = mgr.find_lv("datalv")
        remote.gate.clear()
        await vol.write(0, b"m" * 65536)
        samples = {(m.name, s.labels.get("pool")): s.value
                   for m in GLVMCollector(type("D", (), {"disks": {}})(), mgr).collect()
                   for s in m.samples}
        assert samples[("glvm_async_lag_bytes", "PoolB")] == 65536
        assert 0 < samples[("glvm_async_cache_fill_ratio", "PoolB")] < 1
        assert samples[("glvm_async_lag_seconds", "PoolB")] >= 0
        remote.gate.set()
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def remote_order(mgr, remote) -> list[tuple[int, int]]:
    """(LV offset, first byte) of every write the remote copy of datalv received, in order."""
    group, vol = mgr.find_lv("datalv")
    base = pp_offset(vol.entry.maps[1][0][1], group.vgda.pp_size)
    return [(off - base, data[0]) for off, data in remote.applied if off >= base]


@pytest.mark.parametrize("flush_every", [6, None], ids=["epochs", "one-epoch"])
def test_remote_applies_exactly_in_write_order(flush_every):
    """The remote copy receives the writes in exactly the order they were acknowledged,
    overlapping or not, within an epoch and across FLUSHes: it always holds a prefix."""
    async def main():
        site, mgr, remote = await async_site()
        _, vol = mgr.find_lv("datalv")
        remote.gate.clear()
        expected = []
        for n in range(24):
            off = (n * 7 % 5) * 64 * 1024 + (n // 6) * 4096  # some overlap, most do not
            data = bytes([n + 1]) * 64 * 1024
            await vol.write(off, data)
            expected.append((off, n + 1))
            if flush_every and n % flush_every == flush_every - 1:
                await vol.flush()
        await vol.flush()
        remote.gate.set()
        await until(lambda: async_state(mgr)["cache_empty"])
        assert remote_order(mgr, remote) == expected
        assert copy_bytes(site, mgr, 1, 0, 384 * 1024) == copy_bytes(site, mgr, 0, 0,
                                                                     384 * 1024)
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_crash_with_a_full_cache_replays_at_varyon():
    async def main():
        site, mgr, remote = await async_site()
        _, vol = mgr.find_lv("datalv")
        remote.gate.clear()
        data = {off: os.urandom(128 * 1024) for off in range(0, 2 * MiB, 128 * 1024)}
        for off, d in data.items():
            await vol.write(off, d)
        await vol.flush()
        assert async_state(mgr)["pending_writes"] == len(data)
        # the host goes down: nothing runs on, nothing is drained
        for group in mgr.vgs.values():
            for pool in group.async_pools.values():
                await pool.stop()
            group.stop_writeback()
        mgr.vgs.clear()
        remote.gate.set()
        mgr = site.manager()  # the daemon starts again
        await mgr.varyonvg("datavg")
        assert async_state(mgr)["cache_empty"]
        for off, d in data.items():
            assert copy_bytes(site, mgr, 1, off, len(d)) == d
            assert copy_bytes(site, mgr, 0, off, len(d)) == d
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_high_water_mark_holds_writes_back_and_loses_none():
    async def main():
        site, mgr, remote = await async_site(cache_lps=1, hwm=50)
        group, vol = mgr.find_lv("datalv")
        remote.gate.clear()
        cache_size = mgr.find_lv("cachelv")[1].size
        chunk = 256 * 1024
        n = 0
        while async_state(mgr)["cache_fill_percent"] < 50:
            await vol.write(n * chunk, bytes([n + 1]) * chunk)
            n += 1
        assert n * (chunk + BLOCK) >= cache_size // 2
        held = asyncio.ensure_future(vol.write(n * chunk, bytes([n + 1]) * chunk))
        await asyncio.sleep(0.2)
        assert not held.done(), "a write above the high-water mark must wait"
        assert async_state(mgr)["hwm_hits"] == 1
        remote.gate.set()
        await asyncio.wait_for(held, 10)
        await vol.flush()
        await until(lambda: async_state(mgr)["cache_empty"])
        for i in range(n + 1):
            assert copy_bytes(site, mgr, 1, i * chunk, chunk) == bytes([i + 1]) * chunk
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_outage_longer_than_the_cache_falls_back_to_stale_and_resync():
    async def main():
        site, mgr, remote = await async_site(cache_lps=1, hwm=50)
        group, vol = mgr.find_lv("datalv")
        remote.fail = True  # the remote site is gone
        chunk = 256 * 1024
        written = {}
        for i in range(12):  # more than half the cache: the high-water mark is reached
            written[i * chunk] = os.urandom(chunk)
            await asyncio.wait_for(vol.write(i * chunk, written[i * chunk]), 10)
        await vol.flush()
        await until(lambda: async_state(mgr)["state"] == "fallback")
        state = async_state(mgr)
        assert state["cache_empty"] and not state["consistent"] and state["stale_pps"] > 0
        assert ("LVM_AIO_CACHE_FULL", "datavg") in site.errors
        from lvm.gmvg import GMVG
        warnings = GMVG(mgr).verify("datavg")["warnings"]
        assert warnings and "PoolB is not a consistent point in time" in warnings[0]
        # writes go on, the remote copy is stale where it missed them
        await vol.write(5 * MiB, b"z" * chunk)
        remote.fail = False
        await mgr.varyonvg("datavg")  # takes the PV back and resynchronizes
        for g in mgr.vgs.values():
            if g.resync_task:
                await g.resync_task
        await until(lambda: async_state(mgr)["state"] == "active")
        assert async_state(mgr)["consistent"]
        for off, d in written.items():
            assert copy_bytes(site, mgr, 1, off, len(d)) == d
        assert copy_bytes(site, mgr, 1, 5 * MiB, chunk) == b"z" * chunk
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_chmp_sync_drains_and_refuses_while_the_remote_is_down_unless_forced():
    async def main():
        site, mgr, remote = await async_site()
        _, vol = mgr.find_lv("datalv")
        remote.gate.clear()
        await vol.write(0, b"a" * 65536)
        await vol.flush()
        switching = asyncio.ensure_future(mgr.pool.chmp("datavg", "PoolB", mode="sync"))
        await asyncio.sleep(0.1)
        assert not switching.done()  # draining: waits for the remote copy
        remote.gate.set()
        assert (await asyncio.wait_for(switching, 10))["mode"] == "sync"
        assert copy_bytes(site, mgr, 1, 0, 65536) == b"a" * 65536
        # synchronous again: a write reaches the remote copy before it completes
        await vol.write(65536, b"b" * 65536)
        assert copy_bytes(site, mgr, 1, 65536, 65536) == b"b" * 65536

        await mgr.pool.chmp("datavg", "PoolB", mode="async", cache_lv="cachelv")
        remote.gate.clear()
        await vol.write(0, b"c" * 65536)
        await vol.flush()
        group, _ = mgr.find_lv("datalv")
        group.pv_failed(vol.entry.maps[1][0][0], "test: the link is down")
        remote.fail = True  # and the write in flight fails, as at an RPV client's io_timeout
        remote.gate.set()
        from rpv.errors import CommandError
        with pytest.raises(CommandError, match="use -f"):
            await mgr.pool.chmp("datavg", "PoolB", mode="sync")
        assert (await mgr.pool.chmp("datavg", "PoolB", mode="sync", force=True))["mode"] == \
            "sync"
        assert group.vgsa.stale, "the cached write is a stale partition now"
        remote.gate.set()
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_cache_lv_rules():
    async def main():
        from rpv.errors import CommandError
        site, mgr, remote = await async_site()
        with pytest.raises(CommandError, match="mirror pool of this site's disks"):
            await mgr.lv.mklv("cache2", "datavg", 1, lv_type="aio_cache",
                              mirror_pools=["copy1=PoolB"])
        with pytest.raises(CommandError, match="I/O cache of asynchronous mirror pool"):
            await mgr.lv.rmlv("cachelv")
        assert "cachelv" not in [n for n, _ in mgr.list_lvs()]  # never exported
        assert mgr.get_lv("cachelv") is None
        with pytest.raises(CommandError, match="stays super strict"):
            await mgr.chvg("datavg", mirror_pool_strict="y")
        with pytest.raises(CommandError, match="holds this site's disks"):
            await mgr.pool.chmp("datavg", "PoolA", mode="async", cache_lv="cachelv")
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_sender_runs_after_a_varyon():
    async def main():
        site, mgr, remote = await async_site()
        await mgr.varyoffvg("datavg")
        await mgr.varyonvg("datavg")
        _, vol = mgr.find_lv("datalv")
        await vol.write(0, b"v" * 65536)
        await vol.flush()
        await until(lambda: async_state(mgr)["cache_empty"])
        assert copy_bytes(site, mgr, 1, 0, 65536) == b"v" * 65536
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_a_full_cache_with_the_remote_down_falls_back_at_the_default_mark():
    """hwm 100: writers wait for space only while the remote site can free it."""
    async def main():
        site, mgr, remote = await async_site(cache_lps=1, hwm=100)
        _, vol = mgr.find_lv("datalv")
        remote.fail = True
        for i in range(24):  # 6 MiB into a 4 MiB cache
            await asyncio.wait_for(vol.write(i * 256 * 1024, bytes([i + 1]) * 256 * 1024), 10)
        await until(lambda: async_state(mgr)["state"] == "fallback")
        group, _ = mgr.find_lv("datalv")
        assert group.vgsa.stale
        remote.fail = False
        await mgr.varyonvg("datavg")
        for g in mgr.vgs.values():
            if g.resync_task:
                await g.resync_task
        await until(lambda: async_state(mgr)["state"] == "active")
        for i in range(24):
            assert copy_bytes(site, mgr, 1, i * 256 * 1024, 4096) == bytes([i + 1]) * 4096
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_a_failed_cache_write_falls_back_and_the_cache_is_formatted_again():
    async def main():
        site, mgr, remote = await async_site()
        group, vol = mgr.find_lv("datalv")
        pool = group.async_pools["PoolB"]
        real = pool.cache.dev

        class Failing:
            name, size = real.name, real.size

            async def write(self, offset, data, fua=False):
                raise OSError(5, "injected cache write error")

            def __getattr__(self, attr):
                return getattr(real, attr)

        pool.cache.dev = Failing()
        await vol.write(0, b"f" * 65536)  # acknowledged from the local copy; remote stale
        assert group.vgsa.stale
        pool.cache.dev = real
        for g in mgr.vgs.values():  # the fallback started a resync (the remote is up)
            if g.resync_task:
                await g.resync_task
        await until(lambda: async_state(mgr)["state"] == "active")
        assert not pool.broken and copy_bytes(site, mgr, 1, 0, 65536) == b"f" * 65536
        await vol.write(65536, b"g" * 65536)
        await vol.flush()
        await until(lambda: async_state(mgr)["cache_empty"])
        assert copy_bytes(site, mgr, 1, 65536, 65536) == b"g" * 65536
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_fua_writes_are_durable_in_the_cache():
    async def main():
        site, mgr, remote = await async_site()
        group, vol = mgr.find_lv("datalv")
        pool = group.async_pools["PoolB"]
        remote.gate.clear()
        await vol.write(0, b"u" * 4096, fua=True)
        log_ = pool.cache.log
        assert log_.durable_seq == log_.next_seq - 1  # no FLUSH needed: the record is durable
        remote.gate.set()
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_chmp_sync_aborts_when_the_remote_goes_away_during_the_drain():
    async def main():
        from rpv.errors import CommandError
        site, mgr, remote = await async_site()
        group, vol = mgr.find_lv("datalv")
        remote.gate.clear()
        await vol.write(0, b"d" * 65536)
        await vol.flush()
        switching = asyncio.ensure_future(mgr.pool.chmp("datavg", "PoolB", mode="sync"))
        await asyncio.sleep(0.1)
        remote.fail = True  # the link goes down: the write in flight fails
        remote.gate.set()
        with pytest.raises(CommandError, match="use -f"):
            await asyncio.wait_for(switching, 10)
        assert async_state(mgr)["state"] == "active"  # still caching, nothing lost
        assert async_state(mgr)["pending_writes"] == 1
        await mgr.varyoffvg("datavg")
    asyncio.run(main())


def test_a_backlog_is_sent_in_bursts_that_let_application_writes_run():
    """After a long round trip the sender finds thousands of records at once; it submits
    them a burst at a time, so an application write waits for one burst, not the backlog."""
    from lvm.asyncmirror import SEND_BURST

    async def main():
        site, mgr, remote = await async_site(cache_lps=2)
        group, vol = mgr.find_lv("datalv")
        pool = group.async_pools["PoolB"]
        submitted = []
        submit = pool._submit
        pool._submit = lambda *a: (submitted.append(1), submit(*a))[1]
        async with pool.sending:  # the sender is busy elsewhere (a round trip) meanwhile
            for n in range(4 * SEND_BURST):
                await vol.write(n * 8192, bytes([n + 1]) * 4096)
            await vol.flush()
        bursts = []
        while len(submitted) < 4 * SEND_BURST:  # each loop turn: how far the sender got
            before = len(submitted)
            await asyncio.sleep(0)
            bursts.append(len(submitted) - before)
        assert max(bursts) <= SEND_BURST, bursts
        await until(lambda: async_state(mgr)["cache_empty"])
        assert copy_bytes(site, mgr, 1, 0, 8192 * 4 * SEND_BURST) == \
            copy_bytes(site, mgr, 0, 0, 8192 * 4 * SEND_BURST)
        await mgr.varyoffvg("datavg")
    asyncio.run(main())
