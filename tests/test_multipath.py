"""Several networks per RPV client (issue 15): server_addr/local_addr list one address per
path; requests spread over the live paths (one connection each, joined to one session); when a
path fails (reset, or requests unanswered for the path timeout) the
requests go to another path at once, the PV does not go stale and nothing is acknowledged
twice or lost; the failed path is probed and logged up again; only when no path answers does
io_timeout end in EIO. Each path goes through a fault proxy of its own."""

from __future__ import annotations

import contextlib
import errno
import time

from rpv import protocol as pc
from rpv.faultproxy.client import start_proxy
from tests.conftest import qemu_io
from tests.helpers.lvmtools import copies_equal
from tests.helpers.rpv_raw import RawClient
from tests.helpers.runbooks import RPV_CLIENTS, configure_airline
from tests.helpers.waits import wait_until

IO_TIMEOUT = 4


@contextlib.contextmanager
def two_paths(a, b, tmp_path):
    """A's RPV clients reach B over two paths: proxies on 127.0.0.3 and 127.0.0.4."""
    with contextlib.ExitStack() as stack:
        proxies = []
        for n, host in enumerate(("127.0.0.3", "127.0.0.4")):
            _, ctl = stack.enter_context(start_proxy(
                f"{host}:{b.port}", f"{b.addr}:{b.port}", source=a.addr,
                control=str(tmp_path / f"proxy{n}.sock")))
            proxies.append(ctl)
        for d in RPV_CLIENTS:
            a.ctl("chdev", "-l", d, "-a", "server_addr=127.0.0.3,127.0.0.4",
                  "-a", f"local_addr={a.addr},{a.addr}", "-a", f"io_timeout={IO_TIMEOUT}")
        yield proxies


def both_active(site) -> bool:
    return all(set(r["path_states"].values()) == {"active"} for r in site.json("rpvstat", "-N"))


def labels(site) -> list[tuple[str, str]]:
    return [(e["label"], e["resource"]) for e in site.json("errpt")]


def test_a_failed_path_moves_the_io_to_the_other_one(geo, tmp_path):
    a, b = geo.a, geo.b
    configure_airline(geo)
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")  # quorum off takes effect
    with two_paths(a, b, tmp_path) as (first, second):
        attrs = {r["attribute"]: r["value"] for r in a.json("lsattr", "-E", "-l", "hdisk3")}
        assert attrs["server_addr"] == "127.0.0.3,127.0.0.4"
        uri = a.nbd_uri("datafslv")
        qemu_io(uri, "write -P 1 0 1M")
        wait_until(lambda: both_active(a), 10, "the second path to join the session")
        qemu_io(uri, *[f"write -P 1 {i * 65536} 64k" for i in range(8)])
        rows = a.json("rpvstat", "-N")
        assert all(r["writes"] >= 4 for r in rows), rows  # both paths carry writes
        first.set(mode="blackhole")  # a path in use answers nothing
        t0 = time.monotonic()
        r = qemu_io(uri, *[f"write -P {i + 2} {i * 65536} 64k" for i in range(32)])
        moved = time.monotonic() - t0
        assert "Input/output error" not in r.stdout + r.stderr
        vg = a.json("lsvg", "datavg")
        assert vg["stale_pps"] == 0 and {p["state"] for p in vg["pvs"]} == {"active"}, vg
        found = labels(a)
        assert ("RPVC_PATH_DOWN", "hdisk3") in found and ("RPVC_PATH_DOWN", "hdisk4") in found
        assert not any(lab == "RPVC_IO_TIMEOUT" for lab, _ in found)
        assert copies_equal(geo, "datafslv") == []
        print(f"32 writes with the first path blackholed: {moved:.2f} s "
              f"(io_timeout {IO_TIMEOUT})")

        by_path = {r["server_addr"]: r for r in a.json("rpvstat", "-N")}
        assert by_path["127.0.0.3"]["path_states"] == {"hdisk3": "down", "hdisk4": "down"}
        assert by_path["127.0.0.4"]["path_states"] == {"hdisk3": "active", "hdisk4": "active"}
        assert by_path["127.0.0.4"]["writes"] >= 32 // 2  # the second path took them

        first.set(mode="pass")  # repaired: probed, logged up again and joined
        wait_until(lambda: ("RPVC_PATH_UP", "hdisk3") in labels(a), 30,
                   "the first path to be seen up again")
        wait_until(lambda: both_active(a), 10, "the first path to join the session again")

        first.set(mode="blackhole")  # now a joined path (the session began on the second)
        r = qemu_io(uri, *[f"write -P {i + 3} {i * 65536} 64k" for i in range(16)])
        assert "Input/output error" not in r.stdout + r.stderr
        assert a.json("lsvg", "datavg")["stale_pps"] == 0
        assert copies_equal(geo, "datafslv") == []
        first.set(mode="pass")
        wait_until(lambda: both_active(a), 30, "the first path to join once more")

        for p in (first, second):  # now no path answers: the PVs time out, as before
            p.set(mode="blackhole")
        t0 = time.monotonic()
        qemu_io(uri, "write -P 9 0 64k")  # completes on the local copy
        elapsed = time.monotonic() - t0
        assert ("RPVC_IO_TIMEOUT", "hdisk3") in labels(a)
        assert a.json("lsvg", "datavg")["stale_pps"] > 0
        assert elapsed < IO_TIMEOUT + 5, elapsed
        print(f"with both paths down the write completed after {elapsed:.2f} s")
        for p in (first, second):
            p.set(mode="pass")


def test_paths_must_pair_up(linked):
    a, _, _ = linked
    out = a.fails("chdev", "-l", "hdisk3", "-a", "server_addr=127.0.0.2,127.0.0.5")
    assert "same number of addresses" in out
    out = a.fails("chdev", "-l", "hdisk3", "-a", "server_addr=1.2.3.4,1.2.3.5,1.2.3.6,"
                  "1.2.3.7,1.2.3.8", "-a", "local_addr=127.0.0.1")
    assert "1 to 4" in out


def test_a_joining_connection_shares_the_session_and_a_plain_hello_ends_it(linked):
    """The server side of several paths: a HELLO with FEATURE_JOIN adds a connection to the
    live session instead of closing it; a plain HELLO closes them all (so nothing left in a
    dead path's socket is applied after requests resent elsewhere); a join with no session
    to join is refused with ESTALE."""
    _, b, pvid = linked

    def hello(features: int = 0) -> tuple[RawClient, object]:
        c = RawClient(b, "127.0.0.1")
        c.send(c.conn.send_hello(1, pvid, "test", "paths", pc.DEFAULT_FEATURES | features))
        return c, c.event()

    first, ev = hello()
    assert ev.status == 0 and ev.info.features & pc.FEATURE_JOIN  # the server offers joins
    second, ev = hello(pc.FEATURE_JOIN)
    assert ev.status == 0
    second.send(second.conn.send_write(2, 4096, b"j" * 4096, 5000))
    assert second.event().status == 0
    first.send(first.conn.send_read(3, 4096, 4096, 5000))  # the first is still open
    assert first.event().data == b"j" * 4096

    third, ev = hello()  # a new session: both earlier connections are closed
    assert ev.status == 0 and first.closed_by_peer() and second.closed_by_peer()
    third.sock.close()

    def refused():
        c, ev = hello(pc.FEATURE_JOIN)
        c.sock.close()
        return ev.status == errno.ESTALE and "no session" in ev.message
    wait_until(refused, 10, "a join with no session left to be refused")
