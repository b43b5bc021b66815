"""Device configuration against a real rpvd: mkdev/chdev/rmdev, listings, persistence."""

from __future__ import annotations

import os
import stat

import pytest

from tests.conftest import run
from tests.sites import GLVMCTL, RPVD


def test_file_disk_gets_pvid_and_lists(site_b):
    assert site_b.ctl("mkdev", "-c", "disk", "-t", "file", "-a",
                      f"path={site_b.disk_path('pv3.img')}", "-a", "size=1G",
                      "-l", "hdisk2").strip() == "hdisk2 Available"
    pvs = site_b.json("lspv")
    assert [p["name"] for p in pvs] == ["hdisk2"]
    pv = pvs[0]
    assert set(pv) >= {"name", "pvid", "vg", "state"}
    assert len(pv["pvid"]) == 32 and int(pv["pvid"], 16) >= 0 and pv["vg"] is None
    assert pv["pvid"].endswith("0" * 16)
    human = site_b.ctl("lspv").split()
    assert human[:4] == ["hdisk2", pv["pvid"], "None", "active"]
    # the backing file is sparse and of the asked size
    st = os.stat(site_b.disk_path("pv3.img"))
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 1 << 20


def test_next_free_names_and_explicit_names(site_b):
    for i in range(2):
        site_b.ctl("mkdev", "-c", "disk", "-t", "file", "-a",
                   f"path={site_b.disk_path(f'd{i}.img')}", "-a", "size=8M")
    site_b.ctl("mkdev", "-c", "disk", "-t", "file", "-a",
               f"path={site_b.disk_path('d5.img')}", "-a", "size=8M", "-l", "hdisk5")
    site_b.ctl("mkdev", "-c", "disk", "-t", "file", "-a",
               f"path={site_b.disk_path('d9.img')}", "-a", "size=8M")
    assert [d["name"] for d in site_b.json("lsdev", "-C", "-c", "disk")] == \
        ["hdisk0", "hdisk1", "hdisk5", "hdisk2"]
    pvids = [p["pvid"] for p in site_b.json("lspv")]
    assert len(set(pvids)) == 4
    site_b.ctl("mkdev", "-c", "rpvserver", "-t", "rpvstype", "-a", f"rpvs_pvid={pvids[0]}",
               "-a", "client_addr=127.0.0.1")
    site_b.ctl("mkdev", "-c", "rpvserver", "-t", "rpvstype", "-a", f"rpvs_pvid={pvids[1]}",
               "-a", "client_addr=127.0.0.1")
    assert [d["name"] for d in site_b.json("lsdev", "-c", "rpvserver")] == \
        ["rpvserver0", "rpvserver1"]


def test_listing_json_keys(site_b):
    pvid = site_b.make_disk("hdisk2")
    site_b.serve(pvid, "127.0.0.1")
    devs = site_b.json("lsdev", "-C")
    assert {d["name"] for d in devs} == {"hdisk2", "rpvserver0"}
    for d in devs:
        assert set(d) >= {"name", "state", "class", "type", "description"}
    srv = next(d for d in devs if d["name"] == "rpvserver0")
    assert srv == {"name": "rpvserver0", "state": "Available", "class": "rpvserver",
                   "type": "rpvstype", "description": "Remote Physical Volume Server"}
    attrs = site_b.json("lsattr", "-E", "-l", "rpvserver0")
    assert [a["attribute"] for a in attrs] == ["auto_online", "client_addr", "rpvs_pvid"]
    assert all(set(a) >= {"attribute", "value", "description", "user_settable"} for a in attrs)
    assert {a["attribute"]: a["value"] for a in attrs} == {
        "auto_online": "y", "client_addr": "127.0.0.1", "rpvs_pvid": pvid}
    assert "Remote Physical Volume Server" in site_b.ctl("lsdev", "-C", "-c", "rpvserver")
    human = site_b.ctl("lsattr", "-E", "-l", "rpvserver0").splitlines()
    assert human[2].split()[:2] == ["rpvs_pvid", pvid] and human[2].split()[-1] == "True"


@pytest.mark.parametrize("attr,message", [
    ("client_addr=300.1.1.1", "not an IP address"),
    ("client_addr=", "not an IP address"),
    ("auto_online=maybe", "must be y or n"),
    ("rpvs_pvid=xyz", "invalid PVID"),
    ("rpvs_pvid=" + "0" * 32, "no local disk has PVID"),
    ("colour=blue", "not valid for rpvserver"),
    ("novalue", "must be name=value"),
])
def test_chdev_rpvserver_rejects_bad_values_without_change(site_b, attr, message):
    pvid = site_b.make_disk("hdisk2")
    site_b.serve(pvid, "127.0.0.1")
    before = site_b.json("lsattr", "-E", "-l", "rpvserver0")
    err = site_b.fails("chdev", "-l", "rpvserver0", "-a", "auto_online=n", "-a", attr)
    assert message in err
    assert site_b.json("lsattr", "-E", "-l", "rpvserver0") == before


