"""Sans-IO request bookkeeping of the RPV client: pending requests, deadlines, the state.

:class:`RequestTable` never does I/O, never reads a clock and never touches asyncio (in the
style of aioquic): every method that needs the time takes ``now``; :meth:`RequestTable.next_timer`
says when the caller should call :meth:`RequestTable.expire` next. Its methods return what the
caller (``rpv.client.device.RPVClient``) must do: requests to send now on the current link
(each :class:`Request` with ``sent_on`` set to it), requests answered (``error`` or ``result``
set) and requests failed with ``EIO`` (``error`` set), :class:`Expired` when a deadline passed.
The caller owns futures and callbacks (opaque here: a request only carries them), links,
timers, logging and reporting.

With several network paths, one link is the session's first (``link``, opened by a plain
HELLO) and the others joined it (:meth:`RequestTable.join`); requests go to the link with the
fewest outstanding, except ``ordered`` ones, which all go to the first link in submission
order (the server applies one connection's requests in arrival order, so the remote copy sees
them in that order). A lost link, joined or not, ends them all (:meth:`link_down`): requests
are resent only on a new session, after its HELLO closed every connection of the old one.

A deadline is ``io_timeout`` seconds from the request's submission. When the earliest passes,
every outstanding request fails with ``EIO`` and the client enters FAILED, where new requests
are refused until a resume (DESIGN.md invariant 4). The client's states and the events that
move between them are one table, :data:`TRANSITIONS` (as in h11's ``_state.py``); an event
a state has no entry for is refused with :class:`StateError`.
"""

from __future__ import annotations

import enum
import errno
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from rpv.protocol import Opcode


class ClientState(enum.Enum):
    ONLINE = "online"  # usable; connected or will connect on demand
    FAILED = "failed"  # a deadline expired: I/O fails at once until resume
    DISABLED = "disabled"  # server_addr=none: I/O fails at once, nothing logged
    CLOSED = "closed"  # unconfigured


class Event(enum.Enum):
    EXPIRE = "a request's deadline passed"
    DISABLE = "server_addr set to none"
    ENABLE = "server_addr set to an address"
    CLOSE = "device unconfigured"
    RESUME = "resume (it reverts to the state before it if the server does not answer)"


ONLINE, FAILED, DISABLED, CLOSED = (ClientState.ONLINE, ClientState.FAILED,
                                    ClientState.DISABLED, ClientState.CLOSED)
EXPIRE, DISABLE, ENABLE, CLOSE, RESUME = (Event.EXPIRE, Event.DISABLE, Event.ENABLE,
                                          Event.CLOSE, Event.RESUME)

TRANSITIONS: dict[ClientState, dict[Event, ClientState]] = {
    ONLINE: {EXPIRE: FAILED, DISABLE: DISABLED, CLOSE: CLOSED, ENABLE: ONLINE, RESUME: ONLINE},
    # EXPIRE from FAILED or CLOSED: requests queued during a resume that then failed
    FAILED: {EXPIRE: FAILED, DISABLE: DISABLED, CLOSE: CLOSED, ENABLE: ONLINE, RESUME: ONLINE},
    DISABLED: {DISABLE: DISABLED, CLOSE: CLOSED, ENABLE: ONLINE},  # nothing is ever pending
    CLOSED: {EXPIRE: FAILED, DISABLE: DISABLED, CLOSE: CLOSED, ENABLE: ONLINE, RESUME: ONLINE},
}
"""``TRANSITIONS[state][event]``: the state ``event`` leads to; a missing entry is refused."""


class StateError(Exception):
    """The caller asked for something the client's state does not allow (a bug there)."""


@dataclass(slots=True)
class Request:
    opcode: Opcode
    offset: int
    length: int
    data: bytes | None
    fua: bool
    deadline: float
    started: float
    rid: int
    covers: int = 0  # FLUSH: writes acknowledged before it was queued
    ordered: bool = False  # sent on the session's first link, in submission order
    sent_on: object = None  # the link it is outstanding on; None: waits to be sent
    future: object = None  # the caller's (None when ``callback`` takes the outcome instead)
    callback: Callable[[OSError | None], None] | None = None
    result: object = None  # READ: the data, CHECKSUM: the digests, once answered
    error: OSError | None = None  # the server's error, or EIO when failed here

    def remaining_ms(self, now: float) -> int:
        """The deadline as the server is told it: milliseconds left, never negative."""
        return max(0, int((self.deadline - now) * 1000))


@dataclass(frozen=True, slots=True)
class Expired:
    """A deadline passed: the client is FAILED and ``failed`` got ``EIO`` with ``reason``."""

    reason: str
    failed: list[Request]


