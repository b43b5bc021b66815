"""glvmctl's LVM commands against a fake rpvd: the request each sends and what it prints."""

from __future__ import annotations

import json
import socket
import subprocess
import threading

import pytest

from tests.sites import GLVMCTL


class FakeRpvd:
    """A control socket that records requests and answers each op with a canned reply."""

    def __init__(self, path: str):
        self.path = path
        self.requests: list[dict] = []
        self.canned: dict[str, tuple[list[dict], dict]] = {}
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, op: str, result=None, events=(), error: str | None = None) -> None:
        reply = {"ok": False, "error": error} if error else {"ok": True, "result": result}
        self.canned[op] = (list(events), reply)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                req = json.loads(f.readline())
                self.requests.append(req)
                events, reply = self.canned.get(
                    req["op"], ([], {"ok": False, "error": f"unknown operation '{req['op']}'"}))
                for ev in events:
                    f.write(json.dumps({"event": ev}).encode() + b"\n")
                f.write(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self._sock.close()

    @property
    def last(self) -> dict:
        return self.requests[-1]


@pytest.fixture
def rpvd(tmp_path):
    fake = FakeRpvd(str(tmp_path / "ctl.sock"))
    yield fake
    fake.close()


def ctl(rpvd: FakeRpvd, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([GLVMCTL, "--socket", rpvd.path, *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == code, (r.stdout, r.stderr)
    return r


PV_STATUS = {"pv_status": [
    {"name": "hdisk2", "pvid": "000dd32daa568b070000000000000000", "status": "PVACTIVE"},
    {"name": "hdisk3", "pvid": "000dd32db9b5ab410000000000000000", "status": "PVACTIVE"},
    {"name": None, "pvid": "000dd31d58ba0ce80000000000000000", "status": "NONAME"},
], "messages": ["varyonvg: Volume group datavg is varied on."]}


@pytest.mark.parametrize(("argv", "op", "args"), [
    (["mkvg", "-y", "datavg", "hdisk1", "hdisk2"], "mkvg",
     {"vg": "datavg", "pvs": ["hdisk1", "hdisk2"], "pp_size_mb": None, "force": False,
      "pool": None}),
    (["mkvg", "-y", "datavg", "-s", "8", "-f", "hdisk1"], "mkvg",
     {"vg": "datavg", "pvs": ["hdisk1"], "pp_size_mb": 8, "force": True, "pool": None}),
    (["extendvg", "datavg", "hdisk3", "hdisk4"], "extendvg",
     {"vg": "datavg", "pvs": ["hdisk3", "hdisk4"], "force": False, "pool": None}),
    (["extendvg", "-f", "datavg", "hdisk3"], "extendvg",
     {"vg": "datavg", "pvs": ["hdisk3"], "force": True, "pool": None}),
    (["reducevg", "-d", "datavg", "hdisk3"], "reducevg",
     {"vg": "datavg", "pv": "hdisk3", "delete_lvs": True}),
    (["mklv", "-y", "datafslv", "datavg", "10"], "mklv",
     {"lv": "datafslv", "vg": "datavg", "lps": 10, "copies": 1, "strictness": "y",
      "upperbound": 0, "pvs": [], "mirror_pools": [], "lv_type": "lv"}),
    (["mklv", "-y", "datafslv", "-c", "2", "-s", "s", "-u", "2", "datavg", "10", "hdisk1",
      "hdisk3"], "mklv",
     {"lv": "datafslv", "vg": "datavg", "lps": 10, "copies": 2, "strictness": "s",
      "upperbound": 2, "pvs": ["hdisk1", "hdisk3"], "mirror_pools": [],
      "lv_type": "lv"}),
    (["chlv", "-s", "s", "-u", "2", "datafslv"], "chlv",
     {"lv": "datafslv", "strictness": "s", "upperbound": 2}),
    (["chlv", "-u", "1", "datafslv"], "chlv",
     {"lv": "datafslv", "strictness": None, "upperbound": 1}),
    (["chlv", "-n", "prodfslv", "datafslv"], "chlv", {"lv": "datafslv", "name": "prodfslv"}),
    (["unmirrorvg", "datavg", "hdisk3", "hdisk4"], "unmirrorvg",
     {"vg": "datavg", "pvs": ["hdisk3", "hdisk4"]}),
    (["varyoffvg", "datavg"], "varyoffvg", {"vg": "datavg", "force": False}),
    (["varyoffvg", "-f", "datavg"], "varyoffvg", {"vg": "datavg", "force": True}),
    (["exportvg", "datavg"], "exportvg", {"vg": "datavg"}),
    (["chpv", "-v", "a", "hdisk1"], "chpv", {"pv": "hdisk1", "state": "a"}),
    (["chvg", "-a", "n", "-Q", "n", "datavg"], "chvg",
     {"vg": "datavg", "auto_on": "n", "quorum": "n", "mirror_pool_strict": None,
      "resync_floor_mb": None, "resync_impact_pct": None}),
    (["chvg", "-a", "y", "datavg"], "chvg", {"vg": "datavg", "auto_on": "y", "quorum": None,
                                  "mirror_pool_strict": None, "resync_floor_mb": None,
                                  "resync_impact_pct": None}),
    (["chvg", "--resync-floor", "8", "--resync-impact", "20", "datavg"], "chvg",
     {"vg": "datavg", "auto_on": None, "quorum": None, "mirror_pool_strict": None,
      "resync_floor_mb": 8.0, "resync_impact_pct": 20}),
    (["mirrorvg", "datavg", "hdisk3", "hdisk4"], "mirrorvg",
     {"vg": "datavg", "pvs": ["hdisk3", "hdisk4"], "copies": 2, "sync": "foreground",
      "keep_quorum": False, "mirror_pools": []}),
    (["mirrorvg", "-S", "-c", "3", "-Q", "datavg", "hdisk5"], "mirrorvg",
     {"vg": "datavg", "pvs": ["hdisk5"], "copies": 3, "sync": "background",
      "keep_quorum": True, "mirror_pools": []}),
    (["mirrorvg", "-s", "datavg", "hdisk3"], "mirrorvg",
     {"vg": "datavg", "pvs": ["hdisk3"], "copies": 2, "sync": "none", "keep_quorum": False,
      "mirror_pools": []}),
    (["varyonvg", "-f", "-n", "-s", "datavg"], "varyonvg",
     {"vg": "datavg", "force": True, "nosync": True, "maintenance": True}),
    (["importvg", "-y", "datavg", "-f", "hdisk2"], "importvg",
     {"vg": "datavg", "pv": "hdisk2", "force": True}),
    (["syncvg", "-v", "datavg"], "syncvg",
     {"lv": None, "pv": None, "vg": "datavg", "parallel": 1, "force": False, "rate_mb": 0.0}),
    (["syncvg", "-f", "-P", "4", "--rate", "2.5", "-l", "datafslv"], "syncvg",
     {"lv": "datafslv", "pv": None, "vg": None, "parallel": 4, "force": True,
      "rate_mb": 2.5}),
    (["lslv", "-m", "datafslv", "--json"], "lslv", {"lv": "datafslv", "map": True}),
    (["lsvg", "--json"], "lsvg", {"vg": None}),
    # mirror pools
    (["mkvg", "-p", "PoolA", "-y", "datavg", "hdisk1"], "mkvg",
     {"vg": "datavg", "pvs": ["hdisk1"], "pp_size_mb": None, "force": False, "pool": "PoolA"}),
    (["extendvg", "-p", "PoolB", "datavg", "hdisk3"], "extendvg",
     {"vg": "datavg", "pvs": ["hdisk3"], "force": False, "pool": "PoolB"}),
    (["chpv", "-p", "PoolB", "hdisk3", "hdisk4"], "chpv_pool",
     {"pvs": ["hdisk3", "hdisk4"], "pool": "PoolB"}),
    (["chpv", "-P", "hdisk3"], "chpv_pool", {"pvs": ["hdisk3"], "pool": None}),
    (["chvg", "-M", "s", "datavg"], "chvg",
     {"vg": "datavg", "auto_on": None, "quorum": None, "mirror_pool_strict": "s",
      "resync_floor_mb": None, "resync_impact_pct": None}),
    (["mklv", "-y", "datafslv", "-c", "2", "-p", "copy1=PoolA", "-p", "copy2=PoolB", "datavg",
      "10"], "mklv",
     {"lv": "datafslv", "vg": "datavg", "lps": 10, "copies": 2, "strictness": "y",
      "upperbound": 0, "pvs": [], "mirror_pools": ["copy1=PoolA", "copy2=PoolB"],
      "lv_type": "lv"}),
    (["mklv", "-y", "cachelv", "-t", "aio_cache", "-p", "copy1=PoolA", "datavg", "4"], "mklv",
     {"lv": "cachelv", "vg": "datavg", "lps": 4, "copies": 1, "strictness": "y",
      "upperbound": 0, "pvs": [], "mirror_pools": ["copy1=PoolA"], "lv_type": "aio_cache"}),
    (["chmp", "-A", "-c", "cachelv", "-h", "80", "-m", "PoolB", "datavg"], "chmp",
     {"vg": "datavg", "pool": "PoolB", "mode": "async", "cache_lv": "cachelv", "hwm": 80,
      "force": False}),
    (["chmp", "-S", "-f", "-m", "PoolB", "datavg"], "chmp",
     {"vg": "datavg", "pool": "PoolB", "mode": "sync", "cache_lv": None, "hwm": None,
      "force": True}),
    (["chmp", "-h", "70", "-m", "PoolB", "datavg"], "chmp",
     {"vg": "datavg", "pool": "PoolB", "mode": None, "cache_lv": None, "hwm": 70,
      "force": False}),
    (["mirrorvg", "-p", "copy2=PoolB", "datavg"], "mirrorvg",
     {"vg": "datavg", "pvs": [], "copies": 2, "sync": "foreground", "keep_quorum": False,
      "mirror_pools": ["copy2=PoolB"]}),
])
def test_request_args(rpvd, argv, op, args):
    rpvd.answer(op, {"vg": "datavg", "lv": "datafslv", "messages": [], "resync": None,
                     "pool": "PoolB", "mode": "async",
                     "pv_status": [], "pps_total": 0, "pps_done": 0, "bytes": 0,
                     "seconds": 0.0, "failed": []})
    ctl(rpvd, *argv)
    assert rpvd.requests == [{"v": 1, "op": op, "args": args}]


@pytest.mark.parametrize(("argv", "op", "result", "out"), [
    (["mkvg", "-y", "datavg", "hdisk1"], "mkvg", {"vg": "datavg", "pp_size_mb": 4},
     "datavg\n"),
    (["mklv", "-y", "datafslv", "datavg", "3"], "mklv", {"lv": "datafslv"}, "datafslv\n"),
    (["extendvg", "datavg", "hdisk3"], "extendvg", None, ""),
    (["rmlv", "-f", "datafslv"], "rmlv", None, "rmlv: Logical volume datafslv is removed.\n"),
    (["chvg", "-Q", "n", "datavg"], "chvg", {"messages": ["quorum off", "second"]},
     "quorum off\nsecond\n"),
])
def test_simple_output(rpvd, argv, op, result, out):
    rpvd.answer(op, result)
    assert ctl(rpvd, *argv).stdout == out


@pytest.mark.parametrize("argv", [
    ["chlv", "datafslv"],
    ["chvg", "datavg"],
    ["syncvg"],
    ["syncvg", "-l", "lv", "-v", "datavg"],
    ["mirrorvg", "-S", "-s", "datavg", "hdisk3"],
    ["lsvg", "-p"],
    ["lsvg", "-p", "-l", "datavg"],
])
def test_refused_before_calling_rpvd(rpvd, argv):
    r = ctl(rpvd, *argv, code=1)
    assert r.stderr.startswith("glvmctl: ") and r.stderr.count("\n") == 1
    assert rpvd.requests == []


@pytest.mark.parametrize("argv", [
    ["mklv", "-y", "lv", "-s", "x", "datavg", "1"],
    ["chpv", "-v", "x", "hdisk1"],
    ["chvg", "-a", "maybe", "datavg"],
    ["mirrorvg", "-c", "4", "datavg", "hdisk3"],
])
def test_bad_choices_are_usage_errors(rpvd, argv):
    ctl(rpvd, *argv, code=2)
    assert rpvd.requests == []


def test_daemon_refusal_is_one_line(rpvd):
    rpvd.answer("mkvg", error="0516-1254 mkvg: Changing the PVID in the ODM.")
    r = ctl(rpvd, "mkvg", "-y", "datavg", "hdisk1", code=1)
    assert r.stdout == ""
    assert r.stderr == "glvmctl: 0516-1254 mkvg: Changing the PVID in the ODM.\n"


LV = {"name": "datafslv", "vg": "datavg", "copies": 2, "lps": 3, "pps": 6, "stale_pps": 1,
      "strictness": "s", "upperbound": 2, "pp_size_mb": 4, "state": "opened/stale",
      "size_bytes": 3 * 4 << 20,
      "map": [{"lp": i, "copies": [{"pv": "hdisk1", "pp": i, "stale": False},
                                   {"pv": "hdisk3", "pp": i + 10, "stale": i == 2}]}
              for i in (1, 2, 3)]}


def test_lslv_block(rpvd):
    rpvd.answer("lslv", {k: v for k, v in LV.items() if k != "map"})
    lines = ctl(rpvd, "lslv", "datafslv").stdout.splitlines()
    flat = " ".join(" ".join(lines).split())
    for frag in ["LOGICAL VOLUME: datafslv", "VOLUME GROUP: datavg", "LV STATE: opened/stale",
                 "PP SIZE: 4 megabyte(s)", "COPIES: 2", "LPs: 3", "PPs: 6", "STALE PPs: 1",
                 "UPPER BOUND: 2", "STRICTNESS: superstrict"]:
        assert frag in flat, frag
    # AIX's two columns: the right-hand labels start at the same offset on every line
    assert lines[0].index("VOLUME GROUP:") == lines[1].index("PP SIZE:")


def test_lslv_map(rpvd):
    rpvd.answer("lslv", LV)
    assert ctl(rpvd, "lslv", "-m", "datafslv").stdout == (
        "datafslv:N/A\n"
        "LP    PP1  PV1               PP2  PV2\n"
        "0001  0001 hdisk1            0011 hdisk3\n"
        "0002  0002 hdisk1            0012 hdisk3 (stale)\n"
        "0003  0003 hdisk1            0013 hdisk3\n")
    assert rpvd.last["args"] == {"lv": "datafslv", "map": True}


def test_lslv_json(rpvd):
    rpvd.answer("lslv", LV)
    assert json.loads(ctl(rpvd, "lslv", "-m", "datafslv", "--json").stdout) == LV


def test_varyonvg_quiet_when_all_active(rpvd):
    rpvd.answer("varyonvg", {"pv_status": PV_STATUS["pv_status"][:2],
                             "messages": ["varyonvg: Volume group datavg is varied on."]})
    assert ctl(rpvd, "varyonvg", "datavg").stdout == \
        "varyonvg: Volume group datavg is varied on.\n"
    assert rpvd.last["args"] == {"vg": "datavg", "force": False, "nosync": False,
                                 "maintenance": False}


def test_varyonvg_pv_status_table(rpvd):
    rpvd.answer("varyonvg", {"pv_status": [
        {"name": "hdisk1", "pvid": "000dd31d714bfde20000000000000000", "status": "PVREMOVED"},
        {"name": "hdisk3", "pvid": "000dd32daa568b070000000000000000", "status": "PVACTIVE"}],
        "messages": ["varyonvg: Volume group datavg is varied on."]})
    out = ctl(rpvd, "varyonvg", "-n", "-s", "datavg").stdout
    assert out == ("PV Status:\n"
                   "hdisk1 000dd31d714bfde2 PVREMOVED\n"
                   "hdisk3 000dd32daa568b07 PVACTIVE\n"
                   "varyonvg: Volume group datavg is varied on.\n")


def test_varyonvg_shows_table_when_a_pv_is_missing(rpvd):
    rpvd.answer("varyonvg", PV_STATUS)
    assert ctl(rpvd, "varyonvg", "-f", "datavg").stdout.startswith("PV Status:\n")


def test_importvg(rpvd):
    result = dict(PV_STATUS, messages=PV_STATUS["messages"] + [
        "0516-510 synclvodm: Physical volume not found for physical volume identifier "
        "000dd31d58ba0ce80000000000000000."])
    rpvd.answer("importvg", result)
    assert ctl(rpvd, "importvg", "-f", "-y", "datavg", "hdisk2").stdout == (
        "PV Status:\n"
        "hdisk2 000dd32daa568b07 PVACTIVE\n"
        "hdisk3 000dd32db9b5ab41 PVACTIVE\n"
        "       000dd31d58ba0ce8 NONAME\n"
        "varyonvg: Volume group datavg is varied on.\n"
        "0516-510 synclvodm: Physical volume not found for physical volume identifier "
        "000dd31d58ba0ce80000000000000000.\n"
        "datavg\n")


PROGRESS = [{"pps_total": 4, "pps_done": n, "bytes": n << 22, "lv": "datafslv"}
            for n in range(1, 5)]


def test_mirrorvg_messages_and_no_bar_without_tty(rpvd):
    msg = ("0516-1125 mirrorvg: Quorum requirement turned off, varyoff and varyon volume "
           "group for this to take effect.")
    rpvd.answer("mirrorvg", {"messages": [msg], "resync": {"failed": []}}, events=PROGRESS)
    r = ctl(rpvd, "mirrorvg", "datavg", "hdisk3", "hdisk4")
    assert r.stdout == msg + "\n" and r.stderr == ""


def test_mirrorvg_resync_failures(rpvd):
    rpvd.answer("mirrorvg", {"messages": [], "resync": {"failed": ["datafslv LP 2: EIO"]}})
    r = ctl(rpvd, "mirrorvg", "datavg", "hdisk3", code=1)
    assert r.stderr == "datafslv LP 2: EIO\n"


SYNCED = {"pps_total": 4, "pps_done": 4, "bytes": 16 << 20, "seconds": 1.5, "failed": []}


def test_syncvg_summary(rpvd):
    rpvd.answer("syncvg", SYNCED, events=PROGRESS)
    r = ctl(rpvd, "syncvg", "-l", "datafslv")
    assert r.stdout == ("syncvg: 4 stale partitions resynchronized, 16777216 bytes copied "
                        "in 1.5 s\n")
    assert r.stderr == ""


def test_syncvg_json_lines(rpvd):
    rpvd.answer("syncvg", SYNCED, events=PROGRESS)
    lines = ctl(rpvd, "syncvg", "-p", "hdisk3", "--json").stdout.splitlines()
    assert [json.loads(ln) for ln in lines] == \
        [{"event": "progress", **ev} for ev in PROGRESS] + [SYNCED]


@pytest.mark.parametrize("as_json", [False, True])
def test_syncvg_failures_exit_1(rpvd, as_json):
    rpvd.answer("syncvg", dict(SYNCED, pps_done=3, failed=["hdisk3 PP 7: I/O error"]))
    r = ctl(rpvd, "syncvg", "-v", "datavg", *(["--json"] if as_json else []), code=1)
    assert r.stderr == "hdisk3 PP 7: I/O error\n"
    assert ("3 stale partitions" in r.stdout) != as_json


VG = {"name": "datavg", "vgid": "000dd31d00004c000000010b2c9a3c64", "state": "active",
      "quorum": False, "auto_on": False, "pp_size_mb": 4, "total_pps": 100, "free_pps": 40,
      "used_pps": 60, "stale_pps": 2, "stale_pvs": 1, "active_pvs": 4, "total_pvs": 4,
      "lvs_count": 2, "open_lvs": 1,
      "resync_floor_mb": 4.0, "resync_impact_pct": 50, "resync_rate_mb": 12.5,
      "pvs": [{"name": "hdisk1", "pvid": "000dd31d714bfde20000000000000000",
               "state": "active", "total_pps": 25, "free_pps": 10, "stale_pps": 0,
               "site": None},
              {"name": "hdisk3", "pvid": "000dd32daa568b070000000000000000",
               "state": "missing", "total_pps": 25, "free_pps": 10, "stale_pps": 2,
               "site": "Poughkeepsie"}],
      "lvs": [{"name": "datafslv", "type": "jfs2", "lps": 15, "pps": 30, "pvs": 2,
               "state": "open/stale", "copies": 2},
              {"name": "dataloglv", "type": "jfs2log", "lps": 1, "pps": 2, "pvs": 2,
               "state": "closed/syncd", "copies": 2}]}


def test_lsvg_lists_names(rpvd):
    rpvd.answer("lsvg", ["rootvg", "datavg"])
    assert ctl(rpvd, "lsvg").stdout == "rootvg\ndatavg\n"
    assert json.loads(ctl(rpvd, "lsvg", "--json").stdout) == ["rootvg", "datavg"]


def test_lsvg_block(rpvd):
    rpvd.answer("lsvg", VG)
    out = ctl(rpvd, "lsvg", "datavg").stdout
    assert rpvd.last["args"] == {"vg": "datavg"}
    flat = " ".join(out.split())
    for frag in ["VOLUME GROUP: datavg", "VG IDENTIFIER: 000dd31d00004c000000010b2c9a3c64",
                 "VG STATE: active", "PP SIZE: 4 megabyte(s)", "TOTAL PPs: 100 (400 megabytes)",
                 "FREE PPs: 40 (160 megabytes)", "USED PPs: 60 (240 megabytes)",
                 "QUORUM: off", "STALE PVs: 1", "STALE PPs: 2", "ACTIVE PVs: 4",
                 "TOTAL PVs: 4", "AUTO ON: no", "LVs: 2", "OPEN LVs: 1",
                 "RESYNC FLOOR: 4 MB/s", "RESYNC IMPACT: 50%", "RESYNC RATE: 12.5 MB/s"]:
        assert frag in flat, frag


def test_lsvg_p(rpvd):
    rpvd.answer("lsvg", VG)
    assert ctl(rpvd, "lsvg", "-p", "datavg").stdout == (
        "datavg:\n"
        "PV_NAME           PV STATE          TOTAL PPs   FREE PPs    STALE PPs\n"
        "hdisk1            active            25          10          0\n"
        "hdisk3            missing           25          10          2\n")


def test_lsvg_l(rpvd):
    rpvd.answer("lsvg", VG)
    assert ctl(rpvd, "lsvg", "datavg", "-l").stdout == (
        "datavg:\n"
        "LV NAME             TYPE       LPs     PPs     PVs  LV STATE      COPIES\n"
        "datafslv            jfs2       15      30      2    open/stale    2\n"
        "dataloglv           jfs2log    1       2       2    closed/syncd  2\n")


@pytest.mark.parametrize("flag", [[], ["-p"], ["-l"]])
def test_lsvg_json_is_whole_object(rpvd, flag):
    rpvd.answer("lsvg", VG)
    assert json.loads(ctl(rpvd, "lsvg", "datavg", *flag, "--json").stdout) == VG


def test_every_lvm_command_has_help(rpvd):
    for cmd in ["mkvg", "extendvg", "reducevg", "mklv", "chlv", "rmlv", "lslv", "mirrorvg",
                "unmirrorvg", "syncvg", "varyonvg", "varyoffvg", "importvg", "exportvg",
                "chvg", "chpv", "lsvg"]:
        r = ctl(rpvd, cmd, "--help")
        assert "Usage:" in r.stdout
