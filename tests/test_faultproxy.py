"""Tests of the userspace TCP fault proxy (rpv.faultproxy).

Sans-IO scheduling is tested with explicit clocks; the proxy itself runs as a real
``glvm-faultproxy`` process on 127.0.0.3 in front of an echo server on 127.0.0.2, plus a few
in-process asyncio tests for limits that are awkward to reach from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpv.faultproxy.client import FaultProxyControl, FaultProxyError, start_proxy
from rpv.faultproxy.proxy import (
    EOF,
    RESET,
    Close,
    ControlError,
    Deliver,
    DirectionQueue,
    Idle,
    Link,
    Proxy,
    Settings,
    WaitUntil,
)
from tests.helpers.waits import settled, until, wait_until

SILENCE_S = 0.3  # how long "nothing arrives" is observed
TIMEOUT_S = 5.0  # upper bound for anything that should happen


# --------------------------------------------------------------------------------------------
# sans-IO scheduling


def drain(q: DirectionQueue, now: float, link: Link | None = None):
    out = []
    while True:
        a = q.poll(now, link)
        if isinstance(a, Deliver | Close):
            out.append(a)
        else:
            return out, a


def test_latency_due_times_without_sleeping():
    q = DirectionQueue()
    q.push(b"a", now=10.0, delay=0.05)
    q.push(b"b", now=10.01, delay=0.05)
    assert q.poll(10.0) == WaitUntil(10.05)
    assert q.poll(10.0499) == WaitUntil(10.05)
    assert q.poll(10.05) == Deliver(b"a")
    assert q.poll(10.05) == WaitUntil(10.06)
    assert q.poll(11) == Deliver(b"b")
    assert isinstance(q.poll(11), Idle)
    assert q.queued_bytes == 0


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=50),
                          st.floats(0, 0.5), st.floats(0, 0.2)), max_size=40))
@settings(max_examples=200, deadline=None)
def test_jitter_never_reorders(chunks):
    q = DirectionQueue()
    now = 0.0
    sent = b""
    for data, delay, gap in chunks:
        q.push(data, now, delay)
        sent += data
        now += gap
    dues = [it[0] for it in q.items]
    assert dues == sorted(dues)
    got, last = drain(q, 1e9)
    assert b"".join(a.data for a in got) == sent
    assert isinstance(last, Idle)


def test_settings_jitter_sample_bounds():
    s = Settings(latency_ms=10, jitter_ms=30)
    rng = random.Random(1)
    samples = [s.sample_delay(rng) for _ in range(1000)]
    assert min(samples) == 0.0  # clamped, never negative
    assert max(samples) <= 0.040
    assert Settings(latency_ms=50).sample_delay(rng) == 0.05


def test_bandwidth_pacing_simulated_clock():
    link = Link(rate=10_000)  # 10 kB/s -> pieces of 512 B
    q = DirectionQueue()
    q.push(b"x" * 10_000, now=0.0, delay=0.0)
    now, delivered, t_last = 0.0, 0, 0.0
    for _ in range(10_000):
        a = q.poll(now, link)
        if isinstance(a, Deliver):
            assert len(a.data) <= link.piece
            delivered += len(a.data)
            t_last = now
        elif isinstance(a, WaitUntil):
            assert a.when > now
            now = a.when
        else:
            break
    assert delivered == 10_000
    # the last piece leaves about (total - one piece) / rate after the first
    assert t_last == pytest.approx((10_000 - 512) / 10_000, abs=0.03)


def test_purge_keeps_end_of_stream_markers():
    q = DirectionQueue()
    q.push(b"abc", 0, 0)
    q.push_close(EOF, 0, 0)
    q.push(b"late", 0, 0)
    q.push_close(RESET, 0, 0)
    assert q.purge_data() == (2, 7)
    got, _ = drain(q, 1)
    assert got == [Close(EOF), Close(RESET)]


def test_settings_validation():
    s = Settings()
    assert s.updated({"latency_ms": 5, "mode": "stall_up"}).silenced("up")
    assert not s.updated({"mode": "stall_up"}).silenced("down")
    assert s.updated({"bandwidth_bps": 1000.0}).bandwidth_bps == 1000
    for bad in ({"latency_ms": -1}, {"latency_ms": "5"}, {"latency_ms": True},
                {"latency_ms": float("nan")}, {"jitter_ms": 1e12}, {"bandwidth_bps": 1.5},
                {"bandwidth_bps": -1}, {"mode": "bogus"}, {"mode": None},
                {"silence": "maybe"}, {"nonsense": 1}):
        with pytest.raises(ControlError):
            s.updated(bad)


def test_control_dispatch_without_io():
    p = Proxy(("127.0.0.3", 0), ("127.0.0.2", 1))
    assert p.control({"op": "get"})["state"]["mode"] == "pass"
    r = p.control({"op": "set", "latency_ms": 20, "mode": "blackhole"})
    assert r["ok"] and r["state"]["latency_ms"] == 20 and r["state"]["mode"] == "blackhole"
    # a rejected set changes nothing
    assert not p.control({"op": "set", "latency_ms": 1, "mode": "nope"})["ok"]
    assert p.settings.latency_ms == 20
    for line in (b"", b"   ", b"nope", b"[1]", b"42", b'"get"', b"{}", b'{"op": 1}',
                 b'{"op": "explode"}', b"\xff\xfe", b'{"op": "set", "mode": [1]}'):
        r = p.control_line(line)
        assert r["ok"] is False and isinstance(r["error"], str), line
    assert p.control_line(b'{"op":"stats"}\n')["stats"]["connections_active"] == 0


# --------------------------------------------------------------------------------------------
# real process in front of an echo server


class EchoServer:
    """Threaded echo server on 127.0.0.2 that records peers and bytes received."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.sock = socket.create_server((host, 0))
        self.addr = self.sock.getsockname()
        self.cond = threading.Condition()
        self.peers: list[tuple[str, int]] = []
        self.received = 0
        self.active = 0
        self.ends: list[str] = []  # "eof" | "reset" per finished connection
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self.peers.append(peer)
                self.active += 1
                self.cond.notify_all()
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        end = "eof"
        with c:
            try:
                while data := c.recv(65536):
                    with self.cond:
                        self.received += len(data)
                        self.cond.notify_all()
                    c.sendall(data)
            except OSError:
                end = "reset"
        with self.cond:
            self.ends.append(end)
            self.active -= 1
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float = TIMEOUT_S) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def echo():
    srv = EchoServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def proxy_proc(echo, tmp_path_factory):
    ctl_path = tmp_path_factory.mktemp("fp") / "ctl.sock"
    with start_proxy("127.0.0.3:0", echo.addr, source="127.0.0.1",
                     control=str(ctl_path)) as (proc, ctl):
        yield proc, ctl


