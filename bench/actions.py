"""The benchmark's actions: nothing but the cost of being called, or of blocking."""

from __future__ import annotations

import time

from worker import Job, action

SLEEP_SECONDS = 3.0


@action("bench.noop", scopes={"bench:run"})
async def noop(job: Job) -> None:
    """Does nothing."""


@action("bench.admin", scopes={"bench:admin"})
async def admin(job: Job) -> None:
    """Never runs in the benchmark: its tokens lack the scope (the denied path)."""


@action("bench.sleep", scopes={"bench:run"})
def sleep(job: Job) -> None:
    """Blocking code: holds its thread for SLEEP_SECONDS while the other jobs flow (b-blocked)."""
    time.sleep(SLEEP_SECONDS)
