"""The RPV link between two real rpvd processes: data path, access control, deadlines,
failure handling and the error log, exercised with real NBD clients and raw sockets."""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess
import time

import pytest

from rpv import protocol as pc
from rpv.faultproxy.client import start_proxy
from tests.conftest import qemu_io, run
from tests.helpers.rpv_raw import RawClient, file_bytes

#: these tests write the RPV client disk hdisk3 directly, to exercise the link itself
pytestmark = pytest.mark.raw_writes

MiB = 1 << 20


def timed_write_fails(site, export: str) -> float:
    """Write through NBD; assert it fails with EIO; return the seconds it took."""
    t0 = time.monotonic()
    r = qemu_io(site.nbd_uri(export), "write -P 0x77 0 4k", check=False)
    elapsed = time.monotonic() - t0
    assert "Input/output error" in r.stdout + r.stderr, r.stdout + r.stderr
    return elapsed


def test_walkthrough_bytes_land_at_the_other_site(linked, tmp_path):
    site_a, site_b, pvid = linked
    found = json.loads(site_a.ctl("rpvclient", "discover", "--server-addr", site_b.addr,
                                  "--local-addr", site_a.addr, "--port", str(site_b.port),
                                  "--json"))
    assert found["site"] == "Poughkeepsie"
    assert found["disks"] == [{"name": "hdisk2", "server": "rpvserver0", "pvid": pvid,
                               "size": 64 * MiB, "state": "Available", "local_name": "hdisk3"}]
    human = site_a.ctl("rpvclient", "discover", "--server-addr", site_b.addr,
                       "--local-addr", site_a.addr, "--port", str(site_b.port))
    assert "available at site Poughkeepsie" in human and pvid in human
    # without --local-addr: every local address that could reach B is tried and listed
    picked = json.loads(site_a.ctl("rpvclient", "discover", "--server-addr", site_b.addr,
                                   "--port", str(site_b.port), "--json"))
    assert picked["local_addr"] == site_a.addr and picked["disks"] == found["disks"]
    assert picked["local_addrs"][0] == {"addr": site_a.addr, "reaches": True, "disks": 1,
                                        "error": None}
    human = site_a.ctl("rpvclient", "discover", "--server-addr", site_b.addr,
                       "--port", str(site_b.port))
    assert f"#   {site_a.addr:<15} reaches it (1 disks offered)" in human.splitlines()
    assert f"asked from {site_a.addr})" in human
    attrs = {a["attribute"]: a["value"] for a in site_a.json("lsattr", "-E", "-l", "hdisk3")}
    assert attrs == {"auto_resume": "n", "compress": "none", "io_timeout": "3",
                     "local_addr": "127.0.0.1",
                     "pvid": pvid,
                     "server_addr": "127.0.0.2", "server_port": str(site_b.port),
                     "site": "Poughkeepsie", "size": str(64 * MiB)}
    data = os.urandom(8 * MiB)
    src = tmp_path / "random-data.bin"
    src.write_bytes(data)
    run("nbdcopy", str(src), site_a.nbd_uri("hdisk3"))
    assert file_bytes(site_b.disk_path("hdisk2") + ".img", 0, len(data)) == data
    back = tmp_path / "back.bin"
    run("nbdcopy", site_a.nbd_uri("hdisk3"), str(back))
    assert back.read_bytes()[: len(data)] == data
    info = json.loads(run("nbdinfo", "--json", site_a.nbd_uri("hdisk3")).stdout)
    assert info["exports"][0]["export-size"] == 64 * MiB
    qemu_io(site_a.nbd_uri("hdisk3"), "write -P 0xab 32M 1M", "read -P 0xab 32M 1M",
            "write -f -P 0xcd 40M 64k", "flush")
    assert file_bytes(site_b.disk_path("hdisk2") + ".img", 40 * MiB, 65536) == b"\xcd" * 65536
    listing = run("nbdinfo", "--list", "--json", f"nbd+unix://?socket={site_a.nbd_socket}")
    assert [e["export-name"] for e in json.loads(listing.stdout)["exports"]] == ["hdisk3"]


