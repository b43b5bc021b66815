"""Fixtures: two real sites on loopback, site A "Philadelphia" on 127.0.0.1 and site B
"Poughkeepsie" on 127.0.0.2, each with its own rpvd, state directory and disk files."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.sites import Site

# A dedicated port keeps test daemons away from a real rpvd on 6192.
TEST_PORT = int(os.environ.get("GLVM_TEST_PORT", "16192"))


@pytest.fixture
def site_b(tmp_path):
    site = Site("Poughkeepsie", "127.0.0.2", tmp_path / "b", node="nodeB", port=TEST_PORT)
    site.start()
    site.ctl("rpvserver", "site", "Poughkeepsie")
    yield site
    site.kill()


@pytest.fixture
def site_a(tmp_path):
    site = Site("Philadelphia", "127.0.0.1", tmp_path / "a", node="nodeA", port=TEST_PORT)
    site.start()
    site.ctl("rpvserver", "site", "Philadelphia")
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
