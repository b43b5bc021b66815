"""How fast a resync may copy over the link: a rate between a floor and a ceiling, steered by
how long a PING to the destination takes while the resync runs (as DRBD's dynamic resync
controller steers by the delay its requests see).

A PING waits behind everything queued on the connection, the application's writes included,
so its round trip is the delay the resync adds to them. Its lowest value seen is the link's
own round trip; while the delay stays within ``impact`` of it (0.5: at most half as long
again) the rate grows: by half while the delay is under half the target, then by a
floor's worth at a time; beyond the target the rate halves, never below the floor.
Application I/O keeps priority without the resync ever stopping. While no application I/O
was seen for ``QUIET`` seconds there is nothing to protect (DRBD, too, throttles only when it
sees application I/O): the rate grows whatever the delay, and as soon as application I/O is
seen again the delays steer it.

Sans-IO: the caller feeds PING delays and asks how long to wait before copying; every time
is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
DEFAULT_FLOOR = 4 * MiB  # bytes/s a resync always gets
DEFAULT_CEILING = 1024 * MiB  # bytes/s, when nothing limits it (syncvg --rate lowers it)
DEFAULT_IMPACT = 0.5  # how much longer than the link's round trip the resync may make I/O
INTERVAL = 0.1  # seconds between two adjustments
GROWTH = 1.5  # rate factor per adjustment while the delay is within target
START_REMOTE = 64 * MiB  # bytes/s a resync over a link starts at (then it adapts)
BACKOFF = 0.5  # rate factor when it is beyond
SLACK = 0.002  # seconds of delay always allowed (a fast link's round trip is noise)
QUIET = 1.0  # seconds without application I/O after which nothing is protected


@dataclass
class RateSettings:
    floor: float = DEFAULT_FLOOR
    ceiling: float = DEFAULT_CEILING
    impact: float = DEFAULT_IMPACT

    def __post_init__(self) -> None:
        if self.floor <= 0 or self.ceiling <= 0 or self.impact < 0:
            raise ValueError("resync rates must be positive and the impact not negative")
        self.floor = min(self.floor, self.ceiling)


class AdaptiveRate:
    """One resync's rate controller and token bucket."""

    def __init__(self, settings: RateSettings, now: float, start: float | None = None):
        self.settings = settings
        self.rate = max(settings.floor, min(settings.ceiling, start or settings.floor))
        self.base: float | None = None  # the lowest PING delay seen: the link itself
        self._delays: list[float] = []  # PING delays since the last adjustment
        self._adjusted = now
        self._allowed = now  # when the bucket is empty again (bytes already granted)
        self._ping_since: float | None = None  # a PING is out since then
        self.measured = False  # PINGs are sent (a remote destination)
        self._app_seen: float | None = None  # when application I/O was last seen
        self.adjustments = 0

    def ping_sent(self, now: float) -> None:
        self.measured = True
        self._ping_since = now

    def app_io(self, now: float) -> None:
        """Application I/O was seen (at ``now``): the delays count again."""
        self._app_seen = now

    def delay_seen(self, now: float, seconds: float) -> None:
        """The PING sent last took ``seconds``."""
        self._ping_since = None
        if self.base is None or seconds < self.base:
            self.base = seconds
        self._delays.append(seconds)
        self._adjust(now)

    def _adjust(self, now: float) -> None:
        if now - self._adjusted < INTERVAL:
            return
        s = self.settings
        if self._ping_since is not None:  # still out: it takes at least this long
            self._delays.append(now - self._ping_since)
        if self._delays and self.base is not None:
            delays = sorted(self._delays)
            typical = delays[len(delays) // 2]
            added = typical - self.base - SLACK  # what the resync adds to every request
            if self._app_seen is None or now - self._app_seen >= QUIET:  # none to protect
                self.rate = min(s.ceiling, self.rate * GROWTH)
            elif added > self.base * s.impact:
                self.rate = max(s.floor, self.rate * BACKOFF)
            elif added > self.base * s.impact / 2:  # close to the target: carefully
                self.rate = min(s.ceiling, self.rate + s.floor / 4)
            else:
                self.rate = min(s.ceiling, self.rate * GROWTH)
        elif not self.measured:  # a local destination: no link to protect
            self.rate = min(s.ceiling, self.rate * GROWTH)
        self._delays.clear()
        self._adjusted = now
        self.adjustments += 1

    def refund(self, nbytes: int) -> None:
        """Bytes granted by :meth:`wait` that were not sent after all."""
        self._allowed -= nbytes / self.rate

    def wait(self, now: float, nbytes: int) -> float:
        """0 when ``nbytes`` may be copied now (they count as sent), else the seconds to wait
        before asking again: nothing is reserved ahead, so a change of rate applies to every
        copy still waiting."""
        self._adjust(now)
        if now < self._allowed:
            return self._allowed - now
        self._allowed = now + nbytes / self.rate
        return 0.0