@pytest.fixture
def ctl(proxy_proc, echo) -> FaultProxyControl:
    proc, c = proxy_proc
    assert proc.poll() is None, "proxy died"
    c.clear()
    # quiesce: connections of earlier tests have been closed through the proxy on both ends
    wait_until(lambda: not (c.stats()["connections_active"] or echo.active), TIMEOUT_S,
               "connections of an earlier test closed")
    yield c
    c.clear()


@pytest.fixture
def connect(ctl):
    socks: list[socket.socket] = []
    addr = ctl.listen_addr()

    def _connect() -> socket.socket:
        s = socket.create_connection(addr, timeout=TIMEOUT_S)
        socks.append(s)
        return s

    yield _connect
    for s in socks:
        s.close()


def recv_exact(s: socket.socket, n: int, timeout: float = TIMEOUT_S) -> bytes:
    s.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def assert_silent(s: socket.socket, timeout: float = SILENCE_S) -> None:
    """Nothing arrives and the connection is neither closed nor reset."""
    s.settimeout(timeout)
    with pytest.raises(TimeoutError):
        s.recv(1)


def assert_connect_fails(connect) -> None:
    """Connecting gives EOF or RST right away (the RST may even beat connect()'s return)."""
    try:
        s = connect()
    except ConnectionResetError:
        return
    assert_closed_or_reset(s)


