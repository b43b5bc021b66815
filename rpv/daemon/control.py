"""The control socket: the only way ``glvmctl`` reaches ``rpvd``.

A unix stream socket, mode 0600, accepting only root or the daemon's own user (SO_PEERCRED).
Each request is one JSON object on one line, ``{"op": NAME, "args": {...}}``; the reply is one
JSON line ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "one line"}``. Long
operations may first send ``{"event": ...}`` lines. Lines are capped at :data:`MAX_LINE`.

Every request for an operation that is not a pure query leaves one ``audit`` event in the
JSON log: the peer's uid and pid, the operation and its arguments, and the outcome.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

import structlog

from rpv.errors import CommandError

log = structlog.get_logger("control")
# Audit events are written whatever log_level says.
audit = structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(
    logging.INFO), logger_name="audit")

MAX_LINE = 1024 * 1024
MAX_CLIENTS = 64


class ControlServer:
    def __init__(self, ops: dict[str, Callable[..., Awaitable | object]],
                 queries: frozenset[str] = frozenset()):
        self._ops = ops
        self._queries = queries  # operations that change nothing: not audited
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self, path: str) -> None:
        self._path = path
        if os.path.exists(path):
            os.unlink(path)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        log.info("control_listening", path=path)

    async def close(self) -> None:
        if self._server:
            self._server.close()
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
        for t in list(self._clients):
            t.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._clients) >= MAX_CLIENTS:
            await _reply(writer, {"ok": False, "error": "too many control connections"})
            writer.close()
            return
        self._clients.add(task)
        try:
            peer = _peer_creds(writer.get_extra_info("socket"))
            if peer is None or peer[1] not in (0, os.getuid()):
                pid, uid = peer[:2] if peer else (None, None)
                audit.warning("audit", uid=uid, pid=pid, op=None, outcome="denied",
                              error="control socket is for root only")
                await _reply(writer, {"ok": False, "error": "permission denied: control "
                                                            "socket is for root only"})
                return
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await _reply(writer, {"ok": False, "error": "request line too long"})
                    return
                if not line:
                    return
                reply, op, args, outcome = await self._dispatch(line, writer)
                if op is not None and op not in self._queries:
                    audit.info("audit", uid=peer[1], pid=peer[0], op=op, args=args,
                               outcome=outcome, error=reply.get("error"))
                await _reply(writer, reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _dispatch(self, line: bytes, writer: asyncio.StreamWriter
                        ) -> tuple[dict, str | None, dict | None, str]:
        """(reply, operation, its arguments, outcome: ok, refused or failed); the operation
        is None when the request named none that exists."""
        try:
            req = json.loads(line)
            op, args = req["op"], req.get("args", {})
            if not isinstance(op, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "malformed request: expected "
                                          '{"op": NAME, "args": {...}}'}, None, None, "refused"
        fn = self._ops.get(op)
        if fn is None:
            return {"ok": False, "error": f"unknown operation '{op}'"}, None, None, "refused"
        call_args = args
        if "progress" in inspect.signature(fn).parameters:
            call_args = dict(args, progress=lambda ev: writer.write(
                json.dumps({"event": ev}).encode() + b"\n"))
        try:
            inspect.signature(fn).bind(**call_args)
        except TypeError as e:
            return {"ok": False, "error": f"bad arguments for {op}: {e}"}, op, args, "refused"
        try:
            result = fn(**call_args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as e:  # noqa: BLE001 — every failure becomes one error line
            if not isinstance(e, CommandError):
                log.exception("control_op_failed", op=op)
                return ({"ok": False, "error": f"{op} failed: {type(e).__name__}: {e}"},
                        op, args, "failed")
            log.info("control_op_refused", op=op, reason=str(e))
            return {"ok": False, "error": str(e)}, op, args, "refused"
        return {"ok": True, "result": result}, op, args, "ok"


async def _reply(writer: asyncio.StreamWriter, obj: dict) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


def _peer_creds(sock: socket.socket | None) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end (SO_PEERCRED), None if unknown."""
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", creds)
