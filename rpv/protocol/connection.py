"""Sans-IO RPV connection: bytes in -> events out, method calls -> bytes out (h11 style).

Parsing never raises on bad bytes; it returns a :class:`ProtocolError` event, after which
the connection is CLOSED and yields nothing more. Limits are checked from the header before
any payload is buffered. Misuse by the local caller raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from errno import EBUSY, EMSGSIZE, EPROTO
from types import MappingProxyType

from rpv import speedups
from rpv.buffers import BufferPool

from . import compress as _z
from . import frames as _f
from .constants import (
    DEFAULT_FEATURES,
    FLAG_COMPRESSED,
    FLAG_FUA,
    FLAG_REPLY,
    KNOWN_FLAGS,
    MAGIC,
    MAX_MESSAGE,
    VERSION,
    Opcode,
)
from .events import (
    ConnectionClosed,
    DiscoverInfo,
    Event,
    HelloInfo,
    ProtocolError,
    WriteReply,
    WriteRequest,
)
from .frames import EMPTY, OPCODES, OpSpec, Scope
from .pvid import PVID_SIZE, pvid_to_bytes

Buffer = bytes | bytearray | memoryview
"""Bytes-like data accepted for payloads and returned for ``transport.writelines()``."""

__all__ = [
    "MIN_PAYLOAD_LIMIT",
    "Buffer",
    "NEED_DATA",
    "TRANSITIONS",
    "Connection",
    "Kind",
    "LocalProtocolError",
    "Role",
    "State",
]


class _FastEnum(Enum):
    """Enum hashed by identity (members are singletons): C-speed TRANSITIONS lookups."""

    __hash__ = object.__hash__


class Role(_FastEnum):
    CLIENT = "client"
    SERVER = "server"


class State(_FastEnum):
    IDLE = "IDLE"  # client: no session yet
    HELLO_SENT = "HELLO_SENT"  # client: HELLO outstanding
    AWAIT_HELLO = "AWAIT_HELLO"  # server: no session yet
    HELLO_RECEIVED = "HELLO_RECEIVED"  # server: HELLO received, reply not yet sent
    READY = "READY"  # session established, I/O allowed
    CLOSED = "CLOSED"  # after EOF or a protocol error; absorbs everything


class Kind(_FastEnum):
    """What happens to an opcode: a request, an OK reply, or an error reply."""

    REQUEST = "request"
    OK = "ok"
    ERROR = "error"


class _Sentinel(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _Sentinel.NEED_DATA
"""Returned by :meth:`Connection.next_event` when more bytes are needed."""


class LocalProtocolError(Exception):
    """The local caller misused the connection (a programming error, not bad bytes)."""


# --- the one transition table ------------------------------------------------------------

_C, _S = Role.CLIENT, Role.SERVER
_REQ, _OK, _ERR = Kind.REQUEST, Kind.OK, Kind.ERROR
_ALL_KINDS = (_REQ, _OK, _ERR)
_REPLIES = (_OK, _ERR)
_SESSIONLESS = tuple(op for op, spec in OPCODES.items() if spec.scope is Scope.ANYTIME)
_SESSION = tuple(op for op, spec in OPCODES.items() if spec.scope is not Scope.HELLO)


def _stay(role: Role, state: State, ops, kinds) -> dict:
    return {(role, state, op, kind): state for op in ops for kind in kinds}


TRANSITIONS: dict[tuple[Role, State, Opcode, Kind], State] = {
    # The client sends requests and receives replies.
    (_C, State.IDLE, Opcode.HELLO, _REQ): State.HELLO_SENT,
    (_C, State.HELLO_SENT, Opcode.HELLO, _OK): State.READY,
    (_C, State.HELLO_SENT, Opcode.HELLO, _ERR): State.IDLE,
    **_stay(_C, State.IDLE, _SESSIONLESS, _ALL_KINDS),
    **_stay(_C, State.HELLO_SENT, _SESSIONLESS, _REPLIES),  # replies to requests sent in IDLE
    **_stay(_C, State.READY, _SESSION, _ALL_KINDS),
    # The server receives requests and sends replies.
    (_S, State.AWAIT_HELLO, Opcode.HELLO, _REQ): State.HELLO_RECEIVED,
    (_S, State.HELLO_RECEIVED, Opcode.HELLO, _OK): State.READY,
    (_S, State.HELLO_RECEIVED, Opcode.HELLO, _ERR): State.AWAIT_HELLO,
    **_stay(_S, State.AWAIT_HELLO, _SESSIONLESS, _ALL_KINDS),
    **_stay(_S, State.HELLO_RECEIVED, _SESSIONLESS, _REPLIES),
    **_stay(_S, State.READY, _SESSION, _ALL_KINDS),
}
"""(role, state, opcode, kind) -> next state. Missing keys are illegal; CLOSED has none."""

MIN_PAYLOAD_LIMIT = MAX_MESSAGE
"""Smallest allowed ``max_payload``: every HELLO payload and error message must fit."""

_INITIAL = {Role.CLIENT: State.IDLE, Role.SERVER: State.AWAIT_HELLO}
_U32 = 0xFFFFFFFF


DIRECT_PAYLOAD = 64 * 1024
"""Payloads at least this large are received straight into their own buffer (one copy)."""
RECV_CHUNK = 256 * 1024
"""Size of the scratch buffer that headers and small frames are received into."""


class _Fail(Exception):
    """Internal: carries a protocol error out of the parser."""

    def __init__(self, code: int, message: str, request_id=None, opcode=None):
        self.error = ProtocolError(code, message, request_id, opcode)


class Connection:
    """One end of an RPV connection.

    ``max_payload`` bounds any received payload (and the caller's own reads/writes), at
    least ``MIN_PAYLOAD_LIMIT`` (1024) so control frames always fit;
    ``max_outstanding`` bounds requests in flight (received by a server, sent by a client).

    ``compress`` (client): the codec to ask for in HELLO ("none", "zstd", "lz4"). The session
    compresses only if the server's HELLO reply accepts it (:attr:`codec`); the caller
    decides what a refusal means. A server uses the codec its HELLO reply accepts.
    ``on_payload(is_write, raw, wire)`` is called for every WRITE and READ data payload this
    end sends or receives: its size before and after compression (counters only).
    """

    def __init__(
        self,
        role: Role,
        max_payload: int = 4 * 1024 * 1024,
        max_outstanding: int = 256,
        *,
        compress: str = _z.NONE,
        on_payload: Callable[[bool, int, int], None] | None = None,
        buffers: BufferPool | None = None,
    ) -> None:
        if not isinstance(role, Role):
            raise TypeError(f"role must be a Role, not {role!r}")
        if not MIN_PAYLOAD_LIMIT <= max_payload <= _U32:
            raise ValueError(f"max_payload must be in {MIN_PAYLOAD_LIMIT}..{_U32}")
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be positive")
        if compress not in _z.CODEC_NAMES:
            raise ValueError(f"compress must be one of {', '.join(_z.CODEC_NAMES)}")
        if compress != _z.NONE and compress not in _z.available():
            raise ValueError(f"compress={compress}: the library is not installed")
        self.compress = compress
        self.on_payload = on_payload
        # large WRITE payloads at a server (their owner gives them back); a client's READ
        # payloads go on to callers that keep them, so they are always fresh
        self._buffers = buffers if buffers is not None and role is Role.SERVER \
            else BufferPool(0)
        self._codec: _z.Codec | None = None  # negotiated in HELLO
        self._hello_features = 0  # the features the HELLO request asked for
        self.role = role
        self.max_payload = max_payload
        self.max_outstanding = max_outstanding
        self._state = _INITIAL[role]
        self._outstanding: dict[int, tuple[Opcode, int]] = {}
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._frame: tuple | None = None  # validated header waiting for its payload
        self._big: bytearray | None = None  # that frame's large payload, being filled
        self._big_got = 0
        self._scratch: bytearray | None = None

    # --- introspection ---------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def codec(self) -> str | None:
        """The compression codec of the session ("zstd", "lz4"), None when uncompressed."""
        return None if self._codec is None else self._codec.name

    @property
    def outstanding(self) -> Mapping[int, tuple[Opcode, int]]:
        """Read-only view: request_id -> (opcode, length) of requests awaiting a reply."""
        return MappingProxyType(self._outstanding)

    @property
    def buffered(self) -> int:
        """Received bytes not yet turned into events."""
        return len(self._buf) - self._pos + (self._big_got if self._big is not None else 0)

    # --- receiving -------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed (EOF)."""
        if self._state is State.CLOSED or self._eof:
            return
        if not data:
            self._eof = True
            return
        big = self._big
        if big is not None:
            got = self._big_got
            n = min(len(big) - got, len(data))
            big[got:got + n] = memoryview(data)[:n]
            self._big_got = got + n
            if n == len(data):
                return
            data = memoryview(data)[n:]
        buf = self._buf
        if self._pos:
            if self._pos == len(buf):
                buf.clear()
            else:
                del buf[: self._pos]  # O(1) front trim in CPython
            self._pos = 0
        buf += data

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes go (``asyncio.BufferedProtocol``): straight into a
        large payload while one is being received, else a scratch buffer. Follow with
        :meth:`buffer_updated`."""
        big = self._big
        if big is not None and self._big_got < len(big):
            return memoryview(big)[self._big_got:]
        if self._scratch is None:
            self._scratch = bytearray(RECV_CHUNK)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were received into the buffer :meth:`get_buffer` returned."""
        big = self._big
        if big is not None and self._big_got < len(big):
            self._big_got += nbytes
        elif nbytes:
            self.receive_data(memoryview(self._scratch)[:nbytes])

    def events(self) -> Iterator[Event]:
        """Yield every event available now."""
        while (event := self.next_event()) is not NEED_DATA:
            yield event

    def next_event(self) -> Event | _Sentinel:
        """Return the next event, or NEED_DATA. Never raises on bad bytes."""
        if self._state is State.CLOSED:
            return NEED_DATA
        try:
            return self._next_event()
        except _Fail as fail:
            self._close()
            return fail.error

    def _close(self) -> None:
        self._state = State.CLOSED  # ``outstanding`` is kept: the caller may fail those
        self._buf = bytearray()
        self._pos = 0
        self._frame = None
        self._big = None

    def _need_data(self, avail: int) -> Event | _Sentinel:
        if not self._eof:
            return NEED_DATA
        frame = self._frame
        if frame is not None:
            raise _Fail(
                EPROTO, "connection closed in the middle of a frame", frame[2], frame[1].opcode
            )
        if avail:
            raise _Fail(EPROTO, "connection closed in the middle of a frame")
        self._close()
        return ConnectionClosed()

    def _next_event(self) -> Event | _Sentinel:
        buf = self._buf
        pos = self._pos
        frame = self._frame
        if frame is None and self._state is State.READY:  # the common frames in one call
            if self.role is Role.CLIENT:
                fast = _hot.take_write_reply(buf, pos, self._outstanding, Opcode.WRITE,
                                             WriteReply)
            else:
                fast = _hot.take_write_request(buf, pos, self._outstanding,
                                               self.max_outstanding, self.max_payload,
                                               Opcode.WRITE, self.on_payload, WriteRequest)
            if fast is not None:
                self._pos = fast[1]
                return fast[0]
        avail = len(buf) - pos
        if frame is None:
            if avail < 20:
                if avail and not _MAGIC_PREFIX.startswith(buf[pos : pos + 5]):
                    self._bad_prefix(buf[pos : pos + 5])
                return self._need_data(avail)
            magic, version, opcode, flags, rid, plen = _HEADER_UNPACK(buf, pos)
            if magic != MAGIC:
                raise _Fail(EPROTO, f"bad magic 0x{magic:08x}")
            if version != VERSION:
                raise _Fail(EPROTO, f"unsupported protocol version {version}")
            spec = OPCODES.get(opcode)
            if spec is None:
                raise _Fail(EPROTO, f"unknown opcode {opcode}", rid)
            op = spec.opcode
            if flags & ~KNOWN_FLAGS:
                raise _Fail(EPROTO, f"unknown flag bits 0x{flags:04x}", rid, op)
            if plen > self.max_payload:
                raise _Fail(
                    EMSGSIZE, f"payload of {plen} bytes exceeds limit {self.max_payload}", rid, op
                )
            if flags & FLAG_REPLY:
                if avail < 24:
                    return self._need_data(avail)
                (status,) = _REPLY_EXT_UNPACK(buf, pos + 20)
                frame = self._check_reply(spec, flags, rid, plen, status)
                pos += 24
                avail -= 24
            else:
                if avail < 36:
                    return self._need_data(avail)
                offset, length, deadline = _REQUEST_EXT_UNPACK(buf, pos + 20)
                frame = self._check_request(spec, flags, rid, plen, offset, length, deadline)
                pos += 36
                avail -= 36
            self._pos = pos
            self._frame = frame
        plen = frame[3]
        big = self._big
        if big is not None:
            if self._big_got < plen:
                return self._need_data(avail)
            self._big = None
            self._frame = None
            return self._complete(frame, big)
        if avail < plen:
            if plen >= DIRECT_PAYLOAD:  # collect the rest in place, not through _buf
                big = self._big = self._buffers.take(plen)  # plen checked against max_payload
                big[:avail] = memoryview(buf)[pos:pos + avail]
                self._big_got = avail
                self._pos = pos + avail
            return self._need_data(avail)
        self._frame = None
        if plen:
            end = pos + plen
            with memoryview(buf) as view:
                payload = view[pos:end].tobytes()
            self._pos = end
        else:
            payload = b""
        return self._complete(frame, payload)

    def _bad_prefix(self, head: bytes) -> None:
        if not _MAGIC_PREFIX[:4].startswith(head[:4]):
            raise _Fail(EPROTO, f"bad magic {bytes(head[:4])!r}")
        raise _Fail(EPROTO, f"unsupported protocol version {head[4]}")

    def _check_request(self, spec, flags, rid, plen, offset, length, deadline) -> tuple:
        op = spec.opcode
        if self.role is not Role.SERVER:
            raise _Fail(EPROTO, f"client received a {op.name} request", rid, op)
        if flags & FLAG_FUA and not spec.fua:
            raise _Fail(EPROTO, f"FUA flag on a {op.name} request", rid, op)
        if (Role.SERVER, self._state, op, Kind.REQUEST) not in TRANSITIONS:
            raise _Fail(EPROTO, f"{op.name} not allowed in state {self._state.name}", rid, op)
        outstanding = self._outstanding
        if rid in outstanding:
            raise _Fail(EPROTO, f"request id {rid} already outstanding", rid, op)
        if len(outstanding) >= self.max_outstanding:
            raise _Fail(EBUSY, f"more than {self.max_outstanding} requests outstanding", rid, op)
        if not spec.ranged and (offset or length):
            raise _Fail(EPROTO, f"{op.name} request with offset/length", rid, op)
        request = spec.request
        size = request.size
        if flags & FLAG_COMPRESSED:
            self._check_compressed(spec.compress_request, op, rid, plen, length)
        elif (
            plen != size(length)
            if size is not None
            else plen < request.min_size or plen > request.max_size
        ):
            raise _Fail(EPROTO, _size_error(op, request, plen, length, False), rid, op)
        if not _length_ok(spec, length, self.max_payload):
            raise _Fail(*_length_error(spec, length, self.max_payload), rid, op)
        return (Kind.REQUEST, spec, rid, plen, offset, length, deadline, flags)

    def _check_reply(self, spec, flags, rid, plen, status) -> tuple:
        op = spec.opcode
        if self.role is not Role.CLIENT:
            raise _Fail(EPROTO, f"server received a {op.name} reply", rid, op)
        if flags & FLAG_FUA:
            raise _Fail(EPROTO, "FUA flag on a reply", rid, op)
        entry = self._outstanding.get(rid)
        if entry is None:
            raise _Fail(EPROTO, f"reply to unknown request id {rid}", rid, op)
        if entry[0] is not op:
            raise _Fail(EPROTO, f"{op.name} reply to {entry[0].name} request {rid}", rid, op)
        kind = Kind.ERROR if status else Kind.OK
        if (Role.CLIENT, self._state, op, kind) not in TRANSITIONS:
            raise _Fail(EPROTO, f"{op.name} reply not allowed in state {self._state.name}", rid, op)
        if flags & FLAG_COMPRESSED:
            if status:
                raise _Fail(EPROTO, f"compressed {op.name} error reply", rid, op)
            self._check_compressed(spec.compress_reply, op, rid, plen, entry[1])
        elif status:
            if plen > MAX_MESSAGE:
                raise _Fail(EMSGSIZE, f"error message of {plen} bytes", rid, op)
        else:
            reply = spec.reply
            size = reply.size
            if (
                plen != size(entry[1])
                if size is not None
                else plen < reply.min_size or plen > reply.max_size
            ):
                raise _Fail(EPROTO, _size_error(op, reply, plen, entry[1], True), rid, op)
        return (kind, spec, rid, plen, status, flags)

    def _check_compressed(self, allowed: bool, op, rid, plen, length) -> None:
        """Header rules of a COMPRESSED payload that decodes to ``length`` bytes."""
        if not allowed:
            raise _Fail(EPROTO, f"COMPRESSED flag on a {op.name} frame", rid, op)
        if self._codec is None:
            raise _Fail(EPROTO, f"compressed {op.name} without negotiated compression", rid, op)
        if length > self.max_payload:
            raise _Fail(
                EMSGSIZE, f"{op.name} of {length} bytes exceeds limit {self.max_payload}", rid, op
            )
        if not 0 < plen <= length:
            raise _Fail(EPROTO, f"compressed {op.name} payload of {plen} bytes for {length}",
                        rid, op)

    def _inflate(self, payload: bytes, length: int, rid, op) -> bytes:
        try:
            return self._codec.decompress(payload, length)
        except _z.CodecError as exc:
            raise _Fail(EPROTO, f"bad compressed {op.name} payload: {exc}", rid, op) from None

    def _complete(self, frame: tuple, payload: bytes) -> Event:
        kind, spec, rid = frame[0], frame[1], frame[2]
        op = spec.opcode
        next_state = TRANSITIONS.get((self.role, self._state, op, kind))
        if next_state is None:  # pragma: no cover - guarded at header time
            raise _Fail(EPROTO, f"{op.name} not allowed in state {self._state.name}", rid, op)
        try:
            if kind is Kind.REQUEST:
                _, _, _, plen, offset, length, deadline, flags = frame
                if spec.compress_request:  # WRITE: count (and decompress) its data
                    if flags & FLAG_COMPRESSED:
                        payload = self._inflate(payload, length, rid, op)
                    if self.on_payload is not None:
                        self.on_payload(True, length, plen)
                decode = spec.request.decode
                body = None if decode is None else decode(payload)
                event = spec.request_event(rid, offset, length, deadline, flags, body)
                if op is Opcode.HELLO:
                    self._hello_features = body["features"]
                self._outstanding[rid] = (op, length)
            elif frame[4]:
                try:
                    message = payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Fail(EPROTO, "error message is not UTF-8", rid, op) from None
                event = spec.reply_event(rid, frame[4], message, *spec.error_body)
                del self._outstanding[rid]
            else:
                if spec.compress_reply:  # READ: count (and decompress) its data
                    plen = frame[3]
                    length = self._outstanding[rid][1]
                    if frame[5] & FLAG_COMPRESSED:
                        payload = self._inflate(payload, length, rid, op)
                    if self.on_payload is not None:
                        self.on_payload(False, length, plen)
                decode = spec.reply.decode
                if decode is None:
                    event = spec.reply_event(rid, 0, "")
                else:
                    event = spec.reply_event(rid, 0, "", decode(payload))
                if op is Opcode.HELLO:
                    self._codec = self._negotiated(event.info.features)
                del self._outstanding[rid]
        except _f.PAYLOAD_ERRORS as exc:
            raise _Fail(EPROTO, f"malformed {op.name} payload: {exc}", rid, op) from None
        self._state = next_state
        return event

    # --- sending: client -------------------------------------------------------------

    def send_hello(
        self,
        request_id: int,
        pvid: bytes | str,
        client_site: str,
        client_node: str,
        features: int = DEFAULT_FEATURES,
        *,
        min_version: int = VERSION,
        max_version: int = VERSION,
        deadline_ms: int = 0,
    ) -> list[Buffer]:
        """HELLO: ask for the disk ``pvid`` (16 bytes or hex text)."""
        if isinstance(pvid, str):
            try:
                pvid = pvid_to_bytes(pvid)
            except ValueError as exc:
                raise LocalProtocolError(str(exc)) from None
        if len(pvid) != PVID_SIZE:
            raise LocalProtocolError(f"PVID must be {PVID_SIZE} bytes")
        if self.compress != _z.NONE:
            features |= _z.FEATURES[self.compress]
        payload = self._encode(
            _f.encode_hello_request,
            min_version,
            max_version,
            features,
            bytes(pvid),
            client_site,
            client_node,
        )
        head = self._request(Opcode.HELLO, 0, request_id, len(payload), 0, 0, deadline_ms)
        self._hello_features = features
        return [head + payload]

    def send_discover(self, request_id: int, deadline_ms: int = 0) -> list[Buffer]:
        return [self._request(Opcode.DISCOVER, 0, request_id, 0, 0, 0, deadline_ms)]

    def send_read(
        self, request_id: int, offset: int, length: int, deadline_ms: int
    ) -> list[Buffer]:
        return [self._request(Opcode.READ, 0, request_id, 0, offset, length, deadline_ms)]

    def send_checksum(
        self, request_id: int, offset: int, length: int, deadline_ms: int
    ) -> list[Buffer]:
        """CHECKSUM: ask for the digests of ``length`` bytes at ``offset`` (see chunk_digests)."""
        return [self._request(Opcode.CHECKSUM, 0, request_id, 0, offset, length, deadline_ms)]

    def send_write(
        self, request_id: int, offset: int, data: Buffer, deadline_ms: int, fua: bool = False
    ) -> list[Buffer]:
        """WRITE: returns [header, data]; ``data`` is not copied (unless it is compressed,
        which the session's codec does when that pays)."""
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        flags = FLAG_FUA if fua else 0
        if size > self.max_payload:
            raise LocalProtocolError(f"WRITE of {size} bytes exceeds limit {self.max_payload}")
        wire = data
        if self._codec is not None and size:
            packed = self._codec.compress(data)
            if packed is not None:
                wire, flags = packed, flags | FLAG_COMPRESSED
        plen = size if wire is data else len(wire)
        head = None
        if self._state is State.READY and self.role is Role.CLIENT and plen <= self.max_payload:
            head = _hot.write_request(self._outstanding, self.max_outstanding, request_id,
                                      flags, plen, offset, size, deadline_ms, Opcode.WRITE)
        if head is None:  # (the general encoder says what is wrong, if anything is)
            head = self._request(Opcode.WRITE, flags, request_id, plen, offset, size,
                                 deadline_ms)
        if self.on_payload is not None:
            self.on_payload(True, size, plen)
        return [head, wire] if size else [head]

    def send_flush(self, request_id: int, deadline_ms: int) -> list[Buffer]:
        return [self._request(Opcode.FLUSH, 0, request_id, 0, 0, 0, deadline_ms)]

    def send_ping(self, request_id: int, deadline_ms: int) -> list[Buffer]:
        return [self._request(Opcode.PING, 0, request_id, 0, 0, 0, deadline_ms)]

    def _request(self, op, flags, rid, plen, offset, length, deadline) -> bytes:
        if plen > self.max_payload:
            raise LocalProtocolError(f"{op.name} of {plen} bytes exceeds limit {self.max_payload}")
        spec = OPCODES[op]
        if not _length_ok(spec, length, self.max_payload):
            raise LocalProtocolError(_length_error(spec, length, self.max_payload)[1])
        if self.role is not Role.CLIENT:
            raise LocalProtocolError(f"only a client sends requests ({op.name})")
        next_state = TRANSITIONS.get((Role.CLIENT, self._state, op, Kind.REQUEST))
        if next_state is None:
            raise LocalProtocolError(f"cannot send {op.name} in state {self._state.name}")
        outstanding = self._outstanding
        if rid in outstanding:
            raise LocalProtocolError(f"request id {rid} already outstanding")
        if len(outstanding) >= self.max_outstanding:
            raise LocalProtocolError(f"already {self.max_outstanding} requests outstanding")
        try:
            head = _f.pack_request_head(op, flags, rid, plen, offset, length, deadline)
        except struct.error as exc:
            raise LocalProtocolError(f"{op.name} field out of range: {exc}") from None
        outstanding[rid] = (op, length)
        self._state = next_state
        return head

    # --- sending: server -------------------------------------------------------------

    def send_hello_reply(self, request_id: int, info: HelloInfo) -> list[Buffer]:
        """Successful HELLO reply; the session becomes READY. It compresses with the codec
        whose feature bit both the request and ``info.features`` carry."""
        payload = self._encode(_f.encode_hello_reply, info)
        head = self._reply(Opcode.HELLO, request_id, 0, len(payload))
        self._codec = self._negotiated(info.features)
        return [head + payload]

    def send_discover_reply(self, request_id: int, info: DiscoverInfo) -> list[Buffer]:
        payload = self._encode(_f.encode_discover_reply, info)
        return [self._reply(Opcode.DISCOVER, request_id, 0, len(payload)) + payload]

    def send_read_reply(self, request_id: int, data: Buffer) -> list[Buffer]:
        """Successful READ reply: returns [header, data]; ``data`` is not copied (unless it
        is compressed, which the session's codec does when that pays)."""
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        wire, flags = data, FLAG_REPLY
        if self._codec is not None and size:
            packed = self._codec.compress(data)
            if packed is not None:
                wire, flags = packed, FLAG_REPLY | FLAG_COMPRESSED
        plen = size if wire is data else len(wire)
        head = self._reply(Opcode.READ, request_id, 0, plen, size, flags)
        if self.on_payload is not None:
            self.on_payload(False, size, plen)
        return [head, wire] if size else [head]

    def send_checksum_reply(self, request_id: int, digests: Buffer) -> list[Buffer]:
        """Successful CHECKSUM reply: returns [header, digests]; one digest per chunk."""
        size = digests.nbytes if isinstance(digests, memoryview) else len(digests)
        head = self._reply(Opcode.CHECKSUM, request_id, 0, size)
        return [head, digests]

    def send_reply(self, request_id: int, opcode: Opcode) -> list[Buffer]:
        """Empty OK reply to a WRITE, FLUSH or PING."""
        if opcode is Opcode.WRITE and self._state is State.READY and self.role is Role.SERVER:
            head = _hot.write_reply(self._outstanding, request_id, Opcode.WRITE)
            if head is not None:
                return [head]
        spec = OPCODES.get(opcode)
        if spec is None or spec.reply is not EMPTY:
            raise LocalProtocolError(f"send_reply cannot answer opcode {opcode!r}")
        return [self._reply(Opcode(opcode), request_id, 0, 0)]

    def send_error(
        self, request_id: int, opcode: Opcode, status: int, message: str = ""
    ) -> list[Buffer]:
        """Error reply (status is an errno); ``message`` is cut to 1024 UTF-8 bytes."""
        if not 0 < status <= _U32:
            raise LocalProtocolError(f"error status must be a non-zero errno, not {status}")
        if opcode not in OPCODES:
            raise LocalProtocolError(f"unknown opcode {opcode}")
        msg = _f.encode_message(message)
        return [self._reply(Opcode(opcode), request_id, status, len(msg)) + msg]

    def _reply(self, op, rid, status, plen, raw=None, flags=FLAG_REPLY) -> bytes:
        """Header of a reply with ``plen`` payload bytes (``raw`` before compression)."""
        raw = plen if raw is None else raw
        if raw > self.max_payload:
            raise LocalProtocolError(f"{op.name} reply of {plen} bytes is too large")
        if self.role is not Role.SERVER:
            raise LocalProtocolError(f"only a server sends replies ({op.name})")
        if self._state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        entry = self._outstanding.get(rid)
        if entry is None:
            raise LocalProtocolError(f"no outstanding request with id {rid}")
        if entry[0] is not op:
            raise LocalProtocolError(f"request {rid} is a {entry[0].name}, not {op.name}")
        size = OPCODES[op].reply.size
        if size is not None and not status and raw != size(entry[1]):
            raise LocalProtocolError(f"{op.name} reply of {raw} bytes, not {size(entry[1])}")
        kind = Kind.ERROR if status else Kind.OK
        next_state = TRANSITIONS.get((Role.SERVER, self._state, op, kind))
        if next_state is None:
            raise LocalProtocolError(f"cannot reply to {op.name} in state {self._state.name}")
        head = _f.pack_reply_head(op, rid, status, plen, flags)
        del self._outstanding[rid]
        self._state = next_state
        return head

    def _negotiated(self, features: int) -> _z.Codec | None:
        """The codec a HELLO exchange agreed on: the one whose bit both the request and the
        reply's ``features`` carry (zstd first), if this process has it; else None."""
        name = _z.feature_codec(features & self._hello_features)
        return _z.Codec(name) if name in _z.available() else None

    @staticmethod
    def _encode(encoder, *args) -> bytes:
        try:
            return encoder(*args)
        except _f.PAYLOAD_ERRORS as exc:
            raise LocalProtocolError(f"cannot encode payload: {exc}") from None


def _length_ok(spec: OpSpec, length: int, max_payload: int) -> bool:
    """Whether a request's length field keeps its opcode's rules (bounds, reply size)."""
    low, high = spec.length
    size = spec.reply.size
    return low <= length <= high and (size is None or size(length) <= max_payload)


def _length_error(spec: OpSpec, length: int, max_payload: int) -> tuple[int, str]:
    """(errno, why) for a length that :func:`_length_ok` refused."""
    name = spec.opcode.name
    low, high = spec.length
    if length < low:
        return EPROTO, f"{name} of {length} bytes"
    if length > high:
        return EMSGSIZE, f"{name} of {length} bytes exceeds {high}"
    return EMSGSIZE, spec.reply.too_big.format(op=name, length=length, limit=max_payload)


def _size_error(op: Opcode, payload: _f.Payload, plen: int, length: int, reply: bool) -> str:
    """Why ``plen`` payload bytes break ``payload``'s size rule (for a request of ``length``)."""
    if payload.size is not None:
        return payload.mismatch.format(op=op.name, plen=plen, length=length)
    if not payload.max_size:
        return f"{op.name} {'reply' if reply else 'request'} with a payload"
    return f"{op.name} {'reply ' if reply else ''}payload of {plen} bytes"


_hot = speedups.pick("rpv.protocol.hotpath", "rpv.protocol._hotpath")
_MAGIC_PREFIX = _f.HEADER_STRUCT.pack(MAGIC, VERSION, 0, 0, 0, 0)[:5]
_HEADER_UNPACK = _f.HEADER_STRUCT.unpack_from
_REQUEST_EXT_UNPACK = _f.REQUEST_EXT_STRUCT.unpack_from
_REPLY_EXT_UNPACK = _f.REPLY_EXT_STRUCT.unpack_from
