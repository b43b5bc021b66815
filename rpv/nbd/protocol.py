"""Sans-IO server side of the NBD protocol (fixed newstyle handshake, simple replies).

The connection object turns received bytes into events and builds every byte the server
sends, in the style of h11 and websockets: no sockets, no clocks, no asyncio, and parsing never
raises on bad input. Bytes the protocol itself answers (greeting, option replies, error replies
to malformed requests) collect in :meth:`ServerConnection.data_to_send`; requests that need the
device come out of :meth:`ServerConnection.next_event` as :class:`Request` and the caller
answers each once, in any order, with :meth:`ServerConnection.send_reply` (which knows which
handles await a reply: answering one twice, or one never issued, is a caller bug). Export
lookups are events too (:class:`ExportRequested`, :class:`ExportListRequested`): the caller
asks its registry and answers, so nothing here calls out.

Limits are checked on the header, before a payload is buffered: an option longer than
``max_option_length`` closes the connection; a READ longer than ``max_request_length`` gets
``EINVAL``; an oversized WRITE payload is skipped as it arrives (never buffered) and then gets
``EINVAL``.

Reference: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, NamedTuple, Protocol

from rpv import speedups
from rpv.buffers import BufferPool

_wire = speedups.pick("rpv.nbd.wire", "rpv.nbd._wire")  # the batch decoder (compiled twin)

# --------------------------------------------------------------------------- constants

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698


class HandshakeFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class Opt(IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


_REP_ERR = 1 << 31


class Rep(IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = _REP_ERR + 1
    ERR_POLICY = _REP_ERR + 2
    ERR_INVALID = _REP_ERR + 3
    ERR_PLATFORM = _REP_ERR + 4
    ERR_TLS_REQD = _REP_ERR + 5
    ERR_UNKNOWN = _REP_ERR + 6
    ERR_SHUTDOWN = _REP_ERR + 7
    ERR_BLOCK_SIZE_REQD = _REP_ERR + 8
    ERR_TOO_BIG = _REP_ERR + 9


class Info(IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class TransmissionFlag(IntFlag):
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11


class Cmd(IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


class CmdFlag(IntFlag):
    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4
    PAYLOAD_LEN = 1 << 5


class Err(IntEnum):
    """Error values allowed on the wire (they happen to equal Linux errno values)."""

    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


# Plain ints for the hot path (IntEnum comparisons are slower).
CMD_READ = int(Cmd.READ)
CMD_WRITE = int(Cmd.WRITE)
CMD_DISC = int(Cmd.DISC)
CMD_FLUSH = int(Cmd.FLUSH)
CMD_TRIM = int(Cmd.TRIM)
CMD_WRITE_ZEROES = int(Cmd.WRITE_ZEROES)
FLAG_FUA = int(CmdFlag.FUA)

SERVER_HANDSHAKE_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES
KNOWN_CLIENT_FLAGS = int(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)

#: Flags advertised for a writable export. CAN_MULTI_CONN holds because a device's flush()
#: makes every completed write durable, whichever connection issued it.
WRITABLE_FLAGS = (
    TransmissionFlag.HAS_FLAGS
    | TransmissionFlag.SEND_FLUSH
    | TransmissionFlag.SEND_FUA
    | TransmissionFlag.SEND_TRIM
    | TransmissionFlag.SEND_WRITE_ZEROES
    | TransmissionFlag.CAN_MULTI_CONN
)
READONLY_FLAGS = (
    TransmissionFlag.HAS_FLAGS
    | TransmissionFlag.READ_ONLY
    | TransmissionFlag.SEND_FLUSH
    | TransmissionFlag.SEND_FUA
    | TransmissionFlag.CAN_MULTI_CONN
)

MIN_BLOCK_SIZE = 512
PREFERRED_BLOCK_SIZE = 4096
MAX_REQUEST_LENGTH = 32 << 20
_RECV_CHUNK = 256 << 10  # the scratch buffer headers and small requests are received into
MAX_OPTION_LENGTH = 64 << 10
SMALL_REPLY = 64 << 10  # up to this size a READ reply is joined with its header (one buffer)
MAX_STRING = 4096  # the spec's cap on export names and messages

# --------------------------------------------------------------------------- wire structs

_GREETING = struct.Struct(">QQH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_OPTION_HEADER = struct.Struct(">QII")  # magic, option, length
_OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
_EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags
_INFO_EXPORT = struct.Struct(">HQH")  # info type, size, flags
_INFO_BLOCK_SIZE = struct.Struct(">HIII")  # info type, minimum, preferred, maximum
_REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
_REPLY = struct.Struct(">IIQ")  # magic, error, handle

REQUEST_SIZE = _REQUEST.size  # 28
REPLY_SIZE = _REPLY.size  # 16

_unpack_request = _REQUEST.unpack_from
_pack_reply = _REPLY.pack


def encode_reply(handle: int, error: int = 0) -> bytes:
    """A simple reply header; for a successful READ the data follows it. (A server answers
    through :meth:`ServerConnection.send_reply`, which also checks the handle.)"""
    return _pack_reply(SIMPLE_REPLY_MAGIC, error, handle)


_ERRNO_TO_NBD = {
    errno.EPERM: Err.EPERM,
    errno.EACCES: Err.EPERM,
    errno.EROFS: Err.EPERM,
    errno.EIO: Err.EIO,
    errno.ENOMEM: Err.ENOMEM,
    errno.EINVAL: Err.EINVAL,
    errno.ENOSPC: Err.ENOSPC,
    errno.EDQUOT: Err.ENOSPC,
    errno.EFBIG: Err.ENOSPC,
    errno.EOVERFLOW: Err.EOVERFLOW,
    errno.ENOTSUP: Err.ENOTSUP,
    errno.ESHUTDOWN: Err.ESHUTDOWN,
}


def errno_to_nbd(err: int | None) -> int:
    """Map an ``OSError.errno`` from a device to an NBD error value (``EIO`` if unknown)."""
    return int(_ERRNO_TO_NBD.get(err, Err.EIO))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- events


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`ServerConnection.next_event` when more bytes are needed.
NEED_DATA = _NeedData()


class Request(NamedTuple):
    """A transmission request that passed validation and needs the device.

    ``kind`` is one of READ, WRITE, FLUSH, TRIM, WRITE_ZEROES; ``data`` is the payload of a
    WRITE (``None`` otherwise). Answer with :meth:`ServerConnection.send_reply` (with
    ``length`` bytes of data for a successful READ).
    """

    kind: int
    flags: int
    handle: int
    offset: int
    length: int
    data: bytes | None


@dataclass(frozen=True, slots=True)
class ExportOpened:
    """Option haggling ended (EXPORT_NAME or GO): the connection now serves ``device``."""

    name: str
    device: Any
    size: int
    flags: int


@dataclass(frozen=True, slots=True)
class OptionAnswered:
    """An option was answered successfully and haggling goes on (NBD_OPT_LIST, NBD_OPT_INFO).

    One event per option lets the caller apply back-pressure between options.
    """

    option: int


@dataclass(frozen=True, slots=True)
class OptionRejected:
    """An option got an error reply (informational, for logging)."""

    option: int
    reply: int
    message: str


@dataclass(frozen=True, slots=True)
class ExportRequested:
    """The client named an export (NBD_OPT_EXPORT_NAME, INFO or GO): look it up and answer with
    :meth:`ServerConnection.export_found` or :meth:`ServerConnection.export_missing` (see
    :func:`answer_from_registry`). ``describe``: the client asked for the description. No
    further event comes out until the answer."""

    name: str
    option: int
    describe: bool = False


@dataclass(frozen=True, slots=True)
class ExportListRequested:
    """The client asked for the list of exports (NBD_OPT_LIST): answer with
    :meth:`ServerConnection.export_list`. No further event comes out until then."""


@dataclass(frozen=True, slots=True)
class StartTLS:
    """The client asked for TLS (NBD_OPT_STARTTLS) and got its ACK: send the pending bytes,
    run the TLS handshake on the connection, then call
    :meth:`ServerConnection.tls_established` (or close if the handshake fails). No further
    event comes out until then."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The client ended the session cleanly (NBD_CMD_DISC or NBD_OPT_ABORT).

    After DISC the server finishes outstanding requests and closes; after ABORT it sends the
    pending acknowledgement and closes.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the protocol; send any pending bytes and close the connection."""

    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side (EOF) outside a clean disconnect."""

    phase: str


