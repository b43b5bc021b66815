"""asyncio adapter around :mod:`rpv.nbd.protocol`: an NBD server generic over BlockDevice.

Each connection is an :class:`asyncio.BufferedProtocol` (WRITE payloads are received straight
into their own buffer). Requests are pipelined and their replies are
written as they complete, so replies may go out of order. A device that offers the inline fast
paths (``read_inline`` / ``write_inline``, see :mod:`rpv.blockdev`; FileDisk and logical
volumes do) has its READs and WRITEs started from the receive path without a task; whatever a
device cannot serve inline runs as a task per request. Replies produced in one pass (or one
loop iteration) are written with one system call.

Per connection the number of requests in flight and the bytes they hold are bounded; at the
bound, or while the transport's write buffer is above its high-water mark, the connection
stops turning bytes into requests and pauses reading, so a client that never reads its replies
cannot make the server buffer without limit.

When a connection is lost, in-flight device operations are left to finish (a write is never
cut in half) and their replies are dropped.

Access control is per listener (:class:`Listener`): a TCP listener may require TLS through
NBD_OPT_STARTTLS (the ``ssl.SSLContext`` decides which client certificates pass) and may
admit only some client networks; a unix socket is created with an explicit mode and group.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

import structlog

from rpv import buffers
from rpv.blockdev import (
    READV_MAX,
    BlockDevice,
    ExportRegistry,
    InlineRead,
    InlineReadMany,
    InlineWrite,
)
from rpv.nbd.protocol import (
    CMD_FLUSH,
    CMD_READ,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    FLAG_FUA,
    MAX_REQUEST_LENGTH,
    NEED_DATA,
    ConnectionClosed,
    Disconnect,
    Err,
    ExportListRequested,
    ExportOpened,
    ExportRequested,
    OptionAnswered,
    OptionRejected,
    ProtocolError,
    Rep,
    Request,
    ServerConnection,
    StartTLS,
    TransmissionFlag,
    answer_from_registry,
    errno_to_nbd,
)

log = structlog.get_logger("nbd")

ZERO_CHUNK = 1 << 20
_ZEROS = bytes(ZERO_CHUNK)
_BATCH_LIMIT = 256 << 10  # replies are batched into one transport write up to this size

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Listener:
    """What one listening socket demands of its clients."""

    tls: ssl.SSLContext | None = None  # required through NBD_OPT_STARTTLS when set
    allow: tuple[Network, ...] = ()  # client networks admitted (empty: any)

    def admits(self, peer: object) -> bool:
        if not self.allow:
            return True
        try:
            addr = ipaddress.ip_address(peer[0])  # type: ignore[index]
        except (TypeError, ValueError, IndexError):
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allow)


_UNIX = Listener()


class NBDServer:
    """Serve every export of ``registry`` over NBD on unix and/or TCP sockets.

    ``max_inflight_requests`` / ``max_inflight_bytes`` bound each connection (READ length and
    WRITE payload count as bytes); ``max_connections`` bounds the whole server;
    ``handshake_timeout`` drops clients that do not finish option haggling in time.
    """

    def __init__(
        self,
        registry: ExportRegistry,
        *,
        max_inflight_requests: int = 128,
        max_inflight_bytes: int = 64 << 20,
        max_connections: int = 256,
        handshake_timeout: float = 30.0,
        max_request_length: int = MAX_REQUEST_LENGTH,
    ):
        if max_inflight_requests < 1 or max_inflight_bytes < 1:
            raise ValueError("in-flight limits must be positive")
        self.registry = registry
        self.max_inflight_requests = max_inflight_requests
        self.max_inflight_bytes = max_inflight_bytes
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.max_request_length = max_request_length
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[tuple[str, int]] = []
        self._connections: set[_Connection] = set()
        self._closing = False
        self._next_id = 0

    # ------------------------------------------------------------------ listeners

    async def start_unix(self, path: str, *, mode: int = 0o600, group: str = "") -> None:
        """Listen on a unix socket at ``path`` (replacing a stale socket file left there),
        created with ``mode`` and, if given, owned by ``group``; nobody else may connect."""
        self._check_open()
        gid = _group_id(group) if group else -1
        _remove_stale_socket(path)
        loop = asyncio.get_running_loop()
        old = os.umask(0o177)  # never reachable with wider permissions, not even briefly
        try:
            server = await loop.create_unix_server(partial(self._make_protocol, _UNIX), path)
        finally:
            os.umask(old)
        self._servers.append(server)
        try:
            if gid >= 0:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
        except OSError:
            server.close()
            raise
        with contextlib.suppress(OSError):
            self._unix_paths.append((path, os.stat(path).st_ino))
        log.info("nbd_listen", socket=path, mode=f"{mode:04o}", group=group or None)

    async def start_tcp(self, host: str, port: int, *, tls: ssl.SSLContext | None = None,
                        allow: tuple[Network, ...] = ()) -> list[tuple[str, int]]:
        """Listen on TCP; return the bound (host, port) addresses (useful with port 0).

        With ``tls`` every client must complete NBD_OPT_STARTTLS with a certificate the
        context accepts before it sees any export; ``allow`` limits client networks."""
        self._check_open()
        loop = asyncio.get_running_loop()
        listener = Listener(tls, tuple(allow))
        server = await loop.create_server(partial(self._make_protocol, listener), host, port,
                                          reuse_address=True)
        self._servers.append(server)
        addrs = [s.getsockname()[:2] for s in server.sockets]
        log.info("nbd_listen", tcp=[f"{h}:{p}" for h, p in addrs], tls=tls is not None,
                 allow=[str(n) for n in allow] or None)
        return addrs

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("NBD server is closed")

    def _make_protocol(self, listener: Listener) -> _Connection:
        self._next_id += 1
        return _Connection(self, self._next_id, listener)

    # ------------------------------------------------------------------ introspection

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def connections(self) -> list[dict[str, Any]]:
        """A snapshot of the open connections (for status output)."""
        return [c.info() for c in self._connections]

    # ------------------------------------------------------------------ shutdown

    async def disconnect_export(self, name: str, writers_only: bool = False) -> int:
        """Close every connection serving export ``name`` (e.g. before varyoffvg or rmdev;
        with ``writers_only``, those that may write, e.g. when a disk becomes a PV in use).

        In-flight requests finish and are answered first. Returns how many connections were
        closed. New connections are the registry's business: stop returning the device (or
        return it read-only) first.
        """
        conns = [c for c in self._connections if c.export == name
                 and not (writers_only and c.readonly)]
        for conn in conns:
            conn.shutdown(reason="export withdrawn")
        waits = [conn.lost for conn in conns if not conn.lost.done()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.handshake_timeout)
            if pending:  # clients that stopped reading their replies: drop them
                for conn in conns:
                    conn.finish(force=True)
                await asyncio.wait(pending)
        return len(conns)

    async def close(self, grace: float | None = None) -> None:
        """Stop listening, finish in-flight requests, close every connection.

        Requests already running finish and are answered (the spec asks a server to service
        in-flight requests before disconnecting). With ``grace`` set, requests still running
        after that many seconds are cancelled instead.
        """
        if self._closing:
            return
        self._closing = True
        for server in self._servers:
            server.close()
        conns = list(self._connections)
        for conn in conns:
            conn.shutdown()
        tasks = [t for conn in conns for t in conn.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for conn in conns:
            conn.finish(force=True)
            conn._maybe_forget()
        waits = [conn.lost for conn in conns if not conn.lost.done()]
        if waits:
            await asyncio.wait(waits)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for path, ino in self._unix_paths:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
        self._unix_paths.clear()
        log.info("nbd_closed")

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise OSError(errno.EINVAL, f"group '{group}' does not exist") from None


def _remove_stale_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket nobody listens on; refuse to steal a live one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale
    else:
        raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")
    finally:
        probe.close()


class Phase(Enum):
    """Where a connection is in its life; legal moves are :data:`PHASE_TRANSITIONS`."""

    __hash__ = object.__hash__  # members are singletons: C-speed set and table lookups

    HANDSHAKE = "handshake"  # option haggling (the handshake timer runs)
    TLS = "tls"  # between NBD_OPT_STARTTLS and the end of the TLS handshake: nothing is read
    SERVING = "serving"  # an export is open: requests are started
    CLOSING = "closing"  # no more requests; the transport closes once in-flight ones finish
    LOST = "lost"  # the transport is gone: replies of in-flight requests are dropped


_LIVE = (Phase.HANDSHAKE, Phase.TLS, Phase.SERVING, Phase.CLOSING)

PHASE_TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (Phase.HANDSHAKE, "starttls"): Phase.TLS,
    (Phase.TLS, "tls_established"): Phase.HANDSHAKE,
    (Phase.CLOSING, "tls_established"): Phase.CLOSING,  # stopped during the TLS handshake
    (Phase.HANDSHAKE, "export_opened"): Phase.SERVING,
    **{(phase, "stop"): Phase.CLOSING for phase in _LIVE},
    (Phase.LOST, "stop"): Phase.LOST,
    **{(phase, "lost"): Phase.LOST for phase in _LIVE},
}
"""(phase, what happened) -> next phase. A missing key is a bug in this module."""

_STOPPED = frozenset({Phase.CLOSING, Phase.LOST})  # no more requests will be started
_PARSING = frozenset({Phase.HANDSHAKE, Phase.SERVING})  # received bytes become events


class _Connection(asyncio.BufferedProtocol):
    """One client connection: feeds the sans-IO core and starts its requests, inline where the
    device allows, else as tasks."""

    def __init__(self, server: NBDServer, cid: int, listener: Listener = _UNIX):
        self._server = server
        self.cid = cid
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._max_requests = server.max_inflight_requests
        self._max_bytes = server.max_inflight_bytes
        self._core = ServerConnection(max_request_length=server.max_request_length,
                                      tls=listener.tls is not None, buffers=buffers.shared())
        self._transport: asyncio.Transport | None = None
        self._device: BlockDevice | None = None
        self._read_inline: Any = None
        self._read_many: Any = None
        self._reads: list[Request] = []  # inline reads parsed in this pump, not yet read
        self._reads_bytes = 0
        self._write_inline: Any = None
        self.export: str | None = None
        self.readonly = False
        self.peer: Any = None
        self.client_cert: str | None = None  # subject CN of a TLS client's certificate
        self.tasks: set[asyncio.Task] = set()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self.inflight = 0
        self.inflight_bytes = 0
        self.peak_inflight = 0
        self.peak_inflight_bytes = 0
        self.requests = 0
        self._blocked = False  # stopped pulling requests because of a limit
        self._pumping = False
        self._phase = Phase.HANDSHAKE
        self._tls_task: asyncio.Task | None = None
        self._read_paused = False
        self._write_paused = False
        # How to close, orthogonal to the phase: even with unsent replies (client not
        # reading). Sticks once set; may be set before the connection is even made.
        self._force_close = False
        self._reason = "closed"
        self._timer: asyncio.TimerHandle | None = None
        # Replies produced in one pass (or one loop iteration) go out in one write.
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._flush_handle: asyncio.Handle | None = None

    @property
    def phase(self) -> Phase:
        return self._phase

    def _advance(self, trigger: str) -> None:
        """Move to the phase :data:`PHASE_TRANSITIONS` gives for ``trigger``."""
        try:
            self._phase = PHASE_TRANSITIONS[(self._phase, trigger)]
        except KeyError:
            raise RuntimeError(f"NBD connection {self.cid}: {trigger!r} in phase "
                               f"{self._phase.name}") from None

    def info(self) -> dict[str, Any]:
        return {"id": self.cid, "peer": self.peer, "export": self.export,
                "phase": self._phase.value, "readonly": self.readonly,
                "tls": self.client_cert is not None, "client_cert": self.client_cert,
                "inflight": self.inflight, "requests": self.requests}

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = peer if peer else "unix"
        server = self._server
        reason = ("closing" if server._closing else
                  "too many connections" if len(server._connections) >= server.max_connections
                  else None if self._listener.admits(peer) or not peer
                  else "client address not in nbd_allow")
        if reason is not None:
            log.warning("nbd_connection_refused", conn=self.cid, peer=self.peer, reason=reason)
            self._advance("stop")
            transport.abort()
            return
        server._connections.add(self)
        log.info("nbd_connect", conn=self.cid, peer=self.peer)
        transport.write(self._core.data_to_send())
        if server.handshake_timeout:
            self._timer = self._loop.call_later(server.handshake_timeout,
                                                self._handshake_timed_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._core.get_buffer(sizehint)  # WRITE payloads land in place

    def buffer_updated(self, nbytes: int) -> None:
        self._core.buffer_updated(nbytes)
        self._pump()

    def eof_received(self) -> bool:
        # Keep the transport open so replies to in-flight requests can still be sent (TLS
        # cannot half-close: there the transport closes anyway).
        self._core.receive_data(b"")
        self._pump()
        return self.client_cert is None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._blocked:
            self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase is Phase.LOST:
            return
        self._advance("lost")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is not None and self._reason == "closed":
            self._reason = f"connection lost: {exc}"
        log.info("nbd_disconnect", conn=self.cid, peer=self.peer, export=self.export,
                 reason=self._reason, requests=self.requests, inflight=self.inflight)
        self._maybe_forget()

    # ------------------------------------------------------------------ request pump

    def _pump(self) -> None:
        """Turn buffered bytes into events while under the limits."""
        core = self._core
        self._pumping = True
        try:
            while self._phase in _PARSING:
                if self._batch_bytes >= _BATCH_LIMIT:
                    self._flush()  # may call pause_writing()
                if (self.inflight >= self._max_requests or self.inflight_bytes >= self._max_bytes
                        or self._write_paused):
                    self._blocked = True
                    if not self._read_paused:
                        self._read_paused = True
                        self._transport.pause_reading()
                    break
                ev = core.next_event()
                if type(ev) is Request:
                    kind = ev.kind
                    if kind == CMD_READ and self._read_many is not None:
                        self._reads.append(ev)  # read with the others parsed in this pump
                        self._reads_bytes += ev.length
                        if (len(self._reads) >= READV_MAX
                                or self._reads_bytes + self._batch_bytes >= _BATCH_LIMIT):
                            self._inline_reads()
                        continue
                    if self._reads:  # reads parsed before a later request are read first
                        self._inline_reads()
                    if kind == CMD_READ and self._read_inline is not None:
                        self._inline_read(ev)
                    elif kind == CMD_WRITE and self._write_inline is not None:
                        self._inline_write(ev)
                    else:
                        self._spawn(ev, self._begin(ev))
                    continue
                if self._reads:
                    self._inline_reads()
                if ev is NEED_DATA:
                    self._blocked = False
                    if self._read_paused:
                        self._read_paused = False
                        self._transport.resume_reading()
                    break
                self._on_event(ev)
        finally:
            if self._reads:
                self._inline_reads()
            self._pumping = False  # replies completed meanwhile are in the batch
        if core.has_data_to_send:
            self._batch.append(core.data_to_send())
        self._flush()
        if self._phase in _STOPPED:
            self.finish()

    def _flush(self) -> None:
        batch = self._batch
        if not batch:
            return
        self._batch = []
        self._batch_bytes = 0
        transport = self._transport
        if transport.is_closing():
            return
        if len(batch) == 1:
            transport.write(batch[0])
        else:
            transport.writelines(batch)

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        self._flush()

    def _on_event(self, ev: Any) -> None:
        core = self._core
        if core.has_data_to_send:  # option replies count against the batch limit
            out = core.data_to_send()
            self._batch.append(out)
            self._batch_bytes += len(out)
        if type(ev) is ExportRequested or type(ev) is ExportListRequested:
            answer_from_registry(core, self._server.registry, ev)  # its event comes next
        elif type(ev) is OptionAnswered:
            pass
        elif type(ev) is ExportOpened:
            self._advance("export_opened")
            self._device = ev.device
            self.readonly = bool(ev.flags & TransmissionFlag.READ_ONLY)
            device = ev.device
            self._read_inline = device.read_inline if isinstance(device, InlineRead) else None
            self._read_many = (device.read_inline_many if isinstance(device, InlineReadMany)
                               else None)
            self._write_inline = (device.write_inline if isinstance(device, InlineWrite)
                                  and not self.readonly else None)
            self.export = ev.name
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            log.info("nbd_export_opened", conn=self.cid, peer=self.peer, export=ev.name,
                     size=ev.size, flags=ev.flags, readonly=self.readonly,
                     reason=getattr(ev.device, "readonly_reason", None),
                     client_cert=self.client_cert)
        elif type(ev) is StartTLS:
            # Nothing more is read in plaintext (bytes injected after STARTTLS must never
            # count as coming through TLS) and nothing is parsed until the handshake is done.
            self._advance("starttls")
            if not self._read_paused:
                self._read_paused = True
                self._transport.pause_reading()
            self._flush()  # the ACK goes out in plaintext, before the handshake
            self._tls_task = self._loop.create_task(self._start_tls())
        elif type(ev) is OptionRejected:
            # Clients probe for extensions we lack on every connect: not worth an info line.
            level = log.debug if ev.reply == Rep.ERR_UNSUP else log.info
            level("nbd_option_rejected", conn=self.cid, option=ev.option, reply=ev.reply,
                  message=ev.message)
        elif type(ev) is Disconnect:
            self._reason = ev.reason
            self._stop()
        elif type(ev) is ConnectionClosed:
            self._reason = f"client closed during {ev.phase}"
            self._stop()
        elif type(ev) is ProtocolError:
            self._reason = f"protocol error: {ev.reason}"
            log.warning("nbd_protocol_error", conn=self.cid, peer=self.peer,
                        export=self.export, error=ev.reason)
            self._stop()
            # Hard disconnect: replies already queued go out if the client is reading,
            # replies of in-flight requests are dropped.
            self._flush()
            if self._transport.get_write_buffer_size():
                self._transport.abort()
            else:
                self._transport.close()

    async def _start_tls(self) -> None:
        transport = self._transport
        try:
            tls = await self._loop.start_tls(transport, self, self._listener.tls,
                                             server_side=True,
                                             ssl_handshake_timeout=self._server.handshake_timeout)
        except Exception as exc:  # noqa: BLE001 — refused certificate, reset, timeout
            self._reason = f"TLS handshake failed: {exc or type(exc).__name__}"
            log.warning("nbd_tls_refused", conn=self.cid, peer=self.peer,
                        error=str(exc) or type(exc).__name__)
            if not transport.is_closing():
                transport.abort()
            self.connection_lost(None)  # the TLS layer may not report it to us
            return
        if tls is None or self._phase is Phase.LOST:
            return
        self._transport = tls
        self.client_cert = _subject_cn(tls.get_extra_info("peercert"))
        log.info("nbd_tls", conn=self.cid, peer=self.peer, client_cert=self.client_cert)
        self._core.tls_established()
        self._advance("tls_established")
        self._read_paused = False  # a fresh transport, reading
        self._pump()

    def _stop(self) -> None:
        self._advance("stop")
        if not self._read_paused and not self._transport.is_closing():
            self._read_paused = True
            self._transport.pause_reading()

    def _begin(self, req: Request) -> int:
        """Count a request in flight; returns the bytes it holds against the limit."""
        nbytes = req.length if req.kind <= CMD_WRITE else 0  # READ=0, WRITE=1
        self.inflight += 1
        self.inflight_bytes += nbytes
        self.requests += 1
        if self.inflight > self.peak_inflight:
            self.peak_inflight = self.inflight
        if self.inflight_bytes > self.peak_inflight_bytes:
            self.peak_inflight_bytes = self.inflight_bytes
        return nbytes

    def _spawn(self, req: Request, nbytes: int) -> None:
        task = self._loop.create_task(self._execute(req, nbytes))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _inline_read(self, req: Request) -> None:
        try:
            data = self._read_inline(req.offset, req.length)
        except Exception as exc:
            data = exc
        self._answer_read(req, data)

    def _inline_reads(self) -> None:
        """Read the inline reads gathered in this pump as one batch (a run that follows
        itself on a disk in one ``preadv``), and answer them in order."""
        reqs, self._reads, self._reads_bytes = self._reads, [], 0
        try:
            results = self._read_many([(r.offset, r.length) for r in reqs])
            if len(results) != len(reqs):
                raise RuntimeError(f"{len(results)} results for {len(reqs)} reads")
        except Exception as exc:  # a device bug: answer EIO rather than lose the requests
            results = [exc] * len(reqs)
        for req, data in zip(reqs, results, strict=True):
            self._answer_read(req, data)

    def _answer_read(self, req: Request, data) -> None:
        """Answer an inline read with ``data``: bytes, an exception, or None for the async
        path."""
        if data is not None and not isinstance(data, BaseException) and len(data) != req.length:
            data = OSError(errno.EIO, "short read")
        if data is None:  # the device wants its async path
            self._spawn(req, self._begin(req))
            return
        self.requests += 1
        if isinstance(data, Exception):
            self._queue_error(req, data)
        else:
            self._queue_data(req, data)

    def _inline_write(self, req: Request) -> None:
        nbytes = self._begin(req)
        try:
            taken = self._write_inline(req.offset, req.data, (req.flags & FLAG_FUA) != 0,
                                       partial(self._inline_written, req, nbytes))
        except Exception as exc:  # a device bug: answer EIO rather than lose the request
            self._complete(req, nbytes, None, exc)
            return
        if not taken:
            self._spawn(req, nbytes)

    def _inline_written(self, req: Request, nbytes: int, failure: BaseException | None,
                        kept: bool = False) -> None:
        """``done`` of an inline write: answer, and give the payload back to the buffer pool
        unless someone may still read it (``kept``). The async path never gives it back:
        an LV write that marked a copy stale returns normally while that copy's request may
        still sit on its link."""
        if kept:
            buffers.shared().forget(req.data)  # even a later give must not pool it
        else:
            buffers.shared().give(req.data)
        self._complete(req, nbytes, None, failure)

    def _queue_data(self, req: Request, data: bytes) -> None:
        self._batch += self._core.send_reply(req.handle, 0, data)
        self._batch_bytes += 16 + len(data)

    def _queue_error(self, req: Request, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            err = errno_to_nbd(exc.errno)
            log.debug("nbd_io_error", conn=self.cid, export=self.export, cmd=req.kind,
                      offset=req.offset, length=req.length, errno=exc.errno, error=str(exc))
        else:
            err = Err.EIO
            log.error("nbd_device_failure", conn=self.cid, export=self.export, cmd=req.kind,
                      offset=req.offset, length=req.length, exc_info=exc)
        self._batch += self._core.send_reply(req.handle, err)
        self._batch_bytes += 16

    async def _execute(self, req: Request, nbytes: int) -> None:
        kind = req.kind
        device = self._device
        data = None
        failure = None
        try:
            if kind == CMD_READ:
                data = await device.read(req.offset, req.length)
                if type(data) is not bytes and type(data) is not bytearray:
                    data = bytes(data)
                if len(data) != req.length:
                    raise OSError(errno.EIO, f"device returned {len(data)} bytes, "
                                             f"{req.length} asked")
            elif kind == CMD_WRITE:
                await device.write(req.offset, req.data, (req.flags & FLAG_FUA) != 0)
            elif kind == CMD_FLUSH:
                await device.flush()
            elif kind == CMD_WRITE_ZEROES:
                await _write_zeroes(device, req.offset, req.length, (req.flags & FLAG_FUA) != 0)
            # CMD_TRIM: a hint the spec lets us ignore.
        except Exception as exc:
            failure = exc
        except BaseException:  # cancelled by close(grace=...): keep the books right
            self.inflight -= 1
            self.inflight_bytes -= nbytes
            self._maybe_forget()
            raise
        self._complete(req, nbytes, data, failure)

    def _complete(self, req: Request, nbytes: int, data: bytes | None,
                  failure: BaseException | None) -> None:
        """A request finished: queue its reply and send it soon (batched with its peers)."""
        self.inflight -= 1
        self.inflight_bytes -= nbytes
        phase = self._phase
        if phase is Phase.LOST:
            self._maybe_forget()
            return  # nobody to answer
        if failure is not None:
            self._queue_error(req, failure)
        elif data is not None:
            self._queue_data(req, data)
        else:
            self._batch += self._core.send_reply(req.handle)
            self._batch_bytes += 16
        if self._pumping:
            return  # completed inside the pump, which sends the batch when it ends
        if self._blocked and phase is not Phase.CLOSING:
            self._pump()  # flushes too
        elif phase is Phase.CLOSING:
            self._flush()
            self.finish()
        elif self._batch_bytes >= _BATCH_LIMIT:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._scheduled_flush)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, reason: str = "server shutdown") -> None:
        """Start no more requests; close once the in-flight ones are answered."""
        if self._transport is None or self._phase is Phase.LOST:
            return
        self._reason = reason
        if self._device is None:  # still haggling: nothing to finish
            self._advance("stop")
            self._transport.abort()
            return
        self._stop()
        self.finish()

    def finish(self, force: bool = False) -> None:
        """Close the transport once nothing is in flight (``force``: even with unsent data)."""
        transport = self._transport
        self._force_close = force = force or self._force_close  # sticks for later calls
        if transport is None or self.inflight:
            return
        self._flush()
        if force and transport.get_write_buffer_size():
            transport.abort()  # a client that stopped reading must not stall shutdown
        elif not transport.is_closing():
            transport.close()

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._device is None and self._phase is not Phase.LOST:
            self._reason = "handshake timeout"
            log.warning("nbd_protocol_error", conn=self.cid, peer=self.peer,
                        error="handshake timeout")
            self._advance("stop")
            self._transport.abort()

    def _maybe_forget(self) -> None:
        if self._phase is Phase.LOST and not self.inflight:
            self._server._forget(self)
            if not self.lost.done():
                self.lost.set_result(None)


def _subject_cn(cert: dict | None) -> str:
    """The commonName of a peer certificate as ``ssl`` decodes it (``?`` if absent)."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return "?"


async def _write_zeroes(device: BlockDevice, offset: int, length: int, fua: bool) -> None:
    """WRITE_ZEROES on a device without a native zeroing call: bounded chunks of zeros."""
    if length <= ZERO_CHUNK:
        await device.write(offset, _ZEROS if length == ZERO_CHUNK else bytes(length), fua)
        return
    end = offset + length
    while offset < end:
        n = min(ZERO_CHUNK, end - offset)
        await device.write(offset, _ZEROS if n == ZERO_CHUNK else bytes(n), False)
        offset += n
    if fua:
        await device.flush()
