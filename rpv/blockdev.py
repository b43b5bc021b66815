"""The block-device interface shared by local disks, RPV clients and logical volumes.

Anything exported over NBD or used as a physical volume implements :class:`BlockDevice`.
Failures are reported as :class:`OSError` with an ``errno`` (``EIO`` for a failed disk or an
expired RPV deadline, ``EINVAL`` for an out-of-range request, ``EROFS``/``EPERM`` for a
read-only device), so every layer can map them to its own error codes.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from rpv.checksum import CHECKSUM_CHUNK, chunk_digests

SECTOR = 512


@runtime_checkable
class BlockDevice(Protocol):
    """An async random-access device of fixed size."""

    name: str
    local: bool  # the data is on this host (False for an RPV client)

    @property
    def size(self) -> int:
        """Size in bytes (a multiple of :data:`SECTOR`)."""

    async def read(self, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes at ``offset``; raise OSError on failure."""

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``fua`` it is on stable storage on return."""

    async def flush(self) -> None:
        """Make every completed write durable."""


# Optional abilities. A device has one when it has the methods; the Protocols below say what
# each ability promises, and callers check for an ability with isinstance where a check per
# connection or per command is cheap, or by the method's presence on per-request hot paths.


@runtime_checkable
class InlineRead(Protocol):
    """The NBD server may read without a task (FileDisk, logical volumes)."""

    def read_inline(self, offset: int, length: int) -> bytes | None:
        """The data, read now; None when only the async ``read`` can serve this request
        (nothing was done); OSError for a request that failed."""


@runtime_checkable
class InlineReadMany(Protocol):
    """The NBD server may read a run of requests at once (FileDisk, logical volumes): those
    that follow each other on a disk leave in one ``preadv``."""

    def read_inline_many(self, reqs: list[tuple[int, int]]) -> list:
        """Per ``(offset, length)``, in order: the data, None (only the async ``read`` can
        serve it; nothing was done) or the OSError it failed with."""


@runtime_checkable
class InlineWrite(Protocol):
    """The NBD server may start writes without a task (FileDisk, logical volumes)."""

    def write_inline(self, offset: int, data, fua: bool,
                     done: Callable[[OSError | None], None]) -> bool:
        """Start the write now; False when only the async ``write`` can serve it (nothing
        was done). True means ``done(None | OSError)`` is called exactly once: later, or
        already before write_inline returned. ``done`` must not raise.

        ``done(failure, True)`` says someone may still read ``data`` afterwards (a copy's
        request queued on a link that failed): the caller must not reuse the buffer. With
        one argument, nothing reads ``data`` once ``done`` runs."""


@runtime_checkable
class PageCacheIO(Protocol):
    """Synchronous positional I/O into the page cache: a local disk (FileDisk)."""

    def read_now(self, offset: int, length: int) -> bytes: ...

    def write_now(self, offset: int, data) -> None: ...


@runtime_checkable
class PipelinedWrites(Protocol):
    """Writes submitted without a task and answered by a future or a callback (RPV
    client); ``ordered`` ones are applied in the order they were submitted."""

    def accepts(self, length: int) -> bool: ...

    def submit_write(self, offset: int, data, fua: bool = False,
                     ordered: bool = False) -> asyncio.Future: ...


@runtime_checkable
class Checksummed(Protocol):
    """Chunk digests computed where the data lives (FileDisk locally; an RPV client asks its
    server, so only digests cross the link)."""

    async def checksum(self, offset: int, length: int) -> bytes: ...


async def digests(dev: BlockDevice, offset: int, length: int) -> bytes:
    """The chunk digests of a range: computed by the device if it can, else read and hashed."""
    if isinstance(dev, Checksummed):
        return await dev.checksum(offset, length)
    return chunk_digests(await dev.read(offset, length))


class ExportRegistry(Protocol):
    """What the NBD server asks of the daemon: which devices are exported, by name."""

    def get_export(self, name: str) -> BlockDevice | None: ...

    def list_exports(self) -> list[tuple[str, str]]:
        """(export name, description) pairs, in a stable order."""


READV_MAX = 64  # reads joined into one preadv, at most (IOV_MAX is 1024)


def read_batch(sources: list) -> list:
    """Read ``(device, offset, length)`` sources (None: skipped) now, in order: a run that
    follows itself on one device with ``readv_now`` in one ``preadv``. Per source: the data,
    None, or the OSError its read (or its run's) failed with."""
    out: list = [None] * len(sources)
    i, n = 0, len(sources)
    while i < n:
        src = sources[i]
        if src is None:
            i += 1
            continue
        dev, pos, length = src
        end = pos + length
        j = i + 1
        if hasattr(dev, "readv_now"):
            while (j < n and j - i < READV_MAX and sources[j] is not None
                   and sources[j][0] is dev and sources[j][1] == end):
                end += sources[j][2]
                j += 1
        try:
            if j - i == 1:
                out[i] = dev.read_now(pos, length)
            else:
                out[i:j] = dev.readv_now(pos, [sources[k][2] for k in range(i, j)])
        except OSError as e:
            out[i:j] = [e] * (j - i)
        i = j
    return out


def check_range(size: int, offset: int, length: int) -> None:
    """Raise ``EINVAL`` unless ``[offset, offset+length)`` lies inside a device of ``size``."""
    if offset < 0 or length < 0 or offset + length > size:
        raise OSError(errno.EINVAL, f"range {offset}+{length} outside device of {size} bytes")


class FileDisk:
    """A disk backed by a regular (usually sparse) file or a block device node.

    Reads and writes are positional system calls issued inline: against the page cache they
    take microseconds, and a thread hop would cost more than it saves. ``fdatasync`` runs in
    the default executor because it can take milliseconds.
    """

    local = True

    def __init__(self, name: str, path: str, size: int | None = None, readonly: bool = False):
        self.name = name
        self.path = path
        flags = os.O_RDONLY if readonly else os.O_RDWR
        self._fd = os.open(path, flags | os.O_CLOEXEC)
        try:  # one owner per disk: a second daemon (or site) must not write the same file
            fcntl.flock(self._fd, (fcntl.LOCK_SH if readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise OSError(errno.EBUSY, f"{path} is in use by another process") from None
        actual = os.lseek(self._fd, 0, os.SEEK_END)
        self._size = (size if size is not None else actual) // SECTOR * SECTOR
        if self._size > actual:
            os.close(self._fd)
            raise OSError(errno.ENOSPC, f"{path} holds {actual} bytes, {self._size} required")
        self.readonly = readonly

    @property
    def size(self) -> int:
        return self._size

    def read_now(self, offset: int, length: int) -> bytes:
        """Synchronous read, for callers on the hot path that need no await."""
        check_range(self._size, offset, length)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:  # a file truncated behind our back
            raise OSError(errno.EIO, f"short read on {self.path}")
        return data

    def readv_now(self, offset: int, lengths: list[int]) -> list[bytearray]:
        """Synchronous read of buffers of ``lengths`` back to back from ``offset``: one
        ``preadv``."""
        check_range(self._size, offset, sum(lengths))
        bufs = [bytearray(n) for n in lengths]
        done = os.preadv(self._fd, bufs, offset)
        for b in bufs:  # a short read (rare): the rest one buffer at a time
            n = len(b)
            if done < n:
                b[done:] = self.read_now(offset + done, n - done)
            offset += n
            done = max(done - n, 0)
        return bufs

    def read_inline_many(self, reqs: list[tuple[int, int]]) -> list:
        sources: list = []
        refused: dict[int, OSError] = {}  # out of range: its own EINVAL, the others are read
        for i, (offset, length) in enumerate(reqs):
            try:
                check_range(self._size, offset, length)
            except OSError as e:
                refused[i] = e
                sources.append(None)
            else:
                sources.append((self, offset, length))
        out = read_batch(sources)
        for i, e in refused.items():
            out[i] = e
        return out

    def _writable(self, offset: int, length: int) -> None:
        check_range(self._size, offset, length)
        if self.readonly:
            raise OSError(errno.EROFS, f"{self.name} is read-only")

    def write_now(self, offset: int, data: bytes) -> None:
        """Synchronous write into the page cache (no sync)."""
        self._writable(offset, len(data))
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def writev_now(self, offset: int, bufs: list) -> None:
        """Synchronous write of ``bufs`` back to back from ``offset``: one ``pwritev``."""
        self._writable(offset, sum(len(b) for b in bufs))
        done = os.pwritev(self._fd, bufs, offset)
        for b in bufs:  # a short write (rare): the rest one buffer at a time
            n = len(b)
            if done < n:
                self.write_now(offset + done, memoryview(b)[done:])
            offset += n
            done = max(done - n, 0)

    read_inline = read_now

    def write_inline(self, offset: int, data, fua: bool, done) -> bool:
        if fua:
            return False
        try:
            self.write_now(offset, data)
        except OSError as e:
            done(e)
        else:
            done(None)
        return True

    async def read(self, offset: int, length: int) -> bytes:
        return self.read_now(offset, length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self.write_now(offset, data)
        if fua:
            await self.flush()

    async def checksum(self, offset: int, length: int) -> bytes:
        """The CHECKSUM digests of ``[offset, offset+length)`` (:func:`chunk_digests`).

        Reading and hashing up to 64 MiB takes a while, so it runs in the default executor.
        """
        check_range(self._size, offset, length)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._checksum_now, offset, length)

    def _checksum_now(self, offset: int, length: int) -> bytes:
        step = 16 * CHECKSUM_CHUNK  # whole chunks per pread: digests concatenate
        parts = []
        for pos in range(offset, offset + length, step):
            n = min(step, offset + length - pos)
            data = os.pread(self._fd, n, pos)
            if len(data) != n:
                raise OSError(errno.EIO, f"short read on {self.path}")
            parts.append(chunk_digests(data))
        return b"".join(parts)

    async def flush(self) -> None:
        if not self.readonly:
            await asyncio.get_running_loop().run_in_executor(None, os.fdatasync, self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ReadOnlyView:
    """A device seen read-only, with the reason (an export of a disk the LVM or an RPV server
    is using): reads pass through, writes fail with ``EPERM`` naming the reason, and a flush
    has nothing to do."""

    readonly = True

    def __init__(self, device: BlockDevice, reason: str):
        self._device = device
        self.name = device.name
        self.local = device.local
        self.readonly_reason = reason
        if isinstance(device, InlineRead):
            self.read_inline = device.read_inline
        if isinstance(device, InlineReadMany):
            self.read_inline_many = device.read_inline_many

    @property
    def size(self) -> int:
        return self._device.size

    async def read(self, offset: int, length: int) -> bytes:
        return await self._device.read(offset, length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        raise OSError(errno.EPERM, f"{self.name} is read-only: {self.readonly_reason}")

    async def flush(self) -> None:
        pass


def create_sparse_file(path: str, size: int) -> None:
    """Create ``path`` as a sparse file of ``size`` bytes; refuse to clobber a non-empty file."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        current = os.fstat(fd).st_size
        if current == 0:
            os.ftruncate(fd, size)
        elif current < size:
            raise OSError(errno.ENOSPC, f"{path} exists with {current} bytes, smaller than {size}")
    finally:
        os.close(fd)
