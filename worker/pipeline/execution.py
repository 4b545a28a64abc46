"""Running an allowed job's action, and turning how it ended into an outcome."""

from __future__ import annotations

import logging

from worker import errors
from worker.pipeline.decision import Allowed, Denied
from worker.pipeline.outcomes import Again, DeadLetter, Done, Outcome

log = logging.getLogger("warden.actions")


def _said(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def run_action(allowed: Allowed, max_attempts: int) -> Outcome:
    """Run the action once; ``Reject`` is final, ``Retry`` and other errors try again, up to
    ``max_attempts`` in all. Cancellation propagates."""
    job = allowed.job
    try:
        await allowed.spec.handler(job)
    except errors.Reject as exc:
        return DeadLetter(Denied(errors.ActionRejected(_said(exc)), job.action, allowed.token))
    except Exception as exc:
        delay = exc.delay if isinstance(exc, errors.Retry) else None
        if not isinstance(exc, errors.Retry):
            log.error(
                "action raised",
                exc_info=exc,
                extra={"message_id": job.id, "action": job.action, "attempt": job.attempt},
            )
        if job.attempt >= max_attempts:
            detail = f"attempt {job.attempt} of {max_attempts} failed: {_said(exc)}"
            return DeadLetter(Denied(errors.ActionFailed(detail), job.action, allowed.token))
        return Again(_said(exc), delay)
    return Done()