Event = (Request | ExportRequested | ExportListRequested | ExportOpened | OptionAnswered
         | OptionRejected | StartTLS | Disconnect | ProtocolError | ConnectionClosed)


class ExportLookup(Protocol):
    """What :func:`answer_from_registry` needs (see ``rpv.blockdev.ExportRegistry``)."""

    def get_export(self, name: str) -> Any: ...

    def list_exports(self) -> list[tuple[str, str]]: ...


def answer_from_registry(conn: ServerConnection, registry: ExportLookup,
                         ev: ExportRequested | ExportListRequested) -> None:
    """Answer a lookup event of ``conn`` from ``registry``. A registry that raises, or a device
    without a usable size, counts as an unknown export (a registry bug must not kill the
    connection)."""
    if type(ev) is ExportListRequested:
        conn.export_list(registry.list_exports())
        return
    try:
        device = registry.get_export(ev.name)
        size = None if device is None else int(device.size)
    except Exception:
        size = None
    if size is None or size < 0:
        conn.export_missing()
        return
    description = ""
    if ev.describe:
        try:
            description = next((d for n, d in registry.list_exports() if n == ev.name), "")
        except Exception:
            pass
    conn.export_found(device, size, transmission_flags(device), description)


# --------------------------------------------------------------------------- state machine


