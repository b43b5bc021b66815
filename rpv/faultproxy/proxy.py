"""asyncio core of the userspace TCP fault proxy.

Layering (websockets/h11 style): the delivery schedule of one direction (``DirectionQueue``)
and the bandwidth model (``Link``) are plain objects driven with an explicit ``now``; they never
sleep and never touch sockets, so the timing logic is unit-testable without waiting.  ``Proxy``
is the thin asyncio layer: listener, one upstream connection per accepted connection, a timer
per direction (``loop.call_at``) that wakes the queue when the head chunk is due, and the
line-oriented JSON control protocol.

Direction names: ``up`` is client -> server (accepted side -> target), ``down`` is
server -> client.

Modes (``Settings.mode``):

``pass``        forward (subject to latency / jitter / bandwidth).
``blackhole``   accept new connections, keep existing ones open, forward nothing either way and
                never close (EOF/RST from a peer are held back too, like on a dead link).
``reset``       reset (RST via ``SO_LINGER`` 0) all existing connections and every new one at
                accept.
``refuse``      close new connections right after accept (the client sees connect succeed and
                then EOF); existing connections keep passing.
``stall_up``    client -> server silent, server -> client passes.
``stall_down``  server -> client silent, client -> server passes.

What "silent" does with the bytes is ``Settings.silence``: ``"drop"`` (default) reads and
discards them (queued bytes of that direction are discarded too, counted in
``chunks_dropped``); ``"hold"`` keeps them queued (reading pauses once the queue limit is
reached, so the sender's TCP window fills) and delivers them in order when the direction is
un-silenced, like a network partition that heals before TCP gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import socket
import stat
import struct
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import structlog

log = structlog.get_logger("glvm.faultproxy")

MODES = ("pass", "blackhole", "reset", "refuse", "stall_up", "stall_down")
SILENCE_POLICIES = ("drop", "hold")
_SILENCED: dict[str, frozenset[str]] = {
    "blackhole": frozenset({"up", "down"}),
    "stall_up": frozenset({"up"}),
    "stall_down": frozenset({"down"}),
}

DEFAULT_QUEUE_LIMIT = 8 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 1024
MAX_CONTROL_LINE = 64 * 1024
MAX_LATENCY_MS = 3_600_000.0
# Timers may fire up to about a millisecond early (uvloop rounds to ms); treat a chunk due
# within this slop as due, instead of re-arming a sub-millisecond timer in a loop.
TIMER_SLOP = 0.001
# Writes to a destination transport beyond this are flow-controlled (pause_writing).
WRITE_HIGH_WATER = 256 * 1024

DATA, EOF, CLOSE, RESET = "data", "eof", "close", "reset"


class ControlError(ValueError):
    """A control request that cannot be honoured; reported as ``{"ok": false}``."""


# --------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class Settings:
    """Fault settings. Times in milliseconds, bandwidth in bytes per second (0 = unlimited)."""

    mode: str = "pass"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_bps: int = 0
    silence: str = "drop"

    def silenced(self, direction: str) -> bool:
        return direction in _SILENCED.get(self.mode, frozenset())

    def sample_delay(self, rng: random.Random) -> float:
        """One chunk's one-way delay in seconds: latency +/- uniform jitter, never negative."""
        delay = self.latency_ms
        if self.jitter_ms:
            delay += rng.uniform(-self.jitter_ms, self.jitter_ms)
        return max(0.0, delay) / 1000.0

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A copy with ``changes`` applied after validation; raises ``ControlError``."""
        known = {f for f in asdict(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ControlError(f"unknown setting(s): {', '.join(unknown)}")
        new: dict[str, Any] = {}
        for key in ("latency_ms", "jitter_ms"):
            if key in changes:
                v = changes[key]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ControlError(f"{key} must be a number")
                if not math.isfinite(v) or v < 0 or v > MAX_LATENCY_MS:
                    raise ControlError(f"{key} must be between 0 and {MAX_LATENCY_MS:.0f}")
                new[key] = float(v)
        if "bandwidth_bps" in changes:
            v = changes["bandwidth_bps"]
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 1 << 48:
                raise ControlError("bandwidth_bps must be a non-negative integer (bytes/s)")
            new["bandwidth_bps"] = v
        if "mode" in changes:
            if changes["mode"] not in MODES:
                raise ControlError(f"mode must be one of {', '.join(MODES)}")
            new["mode"] = changes["mode"]
        if "silence" in changes:
            if changes["silence"] not in SILENCE_POLICIES:
                raise ControlError(f"silence must be one of {', '.join(SILENCE_POLICIES)}")
            new["silence"] = changes["silence"]
        return replace(self, **new)


# --------------------------------------------------------------------------------------------
# sans-IO scheduling


@dataclass(frozen=True)
class Deliver:
    data: bytes


@dataclass(frozen=True)
class Close:
    kind: str  # EOF | CLOSE | RESET


@dataclass(frozen=True)
class WaitUntil:
    when: float


@dataclass(frozen=True)
class Idle:
    pass


IDLE = Idle()


class Link:
    """Bandwidth of one direction, shared by all connections (a single WAN link).

    Pacing by "link free at" time with a small burst credit so timer lateness does not push
    the achieved rate far below the cap. Large chunks are cut into pieces of about 1/50 s.
    """

    def __init__(self, rate: int = 0, burst_s: float = 0.02) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self.free_at = -math.inf

    def set_rate(self, rate: int) -> None:
        if rate != self.rate:
            self.rate = rate
            self.free_at = -math.inf

    @property
    def piece(self) -> int:
        return max(512, min(65536, self.rate // 50))

    def consume(self, now: float, nbytes: int) -> None:
        self.free_at = max(self.free_at, now - self.burst_s) + nbytes / self.rate


@dataclass
class DirectionQueue:
    """Timestamped chunks of one direction of one connection, delivered in order.

    ``push`` stamps a chunk with ``due = max(now + delay, due of previous chunk)`` so jitter
    never reorders bytes. ``poll(now, link)`` says what to do next: ``Deliver`` (a whole chunk
    or, with a bandwidth cap, one piece of it), ``Close`` (an end-of-stream marker),
    ``WaitUntil`` (head not due yet or link busy) or ``IDLE`` (empty).
    """

    items: deque = field(default_factory=deque)  # [due, kind, data]
    queued_bytes: int = 0
    last_due: float = -math.inf

    def push(self, data: bytes, now: float, delay: float) -> None:
        due = max(now + delay, self.last_due)
        self.last_due = due
        self.items.append([due, DATA, data])
        self.queued_bytes += len(data)

    def push_close(self, kind: str, now: float, delay: float) -> None:
        due = max(now + delay, self.last_due)
        self.last_due = due
        self.items.append([due, kind, b""])

    def purge_data(self) -> tuple[int, int]:
        """Discard queued data (keep end-of-stream markers). Returns (chunks, bytes)."""
        chunks = sum(1 for it in self.items if it[1] == DATA)
        nbytes = self.queued_bytes
        self.items = deque(it for it in self.items if it[1] != DATA)
        self.queued_bytes = 0
        return chunks, nbytes

    def clear(self) -> tuple[int, int]:
        chunks, nbytes = self.purge_data()
        self.items.clear()
        return chunks, nbytes

    def poll(self, now: float, link: Link | None = None) -> Deliver | Close | WaitUntil | Idle:
        if not self.items:
            return IDLE
        head = self.items[0]
        due, kind, data = head
        if due > now:
            return WaitUntil(due)
        if kind != DATA:
            self.items.popleft()
            return Close(kind)
        n = len(data)
        if link is not None and link.rate:
            if link.free_at > now:
                return WaitUntil(link.free_at)
            n = min(n, link.piece)
            link.consume(now, n)
        if n == len(data):
            self.items.popleft()
            piece = data
        else:
            piece, head[2] = data[:n], data[n:]
        self.queued_bytes -= n
        return Deliver(piece)


# --------------------------------------------------------------------------------------------
# asyncio layer


def _rst(transport: asyncio.BaseTransport | None) -> None:
    """Abort ``transport`` so the peer sees a TCP RST (SO_LINGER on, timeout 0)."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Side(asyncio.Protocol):
    """Protocol of one socket of a proxied connection (``side`` is "client" or "server")."""

    def __init__(self, conn: _Conn, side: str) -> None:
        self.conn = conn
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.read_paused = False
        self.closed_by_us = False
        self.lost = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.data_from(self, data)

    def eof_received(self) -> bool:
        self.conn.eof_from(self)
        return True  # keep the transport open: half-close is forwarded, not imposed

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.lost_from(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.conn.pump_into(self)

    # helpers
    @property
    def writable(self) -> bool:
        t = self.transport
        return t is not None and not self.lost and not t.is_closing() and not self.write_paused

    def pause_reading(self) -> None:
        if self.transport is not None and not self.read_paused and not self.lost:
            self.read_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.read_paused and not self.lost:
            self.read_paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def reset(self) -> None:
        self.closed_by_us = True
        _rst(self.transport)

    def close(self) -> None:
        self.closed_by_us = True
        if self.transport is not None:
            self.transport.close()


class _Direction:
    """One direction of one connection: queue, timer, source and destination sides."""

    def __init__(self, conn: _Conn, name: str, src: _Side, dst: _Side) -> None:
        self.conn = conn
        self.name = name
        self.src = src
        self.dst = dst
        self.queue = DirectionQueue()
        self.timer: asyncio.TimerHandle | None = None
        self.finished = False  # end-of-stream marker delivered
        self.dst_gone = False  # destination lost: drop whatever comes

    @property
    def proxy(self) -> Proxy:
        return self.conn.proxy

    def silenced(self) -> bool:
        return self.proxy.settings.silenced(self.name)

    def receive(self, data: bytes) -> None:
        p = self.proxy
        p.stats[f"bytes_{self.name}_received"] += len(data)
        if self.dst_gone or self.finished or (
            self.silenced() and p.settings.silence == "drop"
        ):
            p.stats["chunks_dropped"] += 1
            p.stats["bytes_dropped"] += len(data)
            return
        self.queue.push(data, p.loop.time(), p.settings.sample_delay(p.rng))
        self.pump()

    def receive_close(self, kind: str) -> None:
        p = self.proxy
        if self.dst_gone or (self.finished and kind == EOF):
            return
        self.queue.push_close(kind, p.loop.time(), p.settings.sample_delay(p.rng))
        self.pump()

    def discard_all(self) -> None:
        chunks, nbytes = self.queue.clear()
        self.proxy.stats["chunks_dropped"] += chunks
        self.proxy.stats["bytes_dropped"] += nbytes
        self.cancel_timer()

    def apply_settings(self) -> None:
        s = self.proxy.settings
        if self.silenced() and s.silence == "drop":
            chunks, nbytes = self.queue.purge_data()
            self.proxy.stats["chunks_dropped"] += chunks
            self.proxy.stats["bytes_dropped"] += nbytes
        self.pump()

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pump(self) -> None:
        """Deliver everything that is due; arm a timer for the next due item."""
        self.cancel_timer()
        p = self.proxy
        if not self.silenced() and not self.dst_gone:
            link = p.links[self.name]
            while self.dst.writable:
                action = self.queue.poll(p.loop.time() + TIMER_SLOP, link)
                if isinstance(action, Deliver):
                    assert self.dst.transport is not None
                    self.dst.transport.write(action.data)
                    p.stats[f"bytes_{self.name}"] += len(action.data)
                elif isinstance(action, WaitUntil):
                    self.timer = p.loop.call_at(action.when, self.pump)
                    break
                elif isinstance(action, Close):
                    self.deliver_close(action.kind)
                    break
                else:
                    break
        self.update_flow()

    def update_flow(self) -> None:
        limit = self.proxy.queue_limit
        if self.queue.queued_bytes > limit:
            self.src.pause_reading()
        elif self.queue.queued_bytes <= limit // 2:
            self.src.resume_reading()

    def deliver_close(self, kind: str) -> None:
        self.finished = True
        self.queue.clear()
        t = self.dst.transport
        assert t is not None
        if kind == RESET:
            self.dst.reset()
        elif kind == CLOSE:
            self.dst.close()
        else:  # EOF
            if t.can_write_eof():
                try:
                    t.write_eof()
                except (OSError, RuntimeError):
                    self.dst.reset()
            self.conn.maybe_finish()


class _Conn:
    """One accepted connection and its upstream connection."""

    _ids = 0

    def __init__(self, proxy: Proxy) -> None:
        _Conn._ids += 1
        self.id = _Conn._ids
        self.proxy = proxy
        self.client = _Side(self, "client")
        self.server = _Side(self, "server")
        self.up = _Direction(self, "up", self.client, self.server)
        self.down = _Direction(self, "down", self.server, self.client)
        self.connect_task: asyncio.Task | None = None
        self.done = False

    # wiring from _Side
    def side_made(self, side: _Side) -> None:
        if side is self.client:
            self.proxy.accepted(self)
        else:
            self.up.pump()

    def data_from(self, side: _Side, data: bytes) -> None:
        (self.up if side is self.client else self.down).receive(data)

    def eof_from(self, side: _Side) -> None:
        (self.up if side is self.client else self.down).receive_close(EOF)

    def pump_into(self, side: _Side) -> None:
        (self.up if side is self.server else self.down).pump()

    def lost_from(self, side: _Side, exc: Exception | None) -> None:
        other = self.server if side is self.client else self.client
        out_dir = self.up if side is self.client else self.down  # side -> other
        in_dir = self.down if side is self.client else self.up  # other -> side
        in_dir.dst_gone = True
        in_dir.discard_all()
        if not side.closed_by_us:
            if side is self.client and self.server.transport is None:
                # upstream not connected yet: give up on it
                if self.connect_task is not None:
                    self.connect_task.cancel()
            elif not other.lost:
                out_dir.receive_close(RESET if exc is not None else CLOSE)
        self.maybe_finish()

    async def connect_upstream(self) -> None:
        p = self.proxy
        try:
            await p.loop.create_connection(
                lambda: self.server,
                p.target[0],
                p.target[1],
                local_addr=(p.source, 0) if p.source else None,
            )
        except OSError as e:
            p.stats["upstream_failures"] += 1
            log.warning("upstream_connect_failed", conn=self.id, error=str(e))
            self.up.discard_all()
            self.client.reset()
        finally:
            self.connect_task = None
            self.maybe_finish()

    def apply_settings(self) -> None:
        self.up.apply_settings()
        self.down.apply_settings()

    def reset(self) -> None:
        """Reset both sides now (mode "reset" or shutdown)."""
        if self.connect_task is not None:
            self.connect_task.cancel()
        self.up.discard_all()
        self.down.discard_all()
        self.up.finished = self.down.finished = True
        for s in (self.client, self.server):
            if s.transport is not None and not s.lost:
                s.reset()
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.done:
            return
        if self.up.finished and self.down.finished:
            for s in (self.client, self.server):
                if s.transport is not None and not s.lost and not s.transport.is_closing():
                    s.close()
        client_gone = self.client.transport is None or self.client.lost
        server_gone = (self.server.transport is None and self.connect_task is None) or (
            self.server.lost
        )
        if client_gone and server_gone:
            self.done = True
            self.up.cancel_timer()
            self.down.cancel_timer()
            self.proxy.finished(self)


class Proxy:
    """The fault proxy: a TCP listener, upstream connections, fault settings and stats.

    ``await start()`` opens the listener (and the control socket if ``control_path``);
    ``await close()`` resets every connection and closes both. ``control(obj)`` handles one
    decoded control request and returns the reply object (no I/O), ``control_line(bytes)``
    does the JSON part as well.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        *,
        source: str | None = None,
        control_path: str | None = None,
        settings: Settings | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        rng: random.Random | None = None,
    ) -> None:
        self.listen = listen
        self.target = target
        self.source = source
        self.control_path = control_path
        self.settings = Settings()
        self.max_connections = max_connections
        self.queue_limit = queue_limit
        self.rng = rng or random.Random()
        self.links = {"up": Link(), "down": Link()}
        self.conns: set[_Conn] = set()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "connections_accepted",
                "connections_rejected",
                "connections_reset",
                "upstream_failures",
                "bytes_up",
                "bytes_down",
                "bytes_up_received",
                "bytes_down_received",
                "chunks_dropped",
                "bytes_dropped",
            ),
            0,
        )
        self._server: asyncio.AbstractServer | None = None
        self._control_server: asyncio.AbstractServer | None = None
        self._control_clients: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.bound: tuple[str, int] | None = None
        if settings is not None:
            self._apply(settings)

    # lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: _Conn(self).client,
            self.listen[0],
            self.listen[1],
            reuse_address=True,
            backlog=min(self.max_connections, 4096),
        )
        self.bound = self._server.sockets[0].getsockname()[:2]
        if self.control_path:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.control_path).st_mode):
                    os.unlink(self.control_path)  # stale socket of a previous run
            self._control_server = await asyncio.start_unix_server(
                self._control_client, self.control_path, limit=MAX_CONTROL_LINE
            )
            with contextlib.suppress(OSError):
                os.chmod(self.control_path, 0o600)
        log.info(
            "faultproxy_listening",
            listen=f"{self.bound[0]}:{self.bound[1]}",
            target=f"{self.target[0]}:{self.target[1]}",
            source=self.source,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._control_server is not None:
            self._control_server.close()
        for t in list(self._control_clients):
            t.cancel()
        for conn in list(self.conns):
            conn.reset()
        if self._control_clients:
            await asyncio.gather(*self._control_clients, return_exceptions=True)
        # let connection_lost callbacks run
        for _ in range(100):
            if not self.conns:
                break
            await asyncio.sleep(0.005)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self.control_path:
            with contextlib.suppress(OSError):
                os.unlink(self.control_path)

    # connection bookkeeping
    def accepted(self, conn: _Conn) -> None:
        mode = self.settings.mode
        if mode == "reset" or len(self.conns) >= self.max_connections:
            self.stats["connections_rejected"] += 1
            conn.client.reset()
            return
        if mode == "refuse":
            self.stats["connections_rejected"] += 1
            conn.client.close()
            return
        self.stats["connections_accepted"] += 1
        self.conns.add(conn)
        conn.connect_task = self.loop.create_task(conn.connect_upstream())

    def finished(self, conn: _Conn) -> None:
        self.conns.discard(conn)

    # settings
    def _apply(self, new: Settings) -> None:
        old = self.settings
        self.settings = new
        for name in ("up", "down"):
            self.links[name].set_rate(new.bandwidth_bps)
        if new != old:
            log.info("faultproxy_settings", **asdict(new))
        if self.loop is None:
            return
        if new.mode == "reset":
            n = len(self.conns)
            for conn in list(self.conns):
                conn.reset()
            self.stats["connections_reset"] += n
        for conn in list(self.conns):
            conn.apply_settings()

    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = asdict(self.settings)
        host, port = self.bound or self.listen
        st.update(
            listen=f"{host}:{port}",
            listen_host=host,
            listen_port=port,
            target=f"{self.target[0]}:{self.target[1]}",
            source=self.source,
            max_connections=self.max_connections,
            queue_limit=self.queue_limit,
        )
        return st

    def stats_snapshot(self) -> dict[str, int]:
        st = dict(self.stats)
        st["connections_active"] = len(self.conns)
        st["queued_up"] = sum(c.up.queue.queued_bytes for c in self.conns)
        st["queued_down"] = sum(c.down.queue.queued_bytes for c in self.conns)
        return st

    # control protocol
    def control(self, req: Any) -> dict[str, Any]:
        """Handle one decoded request; never raises for bad input."""
        try:
            if not isinstance(req, dict):
                raise ControlError("request must be a JSON object")
            op = req.get("op")
            if op == "set":
                changes = {k: v for k, v in req.items() if k != "op"}
                self._apply(self.settings.updated(changes))
                return {"ok": True, "state": self.state()}
            if op == "get":
                return {"ok": True, "state": self.state()}
            if op == "stats":
                return {"ok": True, "stats": self.stats_snapshot()}
            raise ControlError(f"unknown op {op!r} (expected set, get or stats)")
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - the control plane must not crash the proxy
            log.exception("control_error")
            return {"ok": False, "error": f"internal error: {e}"}

    def control_line(self, line: bytes) -> dict[str, Any]:
        line = line.strip()
        if not line:
            return {"ok": False, "error": "empty request"}
        try:
            req = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return {"ok": False, "error": f"malformed JSON: {e}"}
        return self.control(req)

    async def _control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._control_clients.add(task)
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    if not e.partial.strip():
                        break
                    line = e.partial  # last request without newline
                except asyncio.LimitOverrunError:
                    reply = {"ok": False, "error": f"request longer than {MAX_CONTROL_LINE}"}
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await writer.drain()
                    break
                reply = self.control_line(line)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
                if reader.at_eof():
                    break
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._control_clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
