"""Fixtures: two real sites on loopback, site A "Philadelphia" on 127.0.0.1 and site B
"Poughkeepsie" on 127.0.0.2, each with its own rpvd, state directory and disk files."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers.mounts import Mounts
from tests.sites import Site, start_together

# A dedicated port keeps test daemons away from a real rpvd on 6192.
TEST_PORT = int(os.environ.get("GLVM_TEST_PORT", "16192"))

# The fixtures' set-up (site name, disks, RPV servers and clients) goes straight to the control
# socket (Site.rpc), except in the tests of the CLI itself, where it runs glvmctl as before.
CLI_SETUP_MODULES = {"tests.test_devices", "tests.test_cli_lvm"}


SITES = {"site_a": ("Philadelphia", "127.0.0.1", "a", "nodeA"),
         "site_b": ("Poughkeepsie", "127.0.0.2", "b", "nodeB")}


def _new_site(request, tmp_path, fixture: str) -> Site:
    name, addr, sub, node = SITES[fixture]
    # Tests of the RPV link itself write RPV client disks directly, which rpvd refuses by
    # default (they are exported read-only); they opt out with @pytest.mark.raw_writes.
    extra = (["--nbd-unsafe-raw-writes"] if request.node.get_closest_marker("raw_writes")
             else [])
    return Site(name, addr, tmp_path / sub, node=node, port=TEST_PORT, extra_args=extra,
                cli_setup=request.node.module.__name__ in CLI_SETUP_MODULES)


@pytest.fixture
def _sites(request, tmp_path):
    """The test's sites by fixture name, each started on first use and killed at teardown.
    A test that uses both site_a and site_b gets both daemons started together."""
    started: dict[str, Site] = {}

    def get(fixture: str) -> Site:
        if fixture not in started:
            wanted = [f for f in SITES if f not in started
                      and (f == fixture or f in request.node.fixturenames)]
            new = {f: _new_site(request, tmp_path, f) for f in wanted}
            start_together(*new.values())  # kills them all if one does not start
            started.update(new)
            for site in new.values():
                if site.cli_setup:
                    site.ctl("rpvserver", "site", site.name)
                else:
                    assert site.rpc("site", name=site.name)["site"] == site.name
        return started[fixture]

    try:
        yield get
    finally:
        for site in started.values():
            site.kill()


@pytest.fixture
def site_b(_sites):
    return _sites("site_b")


@pytest.fixture
def site_a(_sites):
    return _sites("site_a")


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


@pytest.fixture
def mounts(tmp_path):
    """Attached LVs mounted under tmp_path, undone at teardown (see tests/helpers/mounts)."""
    m = Mounts(tmp_path)
    yield m
    m.cleanup()
