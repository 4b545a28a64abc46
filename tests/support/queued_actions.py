"""Actions with queueing allowances of their own (``@action(..., queued_for=...)``); each records
the jobs it ran into :data:`tests.support.actions.ran`."""

from __future__ import annotations

from datetime import timedelta

from tests.support.actions import ran
from worker import Job, Retry, action

LONG = timedelta(hours=1)
SHORT = timedelta(seconds=1)


@action("queued.long", scopes=set(), queued_for=LONG)
async def long_wait(job: Job) -> None:
    ran.record(job)


@action("queued.short", scopes=set(), queued_for=SHORT)
async def short_wait(job: Job) -> None:
    ran.record(job)


@action("queued.never", scopes=set(), queued_for=timedelta(0))
async def never_waits(job: Job) -> None:
    ran.record(job)


@action("queued.default", scopes=set())
async def default_wait(job: Job) -> None:
    ran.record(job)


RETRY_DELAY = 2.2


@action("queued.flaky", scopes=set(), queued_for=LONG)
async def flaky(job: Job) -> None:
    """Asks for two more attempts, each :data:`RETRY_DELAY` seconds later, then succeeds."""
    ran.record(job)
    if job.attempt < 3:
        raise Retry(f"attempt {job.attempt} is not the last", delay=RETRY_DELAY)