def test_server_checks_peer_pvid_and_state(linked):
    site_a, site_b, pvid = linked
    disk = site_b.disk_path("hdisk2") + ".img"
    # another client address is refused, and nothing reaches the disk
    site_a.ctl("rmdev", "-d", "-l", "hdisk3")
    err = site_a.fails("mkdev", "-c", "disk", "-t", "rpvclient", "-a", f"pvid={pvid}",
                       "-a", "server_addr=127.0.0.2", "-a", "local_addr=127.0.0.3",
                       "-a", f"server_port={site_b.port}", "-l", "hdisk7")
    assert "client 127.0.0.3 is not allowed for rpvserver0" in err
    # an unknown PVID is refused
    err = site_a.fails("mkdev", "-c", "disk", "-t", "rpvclient", "-a", "pvid=" + "ab" * 16,
                       "-a", "server_addr=127.0.0.2", "-a", "local_addr=127.0.0.1",
                       "-a", f"server_port={site_b.port}")
    assert "no RPV server exports PVID abab" in err
    # discovery from a foreign address lists nothing
    err = site_a.fails("rpvclient", "discover", "--server-addr", "127.0.0.2", "--local-addr",
                       "127.0.0.3", "--port", str(site_b.port))
    assert "accepts client 127.0.0.3" in err
    # nothing listening: each address tried says why, in one line
    err = site_a.fails("rpvclient", "discover", "--server-addr", "127.0.0.2", "--port", "9")
    assert "cannot query RPV server 127.0.0.2: from 127.0.0.1: " in err
    assert "Traceback" not in err
    assert site_a.json("lsdev") == []
    # the SMIT-like add: no --local-addr, the address that reaches B is found and kept
    assert site_a.ctl("rpvclient", "add", pvid, "--server-addr", site_b.addr, "--port",
                      str(site_b.port), "--io-timeout", "3").strip() == "hdisk0 Available"
    attrs = {a["attribute"]: a["value"] for a in site_a.json("lsattr", "-E", "-l", "hdisk0")}
    assert (attrs["local_addr"], attrs["io_timeout"]) == (site_a.addr, "3")
    refused = [e for e in site_b.log_events() if e["event"] == "rpv_hello_refused"]
    assert {e["errno"] for e in refused} == {errno.EACCES, errno.ENOENT}
    assert all(e["peer"] and e["time"].endswith("Z") and e["level"] == "warning"
               for e in refused)
    assert file_bytes(disk, 0, 4 * MiB) == bytes(4 * MiB)
    # a Defined server answers ENODEV; the client keeps retrying until its deadline
    site_b.ctl("rmdev", "-l", "rpvserver0")
    elapsed = timed_write_fails(site_a, "hdisk0")
    assert elapsed <= 3 + 1
    assert any(e["event"] == "rpv_hello_refused" and e["errno"] == errno.ENODEV
               for e in site_b.log_events())
    assert file_bytes(disk, 0, 4096) == bytes(4096)


