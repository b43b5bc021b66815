"""The control-socket path chosen on the command line, and the one call helper commands use."""

from __future__ import annotations

from glvmctl.client import ControlError, call, socket_path
from glvmctl.output import fail

_socket: str | None = None


def set_socket(path: str | None) -> None:
    global _socket
    _socket = path


def rpc(op: str, on_event=None, **args):
    """Call rpvd; on refusal print one line to stderr and exit 1."""
    try:
        return call(socket_path(_socket), op, on_event=on_event, **args)
    except ControlError as e:
        fail(str(e))
