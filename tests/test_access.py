"""Access control on every door of a real rpvd: NBD over TCP only with TLS and a client
certificate from the site CA (and only from allowed networks), disks in use never writable
over NBD, sockets and the state directory locked down, and an audit event for every control
request that changes something. Each door is opened with the wrong credentials and the test
shows nothing was read or written."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from rpv.daemon import config as cfgmod
from rpv.nbd.protocol import IHAVEOPT, NBDMAGIC, Opt, Rep
from tests.conftest import TEST_PORT, run
from tests.helpers.waits import wait_until
from tests.sites import GLVMCTL, RPVD, Site

pytestmark = [pytest.mark.integration, pytest.mark.interop]

MiB = 1 << 20
PATTERN = bytes(range(256)) * 16  # 4 KiB, easy to recognise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tls_tool_args(certs, port: int, export: str) -> list[str]:
    """qemu-io arguments for an NBD-over-TLS image with the client directory ``certs``."""
    return ["--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=client",
            "--image-opts", f"driver=nbd,server.type=inet,server.host=127.0.0.1,"
                            f"server.port={port},export={export},tls-creds=tls0"]


def backing(site: Site, disk: str) -> str:
    return site.disk_path(disk) + ".img"


def read_file(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def opt_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    head = _recv(sock, 20)
    _magic, opt, rep, length = struct.unpack(">QIII", head)
    return opt, rep, _recv(sock, length)


def _recv(sock, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def greet(sock: socket.socket) -> None:
    magic, opt, _flags = struct.unpack(">QQH", _recv(sock, 18))
    assert (magic, opt) == (NBDMAGIC, IHAVEOPT)
    sock.sendall(struct.pack(">I", 3))


def send_opt(sock, opt: int, data: bytes = b"") -> None:
    sock.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def go_data(name: str) -> bytes:
    return struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)


# ---------------------------------------------------------------------------------------------
# door 1: NBD over TCP


@pytest.fixture
def tls_site(tmp_path):
    """Site A serving NBD on TCP with TLS, for clients on 127.0.0.1 only; its certificate
    names 127.0.0.1, as NBD clients check. ``certs`` is a valid client's directory,
    ``rogue`` one signed by another CA."""
    ca = tmp_path / "tls"
    run(GLVMCTL, "tls", "init", "--dir", str(ca))
    run(GLVMCTL, "tls", "issue", "Philadelphia", "--ip", "127.0.0.1", "--dir", str(ca))
    run(GLVMCTL, "tls", "client", "backup01", "--out", str(tmp_path / "certs"), "--dir", str(ca))
    run(GLVMCTL, "tls", "init", "--dir", str(tmp_path / "other"))
    run(GLVMCTL, "tls", "client", "rogue", "--out", str(tmp_path / "rogue"),
        "--dir", str(tmp_path / "other"))
    port = free_port()
    site = Site("Philadelphia", "127.0.0.1", tmp_path / "a", node="nodeA", port=TEST_PORT,
                extra_args=["--tls-ca", str(ca / "ca.pem"),
                            "--tls-cert", str(ca / "Philadelphia.pem"),
                            "--tls-key", str(ca / "Philadelphia.key"),
                            "--nbd-listen", f"127.0.0.1:{port}", "--nbd-allow", "127.0.0.1"])
    site.start()
    site.make_disk("hdisk1", "16M")
    with open(backing(site, "hdisk1"), "r+b") as f:
        f.seek(MiB)
        f.write(PATTERN)
    yield site, port, tmp_path / "certs", tmp_path / "rogue"
    site.kill()


def test_nbd_tcp_refuses_plaintext(tls_site):
    site, port, _certs, _ = tls_site
    # the protocol answer itself: NBD_REP_ERR_TLS_REQD, and no export data
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        greet(s)
        for opt, data in ((Opt.LIST, b""), (Opt.GO, go_data("hdisk1")),
                          (Opt.INFO, go_data("hdisk1"))):
            send_opt(s, opt, data)
            got_opt, rep, msg = opt_reply(s)
            assert (got_opt, rep) == (opt, Rep.ERR_TLS_REQD), msg
            assert b"hdisk1" not in msg
        send_opt(s, Opt.EXPORT_NAME, b"hdisk1")  # cannot carry an error: closed
        assert s.recv(100) == b""
    # real clients: nbdinfo gets nothing, qemu-io neither reads nor writes
    r = run("nbdinfo", "--json", f"nbd://127.0.0.1:{port}/hdisk1", check=False)
    assert r.returncode != 0 and "export-size" not in r.stdout
    r = run("qemu-io", "-f", "raw", "-c", "write -P 0x77 1M 4k", f"nbd://127.0.0.1:{port}/hdisk1",
            check=False)
    assert r.returncode != 0 and "TLS is required" in r.stderr, r.stderr
    assert read_file(backing(site, "hdisk1"), MiB, 4096) == PATTERN


def test_nbd_tcp_refuses_foreign_and_missing_certificates(tls_site):
    site, port, _certs, rogue = tls_site
    # a client certificate from another CA: the server ends the TLS handshake
    for cert in (rogue, None):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            greet(raw)
            send_opt(raw, Opt.STARTTLS)
            assert opt_reply(raw)[:2] == (Opt.STARTTLS, Rep.ACK)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the client trusts anyone: the server must not
            if cert is not None:
                ctx.load_cert_chain(str(cert / "client-cert.pem"), str(cert / "client-key.pem"))
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                tls = ctx.wrap_socket(raw)
                send_opt(tls, Opt.GO, go_data("hdisk1"))  # TLS 1.3: refused on first read
                opt_reply(tls)
    # the client may see the refusal before the server has logged it: wait for both entries
    def logged():
        found = [e for e in site.log_events() if e["event"] == "nbd_tls_refused"]
        return found if len(found) >= 2 else None
    refused = wait_until(logged, what="both refusals logged")
    assert all("certificate" in e["error"].lower() for e in refused)
    # the real tools with the rogue directory fail too, and nothing was written
    r = run("qemu-io", *tls_tool_args(rogue, port, "hdisk1"), "-c", "write -P 0x66 1M 4k",
            check=False)
    assert r.returncode != 0
    r = run("nbdinfo", f"nbds://127.0.0.1:{port}/hdisk1?tls-certificates={rogue}", check=False)
    assert r.returncode != 0 and "export-size" not in r.stdout
    assert read_file(backing(site, "hdisk1"), MiB, 4096) == PATTERN
    assert not [e for e in site.log_events() if e["event"] == "nbd_export_opened"]


def test_nbd_tcp_with_valid_certificate(tls_site, tmp_path):
    site, port, certs, _ = tls_site
    uri = f"nbds://127.0.0.1:{port}/hdisk1?tls-certificates={certs}"
    info = json.loads(run("nbdinfo", "--json", uri).stdout)
    assert info["protocol"] == "newstyle-fixed" and info["TLS"] is True
    assert info["exports"][0]["export-size"] == 16 * MiB
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(2 * MiB) + bytes(14 * MiB))
    run("nbdcopy", str(src), uri)
    back = tmp_path / "back.img"
    run("nbdcopy", uri, str(back))
    assert back.read_bytes() == src.read_bytes()
    run("qemu-io", *tls_tool_args(certs, port, "hdisk1"), "-c", "write -P 0x3c 4M 64k",
        "-c", "read -P 0x3c 4M 64k")
    assert read_file(backing(site, "hdisk1"), 4 * MiB, 65536) == b"\x3c" * 65536
    opened = [e for e in site.log_events() if e["event"] == "nbd_export_opened"]
    assert opened and all(e["client_cert"] == "backup01" for e in opened)


def test_nbd_tcp_allowlist(tls_site):
    """A client outside nbd_allow is dropped before it sees even the greeting."""
    site, port, _, _ = tls_site
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=("127.0.0.3", 0)) as s:
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    refused = [e for e in site.log_events() if e["event"] == "nbd_connection_refused"]
    assert refused and refused[-1]["reason"] == "client address not in nbd_allow"


def test_plaintext_tcp_needs_explicit_insecure(tmp_path):
    port = free_port()
    state = tmp_path / "state"
    r = subprocess.run([RPVD, "--state-dir", str(state), "--listen", f"127.0.0.1:{TEST_PORT}",
                        "--nbd-listen", f"127.0.0.1:{port}"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "nbd_insecure" in r.stderr and "Traceback" not in r.stderr
    site = Site("A", "127.0.0.1", tmp_path / "a", node="nodeA", port=TEST_PORT,
                extra_args=["--nbd-listen", f"127.0.0.1:{port}", "--nbd-insecure"])
    site.start()
    try:
        site.make_disk("hdisk1", "16M")
        run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4k", f"nbd://127.0.0.1:{port}/hdisk1")
        warned = [e for e in site.log_events() if e["event"] == "nbd_insecure"]
        assert warned and warned[0]["level"] == "warning"
        site.stop()
        site.start()  # logged at every start
        assert len([e for e in site.log_events() if e["event"] == "nbd_insecure"]) == 2
    finally:
        site.kill()


# ---------------------------------------------------------------------------------------------
# door 2: disks in use


def nbd_info(site: Site, export: str) -> dict:
    return json.loads(run("nbdinfo", "--json", site.nbd_uri(export)).stdout)["exports"][0]


def write_refused(site: Site, export: str, offset: int) -> None:
    """A write over NBD fails and the disk's bytes there do not change."""
    r = run("qemu-io", "-f", "raw", "-c", f"write -P 0x99 {offset} 4k", site.nbd_uri(export),
            check=False)
    assert r.returncode != 0 or "failed" in r.stderr, r.stdout


