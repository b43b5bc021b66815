"""Tests for the async primitives of the LVM core: GroupCommit and RangeLock.

Everything is sequenced with events and futures; ``asyncio.sleep(0)`` only yields to the loop.
Every test runs under a generous ``asyncio.timeout`` so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from lvm.commit import GroupCommit, RangeLock
from tests.helpers.waits import settle

GUARD = 5  # seconds; a safety net against hangs, never a sequencing device


class GatedFlush:
    """A flush whose every call blocks until the test opens its gate.

    ``version`` is bumped by callers before they call ``commit()``; each flush records the
    version it saw when it started, and ``durable`` is the version covered by completed flushes.
    """

    def __init__(self):
        self.version = 0
        self.durable = 0
        self.calls = 0
        self.started: list[asyncio.Event] = []
        self.gates: list[asyncio.Future] = []
        self.running = 0
        self.max_running = 0
        self._new_call = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        seen = self.version
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        self._new_call.set()
        try:
            await gate
            self.durable = max(self.durable, seen)
        finally:
            self.running -= 1

    async def wait_call(self, n: int) -> None:
        """Until the n-th flush (1-based) has started."""
        while self.calls < n:
            self._new_call.clear()
            await self._new_call.wait()

    def open(self, n: int, exc: BaseException | None = None) -> None:
        gate = self.gates[n - 1]
        if exc is None:
            gate.set_result(None)
        else:
            gate.set_exception(exc)


# ------------------------------------------------------------------------------------------------
# GroupCommit
# ------------------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_single_commit_runs_one_flush():
    calls = 0

    async def flush():
        nonlocal calls
        calls += 1

    gc = GroupCommit(flush)
    async with asyncio.timeout(GUARD):
        await gc.commit()
        assert calls == 1
        await gc.commit()  # a later call needs a fresh flush
        assert calls == 2


@pytest.mark.asyncio
async def test_callers_during_a_flush_wait_for_the_next_one():
    f = GatedFlush()
    gc = GroupCommit(f)
    async with asyncio.timeout(GUARD):
        f.version += 1
        first = asyncio.create_task(gc.commit())
        await f.wait_call(1)
        # 50 callers arrive while flush 1 is in progress: it started before their calls
        later = []
        for _ in range(50):
            f.version += 1
            later.append(asyncio.create_task(gc.commit()))
        await settle()
        assert f.calls == 1
        f.open(1)
        await first
        await f.wait_call(2)
        await settle()
        assert not any(t.done() for t in later)  # flush 1 does not cover them
        assert f.calls == 2
        f.open(2)
        await asyncio.gather(*later)
        assert f.calls == 2  # all 50 shared one flush
        assert f.durable == 51
        assert f.max_running == 1


@pytest.mark.asyncio
async def test_flush_not_started_before_first_step_covers_all_early_callers():
    """Callers that arrive before the flush task has run at all share that first flush."""
    f = GatedFlush()
    gc = GroupCommit(f)
    async with asyncio.timeout(GUARD):
        tasks = []
        for _ in range(20):
            f.version += 1
            tasks.append(asyncio.create_task(gc.commit()))
        await f.wait_call(1)
        f.open(1)
        await asyncio.gather(*tasks)
        assert f.calls == 1 and f.durable == 20


@pytest.mark.asyncio
async def test_many_concurrent_callers_share_flushes_and_each_is_covered():
    rnd = random.Random(7)
    version = 0
    durable = 0
    flushes = 0
    running = 0

    async def flush():
        nonlocal durable, flushes, running
        flushes += 1
        running += 1
        assert running == 1  # never two flushes at once
        seen = version
        await settle(rnd.randint(1, 5))  # a random interleaving
        durable = max(durable, seen)
        running -= 1

    gc = GroupCommit(flush)

    async def caller():
        nonlocal version
        await settle(rnd.randint(0, 30))  # a random interleaving
        version += 1
        mine = version
        await gc.commit()
        # a flush that started after our change has completed
        assert durable >= mine

    async with asyncio.timeout(GUARD):
        await asyncio.gather(*(caller() for _ in range(300)))
    assert 1 <= flushes <= 300 // 4
    assert durable == version == 300


@pytest.mark.asyncio
async def test_failed_flush_raises_in_every_waiter_and_later_commit_succeeds():
    f = GatedFlush()
    gc = GroupCommit(f)
    async with asyncio.timeout(GUARD):
        f.version += 1
        tasks = [asyncio.create_task(gc.commit()) for _ in range(10)]
        await f.wait_call(1)
        f.version += 1
        late = asyncio.create_task(gc.commit())  # waits behind the failing flush
        await settle()
        f.open(1, OSError(5, "disk gone"))
        results = await asyncio.gather(*tasks, late, return_exceptions=True)
        assert all(isinstance(r, OSError) and r.errno == 5 for r in results)
        assert f.durable == 0
        assert f.calls == 1
        # the failure is not sticky: the next commit runs a new flush
        f.version += 1
        again = asyncio.create_task(gc.commit())
        await f.wait_call(2)
        f.open(2)
        await again
        assert f.calls == 2 and f.durable == 3


@pytest.mark.asyncio
async def test_failing_flush_function_raises_directly():
    n = 0

    async def flush():
        nonlocal n
        n += 1
        if n == 1:
            raise RuntimeError("boom")

    gc = GroupCommit(flush)
    async with asyncio.timeout(GUARD):
        with pytest.raises(RuntimeError, match="boom"):
            await gc.commit()
        await gc.commit()
    assert n == 2


@pytest.mark.asyncio
async def test_cancelled_caller_does_not_cancel_the_shared_flush():
    f = GatedFlush()
    gc = GroupCommit(f)
    async with asyncio.timeout(GUARD):
        f.version += 1
        a = asyncio.create_task(gc.commit())
        b = asyncio.create_task(gc.commit())
        await f.wait_call(1)
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        f.open(1)
        await b
        assert f.calls == 1 and f.durable == 1


# ------------------------------------------------------------------------------------------------
# RangeLock
# ------------------------------------------------------------------------------------------------

class Holder:
    """A task that takes a range, reports entry, and holds it until released."""

    def __init__(self, lock: RangeLock, name: str, start: int, end: int, log: list):
        self.name = name
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.log = log
        self.task = asyncio.create_task(self._run(lock, start, end))

    async def _run(self, lock, start, end):
        async with lock.acquire(start, end):
            self.log.append(("enter", self.name))
            self.entered.set()
            await self.release.wait()
            self.log.append(("exit", self.name))


@pytest.mark.asyncio
async def test_overlapping_ranges_are_serialised_in_arrival_order():
    lock = RangeLock()
    log: list = []
    async with asyncio.timeout(GUARD):
        # all ranges overlap each other; arrival order differs from start order
        starts = [50, 0, 30, 10, 40]
        hs = [Holder(lock, f"h{i}", s, s + 100, log) for i, s in enumerate(starts)]
        await hs[0].entered.wait()
        await settle()
        assert [h.entered.is_set() for h in hs] == [True, False, False, False, False]
        assert lock.busy() == 5
        # release in reverse order: only the holder's release lets the next one in
        for h in reversed(hs):
            h.release.set()
        await asyncio.gather(*(h.task for h in hs))
    expected = []
    for i in range(5):
        expected += [("enter", f"h{i}"), ("exit", f"h{i}")]
    assert log == expected
    assert lock.busy() == 0


@pytest.mark.asyncio
async def test_waiter_waits_only_for_ranges_it_overlaps():
    """b [9,20) and c [5,6) both wait for a [0,10); they do not overlap each other, so both
    enter when a leaves although b arrived first and still holds its range."""
    lock = RangeLock()
    log: list = []
    async with asyncio.timeout(GUARD):
        a = Holder(lock, "a", 0, 10, log)
        b = Holder(lock, "b", 9, 20, log)
        c = Holder(lock, "c", 5, 6, log)
        await a.entered.wait()
        await settle()
        assert not b.entered.is_set() and not c.entered.is_set()
        a.release.set()
        await b.entered.wait()
        await c.entered.wait()
        assert log[:2] == [("enter", "a"), ("exit", "a")]
        assert lock.busy() == 2
        b.release.set()
        c.release.set()
        await asyncio.gather(a.task, b.task, c.task)
    assert lock.busy() == 0


@pytest.mark.asyncio
async def test_chain_of_partial_overlaps():
    """a [0,10) holds; b [5,15) waits for a; c [12,20) overlaps only b and waits for b."""
    lock = RangeLock()
    log: list = []
    async with asyncio.timeout(GUARD):
        a = Holder(lock, "a", 0, 10, log)
        await a.entered.wait()
        b = Holder(lock, "b", 5, 15, log)
        c = Holder(lock, "c", 12, 20, log)
        await settle()
        assert not b.entered.is_set() and not c.entered.is_set()
        a.release.set()
        await b.entered.wait()
        await settle()
        assert not c.entered.is_set()
        b.release.set()
        await c.entered.wait()
        c.release.set()
        await asyncio.gather(a.task, b.task, c.task)
    assert log == [("enter", "a"), ("exit", "a"), ("enter", "b"), ("exit", "b"),
                   ("enter", "c"), ("exit", "c")]


@pytest.mark.asyncio
async def test_later_disjoint_arrival_does_not_wait_for_an_unrelated_waiter():
    """a [0,10) holds; b [5,15) waits; c [20,30) overlaps neither and enters at once."""
    lock = RangeLock()
    log: list = []
    async with asyncio.timeout(GUARD):
        a = Holder(lock, "a", 0, 10, log)
        b = Holder(lock, "b", 5, 15, log)
        c = Holder(lock, "c", 20, 30, log)
        await a.entered.wait()
        await c.entered.wait()
        assert not b.entered.is_set()
        for h in (a, b, c):
            h.release.set()
        await asyncio.gather(a.task, b.task, c.task)


@pytest.mark.asyncio
async def test_disjoint_ranges_overlap_in_time():
    lock = RangeLock()
    log: list = []
    async with asyncio.timeout(GUARD):
        hs = [Holder(lock, f"h{i}", 10 * i, 10 * i + 10, log) for i in range(5)]  # adjacent
        for h in hs:
            await h.entered.wait()  # all inside at once; nobody released yet
        assert lock.busy() == 5
        assert all(entry[0] == "enter" for entry in log)
        for h in hs:
            h.release.set()
        await asyncio.gather(*(h.task for h in hs))
    assert lock.busy() == 0


@pytest.mark.asyncio
async def test_cancelled_waiter_releases_its_slot():
    lock = RangeLock()
    log: list = []
    async with asyncio.timeout(GUARD):
        a = Holder(lock, "a", 0, 10, log)
        await a.entered.wait()
        b = Holder(lock, "b", 0, 10, log)
        c = Holder(lock, "c", 0, 10, log)
        await settle()
        assert lock.busy() == 3
        b.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b.task
        assert lock.busy() == 2
        a.release.set()
        await c.entered.wait()
        d = Holder(lock, "d", 3, 4, log)  # arrives after the cancellation
        await settle()
        assert not d.entered.is_set()
        c.release.set()
        await d.entered.wait()
        d.release.set()
        await asyncio.gather(a.task, c.task, d.task)
    assert ("enter", "b") not in log
    assert log == [("enter", "a"), ("exit", "a"), ("enter", "c"), ("exit", "c"),
                   ("enter", "d"), ("exit", "d")]
    assert lock.busy() == 0


@pytest.mark.asyncio
async def test_cancelled_sole_blocker_does_not_block_later_arrivals():
    """c [12,20) waits only for b [5,15), which waits for a [0,10). Cancelling b lets c in
    while a still holds its range."""
    lock = RangeLock()
    log: list = []
    async with asyncio.timeout(GUARD):
        a = Holder(lock, "a", 0, 10, log)
        await a.entered.wait()
        b = Holder(lock, "b", 5, 15, log)
        c = Holder(lock, "c", 12, 20, log)
        await settle()
        assert not c.entered.is_set()
        b.task.cancel()
        await c.entered.wait()
        assert not a.release.is_set()
        assert lock.busy() == 2
        a.release.set()
        c.release.set()
        await asyncio.gather(a.task, c.task)
        with pytest.raises(asyncio.CancelledError):
            await b.task
    assert lock.busy() == 0


@pytest.mark.asyncio
async def test_cancelling_the_holder_releases_the_range():
    lock = RangeLock()
    log: list = []
    async with asyncio.timeout(GUARD):
        a = Holder(lock, "a", 0, 10, log)
        b = Holder(lock, "b", 0, 10, log)
        await a.entered.wait()
        a.task.cancel()
        await b.entered.wait()
        b.release.set()
        await b.task
    assert lock.busy() == 0


@pytest.mark.asyncio
async def test_exception_inside_releases_the_range():
    lock = RangeLock()
    async with asyncio.timeout(GUARD):
        with pytest.raises(ValueError):
            async with lock.acquire(0, 100):
                assert lock.busy() == 1
                raise ValueError("x")
        assert lock.busy() == 0
        async with lock.acquire(0, 100):
            assert lock.busy() == 1


@pytest.mark.asyncio
async def test_busy_counts_holders_and_waiters():
    lock = RangeLock()
    log: list = []
    assert lock.busy() == 0
    async with asyncio.timeout(GUARD):
        a = Holder(lock, "a", 0, 10, log)
        await a.entered.wait()
        assert lock.busy() == 1
        b = Holder(lock, "b", 100, 110, log)
        await b.entered.wait()
        assert lock.busy() == 2
        c = Holder(lock, "c", 5, 105, log)  # waits for both
        await settle()
        assert lock.busy() == 3 and not c.entered.is_set()
        a.release.set()
        await a.task
        await settle()
        assert lock.busy() == 2 and not c.entered.is_set()
        b.release.set()
        await c.entered.wait()
        assert lock.busy() == 1
        c.release.set()
        await c.task
    assert lock.busy() == 0


@pytest.mark.asyncio
async def test_random_workload_never_overlaps_and_keeps_arrival_order():
    rnd = random.Random(3)
    lock = RangeLock()
    inside: list[tuple[int, int, int]] = []
    order: list[int] = []

    async def worker(i: int, start: int, end: int):
        async with lock.acquire(start, end):
            for s, e, _ in inside:
                assert not (s < end and start < e), "overlapping ranges held at once"
            inside.append((start, end, i))
            order.append(i)
            await settle(rnd.randint(0, 4))  # a random interleaving
            inside.remove((start, end, i))

    specs = []
    for i in range(200):
        s = rnd.randrange(0, 1000)
        specs.append((i, s, s + rnd.randint(1, 80)))
    async with asyncio.timeout(GUARD):
        tasks = []
        for i, s, e in specs:
            tasks.append(asyncio.create_task(worker(i, s, e)))
            if rnd.random() < 0.3:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
    # any two overlapping ranges entered in arrival (index) order
    pos = {i: n for n, i in enumerate(order)}
    for i, s1, e1 in specs:
        for j, s2, e2 in specs[i + 1:]:
            if s1 < e2 and s2 < e1:
                assert pos[i] < pos[j]
    assert lock.busy() == 0
