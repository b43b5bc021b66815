"""``rpvd``: the per-site daemon (RPV server and clients, device database, error log, NBD)."""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import ssl
import sys

import structlog
import uvloop

from lvm.gmvg import GMVG
from lvm.manager import LVMManager
from rpv import speedups, tls
from rpv.control_api import API_VERSION, RPV_PROTOCOL_VERSION, package_version
from rpv.daemon import config as cfgmod
from rpv.daemon import logs, metrics
from rpv.daemon.attach import Attachments
from rpv.daemon.control import ControlServer
from rpv.daemon.devdb import DeviceDB
from rpv.daemon.devices import DeviceManager
from rpv.daemon.errlog import ErrorLog
from rpv.errors import CommandError
from rpv.jobs import JobError, Jobs
from rpv.nbd.server import NBDServer
from rpv.server.server import Limits, RPVServer

log = structlog.get_logger("rpvd")

VERSION = package_version()



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="rpvd",
        description="glvm site daemon: serves local disks to remote RPV clients (rpvserverN), "
                    "runs RPV clients for remote disks (hdiskN), keeps the device database and "
                    "error log, exports disks over NBD, and answers glvmctl on a control socket.")
    p.add_argument("--state-dir", help="directory for the device database, error log and "
                                       "rpvd.log (default /var/lib/glvm)")
    p.add_argument("--config", help="TOML configuration file (see conf/)")
    p.add_argument("--listen", help="RPV listen address IP:PORT (default 0.0.0.0:6192)")
    p.add_argument("--socket", help="control socket path (default STATE_DIR/control.sock)")
    p.add_argument("--nbd-socket", help="NBD unix socket path (default STATE_DIR/nbd.sock)")
    p.add_argument("--nbd-socket-group", help="group that may use the NBD unix socket "
                                              "(mode 0660; default: root only, 0600)")
    p.add_argument("--nbd-listen", help="also serve NBD on TCP IP:PORT (TLS with a client "
                                        "certificate from the site CA, see --tls-ca)")
    p.add_argument("--nbd-allow", help="comma-separated client networks admitted on "
                                       "--nbd-listen (default: any)")
    p.add_argument("--nbd-insecure", action="store_const", const=True,
                   help="serve --nbd-listen in plaintext, without TLS (logged at every start)")
    p.add_argument("--nbd-unsafe-raw-writes", action="store_const", const=True,
                   help="keep disks in use (PVs of varied-on VGs, served disks, RPV client "
                        "disks) writable over NBD; for testing the RPV link only")
    p.add_argument("--metrics-listen", help="serve Prometheus metrics on [IP:]PORT "
                                            "(IP defaults to 127.0.0.1)")
    p.add_argument("--tls-ca", help="site CA certificate: enables mutual TLS on the RPV link")
    p.add_argument("--tls-cert", help="this site's certificate (glvmctl tls issue)")
    p.add_argument("--tls-key", help="this site's private key")
    p.add_argument("--compress-accept", help="payload codecs RPV clients may ask for: "
                   "zstd,lz4 (default), a subset, or none")
    p.add_argument("--node", help="node name reported to peers (default: host name)")
    p.add_argument("--log-format", choices=["json", "console"], help="log line format")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--ready-fd", type=int, help="write READY to this file descriptor once "
                                                "serving, then close it")
    p.add_argument("--version", action="version",
                   version=f"rpvd {VERSION} (control API {API_VERSION}, RPV protocol "
                           f"{RPV_PROTOCOL_VERSION}; hot path {speedups.summary()})")
    return p.parse_args(argv)