def test_raw_protocol_abuse_gets_specific_errors(linked):
    site_a, site_b, pvid = linked
    disk = site_b.disk_path("hdisk2") + ".img"
    c = RawClient(site_b, "127.0.0.1")
    c.send(c.conn.send_hello(1, pvid, "test", "raw"))
    hello = c.event()
    assert hello.status == 0 and hello.info.disk_size == 64 * MiB
    assert hello.info.server_site == "Poughkeepsie" and hello.info.disk_name == "hdisk2"
    c.send(c.conn.send_write(2, 64 * MiB - 512, b"x" * 1024, 1000))
    c.send(c.conn.send_read(3, 64 * MiB, 512, 1000))
    r2, r3 = c.event(), c.event()
    assert (r2.status, r3.status) == (errno.EINVAL, errno.EINVAL)
    c.send(c.conn.send_write(4, 0, b"ok" * 256, 1000, fua=True))
    c.send(c.conn.send_ping(5, 1000))
    assert [c.event().status, c.event().status] == [0, 0]
    assert file_bytes(disk, 0, 512) == b"ok" * 256
    assert file_bytes(disk, 64 * MiB - 512, 512) == bytes(512)
    # an oversize frame: the header alone earns EMSGSIZE and a close
    head = pc.frames.pack_request_head(pc.Opcode.WRITE, 0, 6, 8 * MiB, 0, 8 * MiB, 1000)
    c.sock.sendall(head)
    raw = c.sock.recv(4096)
    assert raw[:4] == b"GRPV"
    status = int.from_bytes(raw[20:24], "big")
    assert status == errno.EMSGSIZE
    assert c.closed_by_peer()
    # bad magic: closed
    d = RawClient(site_b, "127.0.0.1")
    d.sock.sendall(b"JUNK" * 16)
    assert d.closed_by_peer()
    # I/O before HELLO: EPROTO
    e = RawClient(site_b, "127.0.0.1")
    e.sock.sendall(pc.frames.pack_request_head(pc.Opcode.READ, 0, 9, 0, 0, 512, 1000))
    raw = e.sock.recv(4096)
    assert int.from_bytes(raw[20:24], "big") == errno.EPROTO
    events = [ev for ev in site_b.log_events() if ev["event"] == "rpv_protocol_error"]
    assert {ev["errno"] for ev in events} >= {errno.EMSGSIZE, errno.EPROTO}
    # the daemon is still healthy for the real client
    qemu_io(site_a.nbd_uri("hdisk3"), "write -P 0x11 1M 4k", "read -P 0x11 1M 4k")


def test_reader_that_never_reads_replies_is_bounded(linked):
    site_a, site_b, pvid = linked
    c = RawClient(site_b, "127.0.0.1")
    c.send(c.conn.send_hello(1, pvid, "test", "raw"))
    assert c.event().status == 0
    c.sock.setblocking(False)
    limit, batch = 400_000, 1000
    sent, deadline = 0, time.monotonic() + 10
    # up to 400 GiB of 1 MiB READ replies requested; the server must stop reading requests
    # while its replies pile up, so our sends block long before the limit
    while sent < limit and time.monotonic() < deadline:
        _, w, _ = select.select([], [c.sock], [], 0.5)
        if not w:
            break
        chunk = b"".join(pc.frames.pack_request_head(pc.Opcode.READ, 0, 10 + i, 0, 0, MiB,
                                                     60000) for i in range(sent, sent + batch))
        try:
            n = c.sock.send(chunk)
        except BlockingIOError:
            break
        if n < len(chunk):
            break
        sent += batch
    assert sent < limit, "server kept reading while its replies piled up"
    rss = int(next(line.split()[1] for line in
                   open(f"/proc/{site_b.proc.pid}/status") if line.startswith("VmRSS")))
    assert rss < 200 * 1024, f"rpvd RSS {rss} KiB"
    c.sock.close()
    qemu_io(site_a.nbd_uri("hdisk3"), "write -P 0x22 0 4k", "read -P 0x22 0 4k")


