"""A short seeded run of the fault-injection soak (``make soak`` runs the long one).

Seed 1's first faults (four here, more with make soak): a failover after kill -9 of site A
(and the seed's failback), kill -9 of A, a blackholed link, kill -9 of A in the middle of a
resync. See tests/soak.py for what is checked after each one.
"""

from __future__ import annotations

from tests.soak import BLOCK, KINDS, POWER_KINDS, Model, block_content, identify, run_soak

# -- the checker itself (no daemons) ---------------------------------------------------------

def test_block_contents_name_their_write():
    b = block_content(7, 42, 3)
    assert len(b) == BLOCK and identify(7, 3, b) == 42
    assert identify(7, 3, bytes(BLOCK)) == 0
    assert identify(7, 4, b).startswith("misplaced")  # right write, wrong place
    assert identify(7, 3, b[:-1] + bytes([b[-1] ^ 1])).startswith("torn")
    assert identify(7, 3, b"\xff" * BLOCK) == "garbage"
    assert block_content(7, 42, 3) != block_content(7, 43, 3) != block_content(8, 42, 3)


def test_model_acknowledged_unknown_and_settled():
    m = Model(seed=1, size=16 * BLOCK)
    w1, d1 = m.new_write(0, 4 * BLOCK, False, "A")
    m.ack(w1)
    assert m.check(0, d1) == [] and m.check(0, bytes(4 * BLOCK))  # acked: old content is lost
    w2, d2 = m.new_write(BLOCK, 2 * BLOCK, False, "A")
    m.unknown_outcome(w2, "connection lost")  # in flight at a kill: old or new, per block
    mixed = d1[:BLOCK] + d1[BLOCK:2 * BLOCK] + d2[BLOCK:] + d1[3 * BLOCK:]
    assert m.check(0, mixed) == [] and m.check(0, d1) == []
    bad = m.check(0, bytes(4 * BLOCK))
    assert [b for b, _, _ in bad] == [0, 1, 2, 3] and all(w1.seq in may for _, _, may in bad)
    m.collapse(0, mixed)  # copies compared equal: what was read is what stays
    assert m.check(0, d1)[0][0] == 2
    w3, d3 = m.new_write(BLOCK, BLOCK, True, "B")
    m.ack(w3)
    assert m.possible[1] == frozenset({w3.seq})
    m.prune()
    assert set(m.writes) == {w1.seq, w2.seq, w3.seq}


def test_model_knows_what_a_flush_promised():
    m = Model(seed=1, size=8 * BLOCK)
    w1, d1 = m.new_write(0, 2 * BLOCK, False, "A")
    m.ack(w1)
    covered = m.flush_started()
    w2, d2 = m.new_write(0, BLOCK, False, "A")  # acknowledged while the FLUSH is on its way
    m.ack(w2)
    m.flush_done(covered)  # covers w1 only
    w3, d3 = m.new_write(2 * BLOCK, BLOCK, True, "A")  # FUA: durable by itself
    m.ack(w3)
    failed = m.flush_started()
    m.flush_failed(failed)  # w2 stays unflushed
    assert m.durable[:3] == [w1.seq, w1.seq, w3.seq]
    assert m.check(0, d1[:BLOCK]) and m.check(0, bytes(BLOCK))
    assert m.allow_unflushed_loss() == 1  # only block 0 has an unflushed write
    assert m.check(0, d1[:BLOCK]) == [] and m.check(0, d2) == []  # w1 (durable) or w2
    assert m.check(0, bytes(BLOCK))  # never older than what the flush made durable
    assert m.check(2 * BLOCK, d3) == [] and m.check(2 * BLOCK, bytes(BLOCK))
    m.collapse(0, d1[:BLOCK])  # the loss happened: block 0 holds w1 again
    later = m.flush_started()  # the first FLUSH after the power loss...
    m.flush_done(later)
    assert m.durable[0] == w1.seq  # ...does not make the lost w2 durable


# -- the soak ---------------------------------------------------------------------------------

def test_short_soak():
    report = run_soak(seed=1, faults=4, duration=50,
                      kinds=tuple(k for k in KINDS if k not in POWER_KINDS))
    assert sum(report.faults.values()) >= 4, report.summary()  # the duration cap is a guard
    assert not report.lost and report.corrupt_blocks == 0, report.summary()
    assert report.diverged_blocks == 0, report.summary()
    assert report.ok, report.summary()
    print(report.summary())


def test_short_power_loss_soak():
    """Seed 11's power losses: B back at once (inside io_timeout), A, B down past
    io_timeout. No promised write lost, copies identical after every repair."""
    report = run_soak(seed=11, faults=3, duration=60, kinds=POWER_KINDS)
    assert report.power_losses >= 3, report.summary()  # the duration cap is a guard
    assert not report.lost and report.corrupt_blocks == 0, report.summary()
    assert report.diverged_blocks == 0, report.summary()
    assert report.ok, report.summary()
    print(report.summary())

