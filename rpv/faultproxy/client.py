"""Small synchronous control client for ``glvm-faultproxy`` and a test helper to run it.

    with start_proxy("127.0.0.3:0", "127.0.0.2:6192", source="127.0.0.1") as (proc, ctl):
        host, port = ctl.listen_addr()
        ctl.set(latency_ms=50)
        ctl.set(mode="blackhole")
        ctl.stats()["bytes_up"]
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class FaultProxyError(RuntimeError):
    """The proxy answered ``{"ok": false, "error": ...}`` or could not be reached/started."""


class FaultProxyControl:
    """Talks to the proxy's control socket; one short unix connection per request."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout

    def request_line(self, line: bytes) -> dict[str, Any]:
        """Send raw bytes (a newline is added if missing); return the decoded reply object."""
        if not line.endswith(b"\n"):
            line += b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(line)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        if not buf:
            raise FaultProxyError("control socket closed without a reply")
        return json.loads(buf.splitlines()[0])

    def request(self, obj: Any) -> dict[str, Any]:
        """Send one request object; return the reply object as is (no raising on ok:false)."""
        return self.request_line(json.dumps(obj).encode())

    def _checked(self, obj: dict[str, Any], key: str) -> dict[str, Any]:
        reply = self.request(obj)
        if not reply.get("ok"):
            raise FaultProxyError(reply.get("error", "unknown error"))
        return reply[key]

    def set(self, **settings: Any) -> dict[str, Any]:
        """Change settings (mode, latency_ms, jitter_ms, bandwidth_bps, silence); new state."""
        return self._checked({"op": "set", **settings}, "state")

    def get(self) -> dict[str, Any]:
        """Current state: settings plus listen/target/source/limits."""
        return self._checked({"op": "get"}, "state")

    def stats(self) -> dict[str, Any]:
        """Counters: connections_accepted/active/rejected/reset, bytes_up/down, ..."""
        return self._checked({"op": "stats"}, "stats")

    def listen_addr(self) -> tuple[str, int]:
        """The address the proxy actually listens on (resolves a listen port of 0)."""
        st = self.get()
        return st["listen_host"], int(st["listen_port"])

    def clear(self) -> dict[str, Any]:
        """Back to a clean pass-through: no latency, jitter or cap, mode pass, silence drop."""
        return self.set(mode="pass", latency_ms=0, jitter_ms=0, bandwidth_bps=0, silence="drop")


def _hostport(addr: str | tuple[str, int]) -> str:
    if isinstance(addr, str):
        return addr
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _command() -> list[str]:
    exe = Path(sys.executable).parent / "glvm-faultproxy"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("glvm-faultproxy")
    if found:
        return [found]
    return [sys.executable, "-m", "rpv.faultproxy.main"]


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


@contextlib.contextmanager
def start_proxy(
    listen: str | tuple[str, int],
    target: str | tuple[str, int],
    source: str | None = None,
    control: str | os.PathLike[str] | None = None,
    *,
    extra_args: Sequence[str] = (),
    timeout: float = 10.0,
) -> Iterator[tuple[subprocess.Popen, FaultProxyControl]]:
    """Run ``glvm-faultproxy`` as a subprocess until the ``with`` block ends.

    Waits (at most ``timeout`` s) for its ``READY`` line, yields ``(Popen, FaultProxyControl)``
    and terminates it (SIGTERM, then SIGKILL) on exit. ``control=None`` uses a socket in a
    fresh temporary directory. The proxy also exits by itself if this process dies (its stdin
    is a pipe and it runs with ``--exit-on-stdin-eof``). ``extra_args`` go to the CLI as is,
    e.g. ``["--latency-ms", "20", "--max-connections", "8"]``.
    """
    tmpdir = None
    if control is None:
        tmpdir = tempfile.mkdtemp(prefix="faultproxy-")
        control = os.path.join(tmpdir, "ctl.sock")
    argv = [*_command(), "--listen", _hostport(listen), "--target", _hostport(target),
            "--control", os.fspath(control), "--exit-on-stdin-eof", *extra_args]
    if source:
        argv += ["--source", source]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        _wait_ready(proc, timeout)
        yield proc, FaultProxyControl(control)
    finally:
        _stop(proc)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen, timeout: float) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FaultProxyError(f"glvm-faultproxy not READY within {timeout} s")
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            rc = proc.wait(timeout=5)
            raise FaultProxyError(f"glvm-faultproxy exited ({rc}) before READY")
        buf += chunk
    line = buf.split(b"\n", 1)[0].strip()
    if line != b"READY":
        raise FaultProxyError(f"glvm-faultproxy printed {line!r} instead of READY")
