"""LazyFS (tests/lazyfs.py) on a real FUSE mount: unsynced data is lost on crash, synced data
is not, and a daemon on it cannot tell it is there; Site.power_loss() on a real rpvd."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests import lazyfs as lazyfs_mod
from tests.conftest import TEST_PORT
from tests.lazyfs import PAGE, LazyFS, is_mounted, missing_requirements
from tests.sites import Site

MiB = 1 << 20


@pytest.fixture
def fs(tmp_path):
    with LazyFS(tmp_path / "backing", tmp_path / "mnt") as mounted:
        yield mounted
    assert not is_mounted(tmp_path / "mnt")


def _open(fs: LazyFS, name: str, flags: int = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC) -> int:
    return os.open(fs.mountpoint / name, flags, 0o600)


def _durable(fs: LazyFS, name: str, data: bytes) -> None:
    """Put ``data`` in ``name`` through the mount and fsync it."""
    fd = _open(fs, name)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def _backing(fs: LazyFS, name: str) -> bytes:
    return (fs.backing / name).read_bytes()


def test_requirements_present():
    """CI installs fuse3: a machine without it fails here, naming what is missing."""
    assert missing_requirements() == [], \
        "LazyFS tests need: " + ", ".join(missing_requirements())


def test_mount_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(lazyfs_mod.shutil, "which",
                        lambda tool: None if tool == "fusermount3" else "/usr/bin/" + tool)
    with pytest.raises(AssertionError, match=r"fusermount3 \(Debian package fuse3\)"):
        LazyFS(tmp_path / "b", tmp_path / "m").mount()
    assert not is_mounted(tmp_path / "m")


def test_unsynced_write_is_lost_on_crash(fs):
    _durable(fs, "f", b"o" * 10000)
    fd = _open(fs, "f")
    try:
        os.pwrite(fd, b"n" * 3000, 5000)
        os.pwrite(fd, b"x" * 100, 12000)  # past EOF: the size grows at once
        assert os.pread(fd, 10, 4995) == b"ooooonnnnn"
        assert os.fstat(fd).st_size == 12100
        assert _backing(fs, "f") == b"o" * 10000 + bytes(2100)  # data lazy, size not
        fs.crash()
        assert os.pread(fd, 20000, 0) == b"o" * 10000 + bytes(2100)
        assert os.fstat(fd).st_size == 12100
    finally:
        os.close(fd)
    assert (fs.mountpoint / "f").read_bytes() == b"o" * 10000 + bytes(2100)


def test_fdatasync_keeps_data(fs):
    fd = _open(fs, "f")
    try:
        os.pwrite(fd, b"a" * 5000, 100)
        os.fdatasync(fd)
        os.pwrite(fd, b"b" * 10, 0)  # after the sync: lost
        fs.crash()
        assert os.pread(fd, 6000, 0) == bytes(100) + b"a" * 5000
    finally:
        os.close(fd)
    assert _backing(fs, "f") == bytes(100) + b"a" * 5000


def test_failed_file_refuses_writes_and_syncs_until_healed(fs):
    fd = _open(fs, "f")
    try:
        os.pwrite(fd, b"a" * 4096, 0)
        fs.fail("f")  # a descriptor opened before the failure fails too
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"b" * 4096, 0)
        assert exc.value.errno == errno.EIO
        with pytest.raises(OSError):
            os.fdatasync(fd)
        assert os.pread(fd, 4096, 0) == b"a" * 4096  # reads still work
        fs.heal("f")
        os.pwrite(fd, b"c" * 4096, 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert _backing(fs, "f") == b"c" * 4096


def test_fsync_on_one_handle_covers_writes_through_another(fs):
    one, two = _open(fs, "f"), _open(fs, "f", os.O_RDWR)
    try:
        os.pwrite(one, b"1" * 6000, 0)
        os.pwrite(two, b"2" * 100, 8000)
        assert os.pread(two, 6000, 0) == b"1" * 6000  # one page map for both handles
        os.fsync(two)
        os.pwrite(one, b"3" * 10, 0)
        fs.crash()
        assert os.pread(one, 9000, 0) == b"1" * 6000 + bytes(2000) + b"2" * 100
    finally:
        os.close(one)
        os.close(two)


def test_close_is_not_a_sync(fs):
    _durable(fs, "f", b"old!" * 1024)
    fd = _open(fs, "f")
    os.pwrite(fd, b"new!" * 1024, 0)
    os.close(fd)  # flush + release
    assert (fs.mountpoint / "f").read_bytes() == b"new!" * 1024
    assert _backing(fs, "f") == b"old!" * 1024
    fs.crash()
    assert (fs.mountpoint / "f").read_bytes() == b"old!" * 1024


def test_pages_against_a_model(fs):
    """Random partial, overlapping, page-spanning and past-EOF writes, truncates, syncs and
    crashes; reads always match a model of the visible file, crashes fall back to a model of
    the synced one, and the backing file equals it."""
    rng = random.Random(7)
    visible, durable = bytearray(), bytearray()
    fd = _open(fs, "f")
    try:
        for step in range(600):
            op = rng.random()
            if op < 0.55:
                off = rng.randrange(0, 12 * PAGE)
                data = rng.randbytes(rng.choice((1, 7, PAGE - 1, PAGE, PAGE + 1,
                                                 rng.randrange(1, 3 * PAGE))))
                assert os.pwrite(fd, data, off) == len(data)
                if off > len(visible):
                    visible.extend(bytes(off - len(visible)))
                    durable.extend(bytes(off - len(durable)))  # the size is durable
                visible[off:off + len(data)] = data
                durable.extend(bytes(len(visible) - len(durable)))
            elif op < 0.65:
                size = rng.randrange(0, 12 * PAGE)
                os.ftruncate(fd, size)
                for m in (visible, durable):
                    del m[size:]
                    m.extend(bytes(size - len(m)))
            elif op < 0.75:
                (os.fdatasync if rng.random() < 0.5 else os.fsync)(fd)
                durable[:] = visible
            elif op < 0.82:
                fs.crash()
                visible[:] = durable
                assert _backing(fs, "f") == bytes(durable), f"step {step}"
            off, n = rng.randrange(0, 13 * PAGE), rng.randrange(1, 4 * PAGE)
            assert os.pread(fd, n, off) == bytes(visible[off:off + n]), f"step {step}"
            assert os.fstat(fd).st_size == len(visible), f"step {step}"
        assert os.pread(fd, len(visible) + PAGE, 0) == bytes(visible)
    finally:
        os.close(fd)


def test_truncate_drops_dirty_pages_and_zeroes_the_tail(fs):
    fd = _open(fs, "f")
    try:
        os.pwrite(fd, b"z" * (3 * PAGE), 0)
        os.ftruncate(fd, PAGE + 10)
        assert fs.stats()["dirty_bytes"] == 2 * PAGE
        os.ftruncate(fd, 3 * PAGE)
        assert os.pread(fd, 3 * PAGE, 0) == b"z" * (PAGE + 10) + bytes(2 * PAGE - 10)
        os.truncate(fs.mountpoint / "f", 5)  # by path, with the file open
        assert os.fstat(fd).st_size == 5 and os.pread(fd, 100, 0) == b"zzzzz"
        fs.sync()
        assert _backing(fs, "f") == b"zzzzz"
    finally:
        os.close(fd)


def test_flock_is_exclusive_on_the_mount(fs):
    first = _open(fs, "disk.img")
    try:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        second = _open(fs, "disk.img", os.O_RDWR | os.O_CLOEXEC)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(second)
    finally:
        os.close(first)
    again = _open(fs, "disk.img", os.O_RDWR)  # released with the first descriptor
    try:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(again)


def test_sparse_128_mib(fs):
    fd = _open(fs, "sparse.img")
    try:
        os.ftruncate(fd, 128 * MiB)
        assert os.fstat(fd).st_size == 128 * MiB
        assert os.lseek(fd, 0, os.SEEK_END) == 128 * MiB
        assert os.pread(fd, MiB, 77 * MiB) == bytes(MiB)
        os.pwrite(fd, b"end", 128 * MiB - 3)
        assert os.pread(fd, 10, 128 * MiB - 5) == b"\0\0end"
        os.fdatasync(fd)
    finally:
        os.close(fd)
    st = (fs.backing / "sparse.img").stat()
    assert st.st_size == 128 * MiB and st.st_blocks * 512 < MiB


def test_stats_line(fs):
    raw = fs.control.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == {"dirty_bytes": 0, "files": 0, "crashes": 0, "syncs": 0}
    for name in ("a", "b"):
        fd = _open(fs, name)
        os.pwrite(fd, b"q", PAGE - 1)
        os.pwrite(fd, b"q", PAGE)  # two pages
        os.close(fd)
    assert fs.stats() == {"dirty_bytes": 4 * PAGE, "files": 2, "crashes": 0, "syncs": 0}
    fs.sync()
    assert fs.stats() == {"dirty_bytes": 0, "files": 0, "crashes": 0, "syncs": 1}
    assert _backing(fs, "a") == bytes(PAGE - 1) + b"qq"
    fs.crash()
    assert fs.stats() == {"dirty_bytes": 0, "files": 0, "crashes": 1, "syncs": 1}
    assert (fs.mountpoint / "a").read_bytes() == bytes(PAGE - 1) + b"qq"  # synced: kept
    assert ".lazyfs" not in os.listdir(fs.mountpoint)
    assert not (fs.backing / ".lazyfs").exists()
    with pytest.raises(OSError):
        fs._control("explode")


def test_metadata_is_durable_at_once(fs):
    (fs.mountpoint / "d" / "e").mkdir(parents=True)
    _durable(fs, "d/e/keep", b"k")
    fd = _open(fs, "d/e/new")
    os.pwrite(fd, b"lost", 0)
    os.close(fd)
    os.rename(fs.mountpoint / "d/e/new", fs.mountpoint / "d/renamed")
    fd = _open(fs, "gone")
    os.pwrite(fd, b"g" * PAGE, 0)
    os.close(fd)
    os.unlink(fs.mountpoint / "gone")
    assert fs.stats()["files"] == 1  # the unlinked file's pages went with it
    fs.crash()
    assert sorted(os.listdir(fs.mountpoint)) == ["d"]
    assert sorted(os.listdir(fs.mountpoint / "d")) == ["e", "renamed"]
    assert (fs.mountpoint / "d/renamed").read_bytes() == bytes(4)
    assert (fs.mountpoint / "d/e/keep").read_bytes() == b"k"
    os.chmod(fs.mountpoint / "d/e/keep", 0o640)
    os.utime(fs.mountpoint / "d/e/keep", ns=(10**18, 2 * 10**18))
    st = (fs.backing / "d/e/keep").stat()
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 2 * 10**18)
    assert os.statvfs(fs.mountpoint).f_blocks == os.statvfs(fs.backing).f_blocks


def test_kernel_caches_no_attributes_or_names(fs):
    """Sizes and names changed below the mount show at once: nothing stale is cached."""
    _durable(fs, "f", b"x")
    assert os.stat(fs.mountpoint / "f").st_size == 1
    with pytest.raises(FileNotFoundError):
        os.stat(fs.mountpoint / "later")
    os.truncate(fs.backing / "f", 5000)
    (fs.backing / "later").write_bytes(b"hi")
    assert os.stat(fs.mountpoint / "f").st_size == 5000
    assert (fs.mountpoint / "later").read_bytes() == b"hi"


def test_max_dirty_writes_back_oldest_pages(tmp_path):
    with LazyFS(tmp_path / "b", tmp_path / "m", max_dirty=2 * PAGE) as fs:
        fd = _open(fs, "f")
        try:
            for i in range(5):
                os.pwrite(fd, bytes([65 + i]) * PAGE, i * PAGE)
            assert fs.stats()["dirty_bytes"] == 2 * PAGE
            fs.crash()
            assert os.pread(fd, 5 * PAGE, 0) == b"".join(bytes([65 + i]) * PAGE
                                                          for i in range(3)) + bytes(2 * PAGE)
        finally:
            os.close(fd)


def test_clean_unmount_writes_back(tmp_path):
    fs = LazyFS(tmp_path / "b", tmp_path / "m")
    with fs:
        fd = _open(fs, "f")
        os.pwrite(fd, b"kept", 0)
        os.close(fd)
        assert _backing(fs, "f") == bytes(4)
    assert not is_mounted(fs.mountpoint) and fs.proc is None
    assert _backing(fs, "f") == b"kept"
    with fs:  # mounts again
        assert (fs.mountpoint / "f").read_bytes() == b"kept"


def test_unmount_while_a_file_is_open(tmp_path):
    """A busy mount still goes away at once; the process exits cleanly (writing back)."""
    fs = LazyFS(tmp_path / "b", tmp_path / "m")
    fs.mount()
    fd = _open(fs, "f")
    os.pwrite(fd, b"dirty", 0)
    proc = fs.proc
    try:
        fs.unmount()
        assert not is_mounted(fs.mountpoint)
        assert proc.returncode in (0, 1), fs.stderr_text()  # not killed after a timeout
        assert "Traceback" not in fs.stderr_text(), fs.stderr_text()
        assert _backing(fs, "f") == b"dirty"  # destroy() wrote it back
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: the filesystem is gone
            os.close(fd)


def test_a_test_process_that_dies_leaves_no_mount(tmp_path):
    """The LazyFS process watches a pipe from its parent: when the parent dies without
    unmounting (kill -9, os._exit), the mount goes away on its own, data written back."""
    child = ("import os, sys\n"
             "from pathlib import Path\n"
             "from tests.lazyfs import LazyFS\n"
             f"fs = LazyFS(Path({str(tmp_path / 'b')!r}), Path({str(tmp_path / 'm')!r}))\n"
             "fs.mount()\n"
             f"fd = os.open({str(tmp_path / 'm' / 'f')!r}, os.O_RDWR | os.O_CREAT)\n"
             "os.write(fd, b'unsynced')\n"
             "print(fs.proc.pid, flush=True)\n"
             "os._exit(0)\n")
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                       timeout=60, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert r.returncode == 0, r.stderr
        try:
            pidfd = os.pidfd_open(int(r.stdout))
        except ProcessLookupError:
            pidfd = None  # already gone
        if pidfd is not None:
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                assert poller.poll(20_000), "the orphaned LazyFS process did not exit"
            finally:
                os.close(pidfd)
        assert not is_mounted(tmp_path / "m")
    finally:  # if this test fails, it must not be what leaves a mount behind
        if is_mounted(tmp_path / "m"):
            subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "m")], timeout=30)
    assert (tmp_path / "b" / "f").read_bytes() == b"unsynced"


# -- a real daemon on a lazy site ------------------------------------------------------------

@pytest.fixture
def lazy_site(tmp_path):
    site = Site("Poughkeepsie", "127.0.0.2", tmp_path / "b", node="nodeB", port=TEST_PORT,
                lazy=True)
    try:
        site.start()
        site.ctl("rpvserver", "site", site.name)
        yield site
    finally:
        site.close()
        assert not is_mounted(site.root / "disks")


@pytest.mark.integration
def test_site_power_loss_restarts_with_disk_available(lazy_site):
    site = lazy_site
    pvid = site.make_disk("hdisk2", "16M")
    disk = Path(site.disk_path("hdisk2") + ".img")
    assert disk.parent == site.root / "disks" and is_mounted(disk.parent)
    assert os.path.getsize(site.root / "disks.backing" / "hdisk2.img") == 16 * MiB
    assert site.boot_id is None
    site.power_loss()
    assert site.lazyfs.stats()["crashes"] == 1
    assert site.boot_id is not None and site.proc.poll() is None
    first_boot = site.boot_id
    environ = Path(f"/proc/{site.proc.pid}/environ").read_bytes().split(b"\0")
    assert f"GLVM_BOOT_ID={first_boot}".encode() in environ
    assert site.json("lspv", "hdisk2")[0]["pvid"] == pvid
    assert {d["name"]: d["state"] for d in site.json("lsdev", "-C", "-c", "disk")} == \
        {"hdisk2": "Available"}
    site.power_loss(restart=False)
    assert site.proc.poll() is not None and site.boot_id != first_boot
    site.start()
    assert site.json("lspv", "hdisk2")[0]["pvid"] == pvid
