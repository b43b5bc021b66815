"""The RPV client's sans-IO request table (``rpv.client.requests``), driven with an injected
clock: deadlines expire at exactly the right time and fail everything with EIO, requests are
sent again on a new link, ``max_outstanding`` holds requests back, a FLUSH covers only the
writes acknowledged before it was queued, and the state table refuses what it should. A
hypothesis test checks that no sequence of submissions, replies, time and link losses loses a
request or answers one other than with EIO once its deadline passed unanswered."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpv import protocol as pc
from rpv.client.requests import (
    TRANSITIONS,
    ClientState,
    Event,
    RequestTable,
    StateError,
)
from rpv.protocol import Opcode

ONLINE, FAILED, DISABLED, CLOSED = (ClientState.ONLINE, ClientState.FAILED,
                                    ClientState.DISABLED, ClientState.CLOSED)


def answer(req, status: int = 0, message: str = ""):
    """The server's reply event to ``req``."""
    if req.opcode is Opcode.READ:
        return pc.ReadReply(req.rid, status, message, b"r" * req.length if not status else b"")
    if req.opcode is Opcode.CHECKSUM:
        return pc.ChecksumReply(req.rid, status, message, b"" if status else b"d" * 32)
    if req.opcode is Opcode.FLUSH:
        return pc.FlushReply(req.rid, status, message)
    return pc.WriteReply(req.rid, status, message)


def table(io_timeout: float = 10.0, **kw) -> RequestTable:
    return RequestTable("hdisk9", "10.0.0.2", io_timeout, **kw)


def write(t: RequestTable, now: float, fua: bool = False, offset: int = 0):
    return t.submit(now, Opcode.WRITE, offset, 512, b"w" * 512, fua)


# -- deadlines ----------------------------------------------------------------------------------
def test_deadline_expires_at_exactly_submission_plus_io_timeout():
    t = table(io_timeout=5.0)
    t.link_up("A")
    first = write(t, 100.0)
    second = t.submit(101.0, Opcode.READ, 0, 4096)
    assert t.next_timer() == 105.0
    assert t.expire(104.999) is None and t.state is ONLINE and t.outstanding() == 2
    expired = t.expire(105.0)
    assert expired is not None
    assert expired.reason == "no response from RPV server 10.0.0.2 within 5 s"
    assert expired.failed == [first, second]
    assert [r.error.errno for r in expired.failed] == [errno.EIO, errno.EIO]
    assert all(str(r.error).endswith(expired.reason) for r in expired.failed)
    assert t.state is FAILED and t.last_error == expired.reason
    assert t.outstanding() == 0 and t.inflight == 0 and t.next_timer() is None
    assert t.expire(1000.0) is None  # nothing left: nothing more to report


def test_next_timer_follows_sends_replies_and_expiry():
    t = table(io_timeout=10.0)
    assert t.next_timer() is None
    t.link_up("A")
    a = write(t, 0.0)
    b = write(t, 3.0)
    c = t.submit(4.0, Opcode.FLUSH, 0, 0)
    assert t.next_timer() == 10.0
    assert t.reply(answer(b)) is b and t.next_timer() == 10.0  # not the earliest
    assert t.reply(answer(a)) is a and t.next_timer() == 14.0
    assert t.expire(13.9) is None and t.next_timer() == 14.0
    t.set_io_timeout(2.0)  # brings the outstanding deadline forward to 4 + 2
    assert c.deadline == 6.0 and t.next_timer() == 6.0
    d = write(t, 5.0)
    assert d.deadline == 7.0
    t.set_io_timeout(60.0)  # a higher value applies to new requests only
    assert (c.deadline, d.deadline) == (6.0, 7.0)
    assert t.reply(answer(c)) is c and t.reply(answer(d)) is d
    assert t.next_timer() is None and t.expire(1e9) is None and t.state is ONLINE