def test_stalled_server_times_out_logs_once_and_resumes(linked):
    site_a, site_b, pvid = linked
    site_a.ctl("chdev", "-l", "hdisk3", "-a", "io_timeout=2")
    qemu_io(site_a.nbd_uri("hdisk3"), "write -P 0x01 0 64k")
    site_b.pause()
    try:
        assert timed_write_fails(site_a, "hdisk3") <= 2 + 1
        # failed: new I/O fails at once, without waiting for another timeout
        assert timed_write_fails(site_a, "hdisk3") < 1
        entries = site_a.json("errpt")
        assert [e["label"] for e in entries] == ["RPVC_IO_TIMEOUT"]
        e = entries[0]
        assert e["identifier"] == "D034B795" and e["resource"] == "hdisk3"
        assert (e["class"], e["type"]) == ("U", "PERM")
        assert set(e) >= {"identifier", "label", "timestamp", "sequence", "type", "class",
                          "resource", "description"}
        detail = site_a.ctl("errpt", "-a")
        for text in ("LABEL:          RPVC_IO_TIMEOUT", "IDENTIFIER:     D034B795",
                     "Node Id:         nodeA", "Resource Type:   rpvclient",
                     "Resource Class:  disk", "Probable Causes", "Failure Causes",
                     "chdev -l <device> -a resume=yes",
                     # where the disk is and what it is (the seed's Location and VPD)
                     "Location:        127.0.0.2:", " from 127.0.0.1\n",
                     "Machine Type and Model......Remote Physical Volume Client",
                     f"Serial Number...............{pvid}",
                     "Server Site................."):
            assert text in detail
        assert "RPV server 127.0.0.2 still not usable" in site_a.fails(
            "chdev", "-l", "hdisk3", "-a", "resume=yes")
    finally:
        site_b.cont()
    site_a.ctl("chdev", "-l", "hdisk3", "-a", "resume=yes")
    # a write that failed with EIO may or may not have reached the disk (block-device
    # semantics; the LVM marks such a copy stale): the first 4 KiB is either pattern
    head = file_bytes(site_b.disk_path("hdisk2") + ".img", 0, 4096)
    assert head in (b"\x01" * 4096, b"\x77" * 4096)
    qemu_io(site_a.nbd_uri("hdisk3"), "read -P 0x01 4k 60k", "write -P 0x02 0 4k",
            "read -P 0x02 0 4k")
    assert len(site_a.json("errpt")) == 1


def test_killed_server_detected_and_usable_after_restart(linked):
    site_a, site_b, _ = linked
    site_b.kill()
    assert timed_write_fails(site_a, "hdisk3") <= 3 + 1
    site_b.start()  # rpvserver0 has auto_online=y
    assert site_b.json("lsdev", "-c", "rpvserver")[0]["state"] == "Available"
    site_a.ctl("chdev", "-l", "hdisk3", "-a", "resume=yes")
    qemu_io(site_a.nbd_uri("hdisk3"), "write -P 0x33 0 4k", "read -P 0x33 0 4k")
    assert [e["label"] for e in site_a.json("errpt", "-N", "hdisk3")] == ["RPVC_IO_TIMEOUT"]


def test_planned_outage_server_addr_none(linked):
    site_a, site_b, _ = linked
    qemu_io(site_a.nbd_uri("hdisk3"), "write -P 0x44 0 4k")
    site_a.ctl("chdev", "-l", "hdisk3", "-a", "server_addr=none")
    assert timed_write_fails(site_a, "hdisk3") < 1
    assert site_a.json("errpt") == []
    assert site_a.json("lspv", "hdisk3")[0]["state"] == "disabled"
    site_a.ctl("chdev", "-l", "hdisk3", "-a", f"server_addr={site_b.addr}")
    qemu_io(site_a.nbd_uri("hdisk3"), "read -P 0x44 0 4k")
    assert site_a.json("errpt") == []


def test_errnotify_runs_method_with_aix_arguments(linked, tmp_path):
    site_a, site_b, _ = linked
    fifo = tmp_path / "notify.fifo"
    os.mkfifo(fifo)
    site_a.ctl("errnotify", "add", "--label", "RPVC_IO_TIMEOUT", "--method",
               f'echo "$1 $2 $3 $4 $6 $9" > {fifo}')
    assert site_a.json("errnotify", "list")[0]["label"] == "RPVC_IO_TIMEOUT"
    site_a.ctl("chdev", "-l", "hdisk3", "-a", "io_timeout=1")
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        site_b.pause()
        timed_write_fails(site_a, "hdisk3")
        ready, _, _ = select.select([fd], [], [], 10)
        assert ready, "notify method did not run"
        line = os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)
        site_b.cont()
    seq = site_a.json("errpt")[0]["sequence"]
    assert line == f"{seq} D034B795 U PERM hdisk3 RPVC_IO_TIMEOUT"
    assert site_a.json("errpt", "-j", "D034B795")[0]["sequence"] == seq
    assert site_a.json("errpt", "-N", "hdisk9") == []
    site_a.ctl("errclear")
    assert site_a.json("errpt") == []


