"""rpvd configuration: a TOML file (stdlib ``tomllib``) overridden by command-line options."""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, fields

from rpv.daemon.attrs import DEFAULT_RPV_PORT
from rpv.protocol import compress as codecs


class ConfigError(ValueError):
    pass


@dataclass(slots=True)
class Config:
    state_dir: str = "/var/lib/glvm"
    listen: str = f"0.0.0.0:{DEFAULT_RPV_PORT}"
    socket: str = ""
    nbd_socket: str = ""
    nbd_socket_group: str = ""  # a group that may use the NBD unix socket (mode 0660)
    nbd_listen: str = ""
    nbd_allow: str = ""  # comma-separated client networks admitted on nbd_listen
    nbd_insecure: bool = False  # serve nbd_listen in plaintext (logged at every start)
    nbd_unsafe_raw_writes: bool = False  # disks in use stay writable over NBD (link tests)
    metrics_listen: str = ""  # [IP:]PORT, IP 127.0.0.1 unless given
    tls_ca: str = ""  # with tls_cert and tls_key: mutual TLS on the RPV link
    tls_cert: str = ""
    tls_key: str = ""
    node: str = ""
    log_format: str = "json"
    log_level: str = "info"
    max_connections: int = 256
    max_payload: int = 4 * 1024 * 1024
    max_outstanding: int = 256
    handshake_timeout: float = 10.0
    compress_accept: str = "zstd,lz4"  # codecs RPV clients may ask for ("none": no codec)

    def finish(self) -> Config:
        """Fill derived defaults and check values; raise ConfigError with one clear line."""
        for f in fields(self):
            value, want = getattr(self, f.name), type(f.default)
            if want is bool and isinstance(value, str) and value.lower() in _BOOLS:
                value = _BOOLS[value.lower()]
                setattr(self, f.name, value)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = (numeric if want is float else
                  numeric and isinstance(value, int) if want is int else
                  isinstance(value, want))
            if not ok:
                raise ConfigError(f"{f.name} must be a {want.__name__}, not {value!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level must be debug, info, warning or error, "
                              f"not {self.log_level!r}")
        self.state_dir = os.path.abspath(self.state_dir)
        self.socket = self.socket or os.path.join(self.state_dir, "control.sock")
        self.nbd_socket = self.nbd_socket or os.path.join(self.state_dir, "nbd.sock")
        self.node = self.node or socket.gethostname()
        split_hostport(self.listen, "listen")
        if self.nbd_listen:
            split_hostport(self.nbd_listen, "nbd_listen")
        if self.metrics_listen:
            if self.metrics_listen.isdigit():
                self.metrics_listen = f"127.0.0.1:{self.metrics_listen}"
            split_hostport(self.metrics_listen, "metrics_listen")
        self.allowed_networks()
        tls = [self.tls_ca, self.tls_cert, self.tls_key]
        if any(tls) and not all(tls):
            raise ConfigError("tls_ca, tls_cert and tls_key go together")
        if self.nbd_listen and not all(tls) and not self.nbd_insecure:
            raise ConfigError("nbd_listen serves NBD over TCP only with TLS: set tls_ca, "
                              "tls_cert and tls_key (clients need a certificate from "
                              "'glvmctl tls client'), or nbd_insecure = yes for plaintext")
        for path in filter(None, tls):
            if not os.path.isfile(path):
                raise ConfigError(f"TLS file {path} does not exist")
        if self.log_format not in ("json", "console"):
            raise ConfigError(f"log_format must be json or console, not {self.log_format!r}")
        self.compress_codecs()
        for name in ("max_connections", "max_payload", "max_outstanding"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        return self


    def compress_codecs(self) -> tuple[str, ...]:
        """compress_accept as codec names (those installed; "none" or "" accepts none)."""
        names = [n.strip().lower() for n in self.compress_accept.split(",") if n.strip()]
        if names == ["none"]:
            return ()
        for n in names:
            if n not in codecs.FEATURES:
                raise ConfigError(f"compress_accept: unknown codec {n!r} "
                                  f"(zstd, lz4 or none)")
        return tuple(n for n in names if n in codecs.available())

    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """nbd_allow as networks (a bare address is a /32 or /128)."""
        try:
            return tuple(ipaddress.ip_network(n.strip(), strict=False)
                         for n in self.nbd_allow.split(",") if n.strip())
        except ValueError as e:
            raise ConfigError(f"nbd_allow: {e}") from None


_BOOLS = {"yes": True, "y": True, "true": True, "no": False, "n": False, "false": False}


def split_hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    try:
        if not sep:
            raise ValueError
        ipaddress.ip_address(host.strip("[]"))
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{what} '{value}' must be IP:PORT") from None
    return host.strip("[]"), p


def load(path: str | None, overrides: dict) -> Config:
    cfg = Config()
    known = {f.name for f in fields(Config)}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        for key, value in data.get("rpvd", data).items():
            key = key.replace("-", "_")
            if key not in known:
                raise ConfigError(f"unknown setting '{key}' in {path}")
            setattr(cfg, key, value)
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg.finish()