def assert_closed_or_reset(s: socket.socket) -> None:
    s.settimeout(TIMEOUT_S)
    try:
        data = s.recv(1024)
    except ConnectionResetError:
        return
    assert data == b""


def roundtrip(s: socket.socket, msg: bytes) -> float:
    t0 = time.monotonic()
    s.sendall(msg)
    assert recv_exact(s, len(msg)) == msg
    return time.monotonic() - t0


def test_passthrough_1mib_identical_both_ways_and_half_close(connect, echo):
    payload = os.urandom(1 << 20)
    s = connect()

    def send():
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # EOF must travel through the proxy to the server

    t = threading.Thread(target=send)
    t.start()
    got = recv_exact(s, len(payload), timeout=10)
    t.join(TIMEOUT_S)
    assert got == payload
    # the echo server saw EOF and closed; that close comes back as EOF
    s.settimeout(TIMEOUT_S)
    assert s.recv(1) == b""


def test_source_address_is_what_the_server_sees(connect, echo):
    n = len(echo.peers)
    s = connect()
    roundtrip(s, b"who am i")
    assert echo.wait_for(lambda: len(echo.peers) > n)
    assert echo.peers[-1][0] == "127.0.0.1"


def test_latency_each_way(ctl, connect):
    s = connect()
    assert roundtrip(s, b"warm") < 1.0
    state = ctl.set(latency_ms=50)
    assert state["latency_ms"] == 50
    assert roundtrip(s, b"ping") >= 0.09
    ctl.set(latency_ms=0)
    assert roundtrip(s, b"fast") < 0.09


def test_jitter_preserves_byte_order(ctl, connect):
    ctl.set(latency_ms=5, jitter_ms=5)
    s = connect()
    msgs = b"".join(b"%06d" % i for i in range(500))
    for i in range(0, len(msgs), 60):
        s.sendall(msgs[i:i + 60])
    assert recv_exact(s, len(msgs)) == msgs


def test_blackhole_is_silent_keeps_connection_then_pass_resumes(ctl, connect, echo):
    s = connect()
    roundtrip(s, b"before")
    seen = echo.received
    ends = len(echo.ends)
    ctl.set(mode="blackhole")
    s.sendall(b"into the void")
    assert_silent(s)
    assert echo.received == seen  # the server heard nothing either
    late = connect()  # new connections are accepted, and silent too
    late.sendall(b"hello?")
    assert_silent(late, 0.1)
    assert len(echo.ends) == ends  # nobody was closed
    assert ctl.stats()["chunks_dropped"] >= 2
    ctl.set(mode="pass")
    assert roundtrip(connect(), b"new connection works") < TIMEOUT_S
    # the old connection survived; what was sent during the blackhole is gone (silence=drop)
    roundtrip(s, b"after")


def test_blackhole_hold_delivers_after_heal(ctl, connect):
    s = connect()
    roundtrip(s, b"x")
    ctl.set(mode="blackhole", silence="hold")
    s.sendall(b"held back")
    assert_silent(s)
    assert ctl.stats()["queued_up"] == len(b"held back")
    ctl.set(mode="pass")
    assert recv_exact(s, 9) == b"held back"


def test_reset_existing_and_new_connections(ctl, connect, echo):
    s = connect()
    roundtrip(s, b"alive")
    ends = len(echo.ends)
    ctl.set(mode="reset")
    with pytest.raises((ConnectionResetError, BrokenPipeError, EOFError)):
        recv_exact(s, 1)
    # the server side was reset as well
    assert echo.wait_for(lambda: len(echo.ends) > ends)
    assert echo.ends[-1] == "reset"
    # new connections are reset at accept
    assert_connect_fails(connect)
    ctl.set(mode="pass")
    roundtrip(connect(), b"back")
    st = ctl.stats()
    assert st["connections_reset"] >= 1 and st["connections_rejected"] >= 1


