"""Dead-letter queues on the broker: look without disturbing, replay, purge (``warden dlq``).

Looking reads every message without acking it and closes the channel, so the broker returns
them all, in order, to the front of the queue: the same messages in the same order for the
next reader. (The broker counts the look as a delivery: ``redelivered`` and, on a quorum queue,
``x-delivery-count`` change; the tools ignore both and a replay drops them.)

A replay moves one message at a time inside an AMQP transaction: the republish to the work
queue and the ack of the dead letter commit together or not at all, so a replay stopped at any
point loses nothing and moves nothing twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
)

from . import names
from .broker import copy_message
from .errors import WardenError
from .letters import Letter, replay_headers

log = logging.getLogger("warden.dlq")

Select = Callable[[Letter], bool]


class QueueMissing(WardenError):
    """A queue the command needs does not exist."""


def _letter(message: AbstractIncomingMessage) -> Letter:
    return Letter.read(message.body, message.headers, message.message_id)


@asynccontextmanager
async def _connection(url: str) -> AsyncIterator[AbstractConnection]:
    connection = await aio_pika.connect(url, client_properties={"connection_name": "warden dlq"})
    async with connection:
        yield connection


async def _existing(connection: AbstractConnection, queue: str) -> None:
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise QueueMissing(f"queue {queue!r} does not exist") from None
    await channel.close()


async def _look(
    channel: AbstractChannel, queue: str, limit: int | None = None
) -> list[AbstractIncomingMessage]:
    """Messages from the front of ``queue``, unacked: closing ``channel`` returns them."""
    source = await channel.get_queue(queue, ensure=False)
    found: list[AbstractIncomingMessage] = []
    while limit is None or len(found) < limit:
        message = await source.get(no_ack=False, fail=False)
        if message is None:
            break
        found.append(message)
    return found


async def letters(
    url: str, queue: str, select: Select | None = None, limit: int | None = None
) -> list[Letter]:
    """The dead letters of ``queue``'s dead-letter queue that ``select`` keeps, oldest first;
    the queue is left as it was."""
    dlq = names.dead_letter_queue(queue)
    async with _connection(url) as connection:
        await _existing(connection, dlq)
        channel = await connection.channel()
        try:
            found = [_letter(m) for m in await _look(channel, dlq)]
        finally:
            await channel.close()
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
    dlq = names.dead_letter_queue(queue)
    report = Moved()
    async with _connection(url) as connection:
        await _existing(connection, dlq)
        checked: set[str] = set()
        channel = await connection.channel(publisher_confirms=False)
        returned: list[aio_pika.abc.AbstractIncomingMessage] = []
        channel.return_callbacks.add(lambda _, message: returned.append(message))
        transaction = channel.transaction()
        await transaction.select()
        try:
            for message in await _look(channel, dlq):
                letter = _letter(message)
                target = letter.origin
                if not select(letter) or target is None:
                    report.skipped += 1
                    continue
                if target not in checked:
                    await _existing(connection, target)
                    checked.add(target)
                await channel.default_exchange.publish(
                    copy_message(message, replay_headers(message.headers or {}, token)),
                    target,
                    mandatory=True,
                )
                await message.ack()
                await transaction.commit()
                report.moved.append(letter.message_id)
                if on_moved is not None:
                    on_moved(letter)
        finally:
            await channel.close()
        if returned:
            report.returned = await _put_back(connection, dlq, returned)
    return report


async def _put_back(
    connection: AbstractConnection, dlq: str, returned: list[AbstractIncomingMessage]
) -> list[str | None]:
    """A replayed job came back unroutable (its queue vanished mid-replay): keep it a dead
    letter rather than lose it."""
    channel = await connection.channel(publisher_confirms=True)
    for message in returned:
        log.error(
            "replayed job was unroutable; kept as a dead letter",
            extra={"message_id": message.message_id},
        )
        await channel.default_exchange.publish(
            copy_message(message, dict(message.headers or {})), dlq
        )
    await channel.close()
    return [m.message_id for m in returned]


async def purge(url: str, queue: str, select: Select) -> Moved:
    """Remove the selected dead letters; leave the others where they were."""
    dlq = names.dead_letter_queue(queue)
    report = Moved()
    async with _connection(url) as connection:
        await _existing(connection, dlq)
        channel = await connection.channel()
        try:
            for message in await _look(channel, dlq):
                letter = _letter(message)
                if select(letter):
                    await message.ack()
                    report.moved.append(letter.message_id)
                else:
                    report.skipped += 1
        finally:
            await channel.close()
    return report