class Daemon:
    def __init__(self, cfg: cfgmod.Config):
        self.cfg = cfg
        self.db = DeviceDB(os.path.join(cfg.state_dir, "devices.db"))
        machine_id = self.db.setting("machine_id")
        if machine_id is None:
            machine_id = os.urandom(6).hex().upper()
            self.db.set_setting("machine_id", machine_id)
        self.errlog = ErrorLog(self.db, cfg.node, machine_id)
        # The one place objects are wired together. The device manager and the LVM core need
        # each other (disks in use, PVs coming back), so the manager is told its peers once
        # they exist; the LVM core gets its ports at construction.
        client_ssl = None
        self.server_ssl = None
        if cfg.tls_ca:
            self.server_ssl = tls.server_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
            client_ssl = tls.client_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
        self.devices = DeviceManager(self.db, self.errlog, cfg.node, client_ssl=client_ssl,
                                     unsafe_raw_writes=cfg.nbd_unsafe_raw_writes)
        self.errlog.locate = self.devices.locate
        self.rpv = RPVServer(self.devices.rpv_exports, self.devices.site, cfg.node, Limits(
            max_connections=cfg.max_connections, max_payload=cfg.max_payload,
            max_outstanding=cfg.max_outstanding, handshake_timeout=cfg.handshake_timeout,
            compress=cfg.compress_codecs()))
        self.jobs = Jobs()
        self.lvm = LVMManager(pvs=self.devices, catalog=self.db, exports=self.devices,
                              errors=self.errlog, jobs=self.jobs)
        self.gmvg = GMVG(self.lvm)
        self.nbd = NBDServer(self.devices)
        self.devices.attach(rpv_server=self.rpv, lvm=self.lvm, nbd=self.nbd)
        self.attachments = Attachments(cfg.state_dir, cfg.nbd_socket)
        self.control = ControlServer(self.ops(), jobs=self.jobs)

    def ops(self) -> dict:
        d = self.devices
        return {
            "ping": lambda: {"node": self.cfg.node, "site": d.site(), "version": VERSION,
                             "api": API_VERSION},
            "site": self.op_site,
            "mkdev": d.mkdev, "rmdev": d.rmdev, "chdev": d.chdev,
            "lsdev": d.lsdev, "lsattr": d.lsattr, "lspv": d.lspv,
            "discover": d.discover,
            "errpt": self.op_errpt, "errclear": self.db.clear_errors,
            "errnotify_add": self.op_errnotify_add, "errnotify_list": self.op_errnotify_list,
            "errnotify_rm": self.op_errnotify_rm,
            **{op: getattr(self.lvm, op) for op in (
                "mkvg", "extendvg", "reducevg", "varyonvg", "varyoffvg", "importvg",
                "exportvg", "chvg", "chpv", "lsvg")},
            **{op: getattr(self.lvm.lv, op) for op in (
                "mklv", "chlv", "rmlv", "lslv", "mirrorvg", "unmirrorvg", "syncvg")},
            "gmvg_add_rpvs": self.gmvg.add_rpvs, "gmvg_add_mirror": self.gmvg.add_mirror,
            "gmvg_verify": self.gmvg.verify, "gmvg_list": self.gmvg.list,
            "gmvgstat": self.gmvg.gmvgstat, "rpvstat": self.op_rpvstat,
            "syncvg_verify": self.lvm.lv.verify,
            "chpv_pool": self.lvm.pool.chpv_pool, "lsmp": self.lvm.pool.lsmp,
            "chmp": self.lvm.pool.chmp,
            "attach": self.op_attach, "attachments": self.attachments.list,
            "detach": self.attachments.detach,
            "jobs": self.jobs.list, "jobs_cancel": self.op_jobs_cancel,
            "jobs_wait": self.op_jobs_wait,
        }

    def op_rpvstat(self, reset: bool = False, by_path: bool = False,
                   asynchronous: bool = False) -> list[dict]:
        if asynchronous:
            return self.lvm.asyncs.stats()
        return self.devices.rpvstat(reset, by_path)

    def op_site(self, name: str | None = None) -> dict:
        if name is not None:
            self.devices.set_site(name)
        return {"site": self.devices.site() or None}

    async def op_attach(self, lv: str) -> dict:
        if self.lvm.get_lv(lv) is None:
            raise CommandError(f"logical volume {lv} is not available here: its volume group "
                               f"is not varied on at this site (or is in maintenance mode)")
        return await self.attachments.attach(lv)

    async def op_jobs_cancel(self, id: int) -> dict:  # noqa: A002 — the wire name
        try:
            job = self.jobs.cancel(id)
        except JobError as e:
            raise CommandError(str(e)) from None
        await asyncio.wait({job.task}, timeout=30)  # copies in flight finish first
        return job.as_dict()

    async def op_jobs_wait(self, id: int, progress=None) -> dict:  # noqa: A002
        try:
            return (await self.jobs.follow(id, progress)).as_dict()
        except JobError as e:
            raise CommandError(str(e)) from None

    def op_errpt(self, identifier: str | None = None, resource: str | None = None) -> list:
        entries = self.errlog.entries()
        if identifier:
            entries = [e for e in entries if e["identifier"].upper() == identifier.upper()]
        if resource:
            entries = [e for e in entries if e["resource"] == resource]
        return entries

    def op_errnotify_add(self, method: str, label: str | None = None,
                         resource: str | None = None) -> dict:
        if not method.strip():
            raise CommandError("errnotify needs a non-empty --method")
        return {"id": self.db.add_notify(label, resource, method)}

    def op_errnotify_list(self) -> list:
        return [{"id": i, "label": lb, "resource": r, "method": m}
                for i, lb, r, m in self.db.notifies()]

    def op_errnotify_rm(self, id: int) -> dict:  # noqa: A002 — the wire name
        if not self.db.delete_notify(int(id)):
            raise CommandError(f"no notification object {id}")
        return {"id": id}

    async def run(self, ready_fd: int | None) -> None:
        cfg = self.cfg
        await self.devices.boot()
        host, port = cfgmod.split_hostport(cfg.listen, "listen")
        await self.rpv.start(host, port, ssl=self.server_ssl)
        await self.nbd.start_unix(cfg.nbd_socket, mode=0o660 if cfg.nbd_socket_group else 0o600,
                                  group=cfg.nbd_socket_group)
        if cfg.nbd_listen:
            if not cfg.tls_ca:
                log.warning("nbd_insecure", nbd_listen=cfg.nbd_listen,
                            warning="NBD over TCP without TLS: anyone who reaches this port "
                                    "can read and write every exported volume")
            await self.nbd.start_tcp(*cfgmod.split_hostport(cfg.nbd_listen, "nbd_listen"),
                                     tls=self.server_ssl, allow=cfg.allowed_networks())
        await self.control.start(cfg.socket)
        if cfg.metrics_listen:
            metrics.serve(*cfgmod.split_hostport(cfg.metrics_listen, "metrics_listen"),
                          self.devices, self.lvm)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if cfg.nbd_unsafe_raw_writes:
            log.warning("nbd_unsafe_raw_writes",
                        warning="disks in use stay writable over NBD: a write there bypasses "
                                "mirroring and stale tracking")
        log.info("rpvd_ready", node=cfg.node, site=self.devices.site() or None,
                 listen=cfg.listen, socket=cfg.socket, nbd_socket=cfg.nbd_socket,
                 nbd_listen=cfg.nbd_listen or None, metrics_listen=cfg.metrics_listen or None,
                 hot_path=speedups.summary())
        if ready_fd is not None:
            os.write(ready_fd, b"READY\n")
            os.close(ready_fd)
        sd_notify(b"READY=1")
        await stop.wait()
        sd_notify(b"STOPPING=1")
        log.info("rpvd_stopping")
        await self.control.close()
        await self.attachments.close()
        await self.nbd.close(grace=5.0)
        await self.rpv.close()
        await self.lvm.shutdown()
        await self.devices.shutdown()
        await self.errlog.drain()
        self.db.close()
        log.info("rpvd_stopped")