def test_refuse_closes_new_connections_only(ctl, connect):
    old = connect()
    roundtrip(old, b"old")
    ctl.set(mode="refuse")
    assert_connect_fails(connect)
    roundtrip(old, b"still fine")
    ctl.set(mode="pass")
    roundtrip(connect(), b"accepted again")


def test_stall_up(ctl, connect, echo):
    s = connect()
    roundtrip(s, b"x")
    seen = echo.received
    ctl.set(mode="stall_up")
    s.sendall(b"upload")
    assert_silent(s)
    assert echo.received == seen


def test_stall_down(ctl, connect, echo):
    s = connect()
    roundtrip(s, b"x")
    seen = echo.received
    ctl.set(mode="stall_down")
    s.sendall(b"upload")
    assert echo.wait_for(lambda: echo.received >= seen + 6)  # the server got it ...
    assert_silent(s)  # ... but its answer never comes back
    ctl.set(mode="pass")
    roundtrip(s, b"again")


def test_bandwidth_cap_limits_throughput(ctl, connect):
    rate = 256 * 1024
    ctl.set(bandwidth_bps=rate)
    payload = os.urandom(128 * 1024)  # 0.5 s each way at the cap (directions overlap)
    s = connect()
    t0 = time.monotonic()
    t = threading.Thread(target=s.sendall, args=(payload,))
    t.start()
    assert recv_exact(s, len(payload)) == payload
    elapsed = time.monotonic() - t0
    t.join(TIMEOUT_S)
    assert elapsed >= 0.35


def test_malformed_control_input(ctl):
    bad = [b"not json", b"[1,2]", b"{}", b'{"op":"frobnicate"}', b'{"op":"set","mode":"x"}',
           b'{"op":"set","latency_ms":-5}', b'{"op":"set","unknown":1}', b"\xff\xfe\x00",
           b"\n", b"{" * 100, b'{"op": "set", "latency_ms": 1e400}']
    for line in bad:
        r = ctl.request_line(line)
        assert r["ok"] is False and r["error"], line
    # over-long request
    r = ctl.request_line(b'{"op":"get","pad":"' + b"x" * 100_000 + b'"}')
    assert r["ok"] is False
    with pytest.raises(FaultProxyError):
        ctl.set(mode="sideways")
    # several requests on one connection, one reply line each
    with socket.socket(socket.AF_UNIX) as u:
        u.settimeout(TIMEOUT_S)
        u.connect(ctl.path)
        u.sendall(b'{"op":"get"}\ngarbage\n{"op":"stats"}\n')
        buf = b""
        while buf.count(b"\n") < 3:
            chunk = u.recv(65536)
            assert chunk
            buf += chunk
    replies = [json.loads(x) for x in buf.splitlines()]
    assert [r["ok"] for r in replies] == [True, False, True]
    assert ctl.get()["mode"] == "pass"


def test_stats_counters_move(ctl, connect):
    before = ctl.stats()
    s = connect()
    roundtrip(s, b"12345")
    after = ctl.stats()
    assert after["connections_accepted"] == before["connections_accepted"] + 1
    assert after["connections_active"] >= 1
    assert after["bytes_up"] == before["bytes_up"] + 5
    assert after["bytes_down"] == before["bytes_down"] + 5
    ctl.set(mode="blackhole")
    s.sendall(b"lost")
    wait_until(lambda: ctl.stats()["chunks_dropped"] != after["chunks_dropped"], TIMEOUT_S,
               "the blackholed chunk dropped")
    assert ctl.stats()["bytes_up"] == after["bytes_up"]


