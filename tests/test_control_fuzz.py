"""The control-socket request parser never raises and always answers one JSON object."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import control_seeds, control_server, mutate

SERVER = control_server()
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def dispatch(line: bytes) -> dict:
    reply = asyncio.run(SERVER._dispatch(line, None))[0]
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert isinstance(reply["error"], str) and "\n" not in reply["error"]
    json.dumps(reply)
    return reply


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data):
    dispatch(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["lsdev", "chdev", "ping", "nosuch", 5, None, {"op": 1}, [1]]),
       json_values)
def test_arbitrary_json_requests(op, args):
    dispatch(json.dumps({"op": op, "args": args}).encode())


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from(control_seeds()))
def test_mutated_valid_requests(rng, seed):
    dispatch(mutate(rng, seed))


def test_argument_types_are_made_on_first_use_frozen_and_slotted():
    """Importing the API makes none of the table's argument dataclasses (glvmctl start-up);
    the first request of an operation makes its own, frozen and slotted, once."""
    import subprocess
    import sys

    code = """
import dataclasses, sys
from rpv import control_api as api
assert not any(dataclasses.is_dataclass(op.args) for op in api.OPERATIONS.values())
op, args = api.decode(b'{"op": "mkdev", "args": {"name": "hdisk9"}}')
kind = api.arg_type(op)
assert type(args) is kind and kind is api.arg_type(op) and hasattr(kind, "__slots__")
assert api.arguments(args)["name"] == "hdisk9"
try:
    args.name = "other"
except dataclasses.FrozenInstanceError:
    pass
else:
    sys.exit("not frozen")
made = [n for n, o in api.OPERATIONS.items() if dataclasses.is_dataclass(o.args)]
assert made == ["mkdev"], made
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
