"""Device configuration: mkdev / chdev / rmdev and the runtime objects of Available devices.

The device database holds what is configured; this module holds what is running (open disk
files, RPV clients) and keeps both in step. Every command validates everything first and
changes nothing when it refuses. State changes follow one table (:data:`TRANSITIONS`).
"""

from __future__ import annotations

import asyncio
import errno
import os

import structlog

from lvm import layout
from lvm.ports import DiskInfo
from rpv.blockdev import BlockDevice, FileDisk, ReadOnlyView, create_sparse_file
from rpv.client.device import ClientState, RPVClient, discover, paths_of
from rpv.client.stats import IOStats
from rpv.daemon import attrs as A
from rpv.daemon.devdb import Device, DeviceDB
from rpv.daemon.errlog import ErrorLog
from rpv.daemon.localaddrs import candidates
from rpv.errors import CommandError
from rpv.protocol import HelloInfo, pvid_to_bytes, pvid_to_str
from rpv.server.server import Export, RPVServer

log = structlog.get_logger("devices")

DEFINED, AVAILABLE = "Defined", "Available"

# (current state, command) -> new state; anything absent is refused.
TRANSITIONS = {
    (None, "define"): DEFINED,
    (DEFINED, "configure"): AVAILABLE,
    (AVAILABLE, "configure"): AVAILABLE,  # mkdev -l on an Available device is a no-op
    (AVAILABLE, "unconfigure"): DEFINED,
    (DEFINED, "unconfigure"): DEFINED,
    (DEFINED, "delete"): None,
}

CONNECT_TIMEOUT_MAX = 10.0
PATH_CHECK_SECONDS = 0.5  # how long a device may stay silent after another on its path timed
# out (any reply within it, or the answer to a PING, shows its path is up)


def new_pvid() -> str:
    """An AIX-looking PVID: 16 significant hex digits followed by 16 zeros."""
    return os.urandom(8).hex() + "0" * 16