def test_disks_in_use_are_read_only(linked):
    a, b, _ = linked
    # a disk nobody uses stays writable: that is how a new disk is filled before mkvg
    a.make_disk("hdisk1", "64M")
    assert nbd_info(a, "hdisk1")["is_read_only"] is False
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 8M 4k", a.nbd_uri("hdisk1"))
    # a PV of a varied-on VG
    a.ctl("mkvg", "-y", "datavg", "hdisk1")
    info = nbd_info(a, "hdisk1")
    assert info["is_read_only"] is True
    assert "physical volume of volume group datavg" in info["description"]
    before = read_file(backing(a, "hdisk1"), 8 * MiB, 4096)
    write_refused(a, "hdisk1", 8 * MiB)
    assert read_file(backing(a, "hdisk1"), 8 * MiB, 4096) == before
    run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x11 8M 4k", a.nbd_uri("hdisk1"))  # reads ok
    a.ctl("varyoffvg", "datavg")
    assert nbd_info(a, "hdisk1")["is_read_only"] is False  # varied off: the disk is free again
    a.ctl("varyonvg", "datavg")
    assert nbd_info(a, "hdisk1")["is_read_only"] is True
    # the RPV client disk: its data lives at site B
    info = nbd_info(a, "hdisk3")
    assert info["is_read_only"] is True and "RPV client disk" in info["description"]
    before = read_file(backing(b, "hdisk2"), 0, 4096)
    write_refused(a, "hdisk3", 0)
    assert read_file(backing(b, "hdisk2"), 0, 4096) == before
    # the disk an Available RPV server serves to site A
    info = nbd_info(b, "hdisk2")
    assert info["is_read_only"] is True and "rpvserver0" in info["description"]
    write_refused(b, "hdisk2", 0)
    assert read_file(backing(b, "hdisk2"), 0, 4096) == before
    opened = [e for e in b.log_events() if e["event"] == "nbd_export_opened"
              and e["export"] == "hdisk2"]
    assert opened[-1]["readonly"] and "rpvserver0" in opened[-1]["reason"]


