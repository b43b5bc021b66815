"""Talking to an rpvd by hand: a raw RPV client socket, and the bytes of a backing file to see
what landed."""

from __future__ import annotations

import socket

from rpv import protocol as pc


def file_bytes(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class RawClient:
    """A hand-driven RPV client socket bound to a chosen source address."""

    def __init__(self, server, source: str):
        self.sock = socket.create_connection((server.addr, server.port), timeout=5,
                                             source_address=(source, 0))
        self.conn = pc.Connection(pc.Role.CLIENT)

    def send(self, buffers) -> None:
        self.sock.sendall(b"".join(bytes(b) for b in buffers))

    def event(self):
        while True:
            ev = self.conn.next_event()
            if ev is not pc.NEED_DATA:
                return ev
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            self.conn.receive_data(data)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
