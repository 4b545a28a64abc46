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
from worker.deadletters.read import Letter, arrival_ms, replay_headers
from worker.deadletters.seal import Seal
from worker.settings import DEFAULT_HEARTBEAT_SECONDS

Select = Callable[[Letter], bool]


@dataclass(frozen=True)
class Reader:
    """Who a tool is and whom it believes: its broker URL, the user it connects as (written on
    what it publishes), and the users whose letters are warden's (``WARDEN_TRUSTED_USERS``)."""

    url: str
    user: str
    trusted: frozenset[str]
    heartbeat: int = DEFAULT_HEARTBEAT_SECONDS


def _letter(message: Held, queue: str, reader: Reader) -> Letter:
    return Letter.read(
        message.body,
        message.headers,
        message.message_id,
        queue=queue,
        user_id=message.user_id,
        trusted=reader.trusted,
    )


def once(found: list[Letter]) -> list[Letter]:
    """Each dead letter once: a repeat of an earlier one (the same :attr:`Letter.identity`) is
    left out, and the first counts its copies."""
    first: dict[tuple[str, str, bytes], int] = {}
    out: list[Letter] = []
    for letter in found:
        key = letter.identity
        if key is None or key not in first:
            if key is not None:
                first[key] = len(out)
            out.append(letter)
        else:
            place = first[key]
            out[place] = out[place].repeated()
    return out


async def letters(
    reader: Reader, queue: str, select: Select | None = None, limit: int | None = None
) -> list[Letter]:
    """The dead letters of ``queue``'s dead-letter queue that ``select`` keeps, oldest first,
    each once however many copies of it the queue holds; the queue is left as it was."""
    async with (
        connected(reader.url, "warden dlq", reader.user, reader.heartbeat) as queues,
        queues.look(names.dead_letter_queue(queue)) as looking,
    ):
        found = once([_letter(m, queue, reader) for m in looking.held])
    chosen = [letter for letter in found if select is None or select(letter)]
    return chosen if limit is None else chosen[:limit]


async def stats(reader: Reader, queues: list[str]) -> dict[str, Counter[str]]:
    """Dead letters by reason, per work queue, each once however many copies of it there are;
    letters no trusted user wrote are counted as ``untrusted``, never under a reason."""
    out: dict[str, Counter[str]] = {}
    for queue in queues:
        out[queue] = Counter(letter.counted_as for letter in await letters(reader, queue))
    return out


@dataclass
class Moved:
    """What a replay or a purge did."""

    moved: list[str | None] = field(default_factory=list)
    skipped: int = 0
    repeats: int = 0
    """Copies of a replayed letter removed with it (not sent: the job goes back once)."""
    returned: list[str | None] = field(default_factory=list)
    """Replayed jobs the broker could not route; they were put back as dead letters."""
    unsealed: list[str | None] = field(default_factory=list)
    """Selected letters left where they were: replayed without a token, they carry none that
    the seal key opens."""


async def replay(
    reader: Reader,
    queue: str,
    select: Select,
    token: str | None,
    *,
    seal: Seal | None = None,
    on_moved: Callable[[Letter], None] | None = None,
) -> Moved:
    """Send the selected dead letters back to ``queue`` through ``warden.jobs``. Only warden's
    own letters move, and only to the work queue whose dead-letter queue holds them, whatever a
    letter says of itself.

    Without ``token``, each job goes back with its own token, opened with ``seal`` (a letter
    of a job refused only for time carries it sealed), and its first arrival: it runs as its
    publisher if the queueing allowance covers it now. A letter without such a token stays. With
    ``token``, every job goes back with it, arrives anew, and says who replayed it.

    A letter's repeats (the same job denied again for the same reason) are removed with it: the
    job goes back once.
    """
    report = Moved()
    replayed: set[tuple[str, str, bytes]] = set()
    async with connected(reader.url, "warden dlq", reader.user, reader.heartbeat) as queues:
        await queues.require(queue)
        async with queues.moving(names.dead_letter_queue(queue)) as moving:
            for message in moving.held:
                letter = _letter(message, queue, reader)
                if not letter.trusted or not select(letter):
                    report.skipped += 1
                    continue
                if letter.identity in replayed:
                    await moving.drop(message)
                    report.repeats += 1
                    continue
                if token is not None:
                    headers = replay_headers(message.headers, token, replayed_by=reader.user)
                else:
                    sealed = message.headers.get(names.HEADER_SEALED_TOKEN)
                    own = seal.open(sealed, message.message_id or "") if seal else None
                    if own is None:
                        report.unsealed.append(letter.message_id)
                        continue
                    headers = replay_headers(
                        message.headers, own, received_at=arrival_ms(letter.received_at)
                    )
                if letter.identity is not None:
                    replayed.add(letter.identity)
                back = names.dead_letter_routing_key(letter.reason or "unknown", queue)
                await moving.move(
                    message,
                    (names.JOBS_EXCHANGE, queue),
                    headers,
                    back=(names.DEAD_LETTER_EXCHANGE, back),
                )
                report.moved.append(letter.message_id)
                if on_moved is not None:
                    on_moved(letter)
        report.returned = moving.returned
    return report


async def purge(reader: Reader, queue: str, select: Select) -> Moved:
    """Remove the selected dead letters; leave the others where they were."""
    report = Moved()
    async with (
        connected(reader.url, "warden dlq", reader.user, reader.heartbeat) as queues,
        queues.look(names.dead_letter_queue(queue)) as looking,
    ):
        for message in looking.held:
            letter = _letter(message, queue, reader)
            if select(letter):
                await looking.drop(message)
                report.moved.append(letter.message_id)
            else:
                report.skipped += 1
    return report
