"""Printing for humans (aligned columns, AIX style) and for scripts (one JSON document)."""

from __future__ import annotations

import json
import sys

import typer


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def columns(rows: list[list[str]], header: list[str] | None = None) -> None:
    """Print rows as left-aligned columns, the way lsdev and lspv do."""
    table = ([header] if header else []) + rows
    if not table:
        return
    widths = [max(len(str(r[i])) for r in table) for i in range(len(table[0]))]
    for r in table:
        typer.echo(" ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"glvmctl: {message}", err=True)
    raise typer.Exit(code)
