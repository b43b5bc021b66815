"""CHECKSUM digests: one BLAKE2b-128 digest per CHECKSUM_CHUNK of a range (pure functions)."""

from __future__ import annotations

from hashlib import blake2b

from .constants import CHECKSUM_CHUNK, DIGEST_SIZE


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
