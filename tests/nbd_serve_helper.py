"""Serve FileDisk exports over NBD in a separate process, for interop tests and benchmarks.

    python tests/nbd_serve_helper.py --socket PATH [--tcp HOST:PORT] [--tls DIR]
                                     [--ro NAME] [--async NAME] NAME=FILE...

``--tls DIR`` makes the TCP listener require TLS with DIR/ca.pem, DIR/server.pem and
DIR/server.key (``glvmctl tls``'s layout).

``--async NAME`` hides FileDisk's synchronous fast path for that export, so every request
runs as a task (the path logical volumes and RPV disks take).

Prints ``READY`` (and, with ``--tcp``, ``TCP host port``) on stdout once listening; logs go to
stderr. SIGTERM/SIGINT close the server cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog
import uvloop

from rpv import tls
from rpv.blockdev import FileDisk
from rpv.nbd import NBDServer


class AsyncOnly:
    """A FileDisk seen only through the async BlockDevice interface."""

    def __init__(self, disk: FileDisk):
        self._disk = disk
        self.name = disk.name
        self.path = disk.path
        self.readonly = disk.readonly

    @property
    def size(self) -> int:
        return self._disk.size

    async def read(self, offset: int, length: int) -> bytes:
        return await self._disk.read(offset, length)

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self._disk.write(offset, data, fua)

    async def flush(self) -> None:
        await self._disk.flush()

    def close(self) -> None:
        self._disk.close()


class DictRegistry:
    def __init__(self, devices: dict):
        self.devices = devices

    def get_export(self, name: str):
        return self.devices.get(name)

    def list_exports(self) -> list[tuple[str, str]]:
        return [(name, f"file disk {dev.path}") for name, dev in sorted(self.devices.items())]


async def serve(args: argparse.Namespace) -> None:
    devices = {}
    for spec in args.exports:
        name, _, path = spec.partition("=")
        disk = FileDisk(name, path, readonly=name in args.ro)
        devices[name] = AsyncOnly(disk) if name in args.async_exports else disk
    server = NBDServer(DictRegistry(devices),
                       max_inflight_requests=args.max_inflight_requests,
                       max_inflight_bytes=args.max_inflight_bytes)
    await server.start_unix(args.socket)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        ctx = None
        if args.tls:
            d = args.tls
            ctx = tls.server_context(f"{d}/ca.pem", f"{d}/server.pem", f"{d}/server.key")
        for h, p in await server.start_tcp(host, int(port), tls=ctx):
            print(f"TCP {h} {p}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await server.close(grace=5)
    for dev in devices.values():
        dev.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--tcp")
    parser.add_argument("--tls")
    parser.add_argument("--ro", action="append", default=[])
    parser.add_argument("--async", dest="async_exports", action="append", default=[])
    parser.add_argument("--max-inflight-requests", type=int, default=128)
    parser.add_argument("--max-inflight-bytes", type=int, default=64 << 20)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("exports", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args()
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(args.log_level),
    )
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
