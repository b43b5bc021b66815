"""Waiting for something to happen without guessing how long it takes: bounded polls of a
condition (for state that has no event to await) and following a daemon's JSON log."""

from __future__ import annotations

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
