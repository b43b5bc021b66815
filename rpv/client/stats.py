"""I/O statistics of an RPV client (what ``rpvstat`` and the Prometheus metrics report)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(slots=True)
class IOStats:
    reads: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: int = 0
    timeouts: int = 0
    io_seconds: float = 0.0
    max_seconds: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    # READ/WRITE data payloads on the link (re-sends included): before and after compression
    raw_bytes_read: int = 0
    wire_bytes_read: int = 0
    raw_bytes_written: int = 0
    wire_bytes_written: int = 0

    def payload(self, is_write: bool, raw: int, wire: int) -> None:
        """A data payload sent (write) or received (read): ``raw`` bytes, ``wire`` on the
        link (the sans-IO connection's ``on_payload``)."""
        if is_write:
            self.raw_bytes_written += raw
            self.wire_bytes_written += wire
        else:
            self.raw_bytes_read += raw
            self.wire_bytes_read += wire

    def completed(self, is_write: bool, nbytes: int, seconds: float) -> None:
        if is_write:
            self.writes += 1
            self.bytes_written += nbytes
        else:
            self.reads += 1
            self.bytes_read += nbytes
        self.io_seconds += seconds
        if seconds > self.max_seconds:
            self.max_seconds = seconds
        self.histogram[bisect.bisect_left(BUCKETS, seconds)] += 1

    def as_dict(self) -> dict:
        n = self.reads + self.writes
        return {"reads": self.reads, "writes": self.writes,
                "kb_read": self.bytes_read // 1024, "kb_written": self.bytes_written // 1024,
                "errors": self.errors, "timeouts": self.timeouts,
                "avg_ms": round(1000 * self.io_seconds / n, 3) if n else 0.0,
                "max_ms": round(1000 * self.max_seconds, 3),
                "raw_bytes_read": self.raw_bytes_read, "wire_bytes_read": self.wire_bytes_read,
                "raw_bytes_written": self.raw_bytes_written,
                "wire_bytes_written": self.wire_bytes_written}
