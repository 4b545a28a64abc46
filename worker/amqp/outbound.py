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

A copy carries warden's own ``user_id``, never the publisher's: RabbitMQ refuses a publish whose
``user_id`` is not the publishing connection's user, and closes the channel. Its properties are
encoded in warden's code (:class:`Copy`), so that a header value AMQP cannot carry, or a table
too large for a frame, raises :class:`~worker.errors.TableNotEncodable` before anything is sent,
rather than a library's error, or a frame the broker answers by closing the connection. Only
then are the headers looked at one by one (:func:`carried`); a copy that encodes costs no more
than before.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, DeliveryMode
from pamqp import encode

from worker.amqp.connection import TRANSPORT_ERRORS, describe
from worker.amqp.inbound import Inbound
from worker.errors import PublishFailed, TableNotEncodable, Unroutable

log = logging.getLogger("warden.consumer")

TABLE_LENGTH = struct.Struct(">I")
_ENCODING_ERRORS = (TypeError, ValueError, OverflowError, struct.error)
_PROPERTY_ERRORS = (*_ENCODING_ERRORS, RecursionError)
"""What pamqp raises on a property it cannot encode: a value of no AMQP type (a long string that
was not UTF-8 arrives as bytes), a number out of its type's range (a double beyond a float's),
a table nested deeper than Python's recursion allows."""


# --- acks --------------------------------------------------------------------------------------


_ABANDONED: Any = object()
"""In :attr:`Acker._open`, a delivery whose handling was cancelled: never to be acked."""


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
        """Unsettled tags in delivery order; the message once acked and waiting for the flush
        (or :data:`_ABANDONED`)."""
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
        """Handling ended without settling (cancelled): the delivery stays unacked, and the
        broker delivers it again once the channel closes. Its tag stays as a bound no
        ``multiple`` ack may cross; the acks after it go out on their own."""
        if self.unsettled(message):
            self._open[message.delivery_tag] = _ABANDONED

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
            if acked is None or acked is _ABANDONED:
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


async def settle_rejected(message: Inbound) -> None:
    """Reject the message for good: the broker drops it (or dead-letters it, where its queue
    says so)."""
    await _settle(message, "reject", message.nack(requeue=False))


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


CONTENT_HEADER_FIXED = 12
"""Bytes of a content header frame's payload before the properties: class, weight, body size."""

PROPERTIES_BESIDE_HEADERS = 2 + 10 * 256 + 8 + 2 + TABLE_LENGTH.size
"""The most the properties of a content header take besides the entries of its headers table:
the flags, ten short strings, a timestamp, two octets, and the table's length."""

MAX_DEPTH = 32
"""Tables and arrays nested in one another that a salvaged copy carries in a header; a header
nested deeper is dropped (pamqp encodes recursively; warden's own headers nest 3 deep)."""


class Copy(aiormq.spec.Basic.Properties):
    """The properties of a copy warden publishes, encoded by warden's code.

    Encoding raises :class:`~worker.errors.TableNotEncodable` for a value AMQP cannot carry, or
    when the properties would take more than ``limit`` bytes (:func:`send_confirmed` sets it from
    the channel's frame size: the broker closes a connection that sends a larger frame).
    """

    limit = 0
    """At most this many bytes of properties; 0 (or less) for no limit."""

    def marshal(self) -> bytes:
        try:
            wire = super().marshal()
        except _PROPERTY_ERRORS as exc:
            raise TableNotEncodable(type(exc).__name__) from None
        if 0 < self.limit < len(wire):
            raise TableNotEncodable(f"{len(wire)} bytes of properties, above {self.limit}")
        return wire


class _CopyWithMore(Copy):
    """A copy whose headers table goes on the wire with ``more`` after its entries: table
    entries encoded beforehand (see :class:`~worker.deadletters.write.DenialHeaders`)."""

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
) -> Copy:
    """The properties of a persistent copy of ``message``: the same, with the given headers
    (and, for a message parked in a retry queue, its own expiration), written by ``user_id``:
    the user warden connects as, which the broker checks, and which tells warden's own letters
    and copies from anyone else's. ``more_headers`` are encoded table entries that follow
    ``headers`` on the wire; they must not repeat a name in ``headers``."""
    original = message.properties
    make = partial(_CopyWithMore, more=more_headers) if more_headers else Copy
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


