"""An in-memory site for the LVM core: disks in RAM and the daemon's services (PV directory,
VG catalog, export control, error sink) as plain objects, so varyon, recovery and verify run
without a daemon, a socket or a file."""

from __future__ import annotations

from lvm.manager import LVMManager
from lvm.ports import DiskInfo
from tests.helpers.disks import MemDisk, MiB


class MemSite:
    """The services an LVMManager needs, over MemDisks; ``manager()`` makes a fresh one (a
    daemon restart: the disks and the catalog persist, everything in memory is new)."""

    def __init__(self, site: str = "A"):
        self.site_name = site
        self.disk_objs: dict[str, MemDisk] = {}
        self.pvids: dict[str, str] = {}
        self.available: set[str] = set()
        self.catalog: dict[str, tuple[str, str, list[str]]] = {}
        self.errors: list[tuple[str, str]] = []
        self.claims: dict[str, str] = {}
        self.withdrawn: list[str] = []
        self.opened: set[str] = set()  # exports a client holds open

    def add_disk(self, name: str, size: int = 64 * MiB, local: bool = True,
                 disk: MemDisk | None = None) -> MemDisk:
        """A new disk (or ``disk``, a MemDisk of the test's own kind) with a PVID."""
        disk = disk or MemDisk(name, size, local)
        self.disk_objs[name] = disk
        self.pvids[name] = f"{len(self.pvids) + 1:016x}" + "0" * 16
        self.available.add(name)
        return disk

    def manager(self) -> LVMManager:
        return LVMManager(pvs=self, catalog=self, exports=self, errors=self)

    # -- PVDirectory
    def site(self) -> str:
        return self.site_name

    def disk(self, name: str) -> DiskInfo | None:
        if name not in self.disk_objs:
            return None
        d = self.disk_objs[name]
        return DiskInfo(name, self.pvids[name], not d.local, "" if d.local else "B",
                        d if name in self.available else None)

    def known_disks(self) -> list[DiskInfo]:
        return [self.disk(n) for n in self.disk_objs]

    def serving(self, pvid: str) -> str | None:
        return None

    def is_device(self, name: str) -> bool:
        return name in self.disk_objs

    # -- VGCatalog
    def vgs(self):
        return list(self.catalog.values())

    def get_vg(self, name):
        return self.catalog.get(name)

    def put_vg(self, name, vgid, pvids):
        self.catalog[name] = (name, vgid, list(pvids))

    def delete_vg(self, name):
        self.catalog.pop(name, None)

    # -- ExportControl
    async def claim_disks(self, names, phrase):
        self.claims.update(dict.fromkeys(names, phrase))

    def release_disks(self, names):
        for n in names:
            self.claims.pop(n, None)

    async def withdraw(self, export):
        self.withdrawn.append(export)

    def in_use(self, exports):
        return [e for e in exports if e in self.opened]

    # -- ErrorSink
    def log(self, label, resource, resource_class="", resource_type="", detail=""):
        self.errors.append((label, resource))
        return {}
