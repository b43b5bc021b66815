"""Attached LVs mounted for a test (``glvmctl attach`` + mount), cleaned up whatever happened
to the site that attached them."""

from __future__ import annotations

import subprocess
from pathlib import Path


class Mounts:
    """Attached LVs mounted under tmp_path; teardown undoes whatever a killed site left
    (a lazy umount, the loop device, the FUSE mount, its nbdfuse)."""

    def __init__(self, tmp_path):
        self.root = tmp_path
        self.points: list[Path] = []
        self.devices: list[str] = []

    def mount(self, site, lv: str, name: str) -> tuple[str, Path]:
        dev = site.ctl("attach", lv).strip()
        assert dev.startswith("/dev/"), dev
        self.devices.append(dev)
        point = self.root / name
        point.mkdir()
        self.points.append(point)
        return dev, point

    def cleanup(self) -> None:
        for point in self.points:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
        for dev in self.devices:  # a killed site's loop device outlives its FUSE file
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4]
            if target.startswith(str(self.root)) and "fuse" in line:
                subprocess.run(["fusermount3", "-uz", target], capture_output=True)
        subprocess.run(["pkill", "-f", f"nbdfuse .*{self.root}"], capture_output=True)