def test_reply_outcomes_and_remaining_deadline():
    t = table(io_timeout=10.0)
    t.link_up("A")
    rd = t.submit(0.0, Opcode.READ, 0, 8)
    ck = t.submit(0.0, Opcode.CHECKSUM, 0, 4096)
    wr = write(t, 0.0)
    assert rd.remaining_ms(2.5) == 7500 and rd.remaining_ms(11.0) == 0
    assert t.reply(answer(rd)).result == b"r" * 8
    assert t.reply(answer(ck)).result == b"d" * 32
    failed = t.reply(answer(wr, errno.EROFS, "read-only"))
    assert failed.error.errno == errno.EROFS
    assert str(failed.error) == "[Errno 30] hdisk9: remote WRITE: read-only"
    assert t.reply(answer(wr)) is None  # answered once; a second reply is ignored
    assert t.acked_writes == 0 and t.state is ONLINE


# -- links --------------------------------------------------------------------------------------
def test_requests_are_sent_again_on_a_new_link():
    t = table()
    first = write(t, 0.0)
    assert first.sent_on is None  # no link yet: it waits
    assert t.link_up("A") == [first]
    reqs = [first, write(t, 1.0), write(t, 2.0)]
    assert [r.sent_on for r in reqs] == ["A"] * 3 and t.inflight == 3
    assert t.link_down() is True  # requests wait and the client is online: reconnect
    assert t.link is None and t.inflight == 0 and all(r.sent_on is None for r in reqs)
    assert t.take_unsent() == ()  # no link to send on
    assert t.link_up("B") == reqs and all(r.sent_on == "B" for r in reqs)
    assert t.last_error == ""
    assert t.link_up("B") == ()  # the same link again: nothing to resend
    assert t.link_up("C") == reqs and t.inflight == 3  # a replacing link gets them all
    t.reply(answer(reqs[1]))
    assert t.inflight == 2
    assert t.link_down() is True and t.link_up("D") == [reqs[0], reqs[2]]
    for r in (reqs[0], reqs[2]):
        t.reply(answer(r))
    assert t.inflight == 0 and t.link_down() is False  # nothing waits: no reconnect


def test_max_outstanding_queues_the_rest():
    t = table(max_outstanding=2)
    t.link_up("A")
    reqs = [write(t, float(i), offset=i * 512) for i in range(5)]
    assert [r.sent_on for r in reqs] == ["A", "A", None, None, None] and t.inflight == 2
    assert t.take_unsent() == ()  # the window is full
    t.reply(answer(reqs[1]))
    assert t.take_unsent() == [reqs[2]] and t.inflight == 2
    t.max_outstanding = 4  # a HELLO raised it
    assert t.take_unsent() == [reqs[3], reqs[4]] and t.inflight == 4
    assert t.link_down() and t.link_up("B") == [reqs[0], reqs[2], reqs[3], reqs[4]]
    t.max_outstanding = 1
    assert t.link_up("C") == [reqs[0]] and t.inflight == 1
    assert write(t, 9.0).sent_on is None


def test_joined_links_share_the_requests_and_ordered_ones_keep_to_the_first():
    t = table(max_outstanding=2)
    assert t.join("B") == ()  # no session to join yet
    t.link_up("A")
    spread = [write(t, 0.0, offset=i * 512) for i in range(2)]
    assert [r.sent_on for r in spread] == ["A", "A"]  # one link: it takes them
    t.reply(answer(spread[0]))
    t.reply(answer(spread[1]))
    waiting = [write(t, 1.0, offset=i * 512) for i in range(4)]
    assert t.join("B") == [waiting[2], waiting[3]] and t.links == ["A", "B"]
    assert [r.sent_on for r in waiting] == ["A", "A", "B", "B"] and t.inflight == 4
    for r in waiting:
        t.reply(answer(r))
    quiet = [write(t, 2.0, offset=i * 512) for i in range(2)]  # at QD1 too, each in turn
    assert {quiet[0].sent_on, quiet[1].sent_on} == {"A", "B"}
    for r in quiet:
        t.reply(answer(r))

    ordered = [t.submit(3.0, Opcode.WRITE, i * 512, 512, b"o" * 512, ordered=True)
               for i in range(4)]
    assert [r.sent_on for r in ordered] == ["A", "A", None, None]  # B never takes them
    other = write(t, 3.0)
    assert other.sent_on == "B"  # an unordered one does not wait behind them
    t.reply(answer(ordered[0]))  # a slot on A; the callback writes again before the rest go
    late = t.submit(3.0, Opcode.WRITE, 0, 512, b"l" * 512, ordered=True)
    assert late.sent_on is None  # it does not overtake those waiting
    assert t.take_unsent() == [ordered[2]]
    t.reply(answer(ordered[1]))
    assert t.take_unsent() == [ordered[3]]
    t.reply(answer(ordered[2]))
    assert t.take_unsent() == [late]

    assert t.link_down() is True and t.links == [] and t.inflight == 0  # the session ends
    assert t.join("B") == ()
    resent = t.link_up("C")  # every request goes again on the new session, oldest first
    assert resent == [ordered[3], other] and late.sent_on is None and t.links == ["C"]


