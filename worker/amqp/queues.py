"""Queues as the operator's tools handle them: look at every message without disturbing the
queue, drop some, move some to another queue in a transaction.

Looking takes every message without acking it and closes the channel afterwards, so the broker
returns the ones not dropped or moved, in order, to the front of the queue: the same messages
in the same order for the next reader. (The broker counts the look as a delivery:
``redelivered`` and, on a quorum queue, ``x-delivery-count`` change.)

A move happens one message at a time inside an AMQP transaction: the republish and the ack of
the original commit together or not at all, so a move stopped at any point loses nothing and
moves nothing twice.

Messages are taken at the transport's level (aiormq's ``basic_get``), as a worker's consumer
takes them (:class:`~worker.amqp.inbound.Inbound`), so that a move sends the copy a worker would
(:func:`~worker.amqp.outbound.copy_properties`): written by the tool's user, without the headers
it cannot encode again, which are left out and logged rather than ending the move.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from worker.amqp.connection import open_connection
from worker.amqp.inbound import Inbound
from worker.amqp.outbound import (
    Send,
    copy_properties,
    send_confirmed,
    send_copy,
    send_in_transaction,
    send_salvaged,
)
from worker.errors import AccessRefused, QueueMissing, TableNotEncodable
from worker.settings import DEFAULT_HEARTBEAT_SECONDS

log = logging.getLogger("warden.dlq")


@dataclass(frozen=True, slots=True)
class Held:
    """A message taken from a queue and not acked: it goes back unless dropped or moved."""

    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    user_id: str | None
    """Who wrote it, as the broker checked it."""
    message: Inbound = field(repr=False)


def _held(message: Inbound) -> Held:
    properties = message.properties
    return Held(
        message.body, properties.headers or {}, message.message_id, properties.user_id, message
    )


class Queues:
    """One connection of a tool, and what it does to queues; what it publishes carries
    ``user_id``, the user it connects as."""

    def __init__(self, connection: AbstractConnection, user: str) -> None:
        self._connection = connection
        self.user = user
        self._known: set[str] = set()

    async def require(self, queue: str) -> None:
        """Raise :class:`~worker.errors.QueueMissing` unless ``queue`` exists."""
        if queue in self._known:
            return
        channel = await self._connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise QueueMissing(f"queue {queue!r} does not exist") from None
        await channel.close()
        self._known.add(queue)

    @asynccontextmanager
    async def look(self, queue: str) -> AsyncIterator[Looking]:
        """Every message of ``queue``, held until the block ends."""
        await self.require(queue)
        channel = await self._connection.channel()
        try:
            yield Looking(await _take_all(channel, queue))
        finally:
            await channel.close()

    @asynccontextmanager
    async def moving(self, queue: str) -> AsyncIterator[Moving]:
        """Every message of ``queue``, held, to move elsewhere one by one in a transaction.
        A move the broker returns as unroutable is undone afterwards: the original is written
        again where :meth:`Moving.move` was told it belongs."""
        await self.require(queue)
        channel = await self._connection.channel(publisher_confirms=False)
        returned: list[AbstractIncomingMessage] = []
        channel.return_callbacks.add(lambda _, message: returned.append(message))
        transaction = channel.transaction()
        await transaction.select()
        moving = Moving(await _take_all(channel, queue), channel, transaction, self.user)
        try:
            yield moving
        finally:
            await channel.close()
        if returned:
            moving.returned = await self._put_back(moving, returned)

    async def _put_back(
        self, moving: Moving, returned: list[AbstractIncomingMessage]
    ) -> list[str | None]:
        """A moved message came back unroutable (its target vanished meanwhile): write the
        original again rather than lose it (never the copy, which holds what the move added)."""
        channel = await self._connection.channel(publisher_confirms=True)
        for message in returned:
            original, (exchange, routing_key) = moving.sent[message.message_id]
            log.error(
                "moved message was unroutable; its original is kept",
                extra={"message_id": message.message_id, "exchange": exchange},
            )
            await _send(channel, original, dict(original.headers), exchange, routing_key, self.user)
        await channel.close()
        return [m.message_id for m in returned]


@dataclass
class Looking:
    """Messages held by a look."""

    held: list[Held]

    async def drop(self, message: Held) -> None:
        """Remove ``message`` from its queue for good."""
        await message.message.ack()


@dataclass
class Moving:
    """Messages held for a move."""

    held: list[Held]
    _channel: AbstractChannel
    _transaction: aio_pika.abc.AbstractTransaction
    _user: str
    sent: dict[str | None, tuple[Held, tuple[str, str]]] = field(default_factory=dict)
    """Each moved message by id, with where its original belongs should the move come back."""
    returned: list[str | None] = field(default_factory=list)
    """Message ids the broker could not route to their target; their originals were kept."""

    async def move(
        self,
        message: Held,
        to: tuple[str, str],
        headers: dict[str, Any],
        *,
        back: tuple[str, str],
    ) -> None:
        """Publish ``message`` with ``headers`` to ``to`` (exchange, routing key) and remove the
        original, both or neither; ``back`` is where the original is written again if the
        broker cannot route the move."""
        await _send(self._channel, message, headers, *to, self._user, send_in_transaction)
        await message.message.ack()
        await self._transaction.commit()
        self.sent[message.message_id] = (message, back)

    async def drop(self, message: Held) -> None:
        """Remove ``message`` from its queue for good, in a transaction of its own."""
        await message.message.ack()
        await self._transaction.commit()


async def _send(
    channel: AbstractChannel,
    message: Held,
    headers: dict[str, Any],
    exchange: str,
    routing_key: str,
    user: str,
    send: Send = send_confirmed,
) -> None:
    """A copy of ``message`` with ``headers`` to ``exchange``, or with those it can carry."""
    original = message.message
    copy = copy_properties(original, headers, user_id=user)
    try:
        await send_copy(channel, original.body, copy, exchange, routing_key, send=send)
    except TableNotEncodable:
        lost = await send_salvaged(
            channel,
            original.body,
            original,
            headers,
            exchange,
            routing_key,
            user_id=user,
            send=send,
        )
        log.warning(
            "headers that cannot be encoded again were left out of a copy",
            extra={"message_id": message.message_id, "exchange": exchange, "dropped": lost[:16]},
        )


async def _take_all(channel: AbstractChannel, queue: str) -> list[Held]:
    transport = await channel.get_underlay_channel()
    found: list[Held] = []
    while True:
        got = await transport.basic_get(queue, no_ack=False)
        if not isinstance(got.delivery, aiormq.spec.Basic.GetOk):
            return found
        found.append(_held(Inbound(got)))


@asynccontextmanager
async def connected(
    url: str, name: str, user: str, heartbeat: int = DEFAULT_HEARTBEAT_SECONDS
) -> AsyncIterator[Queues]:
    """A tool's connection called ``name`` as ``user`` (to the first address of ``url`` that
    answers), closed afterwards. What the user's permissions refuse is
    :class:`~worker.errors.AccessRefused`, naming the user."""
    connection = await open_connection(url, name, heartbeat=heartbeat)
    async with connection:
        try:
            yield Queues(connection, user)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise AccessRefused(
                f"broker user {user!r} may not do this ({exc}); "
                "`warden permissions` prints what each role needs"
            ) from None


@asynccontextmanager
async def _channel(url: str) -> AsyncIterator[AbstractChannel]:
    connection = await open_connection(url, "warden queues")
    async with connection:
        yield await connection.channel()


async def consumers(url: str, queue: str) -> int | None:
    """How many consumers ``queue`` has, or None when it does not exist."""
    async with _channel(url) as channel:
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return declared.declaration_result.consumer_count


async def delete_queues(url: str, queues: Iterable[str]) -> None:
    """Delete ``queues`` and every message in them; a queue that does not exist is no error."""
    async with _channel(url) as channel:
        for queue in queues:
            await channel.queue_delete(queue)
