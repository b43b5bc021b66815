"""The control socket: the only way ``glvmctl`` reaches ``rpvd``.

A unix stream socket, mode 0600, accepting only root or the daemon's own user (SO_PEERCRED).
Requests and replies are JSON lines as :mod:`rpv.control_api` defines them; that module's
table says which operations exist and what arguments each takes. Lines are capped at
:data:`MAX_LINE`.

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

from rpv import control_api as api
from rpv.errors import CommandError
from rpv.jobs import JobError, Jobs

log = structlog.get_logger("control")
# Audit events are written whatever log_level says.
audit = structlog.wrap_logger(None, wrapper_class=structlog.make_filtering_bound_logger(
    logging.INFO), logger_name="audit")

MAX_LINE = 1024 * 1024
MAX_CLIENTS = 64


class ControlServer:
    def __init__(self, handlers: dict[str, Callable[..., Awaitable | object]],
                 jobs: Jobs | None = None):
        missing = api.OPERATIONS.keys() - handlers.keys()
        extra = handlers.keys() - api.OPERATIONS.keys()
        if missing or extra:
            raise ValueError(f"control handlers do not match the API table: missing "
                             f"{sorted(missing)}, not in the table {sorted(extra)}")
        self._handlers = handlers
        self._jobs = jobs  # operations with progress run as jobs (glvmctl jobs)
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
                if op is not None and not api.OPERATIONS[op].query:
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
            operation, args = api.decode(line)
        except api.RequestError as e:
            op = _op_name(line)
            return {"ok": False, "error": str(e)}, op, None, "refused"
        op = operation.name
        kwargs = api.arguments(args)  # handlers never change it: the audit logs it as given
        handler = self._handlers[op]
        try:
            if operation.job:
                result = await self._as_job(op, handler, kwargs, writer)
            elif operation.progress:
                result = await handler(**kwargs, progress=_sender(writer))
            else:
                result = handler(**kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except JobError as e:
            return {"ok": False, "error": str(e)}, op, kwargs, "refused"
        except Exception as e:  # noqa: BLE001 — every failure becomes one error line
            if not isinstance(e, CommandError):
                log.exception("control_op_failed", op=op)
                return ({"ok": False, "error": f"{op} failed: {type(e).__name__}: {e}"},
                        op, kwargs, "failed")
            log.info("control_op_refused", op=op, reason=str(e))
            return {"ok": False, "error": str(e)}, op, kwargs, "refused"
        return {"ok": True, "result": result}, op, kwargs, "ok"


    async def _as_job(self, op: str, handler, kwargs: dict, writer) -> object:
        """Run a long operation as a job, passing its progress to this client; the job runs on
        if the client goes away."""
        send = _sender(writer)
        if self._jobs is None:
            return await handler(**kwargs, progress=send)
        target = next((kwargs[k] for k in ("lv", "vg", "pv") if kwargs.get(k)), "")
        job = self._jobs.start(op, target, lambda progress: handler(**kwargs, progress=progress))
        job.watchers.append(send)
        await asyncio.wait({job.task})
        if job.task.cancelled():
            raise JobError(f"{op} {target} was cancelled (job {job.id})")
        return job.task.result()


def _sender(writer) -> Callable[[dict], None]:
    """A progress callback writing ``{"event": ...}`` lines to this client while it is there."""
    def send(ev: dict) -> None:
        if writer is not None and not writer.is_closing():
            writer.write(json.dumps({"event": ev}).encode() + b"\n")
    return send


def _op_name(line: bytes) -> str | None:
    """The operation a refused request named, if it named a known one (for the audit)."""
    try:
        op = json.loads(line).get("op")
    except (ValueError, AttributeError):
        return None
    return op if isinstance(op, str) and op in api.OPERATIONS else None


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
