"""Events produced by :class:`rpv.protocol.connection.Connection` (small frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rpv.instance import INSTANCE_SIZE

from .constants import VERSION, DeviceState, Opcode


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """Server side of the HELLO handshake (payload of a successful HELLO reply)."""

    server_site: str
    server_node: str
    disk_name: str
    disk_size: int
    block_size: int
    max_payload: int
    max_outstanding: int
    features: int = 0
    version: int = VERSION
    # who answered: a hash of the server host's boot id, then a random id of this daemon
    # start. A client that sees it change treats unflushed writes as lost (DESIGN inv. 10).
    instance: bytes = bytes(INSTANCE_SIZE)


@dataclass(frozen=True, slots=True)
class DiscoverEntry:
    """One exported disk in a DISCOVER reply."""

    server_name: str
    disk_name: str
    pvid: bytes
    size: int
    state: DeviceState


@dataclass(frozen=True, slots=True)
class DiscoverInfo:
    """Payload of a successful DISCOVER reply."""

    site: str
    node: str
    entries: tuple[DiscoverEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events."""


@dataclass(frozen=True, slots=True)
class Request(Event):
    """Base of request events (received by the server)."""

    opcode: ClassVar[Opcode]
    request_id: int


@dataclass(frozen=True, slots=True)
class HelloRequest(Request):
    opcode: ClassVar[Opcode] = Opcode.HELLO
    min_version: int
    max_version: int
    features: int
    pvid: bytes
    client_site: str
    client_node: str


@dataclass(frozen=True, slots=True)
class DiscoverRequest(Request):
    opcode: ClassVar[Opcode] = Opcode.DISCOVER


@dataclass(frozen=True, slots=True)
class ReadRequest(Request):
    opcode: ClassVar[Opcode] = Opcode.READ
    offset: int
    length: int
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class WriteRequest(Request):
    opcode: ClassVar[Opcode] = Opcode.WRITE
    offset: int
    data: bytes
    deadline_ms: int
    fua: bool = False


@dataclass(frozen=True, slots=True)
class FlushRequest(Request):
    opcode: ClassVar[Opcode] = Opcode.FLUSH
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class PingRequest(Request):
    opcode: ClassVar[Opcode] = Opcode.PING
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class ChecksumRequest(Request):
    opcode: ClassVar[Opcode] = Opcode.CHECKSUM
    offset: int
    length: int
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class Reply(Event):
    """Base of reply events (received by the client). ``status`` is 0 or an errno;
    ``message`` is the server's diagnostic text for an error ("" on success)."""

    opcode: ClassVar[Opcode]
    request_id: int
    status: int
    message: str

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True, slots=True)
class HelloReply(Reply):
    opcode: ClassVar[Opcode] = Opcode.HELLO
    info: HelloInfo | None


@dataclass(frozen=True, slots=True)
class DiscoverReply(Reply):
    opcode: ClassVar[Opcode] = Opcode.DISCOVER
    info: DiscoverInfo | None


@dataclass(frozen=True, slots=True)
class ReadReply(Reply):
    opcode: ClassVar[Opcode] = Opcode.READ
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteReply(Reply):
    opcode: ClassVar[Opcode] = Opcode.WRITE


@dataclass(frozen=True, slots=True)
class FlushReply(Reply):
    opcode: ClassVar[Opcode] = Opcode.FLUSH


@dataclass(frozen=True, slots=True)
class PingReply(Reply):
    opcode: ClassVar[Opcode] = Opcode.PING


@dataclass(frozen=True, slots=True)
class ChecksumReply(Reply):
    """``digests``: one DIGEST_SIZE digest per CHECKSUM_CHUNK of the range (b"" on error)."""

    opcode: ClassVar[Opcode] = Opcode.CHECKSUM
    digests: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed the connection cleanly (EOF between frames)."""


@dataclass(frozen=True, slots=True)
class ProtocolError(Event):
    """Fatal: the peer violated the protocol; the connection is now CLOSED.

    ``code`` is an errno (EPROTO, EMSGSIZE, EBUSY). ``request_id``/``opcode`` are set when
    the offending frame's header was readable, so a server may send a last error reply.
    """

    code: int
    message: str
    request_id: int | None = None
    opcode: Opcode | None = None

