"""Device classes, types and their attributes: the predefined part of the device database.

Each (class, type) pair has a description (what ``lsdev`` prints) and an ordered table of
attributes with a validator, a default, a description (what ``lsattr`` prints) and whether the
administrator may change it. Validators return the canonical value or raise ``ValueError``
with a message fit to show the administrator.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from rpv.protocol import compress as codecs
from rpv.protocol import pvid_to_bytes, pvid_to_str

IO_TIMEOUT_MIN, IO_TIMEOUT_MAX = 1, 3600
DEFAULT_IO_TIMEOUT = 180


def rpv_port(services: str = "/etc/services") -> int:
    """The ``rpv`` TCP port /etc/services names (AIX's ``rpv 6192/tcp``), else 6192."""
    try:
        with open(services) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[0] == "rpv" and fields[1].endswith("/tcp"):
                    port = int(fields[1].split("/")[0])
                    if 0 < port < 65536:
                        return port
    except (OSError, ValueError):
        pass
    return 6192


DEFAULT_RPV_PORT = rpv_port()
MIN_DISK_SIZE = 1024 * 1024
MAX_DISK_SIZE = 1 << 50


def ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address") from None


MAX_ADDRS = 4  # addresses in a list: one network path each


def ips(value: str) -> str:
    """One IP address, or up to four separated by commas (several networks)."""
    addrs = [a for a in value.split(",")]
    if not 1 <= len(addrs) <= MAX_ADDRS:
        raise ValueError(f"'{value}': give 1 to {MAX_ADDRS} IP addresses, separated by commas")
    return ",".join(ip(a) for a in addrs)


def ip_or_none(value: str) -> str:
    return "none" if value.strip().lower() == "none" else ips(value)


def yes_no(value: str) -> str:
    v = value.strip().lower()
    if v in ("y", "yes"):
        return "y"
    if v in ("n", "no"):
        return "n"
    raise ValueError(f"'{value}' must be y or n")


def pvid(value: str) -> str:
    return pvid_to_str(pvid_to_bytes(value))


def io_timeout(value: str) -> str:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"io_timeout '{value}' is not a whole number of seconds") from None
    if not IO_TIMEOUT_MIN <= n <= IO_TIMEOUT_MAX:
        raise ValueError(f"io_timeout {n} is outside {IO_TIMEOUT_MIN}..{IO_TIMEOUT_MAX} seconds")
    return str(n)


def compress(value: str) -> str:
    """rpvclient ``compress``: none, zstd or lz4 (negotiated with the server in HELLO)."""
    v = value.strip().lower()
    if v not in codecs.CODEC_NAMES:
        raise ValueError(f"compress '{value}' must be one of {', '.join(codecs.CODEC_NAMES)}")
    if v != codecs.NONE and v not in codecs.available():
        raise ValueError(f"compress={v}: the Python package for it is not installed")
    return v


def port(value: str) -> str:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"port '{value}' is not a number") from None
    if not 1 <= n <= 65535:
        raise ValueError(f"port {n} is outside 1..65535")
    return str(n)


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(value: str) -> int:
    """Parse '1G', '512M', '4096' (bytes) into bytes, rounded down to 512-byte sectors."""
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"size '{value}' is not a size like 512M or 1G")
    n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    n -= n % 512
    if not MIN_DISK_SIZE <= n <= MAX_DISK_SIZE:
        raise ValueError(f"size '{value}' is outside 1M..1P")
    return n


def size(value: str) -> str:
    return str(parse_size(value))


def path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"path '{value}' must be absolute")
    return value


def fixed(value: str) -> str:
    return value


@dataclass(frozen=True, slots=True)
class Attr:
    name: str
    description: str
    validate: Callable[[str], str]
    default: str | None = None
    user_settable: bool = True
    required: bool = False


@dataclass(frozen=True, slots=True)
class DevType:
    dev_class: str
    dev_type: str
    description: str
    prefix: str
    attrs: tuple[Attr, ...]

    def attr(self, name: str) -> Attr | None:
        return next((a for a in self.attrs if a.name == name), None)


