"""What leaves a worker for the broker: acks, and copies of deliveries published with confirms.

Acks are coalesced: acks given within a short linger leave as few ``basic.ack`` frames as can
be. Delivery tags on a channel only grow. Once every delivery up to tag T is settled, one
``basic.ack(T, multiple=True)`` settles them all; an ack above a delivery still being handled
goes out on its own, so a slow action never holds back the acks (and the prefetch credit) of
the quick ones after it. A quorum queue turns every ack frame into a log entry, so fewer frames
are less work for the broker as well as for the worker. The acks that go out on their own
leave together, from one task that waits for the socket once (aiormq's ``basic_ack(wait=False)``
for all but the last): while a blocking action sleeps, every ack after its delivery is such an
ack, and ``bench/`` scenario b-blocked went from 0.71 to 0.85 of (b) with them written so.
Acks wait at most ``linger`` seconds, and no longer than it takes ``batch`` of them to gather
(a quarter of the prefetch, so waiting acks never hold back much of the prefetch credit). The
price is a wider window in which a worker that dies has run jobs the broker will deliver again;
delivery is at least once in any case.

Copies (dead letters, retry and wait copies) are published below aio-pika's public API: with
aiormq's ``basic_publish(wait=False)``, which does not wait for the socket write under the
channel lock (with the transport-level consumer of :mod:`worker.amqp.inbound`, ``bench/``
scenario (d) went from 0.21 to 0.32 of the bare aio-pika loop), and with header table entries
encoded beforehand through a ``Basic.Properties`` subclass (:class:`DenialHeaders
<worker.deadletters.write.DenialHeaders>`; (d) from 0.37 to 0.45).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Coroutine, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, DeliveryMode
from pamqp import encode

from worker.amqp.connection import TRANSPORT_ERRORS, describe
from worker.amqp.inbound import Inbound
from worker.errors import PublishFailed, TableNotEncodable

log = logging.getLogger("warden.consumer")

TABLE_LENGTH = struct.Struct(">I")
_ENCODING_ERRORS = (TypeError, ValueError, OverflowError)


# --- acks --------------------------------------------------------------------------------------


class Acker:
    """Tracks the unsettled deliveries of one consumer channel and sends their acks.

    :meth:`ack` returns at once; the frame leaves within the linger, or at the end of the loop
    iteration once a batch has gathered. Before its connection closes, a worker waits for
    :meth:`flushed`.
    """

    def __init__(self, *, linger: float = 0.0, batch: int = 1) -> None:
        self._linger = linger
        self._batch = batch
        self._waiting = 0
        """Acks given since the last send."""
        self._channel: Any = None
        self._open: dict[int, Inbound | None] = {}
        """Unsettled tags in delivery order; the message once acked and waiting for the flush."""
        self._flush: asyncio.Handle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def delivered(self, message: Inbound) -> None:
        """A delivery is being handled (called before anything can settle it)."""
        if message.channel is not self._channel:
            # A new channel (after a reconnect): its tags start again; the old ones are void.
            self._open.clear()
            self._channel = message.channel
        self._open[message.delivery_tag] = None

    def unsettled(self, message: Inbound) -> bool:
        """Whether nothing has acked or nacked this delivery yet."""
        return (
            message.channel is self._channel
            and message.delivery_tag in self._open
            and self._open[message.delivery_tag] is None
        )

    def abandon(self, message: Inbound) -> None:
        """Handling ended without settling (cancelled): stop tracking a delivery never acked,
        so it cannot hold back the acks after it; the broker delivers it again."""
        if self.unsettled(message):
            self.settled_otherwise(message)

    def settled_otherwise(self, message: Inbound) -> None:
        """The delivery was settled without an ack (a nack): stop tracking it."""
        if message.channel is self._channel:
            self._open.pop(message.delivery_tag, None)

    def ack(self, message: Inbound) -> None:
        """Ack ``message`` with the others given within the linger."""
        tag = message.delivery_tag
        if message.channel is not self._channel or tag not in self._open:
            self._start(ack(message))
            return
        self._open[tag] = message
        self._waiting += 1
        loop = asyncio.get_running_loop()
        if self._waiting >= self._batch or not self._linger:
            if isinstance(self._flush, asyncio.TimerHandle):  # lingering: send sooner
                self._flush.cancel()
                self._flush = None
            if self._flush is None:
                self._flush = loop.call_soon(self._send)
        elif self._flush is None:
            self._flush = loop.call_later(self._linger, self._send)

    async def flushed(self) -> None:
        """Wait until every ack given so far has been written (or has failed and been logged)."""
        if self._flush is not None:
            self._flush.cancel()
            self._send()
        while self._sending:
            await asyncio.wait(set(self._sending))

    def _send(self) -> None:
        self._flush = None
        self._waiting = 0
        prefix: list[int] = []
        beyond: list[Inbound] = []
        blocked = False  # past the first delivery still being handled
        for tag, acked in self._open.items():
            if acked is None:
                blocked = True
            elif blocked:
                beyond.append(acked)
            else:
                prefix.append(tag)
        if prefix:
            tail = self._open[prefix[-1]]
            assert tail is not None
            for tag in prefix:
                del self._open[tag]
            self._start(ack(tail, multiple=len(prefix) > 1))
        for message in beyond:
            del self._open[message.delivery_tag]
        if beyond:
            self._start(ack_each(beyond))

    def _start(self, sending: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(sending)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


async def ack(message: Inbound, *, multiple: bool = False) -> None:
    """Ack; if the channel died, say so: the broker delivers the message again, and the worker
    goes on."""
    await _settle(message, "ack", message.ack(multiple=multiple))


async def ack_each(messages: list[Inbound]) -> None:
    """Ack each of ``messages`` on its own, in one task, waiting for the socket once."""
    for message in messages[:-1]:
        await _settle(message, "ack", message.ack(wait=False))
    await ack(messages[-1])


async def requeue(message: Inbound) -> None:
    """Return the message to its queue (this counts against the delivery limit)."""
    await _settle(message, "nack", message.nack(requeue=True))


async def _settle(message: Inbound, what: str, settling: Coroutine[Any, Any, None]) -> None:
    try:
        await settling
    except TRANSPORT_ERRORS as exc:
        log.warning(
            f"{what} failed; the broker will deliver the message again",
            extra={"message_id": message.message_id, "error": describe(exc)},
        )


# --- header tables encoded beforehand -----------------------------------------------------------


TABLE = b"F"
"""The type tag of a field-table value; its length (:data:`TABLE_LENGTH`) and entries follow."""


def table_key(name: str) -> bytes:
    """The name of a field-table entry, encoded."""
    return encode.short_string(name)


def table_value(value: Any) -> bytes:
    """The value of a field-table entry, encoded as pamqp (and so aiormq) encodes it."""
    try:
        return encode.encode_table_value(value)
    except _ENCODING_ERRORS as exc:
        raise TableNotEncodable(type(exc).__name__) from None


def table_entry(name: str, value: Any) -> bytes:
    """One entry of a field table: its name and its value."""
    return table_key(name) + table_value(value)


def table_entries(values: Mapping[str, Any]) -> bytes:
    """The entries of a field table, without the table's length."""
    try:
        return encode.field_table(dict(values))[4:]
    except _ENCODING_ERRORS as exc:
        raise TableNotEncodable(type(exc).__name__) from None


