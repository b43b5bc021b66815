"""Receive buffers for large payloads, reused with exact ownership.

A large WRITE payload is received straight into a buffer of its own. Allocating it afresh
costs a zero-filled ``bytearray`` (for 1 MiB: an mmap, 256 page faults and an munmap), so
the protocol cores take it from a :class:`BufferPool` and the adapter gives it back once
nothing can read it any more: at the RPV server when the disk write returned, at the NBD
server when every copy of the write answered successfully. A buffer that some party may still
hold (a request queued on a stalled link, which a resend or a late socket write may still
read) is never given back; the garbage collector frees it when its last holder lets go.

The pool is sans-IO bookkeeping: it lends each buffer once, takes back only a buffer it lent
and that was not given back or forgotten since (so a double give cannot put one buffer in two
hands), and keeps at most ``limit`` bytes of free buffers.
"""

from __future__ import annotations

MIN_POOLED = 4096  # smaller payloads are copied out of the receive buffer instead
PER_SIZE = 64  # free buffers kept per size, at most
LIMIT = 64 << 20  # bytes of free buffers kept, at most


class PoolBuffer(bytearray):
    """A buffer the pool lent out; ``lent`` is False once given back (or forgotten)."""

    __slots__ = ("lent",)


class BufferPool:
    """Free buffers by exact size (workloads repeat their request sizes)."""

    def __init__(self, limit: int = LIMIT, per_size: int = PER_SIZE):
        self.limit = limit
        self.per_size = per_size
        self._free: dict[int, list[PoolBuffer]] = {}
        self.free_bytes = 0
        self.allocated = 0  # buffers made afresh
        self.reused = 0  # buffers lent again

    def take(self, n: int) -> bytearray:
        """A buffer of exactly ``n`` bytes, with old contents: the caller overwrites all of
        it before anyone reads it. Below ``MIN_POOLED`` a plain ``bytearray``."""
        if n < MIN_POOLED:
            return bytearray(n)
        free = self._free.get(n)
        if free:
            buf = free.pop()
            self.free_bytes -= n
            self.reused += 1
        else:
            buf = PoolBuffer(n)
            self.allocated += 1
        buf.lent = True
        return buf

    def give(self, buf) -> None:
        """``buf`` is no longer read or written by anyone: lend it again later. Anything the
        pool did not lend, or already took back, is ignored."""
        if type(buf) is not PoolBuffer or not buf.lent:
            return
        buf.lent = False
        n = len(buf)
        free = self._free.setdefault(n, [])
        if len(free) < self.per_size and self.free_bytes + n <= self.limit:
            free.append(buf)
            self.free_bytes += n

    @staticmethod
    def forget(buf) -> None:
        """``buf`` stays with its holders (they may still read it): never lend it again,
        even if someone gives it back later. The garbage collector frees it."""
        if type(buf) is PoolBuffer:
            buf.lent = False

    def holds(self, buf) -> bool:
        """Whether ``buf`` is among the free buffers (tests)."""
        return any(b is buf for b in self._free.get(len(buf), ()))


_shared = BufferPool()


def shared() -> BufferPool:
    """The daemon's pool, shared by its NBD and RPV servers (one event loop)."""
    return _shared