# -- durability counters -------------------------------------------------------------------------
def test_flush_covers_only_writes_acknowledged_before_it_was_queued():
    t = table()
    t.link_up("A")
    w1 = write(t, 0.0)
    fua = write(t, 0.0, fua=True)
    t.reply(answer(w1))
    t.reply(answer(fua))  # FUA writes are durable already: not counted
    assert (t.acked_writes, t.flushed_writes) == (1, 0)
    w2 = write(t, 1.0)
    flush = t.submit(1.0, Opcode.FLUSH, 0, 0)
    assert flush.covers == 1
    t.reply(answer(w2))  # acknowledged after the FLUSH was queued
    t.reply(answer(flush))
    assert (t.acked_writes, t.flushed_writes) == (2, 1)
    failed_flush = t.submit(2.0, Opcode.FLUSH, 0, 0)
    t.reply(answer(failed_flush, errno.EIO, "disk error"))
    assert t.flushed_writes == 1  # a failed FLUSH covers nothing
    old = t.submit(3.0, Opcode.FLUSH, 0, 0)
    newer = t.submit(3.0, Opcode.FLUSH, 0, 0)
    t.reply(answer(newer))
    t.reply(answer(old))
    assert t.flushed_writes == 2  # never goes back
    w3 = write(t, 4.0)
    t.reply(answer(w3))
    assert t.new_instance() == 1  # acknowledged since the last completed FLUSH
    assert t.new_instance() == 0  # reported once
    assert t.state is ONLINE


def test_new_instance_failure_keeps_the_state():
    t = table()
    t.link_up("A")
    reqs = [write(t, 0.0), write(t, 0.0)]
    failed = t.fail_requests("RPV server 10.0.0.2 restarted")
    assert failed == reqs and all(r.error.errno == errno.EIO for r in failed)
    assert t.state is ONLINE and t.outstanding() == 0 and t.inflight == 0
    assert t.refusal() is None


def resumable(state: ClientState) -> bool:
    return Event.RESUME in TRANSITIONS[state]


# -- states ---------------------------------------------------------------------------------------
def test_failed_state_fails_everything_with_eio_and_refuses_new_requests():
    t = table(io_timeout=1.0)
    t.link_up("A")
    reqs = [write(t, 0.0), t.submit(0.5, Opcode.READ, 0, 512), t.submit(0.5, Opcode.FLUSH, 0, 0)]
    expired = t.expire(1.0)
    assert expired.failed == reqs and {r.error.errno for r in reqs} == {errno.EIO}
    refusal = t.refusal()
    assert refusal.errno == errno.EIO
    assert str(refusal) == ("[Errno 5] hdisk9: RPV client is failed "
                            "(no response from RPV server 10.0.0.2 within 1 s)")
    with pytest.raises(StateError):
        write(t, 2.0)
    assert t.outstanding() == 0 and t.link_down() is False  # failed: no reconnect


