"""A FUSE passthrough filesystem that loses unsynced data on command, to emulate a power loss.

Written file data stays in memory (4 KiB pages per file, shared by all handles of the file)
until fsync/fdatasync writes that file's pages to the backing directory; ``crash`` drops every
page not yet written back, as a host power loss drops the page cache. Metadata (create, mkdir,
unlink, rename, truncate, and the size of a file extended by a write) reaches the backing
directory at once. Files are opened ``direct_io`` and attributes are not cached, so the kernel
above FUSE cannot serve data the crash dropped.

Run in the foreground::

    python -m tests.lazyfs BACKING_DIR MOUNTPOINT [--ready-fd N] [--max-dirty BYTES]

The control file ``MOUNTPOINT/.lazyfs`` takes ``crash`` or ``sync`` written to it, and
``fail /NAME`` / ``heal /NAME`` (writes and syncs of that file fail with EIO until healed: a
disk that died, below the product), and reads back one line of JSON stats. :class:`LazyFS`
drives all of this from a test.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes.util
import errno
import importlib.util
import json
import os
import re
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path

PAGE = 4096
CONTROL = "/.lazyfs"
MAX_WRITE = 1 << 20
RUN_PAGES = MAX_WRITE // PAGE  # pages per pwritev (IOV_MAX is 1024)
BATCH_PAGES = 4 * RUN_PAGES  # pages written back per hold of the mutex
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MOUNT_TIMEOUT = 20.0
UNMOUNT_TIMEOUT = 20.0


# -- the filesystem ---------------------------------------------------------------------------

class _File:
    """One backing inode: an fd to it, its dirty pages, and how many handles use it."""

    __slots__ = ("key", "fd", "pages", "handles")

    def __init__(self, key: tuple[int, int], fd: int):
        self.key = key
        self.fd = fd
        self.pages: dict[int, bytearray] = {}
        self.handles = 0


class _Control:
    """A handle on the control file; reads see the stats as they were at open."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: bytes):
        self.snapshot = snapshot