@pytest.mark.parametrize("attr,message", [
    ("io_timeout=0", "outside 1..3600"),
    ("io_timeout=99999", "outside 1..3600"),
    ("io_timeout=ten", "not a whole number"),
    ("server_addr=1.2.3", "not an IP address"),
    ("local_addr=localhost", "not an IP address"),
    ("pvid=12", "invalid PVID"),
    ("size=5", "cannot be changed"),
    ("resume=perhaps", "must be y or n"),
])
def test_chdev_rpvclient_rejects_bad_values_without_change(linked, attr, message):
    site_a, _, _ = linked
    before = site_a.json("lsattr", "-E", "-l", "hdisk3")
    err = site_a.fails("chdev", "-l", "hdisk3", "-a", "io_timeout=7", "-a", attr)
    assert message in err
    assert site_a.json("lsattr", "-E", "-l", "hdisk3") == before


def test_chdev_changes_are_kept(linked):
    site_a, site_b, _ = linked
    site_a.ctl("chdev", "-l", "hdisk3", "-a", "io_timeout=42")
    site_b.ctl("chdev", "-l", "rpvserver0", "-a", "auto_online=no")
    assert {a["attribute"]: a["value"] for a in site_a.json("lsattr", "-E", "-l", "hdisk3")}[
        "io_timeout"] == "42"
    assert {a["attribute"]: a["value"] for a in site_b.json("lsattr", "-E", "-l", "rpvserver0")}[
        "auto_online"] == "n"


def test_bad_mkdev_input(site_b, tmp_path):
    p = site_b.disk_path("x.img")
    assert "unknown device class/type" in site_b.fails("mkdev", "-c", "disk", "-t", "tape",
                                                       "-a", f"path={p}")
    assert "is required" in site_b.fails("mkdev", "-c", "disk", "-t", "file", "-a", f"path={p}")
    assert "outside 1M..1P" in site_b.fails("mkdev", "-c", "disk", "-t", "file", "-a",
                                            f"path={p}", "-a", "size=10K")
    assert "not a size" in site_b.fails("mkdev", "-c", "disk", "-t", "file", "-a",
                                        f"path={p}", "-a", "size=lots")
    assert "must be absolute" in site_b.fails("mkdev", "-c", "disk", "-t", "file", "-a",
                                              "path=rel.img", "-a", "size=8M")
    assert "does not exist" in site_b.fails("mkdev", "-c", "disk", "-t", "file", "-a",
                                            "path=/nonexistent/dir/x.img", "-a", "size=8M")
    small = tmp_path / "small.img"
    small.write_bytes(b"x" * (2 << 20))
    assert "smaller than" in site_b.fails("mkdev", "-c", "disk", "-t", "file", "-a",
                                          f"path={small}", "-a", "size=8M")
    assert small.stat().st_size == 2 << 20
    site_b.make_disk("hdisk2")
    assert "already exists" in site_b.fails("mkdev", "-c", "disk", "-t", "file", "-a",
                                            f"path={p}", "-a", "size=8M", "-l", "hdisk2")
    assert "already used by hdisk2" in site_b.fails(
        "mkdev", "-c", "disk", "-t", "file", "-a", f"path={site_b.disk_path('hdisk2')}.img",
        "-a", "size=8M")
    assert "must look like hdiskN" in site_b.fails("mkdev", "-c", "disk", "-t", "file", "-a",
                                                   f"path={p}", "-a", "size=8M", "-l", "disk7")
    assert "not defined" in site_b.fails("mkdev", "-l", "hdisk9")
    assert "not defined" in site_b.fails("rmdev", "-l", "hdisk9")
    assert "not defined" in site_b.fails("lsattr", "-E", "-l", "hdisk9")
    assert "not defined" in site_b.fails("lspv", "hdisk9")
    assert "no local disk has PVID" in site_b.fails(
        "mkdev", "-c", "rpvserver", "-t", "rpvstype", "-a", "rpvs_pvid=" + "ab" * 16,
        "-a", "client_addr=127.0.0.1")
    assert [d["name"] for d in site_b.json("lsdev")] == ["hdisk2"]
    assert not os.path.exists(p)


