"""An action that names its actors without their issuer: for workers that trust one issuer.

Where several issuers are trusted, such an action stops start-up (``actors`` must then name
the issuer of each actor), so it is kept out of :mod:`tests.support.actions`.
"""

from __future__ import annotations

from tests.support.actions import ran
from worker import Job, action


@action("reports.delegated", scopes={"reports:write"}, actors={"agent-x"})
async def delegated(job: Job) -> None:
    """Runs for the subject itself, or with ``agent-x`` of the one trusted issuer acting."""
    ran.record(job)
