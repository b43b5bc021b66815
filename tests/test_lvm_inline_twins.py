"""The LV's inline paths (:mod:`lvm.inline`) against their compiled twin (``_inline.pyx``):
random sequences of writes, reads, answers, failures and state changes applied to two identical
volumes, one per implementation, must give the same acceptances, the same acknowledgements,
the same bytes on every disk and the same stale, dirty-log and lock state after every step.
And the compact dirty-log region set against a plain set of pairs."""

from __future__ import annotations

import asyncio
import errno
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

import lvm.vg
import lvm.volume
from lvm.layout import DATA_START, MiB
from lvm.metadata import DRL_REGION, PV_MISSING
from tests.helpers.disks import PageCacheDisk, RemoteMemDisk
from tests.helpers.mirror_lv import LOCAL, REMOTE, make_lv
from tests.helpers.twins import TWINS, twin_module
from tests.helpers.waits import settle

PP = 3 * MiB  # LPs smaller than a dirty-log region (4 MiB), and not aligned with them
OFFSETS = [0, 512, 4096, 65536, PP - 2048, PP - 4096, PP, PP + 4096, DRL_REGION - 4096,
           DRL_REGION, 2 * PP - 4096, 2 * PP, -4096]

write = st.tuples(
    st.just("write"),
    st.sampled_from(OFFSETS) | st.integers(0, 2 * PP // 512).map(lambda k: k * 512),
    st.sampled_from([512, 4096, 4096, 8192, 65536, 0]),
    st.sampled_from([False, False, False, True]))  # FUA
write_to_lp_end = st.sampled_from([512, 4096, 65536]).map(  # ends where an LP ends
    lambda n: ("write", PP - n, n, False))
read = st.tuples(  # a batch of reads (read_inline_many), the first also alone (read_inline)
    st.just("read"),
    st.lists(st.tuples(st.sampled_from(OFFSETS) | st.integers(0, 2 * PP // 4096).map(
        lambda k: k * 4096), st.sampled_from([512, 4096, 4096, 8192, 0])), min_size=1,
        max_size=6).map(lambda reqs: reqs + [(reqs[-1][0] + reqs[-1][1], 4096)]))
read_to_lp_end = st.sampled_from([512, 4096]).map(lambda n: ("read", [(PP - n, n), (PP, n)]))
op = st.one_of(
    write, write, write, write_to_lp_end, read, read_to_lp_end,
    st.tuples(st.just("answer"), st.booleans()),
    st.tuples(st.just("tick")),
    st.tuples(st.just("stale"), st.sampled_from([LOCAL, REMOTE]), st.integers(0, 1)),
    st.tuples(st.just("missing")),
    st.tuples(st.just("drl_drop"), st.integers(0, 1)),
    st.tuples(st.just("new_generation")),
    st.tuples(st.just("vgsa_changed")),
    st.tuples(st.just("settle")),
    st.tuples(st.just("mark_written")),
    st.tuples(st.just("local_fail"), st.booleans()),
    st.tuples(st.just("remote_ready"), st.booleans()),
)


class Volume:
    """One LV on in-memory disks, built with the inline path of ``module``."""

    def __init__(self, module):
        lvm.vg.INLINE = lvm.volume.INLINE = module
        size = DATA_START + 2 * PP
        self.local, self.remote = PageCacheDisk("hdisk1", size), RemoteMemDisk("hdisk2", size)
        self.lv = make_lv(self.local, self.remote, PP)
        self.acks: list = []  # per write: "refused", or None until done, then (errno, kept)
        self.results: list = []  # per step (kept by run_both for the pure twin)

    def write(self, offset: int, n: int, fua: bool, fill: int) -> bool:
        slot = len(self.acks)
        self.acks.append(None)

        def done(exc, kept=False):
            self.acks[slot] = (exc.errno if exc is not None else 0, kept)
        taken = self.lv.write_inline(offset, bytes([fill]) * n, fua, done)
        if not taken:
            self.acks[slot] = "refused"
        return taken

    async def apply(self, step, index: int):
        vg, kind = self.lv.vg, step[0]
        if kind == "write":
            return self.write(step[1], step[2], step[3], index % 251 + 1)
        if kind == "read":
            one = self.lv.read_inline(*step[1][0])
            many = self.lv.read_inline_many(step[1])
            return [None if d is None else bytes(d) for d in [one, *many]]
        if kind == "answer":
            self.remote.answer(None if step[1] else OSError(errno.EIO, "link down"))
        elif kind == "stale":
            vg.vgsa.mark((step[1], step[2]), {0})
        elif kind == "missing":
            vg.vgsa.pv_state["b" * 32] = PV_MISSING
        elif kind == "drl_drop":
            vg.drl_durable.difference_update([(1, step[1])])  # as if retired
        elif kind == "new_generation":
            vg.new_generation()
        elif kind == "vgsa_changed":  # in memory only: acknowledgements wait for a commit
            vg.vgsa_changed()
        elif kind in ("settle", "mark_written"):  # mark_written: as a general-path write does
            try:
                await getattr(vg, kind)()
            except OSError as e:  # the volume group closed (no disk left)
                return e.errno
        elif kind == "local_fail":
            self.local.fail = step[1]
        elif kind == "remote_ready":
            self.remote.ready = step[1]
        return None

    def state(self):
        lv, vg = self.lv, self.lv.vg
        return (list(self.acks), zlib.crc32(memoryview(self.local.buf)[DATA_START:]),
                zlib.crc32(memoryview(self.remote.buf)[DATA_START:]),
                {k: sorted(v) for k, v in vg.vgsa.stale.items()}, dict(vg.vgsa.pv_state),
                dict(vg.drl_inflight), sorted(vg.drl_durable), lv.lock.busy(), len(lv.tasks),
                [(o, d) for o, d, _ in self.remote.waiting], vg.app_ios,
                {pv: {pp: c if c is None else sorted(c) for pp, c in pps.items()}
                 for pv, pps in vg.unflushed.items()})


async def run_both(steps):
    saved = lvm.vg.INLINE, lvm.volume.INLINE
    try:
        pure, fast = (Volume(twin_module(name)) for name in TWINS)
    finally:
        lvm.vg.INLINE, lvm.volume.INLINE = saved
    for i, step in enumerate(steps):
        results = [await v.apply(step, i) for v in (pure, fast)]
        assert results[0] == results[1], (i, step, results)
        pure.results.append(results[0])
        await settle(30)
        assert pure.state() == fast.state(), (i, step)
    pure.remote.answer()
    fast.remote.answer()
    await settle(30)
    assert pure.state() == fast.state()
    assert None not in pure.acks  # every accepted write was acknowledged in the end
    return pure


@settings(max_examples=40, deadline=None)
@given(st.lists(op, min_size=1, max_size=25))
def test_the_twins_give_the_same_results_step_by_step(steps):
    asyncio.run(run_both(steps))


def test_a_scenario_covers_acceptance_failure_and_refusal():
    """A fixed sequence with every outcome, so the comparison above is known to see them."""
    steps = [("write", 0, 4096, False), ("write", 4096, 4096, False), ("tick",),
             ("answer", True), ("write", 8192, 4096, True), ("write", PP - 2048, 4096, False),
             ("vgsa_changed",), ("write", 2 * 65536, 4096, False), ("settle",),
             ("new_generation",), ("write", 3 * 65536, 4096, False), ("mark_written",),
             ("write", PP, 4096, False), ("answer", False), ("write", 0, 4096, False),
             ("read", [(0, 4096), (4096, 4096), (PP - 512, 1024), (PP - 4096, 4096),
                       (PP, 4096)])]
    pure = asyncio.run(run_both(steps))
    assert pure.acks[:2] == [(0, False), (0, False)]
    assert pure.acks[2:6] == ["refused"] * 4  # FUA, two LPs, VGSA ahead, generation unmarked
    assert pure.acks[6] == (0, True)  # the remote copy failed: the data may still be held
    assert (REMOTE, 1) in pure.lv.vg.vgsa.stale
    assert pure.lv.vg.pv_state(REMOTE) == PV_MISSING
    assert pure.acks[7] == "refused"  # a copy is stale now
    # the reads: LP 0 from the local copy (the first write's fill), two LPs, the end of LP 0
    # and LP 1 (its local copy is fresh, the remote one stale) as the writes left them
    assert pure.results[-1] == [b"\x01" * 4096, b"\x01" * 4096, b"\x02" * 4096, None,
                                bytes(4096), bytes([13]) * 4096]


regions = st.lists(st.tuples(st.integers(1, 3), st.integers(0, 300)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(regions, regions, st.integers(1, 3), st.integers(0, 300), st.integers(0, 20))
def test_region_set_matches_a_set_of_pairs(start, drop, lvid, first, span):
    model = set(start)
    sets = [twin_module(name).RegionSet(start) for name in TWINS]
    model.difference_update(drop)
    for s in sets:
        s.difference_update(drop)
        assert len(s) == len(model) and list(s) == sorted(model)
        assert all(r in s for r in model)
        assert ((lvid, first) in s) == ((lvid, first) in model)
        assert s.covers(lvid, first, first + span) == all(
            (lvid, r) in model for r in range(first, first + span + 1))