NBDSH_WRITER = """
import sys
h.pwrite(b"\\x42" * 4096, 0)
print("first", flush=True)
sys.stdin.readline()
try:
    h.pwrite(b"\\x43" * 4096, 4096)
    print("second ok", flush=True)
except nbd.Error as e:
    print("second failed", e, flush=True)
"""


def test_writable_connection_closed_when_disk_taken_into_use(site_a):
    """A client that opened a free disk for writing loses its connection when mkvg takes
    the disk: it cannot write behind the LVM's back afterwards."""
    site_a.make_disk("hdisk1", "64M")
    env = {**os.environ, "PATH": "/usr/bin:" + os.environ.get("PATH", "")}
    p = subprocess.Popen(["nbdsh", "-u", site_a.nbd_uri("hdisk1"), "-c", NBDSH_WRITER],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "first"
        site_a.ctl("mkvg", "-f", "-y", "datavg", "hdisk1")
        out, err = p.communicate("go\n", timeout=30)
    finally:
        p.kill()
    assert out.startswith("second failed"), (out, err)
    assert read_file(backing(site_a, "hdisk1"), 4096, 4096) != b"\x43" * 4096
    gone = [e for e in site_a.log_events() if e["event"] == "nbd_disconnect"
            and e["export"] == "hdisk1"]
    assert gone and gone[0]["reason"] == "export withdrawn"


# ---------------------------------------------------------------------------------------------
# door 3: sockets and the state directory


def as_user(uid: int, gid: int, groups: list[int], *cmd: str) -> subprocess.CompletedProcess:
    grp = ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return run("setpriv", f"--reuid={uid}", f"--regid={gid}", *grp, *cmd, check=False)


def test_sockets_and_state_dir_locked_down(site_a, tmp_path):
    assert stat.S_IMODE(os.stat(site_a.state_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(site_a.nbd_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(site_a.socket).st_mode) == 0o600
    site_a.make_disk("hdisk1", "16M")
    # nobody (uid 65534) reaches neither socket
    r = as_user(65534, 65534, [], "nbdinfo", site_a.nbd_uri("hdisk1"))
    assert r.returncode != 0 and "export-size" not in r.stdout
    r = as_user(65534, 65534, [], GLVMCTL, "--socket", site_a.socket, "lsdev")
    assert r.returncode != 0 and "hdisk1" not in r.stdout
    # a group may be given the NBD socket (in a directory it can reach: pytest's own
    # temporary directories are 0700)
    run_dir = Path(tempfile.mkdtemp(prefix="glvm-run-"))
    run_dir.chmod(0o755)
    site = Site("B", "127.0.0.2", tmp_path / "b", node="nodeB", port=TEST_PORT,
                extra_args=["--nbd-socket", str(run_dir / "nbd.sock"),
                            "--nbd-socket-group", "disk"])
    site.start()
    try:
        site.make_disk("hdisk1", "16M")
        st = os.stat(run_dir / "nbd.sock")
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 6  # Debian's "disk"
        uri = f"nbd+unix:///hdisk1?socket={run_dir / 'nbd.sock'}"
        r = as_user(65534, 65534, [6], "nbdinfo", uri)
        assert r.returncode == 0 and "export-size" in r.stdout, r.stderr
        r = as_user(65534, 65534, [], "nbdinfo", uri)
        assert r.returncode != 0 and "export-size" not in r.stdout
    finally:
        site.kill()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_metrics_listener_defaults_to_loopback():
    cfg = cfgmod.load(None, {"metrics_listen": "9464", "state_dir": "/tmp/x"})
    assert cfg.metrics_listen == "127.0.0.1:9464"
    with pytest.raises(cfgmod.ConfigError, match="nbd_allow"):
        cfgmod.load(None, {"nbd_allow": "10.0.0.0/8,not-a-net", "state_dir": "/tmp/x"})
    cfg = cfgmod.load(None, {"nbd_insecure": "yes", "nbd_listen": "127.0.0.1:1",
                             "state_dir": "/tmp/x"})
    assert cfg.nbd_insecure is True


# ---------------------------------------------------------------------------------------------
# the audit trail


def test_audit_trail(site_a):
    a = site_a
    a.make_disk("hdisk1", "64M")
    a.fails("chdev", "-l", "hdisk1", "-a", "size=12")
    a.ctl("mkvg", "-y", "datavg", "hdisk1")
    a.ctl("lsdev")  # a query: not audited
    a.ctl("varyoffvg", "datavg")
    events = [e for e in a.log_events() if e["event"] == "audit"]
    ops = [(e["op"], e["outcome"]) for e in events]
    assert ("mkdev", "ok") in ops and ("mkvg", "ok") in ops and ("varyoffvg", "ok") in ops
    assert ("site", "ok") in ops  # the fixture's "rpvserver site" call
    refused = [e for e in events if e["op"] == "chdev"]
    assert refused and refused[0]["outcome"] == "refused" and refused[0]["error"]
    assert refused[0]["args"]["name"] == "hdisk1"
    assert all(e["uid"] == os.getuid() and e["pid"] > 0 for e in events)
    mkvg = next(e for e in events if e["op"] == "mkvg")
    assert mkvg["args"]["vg"] == "datavg" and mkvg["args"]["pvs"] == ["hdisk1"]
    assert not [e for e in events if e["op"] in ("lsdev", "lspv")]
