"""Real rpvd processes for tests: start, wait for readiness, run glvmctl against them, stop.

A site's daemon is started with ``--ready-fd`` and the test waits on that pipe, so there is no
polling and no fixed sleep. glvmctl runs as a real subprocess, exactly as an administrator
would run it. Set-up steps a test is not about go through :meth:`Site.rpc` instead: the same
request glvmctl would send (``rpv.control_api`` encoding, ``glvmctl.client`` framing), without
a subprocess (each glvmctl costs about 0.23 s of CPU). ``Site(cli_setup=True)`` makes the
set-up helpers (make_disk, serve, add_client) run glvmctl again, for the tests of the CLI.

A ``Site(lazy=True)`` keeps its disks on a LazyFS (tests/lazyfs.py) mounted at ``root/disks``,
so :meth:`Site.power_loss` can drop the data its daemon wrote but did not sync, as a host power
loss does. ``kill()``, ``stop()`` and ``close()`` unmount it; ``start()`` mounts it again.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from glvmctl.client import ControlError, call
from tests.lazyfs import LazyFS

BIN = Path(sys.executable).parent
RPVD = str(BIN / "rpvd")
GLVMCTL = str(BIN / "glvmctl")
READY_TIMEOUT = 20.0
RPC_TIMEOUT = 120.0  # a set-up request (a mirrorvg's synchronisation included)


class CommandFailed(AssertionError):
    pass


@dataclass
class Site:
    """One site: a state directory, an rpvd process and glvmctl bound to its socket."""

    name: str
    addr: str
    root: Path
    node: str
    port: int = 6192
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)
    lazy: bool = False  # disks on a LazyFS at root/disks, for power_loss()
    boot_id: str | None = None  # given to rpvd as GLVM_BOOT_ID
    lazyfs: LazyFS | None = field(default=None, repr=False)
    cli_setup: bool = False  # the set-up helpers run glvmctl instead of Site.rpc

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def socket(self) -> str:
        return str(self.state_dir / "control.sock")

    @property
    def nbd_socket(self) -> str:
        return str(self.state_dir / "nbd.sock")

    def nbd_uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.nbd_socket}"

    def disk_path(self, name: str) -> str:
        return str(self.root / "disks" / name) if self.lazy else str(self.root / name)

    # -- process control -------------------------------------------------------------------
    def start(self) -> None:
        self._await_ready(self._launch())

    def _launch(self) -> int:
        """Start rpvd; return the read end of its ``--ready-fd`` pipe (see _await_ready)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.lazy and self.lazyfs is None:
            fs = LazyFS(self.root / "disks.backing", self.root / "disks")
            fs.mount()
            self.lazyfs = fs
        env = dict(os.environ, GLVM_BOOT_ID=self.boot_id) if self.boot_id else None
        rfd, wfd = os.pipe()
        log = open(self.root / "rpvd.stderr", "ab")  # noqa: SIM115 — kept for the process
        try:
            self.proc = subprocess.Popen(
                [RPVD, "--state-dir", str(self.state_dir), "--listen", f"{self.addr}:{self.port}",
                 "--node", self.node, "--ready-fd", str(wfd), *self.extra_args],
                pass_fds=(wfd,), stdout=subprocess.DEVNULL, stderr=log, env=env)
        except BaseException:
            os.close(rfd)
            raise
        finally:
            os.close(wfd)
            log.close()
        return rfd

    def _await_ready(self, rfd: int) -> None:
        """Wait for READY on the pipe (and close it); kill the daemon if it does not come."""
        try:
            poller = select.poll()  # not select(): descriptors may be above 1023
            poller.register(rfd, select.POLLIN)
            line = os.read(rfd, 64) if poller.poll(READY_TIMEOUT * 1000) else b""
        finally:
            os.close(rfd)
        if line != b"READY\n":
            self.kill()
            raise RuntimeError(f"rpvd for site {self.name} did not become ready:\n"
                               + self.stderr()[-3000:])

    def stop(self) -> None:
        """SIGTERM the daemon (SIGKILL after 10 s), then unmount a lazy site's disks."""
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.unmount()

    def kill(self) -> None:
        """kill -9 the daemon, then unmount a lazy site's disks (the host stays up: what the
        daemon wrote is written back). Teardown calls this, so it always unmounts."""
        try:
            self._kill9()
        finally:
            self.unmount()

    def close(self) -> None:
        """Teardown: no daemon left running and no mount left behind."""
        self.kill()

    def _kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def unmount(self) -> None:
        """Unmount the LazyFS of a lazy site, if mounted (the next start() mounts it again)."""
        fs, self.lazyfs = self.lazyfs, None
        if fs is not None:
            fs.unmount()

    def power_loss(self, restart: bool = True) -> int:
        """The site's host loses power: kill -9 the daemon, drop the unsynced data of the
        site's disks, take a new boot id and, if ``restart``, start the daemon again.
        Returns how many bytes of unsynced data were dropped."""
        assert self.lazy, f"site {self.name}: power_loss() needs Site(lazy=True)"
        assert self.lazyfs is not None, f"site {self.name}: power_loss() before start()"
        self._kill9()
        dropped = self.lazyfs.stats()["dirty_bytes"]
        self.lazyfs.crash()
        self.boot_id = str(uuid.uuid4())
        if restart:
            self.start()
        return dropped

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stderr(self) -> str:
        p = self.root / "rpvd.stderr"
        return p.read_text(errors="replace") if p.exists() else ""

    def log_events(self) -> list[dict]:
        """The daemon's structured log (state-dir/rpvd.log), parsed."""
        p = self.state_dir / "rpvd.log"
        out = []
        for line in p.read_text().splitlines() if p.exists() else []:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    # -- glvmctl ---------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, GLVM_SOCKET=self.socket)
        return subprocess.run([GLVMCTL, *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run glvmctl; fail the test with its stderr unless it exits 0."""
        r = self.run(*args, timeout=timeout)
        if r.returncode != 0:
            raise CommandFailed(f"glvmctl {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r.stdout

    def fails(self, *args: str) -> str:
        """Run glvmctl expecting refusal: non-zero exit, one line on stderr, no traceback."""
        r = self.run(*args)
        assert r.returncode != 0, f"glvmctl {' '.join(args)} unexpectedly succeeded: {r.stdout}"
        assert "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("glvmctl: "), r.stderr
        return lines[0]

    def json(self, *args: str):
        return json.loads(self.ctl(*args, "--json"))

    # -- the control socket, without glvmctl -----------------------------------------------
    def rpc(self, op: str, **args):
        """Send one control request straight to the daemon (what glvmctl's ``rpc`` sends for
        the same command, through the same ``glvmctl.client.call``) and return its result;
        fail the test if rpvd refuses. For set-up steps a test is not about: the CLI's own
        parsing and output are tested with :meth:`ctl`."""
        try:
            return call(self.socket, op, timeout=RPC_TIMEOUT, **args)
        except ControlError as e:
            raise CommandFailed(f"control request {op} {args} refused: {e}") from None

    # -- common set-up steps ---------------------------------------------------------------
    def _mkdev(self, dev_class: str, dev_type: str, attrs: dict[str, str],
               name: str | None = None) -> str:
        """mkdev -c CLASS -t TYPE -a ... [-l NAME]; return the new device's name."""
        if self.cli_setup:
            out = self.ctl("mkdev", "-c", dev_class, "-t", dev_type,
                           *(a for k, v in attrs.items() for a in ("-a", f"{k}={v}")),
                           *(("-l", name) if name else ()))
            return out.split()[0]
        return self.rpc("mkdev", name=name, dev_class=dev_class, dev_type=dev_type,
                        attrs=attrs, define_only=False)["name"]

    def make_disk(self, name: str, size: str = "64M") -> str:
        """mkdev a file disk; return its PVID."""
        self._mkdev("disk", "file", {"path": f"{self.disk_path(name)}.img", "size": size},
                    name)
        rows = self.json("lspv", name) if self.cli_setup else self.rpc("lspv", name=name)
        return rows[0]["pvid"]

    def serve(self, pvid: str, client_addr: str) -> str:
        return self._mkdev("rpvserver", "rpvstype", {"rpvs_pvid": pvid,
                                                      "client_addr": client_addr,
                                                      "auto_online": "y"})

    def add_client(self, name: str, pvid: str, server: Site, io_timeout: int = 5,
                   server_addr: str | None = None) -> None:
        self._mkdev("disk", "rpvclient", {"pvid": pvid,
                                          "server_addr": server_addr or server.addr,
                                          "local_addr": self.addr,
                                          "io_timeout": str(io_timeout),
                                          "server_port": str(server.port)}, name)


def start_together(*sites: Site) -> None:
    """Start several sites' daemons at once, then wait until each is ready: their start-ups
    overlap (as two hosts booting would) instead of running one after the other."""
    launched: list[tuple[Site, int]] = []
    try:
        for site in sites:
            launched.append((site, site._launch()))
        while launched:
            site, rfd = launched.pop(0)
            site._await_ready(rfd)
    finally:
        for site, rfd in launched:  # after a failure: none left running
            os.close(rfd)
            site.kill()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