def test_rpvserver_one_per_pvid_and_disk_busy(site_b):
    pvid = site_b.make_disk("hdisk2")
    site_b.serve(pvid, "127.0.0.1")
    assert "already served by rpvserver0" in site_b.fails(
        "mkdev", "-c", "rpvserver", "-t", "rpvstype", "-a", f"rpvs_pvid={pvid}",
        "-a", "client_addr=127.0.0.1")
    assert "rmdev -l rpvserver0 first" in site_b.fails("rmdev", "-l", "hdisk2")
    site_b.ctl("rmdev", "-l", "rpvserver0")
    assert "delete rpvserver0 first" in site_b.fails("rmdev", "-d", "-l", "hdisk2")
    assert site_b.ctl("rmdev", "-d", "-l", "rpvserver0").strip() == "rpvserver0 deleted"
    assert site_b.ctl("rmdev", "-d", "-l", "hdisk2").strip() == "hdisk2 deleted"
    assert site_b.json("lsdev") == []
    assert os.path.exists(site_b.disk_path("hdisk2") + ".img"), "rmdev must not remove data"


def test_state_transitions(site_b):
    pvid = site_b.make_disk("hdisk2")
    site_b.serve(pvid, "127.0.0.1")
    assert site_b.ctl("rmdev", "-l", "rpvserver0").strip() == "rpvserver0 Defined"
    assert site_b.ctl("rmdev", "-l", "rpvserver0").strip() == "rpvserver0 Defined"
    assert site_b.ctl("mkdev", "-l", "rpvserver0").strip() == "rpvserver0 Available"
    assert site_b.ctl("mkdev", "-l", "rpvserver0").strip() == "rpvserver0 Available"
    site_b.ctl("rmdev", "-l", "rpvserver0")
    site_b.ctl("rmdev", "-l", "hdisk2")
    assert "is not Available" in site_b.fails("mkdev", "-l", "rpvserver0")
    site_b.ctl("mkdev", "-l", "hdisk2")
    site_b.ctl("mkdev", "-l", "rpvserver0")
    assert [(d["name"], d["state"]) for d in site_b.json("lsdev")] == \
        [("hdisk2", "Available"), ("rpvserver0", "Available")]


def test_devices_survive_restart_with_boot_rules(linked):
    site_a, site_b, pvid = linked
    p2 = site_b.make_disk("hdisk4")
    site_b.ctl("mkdev", "-c", "rpvserver", "-t", "rpvstype", "-a", f"rpvs_pvid={p2}",
               "-a", "client_addr=127.0.0.1", "-a", "auto_online=n")
    assert site_b.json("lsdev", "-c", "rpvserver")[1]["state"] == "Available"
    site_b.stop()
    site_b.start()
    states = {d["name"]: d["state"] for d in site_b.json("lsdev")}
    assert states == {"hdisk2": "Available", "rpvserver0": "Available",
                      "hdisk4": "Available", "rpvserver1": "Defined"}
    assert site_b.ctl("rpvserver", "site").strip() == "Poughkeepsie"
    site_a.stop()
    site_a.start()
    assert site_a.json("lsdev") == [{"name": "hdisk3", "state": "Defined", "class": "disk",
                                     "type": "rpvclient",
                                     "description": "Remote Physical Volume Client"}]
    attrs = {a["attribute"]: a["value"] for a in site_a.json("lsattr", "-E", "-l", "hdisk3")}
    assert attrs["pvid"] == pvid and attrs["site"] == "Poughkeepsie"
    assert site_a.ctl("mkdev", "-l", "hdisk3").strip() == "hdisk3 Available"


def test_control_socket_is_private(site_b):
    mode = stat.S_IMODE(os.stat(site_b.socket).st_mode)
    assert mode == 0o600


def test_malformed_control_requests_get_error_replies(site_b):
    import json
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.connect(site_b.socket)
    f = s.makefile("rwb")
    for line in (b"not json\n", b'{"op": 5}\n', b'{"op": "nosuch"}\n',
                 b'{"op": "lsattr", "args": {"bogus": 1}}\n', b'[1,2]\n'):
        f.write(line)
        f.flush()
        reply = json.loads(f.readline())
        assert reply["ok"] is False and reply["error"]
    f.write(b'{"op": "ping"}\n')
    f.flush()
    assert json.loads(f.readline())["result"]["node"] == "nodeB"
    s.close()


