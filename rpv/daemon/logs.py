"""structlog set-up: JSON lines (ISO UTC time, level, event, context) to stderr and a file."""

from __future__ import annotations

import logging
import sys

import structlog


class _Tee:
    """A minimal file-like object writing each log line to several streams."""

    def __init__(self, *streams):
        self._streams = streams

    def write(self, s: str) -> None:
        for st in self._streams:
            st.write(s)

    def flush(self) -> None:
        for st in self._streams:
            st.flush()


def configure(log_path: str | None, fmt: str = "json", level: str = "info") -> None:
    streams = [sys.stderr]
    if log_path:
        streams.append(open(log_path, "a", buffering=1, encoding="utf-8"))  # noqa: SIM115
    renderer = (structlog.processors.JSONRenderer() if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=_Tee(*streams)),
        cache_logger_on_first_use=True,
    )
