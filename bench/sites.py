"""What the benchmarks share: free ports, two sites on loopback, and an RPV client at site A
of a disk at site B reached through the fault proxy."""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rpv.faultproxy.client import start_proxy  # noqa: E402
from tests.sites import Site  # noqa: E402


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def two_sites(tmp: Path, same_port: bool = False) -> tuple[Site, Site]:
    """Site A (Philadelphia, 127.0.0.1) and site B (Poughkeepsie, 127.0.0.2), not started:
    the caller starts them with :func:`start` and stops them. ``same_port``: both listen on
    one port (fault proxies on other addresses then stand for B on that port too)."""
    port_b = free_port("127.0.0.2")
    b = Site("Poughkeepsie", "127.0.0.2", tmp / "b", node="nodeB", port=port_b)
    a = Site("Philadelphia", "127.0.0.1", tmp / "a", node="nodeA",
             port=port_b if same_port else free_port("127.0.0.1"))
    return a, b


def start(*sites: Site) -> None:
    for s in sites:
        s.start()
        s.ctl("rpvserver", "site", s.name)


def proxied_client(stack: contextlib.ExitStack, a: Site, b: Site, tmp: Path, size: str,
                   io_timeout: int, *attrs: str):
    """B's new hdisk1 (``size``) served to A, where it is RPV client hdisk2 through a fault
    proxy on 127.0.0.3 (closed with ``stack``); extra ``attr=value`` strings go to mkdev.
    Returns the proxy's control."""
    pvid = b.make_disk("hdisk1", size)
    b.serve(pvid, a.addr)
    _, proxy = stack.enter_context(start_proxy(
        "127.0.0.3:0", f"{b.addr}:{b.port}", source=a.addr, control=str(tmp / "proxy.sock")))
    host, port = proxy.listen_addr()
    extra = [x for attr in attrs for x in ("-a", attr)]
    a.ctl("mkdev", "-c", "disk", "-t", "rpvclient", "-a", f"pvid={pvid}",
          "-a", f"server_addr={host}", "-a", f"server_port={port}", "-a", f"local_addr={a.addr}",
          "-a", f"io_timeout={io_timeout}", *extra, "-l", "hdisk2")
    return proxy
