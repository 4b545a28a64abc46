"""Demo actions: what ``WARDEN_ACTIONS=worker.examples`` registers.

They only log what they were asked to do, so a first ``warden run`` has something to run.
"""

from __future__ import annotations

import logging

from worker import Job, Reject, action

log = logging.getLogger("warden.examples")


@action("reports.generate", scopes={"reports:write"})
async def generate_report(job: Job) -> None:
    """Pretend to generate the report named in the payload."""
    if not isinstance(job.payload.get("report", ""), str):
        raise Reject("payload.report must be a string")
    log.info(
        "report generated",
        extra={
            "message_id": job.id,
            "report": job.payload.get("report"),
            "sub": job.principal.sub,
            "client_id": job.principal.client_id,
        },
    )


@action("reports.read", scopes={"reports:read"})
async def read_report(job: Job) -> None:
    """Pretend to read a report."""
    log.info("report read", extra={"message_id": job.id, "sub": job.principal.sub})
