"""In-process tests of the asyncio NBD server with fake devices and a raw socket client.

Every test runs on both the stdlib event loop and uvloop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct

import pytest
import uvloop

from rpv.blockdev import FileDisk, create_sparse_file
from rpv.nbd import NBDServer
from rpv.nbd.protocol import (
    IHAVEOPT,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    Cmd,
    CmdFlag,
    Err,
    Opt,
    Rep,
)
from rpv.nbd.server import PHASE_TRANSITIONS, Phase
from tests.helpers.disks import AsyncMemDisk
from tests.helpers.waits import settled, until

KiB = 1 << 10
MiB = 1 << 20


# --------------------------------------------------------------------------- fakes


class GatedDisk(AsyncMemDisk):
    """Operations at offset 0 wait for ``gate``; everything else completes at once."""

    def __init__(self, name: str, size: int = 8 * MiB):
        super().__init__(name, size)
        self.gate = asyncio.Event()

    async def _delay(self, op: str, offset: int) -> None:
        if offset == 0:
            await self.gate.wait()


class CallbackDisk(AsyncMemDisk):
    """A device with the inline write path (as a logical volume has): writes at offset 0
    complete inline at once, writes at ``refused`` are left to the async path, and all other
    writes are answered when the test calls :meth:`answer`."""

    def __init__(self, name: str, refused: int = -1):
        super().__init__(name)
        self.refused = refused
        self.held: list = []
        self.inline = 0

    def write_inline(self, offset, data, fua, done):
        if offset == self.refused:
            return False
        self.inline += 1
        self.buf[offset:offset + len(data)] = data
        if offset == 0:
            done(None)
        else:
            self.held.append(done)
        return True

    def answer(self, error: OSError | None = None) -> None:
        held, self.held = self.held, []
        for done in held:
            done(error)


class FailingDisk(AsyncMemDisk):
    def __init__(self, name: str, exc_by_offset: dict[int, BaseException]):
        super().__init__(name)
        self.exc_by_offset = exc_by_offset

    async def read(self, offset: int, length: int) -> bytes:
        exc = self.exc_by_offset.get(offset)
        if exc is not None:
            raise exc
        if offset == 8192:
            return b"short"
        return await super().read(offset, length)


class Registry:
    def __init__(self, *devs):
        self.devs = {d.name: d for d in devs}

    def get_export(self, name):
        return self.devs.get(name)

    def list_exports(self):
        return [(n, "") for n in sorted(self.devs)]


# --------------------------------------------------------------------------- client


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def go_data(name: str) -> bytes:
    return struct.pack(">I", len(name)) + name.encode() + b"\x00\x00"


def request(cmd: int, handle: int, offset: int = 0, length: int = 0, flags: int = 0,
            payload: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length) + payload


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, target, export: str = "hdisk1") -> Client:
        if isinstance(target, tuple):
            reader, writer = await asyncio.open_connection(*target)
        else:
            reader, writer = await asyncio.open_unix_connection(target)
        client = cls(reader, writer)
        assert (await reader.readexactly(18))[:16] == b"NBDMAGICIHAVEOPT"
        writer.write(struct.pack(">I", 3) + option(Opt.GO, go_data(export)))
        while True:
            _, _, rep, length = struct.unpack(">QIII", await reader.readexactly(20))
            await reader.readexactly(length)
            if rep == Rep.ACK:
                return client
            assert rep == Rep.INFO, hex(rep)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def reply(self, lengths: dict[int, int] | None = None) -> tuple[int, int, bytes]:
        magic, err, handle = struct.unpack(">IIQ", await self.reader.readexactly(16))
        assert magic == SIMPLE_REPLY_MAGIC
        data = b""
        if not err and lengths and lengths.get(handle):
            data = await self.reader.readexactly(lengths[handle])
        return handle, err, data

    async def at_eof(self) -> bool:
        return await self.reader.read(1) == b""

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- harness


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(fn, *args, timeout: float = 10):
        async def main():
            result = await asyncio.wait_for(fn(*args), timeout)
            # Nothing may be left running once the test closed its server.
            leftover = asyncio.all_tasks() - {asyncio.current_task()}
            assert not leftover, leftover
            return result

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(main())

    return runner


def only_connection(server: NBDServer):
    [conn] = server._connections
    return conn


@pytest.fixture
def sock(tmp_path):
    return str(tmp_path / "nbd.sock")


# --------------------------------------------------------------------------- tests


def test_out_of_order_replies(run, sock):
    async def body():
        dev = GatedDisk("hdisk1")
        dev.buf[4096:8192] = b"B" * 4096
        dev.buf[0:4096] = b"A" * 4096
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        c.send(request(Cmd.READ, 1, 0, 4096) + request(Cmd.READ, 2, 4096, 4096))
        lengths = {1: 4096, 2: 4096}
        assert await c.reply(lengths) == (2, 0, b"B" * 4096)  # the later request, first
        assert ("read", 0) in dev.started  # the earlier one is still in flight
        dev.gate.set()
        assert await c.reply(lengths) == (1, 0, b"A" * 4096)
        c.close()
        await server.close()

    run(body)


def test_inline_writes_complete_later_in_any_order(run, sock):
    async def body():
        dev = CallbackDisk("hdisk1", refused=3 * 4096)
        server = NBDServer(Registry(dev), max_inflight_requests=4)
        await server.start_unix(sock)
        c = await Client.connect(sock)
        c.send(b"".join(request(Cmd.WRITE, h, h * 4096, 4096, 0, bytes([h]) * 4096)
                        for h in range(8)))
        # handle 0 completes inline, handle 3 takes the async path; the other inline writes
        # stay in flight, and the in-flight limit (4) stops the server from taking more
        assert {(await c.reply())[:2] for _ in range(2)} == {(0, 0), (3, 0)}
        conn = only_connection(server)
        await until(lambda: conn._read_paused)
        assert dev.inline == 5 and conn.peak_inflight <= 4
        assert [w[0] for w in dev.writes] == [3 * 4096]  # the refused one, written async
        while dev.held:
            dev.answer()
            await asyncio.sleep(0)
        got = {(await c.reply())[:2] for _ in range(6)}
        assert got == {(h, 0) for h in (1, 2, 4, 5, 6, 7)}
        assert bytes(dev.buf[:8 * 4096]) == b"".join(bytes([h]) * 4096 for h in range(8))
        c.send(request(Cmd.WRITE, 9, 4096, 4096, 0, b"e" * 4096))
        await until(lambda: dev.held)
        dev.answer(OSError(errno.ENOSPC, "full"))
        assert await c.reply() == (9, Err.ENOSPC, b"")
        c.close()
        await server.close()

    run(body)


def test_pipelined_writes_then_flush(run, sock):
    async def body():
        dev = AsyncMemDisk("hdisk1")
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        stream = b"".join(request(Cmd.WRITE, h, h * 4096, 4096, 0, bytes([h]) * 4096)
                          for h in range(1, 33))
        c.send(stream + request(Cmd.WRITE, 40, 0, 512, CmdFlag.FUA, b"F" * 512))
        got = {(await c.reply())[:2] for _ in range(33)}
        assert got == {(h, 0) for h in [*range(1, 33), 40]}
        c.send(request(Cmd.FLUSH, 41))
        assert await c.reply() == (41, 0, b"")
        assert dev.flushes == 1
        assert (0, 512, True) in dev.writes and (4096, 4096, False) in dev.writes
        assert dev.buf[32 * 4096 : 33 * 4096] == bytes([32]) * 4096
        c.send(request(Cmd.DISC, 42))
        assert await c.at_eof()
        await server.close()

    run(body)


def test_write_zeroes_chunked_with_fua(run, sock):
    async def body():
        dev = AsyncMemDisk("hdisk1")
        dev.buf[:] = b"\xff" * len(dev.buf)
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        c.send(request(Cmd.WRITE_ZEROES, 1, 512, 3 * MiB, CmdFlag.FUA))
        assert await c.reply() == (1, 0, b"")
        assert dev.buf[512 : 512 + 3 * MiB] == bytes(3 * MiB)
        assert dev.buf[:512] == b"\xff" * 512 and dev.buf[512 + 3 * MiB] == 0xFF
        assert max(n for _, n, _ in dev.writes) <= MiB and len(dev.writes) == 3
        assert dev.flushes == 1  # FUA over several chunks = a flush at the end
        c.send(request(Cmd.TRIM, 2, 0, 4096))
        assert await c.reply() == (2, 0, b"")
        c.close()
        await server.close()

    run(body)


def test_device_errors_are_mapped(run, sock):
    async def body():
        dev = FailingDisk("hdisk1", {
            0: OSError(errno.EIO, "disk failed"),
            512: OSError(errno.EROFS, "read-only"),
            1024: OSError(errno.ETIMEDOUT, "deadline"),
            1536: RuntimeError("bug"),
        })
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        for handle, offset in enumerate([0, 512, 1024, 1536, 8192, 4096], start=1):
            c.send(request(Cmd.READ, handle, offset, 512))
        got = {}
        for _ in range(6):
            handle, err, _ = await c.reply({6: 512})
            got[handle] = err
        assert got == {1: 5, 2: 1, 3: 5, 4: 5, 5: 5, 6: 0}  # 5: short read from the device
        c.close()
        await server.close()

    run(body)


def test_backpressure_async_device(run, sock):
    """A client that never reads replies: in-flight work and buffers stay bounded."""

    async def body():
        dev = AsyncMemDisk("hdisk1", 8 * MiB)
        server = NBDServer(Registry(dev), max_inflight_requests=4,
                           max_inflight_bytes=256 * KiB)
        await server.start_unix(sock)
        c = await Client.connect(sock)
        n = 2000
        c.send(b"".join(request(Cmd.READ, h, (h % 64) * 64 * KiB, 64 * KiB)
                        for h in range(n)))
        conn = only_connection(server)
        served = await settled(lambda: conn.requests)
        transport = conn._transport
        assert served < n // 4, served  # it stalled instead of buffering 125 MiB of replies
        assert conn.peak_inflight <= 4
        assert conn.peak_inflight_bytes <= 256 * KiB + 64 * KiB
        # Bounded by: high-water mark + one reply batch + replies of requests that were
        # already in flight when writing paused.
        _, high = transport.get_write_buffer_limits()
        assert transport.get_write_buffer_size() <= high + 256 * KiB + 320 * KiB
        assert conn._read_paused
        # Reading the replies lets everything complete.
        handles = set()
        for _ in range(n):
            handle, err, _ = await c.reply(dict.fromkeys(range(n), 64 * KiB))
            assert err == 0
            handles.add(handle)
        assert handles == set(range(n))
        assert conn.peak_inflight <= 4
        c.close()
        await server.close()

    run(body, timeout=30)


def test_backpressure_inline_file_disk(run, sock, tmp_path):
    async def body():
        path = str(tmp_path / "disk")
        create_sparse_file(path, 64 * MiB)
        dev = FileDisk("hdisk1", path)
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        n = 2000
        c.send(b"".join(request(Cmd.READ, h, (h % 64) * MiB, MiB) for h in range(n)))
        conn = only_connection(server)
        served = await settled(lambda: conn.requests)
        assert served < 50, served  # not 2 GiB of replies
        _, high = conn._transport.get_write_buffer_limits()
        assert conn._transport.get_write_buffer_size() <= high + MiB + 16
        assert conn._core.buffered <= 2 * MiB
        c.close()
        await server.close()
        dev.close()

    run(body, timeout=30)


@pytest.mark.parametrize("inline", [False, True], ids=["task", "inline"])
def test_close_waits_for_inflight_requests(run, sock, inline):
    async def body():
        dev = CallbackDisk("hdisk1") if inline else GatedDisk("hdisk1")
        offset = 4096 if inline else 0  # the offsets each device holds back
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        c.send(request(Cmd.WRITE, 1, offset, 4, 0, b"data"))
        await until(lambda: dev.held if inline else ("write", 0) in dev.started)
        closing = asyncio.create_task(server.close())
        done, _ = await asyncio.wait({closing}, timeout=0.05)  # close() keeps waiting...
        assert not done
        if inline:
            dev.answer()
        else:
            dev.gate.set()
        assert await c.reply() == (1, 0, b"")  # answered before the disconnect
        assert await c.at_eof()
        await closing
        assert dev.buf[offset:offset + 4] == b"data"
        assert not os.path.exists(sock)
        c.close()

    run(body)


def test_connection_lost_lets_inflight_write_finish(run, sock):
    async def body():
        dev = GatedDisk("hdisk1")
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        c.send(request(Cmd.WRITE, 1, 0, 4, 0, b"kept"))
        await until(lambda: ("write", 0) in dev.started)
        conn = only_connection(server)
        c.writer.transport.abort()
        await until(lambda: conn.phase in (Phase.CLOSING, Phase.LOST))  # EOF seen; in flight
        assert dev.writes == []
        dev.gate.set()
        await until(lambda: dev.writes == [(0, 4, False)])  # not cancelled half-way
        assert dev.buf[:4] == b"kept"
        await until(lambda: server.connection_count == 0)
        await server.close()

    run(body)


def test_disc_answers_outstanding_then_closes(run, sock):
    async def body():
        dev = GatedDisk("hdisk1")
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        c.send(request(Cmd.WRITE, 1, 0, 4, 0, b"last") + request(Cmd.DISC, 2))
        await until(lambda: ("write", 0) in dev.started)
        dev.gate.set()
        assert await c.reply() == (1, 0, b"")
        assert await c.at_eof()
        await server.close()

    run(body)


def test_protocol_error_drops_only_that_connection(run, sock):
    async def body():
        dev = AsyncMemDisk("hdisk1")
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        bad = await Client.connect(sock)
        bad.send(b"\xde\xad" * 14)
        assert await bad.at_eof()
        good = await Client.connect(sock)
        good.send(request(Cmd.READ, 7, 0, 512))
        assert await good.reply({7: 512}) == (7, 0, bytes(512))
        bad.close()
        good.close()
        await server.close()

    run(body)


async def go_refused(sock: str, name: str):
    """Connect, ask for export ``name`` with NBD_OPT_GO, expect NBD_REP_ERR_UNKNOWN."""
    reader, writer = await asyncio.open_unix_connection(sock)
    await reader.readexactly(18)
    writer.write(struct.pack(">I", 3) + option(Opt.GO, go_data(name)))
    _, opt, rep, length = struct.unpack(">QIII", await reader.readexactly(20))
    assert (opt, rep) == (Opt.GO, Rep.ERR_UNKNOWN)
    await reader.readexactly(length)
    return reader, writer


def test_unknown_export_then_known(run, sock):
    async def body():
        server = NBDServer(Registry(AsyncMemDisk("hdisk1")))
        await server.start_unix(sock)
        reader, writer = await go_refused(sock, "nope")
        writer.write(option(Opt.EXPORT_NAME, b"nope"))  # legacy: the server must hang up
        assert await reader.read(1) == b""
        writer.close()
        await server.close()

    run(body)


def test_tcp_listener(run):
    async def body():
        server = NBDServer(Registry(AsyncMemDisk("hdisk1")))
        [(host, port)] = await server.start_tcp("127.0.0.1", 0)
        c = await Client.connect((host, port))
        c.send(request(Cmd.WRITE, 1, 512, 3, 0, b"tcp"))
        assert await c.reply() == (1, 0, b"")
        c.send(request(Cmd.READ, 2, 512, 3))
        assert await c.reply({2: 3}) == (2, 0, b"tcp")
        c.close()
        await server.close()

    run(body)


def test_stale_socket_replaced_live_socket_refused(run, sock):
    async def body():
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(sock)
        stale.close()  # leaves a socket file nobody listens on
        server = NBDServer(Registry(AsyncMemDisk("hdisk1")))
        await server.start_unix(sock)
        other = NBDServer(Registry(AsyncMemDisk("hdisk1")))
        with pytest.raises(OSError) as info:
            await other.start_unix(sock)
        assert info.value.errno == errno.EADDRINUSE
        await other.close()
        c = await Client.connect(sock)  # the first server still owns the path
        c.close()
        await server.close()
        assert not os.path.exists(sock)

    run(body)


def test_connection_limit_and_handshake_timeout(run, sock):
    async def body():
        server = NBDServer(Registry(AsyncMemDisk("hdisk1")), max_connections=1,
                           handshake_timeout=0.3)
        await server.start_unix(sock)
        r1, w1 = await asyncio.open_unix_connection(sock)
        assert (await r1.readexactly(18))[:8] == b"NBDMAGIC"
        r2, w2 = await asyncio.open_unix_connection(sock)
        assert await r2.read(1) == b""  # over the limit: dropped without a greeting
        assert await r1.read(1) == b""  # silent client: dropped after the timeout
        w1.close()
        w2.close()
        await until(lambda: server.connection_count == 0)
        c = await Client.connect(sock)  # a slot is free again
        c.close()
        await server.close()

    run(body)


def test_option_flood_is_back_pressured(run, sock):
    """NBD_OPT_LIST answers are large: a client that sends many and reads none stalls."""

    async def body():
        devs = [AsyncMemDisk(f"lv{i:03d}", 4096) for i in range(200)]
        server = NBDServer(Registry(*devs))
        await server.start_unix(sock)
        reader, writer = await asyncio.open_unix_connection(sock)
        await reader.readexactly(18)
        n = 20000  # ~20000 * 200 SERVER replies if nothing pushed back: ~0.5 GB
        writer.write(struct.pack(">I", 3) + option(Opt.LIST) * n)
        conn = only_connection(server)
        await until(lambda: conn._read_paused)
        size = conn._transport.get_write_buffer_size
        await settled(size)
        _, high = conn._transport.get_write_buffer_limits()
        assert size() <= high + 512 * KiB
        assert conn._core.buffered <= n * 16
        writer.close()
        await server.close()

    run(body)


def test_disconnect_export(run, sock):
    async def body():
        lv = GatedDisk("lv01")
        other = AsyncMemDisk("lv02")
        server = NBDServer(Registry(lv, other))
        await server.start_unix(sock)
        a = await Client.connect(sock, "lv01")
        b = await Client.connect(sock, "lv01")
        c = await Client.connect(sock, "lv02")
        a.send(request(Cmd.WRITE, 1, 0, 4, 0, b"last"))
        await until(lambda: ("write", 0) in lv.started)
        dropping = asyncio.create_task(server.disconnect_export("lv01"))
        assert await b.at_eof()
        lv.gate.set()
        assert await a.reply() == (1, 0, b"")  # the in-flight write is answered first
        assert await a.at_eof()
        assert await dropping == 2
        c.send(request(Cmd.READ, 2, 0, 512))  # other exports are untouched
        assert await c.reply({2: 512}) == (2, 0, bytes(512))
        for cl in (a, b, c):
            cl.close()
        await server.close()

    run(body)


def test_phase_table_shape():
    """All lifecycle legality is in PHASE_TRANSITIONS: LOST absorbs everything, every live
    phase can stop or be lost, only the handshake opens an export or starts TLS."""
    table = PHASE_TRANSITIONS
    live = set(Phase) - {Phase.LOST}
    assert {p for (p, t) in table if t == "lost"} == live
    assert {p for (p, t) in table if t == "stop"} == set(Phase)
    assert all(nxt is Phase.LOST for (p, _), nxt in table.items() if p is Phase.LOST)
    assert all(nxt is Phase.CLOSING for (p, t), nxt in table.items()
               if p is Phase.CLOSING and t != "lost")
    assert {p for (p, t) in table if t in ("export_opened", "starttls")} == {Phase.HANDSHAKE}


def test_registry_that_raises_is_an_unknown_export(run, sock):
    """The adapter answers the core's export lookups; a registry bug is an unknown export."""

    class Broken(Registry):
        def get_export(self, name):
            raise RuntimeError("boom")

    async def body():
        server = NBDServer(Broken(AsyncMemDisk("hdisk1")))
        await server.start_unix(sock)
        _, writer = await go_refused(sock, "hdisk1")
        writer.close()
        await server.close()

    run(body)


