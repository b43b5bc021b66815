"""Asynchronous mirroring between two real daemons, the link through the fault proxy:
writes complete while the remote site answers nothing, the copy catches up when the link
is back, and a kill -9 of the production site with writes still cached loses none."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

import pytest

from rpv.faultproxy.client import start_proxy
from tests.conftest import qemu_io, run
from tests.helpers.lvmtools import copies_equal
from tests.helpers.runbooks import RPV_CLIENTS, RPV_SERVERS, a_takes_back, b_lets_go
from tests.helpers.waits import wait_until


@contextlib.contextmanager
def async_link(a, b, tmp_path):
    """A's RPV clients reach B through a fault proxy on 127.0.0.3; PoolB asynchronous.
    Yields the proxy's control client."""
    with start_proxy(f"127.0.0.3:{b.port}", f"{b.addr}:{b.port}", source=a.addr,
                     control=str(tmp_path / "proxy.sock")) as (_, proxy):
        for d in RPV_CLIENTS:
            a.ctl("chdev", "-l", d, "-a", "server_addr=127.0.0.3")
        async_pools(a)
        yield proxy


def fail_over(b) -> None:
    """The seed's move to the DR site: B's RPV servers down, importvg -f."""
    for s in RPV_SERVERS:
        b.ctl("chdev", "-l", s, "-a", "auto_online=n")
        b.ctl("rmdev", "-l", s)
    b.ctl("importvg", "-f", "-y", "datavg", "hdisk2")


def async_pools(a) -> None:
    """datavg with datafslv (copy 1 in PoolA: hdisk1/2; copy 2 in PoolB: hdisk3/4, the RPV
    clients) and aiocache in PoolA; PoolB asynchronous."""
    a.ctl("mkvg", "-p", "PoolA", "-y", "datavg", "hdisk1", "hdisk2")
    a.ctl("extendvg", "-p", "PoolB", "datavg", *RPV_CLIENTS)
    a.ctl("chvg", "-a", "n", "-Q", "n", "datavg")
    a.ctl("varyoffvg", "datavg")
    a.ctl("varyonvg", "datavg")  # quorum off takes effect
    a.ctl("chvg", "-M", "s", "datavg")
    a.ctl("mklv", "-y", "datafslv", "-c", "2", "-s", "s", "-p", "copy1=PoolA", "-p",
          "copy2=PoolB", "datavg", "10")
    a.ctl("mklv", "-y", "aiocache", "-t", "aio_cache", "-p", "copy1=PoolA", "datavg", "2")
    assert "PoolB of datavg: async" in a.ctl("chmp", "-A", "-c", "aiocache", "-h", "90",
                                             "-m", "PoolB", "datavg")


def pool_b(a) -> dict:
    return a.json("lsmp", "-m", "PoolB", "datavg")["pools"][0]["async"]


def writes(n: int, base: int = 0) -> list[str]:
    return [f"write -P {i % 250 + 1} {base + i * 65536} 64k" for i in range(n)]


def test_async_writes_go_on_while_the_link_is_down_and_catch_up(geo, tmp_path):
    a, b = geo.a, geo.b
    with async_link(a, b, tmp_path) as proxy:
        proxy.set(mode="blackhole")  # the remote site answers nothing at all
        # 48 writes and a flush complete although no byte reaches site B
        t0 = time.monotonic()
        r = qemu_io(a.nbd_uri("datafslv"), *writes(48), "flush")
        assert "Input/output error" not in r.stdout + r.stderr
        elapsed = time.monotonic() - t0
        state = pool_b(a)
        assert state["pending_writes"] >= 48 and not state["cache_empty"]
        assert state["state"] == "active" and state["consistent"]
        assert a.json("lsvg", "datavg")["stale_pps"] == 0  # cached, not stale
        human = " ".join(a.ctl("lsmp", "-A", "datavg").split())
        assert "ASYNC MIRROR STATE: active" in human and "ASYNC CACHE EMPTY: no" in human
        assert "WRITES NOT AT REMOTE: 48" in human
        row = a.json("rpvstat", "-A")[0]
        assert (row["vg"], row["pool"], row["writes"], row["pending_writes"]) == \
            ("datavg", "PoolB", 48, 48)
        assert "PoolB" in a.ctl("rpvstat", "-A")
        lag = a.json("gmvgstat", "datavg")[0]
        assert lag["async_lag_bytes"] == 48 * 65536 and lag["async_lag_seconds"] > 0
        # the link comes back: the RPV clients resume, varyonvg takes the PVs back, and the
        # sender drains the cache into the remote copy
        proxy.set(mode="pass")
        for d in RPV_CLIENTS:
            a.ctl("chdev", "-l", d, "-a", "resume=yes")
        a.ctl("varyonvg", "datavg")
        wait_until(lambda: pool_b(a)["cache_empty"], 30, "the cache to drain")
        assert copies_equal(geo, "datafslv") == []
        assert pool_b(a)["sent_writes"] >= 48
        assert a.json("lsvg", "datavg")["stale_pps"] == 0
        print(f"48 async writes + flush with the link blackholed: {elapsed:.2f} s")


