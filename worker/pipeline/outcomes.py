"""What becomes of a message once it is decided (and, if allowed, run).

The consumer maps each outcome to an acknowledgement in exactly one place
(:meth:`worker.service.consumer.Consumer.settle`); nothing else acks, nacks or dead-letters.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.pipeline.decision import Denied


@dataclass(frozen=True, slots=True)
class Done:
    """The action ran: ack."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Denied: publish the dead letter, and ack once the broker confirmed it."""

    denied: Denied


@dataclass(frozen=True, slots=True)
class Defer:
    """No verdict yet (or the dead letter failed): put the message back after a delay."""

    why: str


@dataclass(frozen=True, slots=True)
class Again:
    """The action asked for another attempt: put the message back with its attempt raised."""

    why: str
    delay: float | None = None


Outcome = Done | DeadLetter | Defer | Again
