"""rpvd as an installed service: the systemd unit in conf/ passes `systemd-analyze verify`,
rpvd tells systemd when it is ready (Type=notify), and a wheel built from the tree gives
working rpvd, glvmctl and glvm-faultproxy in a fresh venv, with no repository checkout."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_PORT
from tests.sites import GLVMCTL, RPVD

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "rpvd.service"


def unit_settings() -> dict[str, str]:
    out = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_verifies(tmp_path):
    unit = tmp_path / "rpvd.service"  # verify checks that ExecStart exists: point it at ours
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/rpvd", RPVD))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr
    s = unit_settings()
    assert s["Type"] == "notify" and s["Restart"] == "on-failure"
    assert "--config /etc/glvm/rpvd.toml" in s["ExecStart"]
    assert "--state-dir /var/lib/glvm" in s["ExecStart"] and s["StateDirectory"] == "glvm"
    assert "--log-format json" in s["ExecStart"] and s["StandardError"] == "journal"


def test_rpvd_notifies_systemd_when_ready_and_stopping(tmp_path):
    notify = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    state = tmp_path / "state"
    proc = subprocess.Popen([RPVD, "--state-dir", str(state), "--listen",
                             f"127.0.0.1:{TEST_PORT}"], env=dict(os.environ,
                                                                 NOTIFY_SOCKET=str(notify)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sock.recv(100) == b"READY=1"
        # ready means usable: glvmctl answers at once
        r = subprocess.run([GLVMCTL, "--socket", str(state / "control.sock"), "lsdev"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(100) == b"STOPPING=1"
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        sock.close()


def test_wheel_installs_working_commands(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                    str(ROOT)], check=True, timeout=300, cwd=tmp_path)
    [wheel] = dist.glob("glvm-*.whl")
    venv = tmp_path / "venv"  # a bare venv; this pip installs into it (no ensurepip run)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", str(wheel)], check=True, timeout=600, cwd=tmp_path)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(*cmd: str) -> str:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                           env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert run("glvmctl", "--version").startswith("glvmctl 0.")
    version = run("rpvd", "--version")  # the wheel carries the compiled hot path
    assert version.startswith("rpvd 0.") and "pure" not in version and "compiled" in version
    assert "usage" in run("glvm-faultproxy", "--help").lower()
    # the installed daemon serves and the installed CLI talks to it
    state = tmp_path / "state"
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(["rpvd", "--state-dir", str(state), "--listen",
                             f"127.0.0.1:{TEST_PORT}", "--ready-fd", str(wfd)],
                            pass_fds=(wfd,), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as ready:
            assert ready.readline() == b"READY\n"
        assert "hdisk0 Available" in run("glvmctl", "--socket", str(state / "control.sock"),
                                         "mkdev",
                               "-c", "disk", "-t", "file", "-a",
                               f"path={tmp_path / 'd.img'}", "-a", "size=16M")
    finally:
        proc.terminate()
        proc.wait(30)
    site_packages = list((venv / "lib").glob("python3*/site-packages/rpv"))
    assert site_packages and ROOT not in site_packages[0].resolve().parents
