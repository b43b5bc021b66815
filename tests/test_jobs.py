"""Long operations as jobs: the job table on its own, then glvmctl jobs against a real rpvd
(a rate-limited syncvg listed, cancelled with its partitions left stale, then finished)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from rpv.jobs import JobError, Jobs
from tests.helpers.waits import until, wait_until
from tests.sites import GLVMCTL


def test_job_table_runs_follows_and_cancels():
    async def main():
        clock = iter(range(100))
        jobs = Jobs(clock=lambda: next(clock))
        gate, reported = asyncio.Event(), asyncio.Event()
        seen = []

        async def work(progress):
            progress({"pps_done": 1, "pps_total": 2})
            reported.set()
            await gate.wait()
            progress({"pps_done": 2, "pps_total": 2})
            return {"ok": True}

        job = jobs.start("syncvg", "datavg", work)
        await asyncio.wait_for(reported.wait(), 5)  # the job reached its first progress event
        assert jobs.list()[0]["state"] == "running"
        assert jobs.list()[0]["progress"] == {"pps_done": 1, "pps_total": 2}
        follower = asyncio.ensure_future(jobs.follow(job.id, seen.append))
        await until(lambda: seen.append in job.watchers)  # the follower is listening
        gate.set()
        assert (await follower).state == "done" and job.task.result() == {"ok": True}
        assert seen == [{"pps_done": 2, "pps_total": 2}]
        with pytest.raises(JobError, match="already done"):
            jobs.cancel(job.id)

        running = asyncio.Event()

        async def endless(progress):
            running.set()
            await asyncio.Event().wait()  # ends only when cancelled

        slow = jobs.start("syncvg_verify", "datalv", endless)
        await asyncio.wait_for(running.wait(), 5)
        jobs.cancel(slow.id)
        await asyncio.wait({slow.task})
        assert slow.state == "cancelled" and slow.finished is not None

        failing = jobs.start("mirrorvg", "datavg", lambda progress: _raise())
        await asyncio.wait({failing.task})
        assert failing.state == "failed" and failing.error == "no space"
        with pytest.raises(JobError, match="no job 99"):
            jobs.get(99)
    asyncio.run(main())


async def _raise():
    raise OSError("no space")


def ctl_json(site, *args):
    return json.loads(site.ctl(*args, "--json"))


def test_glvmctl_jobs_list_cancel_and_finish(site_a):
    a = site_a
    for n in ("hdisk1", "hdisk2"):
        a.make_disk(n, "64M")
    a.ctl("mkvg", "-y", "datavg", "hdisk1", "hdisk2")
    a.ctl("mklv", "-y", "datalv", "-c", "2", "datavg", "8")
    env = dict(os.environ, GLVM_SOCKET=a.socket)
    # syncvg -f at 2 MB/s: 8 partitions of 4 MiB would take 16 s
    sync = subprocess.Popen([GLVMCTL, "syncvg", "-f", "--rate", "2", "-v", "datavg"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # the job appears as soon as rpvd takes the request
        running = wait_until(lambda: [j for j in ctl_json(a, "jobs") if j["state"] == "running"
                                      and j["op"] == "syncvg"], 30, "syncvg listed as running")
        assert running[0]["target"] == "datavg"
        out = a.ctl("jobs")
        assert "syncvg" in out and "running" in out
        cancelled = a.ctl("jobs", "cancel", str(running[0]["id"]))
        assert "cancelled" in cancelled
        _, err = sync.communicate(timeout=60)
    finally:
        sync.kill()
    assert sync.returncode != 0 and "cancelled" in err and "Traceback" not in err
    assert a.json("lsvg", "datavg")["stale_pps"] > 0  # what was not copied stays stale
    assert a.fails("jobs", "cancel", str(running[0]["id"])).endswith("has already cancelled")
    a.ctl("syncvg", "-v", "datavg")
    assert a.json("lsvg", "datavg")["stale_pps"] == 0
    states = [(j["op"], j["state"]) for j in ctl_json(a, "jobs")]
    assert ("syncvg", "cancelled") in states and ("syncvg", "done") in states
    done = [j for j in ctl_json(a, "jobs") if j["state"] == "done"][-1]
    waited = ctl_json(a, "jobs", "wait", str(done["id"]))
    assert waited["state"] == "done"
