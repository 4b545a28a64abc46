"""An action that asks the issuer about the token on every run (``introspect=True``)."""

from __future__ import annotations

from tests.support.actions import ran
from worker import Job, action


@action("payments.send", scopes={"payments:write"}, introspect=True)
async def send(job: Job) -> None:
    ran.record(job)
