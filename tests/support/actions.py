"""Actions the tests register; each records the jobs it ran into :data:`ran`."""

from __future__ import annotations

import asyncio
import time

from worker import ANY_ACTOR, Job, Reject, Retry, action


class Recorder:
    """Jobs that ran, awaitable: tests wait for an event, never sleep."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.jobs: list[Job] = []
        self.times: list[float] = []
        self._changed = asyncio.Event()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    def record(self, job: Job) -> None:
        self.jobs.append(job)
        self.times.append(time.monotonic())
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Job]:
        async with asyncio.timeout(timeout):
            while len(self.jobs) < count:
                self._changed.clear()
                await self._changed.wait()
        return list(self.jobs)

    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]


ran = Recorder()


@action("reports.generate", scopes={"reports:write"})
async def generate(job: Job) -> None:
    ran.record(job)


@action("reports.read", scopes={"reports:read"})
async def read(job: Job) -> None:
    ran.record(job)


@action("reports.any_actor", scopes={"reports:write"}, actors=ANY_ACTOR)
async def any_actor(job: Job) -> None:
    """Runs whoever acts for the subject."""
    ran.record(job)


@action("admin.purge", scopes={"admin"})
async def purge(job: Job) -> None:
    ran.record(job)


@action("reports.reject", scopes=set())
async def refuse(job: Job) -> None:
    ran.record(job)
    raise Reject("this report cannot be generated")


@action("flaky.twice", scopes=set())
async def flaky(job: Job) -> None:
    """Fails with Retry on its first two attempts, then succeeds."""
    ran.record(job)
    if job.attempt < 3:
        raise Retry(f"attempt {job.attempt} is not the lucky one")


@action("always.fails", scopes=set())
async def always_fails(job: Job) -> None:
    ran.record(job)
    raise RuntimeError(f"disk full while handling {job.id}")


@action("gated.run", scopes=set())
async def gated(job: Job) -> None:
    """Waits for the test to open ``ran.gate``, then records the job."""
    ran.entered.set()
    await ran.gate.wait()
    ran.record(job)
