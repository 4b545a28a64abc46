"""Running an allowed job's action, and turning how it ended into an outcome.

A coroutine action is awaited on the event loop; a blocking one runs in a thread of the pool, so
that neither the loop nor the connection's heartbeat waits for it.
"""

from __future__ import annotations

import logging

from worker import errors
from worker.pipeline.decision import Allowed, Denied
from worker.pipeline.outcomes import Again, DeadLetter, Done, Outcome
from worker.support.threads import Threads

ActionThreads = Threads[tuple[str, str]]
"""The pool blocking actions run in; each call is labelled (action, message id)."""

log = logging.getLogger("warden.actions")


def _said(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def run_action(allowed: Allowed, max_attempts: int, threads: ActionThreads) -> Outcome:
    """Run the action once; ``Reject`` is final, ``Retry`` and other errors try again, up to
    ``max_attempts`` in all. Cancellation propagates (a blocking action's thread runs on, and
    its result is dropped)."""
    job, spec = allowed.job, allowed.spec
    call = spec.call(job, allowed.payload)
    try:
        if spec.blocking:
            await threads.run(call, (job.action, job.id))
        else:
            await call()
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
