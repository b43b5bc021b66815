"""In-memory block devices for tests, one per set of capabilities the code under test looks
for (so they are deliberately separate classes, not one with switches):

* :class:`MemDisk` - plain async read/write/flush; ``fail`` makes every call raise EIO.
* :class:`AsyncMemDisk` - async-only with range checks, recording what started and what was
  written; every request yields once (``_delay``, which subclasses override to gate it).
* :class:`PageCacheDisk` - a local disk with FileDisk's synchronous ``read_now``/``write_now``,
  so logical volumes take their inline paths.
* :class:`RemoteMemDisk` - a remote disk with the RPV client's ``submit_write_cb``: writes are
  answered when the test calls ``answer``.
* :class:`ReadOnlyMemDisk` - an RPV server's export without ``checksum``; writes fail EROFS.
"""

from __future__ import annotations

import asyncio
import errno

from rpv.blockdev import check_range

MiB = 1 << 20


class MemDisk:
    """A BlockDevice in memory. ``fail`` makes every call raise EIO (a dead disk)."""

    def __init__(self, name: str, size: int = 64 * MiB, local: bool = True):
        self.name = name
        self.size = size
        self.local = local
        self.buf = bytearray(size)
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise OSError(errno.EIO, f"{self.name}: injected failure")

    async def read(self, offset: int, length: int) -> bytes:
        self._check()
        return bytes(self.buf[offset:offset + length])

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self._check()
        self.buf[offset:offset + len(data)] = data

    async def flush(self) -> None:
        self._check()


class AsyncMemDisk:
    """An async-only device (no read_now/write_now), so every request runs as a task."""

    def __init__(self, name: str, size: int = 8 * MiB):
        self.name = name
        self.buf = bytearray(size)
        self.writes: list[tuple[int, int, bool]] = []
        self.flushes = 0
        self.started: list[tuple[str, int]] = []

    @property
    def size(self) -> int:
        return len(self.buf)

    async def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        self.started.append(("read", offset))
        await self._delay("read", offset)
        return bytes(self.buf[offset : offset + length])

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        check_range(self.size, offset, len(data))
        self.started.append(("write", offset))
        await self._delay("write", offset)
        self.buf[offset : offset + len(data)] = data
        self.writes.append((offset, len(data), fua))

    async def flush(self) -> None:
        self.flushes += 1

    async def _delay(self, op: str, offset: int) -> None:
        await asyncio.sleep(0)  # yield once, as a real device would; subclasses gate here


class _BufDisk:
    def __init__(self, name: str, size: int = 64 * MiB):
        self.name = name
        self.size = size
        self.buf = bytearray(size)
        self.fail = False
        self.flushes = 0

    async def flush(self):
        self.flushes += 1


class PageCacheDisk(_BufDisk):
    """A local disk in memory, with the synchronous page-cache calls FileDisk offers."""

    def __init__(self, name: str, size: int = 64 * MiB):
        super().__init__(name, size)
        self.writevs: list[int] = []  # buffers per writev_now call
        self.readvs: list[int] = []  # buffers per readv_now call

    def read_now(self, offset, length):
        if self.fail:
            raise OSError(errno.EIO, f"{self.name}: injected read error")
        return bytes(self.buf[offset:offset + length])

    def write_now(self, offset, data):
        if self.fail:
            raise OSError(errno.EIO, f"{self.name}: injected write error")
        self.buf[offset:offset + len(data)] = data

    def readv_now(self, offset, lengths):
        self.readvs.append(len(lengths))
        out = []
        for n in lengths:
            out.append(bytearray(self.read_now(offset, n)))
            offset += n
        return out

    def writev_now(self, offset, bufs):
        self.writevs.append(len(bufs))
        for b in bufs:
            self.write_now(offset, b)
            offset += len(b)

    async def read(self, offset, length):
        return self.read_now(offset, length)

    async def write(self, offset, data, fua=False):
        self.write_now(offset, data)


class RemoteMemDisk(_BufDisk):
    """A remote disk (no page-cache calls): writes are answered when the test says so."""

    def __init__(self, name: str, size: int = 64 * MiB):
        super().__init__(name, size)
        self.ready = True
        self.waiting: list = []

    async def read(self, offset, length):
        return bytes(self.buf[offset:offset + length])

    async def write(self, offset, data, fua=False):
        if self.fail:
            raise OSError(errno.EIO, f"{self.name}: injected write error")
        self.buf[offset:offset + len(data)] = data

    def accepts(self, length):
        return self.ready

    def submit_write_cb(self, offset, data, fua, callback):
        if not self.ready:
            return False
        self.waiting.append((offset, bytes(data), callback))
        return True

    def answer(self, error: OSError | None = None) -> None:
        for offset, data, callback in self.waiting:
            if error is None:
                self.buf[offset:offset + len(data)] = data
            callback(error)
        self.waiting.clear()


class ReadOnlyMemDisk:
    """A BlockDevice without ``checksum``: the server falls back to read + chunk_digests."""

    def __init__(self, data: bytes, fail: bool = False):
        self.name = "mem"
        self.data = data
        self.fail = fail
        self.reads = 0

    @property
    def size(self) -> int:
        return len(self.data)

    async def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        if self.fail:
            raise OSError(errno.EIO, "medium error")
        return self.data[offset : offset + length]

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        raise OSError(errno.EROFS, "read-only")

    async def flush(self) -> None:
        pass


class StalledDisk(ReadOnlyMemDisk):
    """Writes never complete: a server on it never answers them (a stalled remote site)."""

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await asyncio.Event().wait()