class DeviceManager:
    def __init__(self, db: DeviceDB, errlog: ErrorLog, node: str,
                 client_ssl=None, unsafe_raw_writes: bool = False):
        self.db = db
        self.unsafe_raw_writes = unsafe_raw_writes
        self._claims: dict[str, str] = {}  # disk name -> who is taking it into use
        self.errlog = errlog
        self.node = node
        self.disks: dict[str, BlockDevice] = {}  # Available disk devices by name
        self.rpv_server: RPVServer | None = None  # these three: see attach()
        self.lvm = None
        self.nbd = None
        self.client_ssl = client_ssl  # ssl.SSLContext for RPV clients when TLS is configured
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()

    def attach(self, rpv_server: RPVServer, lvm, nbd) -> None:
        """The daemon's other parts, once they exist: the RPV server (exports to drop), the
        LVM core (disks in use, PVs coming back; lvm.manager.LVMManager) and the NBD server
        (connections to close)."""
        self.rpv_server, self.lvm, self.nbd = rpv_server, lvm, nbd

    # -- site ----------------------------------------------------------------------------------
    def site(self) -> str:
        return self.db.setting("site", "") or ""

    def set_site(self, name: str) -> str:
        name = name.strip()
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").isalnum():
            raise CommandError(f"site name '{name}' must be 1-64 letters, digits, - or _")
        self.db.set_setting("site", name)
        log.info("site_set", site=name)
        return name

    # -- views ---------------------------------------------------------------------------------
    def get(self, name: str) -> Device:
        dev = self.db.get(name)
        if dev is None:
            raise CommandError(f"device {name} is not defined")
        return dev

    def lsdev(self, dev_class: str | None = None, dev_type: str | None = None) -> list[dict]:
        return [{"name": d.name, "state": d.state, "class": d.dev_class, "type": d.dev_type,
                 "description": A.devtype(d.dev_class, d.dev_type).description}
                for d in self.db.devices(dev_class, dev_type)]

    def lsattr(self, name: str) -> list[dict]:
        dev = self.get(name)
        dt = A.devtype(dev.dev_class, dev.dev_type)
        return [{"attribute": a.name, "value": dev.attrs.get(a.name, ""),
                 "description": a.description, "user_settable": a.user_settable}
                for a in dt.attrs]

    def lspv(self, name: str | None = None) -> list[dict]:
        disks = self.db.devices("disk")
        if name is not None:
            disks = [d for d in disks if d.name == name]
            if not disks:
                raise CommandError(f"physical volume {name} is not defined")
        return [{"name": d.name, "pvid": d.attrs.get("pvid") or None,
                 "vg": self.lvm.vg_of_pvid(d.attrs.get("pvid")) if self.lvm else None,
                 "pool": self.lvm.pool_of_pvid(d.attrs.get("pvid")) if self.lvm else None,
                 "state": self._pv_state(d), "type": d.dev_type,
                 "site": d.attrs.get("site") or ("unknown" if d.dev_type == "rpvclient"
                                                 else self.site() or "local"),
                 "size": int(d.attrs.get("size") or 0)} for d in disks]

    def locate(self, name: str) -> tuple[str, list[str]]:
        """errpt's Location and VPD lines for a device (empty for a VG or an LV): where
        its data lives and what identifies it."""
        d = self.db.get(name)
        if d is None or d.dev_class != "disk":
            return "", []
        a = d.attrs
        size = f"{int(a.get('size') or 0) // 2**20} MB"
        if d.dev_type == "rpvclient":
            site = a.get("site") or "unknown"
            location = (f"{a.get('server_addr')}:{a.get('server_port') or A.DEFAULT_RPV_PORT}"
                        f" from {a.get('local_addr')}")
            model = "Remote Physical Volume Client"
            timeout = a.get("io_timeout") or A.DEFAULT_IO_TIMEOUT
            extra = [("Server Site", site), ("I/O Timeout", f"{timeout} s")]
        else:
            location = a.get("path", "")
            model = "File-backed Disk" if d.dev_type == "file" else "Block Device"
            extra = [("Site", self.site() or "local")]
        fields = [("Manufacturer", "glvm"), ("Machine Type and Model", model),
                  ("Serial Number", a.get("pvid") or "none"), ("Size", size), *extra]
        return location, [f"{k:.<28}{v}" for k, v in fields]

    def _pv_state(self, d: Device) -> str:
        if d.state != AVAILABLE:
            return "defined"
        rt = self.disks.get(d.name)
        if isinstance(rt, RPVClient) and rt.state is not ClientState.ONLINE:
            return rt.state.value
        return "active"

    def rpvstat(self, reset: bool = False, by_path: bool = False) -> list[dict]:
        """Per RPV client (or per network path): state and I/O counters; ``reset`` zeroes
        the counters after reading them."""
        rows = []
        for d in self.db.devices("disk", "rpvclient"):
            rt = self.disks.get(d.name)
            row = {"name": d.name, "server_addr": d.attrs["server_addr"],
                   "local_addr": d.attrs["local_addr"],
                   "state": rt.state.value if isinstance(rt, RPVClient) else "defined",
                   "connected": isinstance(rt, RPVClient) and rt.connected}
            row["compress"] = d.attrs.get("compress") or "none"
            if isinstance(rt, RPVClient):
                row.update(rt.stats.as_dict(), **rt.pending())
                if reset:
                    rt.reset_stats()
            else:
                row.update(IOStats().as_dict(), pend_reads=0, pend_writes=0, pend_kb_read=0,
                           pend_kb_written=0)
            if by_path and isinstance(rt, RPVClient) and len(rt.paths) > 1:
                pending = rt.pending()  # all on the path in use
                for p in rt.path_rows():
                    active = p["path_state"] == "active"
                    rows.append({**row, **p, **{k: v if active else 0
                                                for k, v in pending.items()}})
                continue
            rows.append(row)
        return _by_path(rows) if by_path else rows

    # -- the PV directory the LVM core uses (lvm.ports.PVDirectory) ------------------------------
    def disk(self, name: str) -> DiskInfo | None:
        d = self.db.get(name)
        return self._disk_info(d) if d is not None and d.dev_class == "disk" else None

    def known_disks(self) -> list[DiskInfo]:
        return [self._disk_info(d) for d in self.db.devices("disk")]

    def _disk_info(self, d: Device) -> DiskInfo:
        return DiskInfo(d.name, d.attrs.get("pvid", ""), d.dev_type == "rpvclient",
                        d.attrs.get("site", ""), self.disks.get(d.name))

    def is_device(self, name: str) -> bool:
        return self.db.get(name) is not None

    async def withdraw(self, export: str) -> None:
        if self.nbd is not None:
            await self.nbd.disconnect_export(export)

    def in_use(self, exports: list[str]) -> list[str]:
        conns = self.nbd.connections() if self.nbd is not None else []
        # a client that said goodbye (or vanished) is finishing, not holding the LV open
        opened = {c["export"] for c in conns if c["phase"] == "serving"}
        return [e for e in exports if e in opened]

    # -- NBD export registry -------------------------------------------------------------------
    # A disk the LVM or an RPV server is using is exported read-only: a write there would
    # bypass mirroring, stale tracking and the DRL. Other disks stay writable (that is how a
    # new disk is filled before mkvg).
    def get_export(self, name: str) -> BlockDevice | None:
        disk = self.disks.get(name)
        if disk is None:
            return self.lvm.get_lv(name) if self.lvm is not None else None
        reason = self.raw_write_refusal(name)
        return ReadOnlyView(disk, reason) if reason else disk

    def list_exports(self) -> list[tuple[str, str]]:
        out = []
        for d in self.db.devices("disk"):
            if d.name in self.disks:
                reason = self.raw_write_refusal(d.name)
                out.append((d.name, f"{A.devtype(d.dev_class, d.dev_type).description} "
                                     f"PVID {d.attrs.get('pvid', '')}"
                                     + (f"; read-only: {reason}" if reason else "")))
        return out + (self.lvm.list_lvs() if self.lvm is not None else [])

    def raw_write_refusal(self, name: str) -> str | None:
        """Why disk ``name`` may not be written over NBD, or None if it may."""
        if self.unsafe_raw_writes:
            return None
        dev = self.db.get(name)
        if dev is None:
            return None
        if dev.dev_type == "rpvclient":
            return (f"{name} is an RPV client disk (an RPV server at the remote site serves "
                    f"it); write through a logical volume of its volume group")
        phrase = self._claims.get(name)
        if phrase is None and self.lvm is not None:
            vg = self.lvm.disk_in_use(name)
            if vg is not None:
                phrase = (f"a physical volume of volume group {vg}, which is varied on; "
                          f"write through its logical volumes")
        if phrase is None:
            server = self.serving(dev.attrs.get("pvid", ""))
            if server is not None:
                phrase = (f"served to the remote site by {server}, which is Available; "
                          f"run rmdev -l {server} first")
        return f"{name} is {phrase}" if phrase else None

    async def claim_disks(self, names: list[str], phrase: str) -> None:
        """These disks are being taken into use ("NAME is ``phrase``"): from now on they are
        exported read-only, and connections that could write are closed (their in-flight
        writes finish first). Undo with :meth:`release_disks` once the user is registered."""
        for name in names:
            self._claims[name] = phrase
        if self.nbd is not None:
            for name in names:
                await self.nbd.disconnect_export(name, writers_only=True)

    def release_disks(self, names: list[str]) -> None:
        for name in names:
            self._claims.pop(name, None)

    # -- RPV server exports --------------------------------------------------------------------
    def serving(self, pvid: str) -> str | None:
        """The Available RPV server exporting the local disk with this PVID, if any."""
        return next((s.name for s in self.db.devices("rpvserver")
                     if s.state == AVAILABLE and s.attrs["rpvs_pvid"] == pvid), None)

    def _local_disk(self, pvid: str) -> Device | None:
        """The local (file or block) disk device with this PVID, if any."""
        return next((d for d in self.db.devices("disk")
                     if d.dev_type != "rpvclient" and d.attrs.get("pvid") == pvid), None)

    def rpv_exports(self) -> list[Export]:
        out = []
        for s in self.db.devices("rpvserver"):
            disk_dev = self._local_disk(s.attrs["rpvs_pvid"])
            disk = self.disks.get(disk_dev.name) if disk_dev else None
            out.append(Export(
                server_name=s.name, disk_name=disk_dev.name if disk_dev else "",
                pvid=pvid_to_bytes(s.attrs["rpvs_pvid"]), client_addr=s.attrs["client_addr"],
                available=s.state == AVAILABLE and disk is not None, disk=disk,
                size=disk.size if disk is not None else 0))
        return out

    # -- startup / shutdown --------------------------------------------------------------------
    async def boot(self) -> None:
        """Configure devices as at system start: disks and auto_online RPV servers only."""
        for d in self.db.devices():
            target = DEFINED
            if d.dev_class == "disk" and d.dev_type in ("file", "block"):
                target = AVAILABLE
            elif d.dev_class == "rpvserver" and d.attrs.get("auto_online") == "y":
                target = AVAILABLE
            if target == AVAILABLE:
                try:
                    await self._configure(d)
                except CommandError as e:
                    log.error("boot_configure_failed", device=d.name, reason=str(e))
                    target = DEFINED
            if d.state != target:
                d.state = target
                self.db.update(d)
            log.info("boot_device", device=d.name, state=d.state)

    async def shutdown(self) -> None:
        for name, rt in list(self.disks.items()):
            await _close_runtime(rt)
            self.disks.pop(name, None)

    # -- mkdev ---------------------------------------------------------------------------------
    async def mkdev(self, name: str | None = None, dev_class: str | None = None,
                    dev_type: str | None = None, attrs: dict[str, str] | None = None,
                    define_only: bool = False) -> dict:
        async with self._lock:
            if dev_class is None and dev_type is None and not attrs:
                if name is None:
                    raise CommandError("mkdev needs -l NAME, or -c CLASS -t TYPE -a ...")
                dev = self.get(name)
                self._transition(dev, "configure")
                if dev.state != AVAILABLE:
                    await self._configure(dev)
                    dev.state = AVAILABLE
                    self.db.update(dev)
                    log.info("device_configured", device=dev.name)
                return {"name": dev.name, "state": dev.state}
            return await self._define(name, dev_class or "", dev_type or "", attrs or {},
                                      define_only)

    async def _define(self, name, dev_class, dev_type, given, define_only) -> dict:
        try:
            dt = A.devtype(dev_class, dev_type)
            values = A.validate_new(dt, given)
            _check_paths(dev_type, values)
        except ValueError as e:
            raise CommandError(str(e)) from None
        if name is None:
            name = self.db.next_name(dt.prefix)
        elif self.db.get(name) is not None:
            raise CommandError(f"device {name} already exists")
        elif not name.startswith(dt.prefix) or not name[len(dt.prefix):].isdigit():
            raise CommandError(f"device name {name} must look like {dt.prefix}N")
        self._check_unique(dev_class, dev_type, values)
        dev = Device(name, dev_class, dev_type, DEFINED, values)
        created_file = False
        if dev_type == "file":
            created_file = self._prepare_file(values)
        elif dev_type == "block":
            values["size"] = str(_block_size(values["path"]))
        if dev_type in ("file", "block"):
            values["pvid"] = _pvid_on_disk(values["path"]) or new_pvid()
        if not define_only:
            try:
                await self._configure(dev)
            except CommandError:
                if created_file:
                    os.unlink(values["path"])
                raise
            dev.state = AVAILABLE
        self.db.add(dev)
        log.info("device_defined", device=name, dev_class=dev_class, dev_type=dev_type,
                 state=dev.state, **{k: v for k, v in values.items() if k != "size"})
        return {"name": name, "state": dev.state, "attrs": values}

    def _check_unique(self, dev_class: str, dev_type: str, values: dict[str, str]) -> None:
        devices = self.db.devices()
        if dev_class == "disk" and "path" in values:
            real = os.path.realpath(values["path"])
            for d in devices:
                if d.attrs.get("path") and os.path.realpath(d.attrs["path"]) == real:
                    raise CommandError(f"{values['path']} is already used by {d.name}")
        if dev_type == "rpvclient":
            for d in devices:
                if d.dev_class == "disk" and d.attrs.get("pvid") == values["pvid"]:
                    raise CommandError(f"PVID {values['pvid']} is already known as {d.name}")
        if dev_class == "rpvserver":
            self._check_rpvserver_pvid(values["rpvs_pvid"],
                                       [d for d in devices if d.dev_class == "rpvserver"])

    @staticmethod
    def _prepare_file(values: dict[str, str]) -> bool:
        """Create the sparse backing file, or accept an existing one that is large enough."""
        path, size = values["path"], int(values["size"])
        if not os.path.isdir(os.path.dirname(path) or "/"):
            raise CommandError(f"directory of {path} does not exist")
        existed = os.path.exists(path)
        try:
            if existed and not os.path.isfile(path):
                raise CommandError(f"{path} is not a regular file (use -t block for devices)")
            create_sparse_file(path, size)
        except OSError as e:
            raise CommandError(f"cannot use {path}: {e.strerror or e}") from None
        return not existed

    # -- configure / unconfigure ----------------------------------------------------------------
    def _transition(self, dev: Device, command: str) -> str | None:
        key = (dev.state, command)
        if key not in TRANSITIONS:
            raise CommandError(f"{dev.name} is {dev.state}; cannot {command} it")
        return TRANSITIONS[key]

    async def _configure(self, dev: Device) -> None:
        if dev.dev_class == "disk" and dev.dev_type in ("file", "block"):
            try:
                self.disks[dev.name] = FileDisk(dev.name, dev.attrs["path"],
                                                int(dev.attrs["size"]))
            except OSError as e:
                raise CommandError(f"cannot open {dev.attrs['path']} for {dev.name}: "
                                   f"{e.strerror or e}") from None
        elif dev.dev_type == "rpvclient":
            await self._configure_client(dev)
        elif dev.dev_class == "rpvserver":
            disk = self._local_disk(dev.attrs["rpvs_pvid"])
            if disk is None or disk.name not in self.disks:
                raise CommandError(f"{dev.name}: the disk with PVID {dev.attrs['rpvs_pvid']} "
                                   f"is not Available")
            vg = self.lvm.disk_in_use(disk.name) if self.lvm else None
            if vg is not None:  # fencing: never serve a disk this site is using
                raise CommandError(f"{dev.name}: {disk.name} belongs to volume group {vg}, "
                                   f"varied on at this site; run varyoffvg {vg} first")
            # Local writers must be gone before the remote site may write: the claim lasts
            # until the caller marks the server Available (no await in between).
            await self.claim_disks([disk.name], f"served to the remote site by {dev.name}")
            self.release_disks([disk.name])

    async def _configure_client(self, dev: Device) -> None:
        a = dev.attrs
        client = RPVClient(
            dev.name, a["pvid"], a["server_addr"], a["local_addr"],
            server_port=int(a["server_port"]), io_timeout=float(a["io_timeout"]),
            site=self.site(), node=self.node, size=0,
            on_timeout=self._client_timed_out, on_hello=self._client_hello,
            auto_resume=a.get("auto_resume") == "y", on_resumed=self._client_resumed,
            on_new_instance=self._client_new_instance, ssl=self.client_ssl,
            compress=a.get("compress") or "none")
        client.on_path = self._client_path
        if a["server_addr"] != "none":
            timeout = min(float(a["io_timeout"]), CONNECT_TIMEOUT_MAX)
            try:
                await client.open(timeout)
            except (OSError, TimeoutError) as e:
                await client.close()
                raise CommandError(f"{dev.name}: cannot reach RPV server {a['server_addr']} "
                                   f"from {a['local_addr']}: {_reason(e)}") from None
            a["size"] = str(client.size)
            a["site"] = client.server_info.server_site
        elif int(a.get("size") or 0) == 0:
            await client.close()
            raise CommandError(f"{dev.name}: server_addr is none and the disk size is unknown")
        else:
            client._size = int(a["size"])
        self.disks[dev.name] = client

    def _client_hello(self, client: RPVClient, info: HelloInfo) -> None:
        dev = self.db.get(client.name)
        if dev is not None and (dev.attrs.get("site") != info.server_site
                                or dev.attrs.get("size") != str(info.disk_size)):
            dev.attrs["site"] = info.server_site
            dev.attrs["size"] = str(info.disk_size)
            self.db.update(dev)

    def _client_resumed(self, client: RPVClient) -> None:
        """auto_resume brought a client back: let the LVM take the PV back and resync."""
        if self.lvm is not None:
            task = asyncio.get_running_loop().create_task(self.lvm.pv_came_back(client.name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _client_new_instance(self, client: RPVClient, rebooted: bool) -> bool:
        """The server restarted: the LVM marks what it may have lost (True), if it uses
        the disk; otherwise the client fails what waits (see RPVClient)."""
        return self.lvm is not None and self.lvm.pv_server_restarted(client.name, rebooted)

    def _client_path(self, client: RPVClient, index: int, down: str | None) -> None:
        server, local = client.paths[index]
        where = f"path {index} ({server} from {local})"
        if down is not None:
            self.errlog.log("RPVC_PATH_DOWN", client.name, "disk", "rpvclient",
                            f"{where}: {down}")
            for other in self._other_clients(client):  # the others stop using that path too
                other.path_seen_down(server, local, f"{client.name}: {down}")
        else:
            self.errlog.log("RPVC_PATH_UP", client.name, "disk", "rpvclient",
                            f"{where} answers again")

    def _client_timed_out(self, client: RPVClient, reason: str) -> None:
        self.errlog.log("RPVC_IO_TIMEOUT", client.name, "disk", "rpvclient", reason)
        for other in self._other_clients(client):  # the same path is probably down for all
            if (other.server_addr, other.local_addr) == (client.server_addr, client.local_addr):
                other.check_path(min(PATH_CHECK_SECONDS, other.io_timeout),
                                 f"{client.name} on the same path timed out")

    def _other_clients(self, client: RPVClient):
        """The other RPV clients that reach a server on the same port as ``client``."""
        for other in self.disks.values():
            if isinstance(other, RPVClient) and other is not client \
                    and other.server_port == client.server_port:
                yield other

    async def _unconfigure(self, dev: Device) -> None:
        if dev.dev_class == "disk":
            vg = self.lvm.disk_in_use(dev.name) if self.lvm else None
            if vg is not None:
                raise CommandError(f"{dev.name} is busy: volume group {vg} is varied on; "
                                   f"run varyoffvg {vg} first")
            for s in self.db.devices("rpvserver"):
                if s.state == AVAILABLE and s.attrs["rpvs_pvid"] == dev.attrs.get("pvid") \
                        and dev.dev_type != "rpvclient":
                    raise CommandError(f"{dev.name} is busy: {s.name} is Available and "
                                       f"serves it; run rmdev -l {s.name} first")
            rt = self.disks.pop(dev.name, None)  # no new NBD opens from here on
            if rt is not None:
                if self.nbd is not None:
                    await self.nbd.disconnect_export(dev.name)
                await _close_runtime(rt)
        elif dev.dev_class == "rpvserver" and self.rpv_server is not None:
            self.rpv_server.drop_export(dev.name, "RPV server unconfigured")

    # -- rmdev ---------------------------------------------------------------------------------
    async def rmdev(self, name: str, delete: bool = False) -> dict:
        async with self._lock:
            dev = self.get(name)
            self._transition(dev, "unconfigure")
            if dev.state == AVAILABLE:
                await self._unconfigure(dev)
                dev.state = DEFINED
                self.db.update(dev)
            if delete:
                self._transition(dev, "delete")
                if dev.dev_class == "disk" and dev.dev_type != "rpvclient":
                    users = [s.name for s in self.db.devices("rpvserver")
                             if s.attrs["rpvs_pvid"] == dev.attrs.get("pvid")]
                    if users:
                        raise CommandError(f"{dev.name} is used by {', '.join(users)}; "
                                           f"delete {users[0]} first (rmdev -d -l {users[0]})")
                self.db.delete(name)
                log.info("device_deleted", device=name)
                return {"name": name, "state": "deleted"}
            log.info("device_unconfigured", device=name)
            return {"name": name, "state": dev.state}

    # -- chdev ---------------------------------------------------------------------------------
    async def chdev(self, name: str, changes: dict[str, str]) -> dict:
        async with self._lock:
            dev = self.get(name)
            dt = A.devtype(dev.dev_class, dev.dev_type)
            if not changes:
                raise CommandError("chdev needs at least one -a attribute=value")
            try:
                stored, actions = A.validate_change(dt, changes)
                _check_paths(dev.dev_type, dict(dev.attrs, **stored))
            except ValueError as e:
                raise CommandError(str(e)) from None
            rt = self.disks.get(name)
            if dev.dev_class == "rpvserver" and "rpvs_pvid" in stored:
                probe = dict(dev.attrs, **stored)
                others = [d for d in self.db.devices("rpvserver") if d.name != name]
                self._check_rpvserver_pvid(probe["rpvs_pvid"], others)
            if isinstance(rt, RPVClient):
                await self._apply_client_changes(dev, rt, stored, actions)
            elif actions:
                raise CommandError(f"{name} is not Available; resume needs an Available client")
            if dev.dev_class == "rpvserver" and dev.state == AVAILABLE and "rpvs_pvid" in stored:
                # The newly served disk gets the same checks and fencing as at mkdev -l.
                await self._configure(Device(name, dev.dev_class, dev.dev_type, AVAILABLE,
                                             dict(dev.attrs, **stored)))
            if dev.dev_class == "rpvserver" and dev.state == AVAILABLE and self.rpv_server \
                    and ({"client_addr", "rpvs_pvid"} & stored.keys()):
                self.rpv_server.drop_export(name, "RPV server attributes changed")
            dev.attrs.update(stored)
            self.db.update(dev)
            log.info("device_changed", device=name, **stored, **actions)
            return {"name": name, "changed": stored, "actions": actions}

    def _check_rpvserver_pvid(self, pvid: str, others: list[Device]) -> None:
        """An RPV server needs a local disk with the PVID that no other RPV server serves."""
        if self._local_disk(pvid) is None:
            raise CommandError(f"no local disk has PVID {pvid} (see glvmctl lspv)")
        for d in others:
            if d.attrs["rpvs_pvid"] == pvid:
                raise CommandError(f"PVID {pvid} is already served by {d.name}")

    async def _apply_client_changes(self, dev: Device, rt: RPVClient,
                                    stored: dict[str, str], actions: dict[str, str]) -> None:
        if "io_timeout" in stored:
            rt.set_io_timeout(float(stored["io_timeout"]))
        if "auto_resume" in stored:
            rt.auto_resume = stored["auto_resume"] == "y"
            if rt.auto_resume:
                rt.start_probe()
        if "compress" in stored:  # asked for from the next HELLO on; online: HELLO now
            previous, rt.compress = rt.compress, stored["compress"]
            if rt.state is ClientState.ONLINE:
                try:
                    await rt.open(min(rt.io_timeout, CONNECT_TIMEOUT_MAX))
                except (OSError, TimeoutError) as e:
                    rt.compress = previous  # refused: keep the session as it was
                    raise CommandError(f"{dev.name}: {_reason(e)}") from None
        if "local_addr" in stored or "server_port" in stored:
            rt.local_addr = stored.get("local_addr", rt.local_addr)
            rt.server_port = int(stored.get("server_port", rt.server_port))
            if rt.state is ClientState.ONLINE and "server_addr" not in stored:
                rt.set_server_addr(rt.server_addr)  # reconnect from the new address
        if "server_addr" in stored:
            rt.set_server_addr(stored["server_addr"])
        if actions.get("resume") == "y" or ("server_addr" in stored
                                            and stored["server_addr"] != "none"):
            timeout = min(rt.io_timeout, CONNECT_TIMEOUT_MAX)
            try:
                await rt.resume(timeout)
            except OSError as e:
                raise CommandError(f"{dev.name}: {e.strerror or e}") from None

    # -- discovery -----------------------------------------------------------------------------
    async def discover(self, server_addr: str, local_addr: str | None = None,
                       port: int | None = None, timeout: float = 10.0) -> dict:
        """What an RPV server offers; without ``local_addr``, from every local address that
        could reach it (each is tried at once), listing which did."""
        try:
            server_addr = A.ip(server_addr)
            local_addr = A.ip(local_addr) if local_addr is not None else None
        except ValueError as e:
            raise CommandError(str(e)) from None
        port = port or A.DEFAULT_RPV_PORT
        tried = [local_addr] if local_addr else await candidates(server_addr)
        if not tried:
            raise CommandError(f"no local address of this host can reach {server_addr}")
        answers = await asyncio.gather(
            *(discover(server_addr, a, port, timeout, self.client_ssl) for a in tried),
            return_exceptions=True)
        results = list(zip(tried, answers, strict=True))
        for _addr, r in results:
            if isinstance(r, BaseException) and not isinstance(r, (OSError, TimeoutError)):
                raise r
        failed = {addr: _reason(r) for addr, r in results if isinstance(r, BaseException)}
        reached = [(addr, r) for addr, r in results if addr not in failed]
        if not reached:
            why = "; ".join(f"from {addr}: {reason}" for addr, reason in failed.items())
            raise CommandError(f"cannot query RPV server {server_addr}: {why}")
        local_addr, info = reached[0]
        known = {d.attrs.get("pvid"): d.name for d in self.db.devices("disk")}
        return {"site": info.site, "node": info.node, "server_addr": server_addr,
                "local_addr": local_addr,
                "local_addrs": [{"addr": addr, "reaches": addr not in failed,
                                 "disks": None if addr in failed else len(r.entries),
                                 "error": failed.get(addr)} for addr, r in results],
                "disks": [{"name": e.disk_name, "server": e.server_name,
                           "pvid": pvid_to_str(e.pvid), "size": e.size,
                           "state": AVAILABLE if e.state else DEFINED,
                           "local_name": known.get(pvid_to_str(e.pvid))}
                          for e in info.entries]}


async def _close_runtime(rt) -> None:
    if isinstance(rt, RPVClient):
        await rt.close()
    else:
        rt.close()


def _by_path(rows: list[dict]) -> list[dict]:
    """rpvstat -N: the counters summed per network path (local address -> server)."""
    paths: dict[tuple[str, str], dict] = {}
    summed = ("reads", "writes", "kb_read", "kb_written", "errors", "timeouts", "pend_reads",
              "pend_writes", "pend_kb_read", "pend_kb_written", "raw_bytes_read",
              "wire_bytes_read", "raw_bytes_written", "wire_bytes_written")
    for r in rows:
        p = paths.setdefault((r["local_addr"], r["server_addr"]), {
            "local_addr": r["local_addr"], "server_addr": r["server_addr"], "devices": [],
            "max_ms": 0.0, **dict.fromkeys(summed, 0)})
        p["devices"].append(r["name"])
        if "path_state" in r:  # one path of a client with several
            p.setdefault("path_states", {})[r["name"]] = r["path_state"]
        for k in summed:
            p[k] += r[k]
        p["max_ms"] = max(p["max_ms"], r["max_ms"])
    return list(paths.values())


def _pvid_on_disk(path: str) -> str | None:
    """The PVID in a glvm PV header at the start of the disk, so a disk keeps its identity
    when it is defined again (as AIX keeps the PVID in the disk's boot record)."""
    area = layout.AREAS[layout.Kind.PVHEADER]
    try:
        with open(path, "rb") as f:
            raw = f.read(2 * area.slot_size)
    except OSError:
        return None
    rec = layout.newest(layout.Kind.PVHEADER, raw[:area.slot_size], raw[area.slot_size:])
    return rec[1].get("pvid") if rec else None


def _block_size(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CommandError(f"cannot open {path}: {e.strerror}") from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.errno and e.strerror:
        return f"{e.strerror}" if not e.filename else str(e)
    return str(e) or errno.errorcode.get(getattr(e, "errno", 0) or 0, type(e).__name__)


def _check_paths(dev_type: str, values: dict[str, str]) -> None:
    """An RPV client's server_addr and local_addr list one address per path each."""
    if dev_type == "rpvclient" and values.get("server_addr", "none") != "none":
        paths_of(values["server_addr"], values.get("local_addr", ""))
