"""rpvd configuration: a TOML file (stdlib ``tomllib``) overridden by command-line options."""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, fields

from rpv.daemon.attrs import DEFAULT_RPV_PORT


class ConfigError(ValueError):
    pass


@dataclass(slots=True)
class Config:
    state_dir: str = "/var/lib/glvm"
    listen: str = f"0.0.0.0:{DEFAULT_RPV_PORT}"
    socket: str = ""
    nbd_socket: str = ""
    nbd_listen: str = ""
    metrics_listen: str = ""
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

    def finish(self) -> Config:
        """Fill derived defaults and check values; raise ConfigError with one clear line."""
        for f in fields(self):
            value, want = getattr(self, f.name), type(f.default)
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
            split_hostport(self.metrics_listen, "metrics_listen")
        tls = [self.tls_ca, self.tls_cert, self.tls_key]
        if any(tls) and not all(tls):
            raise ConfigError("tls_ca, tls_cert and tls_key go together")
        for path in filter(None, tls):
            if not os.path.isfile(path):
                raise ConfigError(f"TLS file {path} does not exist")
        if self.log_format not in ("json", "console"):
            raise ConfigError(f"log_format must be json or console, not {self.log_format!r}")
        for name in ("max_connections", "max_payload", "max_outstanding"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        return self


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
