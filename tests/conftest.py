"""Fixtures: two real sites on loopback, site A "Philadelphia" on 127.0.0.1 and site B
"Poughkeepsie" on 127.0.0.2, each with its own rpvd, state directory and disk files."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.sites import Site

# A dedicated port keeps test daemons away from a real rpvd on 6192.
TEST_PORT = int(os.environ.get("GLVM_TEST_PORT", "16192"))

# The fixtures' set-up (site name, disks, RPV servers and clients) goes straight to the control
# socket (Site.rpc), except in the tests of the CLI itself, where it runs glvmctl as before.
CLI_SETUP_MODULES = {"tests.test_devices", "tests.test_cli_lvm"}


def _site(request, tmp_path, name: str, addr: str, sub: str, node: str):
    # Tests of the RPV link itself write RPV client disks directly, which rpvd refuses by
    # default (they are exported read-only); they opt out with @pytest.mark.raw_writes.
    extra = (["--nbd-unsafe-raw-writes"] if request.node.get_closest_marker("raw_writes")
             else [])
    cli = request.node.module.__name__ in CLI_SETUP_MODULES
    site = Site(name, addr, tmp_path / sub, node=node, port=TEST_PORT, extra_args=extra,
                cli_setup=cli)
    site.start()
    if cli:
        site.ctl("rpvserver", "site", name)
    else:
        assert site.rpc("site", name=name)["site"] == name
    return site


@pytest.fixture
def site_b(request, tmp_path):
    site = _site(request, tmp_path, "Poughkeepsie", "127.0.0.2", "b", "nodeB")
    yield site
    site.kill()


@pytest.fixture
def site_a(request, tmp_path):
    site = _site(request, tmp_path, "Philadelphia", "127.0.0.1", "a", "nodeA")
    yield site
    site.kill()


@pytest.fixture
def linked(site_a, site_b):
    """Site B serves one 64 MiB disk (hdisk2) to site A, where it is RPV client hdisk3."""
    pvid = site_b.make_disk("hdisk2")
    site_b.serve(pvid, site_a.addr)
    site_a.add_client("hdisk3", pvid, site_b, io_timeout=3)
    return site_a, site_b, pvid


def run(*cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def qemu_io(uri: str, *cmds: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run qemu-io commands (``-c``) against an NBD URI."""
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    return run(*args, uri, check=check)


class Geo:
    """The white paper's airline topology: site A has hdisk1/hdisk2 (local files) and RPV
    clients hdisk3/hdisk4 for site B's hdisk2/hdisk3, served by rpvserver0/rpvserver1."""

    def __init__(self, a, b, size: str):
        self.a, self.b = a, b
        for n in ("hdisk1", "hdisk2"):
            a.make_disk(n, size)
        self.remote_pvids = [b.make_disk(n, size) for n in ("hdisk2", "hdisk3")]
        for p in self.remote_pvids:
            b.serve(p, a.addr)
        for n, p in zip(("hdisk3", "hdisk4"), self.remote_pvids, strict=True):
            a.add_client(n, p, b, io_timeout=2)
        # where each of A's PVs really lives
        self.files = {"hdisk1": a.disk_path("hdisk1") + ".img",
                      "hdisk2": a.disk_path("hdisk2") + ".img",
                      "hdisk3": b.disk_path("hdisk2") + ".img",
                      "hdisk4": b.disk_path("hdisk3") + ".img"}


@pytest.fixture
def geo(site_a, site_b):
    return Geo(site_a, site_b, "256M")
