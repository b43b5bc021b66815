"""The local addresses an RPV client could connect from (the seed's SMIT pick list).

Candidates are the addresses of this host's interfaces that are up, of the server address's
family, with the one the routing table would choose first. Which of them really reach the
RPV server is for the caller to find out (a DISCOVER from each).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket


def route_source(server_addr: str) -> str | None:
    """The local address the kernel would use to reach ``server_addr`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in server_addr else socket.AF_INET,
                           socket.SOCK_DGRAM) as s:
            s.connect((server_addr, 9))
            return s.getsockname()[0]
    except OSError:
        return None


async def interface_addresses(timeout: float = 5.0) -> list[str]:
    """Addresses of the interfaces that are up (``ip -json addr``); [] without iproute2."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip", "-json", "addr", "show", "up", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        links = json.loads(out or b"[]")
    except (OSError, TimeoutError, ValueError):
        return []
    return [a["local"] for link in links if isinstance(link, dict)
            for a in link.get("addr_info", []) if isinstance(a, dict) and "local" in a]


async def candidates(server_addr: str, limit: int = 16) -> list[str]:
    """Local addresses to try for ``server_addr``: the routed one first, then the others of
    the same family (link-local IPv6 left out: it needs a scope); at most ``limit``."""
    family = ipaddress.ip_address(server_addr).version
    out = [a for a in [route_source(server_addr)] if a]
    for a in await interface_addresses():
        ip = ipaddress.ip_address(a)
        if ip.version == family and not ip.is_link_local and a not in out:
            out.append(a)
    return out[:limit]