def carried(
    headers: Mapping[str, Any], room: int | None = None
) -> tuple[dict[str, Any], list[str]]:
    """What a copy can carry of ``headers``, and the names (``headers.<name>``) of what it
    cannot: a header whose value AMQP cannot encode, or that nests tables and arrays more than
    :data:`MAX_DEPTH` deep; then, the largest first, those that take the entries beyond ``room``
    bytes."""
    kept: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    lost: list[str] = []
    for name, value in headers.items():
        try:
            if _depth(value) > MAX_DEPTH:
                raise TableNotEncodable("nested too deep")
            sizes[name] = len(table_entry(name, value))
        except TableNotEncodable:
            lost.append(f"headers.{name}")
            continue
        kept[name] = value
    if room is not None:
        total = sum(sizes.values())
        for name in sorted(kept, key=sizes.__getitem__, reverse=True):
            if total <= room:
                break
            total -= sizes[name]
            del kept[name]
            lost.append(f"headers.{name}")
    return kept, lost


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deep tables and arrays nest in ``value``, counted up to ``limit + 1`` at most."""
    if isinstance(value, dict | list):
        if limit < 0:
            return 1
        inner = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(item, limit - 1) for item in inner), default=0)
    return 0


async def publish_confirmed(
    exchange: AbstractExchange, message: aio_pika.Message, routing_key: str
) -> None:
    """Publish with ``mandatory``; return once the broker confirmed, else raise
    :class:`~worker.errors.PublishFailed` naming why."""
    await _confirmed(
        exchange.name or "default exchange",
        exchange.publish(message, routing_key, mandatory=True),
    )


Send = Callable[[aiormq.abc.AbstractChannel, bytes, Copy, str, str], Awaitable[None]]
"""How a copy goes out on a transport channel: :func:`send_confirmed` or
:func:`send_in_transaction`."""


async def send_confirmed(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    properties: Copy,
    exchange: str,
    routing_key: str,
) -> None:
    """:func:`publish_confirmed` at the transport's level, for copies of deliveries. The frames
    are queued without waiting for the socket, so many copies can wait for confirms at once.
    Raises :class:`~worker.errors.TableNotEncodable`, having sent nothing, for properties that
    cannot be encoded or would not fit a frame."""
    # aiormq's own channel takes ``wait``, and knows its frame size; its abstract interface
    # names neither.
    transport = cast(aiormq.Channel, channel)
    properties.limit = transport.max_content_size - CONTENT_HEADER_FIXED
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


async def send_in_transaction(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    properties: Copy,
    exchange: str,
    routing_key: str,
) -> None:
    """A copy published with ``mandatory`` on a channel in transaction mode, where the commit
    stands for the confirm; otherwise as :func:`send_confirmed`."""
    transport = cast(aiormq.Channel, channel)
    properties.limit = transport.max_content_size - CONTENT_HEADER_FIXED
    try:
        await transport.basic_publish(
            body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=True
        )
    except TRANSPORT_ERRORS as exc:
        raise _gone(exchange, exc) from None


async def send_copy(
    channel: AbstractChannel,
    body: bytes,
    properties: Copy,
    exchange: str,
    routing_key: str,
    *,
    send: Send = send_confirmed,
) -> None:
    """:func:`send_confirmed` (or ``send``) on the transport channel under an aio-pika
    ``channel``; a channel that is gone is a :class:`~worker.errors.PublishFailed` like any
    other unconfirmed publish."""
    try:
        transport = await channel.get_underlay_channel()
    except TRANSPORT_ERRORS as exc:
        raise _gone(exchange, exc) from None
    await send(transport, body, properties, exchange, routing_key)


async def send_salvaged(
    channel: AbstractChannel,
    body: bytes,
    message: Inbound,
    headers: Mapping[str, Any],
    exchange: str,
    routing_key: str,
    *,
    user_id: str,
    stamp: Callable[[list[str]], bytes] = lambda lost: b"",
    send: Send = send_confirmed,
) -> list[str]:
    """:func:`send_copy` of ``message``, written by ``user_id``, with what it can carry of
    ``headers``, for a copy that could not be encoded whole
    (:class:`~worker.errors.TableNotEncodable`). Returns the names of the headers left out;
    ``stamp`` gives, knowing them, the entries that follow the headers.

    First every header that can be encoded, the largest dropped while the copy would not fit a
    frame; should it still not fit (the entries of ``stamp`` grow with the names), none.
    """
    try:
        transport = cast(aiormq.Channel, await channel.get_underlay_channel())
    except TRANSPORT_ERRORS as exc:
        raise _gone(exchange, exc) from None
    kept, lost = carried(headers)
    frame = transport.max_content_size - CONTENT_HEADER_FIXED
    room = frame - PROPERTIES_BESIDE_HEADERS - len(stamp(lost)) if frame > 0 else None
    kept, too_large = carried(kept, room)
    lost += too_large
    try:
        properties = copy_properties(message, kept, user_id=user_id, more_headers=stamp(lost))
        await send(transport, body, properties, exchange, routing_key)
    except TableNotEncodable:
        lost += [f"headers.{name}" for name in kept]
        properties = copy_properties(message, {}, user_id=user_id, more_headers=stamp(lost))
        await send(transport, body, properties, exchange, routing_key)
    return lost


def _gone(exchange: str, exc: BaseException) -> PublishFailed:
    return PublishFailed(f"{exchange or 'default exchange'}: {describe(exc)}")


async def _confirmed(where: str, publishing: Awaitable[Any]) -> None:
    try:
        confirmation = await publishing
    except aiormq.exceptions.DeliveryError as exc:
        frame = exc.frame
        returned = frame is None or isinstance(frame, aiormq.spec.Basic.Return)
        if returned:
            raise Unroutable(f"{where}: returned as unroutable") from None
        raise PublishFailed(f"{where}: {type(frame).__name__}") from None
    except TRANSPORT_ERRORS as exc:
        raise PublishFailed(f"{where}: {describe(exc)}") from None
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise PublishFailed(f"{where}: not confirmed ({type(confirmation).__name__})")
