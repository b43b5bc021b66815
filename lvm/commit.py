"""Group commit and range locks: the two concurrency primitives of the LVM core."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class GroupCommit:
    """Coalesce many 'make this durable' requests into few flushes.

    ``await commit()`` returns once a flush that *started after the call* has completed, so
    every change made before the call is covered. Concurrent callers share one flush. A
    failed flush raises in every caller waiting for it.
    """

    def __init__(self, flush: Callable[[], Awaitable[None]]):
        self._flush = flush
        self._requested = 0
        self._done = 0
        self._task: asyncio.Task | None = None

    async def commit(self) -> None:
        self._requested += 1
        target = self._requested
        while self._done < target:
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run())
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        generation = self._requested
        try:
            await self._flush()
            self._done = generation
        finally:
            self._task = None


class RangeLock:
    """Serialises overlapping byte ranges in arrival order; disjoint ranges run in parallel.

    An entry's future is created only when a later arrival has to wait for it, so the common
    uncontended case costs a list append and a scan.
    """

    def __init__(self):
        self._active: list[list] = []  # [start, end, future or None]

    def acquire(self, start: int, end: int):
        return _Held(self, start, end)

    def try_acquire(self, start: int, end: int) -> list | None:
        """Take ``[start, end)`` now if nothing overlapping is held or waiting; the entry to
        :meth:`release`, or None (the caller then waits through :meth:`acquire`)."""
        for e in self._active:
            if e[0] < end and start < e[1]:
                return None
        entry = [start, end, None]
        self._active.append(entry)
        return entry

    async def _enter(self, start: int, end: int) -> list:
        loop = None
        blockers = []
        for e in self._active:
            if e[0] < end and start < e[1]:
                if e[2] is None:
                    loop = loop or asyncio.get_running_loop()
                    e[2] = loop.create_future()
                blockers.append(e[2])
        entry = [start, end, None]
        self._active.append(entry)  # registered now, so later arrivals wait for us
        try:
            for f in blockers:
                await asyncio.shield(f)
        except BaseException:
            self.release(entry)
            raise
        return entry

    def release(self, entry) -> None:
        self._active.remove(entry)
        if entry[2] is not None and not entry[2].done():
            entry[2].set_result(None)

    def busy(self) -> int:
        return len(self._active)


class _Held:
    __slots__ = ("_lock", "_start", "_end", "_entry")

    def __init__(self, lock: RangeLock, start: int, end: int):
        self._lock, self._start, self._end = lock, start, end

    async def __aenter__(self):
        self._entry = await self._lock._enter(self._start, self._end)

    async def __aexit__(self, *exc):
        self._lock.release(self._entry)
