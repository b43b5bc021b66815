"""The asyncio RPV server: one listener per site, exporting local disks by PVID.

Each accepted connection runs a sans-IO :class:`rpv.protocol.connection.Connection`. The
server asks its backend which RPV servers (exports) exist; a HELLO binds the connection to one
export after checking, in this order: the PVID is known (``ENOENT``), the peer address equals
the export's ``client_addr`` (``EACCES``, then close), the RPV server is Available (``ENODEV``).
A newer HELLO for the same export closes the older connections, so requests left in a dead
session's socket buffer can never be applied after the client's newer writes. A HELLO that
asks to join (``FEATURE_JOIN``) adds one more connection (a network path) to the live session
instead; each connection's requests are applied in their arrival order, and the client resends
a request on another connection only after a newer plain HELLO has closed them all.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from rpv import buffers
from rpv import protocol as pc
from rpv.blockdev import BlockDevice, check_range, digests
from rpv.instance import new_instance
from rpv.protocol import (
    FEATURE_FLUSH,
    FEATURE_FUA,
    FEATURE_JOIN,
    DiscoverEntry,
    DiscoverInfo,
    HelloInfo,
    Opcode,
    pvid_to_str,
)
from rpv.protocol import VERSION as PROTOCOL_VERSION
from rpv.protocol import compress as codecs

log = structlog.get_logger("rpv.server")

CORK_LIMIT = 256 * 1024  # queued reply bytes that are written at once, not at iteration end
REPLY_BATCH = 4  # replies sent together: the client completes these while we write the rest


@dataclass(slots=True)
class Export:
    """One RPV server device as the listener sees it."""

    server_name: str
    disk_name: str
    pvid: bytes
    client_addr: str
    available: bool
    disk: BlockDevice | None
    size: int


@dataclass(slots=True)
class Limits:
    max_connections: int = 256
    max_payload: int = 4 * 1024 * 1024
    max_outstanding: int = 256
    handshake_timeout: float = 10.0
    # payload compression codecs a client may ask for in HELLO (default: those installed)
    compress: tuple[str, ...] = field(default_factory=codecs.available)


class RPVServer:
    """Listener plus the set of live connections."""

    def __init__(self, exports: Callable[[], list[Export]], site: Callable[[], str],
                 node: str, limits: Limits | None = None, instance: bytes | None = None):
        self._exports = exports
        self._site = site
        self.node = node
        self.instance = instance if instance is not None else new_instance()
        self.limits = limits or Limits()
        self._servers: list[asyncio.base_events.Server] = []
        self.connections: set[_ServerConnection] = set()

    async def start(self, host: str, port: int, ssl=None) -> None:
        """Listen on host:port; with an SSL context every client must present a certificate
        from the site CA (and still come from the export's client_addr)."""
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: _ServerConnection(self), host, port,
                                       reuse_address=True, backlog=128, ssl=ssl,
                                       ssl_handshake_timeout=self.limits.handshake_timeout
                                       if ssl else None)
        self._servers.append(srv)
        log.info("rpv_listening", host=host, port=port, tls=ssl is not None)

    def site(self) -> str:
        return self._site()

    def export_for(self, pvid: bytes) -> Export | None:
        return next((e for e in self._exports() if e.pvid == pvid), None)

    def exports_for_peer(self, peer: str) -> list[Export]:
        return [e for e in self._exports() if peer in e.client_addr.split(",")]

    def drop_export(self, server_name: str, reason: str) -> int:
        """Close every connection bound to ``server_name`` (it went Defined or was deleted)."""
        victims = [c for c in self.connections
                   if c.export is not None and c.export.server_name == server_name]
        for c in victims:
            c.abort(reason)
        return len(victims)

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for c in list(self.connections):
            c.abort("shutdown")
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()


