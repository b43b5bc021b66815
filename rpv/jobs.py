"""Long operations as jobs (``glvmctl jobs``): syncvg, mirrorvg, verify and background resyncs
can be listed, followed and cancelled while they run.

A job wraps one asyncio task and remembers its latest progress event. Whoever started it may
go away (glvmctl interrupted, its connection closed): the job runs on. Cancelling a job
cancels its task; the LVM's copy routines are cancellation-safe (a partition that was not
finished stays stale). Neutral: imports nothing of the project.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

KEEP_FINISHED = 32  # finished jobs remembered for ``glvmctl jobs``

Progress = Callable[[dict], None]


class JobError(LookupError):
    """No such job, or it has already finished; the message is one line."""


@dataclass(eq=False)
class Job:
    id: int
    op: str
    target: str
    started: float
    state: str = "running"  # running, done, failed, cancelled
    progress: dict | None = None
    finished: float | None = None
    error: str | None = None
    task: asyncio.Task | None = field(default=None, repr=False)
    watchers: list[Progress] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {"id": self.id, "op": self.op, "target": self.target, "state": self.state,
                "progress": self.progress, "started": self.started,
                "finished": self.finished, "error": self.error}

    def report(self, event: dict) -> None:
        self.progress = event
        for watch in list(self.watchers):
            watch(event)


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


class Jobs:
    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._jobs: dict[int, Job] = {}
        self._next = 1

    def start(self, op: str, target: str, run: Callable[[Progress], Awaitable]) -> Job:
        """Run ``run(progress)`` as job ``op`` on ``target``; ``progress`` feeds the job's
        progress and whoever follows it."""
        job = Job(self._next, op, target, self._clock())
        self._next += 1
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job, run(job.report)))
        job.task.add_done_callback(_retrieve)  # whoever waits sees it; nobody must
        self._forget_old()
        return job

    async def _run(self, job: Job, work: Awaitable):
        try:
            result = await work
        except asyncio.CancelledError:
            job.state = "cancelled"
            raise
        except BaseException as e:
            job.state, job.error = "failed", str(e) or type(e).__name__
            raise
        else:
            job.state = "done"
            return result
        finally:
            job.finished = self._clock()
            job.watchers.clear()

    def list(self) -> list[dict]:
        return [j.as_dict() for j in self._jobs.values()]

    def get(self, job_id: int) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id} (see glvmctl jobs)")
        return job

    def cancel(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job.state != "running":
            raise JobError(f"job {job_id} ({job.op} {job.target}) has already {job.state}")
        job.task.cancel()
        return job

    async def follow(self, job_id: int, progress: Progress | None) -> Job:
        """Wait for job ``job_id`` to end, passing its progress events on meanwhile."""
        job = self.get(job_id)
        if job.state == "running":
            if progress is not None:
                job.watchers.append(progress)
            try:
                await asyncio.wait({job.task})
            finally:
                if progress in job.watchers:
                    job.watchers.remove(progress)
        return job

    def _forget_old(self) -> None:
        done = [j for j in self._jobs.values() if j.state != "running"]
        for j in done[:max(0, len(done) - KEEP_FINISHED)]:
            del self._jobs[j.id]
