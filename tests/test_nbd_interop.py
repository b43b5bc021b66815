"""Interop: real NBD clients (nbdinfo, nbdcopy, nbdsh, qemu-io, qemu-img) against the server.

The server runs in a separate process (tests/nbd_serve_helper.py, under uvloop) serving
FileDisk exports on a unix socket.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rpv.nbd.protocol import IHAVEOPT, REQUEST_MAGIC, Cmd, Opt, Rep

pytestmark = pytest.mark.interop

MiB = 1 << 20
HELPER = Path(__file__).with_name("nbd_serve_helper.py")
TOOLS = ["nbdinfo", "nbdcopy", "nbdsh", "qemu-io", "qemu-img"]
missing = [t for t in TOOLS if shutil.which(t) is None]


@pytest.fixture(autouse=True)
def _tools_installed():
    """Interop is not optional: .ci/run installs these tools, so their absence is a failure."""
    if missing:
        pytest.fail(f"NBD client tools missing: {missing} (bash .ci/run installs them)",
                    pytrace=False)

# nbdsh runs "python3" from PATH and needs the system interpreter (python3-libnbd).
TOOL_ENV = {**os.environ, "PATH": "/usr/bin:" + os.environ.get("PATH", "")}


class Served:
    def __init__(self, root: Path, proc: subprocess.Popen, sock: Path, log: Path,
                 disks: dict[str, Path]):
        self.root = root
        self.proc = proc
        self.sock = sock
        self.log = log
        self.disks = disks

    def uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def log_text(self) -> str:
        return self.log.read_text()

    def opened(self, export: str) -> int:
        return sum(1 for line in self.log_text().splitlines()
                   if "nbd_export_opened" in line and f"export={export} " in line)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=TOOL_ENV)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbd")
    disks = {"hdisk1": (root / "hdisk1.img", 64 * MiB), "hdisk2": (root / "hdisk2.img", 16 * MiB),
             "hdisk9": (root / "hdisk9.img", 4 * MiB), "lv00": (root / "lv00.img", 16 * MiB)}
    for path, size in disks.values():
        with open(path, "wb") as f:
            f.truncate(size)
    with open(disks["hdisk9"][0], "r+b") as f:
        f.write(b"RO" * 2048)
    sock = root / "nbd.sock"
    log = root / "server.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), "--socket", str(sock), "--ro", "hdisk9",
             "--async", "lv00",
             *(f"{name}={path}" for name, (path, _) in disks.items())],
            stdout=subprocess.PIPE, stderr=logf, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "READY", f"helper did not start: {line!r}\n{log.read_text()}"
        yield Served(root, proc, sock, log, {n: p for n, (p, _) in disks.items()})
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    assert not sock.exists()


@pytest.fixture(autouse=True)
def server_alive(served):
    yield
    assert served.proc.poll() is None, served.log_text()


def test_nbdinfo_list(served):
    out = json.loads(run("nbdinfo", "--list", "--json", served.uri("")).stdout)
    assert out["protocol"] == "newstyle-fixed"
    exports = {e["export-name"]: e for e in out["exports"]}
    assert sorted(exports) == ["hdisk1", "hdisk2", "hdisk9", "lv00"]
    assert exports["hdisk1"]["description"].startswith("file disk ")
    assert exports["hdisk2"]["export-size"] == 16 * MiB


def test_nbdinfo_export(served):
    [e] = json.loads(run("nbdinfo", "--json", served.uri("hdisk1")).stdout)["exports"]
    assert e["export-name"] == "hdisk1"
    assert e["export-size"] == 64 * MiB
    assert e["is_read_only"] is False
    for flag in ("can_flush", "can_fua", "can_multi_conn", "can_zero", "can_trim"):
        assert e[flag] is True, flag
    assert (e["block_size_minimum"], e["block_size_preferred"], e["block_size_maximum"]) == (
        512, 4096, 32 * MiB)
    [ro] = json.loads(run("nbdinfo", "--json", served.uri("hdisk9")).stdout)["exports"]
    assert ro["is_read_only"] is True and ro["export-size"] == 4 * MiB


@pytest.mark.parametrize("export", ["hdisk2", "lv00"])  # inline fast path / task per request
def test_nbdcopy_roundtrip_multi_conn(served, export):
    src = served.root / f"random-{export}.bin"
    payload = os.urandom(8 * MiB)
    src.write_bytes(payload)
    before = served.opened(export)
    run("nbdcopy", "--connections=4", "--requests=16", str(src), served.uri(export))
    assert served.opened(export) - before >= 2  # several connections at once
    out = served.root / f"out-{export}.bin"
    run("nbdcopy", served.uri(export), str(out))
    data = out.read_bytes()
    assert len(data) == 16 * MiB
    assert data[: 8 * MiB] == payload
    with open(served.disks[export], "rb") as f:  # and straight from the backing file
        assert f.read(8 * MiB) == payload


@pytest.mark.parametrize("export", ["hdisk1", "lv00"])
def test_qemu_io_pattern(served, export):
    r = run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 64k", "-c", "read -P 0xab 0 64k",
            served.uri(export))
    assert "read 65536/65536 bytes at offset 0" in r.stdout
    assert "verification failed" not in r.stdout + r.stderr
    with open(served.disks[export], "rb") as f:
        assert f.read(65536) == b"\xab" * 65536


@pytest.mark.parametrize("export", ["hdisk1", "lv00"])
def test_qemu_io_fua_flush_zero_discard(served, export):
    uri = served.uri(export)
    r = run("qemu-io", "-f", "raw",
            "-c", "write -f -P 0xcd 1M 64k",  # FUA
            "-c", "flush",
            "-c", "write -P 0x11 2M 128k",
            "-c", "write -z 2M 64k",  # WRITE_ZEROES
            "-c", "discard 3M 64k",  # TRIM (a no-op hint)
            "-c", "read -P 0xcd 1M 64k",
            "-c", "read -P 0 2M 64k",
            "-c", "read -P 0x11 2112k 64k", uri)
    assert "verification failed" not in r.stdout + r.stderr
    assert r.stdout.count("read 65536/65536") == 3
    with open(served.disks[export], "rb") as f:
        f.seek(1 * MiB)
        assert f.read(65536) == b"\xcd" * 65536


def test_nbdsh_fua_flush_zero(served):
    code = f"""