def test_kill_9_with_writes_cached_loses_none(geo, tmp_path):
    a, b = geo.a, geo.b
    with async_link(a, b, tmp_path) as proxy:
        proxy.set(mode="blackhole")
        qemu_io(a.nbd_uri("datafslv"), *writes(40, base=4 << 20), "flush")
        assert pool_b(a)["pending_writes"] >= 40
        a.kill()  # kill -9: the cache holds 40 writes the remote copy never got
        proxy.set(mode="pass")
        a.start()
        for d in RPV_CLIENTS:
            a.ctl("mkdev", "-l", d)
        out = a.ctl("varyonvg", "datavg")
        assert "varied on" in out
        state = pool_b(a)
        assert state["cache_empty"] and state["state"] == "active", state
        assert copies_equal(geo, "datafslv") == []
        data = json.loads(a.ctl("lsmp", "-A", "datavg", "--json"))
        assert [p["mode"] for p in data["pools"]] == ["sync", "async"]
        assert any(e["event"] == "lvm_async_replay" for e in a.log_events())


@pytest.mark.parametrize("flushes", [True, False], ids=["flush-each", "no-flush"])
def test_failover_finds_a_prefix_of_the_writes_at_the_remote_site(geo, tmp_path, flushes):
    """A QD1 writer, with a FLUSH after each write or none at all: whatever the remote copy
    holds when the production site dies must be the first k writes, for some k, with no
    later write present while an earlier one is missing."""
    a, b = geo.a, geo.b
    n = 60
    with async_link(a, b, tmp_path) as proxy:
        # every epoch costs the sender two round trips of 200 ms; without FLUSHes the link
        # carries about four 64 KiB writes a second
        proxy.set(**({"latency_ms": 100} if flushes else {"bandwidth_bps": 256 << 10}))
        cmds = []
        for i in range(n):
            cmds += [f"write -P {i + 1} {i * 65536} 64k"] + (["flush"] if flushes else [])
        qemu_io(a.nbd_uri("datafslv"), *cmds)  # all acknowledged at local speed
        wait_until(lambda: a.json("rpvstat", "-A")[0]["sent_writes"] >= 2, 30,
                   "the sender to deliver some writes")
        a.kill()  # the production site dies with most of the writes still cached
    fail_over(b)
    assert b.json("lsmp", "-m", "PoolB", "datavg")["pools"][0]["async"]["state"] == "inactive"
    image = tmp_path / "at-b.bin"
    run("nbdcopy", b.nbd_uri("datafslv"), str(image))
    data = image.read_bytes()
    held = [data[i * 65536:(i + 1) * 65536] for i in range(n)]
    k = next((i for i, blk in enumerate(held) if blk != bytes([i + 1]) * 65536), n)
    assert 2 <= k < n, f"expected the failover mid-stream, B holds {k} of {n} writes"
    assert all(blk == bytes(65536) for blk in held[k:]), \
        f"B holds a write after write {k + 1} that it misses: not a prefix"
    print(f"B holds the first {k} of {n} writes")


