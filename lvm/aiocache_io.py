"""Applies a :class:`lvm.aiocache.CacheLog`'s actions to a BlockDevice (the aio_cache LV).

Ordering the caller keeps (DESIGN invariant 1, applied to the local copies plus the cache):
acknowledge an application write once :meth:`CacheLogDevice.append` and the local copies'
writes have completed; on a FLUSH, call :meth:`CacheLogDevice.barrier`, then flush the local
copies and :meth:`CacheLogDevice.flush` before replying. The sender sends only
``log.sendable()`` records, in :func:`lvm.aiocache.batches`, and calls :meth:`release` once the
remote site has flushed them.
"""

from __future__ import annotations

import asyncio

from lvm.aiocache import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_READ_SIZE,
    SUPERBLOCK_AREA,
    Appended,
    CacheLog,
    Checkpoint,
    RecordInfo,
    Recovery,
    Scanner,
)
from rpv.blockdev import BlockDevice


async def recover(dev: BlockDevice, read_size: int = DEFAULT_READ_SIZE) -> Recovery:
    """Scan the cache LV; I/O errors propagate, bad bytes end the log."""
    scan = Scanner(await dev.read(0, SUPERBLOCK_AREA), device_size=dev.size,
                   read_size=read_size)
    while (req := scan.next_read()) is not None:
        scan.feed(await dev.read(*req))
    return scan.result()


class CacheLogDevice:
    """An open cache log on its device."""

    def __init__(self, dev: BlockDevice, log: CacheLog):
        self.dev, self.log = dev, log
        self._sb_lock = asyncio.Lock()  # one superblock write in flight
        self._space = asyncio.Event()

    @classmethod
    async def format(cls, dev: BlockDevice, *, log_id: int | None = None,
                     max_payload: int = DEFAULT_MAX_PAYLOAD) -> CacheLogDevice:
        log, checkpoints = CacheLog.format(dev.size, log_id=log_id, max_payload=max_payload)
        for cp in checkpoints:
            await dev.write(*cp.write)
        await dev.flush()
        for cp in checkpoints:
            log.persisted(cp)
        return cls(dev, log)

    @classmethod
    async def open(cls, dev: BlockDevice, read_size: int = DEFAULT_READ_SIZE
                   ) -> tuple[CacheLogDevice, Recovery]:
        """Recover and start a new incarnation; ValueError if the device holds no cache log.
        The returned recovery's records are the ones to (re)send, in order."""
        recovery = await recover(dev, read_size)
        log, cp = CacheLog.open(recovery)
        self = cls(dev, log)
        await self._persist(cp)
        return self, recovery

    async def append(self, lvid: int, offset: int, data: bytes) -> int:
        """Log a write (waiting for space while the log is full); returns its seq."""
        while not isinstance(result := self.log.append(lvid, offset, data), Appended):
            if result.reclaimable:
                await self.checkpoint()
            else:
                self._space.clear()
                await self._space.wait()
        for offset_, buf in result.writes:
            await self.dev.write(offset_, buf)
        self.log.write_done(result.seq)
        return result.seq

    def barrier(self) -> int:
        return self.log.barrier()

    async def flush(self) -> None:
        """Make every completed append durable."""
        mark = self.log.flush_mark()
        await self.dev.flush()
        self.log.flush_done(mark)

    async def release(self, up_to_seq: int, persist: bool = True) -> None:
        """The remote site has every record up to ``up_to_seq`` durably."""
        if self.log.release(up_to_seq) is not None and persist:
            await self.checkpoint()

    async def checkpoint(self) -> None:
        """Persist the current tail (frees released space)."""
        async with self._sb_lock:
            await self._persist(self.log.checkpoint())

    async def read_payload(self, rec: RecordInfo) -> bytes:
        return await self.dev.read(rec.payload_offset, rec.length)

    async def _persist(self, cp: Checkpoint) -> None:
        await self.dev.write(*cp.write)
        await self.dev.flush()
        self.log.persisted(cp)
        self._space.set()
