"""Actions the tests register; each records the jobs it ran into :data:`ran`."""

from __future__ import annotations

import asyncio

from worker import Job, Reject, action


class Recorder:
    """Jobs that ran, awaitable: tests wait for an event, never sleep."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self._changed = asyncio.Event()

    def reset(self) -> None:
        self.jobs = []
        self._changed = asyncio.Event()

    def record(self, job: Job) -> None:
        self.jobs.append(job)
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


@action("admin.purge", scopes={"admin"})
async def purge(job: Job) -> None:
    ran.record(job)


@action("reports.reject", scopes=set())
async def refuse(job: Job) -> None:
    ran.record(job)
    raise Reject("this report cannot be generated")