def test_ext4_at_the_remote_site_is_clean_after_a_failover_mid_stream(geo, mounts, tmp_path):
    """ext4 on the asynchronous LV at A, files written and fsync'd one after the other while
    the remote copy lags; A killed with writes still cached. At B the filesystem is an
    earlier crash-consistent state: fsck -f is clean after the journal replay, the files it
    has are whole, and they are the first ones written."""
    a, b = geo.a, geo.b
    files = {f"f{i:02}.bin": os.urandom(40_000 + 997 * i) for i in range(24)}
    with async_link(a, b, tmp_path) as proxy:
        dev_a, mnt_a = mounts.mount(a, "datafslv", "mnt_a")
        run("mkfs.ext4", "-q", dev_a)
        run("mount", dev_a, str(mnt_a))
        wait_until(lambda: pool_b(a)["cache_empty"], 60, "the new filesystem to reach B")
        proxy.set(latency_ms=20, bandwidth_bps=512 << 10)
        for name, data in files.items():
            with open(mnt_a / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        assert pool_b(a)["pending_writes"] > 0, "expected the remote copy to lag"
        a.kill()
    subprocess.run(["umount", "-l", str(mnt_a)], capture_output=True)
    fail_over(b)
    dev_b, mnt_b = mounts.mount(b, "datafslv", "mnt_b")
    r = subprocess.run(["e2fsck", "-f", "-y", dev_b], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1: the journal was replayed
    r = subprocess.run(["e2fsck", "-f", "-n", dev_b], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    run("mount", dev_b, str(mnt_b))
    whole = []
    for name, data in files.items():
        path = mnt_b / name
        if path.exists():
            got = path.read_bytes()
            assert got in (data, b""), f"{name} at B is neither whole nor empty"
            if got:
                whole.append(name)
    run("umount", str(mnt_b))
    assert whole == list(files)[:len(whole)], f"not the first files written: {whole}"
    print(f"B has the first {len(whole)} of {len(files)} fsync'd files")


def test_failback_discards_what_never_reached_the_other_site(geo, tmp_path):
    """A dies with writes cached; B takes over and writes; at failback A's cached writes are
    discarded (LVM_AIO_DISCARD) and A's copy is resynchronized from B, never merged."""
    a, b = geo.a, geo.b
    with async_link(a, b, tmp_path) as proxy:
        qemu_io(a.nbd_uri("datafslv"), "write -P 7 0 1M", "flush")  # reaches B
        wait_until(lambda: pool_b(a)["cache_empty"], 30, "the first write to reach B")
        proxy.set(mode="blackhole")
        qemu_io(a.nbd_uri("datafslv"), "write -P 9 0 512k", "write -P 9 2M 256k", "flush")
        assert pool_b(a)["pending_writes"] == 2
        a.kill()
        # failover: B runs the VG and writes elsewhere
        fail_over(b)
        b.ctl("chvg", "-a", "n", "-Q", "n", "datavg")
        qemu_io(b.nbd_uri("datafslv"), "write -P 11 3M 64k", "flush")
        # failback, the seed's way
        b_lets_go(b)
        proxy.set(mode="pass")
        a.start()
        a_takes_back(a)
        a.ctl("syncvg", "-v", "datavg")
        assert a.json("lsvg", "datavg")["stale_pps"] == 0
        assert "LVM_AIO_DISCARD" in [e["label"] for e in a.json("errpt")]
        detail = a.ctl("errpt", "-a", "-j", next(e["identifier"] for e in a.json("errpt")
                                                  if e["label"] == "LVM_AIO_DISCARD"))
        assert "2 writes (786432 bytes) never reached site Poughkeepsie" in detail
        assert copies_equal(geo, "datafslv") == []
        image = tmp_path / "at-a.bin"
        run("nbdcopy", a.nbd_uri("datafslv"), str(image))
        data = image.read_bytes()
        assert data[:1 << 20] == bytes([7]) * (1 << 20)  # B's view: A's 9s are gone
        assert data[2 << 20:(2 << 20) + 262144] == bytes(262144)
        assert data[3 << 20:(3 << 20) + 65536] == bytes([11]) * 65536
        assert pool_b(a)["state"] == "active" and pool_b(a)["cache_empty"]


def test_high_water_mark_then_back_to_synchronous(geo, tmp_path):
    """A slow link: writes beyond the high-water mark wait for the sender, none is dropped
    or made stale; chmp -S drains the cache and mirrors synchronously again; with the link
    down a switch is refused unless -f, which makes the cached writes stale partitions."""
    a, b = geo.a, geo.b
    with async_link(a, b, tmp_path) as proxy:
        a.ctl("chmp", "-h", "10", "-m", "PoolB", "datavg")  # about 800 KiB of the cache
        proxy.set(bandwidth_bps=1 << 20)
        qemu_io(a.nbd_uri("datafslv"), *writes(48), "flush")  # 3 MiB over 1 MiB/s
        state = pool_b(a)
        assert state["hwm"] == 10 and state["hwm_hits"] >= 1 and state["waits"] >= 1, state
        assert state["state"] == "active" and a.json("lsvg", "datavg")["stale_pps"] == 0
        wait_until(lambda: pool_b(a)["cache_empty"], 30, "the cache to drain")
        assert copies_equal(geo, "datafslv") == []

        proxy.set(bandwidth_bps=0, latency_ms=50)
        qemu_io(a.nbd_uri("datafslv"), *writes(16, base=8 << 20))
        assert "sync" in a.ctl("chmp", "-S", "-m", "PoolB", "datavg")  # drains first
        assert [p["mode"] for p in a.json("lsmp", "datavg")["pools"]] == ["sync", "sync"]
        assert copies_equal(geo, "datafslv") == []

        a.ctl("chmp", "-A", "-c", "aiocache", "-m", "PoolB", "datavg")
        proxy.set(mode="blackhole")
        qemu_io(a.nbd_uri("datafslv"), *writes(4, base=12 << 20), "flush")
        assert "-f" in a.fails("chmp", "-S", "-m", "PoolB", "datavg")
        assert pool_b(a)["state"] == "active" and pool_b(a)["pending_writes"] == 4
        a.ctl("chmp", "-S", "-f", "-m", "PoolB", "datavg")
        assert a.json("lsvg", "datavg")["stale_pps"] > 0  # the cached writes, now stale
        proxy.set(mode="pass", latency_ms=0)
        for d in RPV_CLIENTS:
            a.ctl("chdev", "-l", d, "-a", "resume=yes")
        a.ctl("varyonvg", "datavg")
        a.ctl("syncvg", "-v", "datavg")
        assert a.json("lsvg", "datavg")["stale_pps"] == 0
        assert copies_equal(geo, "datafslv") == []