def test_state_transitions_the_table_refuses():
    t = RequestTable("hdisk9", "none", 1.0)
    assert t.state is DISABLED and t.refusal().errno == errno.EIO
    with pytest.raises(StateError):
        t.begin_resume()  # server_addr is none: set it first
    with pytest.raises(StateError):
        t.fail(Event.EXPIRE, "nothing can be pending here")
    with pytest.raises(StateError):
        t.fail(Event.ENABLE, "not a failure")
    with pytest.raises(StateError):
        t.resume_failed(DISABLED)  # no resume starts there
    assert t.state is DISABLED
    assert {s: TRANSITIONS[s].get(Event.EXPIRE) for s in ClientState} == {
        ONLINE: FAILED, FAILED: FAILED, DISABLED: None, CLOSED: FAILED}
    assert {s for s in ClientState if resumable(s)} == {ONLINE, FAILED, CLOSED}
    t.enable()
    assert t.state is ONLINE
    assert t.fail(Event.CLOSE, "hdisk9: device unconfigured") == []
    assert t.state is CLOSED and t.last_error == "hdisk9: device unconfigured"
    assert t.fail(Event.DISABLE, "hdisk9: server_addr set to none") == []
    assert t.state is DISABLED


def test_a_failed_resume_reverts_and_keeps_what_was_queued_meanwhile():
    t = table(io_timeout=1.0)
    write(t, 0.0)
    t.expire(1.0)
    previous = t.begin_resume()
    assert previous is FAILED and t.state is ONLINE and t.refusal() is None
    queued = write(t, 2.0)
    t.resume_failed(previous)
    assert t.state is FAILED and t.outstanding() == 1
    assert t.link_down() is False  # not online: no reconnect for it
    expired = t.expire(3.0)  # its deadline still bounds it
    assert expired.failed == [queued] and t.state is FAILED


# -- no request is ever lost -----------------------------------------------------------------
OPCODES = (Opcode.READ, Opcode.WRITE, Opcode.FLUSH, Opcode.CHECKSUM)

KINDS = (["submit"] * 6 + ["reply"] * 6 + ["advance"] * 3 + ["link_up"] * 2 + ["resume"] * 2
         + ["join"] * 2 + ["link_lost", "restart", "set_server", "close", "io_timeout"])
STEPS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5)  # "advance" (io_timeout starts at 1 s)
# (kind, which: request / opcode / step / address / timeout, status or FUA, resume fails)
ops = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 40),
                         st.sampled_from([0, 0, 0, errno.ENOSPC]), st.booleans()),
               min_size=5, max_size=120)