def test_unreachable_daemon_is_one_line_error(tmp_path):
    r = run(GLVMCTL, "--socket", str(tmp_path / "none.sock"), "lsdev", check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("glvmctl: cannot reach rpvd at") and "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", [
    [], ["mkdev"], ["rmdev"], ["chdev"], ["lsdev"], ["lsattr"], ["lspv"], ["errpt"],
    ["errclear"], ["errnotify"], ["errnotify", "add"], ["rpvserver"], ["rpvserver", "site"],
    ["rpvserver", "add"], ["rpvclient"], ["rpvclient", "discover"], ["rpvclient", "add"],
])
def test_every_command_has_help(cmd):
    r = run(GLVMCTL, *cmd, "--help")
    assert "Usage:" in r.stdout and len(r.stdout.splitlines()) > 3


def test_rpvd_help_and_bad_config(tmp_path):
    r = run(RPVD, "--help")
    assert "--state-dir" in r.stdout and "RPV" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[rpvd]\nlisten = "nowhere"\n')
    r = run(RPVD, "--state-dir", str(tmp_path / "s"), "--config", str(bad), check=False)
    assert r.returncode == 2 and "listen 'nowhere' must be IP:PORT" in r.stderr
    for body, message in [('frobnicate = 1', "unknown setting 'frobnicate'"),
                          ('max_connections = "many"', "max_connections must be a int"),
                          ('listen = 6192', "listen must be a str"),
                          ('log_level = "verbose"', "log_level must be debug, info")]:
        bad.write_text(f'[rpvd]\n{body}\n')
        r = run(RPVD, "--state-dir", str(tmp_path / "s"), "--config", str(bad), check=False)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_disk_file_has_one_owner(site_a, site_b):
    site_b.make_disk("hdisk2")
    err = site_a.fails("mkdev", "-c", "disk", "-t", "file", "-a",
                       f"path={site_b.disk_path('hdisk2')}.img", "-a", "size=64M")
    assert "in use by another process" in err
    assert site_a.json("lsdev") == []


def test_rpv_port_comes_from_etc_services(tmp_path):
    from rpv.daemon.attrs import rpv_port

    services = tmp_path / "services"
    services.write_text("ssh 22/tcp\n# rpv 7000/tcp\nrpv\t6200/tcp\t# GLVM\nrpv 6201/udp\n")
    assert rpv_port(str(services)) == 6200
    services.write_text("ssh 22/tcp\nrpv banana/tcp\n")
    assert rpv_port(str(services)) == 6192
    assert rpv_port(str(tmp_path / "missing")) == 6192


def test_errpt_location_and_vpd_say_where_a_disk_lives(tmp_path):
    """errpt -a's Location and VPD lines (the seed's fields) for a file disk, an RPV client
    and a resource that is not a disk."""
    from glvmctl.errlog import format_detail
    from rpv.daemon.devdb import Device, DeviceDB
    from rpv.daemon.devices import DeviceManager
    from rpv.daemon.errlog import ErrorLog

    db = DeviceDB(str(tmp_path / "devices.db"))
    db.set_setting("site", "Philadelphia")
    errlog = ErrorLog(db, "nodeA", "00C0FFEE0000", now=lambda: 1e9)
    devices = DeviceManager(db, errlog, "nodeA")
    errlog.locate = devices.locate
    db.add(Device("hdisk1", "disk", "file", "Available",
                  {"path": "/var/lib/glvm/a1.img", "pvid": "ab" * 16, "size": str(2 << 30)}))
    db.add(Device("hdisk3", "disk", "rpvclient", "Available",
                  {"server_addr": "127.0.0.2", "local_addr": "127.0.0.1", "pvid": "cd" * 16,
                   "server_port": "6192", "site": "Poughkeepsie", "io_timeout": "30"}))
    text = format_detail([errlog.log("LVM_SA_PVMISS", "hdisk1", "disk", "lvm"),
                          errlog.log("RPVC_IO_TIMEOUT", "hdisk3", "disk", "rpvclient"),
                          errlog.log("LVM_SA_QUORCLOSE", "datavg", "vg", "lvm")])
    for line in ("Location:        /var/lib/glvm/a1.img",
                 "        Machine Type and Model......File-backed Disk",
                 f"        Serial Number...............{'ab' * 16}",
                 "        Size........................2048 MB",
                 "        Site........................Philadelphia",
                 "Location:        127.0.0.2:6192 from 127.0.0.1",
                 "        Machine Type and Model......Remote Physical Volume Client",
                 "        Server Site.................Poughkeepsie",
                 "        I/O Timeout.................30 s"):
        assert line in text.splitlines(), line
    quorclose = text.split("LABEL:          LVM_SA_QUORCLOSE")[1]
    assert "Location:        \nVPD:\n\nDescription" in quorclose
    db.close()
