"""The dirty-region log's rule: no data write into a region before a DRL write listing that
region has completed — also for a second writer arriving while the first one's commit is
still in flight (the race a clean-clone CI run found after kill -9)."""

from __future__ import annotations

import asyncio

import pytest

from lvm.layout import Kind
from lvm.metadata import VGDA, VGSA, PVEntry
from lvm.vg import VolumeGroup
from tests.helpers.waits import settle


class GatedDisk:
    name = "mem0"
    size = 64 << 20

    def __init__(self):
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()  # a write is waiting at the closed gate
        self.writes = 0

    async def write(self, offset, data, fua=False):
        if not self.gate.is_set():
            self.held.set()
        await self.gate.wait()
        self.writes += 1

    async def read(self, offset, length):
        return bytes(length)

    async def flush(self):
        pass


def make_vg(disk) -> VolumeGroup:
    vgda = VGDA("v" * 32, "vg", 4 << 20, pvs=[PVEntry("p" * 32, 1, 10)])
    return VolumeGroup(vgda, VGSA(), {1: disk}, {k: 0 for k in Kind}, is_local=lambda d: True)


@pytest.mark.asyncio
async def test_second_writer_waits_for_the_commit_in_flight():
    disk = GatedDisk()
    vg = make_vg(disk)
    disk.gate.clear()
    first = asyncio.ensure_future(vg.drl_enter([(1, 0)]))
    await asyncio.wait_for(disk.held.wait(), 5)  # the first writer's DRL write is in flight
    second = asyncio.ensure_future(vg.drl_enter([(1, 0)]))
    await settle(5)
    assert not first.done() and not second.done(), "a writer went ahead of the DRL write"
    disk.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert (1, 0) in vg.drl_durable
    # a third writer to the now durable region does not wait for anything
    disk.gate.clear()
    await asyncio.wait_for(vg.drl_enter([(1, 0)]), 1)


@pytest.mark.asyncio
async def test_retired_region_is_logged_again_before_reuse():
    from lvm import vg as vgmod
    disk = GatedDisk()
    group = make_vg(disk)
    for r in range(vgmod.DRL_MAX_ACTIVE + 1):
        await group.drl_enter([(1, r)])
        group.drl_leave([(1, r)])
    await group.drl_enter([(1, 10_000)])  # the commit that retires idle regions
    group.drl_leave([(1, 10_000)])
    retired = [r for r in range(vgmod.DRL_MAX_ACTIVE) if (1, r) not in group.drl_active]
    assert retired
    r = retired[0]
    assert (1, r) not in group.drl_durable
    disk.gate.clear()
    waiter = asyncio.ensure_future(group.drl_enter([(1, r)]))
    await settle(5)
    assert not waiter.done()
    disk.gate.set()
    await asyncio.wait_for(waiter, 5)
    assert (1, r) in group.drl_durable
