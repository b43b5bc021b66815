"""``glvm-faultproxy`` entry point.

    glvm-faultproxy --listen IP:PORT --target IP:PORT [--source IP] --control PATH
                    [--latency-ms MS] [--jitter-ms MS] [--bandwidth-bps BYTES_PER_S]
                    [--mode MODE] [--silence drop|hold] [--max-connections N]
                    [--queue-limit BYTES] [--seed N] [--exit-on-stdin-eof]
                    [--log-level LEVEL]

Prints exactly one line ``READY`` to stdout once the listener and the control socket are up,
and nothing else to stdout. Logs (structlog, key=value) go to stderr. SIGTERM/SIGINT close
everything and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys

import structlog

from rpv.faultproxy.proxy import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_QUEUE_LIMIT,
    MODES,
    SILENCE_POLICIES,
    ControlError,
    Proxy,
    Settings,
)


def parse_hostport(text: str) -> tuple[str, int]:
    """``"IP:PORT"`` or ``"[IPv6]:PORT"`` -> ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        portnum = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= portnum <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, portnum


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="glvm-faultproxy",
        description="Userspace TCP fault proxy (latency, jitter, bandwidth, blackhole, reset).",
    )
    ap.add_argument("--listen", required=True, type=parse_hostport, metavar="IP:PORT",
                    help="address to accept connections on (port 0 = any; see op get)")
    ap.add_argument("--target", required=True, type=parse_hostport, metavar="IP:PORT",
                    help="address every accepted connection is forwarded to")
    ap.add_argument("--source", metavar="IP",
                    help="bind upstream connections to this local IP (what the target sees)")
    ap.add_argument("--control", required=True, metavar="PATH",
                    help="unix socket for JSON-lines control requests")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--bandwidth-bps", type=int, default=0,
                    help="cap per direction in bytes per second (0 = unlimited)")
    ap.add_argument("--mode", choices=MODES, default="pass")
    ap.add_argument("--silence", choices=SILENCE_POLICIES, default="drop",
                    help="what silenced directions do with data: drop it or hold it")
    ap.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS)
    ap.add_argument("--queue-limit", type=int, default=DEFAULT_QUEUE_LIMIT,
                    help="max queued bytes per connection per direction before reads pause")
    ap.add_argument("--seed", type=int, help="seed for the jitter random generator")
    ap.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="exit when stdin reaches EOF (the parent died or closed the pipe)")
    ap.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    return ap


def _configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def _watch_stdin(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        return
    while await reader.read(4096):
        pass
    stop.set()


async def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings().updated(
            {
                "mode": args.mode,
                "latency_ms": args.latency_ms,
                "jitter_ms": args.jitter_ms,
                "bandwidth_bps": args.bandwidth_bps,
                "silence": args.silence,
            }
        )
    except ControlError as e:
        print(f"glvm-faultproxy: {e}", file=sys.stderr)
        return 2
    proxy = Proxy(
        args.listen,
        args.target,
        source=args.source,
        control_path=args.control,
        settings=settings,
        max_connections=args.max_connections,
        queue_limit=args.queue_limit,
        rng=random.Random(args.seed),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await proxy.start()
    except OSError as e:
        print(f"glvm-faultproxy: cannot listen: {e}", file=sys.stderr)
        await proxy.close()
        return 1
    watcher = loop.create_task(_watch_stdin(stop)) if args.exit_on_stdin_eof else None
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await proxy.close()
        structlog.get_logger("glvm.faultproxy").info("faultproxy_stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_connections < 1 or args.queue_limit < 1:
        print("glvm-faultproxy: --max-connections and --queue-limit must be >= 1",
              file=sys.stderr)
        sys.exit(2)
    _configure_logging(args.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        uvloop = None
    if uvloop is not None:
        rc = uvloop.run(run(args))
    else:  # pragma: no cover
        rc = asyncio.run(run(args))
    sys.exit(rc)


if __name__ == "__main__":
    main()
