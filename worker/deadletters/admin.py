"""Operations on dead-letter queues (``warden dlq``): list and count without disturbing the
queue, replay to the queue a letter came from, purge.

The queue handling itself (a look that leaves the queue as it was, a move inside a transaction)
is the edge's, :mod:`worker.amqp.queues`; what is read of a letter is
:mod:`worker.deadletters.read`.
A look counts as a delivery for the broker (``redelivered`` and ``x-delivery-count`` change); the
tools ignore both and a replay drops them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from worker import names
from worker.amqp.queues import Held, connected
from worker.deadletters.read import Letter, replay_headers

Select = Callable[[Letter], bool]


def _letter(message: Held) -> Letter:
    return Letter.read(message.body, message.headers, message.message_id)


async def letters(
    url: str, queue: str, select: Select | None = None, limit: int | None = None
) -> list[Letter]:
    """The dead letters of ``queue``'s dead-letter queue that ``select`` keeps, oldest first;
    the queue is left as it was."""
    async with (
        connected(url, "warden dlq") as queues,
        queues.look(names.dead_letter_queue(queue)) as looking,
    ):
        found = [_letter(m) for m in looking.held]
    chosen = [letter for letter in found if select is None or select(letter)]
    return chosen if limit is None else chosen[:limit]


async def stats(url: str, queues: list[str]) -> dict[str, Counter[str]]:
    """Dead letters by reason, per work queue."""
    out: dict[str, Counter[str]] = {}
    for queue in queues:
        out[queue] = Counter(letter.reason or "unknown" for letter in await letters(url, queue))
    return out


@dataclass
class Moved:
    """What a replay or a purge did."""

    moved: list[str | None] = field(default_factory=list)
    skipped: int = 0
    returned: list[str | None] = field(default_factory=list)
    """Replayed jobs the broker could not route; they were put back as dead letters."""


async def replay(
    url: str,
    queue: str,
    select: Select,
    token: str,
    *,
    on_moved: Callable[[Letter], None] | None = None,
) -> Moved:
    """Send the selected dead letters back to the queue they came from with ``token``."""
    report = Moved()
    async with connected(url, "warden dlq") as queues:
        async with queues.moving(names.dead_letter_queue(queue)) as moving:
            for message in moving.held:
                letter = _letter(message)
                target = letter.origin
                if not select(letter) or target is None:
                    report.skipped += 1
                    continue
                await moving.move(message, target, replay_headers(message.headers, token))
                report.moved.append(letter.message_id)
                if on_moved is not None:
                    on_moved(letter)
        report.returned = moving.returned
    return report


async def purge(url: str, queue: str, select: Select) -> Moved:
    """Remove the selected dead letters; leave the others where they were."""
    report = Moved()
    async with (
        connected(url, "warden dlq") as queues,
        queues.look(names.dead_letter_queue(queue)) as looking,
    ):
        for message in looking.held:
            letter = _letter(message)
            if select(letter):
                await looking.drop(message)
                report.moved.append(letter.message_id)
            else:
                report.skipped += 1
    return report