class _ServerConnection(asyncio.BufferedProtocol):
    def __init__(self, server: RPVServer):
        self.server = server
        lim = server.limits
        self.conn = pc.Connection(pc.Role.SERVER, max_payload=lim.max_payload,
                                  max_outstanding=lim.max_outstanding, buffers=buffers.shared())
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.export: Export | None = None
        self._tasks: set[asyncio.Task] = set()
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._paused_writing = False
        self._reading_paused = False
        self._closed = False
        self._out: list = []
        self._out_bytes = 0

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        srv = self.server
        if len(srv.connections) >= srv.limits.max_connections:
            log.warning("rpv_connection_refused", peer=self.peer, reason="too many connections")
            transport.abort()
            self._closed = True
            return
        srv.connections.add(self)
        self._handshake_timer = asyncio.get_running_loop().call_later(
            srv.limits.handshake_timeout, self._handshake_expired)
        log.info("rpv_connect", peer=self.peer)

    def connection_lost(self, exc) -> None:
        self._closed = True
        self.server.connections.discard(self)
        if self._handshake_timer:
            self._handshake_timer.cancel()
        log.info("rpv_disconnect", peer=self.peer,
                 device=self.export.server_name if self.export else None,
                 error=str(exc) if exc else None)

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._update_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer(sizehint)  # large WRITE payloads land in place

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.buffer_updated(nbytes)
        self._process()

    def _process(self) -> None:
        """Handle buffered frames until none is complete or back-pressure pauses us.

        Stopping while paused matters: one read may hold thousands of small requests, and
        each READ reply can be large, so replies must not be produced faster than the peer
        takes them.
        """
        conn = self.conn
        while not self._closed and not self._reading_paused:
            ev = conn.next_event()
            if ev is pc.NEED_DATA:
                break
            _HANDLERS[type(ev)](self, ev)

    def eof_received(self):
        self.conn.receive_data(b"")
        self._process()
        return False

    # -- helpers -----------------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        if not self._closed:
            log.info("rpv_connection_closed", peer=self.peer, reason=reason,
                     device=self.export.server_name if self.export else None)
            self._closed = True
            if self.transport:
                self.transport.abort()

    def close_after_reply(self, reason: str) -> None:
        """Send what is queued (the refusal), then close."""
        if not self._closed:
            log.info("rpv_connection_closed", peer=self.peer, reason=reason)
            self._flush()
            self._closed = True
            self.transport.close()

    def _handshake_expired(self) -> None:
        if self.export is None:
            self.abort("no HELLO within handshake timeout")

    def _send(self, build, *args) -> None:
        """Build a reply with the sans-IO connection and queue it, unless we are closed (a
        task may finish after the peer went away). Replies produced in one loop iteration
        leave in one system call."""
        if not self._closed:
            if not self._out:
                asyncio.get_running_loop().call_soon(self._flush)
            bufs = build(*args)
            self._out.extend(bufs)
            self._out_bytes += sum(len(b) for b in bufs)
            if self._out_bytes >= CORK_LIMIT or len(self._out) >= REPLY_BATCH:
                self._flush()  # back-pressure must see big replies; the client starts early

    def _flush(self) -> None:
        out, self._out = self._out, []
        self._out_bytes = 0
        if out and not self._closed:
            self.transport.writelines(out)

    def _send_oserror(self, request_id: int, opcode: Opcode, e: OSError) -> None:
        self._send(self.conn.send_error, request_id, opcode, e.errno or errno.EIO, str(e))

    def _update_reading(self) -> None:
        want_pause = self._paused_writing or len(self._tasks) >= self.server.limits.max_outstanding
        if want_pause != self._reading_paused and not self._closed:
            self._reading_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
                asyncio.get_running_loop().call_soon(self._process)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        self._update_reading()

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._update_reading()

    def _bound_disk(self, ev, opcode: Opcode) -> BlockDevice | None:
        exp = self.export
        if exp is None or not exp.available or exp.disk is None:
            self._send(self.conn.send_error, ev.request_id, opcode, errno.ENODEV,
                                            "RPV server is not Available")
            return None
        return exp.disk

    # -- request handlers --------------------------------------------------------------------
    def on_hello(self, ev: pc.HelloRequest) -> None:
        srv = self.server
        exp = srv.export_for(ev.pvid)
        pvid = pvid_to_str(ev.pvid)
        fail = None
        if exp is None:
            fail = (errno.ENOENT, f"no RPV server exports PVID {pvid}")
        elif self.peer not in exp.client_addr.split(","):
            fail = (errno.EACCES, f"client {self.peer} is not allowed for {exp.server_name} "
                                  f"(client_addr {exp.client_addr})")
        elif not exp.available or exp.disk is None:
            fail = (errno.ENODEV, f"{exp.server_name} is Defined, not Available")
        elif not ev.min_version <= PROTOCOL_VERSION <= ev.max_version:
            fail = (errno.EPROTO, f"protocol versions {ev.min_version}..{ev.max_version} "
                                  f"not supported (server speaks {PROTOCOL_VERSION})")
        join = bool(ev.features & FEATURE_JOIN)
        if not fail and join and not self._session_of(exp):
            fail = (errno.ESTALE, f"no session of {exp.server_name} to join")
        if fail:
            log.warning("rpv_hello_refused", peer=self.peer, pvid=pvid, errno=fail[0],
                        reason=fail[1], client_site=ev.client_site)
            self._send(self.conn.send_error, ev.request_id, Opcode.HELLO, *fail)
            if fail[0] == errno.EACCES:
                self.close_after_reply("peer address not allowed")
            return
        if not join:
            for other in self._session_of(exp):
                other.abort("superseded by a newer session")
        self.export = exp
        if self._handshake_timer:
            self._handshake_timer.cancel()
        lim = srv.limits
        features = FEATURE_FUA | FEATURE_FLUSH | FEATURE_JOIN
        asked = codecs.feature_codec(ev.features)
        if asked in lim.compress and asked in codecs.available():
            features |= codecs.FEATURES[asked]  # accepted; without the bit: refused
        info = HelloInfo(version=PROTOCOL_VERSION, features=features,
                         server_site=srv.site(), server_node=srv.node, disk_name=exp.disk_name,
                         disk_size=exp.size, block_size=512, max_payload=lim.max_payload,
                         max_outstanding=lim.max_outstanding, instance=srv.instance)
        self._send(self.conn.send_hello_reply, ev.request_id, info)
        log.info("rpv_session", peer=self.peer, device=exp.server_name, disk=exp.disk_name,
                 pvid=pvid, client_site=ev.client_site, client_node=ev.client_node,
                 compress=self.conn.codec or "none", joined=join)

    def _session_of(self, exp: Export) -> list[_ServerConnection]:
        """The other open connections bound to ``exp`` (its session)."""
        return [other for other in self.server.connections
                if other is not self and not other._closed and other.export is not None
                and other.export.server_name == exp.server_name]

    def on_discover(self, ev: pc.DiscoverRequest) -> None:
        srv = self.server
        exports = srv.exports_for_peer(self.peer)
        if not exports:
            log.warning("rpv_discover_refused", peer=self.peer)
            self._send(self.conn.send_error, ev.request_id, Opcode.DISCOVER, errno.EACCES,
                       f"no RPV server at site {srv.site()} accepts client {self.peer}")
            return
        entries = tuple(DiscoverEntry(server_name=e.server_name, disk_name=e.disk_name,
                                      pvid=e.pvid, size=e.size,
                                      state=pc.DeviceState(int(e.available)))
                        for e in exports)
        self._send(self.conn.send_discover_reply, ev.request_id,
                   DiscoverInfo(site=srv.site(), node=srv.node, entries=entries))

    def on_read(self, ev: pc.ReadRequest) -> None:
        disk = self._bound_disk(ev, Opcode.READ)
        if disk is None:
            return
        now = getattr(disk, "read_now", None)
        if now is not None:
            try:
                data = now(ev.offset, ev.length)
            except OSError as e:
                self._send_oserror(ev.request_id, Opcode.READ, e)
                return
            self._send(self.conn.send_read_reply, ev.request_id, data)
            return
        self._spawn(self._read_async(disk, ev))

    async def _read_async(self, disk: BlockDevice, ev: pc.ReadRequest) -> None:
        try:
            data = await disk.read(ev.offset, ev.length)
        except OSError as e:
            self._send_oserror(ev.request_id, Opcode.READ, e)
            return
        self._send(self.conn.send_read_reply, ev.request_id, data)

    def on_write(self, ev: pc.WriteRequest) -> None:
        disk = self._bound_disk(ev, Opcode.WRITE)
        if disk is None:
            return
        now = getattr(disk, "write_now", None)
        if now is not None and not ev.fua:
            try:
                now(ev.offset, ev.data)
            except OSError as e:
                self._send_oserror(ev.request_id, Opcode.WRITE, e)
                return
            finally:  # the page cache has it, or the write failed: nobody reads it again
                buffers.shared().give(ev.data)
            self._send(self.conn.send_reply, ev.request_id, Opcode.WRITE)
            return
        self._spawn(self._complete(ev.request_id, Opcode.WRITE,
                                   disk.write(ev.offset, ev.data, fua=ev.fua), ev.data))

    def on_flush(self, ev: pc.FlushRequest) -> None:
        disk = self._bound_disk(ev, Opcode.FLUSH)
        if disk is not None:
            self._spawn(self._complete(ev.request_id, Opcode.FLUSH, disk.flush()))

    async def _complete(self, request_id: int, opcode: Opcode, coro, payload=None) -> None:
        """Answer once ``coro`` ran; then ``payload`` goes back to the buffer pool (not
        when cancelled: a disk write in a thread may still be reading it)."""
        try:
            await coro
        except OSError as e:
            failure = e
        else:
            failure = None
        buffers.shared().give(payload)
        if failure is None:
            self._send(self.conn.send_reply, request_id, opcode)
        else:
            self._send_oserror(request_id, opcode, failure)

    def on_checksum(self, ev: pc.ChecksumRequest) -> None:
        disk = self._bound_disk(ev, Opcode.CHECKSUM)
        if disk is None:
            return
        try:
            check_range(disk.size, ev.offset, ev.length)
        except OSError as e:
            self._send_oserror(ev.request_id, Opcode.CHECKSUM, e)
            return
        self._spawn(self._checksum_async(disk, ev))

    async def _checksum_async(self, disk: BlockDevice, ev: pc.ChecksumRequest) -> None:
        """Only the digests cross the link; a disk without ``checksum`` is read and hashed."""
        try:
            sums = await digests(disk, ev.offset, ev.length)
        except OSError as e:
            self._send_oserror(ev.request_id, Opcode.CHECKSUM, e)
            return
        self._send(self.conn.send_checksum_reply, ev.request_id, sums)

    def on_ping(self, ev: pc.PingRequest) -> None:
        self._send(self.conn.send_reply, ev.request_id, Opcode.PING)

    def on_protocol_error(self, ev: pc.ProtocolError) -> None:
        """Log, send a last error reply when the header was readable, and close."""
        log.warning("rpv_protocol_error", peer=self.peer, errno=ev.code, reason=ev.message,
                    device=self.export.server_name if self.export else None,
                    request_id=ev.request_id)
        if ev.request_id is not None and ev.opcode is not None and not self._closed:
            self._out.append(pc.build_error_reply(ev.request_id, ev.opcode, ev.code,
                                                  ev.message))
        self.close_after_reply(f"protocol error: {ev.message}")

    def on_closed(self, ev) -> None:
        if not self._closed:
            self._closed = True
            self.transport.close()


_HANDLERS = {
    pc.HelloRequest: _ServerConnection.on_hello,
    pc.DiscoverRequest: _ServerConnection.on_discover,
    pc.ReadRequest: _ServerConnection.on_read,
    pc.WriteRequest: _ServerConnection.on_write,
    pc.FlushRequest: _ServerConnection.on_flush,
    pc.PingRequest: _ServerConnection.on_ping,
    pc.ChecksumRequest: _ServerConnection.on_checksum,
    pc.ProtocolError: _ServerConnection.on_protocol_error,
    pc.ConnectionClosed: _ServerConnection.on_closed,
}
