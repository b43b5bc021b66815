"""Mutual TLS on the RPV link between real daemons."""

from __future__ import annotations

import socket
import ssl

import pytest

from rpv import protocol as pc
from tests.conftest import TEST_PORT, qemu_io, run
from tests.sites import GLVMCTL, Site


@pytest.fixture
def tls_sites(tmp_path):
    ca = tmp_path / "tls"
    run(GLVMCTL, "tls", "init", "--dir", str(ca))
    sites = []
    for name, addr, sub, node in (("Poughkeepsie", "127.0.0.2", "b", "nodeB"),
                                  ("Philadelphia", "127.0.0.1", "a", "nodeA")):
        run(GLVMCTL, "tls", "issue", name, "--dir", str(ca))
        site = Site(name, addr, tmp_path / sub, node=node, port=TEST_PORT, extra_args=[
            "--tls-ca", str(ca / "ca.pem"), "--tls-cert", str(ca / f"{name}.pem"),
            "--tls-key", str(ca / f"{name}.key"), "--nbd-unsafe-raw-writes"])
        site.start()
        site.ctl("rpvserver", "site", name)
        sites.append(site)
    yield sites[1], sites[0], ca
    for s in sites:
        s.kill()


def test_mutual_tls_link_and_refusals(tls_sites, tmp_path):
    a, b, ca = tls_sites
    pvid = b.make_disk("hdisk2")
    b.serve(pvid, a.addr)
    a.add_client("hdisk3", pvid, b, io_timeout=3)
    qemu_io(a.nbd_uri("hdisk3"), "write -P 0x3c 0 64k", "read -P 0x3c 0 64k")
    assert any(e["event"] == "rpv_listening" and e["tls"] for e in b.log_events())
    disk = b.disk_path("hdisk2") + ".img"
    before = open(disk, "rb").read(1 << 20)
    # a plaintext client gets nowhere
    s = socket.create_connection((b.addr, b.port), source_address=("127.0.0.1", 0))
    conn = pc.Connection(pc.Role.CLIENT)
    s.sendall(b"".join(bytes(x) for x in conn.send_hello(1, pvid, "x", "x")))
    s.settimeout(5)
    try:
        answer = s.recv(100)  # at most a TLS alert, never an RPV reply
    except ConnectionResetError:
        answer = b""
    assert not answer.startswith(b"GRPV")
    s.close()
    # a TLS client without a certificate is refused during the handshake
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca / "ca.pem"))
    raw = socket.create_connection((b.addr, b.port), source_address=("127.0.0.1", 0))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError)):
        tls_sock = ctx.wrap_socket(raw)
        tls_sock.sendall(b"".join(bytes(x) for x in
                                  pc.Connection(pc.Role.CLIENT).send_hello(1, pvid, "x", "x")))
        assert tls_sock.recv(100) == b""
        raise ConnectionResetError("closed without a reply")
    raw.close()
    # a certificate from another CA is refused too
    other = tmp_path / "other"
    run(GLVMCTL, "tls", "init", "--dir", str(other))
    run(GLVMCTL, "tls", "issue", "Rogue", "--dir", str(other))
    ctx2 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx2.check_hostname = False
    ctx2.verify_mode = ssl.CERT_NONE
    ctx2.load_cert_chain(str(other / "Rogue.pem"), str(other / "Rogue.key"))
    raw = socket.create_connection((b.addr, b.port), source_address=("127.0.0.1", 0))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError)):
        tls_sock = ctx2.wrap_socket(raw)
        tls_sock.sendall(b"".join(bytes(x) for x in
                                  pc.Connection(pc.Role.CLIENT).send_hello(1, pvid, "x", "x")))
        assert tls_sock.recv(100) == b""
        raise ConnectionResetError("closed without a reply")
    raw.close()
    assert open(disk, "rb").read(1 << 20) == before, "a refused client changed the disk"
    # the real client still works
    qemu_io(a.nbd_uri("hdisk3"), "read -P 0x3c 0 64k")


def test_tls_cli_refuses_to_overwrite(tmp_path):
    d = tmp_path / "tls"
    run(GLVMCTL, "tls", "init", "--dir", str(d))
    r = run(GLVMCTL, "tls", "init", "--dir", str(d), check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run(GLVMCTL, "tls", "issue", "bad name!", "--dir", str(d), check=False)
    assert r.returncode == 1 and "must be letters" in r.stderr
    assert oct((d / "ca.key").stat().st_mode & 0o777) == "0o600"
