"""The two implementations of the LV's inline write path (:mod:`lvm.inline` and its compiled
twin), for tests that run on both."""

from __future__ import annotations

import importlib

import pytest

TWINS = ["lvm.inline", "lvm._inline"]


def twin_module(name: str):
    """The module ``name``; a compiled twin that was not built skips the test (the build
    itself is checked by tests/test_speedups.py)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.skip(f"{name} not built: {e}")