class RequestTable:
    """The requests of one RPV client device and its state; see the module docstring."""

    def __init__(self, name: str, server_addr: str, io_timeout: float, *,
                 max_outstanding: int = 64):
        self.name = name
        self.server_addr = server_addr
        self.io_timeout = float(io_timeout)
        self.max_outstanding = max_outstanding  # requests outstanding on the link, at most
        self.last_error = ""
        self.link: object = None  # the session's first link (plain HELLO), or None
        self.links: list = []  # every link of the session, ``link`` first, joined ones after
        self.inflight = 0  # requests outstanding on the links
        self._load: dict[int, int] = {}  # id(link) -> requests outstanding on it
        self._turn = 0  # the link to try first among equally loaded ones
        self.acked_writes = 0  # non-FUA writes acknowledged, ever
        self.flushed_writes = 0  # of those, how many a completed FLUSH covered
        self._state = DISABLED if server_addr == "none" else ONLINE
        self._pending: dict[int, Request] = {}
        self._ids = itertools.count(1)

    # -- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> ClientState:
        return self._state

    def _transition(self, event: Event) -> None:
        new = TRANSITIONS[self._state].get(event)
        if new is None:
            raise StateError(f"{self.name}: {event.name} refused in state {self._state.value}")
        self._state = new

    def refusal(self) -> OSError | None:
        """The EIO new requests get in this state, None when the client takes them."""
        if self._state is ONLINE:
            return None
        return OSError(errno.EIO, f"{self.name}: RPV client is {self._state.value}"
                       + (f" ({self.last_error})" if self.last_error else ""))

    def fail(self, event: Event, reason: str) -> list[Request]:
        """Leave ONLINE by ``event`` (not ENABLE or RESUME): every request fails with EIO."""
        if event is ENABLE or event is RESUME:
            raise StateError(f"{self.name}: {event.name} is not a failure")
        self._transition(event)
        self.last_error = reason
        return self.fail_requests(reason)

    def fail_requests(self, reason: str) -> list[Request]:
        """Fail every outstanding request with EIO; the state does not change."""
        pending, self._pending = self._pending, {}
        self._unsend()
        for req in pending.values():
            req.error = OSError(errno.EIO, reason)
        return list(pending.values())

    def enable(self) -> None:
        """``server_addr`` set to an address: ONLINE, requests kept (they go to the new one)."""
        self._transition(ENABLE)

    def begin_resume(self) -> ClientState:
        """Go ONLINE to try the server; returns the state to give to :meth:`resume_failed`."""
        previous = self._state
        self._transition(RESUME)
        return previous

    def resume_failed(self, previous: ClientState) -> None:
        """The resume found no server: back to ``previous`` (requests queued meanwhile stay,
        bounded by their deadlines)."""
        if RESUME not in TRANSITIONS[previous]:
            raise StateError(f"{self.name}: no resume starts in state {previous.value}")
        self._state = previous

    # -- requests ------------------------------------------------------------------------------
    def outstanding(self) -> int:
        return len(self._pending)

    def requests(self):
        """The outstanding requests, oldest first."""
        return self._pending.values()

    def pending_counts(self) -> dict:
        """Requests waiting for the server, as rpvstat shows them."""
        out = {"pend_reads": 0, "pend_writes": 0, "pend_kb_read": 0, "pend_kb_written": 0}
        for r in self._pending.values():
            if r.opcode is Opcode.READ:
                out["pend_reads"] += 1
                out["pend_kb_read"] += r.length // 1024
            elif r.opcode is Opcode.WRITE:
                out["pend_writes"] += 1
                out["pend_kb_written"] += r.length // 1024
        return out

    def submit(self, now: float, opcode: Opcode, offset: int, length: int,
               data: bytes | None = None, fua: bool = False, *, future: object = None,
               callback: Callable[[OSError | None], None] | None = None,
               ordered: bool = False) -> Request:
        """Queue a request (ONLINE only: see :meth:`refusal`). It is to be sent now on
        the link in its ``sent_on`` when that is set; otherwise it waits for a free slot (or
        for a link, when there is none), behind every request already waiting."""
        if self._state is not ONLINE:
            raise StateError(f"{self.name}: no request is queued in state {self._state.value}")
        rid = next(self._ids)
        req = Request(opcode, offset, length, data, fua, now + self.io_timeout, now, rid,
                      future=future, callback=callback, ordered=ordered)
        if opcode is Opcode.FLUSH:
            req.covers = self.acked_writes
        # an ordered one never overtakes one waiting (unordered ones wait only when every
        # link is full, and then it could not go either)
        waiting = ordered and len(self._pending) > self.inflight
        self._pending[rid] = req
        if not waiting:
            link = self._pick(ordered)
            if link is not None:
                self._assign(req, link)
        return req

    def _pick(self, ordered: bool) -> object:
        """The link a request goes to now (the least loaded; the first link for an ordered
        one), or None when none has a free slot."""
        links = self.links
        if not links:
            return None
        load = self._load
        if ordered or len(links) == 1:
            link = self.link
        else:  # the least loaded; among equals, each in turn
            self._turn = turn = (self._turn + 1) % len(links)
            link = min(links[turn:] + links[:turn], key=lambda lk: load[id(lk)])
        return link if load[id(link)] < self.max_outstanding else None

    def _assign(self, req: Request, link: object) -> None:
        req.sent_on = link
        self._load[id(link)] += 1
        self.inflight += 1

    def take_unsent(self) -> list[Request] | tuple:
        """Requests to send now, oldest first, each on the link in its ``sent_on``, within
        ``max_outstanding`` per link; ordered ones never overtake each other."""
        links = self.links
        if not links or not len(self._pending) > self.inflight \
                < self.max_outstanding * len(links):
            return ()
        out = []
        ordered_stuck = False  # the first link is full: later ordered ones wait too
        for req in self._pending.values():
            if req.sent_on is not None or req.ordered and ordered_stuck:
                continue
            link = self._pick(req.ordered)
            if link is None:
                if not req.ordered:
                    break  # every link is full
                ordered_stuck = True
                continue
            self._assign(req, link)
            out.append(req)
        return out

    def reply(self, ev) -> Request | None:
        """The server answered (``ev``: a ``rpv.protocol`` reply event): the request, with its
        ``error`` or ``result`` set, or None when it is no longer outstanding."""
        req = self._pending.pop(ev.request_id, None)
        if req is None:
            return None
        if req.sent_on is not None:
            self._load[id(req.sent_on)] -= 1
            req.sent_on = None
            self.inflight -= 1
        if ev.status:
            req.error = OSError(ev.status, f"{self.name}: remote {req.opcode.name}: "
                                           f"{ev.message}")
        elif req.opcode is Opcode.READ:
            req.result = ev.data
        elif req.opcode is Opcode.WRITE:
            if not req.fua:
                self.acked_writes += 1
        elif req.opcode is Opcode.CHECKSUM:
            req.result = ev.digests
        elif req.opcode is Opcode.FLUSH and req.covers > self.flushed_writes:
            self.flushed_writes = req.covers
        return req

    # -- deadlines -----------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        """The earliest deadline, or None when nothing is outstanding."""
        if not self._pending:
            return None
        return min(r.deadline for r in self._pending.values())

    def expire(self, now: float) -> Expired | None:
        """Call at (or after) :meth:`next_timer`: when a deadline has passed, enter FAILED
        and fail every request with EIO."""
        earliest = self.next_timer()
        if earliest is None or earliest > now:
            return None
        reason = f"no response from RPV server {self.server_addr} within {self.io_timeout:g} s"
        return Expired(reason, self.fail(EXPIRE, reason))

    def set_io_timeout(self, seconds: float) -> None:
        """Deadlines become ``seconds`` from each request's submission: a lower value brings
        outstanding deadlines forward at once; a higher one applies to new requests only."""
        self.io_timeout = float(seconds)
        for req in self._pending.values():
            req.deadline = min(req.deadline, req.started + self.io_timeout)

    # -- links ---------------------------------------------------------------------------------
    def link_up(self, link: object) -> list[Request] | tuple:
        """Use ``link`` (a new session) from now on, alone; returns the requests to send
        on it now. Those sent on the links it replaces are sent again (the server closed
        their session when this one said HELLO)."""
        if self.link is not link:
            self.links = [link]
            self._unsend()
        self.link = link
        self.last_error = ""
        return self.take_unsent()

    def join(self, link: object) -> list[Request] | tuple:
        """``link`` joined the session of ``link``: it takes requests too; returns those
        to send now."""
        if self.link is None or link in self.links:
            return ()
        self.links.append(link)
        self._load[id(link)] = 0
        return self.take_unsent()

    def link_down(self) -> bool:
        """A link of the session is gone: the session ends, every link with it, and
        everything outstanding waits to be sent again on the next. Returns whether a new
        link is wanted (requests wait and the client is ONLINE)."""
        self.link = None
        self.links = []
        self._unsend()
        return bool(self._pending) and self._state is ONLINE

    def _unsend(self) -> None:
        for req in self._pending.values():
            req.sent_on = None
        self.inflight = 0
        self._load = {id(link): 0 for link in self.links}

    # -- server instances ----------------------------------------------------------------------
    def new_instance(self) -> int:
        """The server restarted: returns how many acknowledged writes no FLUSH covered (they
        may be lost), and counts them as reported."""
        unflushed = self.acked_writes - self.flushed_writes
        self.flushed_writes = self.acked_writes
        return unflushed
