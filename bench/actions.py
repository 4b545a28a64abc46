"""The benchmark's actions: nothing but the cost of being called."""

from __future__ import annotations

from worker import Job, action


@action("bench.noop", scopes={"bench:run"})
async def noop(job: Job) -> None:
    """Does nothing."""


@action("bench.admin", scopes={"bench:admin"})
async def admin(job: Job) -> None:
    """Never runs in the benchmark: its tokens lack the scope (the denied path)."""
