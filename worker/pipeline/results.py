"""What became of a job, in the terms a test or a demo reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worker.pipeline.outcomes import Again, DeadLetter, Defer, Done, Outcome


@dataclass(frozen=True)
class JobResult:
    """What became of a job: ``done`` (the action ran and returned), ``denied`` (dead-lettered
    with ``reason``: a check failed, or the action rejected the job or kept failing),
    ``retry`` (the action asked to be tried again) or ``deferred`` (no verdict yet: keys or
    revocations unavailable)."""

    message_id: str
    outcome: Literal["done", "denied", "retry", "deferred"]
    reason: str | None = None
    detail: str | None = None

    @property
    def done(self) -> bool:
        """The action ran to its end."""
        return self.outcome == "done"

    @property
    def denied(self) -> bool:
        """The job was dead-lettered."""
        return self.outcome == "denied"

    @classmethod
    def of(cls, message_id: str, outcome: Outcome) -> JobResult:
        """The result of ``outcome``."""
        match outcome:
            case Done():
                return cls(message_id, "done")
            case DeadLetter(denied):
                return cls(message_id, "denied", denied.denial.reason, denied.denial.detail)
            case Again(why):
                return cls(message_id, "retry", None, why)
            case Defer(why):
                return cls(message_id, "deferred", None, why)
        raise AssertionError(f"unknown outcome {outcome!r}")