def sd_notify(message: bytes) -> None:
    """Tell systemd (Type=notify units) about our state, if it asked (NOTIFY_SOCKET)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message)
    except OSError as e:
        log.warning("sd_notify_failed", socket=os.environ.get("NOTIFY_SOCKET"), error=str(e))


def _raise_fd_limit() -> None:
    """Connections are bounded by max_connections, not by a low default descriptor limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k: getattr(args, k) for k in
                 ("state_dir", "listen", "socket", "nbd_socket", "nbd_socket_group",
                  "nbd_listen", "nbd_allow", "nbd_insecure", "nbd_unsafe_raw_writes",
                  "metrics_listen", "node", "log_format", "log_level", "tls_ca", "tls_cert",
                  "tls_key", "compress_accept")}
    try:
        cfg = cfgmod.load(args.config, overrides)
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        os.chmod(cfg.state_dir, 0o700)  # the device database and logs are nobody else's
    except (cfgmod.ConfigError, OSError) as e:
        print(f"rpvd: {e}", file=sys.stderr)
        sys.exit(2)
    logs.configure(os.path.join(cfg.state_dir, "rpvd.log"), cfg.log_format, cfg.log_level)
    _raise_fd_limit()
    try:
        daemon = Daemon(cfg)
        uvloop.run(daemon.run(args.ready_fd))
    except (OSError, ssl.SSLError) as e:
        log.error("rpvd_failed", error=str(e))
        print(f"rpvd: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
