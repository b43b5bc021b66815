"""Who a daemon is this time: the host's boot and this start of the process.

A host that lost power forgot every write it had not synced, and a restarted daemon cannot
tell what its predecessor acknowledged. Peers compare these ids to notice either (DESIGN
invariant 10). ``GLVM_BOOT_ID`` overrides the kernel's boot id: test rigs that emulate a
power loss below the product give the restarted "host" a new one, as a real reboot would.
"""

from __future__ import annotations

import hashlib
import os

INSTANCE_SIZE = 16  # bytes of a server instance id (HELLO): 8 of boot id, 8 per daemon start

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This host's boot id (a new one after every boot)."""
    override = os.environ.get("GLVM_BOOT_ID")
    if override:
        return override.strip()
    try:
        with open(BOOT_ID_FILE) as f:
            return f.read().strip()
    except OSError:
        return ""


def boot_hash() -> bytes:
    """The first half of this host's instance ids: names the boot, not the boot id."""
    return hashlib.blake2b(boot_id().encode(), digest_size=INSTANCE_SIZE // 2).digest()


def new_instance() -> bytes:
    """A HELLO instance id: 8 bytes naming the boot, 8 random bytes naming this start."""
    return boot_hash() + os.urandom(INSTANCE_SIZE // 2)


def boot_of(instance: bytes) -> bytes:
    """The boot part of an instance id."""
    return instance[:INSTANCE_SIZE // 2]


def same_boot(a: bytes, b: bytes) -> bool:
    return boot_of(a) == boot_of(b)