def test_reads_that_follow_each_other_leave_in_one_preadv(run, sock, tmp_path):
    """Reads parsed together are read as one batch: a sequential run in one ``preadv``,
    answered in request order; a write between two runs is seen by the later run only; an
    out-of-range read in the batch gets its own error."""
    async def body():
        path = str(tmp_path / "disk")
        create_sparse_file(path, 8 * MiB)
        dev = FileDisk("hdisk1", path)
        dev.write_now(0, bytes(range(256)) * 256)  # 64 KiB of a known pattern
        readvs: list[list[int]] = []
        real = dev.readv_now

        def counted(offset, lengths):
            readvs.append(list(lengths))
            return real(offset, lengths)
        dev.readv_now = counted
        server = NBDServer(Registry(dev))
        await server.start_unix(sock)
        c = await Client.connect(sock)
        burst = [request(Cmd.READ, h, h * 4096, 4096) for h in range(8)]  # a stream
        burst.append(request(Cmd.READ, 8, 40960, 512))  # elsewhere: a pread of its own
        burst.append(request(Cmd.WRITE, 9, 0, 4096, payload=b"w" * 4096))
        burst += [request(Cmd.READ, 10 + h, h * 4096, 4096) for h in range(2)]
        burst.append(request(Cmd.READ, 12, 8 * MiB - 512, 1024))  # past the end
        c.send(b"".join(burst))
        lengths = {h: 4096 for h in range(12)} | {8: 512, 9: 0}
        replies = [await c.reply(lengths) for _ in range(13)]
        pattern = bytes(range(256)) * 256
        assert replies[:9] == [(h, 0, pattern[h * 4096:(h + 1) * 4096]) for h in range(8)] + [
            (8, 0, pattern[40960:41472])]
        assert replies[9][:2] == (9, 0)
        assert replies[10:] == [(10, 0, b"w" * 4096), (11, 0, pattern[4096:8192]),
                                (12, Err.EINVAL, b"")]
        assert readvs == [[4096] * 8, [4096] * 2]
        c.close()
        await server.close()
        dev.close()

    run(body)
