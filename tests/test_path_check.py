"""One outage, detected once (issue 15): RPV clients on the same network path share what one
of them learns. When one times out, the others are checked at once (a PING, or any reply,
within PATH_CHECK_SECONDS) and fail together, so the first write of an outage waits out one
io_timeout instead of one per PV."""

from __future__ import annotations

import time

from rpv.faultproxy.client import start_proxy
from tests.conftest import qemu_io
from tests.helpers.runbooks import RPV_CLIENTS, configure_airline


def test_two_pvs_behind_one_failed_link_fail_together(geo, tmp_path):
    a, b = geo.a, geo.b
    configure_airline(geo)
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")  # quorum off takes effect: the VG outlives the remote PVs
    with start_proxy(f"127.0.0.3:{b.port}", f"{b.addr}:{b.port}", source=a.addr,
                     control=str(tmp_path / "proxy.sock")) as (_, proxy):
        for d in RPV_CLIENTS:
            a.ctl("chdev", "-l", d, "-a", "server_addr=127.0.0.3", "-a", "io_timeout=3")
        qemu_io(a.nbd_uri("datafslv"), "write -P 1 0 64k")  # both paths in use
        proxy.set(mode="blackhole")
        t0 = time.monotonic()
        r = qemu_io(a.nbd_uri("datafslv"), "write -P 2 0 64k")
        elapsed = time.monotonic() - t0
        assert "Input/output error" not in r.stdout + r.stderr  # the local copy took it
        events = a.log_events()
        timed_out = {e["device"] for e in events if e["event"] == "rpvc_io_timeout"}
        checked = {e["device"] for e in events if e["event"] == "rpvc_path_check_failed"}
        assert len(timed_out) == 1 and checked == set(RPV_CLIENTS) - timed_out, \
            (timed_out, checked)
        errpt = a.json("errpt")
        assert {e["resource"] for e in errpt if e["label"] == "RPVC_IO_TIMEOUT"} == \
            set(RPV_CLIENTS)
        states = {p["name"]: p["state"] for p in a.json("lsvg", "datavg")["pvs"]}
        assert all(states[d] == "missing" for d in RPV_CLIENTS), states
        qemu_io(a.nbd_uri("datafslv"), "read -P 2 0 64k")
        print(f"first write of the outage: {elapsed:.2f} s at io_timeout 3 with 2 PVs")
