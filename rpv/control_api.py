"""The control API between glvmctl and rpvd: one table of operations, versioned.

Each operation names its argument type (a frozen dataclass, made on first use: the wire
schema), the JSON shape of its result, whether it is a pure query (queries leave no audit
event) and whether it sends progress events before its reply. glvmctl builds every request
with :func:`encode`; rpvd checks every request with :func:`decode` and calls the handler it
registered for the name.
This module imports nothing from the project, so glvmctl needs nothing else of rpvd.

Wire format, one JSON object per line each way (the control socket, mode 0600)::

    {"v": 1, "op": NAME, "args": {...}}
    {"event": {...}}                      zero or more, for operations with progress
    {"ok": true, "result": ...}  or  {"ok": false, "error": "one line"}
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

API_VERSION = 1
RPV_PROTOCOL_VERSION = 1  # the RPV wire protocol's VERSION (rpv.protocol.constants), for --version


def package_version() -> str:
    """The installed glvm release (rpvd and glvmctl report the same one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("glvm")
    except PackageNotFoundError:
        return "unknown"


class RequestError(ValueError):
    """A request that does not fit the table; the message is one line for the user."""


class PingArgs:
    pass


class SiteArgs:
    name: str | None = None


class MkdevArgs:
    name: str | None = None
    dev_class: str | None = None
    dev_type: str | None = None
    attrs: dict[str, str] | None = None
    define_only: bool = False


class RmdevArgs:
    name: str
    delete: bool = False


class ChdevArgs:
    name: str
    changes: dict[str, str]


class LsdevArgs:
    dev_class: str | None = None
    dev_type: str | None = None


class LsattrArgs:
    name: str


class LspvArgs:
    name: str | None = None


class DiscoverArgs:
    server_addr: str
    local_addr: str | None = None  # None: try every local address that could reach it
    port: int | None = None  # None: rpv/tcp in /etc/services, else 6192
    timeout: float = 10.0


class ErrptArgs:
    identifier: str | None = None
    resource: str | None = None


class ErrclearArgs:
    pass


class ErrnotifyAddArgs:
    method: str
    label: str | None = None
    resource: str | None = None


class ErrnotifyListArgs:
    pass


class ErrnotifyRmArgs:
    id: int


class MkvgArgs:
    vg: str
    pvs: list[str]
    pp_size_mb: int | None = None
    force: bool = False
    pool: str | None = None  # mkvg -p: the PVs' mirror pool


class ExtendvgArgs:
    vg: str
    pvs: list[str]
    force: bool = False
    pool: str | None = None  # extendvg -p: the new PVs' mirror pool


class ReducevgArgs:
    vg: str
    pv: str
    delete_lvs: bool = False


class MklvArgs:
    lv: str
    vg: str
    lps: int
    copies: int = 1
    strictness: str = 'y'
    upperbound: int = 0
    pvs: list[str] | None = None
    mirror_pools: list[str] | None = None  # mklv -p copyN=POOL
    lv_type: str = "lv"  # mklv -t: lv or aio_cache



class ChlvArgs:
    lv: str
    strictness: str | None = None
    upperbound: int | None = None
    name: str | None = None


class RmlvArgs:
    lv: str
    force: bool = False


class LslvArgs:
    lv: str
    map: bool = False


class MirrorvgArgs:
    vg: str
    pvs: list[str] | None = None
    copies: int = 2
    sync: str = 'foreground'
    keep_quorum: bool = False
    mirror_pools: list[str] | None = None  # mirrorvg -p copyN=POOL


class UnmirrorvgArgs:
    vg: str
    pvs: list[str]


class SyncvgArgs:
    lv: str | None = None
    pv: str | None = None
    vg: str | None = None
    parallel: int = 1
    force: bool = False
    rate_mb: float = 0.0


class VaryonvgArgs:
    vg: str
    force: bool = False
    nosync: bool = False
    maintenance: bool = False
    discard_site: str | None = None


class VaryoffvgArgs:
    vg: str
    force: bool = False


class ImportvgArgs:
    vg: str
    pv: str
    force: bool = False


class ExportvgArgs:
    vg: str


class ChvgArgs:
    vg: str
    auto_on: str | None = None
    quorum: str | None = None
    mirror_pool_strict: str | None = None  # chvg -M n|y|s
    resync_floor_mb: float | None = None  # chvg --resync-floor: MB/s a resync always gets
    resync_impact_pct: int | None = None  # chvg --resync-impact: latency a resync may add, %


class ChpvPoolArgs:
    pvs: list[str]
    pool: str | None = None  # None: take the PVs out of their mirror pool (chpv -P)


class ChmpArgs:
    vg: str
    pool: str
    mode: str | None = None  # "async" (chmp -A) or "sync" (chmp -S)
    cache_lv: str | None = None
    hwm: int | None = None
    force: bool = False


class LsmpArgs:
    vg: str
    pool: str | None = None


class ChpvArgs:
    pv: str
    state: str


class LsvgArgs:
    vg: str | None = None


class GmvgAddRpvsArgs:
    vg: str
    site: str
    pvs: list[str] | None = None
    force: bool = False


class GmvgAddMirrorArgs:
    vg: str
    site: str
    copies: int | None = None
    sync: str = 'foreground'
    keep_quorum: bool = False


class GmvgVerifyArgs:
    vg: str


class GmvgListArgs:
    pass


class GmvgstatArgs:
    vg: str | None = None


class RpvstatArgs:
    reset: bool = False
    by_path: bool = False
    asynchronous: bool = False  # rpvstat -A: the asynchronous mirror pools instead


class SyncvgVerifyArgs:
    lv: str | None = None
    vg: str | None = None
    repair: bool = False


class JobsArgs:
    pass


class JobsCancelArgs:
    id: int


class JobsWaitArgs:
    id: int


class AttachArgs:
    lv: str


class AttachmentsArgs:
    pass


class DetachArgs:
    target: str


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    args: type  # the argument class, made a dataclass on first use (arg_type)
    result: type  # the JSON shape of the result: dict, list, int or object (either)
    query: bool = False  # changes nothing
    progress: bool = False  # sends {"event": ...} lines before the reply
    job: bool = False  # runs as a job: listed, followed and cancelled with glvmctl jobs


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("ping", PingArgs, dict, query=True),
    Operation("site", SiteArgs, dict),
    Operation("mkdev", MkdevArgs, dict),
    Operation("rmdev", RmdevArgs, dict),
    Operation("chdev", ChdevArgs, dict),
    Operation("lsdev", LsdevArgs, list, query=True),
    Operation("lsattr", LsattrArgs, list, query=True),
    Operation("lspv", LspvArgs, list, query=True),
    Operation("discover", DiscoverArgs, dict, query=True),
    Operation("errpt", ErrptArgs, list, query=True),
    Operation("errclear", ErrclearArgs, int),
    Operation("errnotify_add", ErrnotifyAddArgs, dict),
    Operation("errnotify_list", ErrnotifyListArgs, list, query=True),
    Operation("errnotify_rm", ErrnotifyRmArgs, dict),
    Operation("mkvg", MkvgArgs, dict),
    Operation("extendvg", ExtendvgArgs, dict),
    Operation("reducevg", ReducevgArgs, dict),
    Operation("mklv", MklvArgs, dict),
    Operation("chlv", ChlvArgs, dict),
    Operation("rmlv", RmlvArgs, dict),
    Operation("lslv", LslvArgs, dict, query=True),
    Operation("mirrorvg", MirrorvgArgs, dict, progress=True, job=True),
    Operation("unmirrorvg", UnmirrorvgArgs, dict),
    Operation("syncvg", SyncvgArgs, dict, progress=True, job=True),
    Operation("varyonvg", VaryonvgArgs, dict),
    Operation("varyoffvg", VaryoffvgArgs, dict),
    Operation("importvg", ImportvgArgs, dict),
    Operation("exportvg", ExportvgArgs, dict),
    Operation("chvg", ChvgArgs, dict),
    Operation("chpv", ChpvArgs, dict),
    Operation("chpv_pool", ChpvPoolArgs, dict),
    Operation("lsmp", LsmpArgs, dict, query=True),
    Operation("chmp", ChmpArgs, dict),
    Operation("lsvg", LsvgArgs, object, query=True),
    Operation("gmvg_add_rpvs", GmvgAddRpvsArgs, dict),
    Operation("gmvg_add_mirror", GmvgAddMirrorArgs, dict, progress=True, job=True),
    Operation("gmvg_verify", GmvgVerifyArgs, dict, query=True),
    Operation("gmvg_list", GmvgListArgs, list, query=True),
    Operation("gmvgstat", GmvgstatArgs, list, query=True),
    Operation("rpvstat", RpvstatArgs, list, query=True),
    Operation("syncvg_verify", SyncvgVerifyArgs, dict, progress=True, job=True),
    Operation("jobs", JobsArgs, list, query=True),
    Operation("attach", AttachArgs, dict),
    Operation("attachments", AttachmentsArgs, list, query=True),
    Operation("detach", DetachArgs, dict),
    Operation("jobs_cancel", JobsCancelArgs, dict),
    Operation("jobs_wait", JobsWaitArgs, dict, query=True, progress=True),

)}