def test_blackholed_link_times_out_and_reset_link_is_retried(linked, tmp_path):
    site_a, site_b, pvid = linked
    site_a.ctl("rmdev", "-d", "-l", "hdisk3")
    listen = f"127.0.0.3:{site_b.port}"
    with start_proxy(listen, f"{site_b.addr}:{site_b.port}", source=site_a.addr,
                     control=str(tmp_path / "proxy.sock")) as (_, proxy):
        site_a.add_client("hdisk3", pvid, site_b, io_timeout=3, server_addr="127.0.0.3")
        qemu_io(site_a.nbd_uri("hdisk3"), "write -P 0x55 0 64k")
        # resets: requests are re-sent over a new connection within their deadline
        proxy.set(mode="reset")
        writer = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "write -P 0x66 0 64k",
                                   site_a.nbd_uri("hdisk3")], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        resets = proxy.stats()["connections_reset"]
        t_end = time.monotonic() + 2
        while proxy.stats()["connections_reset"] == resets and time.monotonic() < t_end:
            select.select([], [], [], 0.05)
        proxy.set(mode="pass")
        out, _ = writer.communicate(timeout=10)
        assert writer.returncode == 0 and "wrote 65536/65536" in out, out
        assert file_bytes(site_b.disk_path("hdisk2") + ".img", 0, 65536) == b"\x66" * 65536
        assert site_a.json("errpt") == []
        # blackhole: detected within io_timeout + 1 s
        proxy.set(mode="blackhole")
        assert timed_write_fails(site_a, "hdisk3") <= 3 + 1
        assert [e["label"] for e in site_a.json("errpt")] == ["RPVC_IO_TIMEOUT"]
        proxy.set(mode="pass")
        site_a.ctl("chdev", "-l", "hdisk3", "-a", "resume=yes")
        qemu_io(site_a.nbd_uri("hdisk3"), "read -P 0x66 0 64k")


@pytest.mark.parametrize("mode", ["stall_up", "stall_down"])
def test_one_way_stall_is_a_timeout(linked, tmp_path, mode):
    site_a, site_b, pvid = linked
    site_a.ctl("rmdev", "-d", "-l", "hdisk3")
    with start_proxy(f"127.0.0.3:{site_b.port}", f"{site_b.addr}:{site_b.port}",
                     source=site_a.addr, control=str(tmp_path / "p.sock")) as (_, proxy):
        site_a.add_client("hdisk3", pvid, site_b, io_timeout=2, server_addr="127.0.0.3")
        proxy.set(mode=mode)
        assert timed_write_fails(site_a, "hdisk3") <= 2 + 1
        assert [e["label"] for e in site_a.json("errpt")] == ["RPVC_IO_TIMEOUT"]


def test_structured_logs(linked):
    site_a, site_b, _ = linked
    qemu_io(site_a.nbd_uri("hdisk3"), "read 0 4k")
    for site in (site_a, site_b):
        events = site.log_events()
        assert events, "no log lines"
        for e in events:
            assert {"time", "level", "event"} <= set(e)
            assert e["time"].endswith("Z")
    names = {e["event"] for e in site_b.log_events()}
    assert {"rpvd_ready", "rpv_listening", "rpv_session", "device_defined"} <= names
    session = next(e for e in site_b.log_events() if e["event"] == "rpv_session")
    assert session["peer"] == "127.0.0.1" and session["device"] == "rpvserver0"
    # the same lines go to stderr
    assert '"event": "rpvd_ready"' in site_b.stderr()
