"""Compiled twins of hot-path modules (Cython, built by ``pip install``), each with a
pure-Python reference that stays the specification: :func:`pick` returns the compiled one
unless ``GLVM_PURE_PYTHON=1`` or it was not built, and :data:`CHOSEN` says which is in use.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE = os.environ.get("GLVM_PURE_PYTHON", "") == "1"
CHOSEN: dict[str, str] = {}  # reference module name -> "compiled" | "pure" | "pure (why)"


def pick(reference: str, compiled: str) -> ModuleType:
    """The module to use for ``reference`` (a dotted name): ``compiled`` when it imports and
    pure Python is not asked for."""
    if not PURE:
        try:
            module = importlib.import_module(compiled)
        except ImportError as e:
            CHOSEN[reference] = f"pure ({compiled} not built: {e})"
        else:
            CHOSEN[reference] = "compiled"
            return module
    else:
        CHOSEN[reference] = "pure"
    return importlib.import_module(reference)


def summary() -> str:
    """One line for ``--version`` and the logs: which implementation each module uses."""
    return ", ".join(f"{name.rsplit('.', 1)[-1]}: {how}" for name, how in sorted(CHOSEN.items()))