DEVTYPES: dict[tuple[str, str], DevType] = {
    ("disk", "file"): DevType(
        "disk", "file", "File Backed Physical Volume", "hdisk",
        (
            Attr("path", "Backing File", path, required=True, user_settable=False),
            Attr("pvid", "Physical Volume Identifier", pvid, user_settable=False),
            Attr("size", "Size in Bytes", size, required=True, user_settable=False),
        ),
    ),
    ("disk", "block"): DevType(
        "disk", "block", "Block Device Physical Volume", "hdisk",
        (
            Attr("path", "Block Device", path, required=True, user_settable=False),
            Attr("pvid", "Physical Volume Identifier", pvid, user_settable=False),
            Attr("size", "Size in Bytes", size, user_settable=False),
        ),
    ),
    ("disk", "rpvclient"): DevType(
        "disk", "rpvclient", "Remote Physical Volume Client", "hdisk",
        (
            Attr("auto_resume", "Resume Automatically When the Server Answers", yes_no, "n"),
            Attr("compress", "Compress Data Payloads (none, zstd, lz4)", compress, "none"),
            Attr("io_timeout", "I/O Timeout Interval", io_timeout, str(DEFAULT_IO_TIMEOUT)),
            Attr("local_addr", "Local IP Addresses (one per path)", ips, required=True),
            Attr("pvid", "Physical Volume Identifier", pvid, required=True),
            Attr("server_addr", "Server IP Addresses (one per path)", ip_or_none,
                 required=True),
            Attr("server_port", "Server TCP Port", port, str(DEFAULT_RPV_PORT)),
            Attr("site", "Server Site Name", fixed, "", user_settable=False),
            Attr("size", "Size in Bytes", fixed, "0", user_settable=False),
        ),
    ),
    ("rpvserver", "rpvstype"): DevType(
        "rpvserver", "rpvstype", "Remote Physical Volume Server", "rpvserver",
        (
            Attr("auto_online", "Configure at System Boot", yes_no, "n"),
            Attr("client_addr", "Client IP Addresses", ips, required=True),
            Attr("rpvs_pvid", "Physical Volume Identifier", pvid, required=True),
        ),
    ),
}

# Attributes that chdev accepts as actions rather than stored values.
ACTIONS = {("disk", "rpvclient"): {"resume": yes_no}}


def devtype(dev_class: str, dev_type: str) -> DevType:
    try:
        return DEVTYPES[(dev_class, dev_type)]
    except KeyError:
        known = ", ".join(f"-c {c} -t {t}" for c, t in DEVTYPES)
        raise ValueError(f"unknown device class/type -c {dev_class} -t {dev_type} "
                         f"(known: {known})") from None


def validate_new(dt: DevType, given: dict[str, str]) -> dict[str, str]:
    """Validate the attributes given to mkdev; fill defaults; refuse unknown or missing ones."""
    out: dict[str, str] = {}
    for name in given:
        if dt.attr(name) is None:
            raise ValueError(f"attribute '{name}' is not valid for {dt.dev_class}/{dt.dev_type}")
    for a in dt.attrs:
        if a.name in given:
            out[a.name] = a.validate(given[a.name])
        elif a.required:
            raise ValueError(f"attribute '{a.name}' is required for "
                             f"-c {dt.dev_class} -t {dt.dev_type}")
        elif a.default is not None:
            out[a.name] = a.default
    return out


def validate_change(dt: DevType, changes: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split chdev's ``-a`` values into (stored attribute changes, actions); all or nothing."""
    stored: dict[str, str] = {}
    actions: dict[str, str] = {}
    action_table = ACTIONS.get((dt.dev_class, dt.dev_type), {})
    for name, value in changes.items():
        if name in action_table:
            actions[name] = action_table[name](value)
            continue
        a = dt.attr(name)
        if a is None:
            raise ValueError(f"attribute '{name}' is not valid for {dt.dev_class}/{dt.dev_type}")
        if not a.user_settable:
            raise ValueError(f"attribute '{name}' cannot be changed")
        stored[name] = a.validate(value)
    return stored, actions
