"""The device database (AIX's ODM): customized devices, site settings, error log, notify objects.

One sqlite file in the state directory. Every change is one transaction, so a crash leaves either
the old or the new configuration, never half of one.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    class TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('Defined', 'Available')),
    attrs TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS errlog (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vgs (
    name TEXT PRIMARY KEY,
    vgid TEXT NOT NULL UNIQUE,
    pvids TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS errnotify (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT,
    resource TEXT,
    method TEXT NOT NULL
);
"""


@dataclass(slots=True)
class Device:
    name: str
    dev_class: str
    dev_type: str
    state: str
    attrs: dict[str, str] = field(default_factory=dict)


class DeviceDB:
    def __init__(self, path: str):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- devices ---------------------------------------------------------------------------
    def devices(self, dev_class: str | None = None, dev_type: str | None = None) -> list[Device]:
        rows = self._db.execute("SELECT name, class, type, state, attrs FROM devices ORDER BY seq")
        out = [Device(n, c, t, s, json.loads(a)) for n, c, t, s, a in rows]
        return [d for d in out
                if (dev_class is None or d.dev_class == dev_class)
                and (dev_type is None or d.dev_type == dev_type)]

    def get(self, name: str) -> Device | None:
        row = self._db.execute(
            "SELECT name, class, type, state, attrs FROM devices WHERE name = ?", (name,)
        ).fetchone()
        return Device(row[0], row[1], row[2], row[3], json.loads(row[4])) if row else None

    def add(self, dev: Device) -> None:
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM devices").fetchone()[0]
        self._db.execute(
            "INSERT INTO devices (name, class, type, state, attrs, seq) VALUES (?, ?, ?, ?, ?, ?)",
            (dev.name, dev.dev_class, dev.dev_type, dev.state, json.dumps(dev.attrs), seq),
        )

    def update(self, dev: Device) -> None:
        self._db.execute(
            "UPDATE devices SET state = ?, attrs = ? WHERE name = ?",
            (dev.state, json.dumps(dev.attrs), dev.name),
        )

    def delete(self, name: str) -> None:
        self._db.execute("DELETE FROM devices WHERE name = ?", (name,))

    def next_name(self, prefix: str) -> str:
        """The lowest free ``prefixN``, as cfgmgr picks it."""
        used = {d.name for d in self.devices()}
        n = 0
        while f"{prefix}{n}" in used:
            n += 1
        return f"{prefix}{n}"

    # -- settings --------------------------------------------------------------------------
    def setting(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # -- error log -------------------------------------------------------------------------
    def append_error(self, entry: dict) -> int:
        cur = self._db.execute("INSERT INTO errlog (entry) VALUES (?)", (json.dumps(entry),))
        return int(cur.lastrowid)

    def errors(self) -> list[tuple[int, dict]]:
        rows = self._db.execute("SELECT sequence, entry FROM errlog ORDER BY sequence")
        return [(seq, json.loads(e)) for seq, e in rows]

    def clear_errors(self) -> int:
        return self._db.execute("DELETE FROM errlog").rowcount

    # -- volume groups (the ODM's CuAt for VGs: name, VGID, member PVIDs) -------------------
    def vgs(self) -> list[tuple[str, str, list[str]]]:
        rows = self._db.execute("SELECT name, vgid, pvids FROM vgs ORDER BY name")
        return [(n, v, json.loads(p)) for n, v, p in rows]

    def get_vg(self, name: str) -> tuple[str, str, list[str]] | None:
        return next((r for r in self.vgs() if r[0] == name), None)

    def put_vg(self, name: str, vgid: str, pvids: list[str]) -> None:
        self._db.execute(
            "INSERT INTO vgs (name, vgid, pvids) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
            "SET vgid = excluded.vgid, pvids = excluded.pvids", (name, vgid, json.dumps(pvids)))

    def delete_vg(self, name: str) -> None:
        self._db.execute("DELETE FROM vgs WHERE name = ?", (name,))

    # -- error notification ------------------------------------------------------------------
    def add_notify(self, label: str | None, resource: str | None, method: str) -> int:
        cur = self._db.execute(
            "INSERT INTO errnotify (label, resource, method) VALUES (?, ?, ?)",
            (label, resource, method))
        return int(cur.lastrowid)

    def notifies(self) -> list[tuple[int, str | None, str | None, str]]:
        return list(self._db.execute("SELECT id, label, resource, method FROM errnotify"))

    def delete_notify(self, notify_id: int) -> bool:
        return self._db.execute("DELETE FROM errnotify WHERE id = ?", (notify_id,)).rowcount > 0
