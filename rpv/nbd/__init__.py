"""NBD export of block devices: a sans-IO protocol core and an asyncio server."""

from rpv.nbd.server import NBDServer

__all__ = ["NBDServer"]
