"""An RPV server in process, exporting one disk as rpvserver0 to 127.0.0.1."""

from __future__ import annotations

from rpv.blockdev import FileDisk, create_sparse_file
from rpv.client.device import RPVClient
from rpv.server.server import Export, Limits, RPVServer
from tests.helpers.rpv_frames import PVID


async def start_server(disk, port: int = 0, limits: Limits | None = None) -> RPVServer:
    export = Export("rpvserver0", "hdisk1", bytes.fromhex(PVID), "127.0.0.1", True, disk,
                    disk.size)
    server = RPVServer(lambda: [export], lambda: "siteB", "nodeB", limits or Limits())
    await server.start("127.0.0.1", port)
    return server


def port_of(server: RPVServer) -> int:
    return server._servers[0].sockets[0].getsockname()[1]


async def serve(disk) -> tuple[RPVServer, int]:
    """A started server on an ephemeral port, and that port."""
    server = await start_server(disk)
    return server, port_of(server)


async def serve_file(path: str, size: int) -> tuple[FileDisk, RPVServer, int]:
    """A new sparse disk file of ``size`` bytes as a FileDisk, served: (disk, server, port)."""
    create_sparse_file(path, size)
    disk = FileDisk("hdisk1", path)
    server, port = await serve(disk)
    return disk, server, port


def client_of(port: int, io_timeout: float = 10, name: str = "hdisk9", **kwargs) -> RPVClient:
    """An RPV client (not yet open) of the in-process server on ``port``, from 127.0.0.1."""
    return RPVClient(name, PVID, "127.0.0.1", "127.0.0.1", server_port=port,
                     io_timeout=io_timeout, **kwargs)
