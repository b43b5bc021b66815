"""What the LVM core needs from the daemon around it, as Protocols passed to its constructor.

The core never imports the daemon: ``rpvd``'s main module hands it objects that fit these
(the device manager is the PV directory and the export control, the device database is the
VG catalog, the error log is the error sink); tests hand it in-memory ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rpv.blockdev import BlockDevice


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """A disk device the site knows: its PVID, whether it is an RPV client (remote), the
    site it is at (an RPV client's ``site`` attribute; empty if unknown or local) and its
    open device (None while Defined)."""

    name: str
    pvid: str
    remote: bool
    site: str
    device: BlockDevice | None


class PVDirectory(Protocol):
    """The site's disks."""

    def site(self) -> str:
        """This site's name ("" if not set)."""

    def disk(self, name: str) -> DiskInfo | None:
        """The disk device ``name``, or None if no disk has that name."""

    def known_disks(self) -> list[DiskInfo]:
        """Every disk device, in a stable order."""

    def serving(self, pvid: str) -> str | None:
        """The Available RPV server exporting the local disk with this PVID, if any."""

    def is_device(self, name: str) -> bool:
        """Whether a device (of any class) has this name."""


class VGCatalog(Protocol):
    """The volume groups this site knows (name, VGID, PVIDs), kept durably."""

    def vgs(self) -> list[tuple[str, str, list[str]]]: ...

    def get_vg(self, name: str) -> tuple[str, str, list[str]] | None: ...

    def put_vg(self, name: str, vgid: str, pvids: list[str]) -> None: ...

    def delete_vg(self, name: str) -> None: ...


class ExportControl(Protocol):
    """The NBD exports of disks and logical volumes."""

    async def claim_disks(self, names: list[str], phrase: str) -> None:
        """These disks are being taken into use: export them read-only from now on and
        close connections that could write them."""

    def release_disks(self, names: list[str]) -> None:
        """End a claim (the disks' users are registered, or taking them failed)."""

    async def withdraw(self, export: str) -> None:
        """Close every connection to ``export`` (in-flight requests finish first)."""

    def in_use(self, exports: list[str]) -> list[str]:
        """Those of ``exports`` that a client has open now (NBD, or an attached device)."""


class ErrorSink(Protocol):
    """The error log (``errpt``)."""

    def log(self, label: str, resource: str, resource_class: str = "",
            resource_type: str = "", detail: str = "") -> dict: ...


def device_for_pvid(pvs: PVDirectory, pvid: str) -> BlockDevice | None:
    """The open device of the disk with this PVID (None if unknown or Defined)."""
    return next((i.device for i in pvs.known_disks() if i.pvid == pvid), None)


def name_for_pvid(pvs: PVDirectory, pvid: str) -> str | None:
    return next((i.name for i in pvs.known_disks() if i.pvid == pvid), None)