def encode(op: str, **args: Any) -> bytes:
    """The request line for ``op``; raises RequestError if the arguments do not fit."""
    operation = _operation(op)
    _build(operation, args)
    return json.dumps({"v": API_VERSION, "op": op, "args": args}).encode() + b"\n"


def decode(line: bytes) -> tuple[Operation, Any]:
    """The operation and its checked arguments; RequestError (one line) for anything else."""
    try:
        req = json.loads(line)
        op, args = req["op"], req.get("args", {})
        if not isinstance(op, str) or not isinstance(args, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise RequestError('malformed request: expected {"op": NAME, "args": {...}}') from None
    version = req.get("v", API_VERSION)
    if version != API_VERSION:
        raise RequestError(f"control API version {version!r} is not spoken here (rpvd speaks "
                           f"version {API_VERSION}); use the glvmctl of the same release")
    operation = _operation(op)
    return operation, _build(operation, args)


def arguments(value: Any) -> dict[str, Any]:
    """The fields of an argument dataclass as keyword arguments for its handler."""
    return {f.name: getattr(value, f.name) for f in fields(value)}


def _operation(op: str) -> Operation:
    operation = OPERATIONS.get(op)
    if operation is None:
        raise RequestError(f"unknown operation {op[:40]!r}")
    return operation


_SCHEMAS: dict[type, tuple[type, dict[str, Any], frozenset[str]]] = {}


def _schema(operation: Operation) -> tuple[type, dict[str, Any], frozenset[str]]:
    """The operation's argument dataclass (its class in the table made frozen and slotted),
    its field types and its field names, made on first use and kept. The table's 48 classes
    took 50-70 ms to make at import, which every glvmctl command paid for the one it sends."""
    schema = _SCHEMAS.get(operation.args)
    if schema is None:
        kind = dataclass(frozen=True, slots=True)(operation.args)
        schema = (kind, typing.get_type_hints(kind), frozenset(f.name for f in fields(kind)))
        _SCHEMAS[operation.args] = schema
    return schema


def arg_type(operation: Operation) -> type:
    """The operation's argument type, a frozen, slotted dataclass (:func:`_schema`)."""
    return _schema(operation)[0]


def _build(operation: Operation, args: dict) -> Any:
    kind, hints, names = _schema(operation)
    unknown = sorted(set(args) - names)
    if unknown:
        shown = ", ".join(repr(n)[:40] for n in unknown[:5])
        raise RequestError(f"bad arguments for {operation.name}: unexpected {shown}")
    for name, value in args.items():
        if not _fits(value, hints[name]):
            raise RequestError(f"bad arguments for {operation.name}: {name} must be "
                               f"{_describe(hints[name])}, not {type(value).__name__}")
    try:
        return kind(**args)
    except TypeError as e:  # a required argument is missing
        raise RequestError(f"bad arguments for {operation.name}: {e}") from None


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_fits(k, key) and _fits(v, item)
                                               for k, v in value.items())
    return False


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", None) or str(hint)
