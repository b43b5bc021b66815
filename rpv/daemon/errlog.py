"""The error log (AIX ``errlog``): templates, entries and ``errnotify`` (glvmctl formats
``errpt``).

Entries keep AIX's fields. Identifiers are AIX's where the white paper gives one
(``RPVC_IO_TIMEOUT`` = D034B795); the others are the CRC-32 of the label, stable across
releases. Notification methods run through ``/bin/sh -c`` with ``$1``..``$9`` set as AIX does:
sequence, identifier, class, type, alert flags, resource name, resource type, resource class,
label.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from rpv.daemon.devdb import DeviceDB

log = structlog.get_logger("errlog")


@dataclass(frozen=True, slots=True)
class Template:
    label: str
    err_class: str  # H hardware, S software, O operator, U undetermined
    err_type: str  # PERM, TEMP, PERF, PEND, INFO, UNKN
    description: str
    probable_causes: tuple[str, ...]
    failure_causes: tuple[str, ...]
    recommended_actions: tuple[str, ...]
    identifier: str = ""

    def ident(self) -> str:
        return self.identifier or f"{zlib.crc32(self.label.encode()):08X}"


TEMPLATES: dict[str, Template] = {t.label: t for t in (
    Template(
        "RPVC_IO_TIMEOUT", "U", "PERM",
        "No response from RPV server within I/O timeout interval.",
        ("RPV server is down or not reachable.",),
        ("There is a problem with the data mirroring network.",
         "The node or site which hosts the RPV server is down.",
         "RPV server is not configured in the Available state."),
        ("Correct the problem which has caused the RPV server to be down or",
         "not reachable. Then, tell the RPV client to resume communication",
         "with the RPV server by running the command:",
         "chdev -l <device> -a resume=yes",
         "where <device> is the name of this RPV client device."),
        identifier="D034B795",
    ),
    Template(
        "RPVC_PATH_DOWN", "U", "TEMP",
        "One network path of an RPV client failed; I/O goes on over the others.",
        ("A network interface, switch or WAN circuit of this path is down.",),
        ("The path's connection failed or left requests unanswered for the path timeout.",),
        ("Repair the path's network. The RPV client tries the path again by itself and",
         "logs RPVC_PATH_UP when it answers."),
    ),
    Template(
        "RPVC_PATH_UP", "U", "INFO",
        "A network path of an RPV client that had failed answers again.",
        ("The path's network was repaired.",),
        ("None.",),
        ("None.",),
    ),
    Template(
        "LVM_SA_STALEPP", "H", "PERM",
        "Physical partitions marked stale.",
        ("Physical volume failed or is not reachable.",),
        ("A write to one mirror copy failed; the copy was marked stale so that",
         "it is not read until it is resynchronized."),
        ("Repair the physical volume or its RPV link, then run varyonvg on the",
         "volume group to resynchronize the stale partitions."),
    ),
    Template(
        "LVM_SA_QUORCLOSE", "H", "PERM",
        "Quorum lost, volume group closing.",
        ("Too many physical volumes of the volume group failed.",),
        ("Half or more of the volume group descriptor areas are not reachable.",),
        ("Repair the physical volumes or links, then vary the volume group on again.",),
    ),
    Template(
        "LVM_SA_PVMISS", "H", "PERM",
        "Physical volume is missing.",
        ("Physical volume failed or is not reachable.",),
        ("I/O to the physical volume failed.",),
        ("Repair the physical volume, then run varyonvg to return it to the volume group.",),
    ),
    Template(
        "LVM_IO_FAIL", "H", "PERM",
        "I/O failure on a logical volume.",
        ("No mirror copy of the logical partition could be read or written.",),
        ("All copies of the logical partition failed.",),
        ("Repair the physical volumes holding the logical volume.",),
    ),
    Template(
        "LVM_MISSPVADDED", "H", "INFO",
        "Missing physical volume added back to the volume group.",
        ("A physical volume that was missing was made active again.",),
        ("An administrator ran chpv -v a or varyonvg.",),
        ("None.",),
    ),
    Template(
        "LVM_AIO_CACHE_FULL", "S", "PERM",
        "Asynchronous mirroring fell back: the remote copy is stale where the I/O cache held "
        "writes.",
        ("The remote site was unreachable longer than the I/O cache could hold, or the I/O "
         "cache could not be written.",),
        ("Network or remote site outage; an I/O cache too small for the outage.",),
        ("Repair the link or the remote site; varyonvg the volume group (or syncvg) to "
         "resynchronize; the pool is asynchronous again once no stale partition is left. "
         "Consider a larger aio_cache logical volume.",),
    ),
    Template(
        "LVM_AIO_DISCARD", "O", "INFO",
        "Writes in the asynchronous I/O cache were discarded: another site ran the volume "
        "group since.",
        ("A failover: the disaster recovery site varied the volume group on while these "
         "writes had not reached it.",),
        ("The production site failed before the I/O cache was drained.",),
        ("None: the discarded ranges are resynchronized from the other site's copy. Check "
         "the application data that was written last before the failure.",),
    ),
    Template(
        "LVM_MISSPVRET", "H", "INFO",
        "Missing physical volume returned.",
        ("A physical volume that was missing is reachable again.",),
        ("The disk or its RPV link was repaired.",),
        ("Stale partitions are resynchronized; check lsvg for stale PPs.",),
    ),
)}


class ErrorLog:
    """Appends entries to the device database and runs matching notification methods."""

    def __init__(self, db: DeviceDB, node: str, machine_id: str,
                 now: Callable[[], float] = time.time):
        self._db = db
        self._node = node
        self._machine_id = machine_id
        self._now = now
        self._notify_tasks: set[asyncio.Task] = set()
        # resource name -> (Location, VPD lines); the device manager sets it once it exists
        self.locate: Callable[[str], tuple[str, list[str]]] = lambda _name: ("", [])

    def log(self, label: str, resource: str, resource_class: str = "", resource_type: str = "",
            detail: str = "") -> dict:
        t = TEMPLATES[label]
        location, vpd = self.locate(resource)
        entry = {
            "label": t.label, "identifier": t.ident(), "timestamp": self._now(),
            "machine_id": self._machine_id, "node": self._node,
            "class": t.err_class, "type": t.err_type,
            "resource": resource, "resource_class": resource_class,
            "resource_type": resource_type, "location": location, "vpd": vpd,
            "description": t.description,
            "probable_causes": list(t.probable_causes),
            "failure_causes": list(t.failure_causes),
            "recommended_actions": list(t.recommended_actions),
            "detail": detail,
        }
        entry["sequence"] = self._db.append_error(entry)
        log.warning("errlog_entry", label=t.label, identifier=entry["identifier"],
                    device=resource, sequence=entry["sequence"], detail=detail or None)
        self._notify(entry)
        return entry

    def entries(self) -> list[dict]:
        out = []
        for seq, e in self._db.errors():
            e["sequence"] = seq
            out.append(e)
        return out

    def _notify(self, entry: dict) -> None:
        for _id, label, resource, method in self._db.notifies():
            if label and label != entry["label"]:
                continue
            if resource and resource != entry["resource"]:
                continue
            args = [str(entry["sequence"]), entry["identifier"], entry["class"], entry["type"],
                    "FALSE", entry["resource"], entry["resource_type"],
                    entry["resource_class"], entry["label"]]
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                continue
            task = loop.create_task(_run_method(method, args))
            self._notify_tasks.add(task)
            task.add_done_callback(self._notify_tasks.discard)

    async def drain(self) -> None:
        """Wait for running notification methods (used at shutdown)."""
        if self._notify_tasks:
            await asyncio.wait(self._notify_tasks, timeout=10)


async def _run_method(method: str, args: list[str]) -> None:
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", method, "errnotify", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        rc = await asyncio.wait_for(proc.wait(), timeout=60)
        log.info("errnotify_ran", method=method, rc=rc, label=args[8])
    except (OSError, TimeoutError) as e:
        log.error("errnotify_failed", method=method, error=str(e))
