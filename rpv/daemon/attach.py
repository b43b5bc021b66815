"""``glvmctl attach LV`` / ``detach LV|DEVICE``: a local block device for a logical volume, so
that an administrator can ``mkfs``, ``fsck`` and ``mount`` it.

Where the kernel has the ``nbd`` module (``/dev/nbd0`` exists) and ``nbd-client`` is installed,
``nbd-client`` connects a free ``/dev/nbdN`` to the LV over rpvd's NBD unix socket. Otherwise
``nbdfuse`` exposes the LV as a file on a private FUSE mount in the state directory and a loop
device is set up on that file (``losetup``). Either way the device is an NBD client of rpvd:
while it exists the LV is open, so varyoffvg and rmlv refuse (see lvm/manager.py), and
nothing is ever attached at daemon start (fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass

import structlog

from rpv.errors import CommandError

log = structlog.get_logger("attach")

READY_TIMEOUT = 20.0  # seconds for nbdfuse to mount, or a helper command to finish


@dataclass
class Attached:
    lv: str
    device: str
    via: str  # "nbd-client" or "nbdfuse+loop"
    fuse_dir: str = ""
    proc: asyncio.subprocess.Process | None = None

    def as_dict(self) -> dict:
        return {"lv": self.lv, "device": self.device, "via": self.via}


async def _run(*cmd: str) -> str:
    """Run a helper command; its stdout, or CommandError with its stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE,
                                                    stdin=asyncio.subprocess.DEVNULL)
    except OSError as e:
        raise CommandError(f"cannot run {cmd[0]}: {e.strerror or e}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), READY_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(f"{cmd[0]} did not finish within {READY_TIMEOUT:g} s") from None
    if proc.returncode:
        msg = (err or out).decode(errors="replace").strip().splitlines()
        raise CommandError(f"{' '.join(cmd[:2])} failed: {msg[-1] if msg else proc.returncode}")
    return out.decode().strip()


def mounted(device: str) -> str | None:
    """Where ``device`` is mounted, if it is."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == device:
                return fields[1]
    return None


def _left_mounted(path: str) -> bool:
    """A FUSE mount still at ``path`` (its nbdfuse may be gone: stat fails with ENOTCONN)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return os.path.ismount(path)


def _free_nbd_device() -> str | None:
    for n in range(64):
        if os.path.exists(f"/dev/nbd{n}") and not os.path.exists(f"/sys/block/nbd{n}/pid"):
            return f"/dev/nbd{n}"
    return None


class Attachments:
    def __init__(self, state_dir: str, nbd_socket: str):
        self.root = os.path.join(state_dir, "attach")
        self.nbd_socket = nbd_socket
        self.items: dict[str, Attached] = {}
        self._lock = asyncio.Lock()

    def list(self) -> list[dict]:
        return [a.as_dict() for a in self.items.values()]

    def _uri(self, lv: str) -> str:
        return f"nbd+unix:///{lv}?socket={self.nbd_socket}"

    async def attach(self, lv: str) -> dict:
        async with self._lock:
            if lv in self.items:
                raise CommandError(f"{lv} is already attached as {self.items[lv].device}")
            nbd = _free_nbd_device() if shutil.which("nbd-client") else None
            if nbd is not None:
                await _run("nbd-client", "-unix", self.nbd_socket, "-N", lv, nbd)
                item = Attached(lv, nbd, "nbd-client")
            else:
                item = await self._attach_fuse(lv)
            self.items[lv] = item
            log.info("lv_attached", lv=lv, device=item.device, via=item.via)
            return item.as_dict()

    async def _attach_fuse(self, lv: str) -> Attached:
        for tool in ("nbdfuse", "losetup", "fusermount3"):
            if shutil.which(tool) is None:
                raise CommandError(f"attach needs {tool} (bash .ci/deps.sh installs it)")
        directory = os.path.join(self.root, lv)
        if _left_mounted(directory):
            # left by an rpvd that died with the LV attached: its nbdfuse lost the server
            log.warning("lv_stale_attach_removed", lv=lv, path=directory)
            with contextlib.suppress(CommandError):
                await _run("fusermount3", "-uz", directory)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        pidfile = os.path.join(self.root, f"{lv}.pid")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        proc = await asyncio.create_subprocess_exec(
            "nbdfuse", "-P", pidfile, os.path.join(directory, "lv"), self._uri(lv),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        item = Attached(lv, "", "nbdfuse+loop", directory, proc)
        try:
            await self._fuse_ready(item, pidfile)
            item.device = await _run("losetup", "--find", "--show",
                                     os.path.join(directory, "lv"))
        except BaseException:
            await self._unfuse(item)
            raise
        return item

    async def _fuse_ready(self, item: Attached, pidfile: str) -> None:
        """nbdfuse writes its pid file once the file is served; a bounded wait for it (or
        for nbdfuse to fail)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while not os.path.exists(pidfile) or not os.path.getsize(pidfile):
            if item.proc.returncode is not None:
                err = (await item.proc.stderr.read()).decode(errors="replace").strip()
                raise CommandError(f"nbdfuse failed: {err.splitlines()[-1] if err else ''}")
            if loop.time() > deadline:
                raise CommandError(f"nbdfuse did not mount within {READY_TIMEOUT:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(item.proc.wait()), 0.05)

    async def _unfuse(self, item: Attached) -> None:
        with contextlib.suppress(CommandError):
            await _run("fusermount3", "-u", item.fuse_dir)
        if item.proc is not None and item.proc.returncode is None:
            try:
                await asyncio.wait_for(item.proc.wait(), READY_TIMEOUT)
            except TimeoutError:
                item.proc.kill()
                await item.proc.wait()
        with contextlib.suppress(OSError):
            os.rmdir(item.fuse_dir)

    def find(self, target: str) -> Attached:
        item = self.items.get(target) or next(
            (a for a in self.items.values() if a.device == target), None)
        if item is None:
            raise CommandError(f"{target} is not attached (see glvmctl attach)")
        return item

    async def detach(self, target: str) -> dict:
        async with self._lock:
            item = self.find(target)
            where = mounted(item.device)
            if where is not None:
                raise CommandError(f"{item.device} ({item.lv}) is mounted on {where}; "
                                   f"umount it first")
            if item.via == "nbd-client":
                await _run("nbd-client", "-d", item.device)
            else:
                await _run("losetup", "-d", item.device)
                await self._unfuse(item)
            del self.items[item.lv]
            log.info("lv_detached", lv=item.lv, device=item.device)
            return item.as_dict()

    async def close(self) -> None:
        """At daemon stop: detach what is not mounted; a mounted one is logged (its I/O fails
        until rpvd is back and it is attached again)."""
        for lv in list(self.items):
            try:
                await self.detach(lv)
            except CommandError as e:
                log.warning("lv_left_attached", lv=lv, reason=str(e))