# --- copies, published with confirms -----------------------------------------------------------


COPIED_PROPERTIES = (
    "message_id",
    "correlation_id",
    "content_type",
    "content_encoding",
    "timestamp",
    "type",
    "app_id",
    "priority",
    "expiration",
    "reply_to",
    "user_id",
)
"""Properties a dead letter or a deferred copy keeps from the original."""


class _Properties(aiormq.spec.Basic.Properties):
    """Basic properties whose headers table goes on the wire with ``more`` after its entries:
    table entries encoded beforehand (see :class:`~worker.deadletters.write.DenialHeaders`)."""

    def __init__(self, *, more: bytes, **properties: Any) -> None:
        super().__init__(**properties)
        self.more = more

    def encode_property(self, name: str, value: Any) -> bytes:
        if name != "headers":
            return super().encode_property(name, value)
        entries = encode.field_table(value)[4:] + self.more
        return TABLE_LENGTH.pack(len(entries)) + entries


def copy_properties(
    message: Inbound,
    headers: dict[str, Any],
    *,
    user_id: str,
    expiration_ms: int | None = None,
    more_headers: bytes = b"",
) -> aiormq.spec.Basic.Properties:
    """The properties of a persistent copy of ``message``: the same, with the given headers
    (and, for a message parked in a retry queue, its own expiration), written by ``user_id``:
    the user warden connects as, which the broker checks, and which tells warden's own letters
    and copies from anyone else's. ``more_headers`` are encoded table entries that follow
    ``headers`` on the wire; they must not repeat a name in ``headers``."""
    original = message.properties
    make = partial(_Properties, more=more_headers) if more_headers else aiormq.spec.Basic.Properties
    return make(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=DeliveryMode.PERSISTENT.value,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        expiration=None if expiration_ms is None else str(expiration_ms),
        message_id=original.message_id,
        timestamp=original.timestamp or datetime.now(UTC),
        message_type=original.message_type,
        user_id=user_id,
        app_id=original.app_id,
    )


