"""Waiting for something to happen without guessing how long it takes: bounded polls of a
condition (for state that has no event to await), following a daemon's JSON log, and letting
runnable asyncio tasks take their steps."""

from __future__ import annotations

import asyncio
import json
import select
import time


def wait_for_log(site, match, timeout: float = 30.0, since: int = 0) -> dict:
    """Follow the daemon's JSON log until an event matches (bounded by ``timeout``),
    ignoring the first ``since`` lines."""
    deadline = time.monotonic() + timeout
    with open(site.state_dir / "rpvd.log") as f:
        for _ in range(since):
            f.readline()
        while time.monotonic() < deadline:
            line = f.readline()
            if not line:
                select.select([], [], [], 0.02)  # a regular file is always "readable"
                continue
            event = json.loads(line)
            if match(event):
                return event
    raise AssertionError("log event not seen in time")


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something true, and return that; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout} s"
        time.sleep(0.01)
    return value


async def until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` from a coroutine (for state there is no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def settled(value, quiet: float = 0.05, timeout: float = 10.0):
    """Wait until ``value()`` stops changing for ``quiet`` seconds; return it. Fail if it is
    still changing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = value()
    while True:
        await asyncio.sleep(quiet)  # the quiet period itself is what is observed
        now = value()
        if now == last:
            return now
        assert loop.time() < deadline, f"still changing after {timeout} s: {last} -> {now}"
        last = now


async def settle(n: int = 20) -> None:
    """Let every runnable task take a few steps (``n`` turns of the event loop)."""
    for _ in range(n):
        await asyncio.sleep(0)
