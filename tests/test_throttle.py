"""The resync rate controller (lvm/throttle.py), with time given: it grows while PINGs to the
destination come back as fast as the link allows, halves when they queue behind the resync,
never leaves [floor, ceiling], and its token bucket spaces the copies out at the rate."""

from __future__ import annotations

import pytest

from lvm.throttle import INTERVAL, AdaptiveRate, MiB, RateSettings


def run(ctl: AdaptiveRate, t: float, delays: list[float], app_io: bool = True) -> float:
    """One PING per interval with the given delays, the application doing I/O meanwhile
    (unless ``app_io`` is false); returns the time after them."""
    for d in delays:
        if app_io:
            ctl.app_io(t)
        ctl.ping_sent(t)
        t += d
        ctl.delay_seen(t, d)
        t += INTERVAL
    return t


def test_grows_on_a_quick_link_up_to_the_ceiling():
    ctl = AdaptiveRate(RateSettings(floor=4 * MiB, ceiling=64 * MiB), 0.0)
    assert ctl.rate == 4 * MiB
    run(ctl, 0.0, [0.010] * 40)
    assert ctl.rate == 64 * MiB


def test_backs_off_to_the_floor_while_pings_queue_and_grows_again():
    ctl = AdaptiveRate(RateSettings(floor=4 * MiB, ceiling=512 * MiB, impact=0.5), 0.0)
    t = run(ctl, 0.0, [0.010] * 20)
    fast = ctl.rate
    assert fast > 50 * MiB
    t = run(ctl, t, [0.050] * 3)  # five times the link's own round trip
    assert ctl.rate < fast / 4
    t = run(ctl, t, [0.050] * 20)
    assert ctl.rate == 4 * MiB  # never below the floor
    run(ctl, t, [0.014] * 5)  # within 1.5x: it grows again
    assert ctl.rate > 4 * MiB


def test_without_application_io_there_is_nothing_to_protect():
    ctl = AdaptiveRate(RateSettings(floor=4 * MiB, ceiling=512 * MiB, impact=0.5), 0.0,
                       64 * MiB)
    t = run(ctl, 0.0, [0.010])  # the link's own round trip
    t = run(ctl, t, [0.080] * 12)  # the resync's queue delays the application: it backs off
    assert ctl.rate == 4 * MiB
    t = run(ctl, t, [0.080] * 24, app_io=False)  # QUIET seconds on, nobody else is there
    assert ctl.rate == 512 * MiB
    run(ctl, t, [0.080] * 3)  # application I/O again: the same delays count at once
    assert ctl.rate <= 64 * MiB


def test_a_ping_still_out_counts_as_a_long_delay():
    ctl = AdaptiveRate(RateSettings(floor=1 * MiB, ceiling=512 * MiB), 0.0)
    t = run(ctl, 0.0, [0.010] * 10)
    before = ctl.rate
    ctl.ping_sent(t)
    ctl.wait(t + 0.5, 4096)  # no answer for 0.5 s: queued behind the resync
    assert ctl.rate < before


def test_a_local_destination_grows_without_pings():
    ctl = AdaptiveRate(RateSettings(floor=1 * MiB, ceiling=8 * MiB), 0.0)
    for i in range(30):
        ctl.wait(i * INTERVAL, 0)
    assert ctl.rate == 8 * MiB


def test_the_bucket_spaces_copies_at_the_rate():
    ctl = AdaptiveRate(RateSettings(floor=1 * MiB, ceiling=1 * MiB), 0.0)
    assert ctl.wait(0.0, MiB) == 0.0  # the first copy goes at once
    assert ctl.wait(0.0, MiB) == pytest.approx(1.0)  # the next one asks again in 1 s
    assert ctl.wait(0.5, MiB) == pytest.approx(0.5)  # nothing was reserved meanwhile
    assert ctl.wait(1.0, MiB) == 0.0
    assert ctl.wait(1.5, MiB) == pytest.approx(0.5)
    assert ctl.wait(10.0, MiB) == 0.0  # idle time is not saved up


def test_settings_are_checked():
    with pytest.raises(ValueError):
        RateSettings(floor=0)
    assert RateSettings(floor=8 * MiB, ceiling=2 * MiB).floor == 2 * MiB


def test_a_refund_gives_back_what_was_not_sent():
    ctl = AdaptiveRate(RateSettings(floor=1 * MiB, ceiling=1 * MiB), 0.0)
    assert ctl.wait(0.0, MiB) == 0.0
    ctl.refund(MiB)  # all of it was identical: nothing crossed the link
    assert ctl.wait(0.0, MiB) == 0.0
