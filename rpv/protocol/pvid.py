"""PVID conversions: 16 raw bytes on the wire, 32 lowercase hex digits for people."""

from __future__ import annotations

import re

PVID_SIZE = 16
_HEX = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{16}")


def pvid_to_bytes(s: str) -> bytes:
    """Parse a PVID of 32 hex digits (or AIX's 16-digit short form, zero-padded on the right)."""
    if not isinstance(s, str):
        raise TypeError(f"PVID must be a str, not {type(s).__name__}")
    if _HEX.fullmatch(s) is None:
        raise ValueError(f"invalid PVID {s!r}: expected 32 (or 16) hex digits")
    return bytes.fromhex(s.ljust(2 * PVID_SIZE, "0"))


def pvid_to_str(b: bytes) -> str:
    """Format 16 raw PVID bytes as 32 lowercase hex digits."""
    b = bytes(memoryview(b))
    if len(b) != PVID_SIZE:
        raise ValueError(f"PVID must be {PVID_SIZE} bytes, got {len(b)}")
    return b.hex()