h.connect_uri({served.uri("hdisk1")!r})
assert h.can_fua() and h.can_flush() and h.can_multi_conn()
h.pwrite(b"F" * 4096, 8 * 1048576, nbd.CMD_FLAG_FUA)
h.pwrite(b"W" * 4096, 8 * 1048576 + 4096)
h.flush()
h.zero(4096, 8 * 1048576 + 4096, nbd.CMD_FLAG_FUA)
assert h.pread(8192, 8 * 1048576) == b"F" * 4096 + bytes(4096)
h.shutdown()
print("ok")
"""
    assert run("nbdsh", "-c", code).stdout.strip() == "ok"
    with open(served.disks["hdisk1"], "rb") as f:
        f.seek(8 * MiB)
        assert f.read(8192) == b"F" * 4096 + bytes(4096)


def test_legacy_export_name(served):
    # Without fixed newstyle libnbd falls back to NBD_OPT_EXPORT_NAME (and the 124 zeroes).
    code = f"""
h.set_handshake_flags(0)
h.connect_uri({served.uri("hdisk9")!r})
print(h.get_protocol(), h.get_size(), h.is_read_only(), bytes(h.pread(4, 0)).decode())
"""
    assert run("nbdsh", "-c", code).stdout.split() == ["newstyle", str(4 * MiB), "True", "RORO"]


def test_readonly_export(served):
    code = f"""
h.set_strict_mode(0)  # let the write reach the server
h.connect_uri({served.uri("hdisk9")!r})
try:
    h.pwrite(b"x" * 512, 0)
except nbd.Error as e:
    print(e.errno)
"""
    assert run("nbdsh", "-c", code).stdout.strip() == "EPERM"
    r = run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x52 0 1", served.uri("hdisk9"))
    assert "verification failed" not in r.stdout


def test_qemu_img_convert_out(served):
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 40M 1M", served.uri("hdisk1"))
    out = served.root / "converted.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", served.uri("hdisk1"), str(out))
    assert out.stat().st_size == 64 * MiB
    assert out.read_bytes() == served.disks["hdisk1"].read_bytes()


def test_unknown_export_is_a_clean_error(served):
    r = run("nbdinfo", served.uri("nope"), check=False)
    assert r.returncode != 0 and "nope" in r.stderr
    r = run("qemu-io", "-f", "raw", "-c", "read 0 512", served.uri("nope"), check=False)
    assert r.returncode != 0
    r = run("qemu-img", "info", served.uri("nope"), check=False)
    assert r.returncode != 0
    assert "hdisk1" in run("nbdinfo", "--list", served.uri("")).stdout  # still serving


def _raw_connect(served: Served, export: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(served.sock))
    assert s.recv(18, socket.MSG_WAITALL)[:16] == b"NBDMAGICIHAVEOPT"
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + b"\x00\x00"
    s.sendall(struct.pack(">IQII", 3, IHAVEOPT, Opt.GO, len(data)) + data)
    while True:
        _, _, rep, length = struct.unpack(">QIII", s.recv(20, socket.MSG_WAITALL))
        if length:
            s.recv(length, socket.MSG_WAITALL)
        if rep == Rep.ACK:
            return s
        assert rep == Rep.INFO


def test_client_that_never_reads_does_not_grow_server_memory(served):
    baseline = served.rss_kib()
    s = _raw_connect(served, "hdisk1")
    n = 4000  # 4 GiB worth of 1 MiB READs
    reqs = b"".join(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, Cmd.READ, h, (h % 60) * MiB, MiB)
                    for h in range(n))
    s.setblocking(False)
    sent = 0
    try:
        while sent < len(reqs):  # the server stops reading once it is backed up
            sent += s.send(reqs[sent:])
    except BlockingIOError:
        pass
    peak = 0
    for _ in range(10):  # RSS has no event to wait for: sample it for half a second
        peak = max(peak, served.rss_kib())
        time.sleep(0.05)
    s.close()
    assert peak - baseline < 100 * 1024, (baseline, peak)
    assert "nbd_export_opened" in served.log_text()
    run("nbdinfo", "--size", served.uri("hdisk1"))  # and it still serves
