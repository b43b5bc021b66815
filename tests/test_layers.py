"""The layers point one way: the LVM core never imports the daemon or the CLI, the sans-IO
protocol cores never import asyncio, glvmctl reaches rpvd only through the control API, and
the neutral modules import nothing of the project. Checked on the source (every import
statement, at any depth) and, for glvmctl, on what a real import loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from rpv import control_api as api

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (relative ones made absolute)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def modules(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in ROOT.glob(pattern))


def offenders(paths: list[Path], bad) -> dict[str, list[str]]:
    found = {}
    for p in paths:
        hits = sorted(m for m in imports(p) if bad(m))
        if hits:
            found[str(p.relative_to(ROOT))] = hits
    return found


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_lvm_core_never_imports_the_daemon_or_the_cli():
    assert offenders(modules("lvm/*.py"), lambda m: under(m, "rpv.daemon", "glvmctl")) == {}


def test_protocol_cores_never_import_asyncio():
    cores = modules("rpv/protocol/*.py", "rpv/nbd/protocol.py")
    assert cores and offenders(cores, lambda m: under(m, "asyncio", "uvloop")) == {}


def test_glvmctl_imports_only_the_control_api():
    bad = offenders(modules("glvmctl/*.py"),
                    lambda m: under(m, "rpv", "lvm") and not under(m, "rpv.control_api")
                    and m != "rpv")
    assert bad == {}
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, glvmctl.main; print(' '.join(sorted(m for m in "
                               "sys.modules if m.split('.')[0] in ('rpv', 'lvm'))))"],
        capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert loaded == ["rpv", "rpv.control_api"]


@pytest.mark.parametrize("module", ["rpv/errors.py", "rpv/checksum.py", "rpv/control_api.py",
                                    "rpv/instance.py", "rpv/speedups.py"])
def test_neutral_modules_import_nothing_of_the_project(module):
    assert offenders([ROOT / module], lambda m: under(m, "rpv", "lvm", "glvmctl")) == {}


def test_control_table_matches_the_daemon():
    """Every operation of the table has a handler in rpvd and nothing else does (the
    ControlServer refuses to start otherwise); queries are the read-only operations."""
    from rpv.daemon.control import ControlServer

    with pytest.raises(ValueError, match="missing"):
        ControlServer({})
    queries = {name for name, op in api.OPERATIONS.items() if op.query}
    assert {"lsdev", "lspv", "lsvg", "lslv", "errpt", "rpvstat", "ping"} <= queries
    assert not queries & {"mkdev", "chdev", "rmdev", "mkvg", "varyonvg", "varyoffvg",
                          "importvg", "exportvg", "syncvg", "syncvg_verify", "mirrorvg",
                          "chpv_pool"}
    assert "lsmp" in queries


def test_control_requests_are_checked_against_the_table():
    op, args = api.decode(b'{"v": 1, "op": "mkvg", "args": {"vg": "datavg", "pvs": ["hdisk1"]}}')
    assert op.name == "mkvg" and api.arguments(args) == {
        "vg": "datavg", "pvs": ["hdisk1"], "pp_size_mb": None, "force": False, "pool": None}
    for line, message in (
            (b'{"op": "mkvg", "args": {"vg": "datavg"}}', "pvs"),
            (b'{"op": "mkvg", "args": {"vg": 3, "pvs": []}}', "vg must be str"),
            (b'{"op": "mkvg", "args": {"vg": "d", "pvs": [], "colour": 1}}', "'colour'"),
            (b'{"op": "mkvg", "args": {"vg": "d", "pvs": [true]}}', "pvs must be list"),
            (b'{"v": 2, "op": "ping"}', "version 2"),
            (b'{"op": "format_disk"}', "unknown operation"),
            (b'not json', "malformed")):
        with pytest.raises(api.RequestError, match=message):
            api.decode(line)
    with pytest.raises(api.RequestError, match="unexpected"):
        api.encode("lsdev", colour="blue")  # glvmctl cannot send what rpvd would refuse


def test_versions_agree():
    """glvmctl --version reports the RPV protocol version without importing the protocol."""
    from rpv.protocol.constants import VERSION

    assert api.RPV_PROTOCOL_VERSION == VERSION
    out = subprocess.run([sys.executable, "-m", "glvmctl.main", "--version"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == (f"glvmctl {api.package_version()} (control API {api.API_VERSION}, "
                           f"RPV protocol {VERSION})")
    assert api.package_version() != "unknown"