def test_state_reports_addresses(ctl, echo):
    st = ctl.get()
    assert st["listen_host"] == "127.0.0.3" and st["listen_port"] > 0
    assert st["target"] == f"{echo.addr[0]}:{echo.addr[1]}"
    assert st["source"] == "127.0.0.1"
    assert set(st) >= {"mode", "latency_ms", "jitter_ms", "bandwidth_bps", "silence"}


def test_sigterm_exits_cleanly_and_removes_control_socket(tmp_path, echo):
    path = tmp_path / "ctl.sock"
    with start_proxy(("127.0.0.3", 0), echo.addr, control=path,
                     extra_args=["--latency-ms", "7"]) as (proc, c):
        assert c.get()["latency_ms"] == 7
        assert path.exists()
    assert proc.returncode == 0
    assert not path.exists()


# --------------------------------------------------------------------------------------------
# in-process limits


class _Sink(asyncio.Protocol):
    def __init__(self, store: bytearray, done: asyncio.Event) -> None:
        self.store, self.done = store, done

    def data_received(self, data: bytes) -> None:
        self.store += data

    def eof_received(self) -> None:
        self.done.set()


@contextlib.asynccontextmanager
async def inproc(target, **kw):
    p = Proxy(("127.0.0.3", 0), target, **kw)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


@pytest.mark.asyncio
async def test_queue_is_bounded_while_holding_then_delivers_in_order():
    loop = asyncio.get_running_loop()
    store, done = bytearray(), asyncio.Event()
    sink = await loop.create_server(lambda: _Sink(store, done), "127.0.0.2", 0)
    limit = 64 * 1024
    try:
        async with inproc(sink.sockets[0].getsockname()[:2], queue_limit=limit) as p:
            p.control({"op": "set", "mode": "stall_up", "silence": "hold"})
            r, w = await asyncio.open_connection(*p.bound)
            payload = os.urandom(8 << 20)
            w.write(payload)  # far more than the proxy may buffer
            await until(lambda: p.stats_snapshot()["queued_up"] > limit)
            # reading is paused: the queue stops growing (sender blocks in TCP)
            queued = await settled(lambda: p.stats_snapshot()["queued_up"], quiet=0.1,
                                   timeout=TIMEOUT_S)
            assert queued <= limit + 512 * 1024
            assert w.transport.get_write_buffer_size() > 0
            assert len(store) == 0
            p.control({"op": "set", "mode": "pass"})
            await asyncio.wait_for(w.drain(), TIMEOUT_S)
            w.write_eof()
            await asyncio.wait_for(done.wait(), TIMEOUT_S)
            assert bytes(store) == payload
            w.close()
    finally:
        sink.close()


@pytest.mark.asyncio
async def test_max_connections_and_upstream_failure():
    loop = asyncio.get_running_loop()
    store, done = bytearray(), asyncio.Event()
    sink = await loop.create_server(lambda: _Sink(store, done), "127.0.0.2", 0)
    try:
        async with inproc(sink.sockets[0].getsockname()[:2], max_connections=2) as p:
            conns = [await asyncio.open_connection(*p.bound) for _ in range(2)]
            await until(lambda: len(p.conns) == 2)
            r3, w3 = await asyncio.open_connection(*p.bound)
            try:
                assert await asyncio.wait_for(r3.read(1), TIMEOUT_S) == b""
            except ConnectionResetError:
                pass
            assert p.stats_snapshot()["connections_rejected"] == 1
            for _, w in [*conns, (r3, w3)]:
                w.close()
            await until(lambda: not p.conns)
    finally:
        sink.close()
        await sink.wait_closed()
    # nothing listens at the target: the client is reset
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.2", 0))
        dead = tmp.getsockname()
    async with inproc(dead) as p:
        r, w = await asyncio.open_connection(*p.bound)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(r.read(1), TIMEOUT_S) == b""
        await until(lambda: p.stats_snapshot()["upstream_failures"] == 1)
        w.close()
