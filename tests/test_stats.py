"""rpvstat, gmvgstat and the Prometheus endpoint against real daemons."""

from __future__ import annotations

import re
import socket
import urllib.request

import pytest

from tests.conftest import qemu_io, run
from tests.helpers.runbooks import configure_airline

#: these tests write the RPV client disk hdisk3 directly, to exercise the link itself
pytestmark = pytest.mark.raw_writes


def test_rpvstat_counts_and_resets(linked):
    a, b, _ = linked
    qemu_io(a.nbd_uri("hdisk3"), "write -P 1 0 64k", "write -P 2 1M 64k", "read 0 128k")
    rows = a.json("rpvstat")
    assert [r["name"] for r in rows] == ["hdisk3"]
    r = rows[0]
    assert (r["server_addr"], r["state"], r["connected"]) == ("127.0.0.2", "online", True)
    assert r["writes"] >= 2 and r["kb_written"] >= 128 and r["reads"] >= 1
    assert r["kb_read"] >= 128 and r["errors"] == 0 and r["timeouts"] == 0
    assert 0 < r["avg_ms"] <= r["max_ms"]
    paths = a.json("rpvstat", "-N")
    assert paths[0]["devices"] == ["hdisk3"] and paths[0]["writes"] == r["writes"]
    human = a.ctl("rpvstat")
    assert "hdisk3" in human and "Comp Wr" in human
    a.ctl("rpvstat", "-R")
    assert a.json("rpvstat")[0]["writes"] == 0
    twice = a.ctl("rpvstat", "-i", "1", "-n", "2")
    assert twice.count("RPV Client") == 2
    # a timeout is counted
    a.ctl("chdev", "-l", "hdisk3", "-a", "io_timeout=1")
    b.pause()
    try:
        qemu_io(a.nbd_uri("hdisk3"), "write 0 4k", check=False)
    finally:
        b.cont()
    r = a.json("rpvstat")[0]
    assert r["timeouts"] == 1 and r["state"] == "failed"


def test_gmvgstat(geo):
    configure_airline(geo)
    rows = geo.a.json("gmvgstat")
    assert rows == [{"vg": "datavg", "pvs": 2, "rpvs": 2, "total_vols": 4, "stale_vols": 0,
                     "total_pps": 22, "stale_pps": 0, "synced_pct": 100.0,
                     "async_lag_bytes": 0, "async_lag_seconds": 0.0, "resync_rate_mb": None}]
    assert "datavg" in geo.a.ctl("gmvgstat", "datavg")
    assert "does not exist" in geo.a.fails("gmvgstat", "novg")


def test_prometheus_metrics(linked):
    a, _, _ = linked
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a.stop()
    a.extra_args = [*a.extra_args, "--metrics-listen", f"127.0.0.1:{port}"]
    a.start()
    a.ctl("mkdev", "-l", "hdisk3")
    qemu_io(a.nbd_uri("hdisk3"), "write -P 3 0 64k")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'glvm_rpv_requests_total{device="hdisk3",op="write"} 1.0' in body
    assert 'glvm_rpv_bytes_total{device="hdisk3",op="write"} 65536.0' in body
    assert 'glvm_rpv_online{device="hdisk3",server="127.0.0.2"} 1.0' in body
    assert 'glvm_rpv_io_seconds_count{device="hdisk3"} 1.0' in body
    # 1 MiB writes to a mirrored LV: once its dirty region is logged they take the inline
    # path, and each payload buffer comes back to the pool for the next one
    a.make_disk("hdisk1")
    a.ctl("mkvg", "-y", "mvg", "hdisk1", "hdisk3")
    a.ctl("mklv", "-y", "mlv", "-c", "2", "mvg", "2")
    run("qemu-io", "-f", "raw", "-t", "writeback",  # no FUA: qemu-io's default writes with it
        *[x for i in range(8) for x in ("-c", f"write -P {i + 1} {i << 20} 1M")],
        a.nbd_uri("mlv"))
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    reused = re.search(r'glvm_payload_buffers_total\{how="reused"\} (\S+)', body)
    assert reused and float(reused.group(1)) >= 4, body[-800:]
    assert re.search(r"glvm_payload_buffers_free_bytes \d", body)