def copy_message(
    message: AbstractIncomingMessage,
    headers: dict[str, Any],
    *,
    user_id: str,
    expiration_ms: int | None = None,
) -> aio_pika.Message:
    """A persistent copy of ``message``: same body, same properties, the given headers (and,
    for a message parked in a retry queue, its own expiration), written by ``user_id``."""
    properties = {name: getattr(message, name) for name in COPIED_PROPERTIES}
    properties["user_id"] = user_id
    properties["expiration"] = None if expiration_ms is None else expiration_ms / 1000
    if properties["timestamp"] is None:
        properties["timestamp"] = datetime.now(UTC)
    return aio_pika.Message(
        message.body, headers=headers, delivery_mode=DeliveryMode.PERSISTENT, **properties
    )


async def publish_confirmed(
    exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
) -> None:
    """Publish with ``mandatory``; return once the broker confirmed, else raise
    :class:`~worker.errors.PublishFailed` naming why."""
    await _confirmed(
        exchange.name or "default exchange",
        exchange.publish(message, routing_key, mandatory=True),
    )


async def send_confirmed(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    properties: aiormq.spec.Basic.Properties,
    exchange: str,
    routing_key: str,
) -> None:
    """:func:`publish_confirmed` at the transport's level, for copies of deliveries. The frames
    are queued without waiting for the socket, so many copies can wait for confirms at once."""
    # aiormq's own channel takes ``wait``; its abstract interface does not name it.
    transport = cast(aiormq.Channel, channel)
    await _confirmed(
        exchange or "default exchange",
        transport.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
            wait=False,
        ),
    )


async def send_copy(
    channel: AbstractChannel,
    body: bytes,
    properties: aiormq.spec.Basic.Properties,
    exchange: str,
    routing_key: str,
) -> None:
    """:func:`send_confirmed` on the transport channel under an aio-pika ``channel``; a channel
    that is gone is a :class:`~worker.errors.PublishFailed` like any other unconfirmed publish."""
    try:
        transport = await channel.get_underlay_channel()
    except TRANSPORT_ERRORS as exc:
        raise PublishFailed(f"{exchange or 'default exchange'}: {describe(exc)}") from None
    await send_confirmed(transport, body, properties, exchange, routing_key)


async def _confirmed(where: str, publishing: Awaitable[Any]) -> None:
    try:
        confirmation = await publishing
    except aiormq.exceptions.DeliveryError as exc:
        frame = exc.frame
        returned = frame is None or isinstance(frame, aiormq.spec.Basic.Return)
        why = "returned as unroutable" if returned else type(frame).__name__
        raise PublishFailed(f"{where}: {why}") from None
    except TRANSPORT_ERRORS as exc:
        raise PublishFailed(f"{where}: {describe(exc)}") from None
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise PublishFailed(f"{where}: not confirmed ({type(confirmation).__name__})")