class State(IntEnum):
    CLIENT_FLAGS = 0
    OPTIONS = 1
    TRANSMISSION = 2
    CLOSED = 3


def transmission_flags(device: Any) -> int:
    return int(READONLY_FLAGS if getattr(device, "readonly", False) else WRITABLE_FLAGS)


class ServerConnection:
    """One NBD connection, server side, without I/O.

    Usage: send :meth:`data_to_send` after construction (the greeting); feed received bytes to
    :meth:`receive_data` (``b""`` for EOF); call :meth:`next_event` until it returns
    :data:`NEED_DATA`, acting on each event; after each round send :meth:`data_to_send`.

    With ``tls=True`` the connection is in the spec's "forced TLS" mode: until the client has
    gone through NBD_OPT_STARTTLS, every option but STARTTLS and ABORT is answered with
    NBD_REP_ERR_TLS_REQD (NBD_OPT_EXPORT_NAME, which cannot carry an error, closes the
    connection). With ``tls=False`` STARTTLS is not offered.

    The connection never looks exports up itself: it emits :class:`ExportRequested` /
    :class:`ExportListRequested` and goes on once the caller answers (``export_found``,
    ``export_missing``, ``export_list``). Only with a ``registry`` (a convenience for tests
    and fuzzers) does it answer them on the spot through :func:`answer_from_registry`, so
    they never come out.
    """

    def __init__(
        self,
        registry: ExportLookup | None = None,
        *,
        max_option_length: int = MAX_OPTION_LENGTH,
        max_request_length: int = MAX_REQUEST_LENGTH,
        min_block_size: int = MIN_BLOCK_SIZE,
        preferred_block_size: int = PREFERRED_BLOCK_SIZE,
        tls: bool = False,
        buffers: BufferPool | None = None,
    ):
        self._registry = registry
        self._buffers = buffers if buffers is not None else BufferPool(0)
        self.tls = tls
        self.tls_active = False
        self._tls_pending = False
        self.max_option_length = max_option_length
        self.max_request_length = max_request_length
        self.min_block_size = min_block_size
        self.preferred_block_size = preferred_block_size
        self.state = State.CLIENT_FLAGS
        self.client_flags = 0
        self.export_name: str | None = None
        self.device: Any = None
        self.size = 0
        self.flags = 0
        self._readonly = False
        self._buf = bytearray()
        self._out: list[bytes] = [
            _GREETING.pack(NBDMAGIC, IHAVEOPT, int(SERVER_HANDSHAKE_FLAGS))
        ]
        self._eof = False
        self._eof_reported = False
        self._discard = 0  # payload bytes of an oversized WRITE still to skip
        self._discard_handle = 0
        self._need = 0  # payload bytes of the pending WRITE still to collect
        self._payload: bytearray | None = None  # that WRITE's payload, filled in place
        self._scratch: bytearray | None = None
        self._pending: tuple[int, int, int, int] | None = None  # flags, handle, offset, length
        self._lookup: tuple[int, str] | None = None  # option and name of an unanswered lookup
        self._requested: set[int] = set()  # information types the pending INFO/GO asked for
        self._answer: Event | None = None  # the event the lookup's answer produced
        # Handles of requests handed out and not yet answered by send_reply. A client may
        # reuse a handle that is still in flight (the protocol does not police that): the
        # extra requests with it are counted in _reused.
        self._unanswered: set[int] = set()
        self._reused: dict[int, int] = {}
        self._ready: deque[Request] = deque()  # decoded by the last batch, not handed out

    # ---------------------------------------------------------------- byte plumbing

    def receive_data(self, data: bytes) -> None:
        """Buffer received bytes; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        if self.state is State.CLOSED:
            return
        if self._need:
            # Collecting a WRITE payload: straight into its buffer.
            need = self._need
            payload = self._payload
            got = len(payload) - need
            if len(data) <= need:
                payload[got:got + len(data)] = data
                self._need = need - len(data)
                return
            view = memoryview(data)
            payload[got:] = view[:need]
            self._need = 0
            data = view[need:]
        elif self._discard:
            n = min(self._discard, len(data))
            self._discard -= n
            if not self._discard:
                self._out.append(_pack_reply(SIMPLE_REPLY_MAGIC, Err.EINVAL,
                                             self._discard_handle))
            if n == len(data):
                return
            data = data[n:]
        self._buf += data

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes go (``asyncio.BufferedProtocol``): straight into the
        pending WRITE's payload while one is being collected, else a scratch buffer. Follow
        with :meth:`buffer_updated`."""
        if self._need:
            return memoryview(self._payload)[len(self._payload) - self._need:]
        if self._scratch is None:
            self._scratch = bytearray(_RECV_CHUNK)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were received into the buffer :meth:`get_buffer` returned."""
        if self._need:
            self._need -= nbytes
        elif nbytes:
            self.receive_data(memoryview(self._scratch)[:nbytes])

    def data_to_send(self) -> bytes:
        """Bytes the protocol produced itself since the last call (possibly empty)."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    @property
    def buffered(self) -> int:
        """Received bytes not yet turned into events."""
        return len(self._buf) + sum(28 + len(r.data or b"") for r in self._ready)

    # ---------------------------------------------------------------- events

    def next_event(self) -> Event | _NeedData:
        """The next event, or :data:`NEED_DATA`. Never raises on any input."""
        if self._answer is not None:
            ev, self._answer = self._answer, None
            return ev
        if self.state is State.TRANSMISSION:
            ev = self._next_request()
            if type(ev) is Request:
                handle = ev.handle
                if handle in self._unanswered:
                    self._reused[handle] = self._reused.get(handle, 0) + 1
                else:
                    self._unanswered.add(handle)
                return ev
        elif self.state is State.CLOSED:
            return NEED_DATA
        else:
            ev = self._next_handshake_event()
            if self._registry is not None and (
                    type(ev) is ExportRequested or type(ev) is ExportListRequested):
                answer_from_registry(self, self._registry, ev)
                return self.next_event()
        if ev is NEED_DATA and self._eof and not self._eof_reported:
            self._eof_reported = True
            phase = "transmission" if self.state is State.TRANSMISSION else "handshake"
            self.state = State.CLOSED
            return ConnectionClosed(phase)
        return ev

    def tls_established(self) -> None:
        """The TLS handshake that :class:`StartTLS` asked for succeeded: haggling goes on."""
        self._tls_pending = False
        self.tls_active = True

    def _fail(self, reason: str) -> ProtocolError:
        self.state = State.CLOSED
        self._buf.clear()
        return ProtocolError(reason)

    # ---------------------------------------------------------------- transmission

    def _next_request(self) -> Event | _NeedData:
        ready = self._ready
        if ready:
            return ready.popleft()
        if self._need or self._discard:
            return NEED_DATA
        if self._pending is not None:
            return self._finish_write()
        buf = self._buf
        if len(buf) >= 28:  # the ordinary requests of the batch in one call (rpv.nbd.wire)
            reqs, used = _wire.take_requests(buf, self.size, self._readonly,
                                             self.max_request_length, self._out, Request)
            if used:
                del buf[:used]
            if reqs:
                ready.extend(reqs)
                return ready.popleft()
        while True:
            if len(buf) < 28:
                return NEED_DATA
            magic, flags, kind, handle, offset, length = _unpack_request(buf)
            if magic != REQUEST_MAGIC:
                return self._fail(f"bad request magic 0x{magic:08x}")
            if kind == CMD_WRITE:
                end = 28 + length
                avail = len(buf)
                if length > self.max_request_length:
                    # Skip the payload as it arrives, then answer EINVAL.
                    if avail >= end:
                        del buf[:end]
                        self._out.append(_pack_reply(SIMPLE_REPLY_MAGIC, Err.EINVAL, handle))
                        continue
                    del buf[:]
                    self._discard = end - avail
                    self._discard_handle = handle
                    return NEED_DATA
                if avail < end:
                    # Payload incomplete: move what we have out of the buffer and collect the
                    # rest chunk by chunk (receive_data), so a large payload is copied once.
                    self._pending = (flags, handle, offset, length)
                    payload = self._payload = self._buffers.take(length)
                    with memoryview(buf) as view:
                        payload[:avail - 28] = view[28:]
                    self._need = end - avail
                    del buf[:]
                    return NEED_DATA
                with memoryview(buf) as view:
                    data = view[28:end].tobytes()
                del buf[:end]
                err = self._check(kind, flags, offset, length)
                if err:
                    self._out.append(_pack_reply(SIMPLE_REPLY_MAGIC, err, handle))
                    continue
                return Request(kind, flags, handle, offset, length, data)
            del buf[:28]
            if kind == CMD_DISC:
                self.state = State.CLOSED
                buf.clear()
                return Disconnect("NBD_CMD_DISC")
            err = self._check(kind, flags, offset, length)
            if err:
                self._out.append(_pack_reply(SIMPLE_REPLY_MAGIC, err, handle))
                continue
            return Request(kind, flags, handle, offset, length, None)

    def _finish_write(self) -> Event | _NeedData:
        flags, handle, offset, length = self._pending  # type: ignore[misc]
        data = self._payload
        self._pending = None
        self._payload = None
        err = self._check(CMD_WRITE, flags, offset, length)
        if err:
            self._out.append(_pack_reply(SIMPLE_REPLY_MAGIC, err, handle))
            return self._next_request()
        return Request(CMD_WRITE, flags, handle, offset, length, data)

    def send_reply(self, handle: int, error: int = 0, data: bytes | None = None) -> list[bytes]:
        """The reply to the :class:`Request` with ``handle``: its header, then ``data`` for a
        successful READ (joined into one buffer up to SMALL_REPLY bytes, else not copied).

        Raises ValueError for a handle that no request awaiting a reply carries (answered
        already, or never issued): a bug in the caller, not in the peer.
        """
        if error and data is not None:
            raise ValueError("an NBD error reply carries no data")
        reused = self._reused
        if reused and handle in reused:
            if reused[handle] == 1:
                del reused[handle]
            else:
                reused[handle] -= 1
        else:
            try:
                self._unanswered.remove(handle)
            except KeyError:
                raise ValueError(f"no NBD request with handle {handle:#x} awaits a reply"
                                 ) from None
        head = _pack_reply(SIMPLE_REPLY_MAGIC, error, handle)
        if data is None:
            return [head]
        if len(data) <= SMALL_REPLY:
            return [head + data]
        return [head, data]

    @property
    def unanswered(self) -> int:
        """Requests handed out by :meth:`next_event` that :meth:`send_reply` has not answered."""
        return len(self._unanswered) + sum(self._reused.values())

    def _check(self, kind: int, flags: int, offset: int, length: int) -> int:
        return _wire.check(kind, flags, offset, length, self.size, self._readonly,
                           self.max_request_length)

    # ---------------------------------------------------------------- handshake

    def _next_handshake_event(self) -> Event | _NeedData:
        buf = self._buf
        while self.state is not State.CLOSED and not self._tls_pending and self._lookup is None:
            if self.state is State.CLIENT_FLAGS:
                if len(buf) < 4:
                    return NEED_DATA
                (cflags,) = _U32.unpack_from(buf)
                del buf[:4]
                if cflags & ~KNOWN_CLIENT_FLAGS:
                    return self._fail(f"unknown client flags 0x{cflags:08x}")
                self.client_flags = cflags
                self.state = State.OPTIONS
                continue
            if self.state is not State.OPTIONS:  # pragma: no cover - TRANSMISSION handled above
                return NEED_DATA
            if len(buf) < 16:
                return NEED_DATA
            magic, option, length = _OPTION_HEADER.unpack_from(buf)
            if magic != IHAVEOPT:
                return self._fail(f"bad option magic 0x{magic:016x}")
            if length > self.max_option_length:
                return self._fail(f"option {option} length {length} over limit")
            if len(buf) < 16 + length:
                return NEED_DATA
            data = bytes(buf[16 : 16 + length])
            del buf[: 16 + length]
            return self._handle_option(option, data)
        return NEED_DATA

    def _reply(self, option: int, rep: int, payload: bytes = b"") -> None:
        self._out.append(_OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, rep, len(payload)))
        if payload:
            self._out.append(payload)

    def _reject(self, option: int, rep: Rep, message: str) -> OptionRejected:
        self._reply(option, rep, message.encode()[:MAX_STRING])
        return OptionRejected(option, int(rep), message)

    def _handle_option(self, option: int, data: bytes) -> Event:
        if option == Opt.STARTTLS and self.tls:
            return self._opt_starttls(data)
        if self.tls and not self.tls_active and option != Opt.ABORT:
            if option == Opt.EXPORT_NAME:  # cannot carry an error: the spec says close
                return self._fail("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS: TLS is "
                                  "required")
            return self._reject(option, Rep.ERR_TLS_REQD,
                                "TLS is required: use NBD_OPT_STARTTLS with a client "
                                "certificate from the site CA")
        if option == Opt.EXPORT_NAME:
            return self._opt_export_name(data)
        if option == Opt.GO or option == Opt.INFO:
            return self._opt_info_go(option, data)
        if option == Opt.LIST:
            if data:
                return self._reject(option, Rep.ERR_INVALID, "NBD_OPT_LIST takes no data")
            self._lookup = (option, "")
            return ExportListRequested()
        if option == Opt.ABORT:
            self._reply(option, Rep.ACK)
            self.state = State.CLOSED
            self._buf.clear()
            return Disconnect("NBD_OPT_ABORT")
        try:
            label = f"NBD_OPT_{Opt(option).name}"
        except ValueError:
            label = f"option {option}"
        return self._reject(option, Rep.ERR_UNSUP, f"{label} not supported")

    def _opt_starttls(self, data: bytes) -> Event:
        if data:
            return self._reject(Opt.STARTTLS, Rep.ERR_INVALID, "NBD_OPT_STARTTLS takes no data")
        if self.tls_active:
            return self._reject(Opt.STARTTLS, Rep.ERR_INVALID, "TLS is already active")
        if self._buf:
            # The client must wait for the ACK; plaintext bytes sent past STARTTLS could be
            # injected by anyone on the path, so they end the connection.
            return self._fail("data after NBD_OPT_STARTTLS before the TLS handshake")
        self._reply(Opt.STARTTLS, Rep.ACK)
        self._tls_pending = True
        return StartTLS()

    # ---------------------------------------------------------------- lookup answers

    def _take_lookup(self, listing: bool) -> tuple[int, str]:
        lookup = self._lookup
        if lookup is None or (lookup[0] == Opt.LIST) != listing:
            raise ValueError("no NBD export lookup of that kind awaits an answer")
        self._lookup = None
        return lookup

    def export_list(self, exports: list[tuple[str, str]]) -> None:
        """Answer :class:`ExportListRequested` with (name, description) pairs."""
        option = self._take_lookup(True)[0]
        for name, description in exports:
            raw = name.encode()
            self._reply(option, Rep.SERVER, _U32.pack(len(raw)) + raw + description.encode())
        self._reply(option, Rep.ACK)
        self._answer = OptionAnswered(option)

    def export_missing(self) -> None:
        """Answer :class:`ExportRequested`: there is no such export (or it is not usable)."""
        option, name = self._take_lookup(False)
        if option == Opt.EXPORT_NAME:
            # NBD_OPT_EXPORT_NAME cannot carry an error: the spec says terminate.
            self._answer = self._fail(f"unknown export {name[:256]!r}")
        else:
            self._answer = self._reject(option, Rep.ERR_UNKNOWN,
                                        f"export {name[:256]!r} not available")

    def export_found(self, device: Any, size: int, flags: int, description: str = "") -> None:
        """Answer :class:`ExportRequested`: the export is ``device`` of ``size`` bytes with
        transmission ``flags`` (see :func:`transmission_flags`)."""
        option, name = self._take_lookup(False)
        if option == Opt.EXPORT_NAME:
            reply = _EXPORT_NAME_REPLY.pack(size, flags)
            if not self.client_flags & ClientFlag.NO_ZEROES:
                reply += bytes(124)
            self._out.append(reply)
            self._answer = self._enter_transmission(name, device, size, flags)
            return
        self._reply(option, Rep.INFO, _INFO_EXPORT.pack(Info.EXPORT, size, flags))
        requested = self._requested
        if Info.NAME in requested:
            self._reply(option, Rep.INFO, _U16.pack(Info.NAME) + name.encode())
        if Info.DESCRIPTION in requested and description:
            self._reply(option, Rep.INFO,
                        _U16.pack(Info.DESCRIPTION) + description.encode()[:MAX_STRING])
        # Block sizes may be sent unasked; we accept unaligned requests anyway.
        self._reply(option, Rep.INFO, _INFO_BLOCK_SIZE.pack(
            Info.BLOCK_SIZE, self.min_block_size, self.preferred_block_size,
            self.max_request_length))
        self._reply(option, Rep.ACK)
        if option == Opt.GO:
            self._answer = self._enter_transmission(name, device, size, flags)
        else:
            self._answer = OptionAnswered(option)

    def _enter_transmission(self, name: str, device: Any, size: int, flags: int) -> ExportOpened:
        self.state = State.TRANSMISSION
        self.export_name = name
        self.device = device
        self.size = size
        self.flags = flags
        self._readonly = bool(flags & TransmissionFlag.READ_ONLY)
        return ExportOpened(name, device, size, flags)

    def _opt_export_name(self, data: bytes) -> Event:
        try:
            name = data.decode()
        except UnicodeDecodeError:
            return self._fail("export name is not UTF-8")
        if len(data) > MAX_STRING:
            # NBD_OPT_EXPORT_NAME cannot carry an error: the spec says terminate.
            return self._fail(f"unknown export {name[:256]!r}")
        self._lookup = (Opt.EXPORT_NAME, name)
        return ExportRequested(name, Opt.EXPORT_NAME)

    def _opt_info_go(self, option: int, data: bytes) -> Event:
        if len(data) < 6:
            return self._reject(option, Rep.ERR_INVALID, "option data too short")
        (namelen,) = _U32.unpack_from(data)
        if namelen > len(data) - 6 or namelen > MAX_STRING:
            return self._reject(option, Rep.ERR_INVALID, "bad export name length")
        (ninfo,) = _U16.unpack_from(data, 4 + namelen)
        if len(data) != 6 + namelen + 2 * ninfo:
            return self._reject(option, Rep.ERR_INVALID, "bad information request count")
        try:
            name = data[4 : 4 + namelen].decode()
        except UnicodeDecodeError:
            return self._reject(option, Rep.ERR_INVALID, "export name is not UTF-8")
        self._requested = {
            _U16.unpack_from(data, 6 + namelen + 2 * i)[0] for i in range(ninfo)
        }
        self._lookup = (option, name)
        return ExportRequested(name, option, Info.DESCRIPTION in self._requested)
