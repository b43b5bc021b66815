"""A synchronous client for rpvd's control socket (one JSON line each way, as
:mod:`rpv.control_api` defines)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable

from rpv import control_api as api

DEFAULT_SOCKET = "/var/lib/glvm/control.sock"
MAX_REPLY = 64 * 1024 * 1024


class ControlError(Exception):
    """rpvd refused the request, or could not be reached; the message is one line."""


def socket_path(explicit: str | None) -> str:
    return explicit or os.environ.get("GLVM_SOCKET") or DEFAULT_SOCKET


def call(path: str, op: str, on_event: Callable[[dict], None] | None = None,
         timeout: float | None = None, **args) -> object:
    """Send one request; return its result or raise ControlError."""
    try:
        line = api.encode(op, **args)
    except api.RequestError as e:
        raise ControlError(str(e)) from None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise ControlError(f"cannot reach rpvd at {path}: {e.strerror or e}") from None
    with s, s.makefile("rb") as f:
        s.sendall(line)
        while True:
            try:
                line = f.readline(MAX_REPLY)
            except OSError as e:
                raise ControlError(f"lost rpvd at {path}: {e.strerror or e}") from None
            if not line:
                raise ControlError(f"rpvd at {path} closed the connection without a reply")
            msg = json.loads(line)
            if "event" in msg:
                if on_event:
                    on_event(msg["event"])
                continue
            if not msg.get("ok"):
                raise ControlError(msg.get("error", "unknown error"))
            return msg.get("result")
