"""Chunk digests: one BLAKE2b-128 digest per CHECKSUM_CHUNK of a range (pure functions).

A neutral module: the RPV protocol's CHECKSUM reply carries these digests, disks compute them
locally and the LVM's verify compares them. It imports nothing from the project.
"""

from __future__ import annotations

from hashlib import blake2b

CHECKSUM_CHUNK = 65536  # one digest per chunk (the last may be short)
DIGEST_SIZE = 16  # bytes of one chunk digest (BLAKE2b-128)


def digests_size(length: int) -> int:
    """Bytes of digests covering ``length`` bytes: one DIGEST_SIZE digest per started chunk."""
    return -(-length // CHECKSUM_CHUNK) * DIGEST_SIZE


def chunk_digests(data: bytes | bytearray | memoryview) -> bytes:
    """The digests of ``data`` cut into CHECKSUM_CHUNK pieces (the last may be short),
    concatenated: exactly what a CHECKSUM reply carries for those bytes."""
    with memoryview(data) as view:
        return b"".join(
            blake2b(view[i : i + CHECKSUM_CHUNK], digest_size=DIGEST_SIZE).digest()
            for i in range(0, view.nbytes, CHECKSUM_CHUNK)
        )
