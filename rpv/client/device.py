"""The RPV client device: a remote disk that looks like a local ``hdiskN``.

Requests are pipelined over a TCP connection bound to ``local_addr``; with several network
paths (``server_addr``/``local_addr`` lists), one connection per live path joins the session
and requests spread over them (see :mod:`rpv.client.requests` for their order). Each request
carries a deadline of ``io_timeout`` seconds from its submission; a broken connection is
re-established and unanswered requests are re-sent until their deadline. When any deadline
passes the device fails *all* outstanding requests with ``EIO``, reports the timeout once
(``on_timeout``) and fails new I/O at once until :meth:`resume`. ``server_addr = none`` does
the same without the report (a planned outage).

A server that answers a reconnect as a different instance (it restarted, perhaps after its
host lost power) may have forgotten writes it acknowledged since the last completed FLUSH.
``on_new_instance`` lets the owner (the LVM) mark those regions stale; without an owner that
takes it, the requests waiting then fail with ``EIO``, so the next FLUSH reports the loss
instead of succeeding on the new instance.

The bookkeeping (requests, deadlines, link assignment, durability counters, the state) is the
sans-IO :class:`rpv.client.requests.RequestTable`; this module is its asyncio adapter.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import ssl as ssl_module
from collections.abc import Callable

import structlog

from rpv import protocol as pc
from rpv.blockdev import check_range
from rpv.client.requests import ClientState, Event, Request, RequestTable
from rpv.client.stats import IOStats
from rpv.instance import same_boot
from rpv.protocol import HelloInfo, Opcode, pvid_to_bytes

log = structlog.get_logger("rpv.client")

CONNECT_BACKOFF = (0.05, 0.1, 0.2, 0.5, 1.0)
SEND_BUFFER = 4 << 20  # SO_SNDBUF of the link (the kernel caps it at net.core.wmem_max)
MAX_PATHS = 4  # network paths (server_addr/local_addr pairs) per RPV client
PATH_PROBE = (0.5, 1.0, 2.0, 5.0)  # seconds between tries of a path that is down


def paths_of(server_addr: str, local_addr: str) -> list[tuple[str, str]]:
    """The (server, local) address pairs of comma-separated lists (one path each)."""
    servers = [a.strip() for a in server_addr.split(",") if a.strip()]
    locals_ = [a.strip() for a in local_addr.split(",") if a.strip()]
    if len(servers) != len(locals_) or not 1 <= len(servers) <= MAX_PATHS:
        raise ValueError(f"server_addr and local_addr must list the same number of addresses "
                         f"(1 to {MAX_PATHS}, one path each), not {len(servers)} and "
                         f"{len(locals_)}")
    paths = list(zip(servers, locals_, strict=True))
    if len(set(paths)) != len(paths):
        raise ValueError("two paths with the same server and local address")
    return paths


def path_timeout(io_timeout: float) -> float:
    """How long a path may leave requests unanswered before they go to another path."""
    return min(max(1.0, io_timeout / 4), 10.0)


def _kept_by_table(name: str) -> property:
    """An attribute of :class:`RPVClient` that its request table keeps."""
    return property(lambda self: getattr(self._table, name),
                    lambda self, value: setattr(self._table, name, value))


class RPVClient:
    """A :class:`rpv.blockdev.BlockDevice` served by a remote RPV server.

    The asyncio side of :class:`rpv.client.requests.RequestTable`, which keeps the requests,
    their deadlines and the state: this owns the futures and callbacks, the links, the
    reconnect and probe tasks, the deadline timer, the log and the owner's callbacks."""

    local = False

    def __init__(self, name: str, pvid: str, server_addr: str, local_addr: str, *,
                 server_port: int = 6192, io_timeout: float = 180.0, site: str = "",
                 node: str = "", size: int = 0,
                 on_timeout: Callable[[RPVClient, str], None] | None = None,
                 on_hello: Callable[[RPVClient, HelloInfo], None] | None = None,
                 auto_resume: bool = False,
                 on_resumed: Callable[[RPVClient], None] | None = None,
                 on_new_instance: Callable[[RPVClient, bool], bool] | None = None,
                 ssl: ssl_module.SSLContext | None = None, compress: str = "none"):
        self.name = name
        self.pvid = pvid_to_bytes(pvid)
        self.compress = compress  # codec asked for in HELLO; a server refusing it is an error
        self._table = RequestTable(name, server_addr, io_timeout)
        self.server_port = server_port
        self.local_addr = local_addr
        self.site = site
        self.node = node
        self._size = size
        self._on_timeout = on_timeout
        self._on_hello = on_hello
        self.auto_resume = auto_resume
        self.ssl = ssl
        self._on_resumed = on_resumed
        self.on_new_instance = on_new_instance
        self._probe: asyncio.Task | None = None
        self.server_info: HelloInfo | None = None
        self._loop = asyncio.get_running_loop()
        self._connecting: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._max_payload = 1024 * 1024
        self.stats = IOStats()
        self.instance: bytes | None = None  # the server instance that answered last HELLO
        self.heard_at = 0.0  # loop time of the last reply or HELLO from the server
        self._checking = False  # a path check is running
        self.path = 0  # the path in use, or to try first
        self.paths_down: dict[int, str] = {}  # path -> why it is down
        self.on_path: Callable[[RPVClient, int, str | None], None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._path_probe: asyncio.Task | None = None
        self._joining: asyncio.Task | None = None
        self.paths = [] if server_addr == "none" else paths_of(server_addr, local_addr)
        self.path_stats = [IOStats() for _ in self.paths]  # with several paths, per path

    # -- what the request table keeps ----------------------------------------------------------
    @property
    def state(self) -> ClientState:
        return self._table.state

    server_addr = _kept_by_table("server_addr")
    io_timeout = _kept_by_table("io_timeout")
    last_error = _kept_by_table("last_error")

    @property
    def _link(self) -> _Link | None:
        return self._table.link

    # -- BlockDevice ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    async def read(self, offset: int, length: int) -> bytes:
        check_range(self._size, offset, length)
        step = self._max_payload
        if length <= step:
            return await self._submit(Opcode.READ, offset, length, None, False)
        parts = await asyncio.gather(*(
            self._submit(Opcode.READ, o, min(step, offset + length - o), None, False)
            for o in range(offset, offset + length, step)))
        return b"".join(parts)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self.submit_write(offset, data, fua)

    def submit_write(self, offset: int, data, fua: bool = False,
                     ordered: bool = False) -> asyncio.Future:
        """Start a write and return its future without creating a task (the LVM hot path).
        ``ordered``: the server applies it after every ordered write submitted before it."""
        try:
            check_range(self._size, offset, len(data))
        except OSError as e:
            fut = self._loop.create_future()
            fut.set_exception(e)
            return fut
        step = self._max_payload
        if len(data) <= step:
            return self._submit(Opcode.WRITE, offset, len(data), data, fua, ordered)
        view = memoryview(data)
        return asyncio.gather(*(
            self._submit(Opcode.WRITE, offset + o, min(step, len(data) - o),
                         bytes(view[o:o + step]), fua, ordered)
            for o in range(0, len(data), step)))

    def accepts(self, length: int) -> bool:
        """Whether :meth:`submit_write_cb` would take a write of ``length`` bytes now."""
        return self.state is ClientState.ONLINE and length <= self._max_payload

    def submit_write_cb(self, offset: int, data, fua: bool,
                        callback: Callable[[OSError | None], None]) -> bool:
        """Start a write whose outcome goes to ``callback(None | OSError)``: no future, no task.

        Returns False, having done nothing, when the request cannot be queued now (the device
        is not online, or the write needs splitting or is out of range); the caller then takes
        the general path. The callback runs once, from the reply (or failure) handling.
        """
        if not self.accepts(len(data)) or offset < 0 or offset + len(data) > self._size:
            return False
        self._queue(Opcode.WRITE, offset, len(data), data, fua, None, callback)
        return True

    async def flush(self) -> None:
        await self._submit(Opcode.FLUSH, 0, 0, None, False)

    async def checksum(self, offset: int, length: int) -> bytes:
        """The server's digests of ``[offset, offset+length)``: ``chunk_digests`` of those
        bytes, one ``DIGEST_SIZE`` digest per ``CHECKSUM_CHUNK``, without moving the data."""
        check_range(self._size, offset, length)
        if not length:
            return b""
        # whole chunks per request (so the digests concatenate), reply within max_payload
        step = min(pc.MAX_CHECKSUM_LENGTH,
                   self._max_payload // pc.DIGEST_SIZE * pc.CHECKSUM_CHUNK)
        if length <= step:
            return await self._submit(Opcode.CHECKSUM, offset, length, None, False)
        parts = await asyncio.gather(*(
            self._submit(Opcode.CHECKSUM, o, min(step, offset + length - o), None, False)
            for o in range(offset, offset + length, step)))
        return b"".join(parts)

    # -- administration ------------------------------------------------------------------------
    async def open(self, timeout: float) -> HelloInfo:
        """Connect and HELLO now (mkdev, resume); raise OSError with the reason on failure."""
        if self.state is ClientState.DISABLED:
            raise OSError(errno.ENETUNREACH, f"{self.name}: server_addr is none")
        link = await asyncio.wait_for(self._connect_any(), timeout)
        self._adopt(link)
        return self.server_info

    async def _connect_any(self) -> _Link:
        """Connect on the path in use, else on the others in turn; the first error if none
        answers."""
        first: BaseException | None = None
        for _ in range(len(self.paths)):
            try:
                return await self._connect_once()
            except (OSError, TimeoutError) as e:
                if len(self.paths) == 1:
                    raise
                first = first or e
                self._path_down(self.path, _reason(e))
        raise first

    async def resume(self, timeout: float) -> HelloInfo:
        """``chdev -a resume=yes``: leave the failed state if the server answers."""
        if self.state is ClientState.DISABLED:
            raise OSError(errno.ENETUNREACH, f"{self.name}: server_addr is none; set it first")
        previous = self._table.begin_resume()
        try:
            info = await self.open(timeout)
        except (OSError, TimeoutError) as e:
            self._table.resume_failed(previous)
            raise OSError(errno.EIO, f"RPV server {self.server_addr} still not usable: "
                                     f"{_reason(e)}") from None
        if self.state is ClientState.FAILED:
            # a deadline passed while our HELLO was out (the requests of the old session
            # got EIO): the new session stands, so leave the failed state again
            self._table.begin_resume()
        log.info("rpvc_resumed", device=self.name, server=self.server_addr)
        return info

    def start_probe(self) -> None:
        """auto_resume: try the server until it answers, then resume by ourselves."""
        if self.state is ClientState.FAILED and (self._probe is None or self._probe.done()):
            self._probe = self._loop.create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        delay = 0.5
        while self.state is ClientState.FAILED and self.auto_resume:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            try:
                await self.resume(min(self.io_timeout, 5.0))
            except OSError:
                continue
            log.info("rpvc_auto_resumed", device=self.name, server=self.server_addr)
            if self._on_resumed:
                self._on_resumed(self)
            return

    def set_server_addr(self, addr: str) -> None:
        self.paths = [] if addr == "none" else paths_of(addr, self.local_addr)
        self.path_stats = [IOStats() for _ in self.paths]
        self.path, self.paths_down = 0, {}
        self.server_addr = addr
        if addr == "none":
            self._fail(f"{self.name}: server_addr set to none", Event.DISABLE)
        else:
            if self._connecting is not None:  # it may be reaching the old address
                self._connecting.cancel()
                self._connecting = None
            self._table.enable()
            self._drop_link("server address changed")

    def set_io_timeout(self, seconds: float) -> None:
        """Deadlines become ``seconds`` from each request's submission: a lower value brings
        outstanding deadlines forward at once; a higher one applies to new requests only."""
        self._table.set_io_timeout(seconds)
        if not self._table.outstanding():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._arm_timer()

    async def close(self) -> None:
        for task in (self._probe, self._path_probe, self._joining):
            if task is not None:
                task.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._fail(f"{self.name}: device unconfigured", Event.CLOSE)

    @property
    def connected(self) -> bool:
        return self._link is not None

    def reset_stats(self) -> None:
        self.stats = IOStats()
        for ps in self.path_stats:
            ps.__init__()

    def path_rows(self) -> list[dict]:
        """rpvstat -N of a client with several paths: each path's state and counters."""
        active = {link.path for link in self._table.links}
        return [{"server_addr": server, "local_addr": local,
                 "path_state": "down" if i in self.paths_down else
                 "active" if i in active else "up",
                 **self.path_stats[i].as_dict()}
                for i, (server, local) in enumerate(self.paths)]

    def outstanding(self) -> int:
        return self._table.outstanding()

    def pending(self) -> dict:
        """Requests waiting for the server, as rpvstat shows them."""
        return self._table.pending_counts()

    # -- request path --------------------------------------------------------------------------
    def _submit(self, opcode: Opcode, offset: int, length: int, data, fua: bool,
                ordered: bool = False):
        fut = self._loop.create_future()
        refusal = self._table.refusal()
        if refusal is not None:
            fut.set_exception(refusal)
            return fut
        self._queue(opcode, offset, length, data, fua, fut, None, ordered)
        return fut

    def _queue(self, opcode: Opcode, offset: int, length: int, data, fua: bool,
               fut: asyncio.Future | None, callback, ordered: bool = False) -> None:
        req = self._table.submit(self._loop.time(), opcode, offset, length, data, fua,
                                 future=fut, callback=callback, ordered=ordered)
        if self._timer is None:
            self._arm_timer()
        if req.sent_on is not None:
            self._send(req)
        elif self._table.link is None:
            self._ensure_connecting()

    def _send(self, req: Request) -> None:
        """Put ``req`` on the link the table assigned it to (``sent_on``)."""
        link = req.sent_on
        remaining = req.remaining_ms(self._loop.time())
        conn = link.conn
        if req.opcode is Opcode.WRITE:
            bufs = conn.send_write(req.rid, req.offset, req.data, remaining, fua=req.fua)
        elif req.opcode is Opcode.READ:
            bufs = conn.send_read(req.rid, req.offset, req.length, remaining)
        elif req.opcode is Opcode.CHECKSUM:
            bufs = conn.send_checksum(req.rid, req.offset, req.length, remaining)
        elif req.opcode is Opcode.FLUSH:
            bufs = conn.send_flush(req.rid, remaining)
        else:
            bufs = conn.send_ping(req.rid, remaining)
        link.queue(bufs)

    def _on_reply(self, link: _Link, ev) -> None:
        self.heard_at = link.heard_at = self._loop.time()
        req = self._table.reply(ev)
        if req is None:
            return
        error = req.error
        if error is not None:
            self.stats.errors += 1
        elif req.opcode is Opcode.READ or req.opcode is Opcode.WRITE:  # not FLUSH, CHECKSUM
            self.stats.completed(req.opcode is Opcode.WRITE, req.length,
                                 self._loop.time() - req.started)
            if link.stats is not None:  # several paths: also counted per path
                link.stats.completed(req.opcode is Opcode.WRITE, req.length,
                                     self._loop.time() - req.started)
        if req.callback is not None:
            req.callback(error)
        elif not req.future.done():
            if error is not None:
                req.future.set_exception(error)
            else:
                req.future.set_result(req.result)
        for waiting in self._table.take_unsent():  # a slot is free: those waiting go now
            self._send(waiting)

    def _arm_timer(self) -> None:
        when = self._table.next_timer()
        if when is not None:
            self._timer = self._loop.call_at(when, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._timer = None
        expired = self._table.expire(self._loop.time())
        if expired is None:
            self._arm_timer()
            return
        log.error("rpvc_io_timeout", device=self.name, server=self.server_addr,
                  io_timeout=self.io_timeout)
        self._timed_out(expired.reason, expired.failed)

    def _timed_out(self, reason: str, failed: list[Request]) -> None:
        self.stats.timeouts += 1
        self._failed(failed)
        self._leave_online(reason)
        if self._on_timeout:
            self._on_timeout(self, reason)
        if self.auto_resume:
            self.start_probe()

    async def ping(self) -> None:
        """A PING: it waits behind everything queued on the connection (EIO as any request)."""
        await self._submit(Opcode.PING, 0, 0, None, False)

    def check_path(self, seconds: float, why: str) -> None:
        """Another device on the same network path timed out (``why``): unless this one
        hears from its server within ``seconds`` (the answer to a PING sent now, or any
        other reply), it fails as at its own io_timeout, so one outage is detected once."""
        if self.state is not ClientState.ONLINE or self._checking:
            return
        self._checking = True
        since = self._loop.time()
        self._submit(Opcode.PING, 0, 0, None, False).add_done_callback(ignore_outcome)
        self._loop.call_later(seconds, self._path_verdict, since, seconds, why)

    def _path_verdict(self, since: float, seconds: float, why: str) -> None:
        self._checking = False
        if self.state is not ClientState.ONLINE or self.heard_at >= since:
            return
        reason = (f"no response from RPV server {self.server_addr} within {seconds:g} s of "
                  f"a path check ({why})")
        log.error("rpvc_path_check_failed", device=self.name, server=self.server_addr,
                  local_addr=self.local_addr, seconds=seconds, after=why)
        self._timed_out(reason, self._table.fail(Event.EXPIRE, reason))

    def _fail(self, reason: str, event: Event) -> None:
        """Leave the online state by ``event``: fail every outstanding request with EIO."""
        self._failed(self._table.fail(event, reason))
        self._leave_online(reason)

    def _leave_online(self, reason: str) -> None:
        if self._connecting:
            self._connecting.cancel()
            self._connecting = None
        self._drop_link(reason)

    def _failed(self, failed: list[Request]) -> None:
        """Deliver the EIO of requests the table failed (all that were outstanding)."""
        for req in failed:
            if req.callback is not None:  # later: this runs inside other bookkeeping
                self._loop.call_soon(req.callback, req.error)
            elif not req.future.done():
                req.future.set_exception(req.error)
        if self._timer:
            self._timer.cancel()
            self._timer = None

    def _new_instance(self, info: HelloInfo, previous: bytes) -> None:
        """The server restarted since our last session: what it acknowledged but had not
        flushed may be gone. Runs before anything is sent to (or answered by) the new
        instance."""
        rebooted = not same_boot(previous, info.instance)
        unflushed = self._table.new_instance()  # reported below, once
        log.warning("rpvc_server_restarted", device=self.name, server=self.server_addr,
                    host_rebooted=rebooted, unflushed_writes=unflushed,
                    outstanding=self._table.outstanding())
        if self.on_new_instance is not None and self.on_new_instance(self, rebooted):
            return  # the owner marks what may be lost stale before acknowledging more
        if unflushed:
            self._failed(self._table.fail_requests(
                f"RPV server {self.server_addr} restarted: {unflushed} "
                f"acknowledged writes since the last flush may be lost"))

    # -- connection management ----------------------------------------------------------------
    def _drop_link(self, reason: str) -> None:
        """End the session: close every link; what is outstanding goes to the next."""
        links = list(self._table.links)
        wanted = self._table.link_down()
        for link in links:
            link.close()
        if wanted:
            self._ensure_connecting()

    def _link_lost(self, link: _Link, reason: str) -> None:
        if link in self._table.links:
            log.warning("rpvc_link_lost", device=self.name, server=self.server_addr,
                        path=link.path, reason=reason, outstanding=self._table.outstanding())
            self.last_error = reason
            if len(self.paths) > 1:
                self._path_down(link.path, reason)
            self._drop_link(reason)

    # -- several paths -------------------------------------------------------------------------
    def _path_down(self, index: int, reason: str) -> None:
        """Path ``index`` failed: the next one that is up (else the next) is used from now on,
        and the failed one is tried again in the background until it answers."""
        if index not in self.paths_down:
            self.paths_down[index] = reason
            server, local = self.paths[index]
            log.error("rpvc_path_down", device=self.name, path=index, server=server,
                      local_addr=local, reason=reason)
            if self.on_path:
                self.on_path(self, index, reason)
        if index == self.path:
            order = [(index + k) % len(self.paths) for k in range(1, len(self.paths) + 1)]
            self.path = next((i for i in order if i not in self.paths_down), order[0])
        if self._path_probe is None or self._path_probe.done():
            self._path_probe = self._loop.create_task(self._probe_paths())

    def path_seen_down(self, server: str, local: str, why: str) -> None:
        """Another client found the path from ``local`` to ``server`` down: if this one has it
        too, it stops using it now rather than wait for its own requests to time out there."""
        for index, pair in enumerate(self.paths):
            if pair == (server, local) and index not in self.paths_down and len(self.paths) > 1:
                on_it = [link for link in self._table.links if link.path == index]
                if on_it:
                    self._link_lost(on_it[0], why)  # (marks the path down too)
                else:
                    self._path_down(index, why)

    def _path_up(self, index: int) -> None:
        if self.paths_down.pop(index, None) is not None:
            server, local = self.paths[index]
            log.info("rpvc_path_up", device=self.name, path=index, server=server,
                     local_addr=local)
            if self.on_path:
                self.on_path(self, index, None)
            self._start_joining()

    def _start_joining(self) -> None:
        """Open a connection on every live path that has none, joined to the session."""
        info = self.server_info
        if (len(self.paths) > 1 and self._link is not None and info is not None
                and info.features & pc.FEATURE_JOIN
                and (self._joining is None or self._joining.done())):
            self._joining = self._loop.create_task(self._join_paths())

    async def _join_paths(self) -> None:
        """Join every live path without a connection to the session; when the session
        changes meanwhile, start over with the new one."""
        while (session := self._link) is not None and self.state is ClientState.ONLINE:
            for index in range(len(self.paths)):
                if self._link is not session:
                    break
                if index in self.paths_down or any(
                        link.path == index for link in self._table.links):
                    continue
                try:
                    link = await asyncio.wait_for(self._connect_once(index, join=True),
                                                  path_timeout(self.io_timeout))
                except (OSError, TimeoutError) as e:
                    if getattr(e, "errno", None) != errno.ESTALE:  # (else the session ended)
                        self._path_down(index, _reason(e))
                    continue
                if self._link is not session or self.state is not ClientState.ONLINE:
                    link.close()  # the session ended meanwhile
                    break
                log.info("rpvc_path_joined", device=self.name, path=index,
                         server=self.paths[index][0], local_addr=self.paths[index][1])
                for req in self._table.join(link):
                    self._send(req)
            if self._link is session:
                return

    async def _probe_paths(self) -> None:
        """Ask over each path that is down what the server offers (DISCOVER: no session is
        opened, so the one in use stays) until it answers."""
        for attempt in itertools.count():
            if not self.paths_down or self.state is ClientState.CLOSED:
                return
            await asyncio.sleep(PATH_PROBE[min(attempt, len(PATH_PROBE) - 1)])
            for index in list(self.paths_down):
                if index >= len(self.paths):
                    self.paths_down.pop(index, None)
                    continue
                server, local = self.paths[index]
                try:
                    await discover(server, local, self.server_port, 2.0, self.ssl)
                except (OSError, TimeoutError):
                    continue
                self._path_up(index)

    def _arm_watchdog(self) -> None:
        if self._watchdog is None and len(self.paths) > 1:
            self._watchdog = self._loop.call_later(
                path_timeout(self.io_timeout) / 2, self._watch)

    def _watch(self) -> None:
        """Requests unanswered on a link for a path timeout: its path is down; they go to
        another path now, long before their io_timeout."""
        self._watchdog = None
        if self._link is None or len(self.paths) < 2 or self.state is not ClientState.ONLINE:
            return
        limit = path_timeout(self.io_timeout)
        now = self._loop.time()
        oldest: dict[int, float] = {}  # id(link) -> when its oldest request was submitted
        for req in self._table.requests():
            if req.sent_on is not None:
                oldest.setdefault(id(req.sent_on), req.started)
        for link in list(self._table.links):
            started = oldest.get(id(link))
            if started is not None and now - max(link.heard_at, started) > limit:
                self._link_lost(link, f"no answer within {limit:g} s on path {link.path}")
                break
        self._arm_watchdog()

    def _ensure_connecting(self) -> None:
        if self._connecting is None or self._connecting.done():
            self._connecting = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Retry connect + HELLO while requests wait; their deadlines bound the effort."""
        for attempt in itertools.count():
            if (not self._table.outstanding() or self.state is not ClientState.ONLINE
                    or self._link):
                return
            budget = self._table.next_timer() - self._loop.time()
            try:
                link = await asyncio.wait_for(self._connect_once(), max(0.05, min(budget, 5.0)))
            except (OSError, TimeoutError) as e:
                self.last_error = _reason(e)
                if attempt == 0:
                    log.warning("rpvc_connect_failed", device=self.name,
                                server=self.server_addr, reason=self.last_error)
                if len(self.paths) > 1 and self.path not in self.paths_down:
                    self._path_down(self.path, self.last_error)
                    continue  # another path at once
                if len(self.paths) > 1:
                    self._path_down(self.path, self.last_error)  # round the paths
                await asyncio.sleep(CONNECT_BACKOFF[min(attempt, len(CONNECT_BACKOFF) - 1)])
                continue
            if self.state is not ClientState.ONLINE or self._link is not None:
                link.close()  # failed meanwhile, or open() adopted a link of its own
                return
            self._adopt(link)
            return

    def _adopt(self, link: _Link) -> None:
        """Use ``link`` (a new session) from now on. Requests sent on the links it replaces
        are sent again on this one at once (the server closed the old session when this one
        said HELLO); then the other live paths join it."""
        self.heard_at = self._loop.time()
        self._arm_watchdog()
        old = [lk for lk in self._table.links if lk is not link]
        for req in self._table.link_up(link):
            self._send(req)
        for lk in old:
            lk.close()
        self._start_joining()

    async def _connect_once(self, index: int | None = None, join: bool = False) -> _Link:
        """Connect on path ``index`` (the one in use) and say HELLO: a new session, or with
        ``join`` one more connection of the current one (ESTALE if it is not the server
        instance the session was opened with)."""
        loop = self._loop
        index = self.path if index is None else index
        server, local = self.paths[index]
        _, link = await loop.create_connection(
            lambda: _Link(self), server, self.server_port, local_addr=(local, 0), ssl=self.ssl)
        link.path = index
        link.stats = self.path_stats[index] if len(self.paths) > 1 else None
        try:
            info = await link.hello(self.pvid, self.site, self.node,
                                    pc.FEATURE_JOIN if join else 0)
        except BaseException:
            link.close()
            raise
        link.heard_at = loop.time()
        if join:
            if info.instance != self.instance:
                link.close()
                raise OSError(errno.ESTALE, "the server restarted: no session to join")
            return link
        if self._size and info.disk_size != self._size:
            link.close()
            raise OSError(errno.ENXIO, f"server disk size changed from {self._size} "
                                       f"to {info.disk_size}")
        self._size = info.disk_size
        self.server_info = info
        previous = self.instance
        if previous is not None and previous != info.instance:
            self._new_instance(info, previous)  # if it raises, the next HELLO tries again
        self.instance = info.instance
        self._max_payload = min(info.max_payload, 4 * 1024 * 1024)
        self._table.max_outstanding = max(1, min(info.max_outstanding, 256))
        if self._on_hello:
            self._on_hello(self, info)
        return link


class _Link(asyncio.BufferedProtocol):
    """One TCP connection of an RPV client, wrapping the sans-IO connection."""

    def __init__(self, client: RPVClient):
        self.client = client
        self.conn = pc.Connection(pc.Role.CLIENT, max_payload=8 * 1024 * 1024,
                                  max_outstanding=1024, compress=client.compress,
                                  on_payload=lambda w, raw, wire: client.stats.payload(
                                      w, raw, wire))
        self.transport: asyncio.Transport | None = None
        self._hello: asyncio.Future | None = None
        self.closed = False
        self.path = 0  # which of the client's paths it runs on
        self.heard_at = 0.0  # loop time of its last reply
        self.stats: IOStats | None = None  # its own counters (when the client has several)
        self._out: list = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a fixed, large send buffer: fewer wake-ups for bulk writes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def queue(self, buffers) -> None:
        """Send at the end of this loop iteration: requests issued together (a queue depth's
        worth) leave in one system call."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.extend(buffers)
        if len(self._out) > 64 or len(buffers) > 1 and len(buffers[1]) >= 65536:
            self._flush()  # a burst, or a large write: the server can start on it now

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.closed:
            self.transport.writelines(out)

    async def hello(self, pvid: bytes, site: str, node: str, extra: int = 0) -> HelloInfo:
        self._hello = asyncio.get_running_loop().create_future()
        self.transport.writelines(self.conn.send_hello(
            0, pvid, site, node, pc.DEFAULT_FEATURES | extra))
        info = await self._hello
        want = self.conn.compress
        if want != "none" and self.conn.codec != want:  # refused: no silent fallback
            raise OSError(errno.EPROTONOSUPPORT, f"RPV server {self.client.server_addr} "
                                                 f"does not support compress={want}")
        return info

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer(sizehint)  # large READ replies land in place

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        conn.buffer_updated(nbytes)
        client = self.client
        while True:
            ev = conn.next_event()
            if ev is pc.NEED_DATA:
                return
            tp = type(ev)
            if tp is pc.HelloReply:
                self._hello_done(ev)
            elif tp is pc.ProtocolError or tp is pc.ConnectionClosed:
                reason = ev.message if tp is pc.ProtocolError else "server closed the connection"
                self._lost(reason)
                return
            else:
                client._on_reply(self, ev)

    def eof_received(self):
        self._lost("server closed the connection")
        return False

    def connection_lost(self, exc) -> None:
        self._lost(str(exc) if exc else "connection closed")

    def _hello_done(self, ev) -> None:
        fut = self._hello
        if fut is None or fut.done():
            return
        if ev.status:
            fut.set_exception(OSError(ev.status, ev.message or errno.errorcode.get(ev.status, "")))
        else:
            fut.set_result(ev.info)

    def _lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(OSError(errno.ECONNRESET, reason))
        if self.transport:
            self.transport.abort()
        self.client._link_lost(self, reason)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._hello is not None and not self._hello.done():
                self._hello.set_exception(OSError(errno.ECONNABORTED, "closed"))
            if self.transport:
                self.transport.abort()


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


async def discover(server_addr: str, local_addr: str, port: int, timeout: float,
                   ssl: ssl_module.SSLContext | None = None):
    """Ask an RPV server for its site name and the disks it offers this client."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    class _Discover(asyncio.Protocol):
        def __init__(self):
            self.conn = pc.Connection(pc.Role.CLIENT)

        def connection_made(self, transport):
            self.transport = transport
            transport.writelines(self.conn.send_discover(1))

        def data_received(self, data):
            self.conn.receive_data(data)
            for ev in self.conn.events():
                if fut.done():
                    return
                if isinstance(ev, pc.DiscoverReply):
                    if ev.status:
                        fut.set_exception(OSError(ev.status, ev.message))
                    else:
                        fut.set_result(ev.info)
                elif isinstance(ev, (pc.ProtocolError, pc.ConnectionClosed)):
                    fut.set_exception(OSError(errno.EPROTO, getattr(ev, "message", "closed")))

        def connection_lost(self, exc):
            if not fut.done():
                fut.set_exception(OSError(errno.ECONNRESET, str(exc or "connection closed")))

    async def run():
        transport, _ = await loop.create_connection(_Discover, server_addr, port,
                                                    local_addr=(local_addr, 0), ssl=ssl)
        try:
            return await fut
        finally:
            transport.close()

    return await asyncio.wait_for(run(), timeout)


def ignore_outcome(fut: asyncio.Future) -> None:
    """A done callback for a future whose outcome nobody awaits (no "never retrieved")."""
    if not fut.cancelled():
        fut.exception()
