"""Floods against a real rpvd: many connections, slow writers, non-readers. The daemon stays
responsive to real clients and to glvmctl, and its memory stays bounded."""

from __future__ import annotations

import os
import select
import socket
import time

import pytest

from tests.conftest import qemu_io

#: these tests write the RPV client disk hdisk3 directly, to exercise the link itself
pytestmark = pytest.mark.raw_writes


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS")))


def test_thousand_connections_and_slow_writers(linked, tmp_path):
    a, b, _ = linked
    cfg = tmp_path / "b.toml"
    cfg.write_text("[rpvd]\nhandshake_timeout = 1.0\n")
    b.stop()
    b.extra_args = [*b.extra_args, "--config", str(cfg)]
    b.start()
    a.ctl("chdev", "-l", "hdisk3", "-a", "resume=yes")
    socks = []
    try:
        for _ in range(1000):
            s = socket.socket()
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            try:
                s.connect((b.addr, b.port))
            except BlockingIOError:
                pass
            socks.append(s)
        # a slowloris: one byte of a header, then nothing
        slow = socket.create_connection((b.addr, b.port), source_address=("127.0.0.1", 0))
        slow.sendall(b"G")
        # the daemon still answers glvmctl and serves the real RPV client
        assert b.json("lsdev", "-c", "rpvserver")[0]["state"] == "Available"
        qemu_io(a.nbd_uri("hdisk3"), "write -P 0x5e 0 64k", "read -P 0x5e 0 64k")
        # connections beyond the limit or past the handshake timeout are closed
        deadline = time.monotonic() + 10
        slow.setblocking(False)
        closed = False
        poller = select.poll()  # select() cannot watch descriptors above 1023
        poller.register(slow, select.POLLIN)
        while time.monotonic() < deadline and not closed:
            if poller.poll(500):
                try:
                    closed = slow.recv(1) == b""
                except ConnectionResetError:
                    closed = True
        assert closed, "a client that never finished HELLO was kept open"
        assert rss_kib(b.proc.pid) < 200 * 1024
    finally:
        for s in socks:
            s.close()
    refused = [e for e in b.log_events() if e["event"] == "rpv_connection_refused"]
    assert refused, "the connection limit never engaged"


def test_nbd_connection_flood(linked):
    a, _, _ = linked
    socks = []
    try:
        for _ in range(600):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(a.nbd_socket)
            except (BlockingIOError, ConnectionRefusedError, OSError):
                pass
            socks.append(s)
        assert a.json("lsdev")[0]["name"] == "hdisk3"
        qemu_io(a.nbd_uri("hdisk3"), "read 0 4k", check=False)
        assert rss_kib(a.proc.pid) < 200 * 1024
    finally:
        for s in socks:
            s.close()
    # once the flood is gone, NBD clients are served again
    qemu_io(a.nbd_uri("hdisk3"), "write -P 0x11 0 4k", "read -P 0x11 0 4k")
    assert os.path.exists(a.nbd_socket)