class LazyOps:
    """mfusepy operations (``raw_fi=True``): a passthrough to ``backing`` with lazy file data.

    mfusepy registers every attribute named like a FUSE operation, so no attribute may be
    called ``lock``, ``flock``, ``access``...: locks are left to the kernel, which keeps
    flock() and fcntl() locks locally when the filesystem does not implement them.
    """

    use_ns = True

    def __init__(self, backing: str, ready_fd: int | None = None, max_dirty: int = 0):
        self.backing = os.path.realpath(backing)
        self.ready_fd = ready_fd
        self.max_dirty = max_dirty
        self.mutex = threading.Lock()
        self.files: dict[tuple[int, int], _File] = {}
        self.handles: dict[int, _File | _Control] = {}
        self.next_fh = 1
        self.order: OrderedDict[tuple[_File, int], None] = OrderedDict()  # oldest-dirtied first
        self.crashes = 0
        self.syncs = 0
        self.failing: set[str] = set()  # paths whose writes and syncs fail (``fail``)

    # -- helpers (call with the mutex held) -------------------------------------------------
    def _real(self, path: str) -> str:
        return self.backing + path

    def _file(self, fd: int) -> _File:
        """The shared state of the inode behind a freshly opened ``fd`` (which it may keep)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        f = self.files.get(key)
        if f is None:
            f = self.files[key] = _File(key, fd)
        else:
            os.close(fd)
        f.handles += 1
        return f

    def _forget_if_idle(self, f: _File) -> None:
        if f.handles == 0 and not f.pages and self.files.get(f.key) is f:
            del self.files[f.key]
            os.close(f.fd)

    def _drop_pages(self, f: _File, pred=lambda idx: True) -> None:
        for idx in [i for i in f.pages if pred(i)]:
            del f.pages[idx]
            self.order.pop((f, idx), None)

    def _write_back(self, f: _File, idxs) -> None:
        """Write the given dirty pages of ``f`` (clipped to the file size) and mark them clean:
        one pwritev per run of up to 1 MiB of consecutive pages."""
        size = os.fstat(f.fd).st_size
        idxs = sorted(idxs)
        i = 0
        while i < len(idxs):
            j = i + 1
            while j < len(idxs) and idxs[j] == idxs[j - 1] + 1 and j - i < RUN_PAGES:
                j += 1
            start = idxs[i] * PAGE
            bufs = []
            for idx in idxs[i:j]:
                bufs.append(memoryview(f.pages.pop(idx)))
                self.order.pop((f, idx), None)
            keep = min(len(bufs) * PAGE, max(0, size - start))
            bufs = bufs[:keep // PAGE] + ([bufs[keep // PAGE][:keep % PAGE]] if keep % PAGE else [])
            done = os.pwritev(f.fd, bufs, start) if bufs else 0
            if done < keep:  # short write: the rest one call at a time
                rest = b"".join(bufs)
                while done < keep:
                    done += os.pwrite(f.fd, rest[done:], start + done)
            i = j

    def _flush_file(self, f: _File) -> int | None:
        """Write back the pages ``f`` has now, 4 MiB per hold of the mutex so other I/O goes on
        meanwhile; return a dup of its fd for the caller to sync, None if ``f`` is gone."""
        with self.mutex:
            todo = sorted(f.pages)
        for i in range(0, len(todo), BATCH_PAGES):
            with self.mutex:
                if self.files.get(f.key) is not f:
                    return None
                self._write_back(f, [idx for idx in todo[i:i + BATCH_PAGES] if idx in f.pages])
        with self.mutex:
            return os.dup(f.fd) if self.files.get(f.key) is f else None

    def _key_of(self, path: str) -> tuple[int, int] | None:
        try:
            st = os.lstat(self._real(path))
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def _discard_unlinked(self, path: str) -> None:
        """``path`` loses its name: forget its dirty data unless a handle still uses it."""
        f = self.files.get(self._key_of(path))
        if f is not None and f.handles == 0:
            self._drop_pages(f)
            self._forget_if_idle(f)

    def _stats(self) -> bytes:
        return (json.dumps({"dirty_bytes": len(self.order) * PAGE,
                            "files": sum(1 for f in self.files.values() if f.pages),
                            "crashes": self.crashes, "syncs": self.syncs}) + "\n").encode()

    def _new_handle(self, fi, obj) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = obj
        fi.fh = fh
        fi.direct_io = 1
        fi.keep_cache = 0
        return 0

    # -- whole-filesystem actions ------------------------------------------------------------
    def crash(self) -> None:
        with self.mutex:
            self.crashes += 1
            for f in list(self.files.values()):
                self._drop_pages(f)
                self._forget_if_idle(f)

    def sync(self, count: bool = True) -> None:
        with self.mutex:
            self.syncs += count
            files = list(self.files.values())
        for f in files:
            fd = self._flush_file(f)
            if fd is not None:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            with self.mutex:
                self._forget_if_idle(f)

    # -- lifecycle ----------------------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        if config is not None:  # nothing cached in the kernel: every stat and lookup asks us
            config.entry_timeout = config.negative_timeout = config.attr_timeout = 0.0
            config.direct_io = 1
            config.kernel_cache = config.auto_cache = 0
        if conn is not None:
            conn.max_write = MAX_WRITE
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"READY\n")
            os.close(self.ready_fd)
            self.ready_fd = None

    def destroy(self, path) -> None:
        """A clean unmount writes everything back, as a clean shutdown does."""
        self.sync(count=False)

    # -- metadata -----------------------------------------------------------------------------
    def getattr(self, path: str, fh=None) -> dict:
        if path == CONTROL:
            now = time.time_ns()
            return {"st_mode": stat.S_IFREG | 0o600, "st_nlink": 1, "st_size": 0,
                    "st_uid": os.getuid(), "st_gid": os.getgid(),
                    "st_atime": now, "st_mtime": now, "st_ctime": now}
        st = os.lstat(self._real(path))
        return {"st_mode": st.st_mode, "st_nlink": st.st_nlink, "st_size": st.st_size,
                "st_uid": st.st_uid, "st_gid": st.st_gid, "st_blocks": st.st_blocks,
                "st_blksize": st.st_blksize, "st_atime": st.st_atime_ns,
                "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, fh) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def statfs(self, path: str) -> dict:
        sv = os.statvfs(self.backing)
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                             "f_bavail", "f_files", "f_ffree", "f_favail",
                                             "f_namemax")}

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def unlink(self, path: str) -> int:
        if path == CONTROL:
            raise OSError(errno.EPERM, "the control file stays")
        with self.mutex:
            self._discard_unlinked(path)
            os.unlink(self._real(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        if CONTROL in (old, new):
            raise OSError(errno.EPERM, "the control file stays")
        with self.mutex:
            if self._key_of(new) not in (None, self._key_of(old)):
                self._discard_unlinked(new)
            os.rename(self._real(old), self._real(new))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        if path != CONTROL:
            os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        if path != CONTROL:
            os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times=None) -> int:
        if path == CONTROL:
            return 0
        real = self._real(path)
        if times is None:
            os.utime(real)
            return 0
        st = os.lstat(real)
        now = time.time_ns()
        atime, mtime = (now if t == UTIME_NOW else old if t == UTIME_OMIT else t
                        for t, old in zip(times, (st.st_atime_ns, st.st_mtime_ns), strict=True))
        os.utime(real, ns=(atime, mtime))
        return 0

    def truncate(self, path: str, length: int, fh=None) -> int:
        if path == CONTROL:
            return 0  # open(..., "w") truncates first
        with self.mutex:
            f = self.files.get(self._key_of(path))
            if f is not None:
                self._drop_pages(f, lambda idx: idx * PAGE >= length)
                tail = f.pages.get(length // PAGE)
                if tail is not None:  # bytes past the new end read as zeros if it grows again
                    cut = length % PAGE
                    tail[cut:] = bytes(PAGE - cut)
                os.ftruncate(f.fd, length)
            else:
                os.truncate(self._real(path), length)
        return 0

    # -- open files ---------------------------------------------------------------------------
    def _open_backing(self, path: str, extra: int = 0, mode: int = 0o600) -> int:
        try:
            return os.open(self._real(path), os.O_RDWR | os.O_CLOEXEC | extra, mode)
        except PermissionError:
            if extra & os.O_CREAT:
                raise
            return os.open(self._real(path), os.O_RDONLY | os.O_CLOEXEC)

    def open(self, path: str, fi) -> int:
        with self.mutex:
            if path == CONTROL:
                return self._new_handle(fi, _Control(self._stats()))
            return self._new_handle(fi, self._file(self._open_backing(path)))

    def create(self, path: str, mode: int, fi) -> int:
        if path == CONTROL:
            raise OSError(errno.EEXIST, "the control file exists")
        with self.mutex:
            fd = self._open_backing(path, os.O_CREAT | (fi.flags & os.O_EXCL), mode)
            return self._new_handle(fi, self._file(fd))

    def read(self, path: str, size: int, offset: int, fi) -> bytes:
        with self.mutex:
            h = self.handles[fi.fh]
            if isinstance(h, _Control):
                return h.snapshot[offset:offset + size]
            end = min(offset + size, os.fstat(h.fd).st_size)
            if end <= offset:
                return b""
            n = end - offset
            data = os.pread(h.fd, n, offset)
            if not h.pages:
                return data if len(data) == n else data + bytes(n - len(data))
            buf = bytearray(data)
            buf.extend(bytes(n - len(buf)))
            for idx in range(offset // PAGE, (end - 1) // PAGE + 1):
                page = h.pages.get(idx)
                if page is not None:
                    a, b = max(offset, idx * PAGE), min(end, idx * PAGE + PAGE)
                    buf[a - offset:b - offset] = page[a - idx * PAGE:b - idx * PAGE]
            return bytes(buf)

    def write(self, path: str, data: bytes, offset: int, fi) -> int:
        if isinstance(self.handles[fi.fh], _Control):
            return self._command(data)
        if path in self.failing:
            raise OSError(errno.EIO, f"{path}: injected disk failure")
        with self.mutex:
            h = self.handles[fi.fh]
            end = offset + len(data)
            view = memoryview(data)
            for idx in range(offset // PAGE, (end - 1) // PAGE + 1):
                start = idx * PAGE
                a, b = max(offset, start), min(end, start + PAGE)
                page = h.pages.get(idx)
                if page is None:
                    if b - a == PAGE:
                        page = bytearray(view[a - offset:b - offset])
                    else:  # a partial page starts from what the file holds
                        page = bytearray(os.pread(h.fd, PAGE, start))
                        page.extend(bytes(PAGE - len(page)))
                        page[a - start:b - start] = view[a - offset:b - offset]
                    h.pages[idx] = page
                    self.order[(h, idx)] = None
                else:
                    page[a - start:b - start] = view[a - offset:b - offset]
            if end > os.fstat(h.fd).st_size:  # the size is metadata: durable at once
                os.ftruncate(h.fd, end)
            while self.max_dirty and len(self.order) * PAGE > self.max_dirty:
                f, idx = next(iter(self.order))  # like kernel writeback: oldest first
                self._write_back(f, [idx])
                self._forget_if_idle(f)
            return len(data)

    def _command(self, data: bytes) -> int:
        word = data.decode(errors="replace").strip()
        verb, _, arg = word.partition(" ")
        if word == "crash":
            self.crash()
        elif word == "sync":
            self.sync()
        elif verb == "fail" and arg.startswith("/"):
            self.failing.add(arg)
        elif verb == "heal" and arg.startswith("/"):
            self.failing.discard(arg)
        else:
            raise OSError(errno.EINVAL, f"unknown command {word!r}")
        return len(data)

    def fsync(self, path: str, datasync: int, fi) -> int:
        h = self.handles[fi.fh]
        if isinstance(h, _Control):
            return 0
        if path in self.failing:
            raise OSError(errno.EIO, f"{path}: injected disk failure")
        fd = self._flush_file(h)  # an open handle keeps h (and its fd) alive
        try:  # outside the mutex: other I/O goes on while the backing store syncs
            (os.fdatasync if datasync else os.fsync)(fd)
        finally:
            os.close(fd)
        return 0

    def flush(self, path: str, fi) -> int:
        return 0  # close() makes nothing durable

    def release(self, path: str, fi) -> int:
        with self.mutex:
            h = self.handles.pop(fi.fh, None)
            if isinstance(h, _File):
                h.handles -= 1
                self._forget_if_idle(h)
        return 0


def _watch_lifeline(fd: int, mountpoint: str) -> None:
    """When the parent test process is gone, unmount (lazily) so no mount is left behind."""
    while True:
        try:
            if not os.read(fd, 64):
                break
        except InterruptedError:
            continue
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lazyfs",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("backing", help="directory that holds the durable data")
    ap.add_argument("mountpoint")
    ap.add_argument("--ready-fd", type=int, default=None,
                    help="write READY\\n to this fd once the mount is usable")
    ap.add_argument("--max-dirty", type=int, default=0,
                    help="write back the oldest dirty pages beyond this many bytes (0: no bound)")
    ap.add_argument("--lifeline-fd", type=int, default=None,
                    help="unmount when this pipe reaches EOF (the parent is gone)")
    ap.add_argument("--debug", action="store_true", help="libfuse debug output on stderr")
    args = ap.parse_args(argv)
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy would take libfuse2 first
    import mfusepy

    if mfusepy.fuse_version_major != 3:
        ap.error(f"libfuse 3 is required, found {mfusepy.fuse_version_major}."
                 f"{mfusepy.fuse_version_minor}")
    if args.lifeline_fd is not None:
        threading.Thread(target=_watch_lifeline, args=(args.lifeline_fd, args.mountpoint),
                         daemon=True).start()
    ops = LazyOps(args.backing, args.ready_fd, args.max_dirty)
    try:
        mfusepy.FUSE(ops, args.mountpoint, raw_fi=True, foreground=True, debug=args.debug,
                     fsname="lazyfs", subtype="lazyfs", auto_unmount=True)
    except RuntimeError as e:  # libfuse's status: also how a SIGTERM'd loop ends
        print(f"lazyfs: libfuse exited with status {e}", file=sys.stderr)
        return 1
    return 0


# -- the test API -----------------------------------------------------------------------------

def missing_requirements() -> list[str]:
    """What this machine lacks to mount a LazyFS (empty when nothing is missing)."""
    missing = []
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse (the fuse kernel module)")
    if not shutil.which("fusermount3"):
        missing.append("fusermount3 (Debian package fuse3)")
    if not shutil.which("umount"):
        missing.append("umount (Debian package mount)")
    if not ctypes.util.find_library("fuse3"):
        missing.append("libfuse3 (Debian package libfuse3-3)")
    if importlib.util.find_spec("mfusepy") is None:
        missing.append("the Python package mfusepy (pip install -e '.[test]')")
    return missing


def is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is a mount point now (from mountinfo: works on a dead FUSE)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            field = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
            if field == target:
                return True
    return False


_mounted: weakref.WeakSet[LazyFS] = weakref.WeakSet()


@atexit.register
def _unmount_leftovers() -> None:
    for fs in list(_mounted):
        with contextlib.suppress(Exception):
            fs.unmount()


class LazyFS:
    """A LazyFS process mounted at ``mountpoint`` over ``backing``, driven from a test.

    ``mount()`` returns once the mount is usable; ``crash()`` drops unsynced data, ``sync()``
    writes it back, ``stats()`` reads the counters, ``unmount()`` (also at context exit and
    at interpreter exit) removes the mount and waits for the process.
    """

    def __init__(self, backing: Path, mountpoint: Path, max_dirty: int = 0):
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.max_dirty = max_dirty
        self.proc: subprocess.Popen | None = None
        self._stderr = None
        self._lifeline: int | None = None

    @property
    def control(self) -> Path:
        return self.mountpoint / CONTROL.lstrip("/")

    def __enter__(self) -> LazyFS:
        self.mount()
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()

    def mount(self) -> None:
        assert self.proc is None, "already mounted"
        missing = missing_requirements()
        if missing:
            raise AssertionError("LazyFS cannot mount, this machine lacks: " + ", ".join(missing))
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._stderr = tempfile.TemporaryFile()  # not a pipe: fusermount3 inherits it
        rfd, wfd = os.pipe()
        life_r, self._lifeline = os.pipe()
        try:
            cmd = [sys.executable, "-m", "tests.lazyfs", str(self.backing.resolve()),
                   str(self.mountpoint.resolve()), "--ready-fd", str(wfd),
                   "--lifeline-fd", str(life_r)]
            if self.max_dirty:
                cmd += ["--max-dirty", str(self.max_dirty)]
            self.proc = subprocess.Popen(cmd, pass_fds=(wfd, life_r), stdin=subprocess.DEVNULL,
                                         stdout=self._stderr, stderr=self._stderr,
                                         cwd=Path(__file__).resolve().parent.parent)
        finally:
            os.close(wfd)
            os.close(life_r)
        _mounted.add(self)
        try:
            poller = select.poll()
            poller.register(rfd, select.POLLIN)
            line = os.read(rfd, 64) if poller.poll(MOUNT_TIMEOUT * 1000) else b""
        finally:
            os.close(rfd)
        if line != b"READY\n":
            err = self.stderr_text()
            self.unmount()
            raise RuntimeError(f"LazyFS at {self.mountpoint} did not become ready "
                               f"within {MOUNT_TIMEOUT:g} s:\n{err[-3000:]}")

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    @property
    def mounted(self) -> bool:
        return self.proc is not None

    def _control(self, word: str) -> None:
        assert self.proc is not None, "not mounted"
        fd = os.open(self.control, os.O_WRONLY)
        try:
            os.write(fd, word.encode() + b"\n")
        finally:
            os.close(fd)

    def crash(self) -> None:
        """Drop every page not yet written back (returns once they are gone)."""
        self._control("crash")

    def sync(self) -> None:
        """Write every dirty page back and fsync the backing files."""
        self._control("sync")

    def fail(self, name: str) -> None:
        """From now on writes and syncs of ``name`` (a path inside the mount) fail with
        EIO, through descriptors already open too, until :meth:`heal`."""
        self._control(f"fail /{name.lstrip('/')}")

    def heal(self, name: str) -> None:
        self._control(f"heal /{name.lstrip('/')}")

    def stats(self) -> dict:
        assert self.proc is not None, "not mounted"
        return json.loads(self.control.read_bytes())

    def unmount(self) -> None:
        """Unmount (dirty data is written back if the process is alive) and reap the process.

        ``fusermount3 -u``; if that fails (a file is still open), a lazy ``umount -l`` and
        SIGTERM, so the process ends now and the open files see ENOTCONN; a process that
        still does not exit is killed, and a mount a dead process left behind is detached.
        """
        proc, self.proc = self.proc, None
        _mounted.discard(self)
        if proc is None:
            return
        mnt = str(self.mountpoint)
        try:
            if proc.poll() is None:
                r = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, timeout=30)
                if r.returncode != 0:
                    subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
                    proc.terminate()  # libfuse leaves its loop; destroy() still writes back
                try:
                    proc.wait(UNMOUNT_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if is_mounted(self.mountpoint):
                subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
        finally:
            if self._lifeline is not None:
                os.close(self._lifeline)
                self._lifeline = None
        if is_mounted(self.mountpoint):
            raise RuntimeError(f"{mnt} is still mounted after unmount:\n"
                               + self.stderr_text()[-3000:])


if __name__ == "__main__":
    sys.exit(main())