class Model:
    """Drives a table the way ``RPVClient`` does, recording every outcome and its time."""

    def __init__(self):
        self.t = RequestTable("hdisk9", "10.0.0.2", 1.0, max_outstanding=3)
        self.now = 0.0
        self.links = 0
        self.submitted: dict[int, object] = {}
        self.sent: list[int] = []  # ids the server has seen (on any link)
        self.last_ordered: dict[str, int] = {}  # link -> the last ordered request sent on it
        self.outcomes: dict[int, tuple[float, OSError | None]] = {}

    def outcome(self, req) -> None:
        assert req.rid in self.submitted and req.rid not in self.outcomes, "answered twice"
        self.outcomes[req.rid] = (self.now, req.error)

    def sending(self, reqs) -> None:
        for req in reqs:
            assert req.sent_on in self.t.links
            if req.ordered:  # on the session's first link, in submission order
                assert req.sent_on is self.t.link
                assert req.rid > self.last_ordered.get(req.sent_on, 0)
                self.last_ordered[req.sent_on] = req.rid
            self.sent.append(req.rid)

    def advance(self, dt: float) -> None:
        target = self.now + dt
        while (when := self.t.next_timer()) is not None and when <= target:
            self.now = max(self.now, when)  # the timer fires on time
            expired = self.t.expire(self.now)
            assert expired is not None and self.t.state is FAILED
            for req in expired.failed:
                self.outcome(req)
        self.now = target

    def step(self, op) -> None:
        t, kind = self.t, op[0]
        if kind == "submit":
            opcode, fua = OPCODES[op[1] % len(OPCODES)], bool(op[2])
            if t.refusal() is not None:
                with pytest.raises(StateError):
                    t.submit(self.now, opcode, 0, 512, b"x" * 512, fua)
                return
            data = b"x" * 512 if opcode is Opcode.WRITE else None
            req = t.submit(self.now, opcode, 0, 0 if opcode is Opcode.FLUSH else 512, data, fua,
                           ordered=op[3])
            self.submitted[req.rid] = req
            if req.sent_on is not None:
                self.sending([req])
        elif kind == "reply":
            if not self.sent:
                return
            req = t.reply(answer(self.submitted[self.sent[op[1] % len(self.sent)]], op[2]))
            if req is not None:
                self.outcome(req)
                if op[3] and t.refusal() is None:  # its callback writes again at once
                    new = t.submit(self.now, Opcode.WRITE, 0, 512, b"y" * 512, ordered=True)
                    self.submitted[new.rid] = new
                    if new.sent_on is not None:
                        self.sending([new])
            self.sending(t.take_unsent())
        elif kind == "advance":
            self.advance(STEPS[op[1] % len(STEPS)])
        elif kind == "link_lost":
            t.link_down()
        elif kind == "link_up":
            self.links += 1
            self.sending(t.link_up(f"link{self.links}"))
        elif kind == "join":  # another path joins the session (none without one)
            self.links += 1
            self.sending(t.join(f"link{self.links}"))
        elif kind == "resume":
            if resumable(t.state):
                previous = t.begin_resume()
                if op[3]:
                    t.resume_failed(previous)
        elif kind == "restart":
            if t.new_instance():
                for req in t.fail_requests("restarted"):
                    self.outcome(req)
        elif kind == "set_server":
            t.server_addr = "none" if op[1] % 3 == 0 else "10.0.0.3"
            if t.server_addr == "none":
                for req in t.fail(Event.DISABLE, "server_addr set to none"):
                    self.outcome(req)
            else:
                t.enable()
                t.link_down()
        elif kind == "close":
            for req in t.fail(Event.CLOSE, "unconfigured"):
                self.outcome(req)
        elif kind == "io_timeout":
            t.set_io_timeout((0.5, 1.0, 3.0)[op[1] % 3])
            self.advance(0.0)  # RPVClient re-arms its timer: it fires at once if due
        self.check()

    def check(self) -> None:
        t = self.t
        pending = list(t.requests())
        ids = {r.rid for r in pending}
        assert ids.isdisjoint(self.outcomes) and ids | set(self.outcomes) == set(self.submitted)
        on_link = [r for r in pending if r.sent_on is not None]
        assert all(r.sent_on in t.links for r in on_link)
        assert (t.link is None) == (not t.links) and (t.link is None or t.links[0] is t.link)
        load = {link: sum(r.sent_on is link for r in on_link) for link in t.links}
        assert t.inflight == len(on_link) and all(n <= t.max_outstanding for n in load.values())
        for r in pending:  # nothing waits while a slot it may use is free
            if r.sent_on is None and t.links:
                may_use = [t.link] if r.ordered else t.links
                assert all(load[link] == t.max_outstanding for link in may_use)
        when = t.next_timer()
        assert when == (min(r.deadline for r in pending) if pending else None)
        assert when is None or when > self.now  # every passed deadline has been enforced
        if t.state is DISABLED:
            assert not pending


@settings(max_examples=400, deadline=None)
@given(ops)
def test_no_request_is_lost_or_answered_after_its_deadline(sequence):
    m = Model()
    for op in sequence:
        m.step(op)
    m.advance(100.0)  # every deadline passes: whatever still waits must fail now
    assert m.t.outstanding() == 0
    assert set(m.outcomes) == set(m.submitted)  # each exactly once (outcome() checks)
    for rid, (when, error) in m.outcomes.items():
        deadline = m.submitted[rid].deadline
        if error is None or error.errno != errno.EIO:
            assert when < deadline, "answered after its deadline passed"
