"""Everything that speaks AMQP: topology, the message parser, confirmed publishing.

The rest of warden sees :class:`~worker.decision.Delivery` values, never aio-pika types.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    DeliveryMode,
    ExchangeType,
)
from pamqp import encode

from . import names
from .decision import Delivery
from .errors import ConfigurationError, PublishFailed

log = logging.getLogger("warden.consumer")

_TABLE_LENGTH = struct.Struct(">I")

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


# Quorum queues dead-letter at least once only when publishing into a full queue is refused;
# then a message the broker dead-letters stays where it is until the target has taken it.
_AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def work_queue_arguments(queue: str, delivery_limit: int) -> dict[str, Any]:
    """A quorum work queue whose crashes-too-often messages go to its dead-letter queue."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": names.DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": names.dead_letter_routing_key(
            names.DELIVERY_LIMIT_REASON, queue
        ),
        "x-delivery-limit": delivery_limit,
        **_AT_LEAST_ONCE,
    }


def retry_queue_arguments(queue: str, ttl_ms: int) -> dict[str, Any]:
    """A quorum queue that holds messages up to ``ttl_ms``, then hands them back to ``queue``."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": ttl_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        **_AT_LEAST_ONCE,
    }


def retry_tier(tiers: tuple[int, ...], delay_ms: int) -> int:
    """The shortest tier that can hold a wait of ``delay_ms`` (the longest if none can)."""
    for ttl in tiers:
        if ttl >= delay_ms:
            return ttl
    return tiers[-1]


# Looking at dead letters returns each one to its queue, and the broker counts every return as
# a delivery: from RabbitMQ 4.0 a quorum queue without a limit of its own drops a message after
# 20. A limit no look reaches keeps a dead letter until it is replayed or purged. (4.0 reads -1
# as no limit; RabbitMQ 3 drops a message at its first return with -1.)
_DEAD_LETTER_DELIVERY_LIMIT = 2**31 - 1

DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": _DEAD_LETTER_DELIVERY_LIMIT,
}


async def declare_topology(
    channel: AbstractChannel,
    queues: tuple[str, ...],
    delivery_limit: int,
    retry_tiers: tuple[int, ...],
) -> dict[str, AbstractQueue]:
    """Declare ``warden.dlx``, each work queue, its ``<queue>.dlq`` and its retry queues;
    return the work queues."""
    dlx = await channel.declare_exchange(
        names.DEAD_LETTER_EXCHANGE, ExchangeType.TOPIC, durable=True
    )
    declared: dict[str, AbstractQueue] = {}
    for queue in queues:
        try:
            work = await channel.declare_queue(
                queue, durable=True, arguments=work_queue_arguments(queue, delivery_limit)
            )
            dlq = await channel.declare_queue(
                names.dead_letter_queue(queue), durable=True, arguments=DEAD_LETTER_QUEUE_ARGUMENTS
            )
            for ttl in retry_tiers:
                await channel.declare_queue(
                    names.retry_queue(queue, ttl),
                    durable=True,
                    arguments=retry_queue_arguments(queue, ttl),
                )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"queue {queue!r} (or its dead-letter or retry queues) exists with other arguments "
                "than "
                f"warden declares ({exc.args[0] if exc.args else exc}); delete it or move it aside"
            ) from None
        await dlq.bind(dlx, names.dead_letter_binding(queue))
        declared[queue] = work
    return declared


def _header_int(headers: Mapping[str, Any], name: str, default: int) -> int:
    value = headers.get(name)
    return value if type(value) is int and value > 0 else default


class Inbound:
    """One delivery to a work queue, as aio-pika's transport (aiormq) hands it over.

    The consumer reads deliveries at this level rather than as aio-pika messages: a delivery
    then costs one task and no copy of its properties, which is most of what a consumer spends
    per message besides the decision.
    """

    __slots__ = (
        "body",
        "channel",
        "delivery_tag",
        "exchange",
        "properties",
        "redelivered",
        "routing_key",
    )  # fmt: skip

    def __init__(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        deliver = delivered.delivery
        assert isinstance(deliver, aiormq.spec.Basic.Deliver)
        self.channel = delivered.channel
        self.delivery_tag: int = deliver.delivery_tag or 0
        self.redelivered = bool(deliver.redelivered)
        self.exchange: str = deliver.exchange or ""
        self.routing_key: str = deliver.routing_key or ""
        self.body = delivered.body
        self.properties: aiormq.spec.Basic.Properties = delivered.header.properties

    @property
    def message_id(self) -> str | None:
        return self.properties.message_id

    async def ack(self, *, multiple: bool = False) -> None:
        await self.channel.basic_ack(self.delivery_tag, multiple=multiple)

    async def nack(self, *, requeue: bool = True) -> None:
        await self.channel.basic_nack(self.delivery_tag, requeue=requeue)


class Subscriptions:
    """Consumers of ``channel``'s queues, reading :class:`Inbound` deliveries.

    A robust channel reopens after a reconnect; its consumers are then registered again on the
    new one. When the broker cancels one (its queue was deleted), it is registered again: on a
    queue that is gone, that closes the channel, whose restore declares the queue again as it
    was declared and then registers every consumer.
    """

    def __init__(
        self,
        channel: AbstractRobustChannel,
        handlers: Mapping[str, Callable[[Inbound], Awaitable[None]]],
    ) -> None:
        self._channel = channel
        self._callbacks = {queue: _deliverer(handle) for queue, handle in handlers.items()}
        self._transport: aiormq.abc.AbstractChannel | None = None
        self._tags: dict[str, str] = {}
        """Queue by consumer tag, on the current transport channel."""
        self._again: set[asyncio.Task[None]] = set()
        self._paused = False

    async def start(self) -> None:
        self._channel.reopen_callbacks.add(self._reopened)
        await self._consume()

    async def pause(self) -> None:
        """Cancel every consumer, and register none again until :meth:`resume`: new jobs wait
        in their queues. Deliveries already received are still handled."""
        if self._paused:
            return
        self._paused = True
        await self._cancel_all()

    async def resume(self) -> None:
        """Consume again after :meth:`pause`."""
        if not self._paused:
            return
        self._paused = False
        try:
            await self._consume()
        except (aiormq.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
            # The channel is down: its restore registers the consumers (_reopened).
            log.info("consuming again once the channel reopens", extra={"error": describe(exc)})

    async def stop(self) -> None:
        """Cancel every consumer; deliveries already received are still handled."""
        self._channel.reopen_callbacks.discard(self._reopened)
        await self._cancel_all()

    async def _cancel_all(self) -> None:
        for task in self._again:
            task.cancel()
        transport, tags = self._transport, self._tags
        self._tags = {}
        for tag in tags:
            with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError, ConnectionError):
                assert transport is not None
                await transport.basic_cancel(tag)

    async def _reopened(self, _: object) -> None:
        if self._paused:
            return
        await self._consume()
        log.info("consuming again on a reopened channel", extra={"queues": list(self._callbacks)})

    async def _consume(self) -> None:
        transport = self._transport = await self._channel.get_underlay_channel()
        transport.on_consumer_cancel_callbacks.add(self._cancelled)
        self._tags = {}
        for queue in self._callbacks:
            await self._subscribe(transport, queue)

    async def _subscribe(self, transport: aiormq.abc.AbstractChannel, queue: str) -> None:
        ok = await transport.basic_consume(queue, self._callbacks[queue])
        self._tags[ok.consumer_tag or ""] = queue

    def _cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        queue = self._tags.pop(frame.consumer_tag or "", None)
        if queue is None or self._transport is None or self._paused:
            return
        log.warning("the broker cancelled the consumer; consuming again", extra={"queue": queue})
        task = asyncio.ensure_future(self._resubscribe(self._transport, queue))
        self._again.add(task)
        task.add_done_callback(self._again.discard)

    async def _resubscribe(self, transport: aiormq.abc.AbstractChannel, queue: str) -> None:
        try:
            await self._subscribe(transport, queue)
        except (aiormq.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
            # The queue is gone: the broker closed the channel, and its restore (declaring the
            # queue again) ends in _reopened.
            log.info(
                "queue not there; it is declared again when the channel reopens",
                extra={"queue": queue, "error": describe(exc)},
            )


def _deliverer(
    handle: Callable[[Inbound], Awaitable[None]],
) -> Callable[[aiormq.abc.DeliveredMessage], Coroutine[Any, Any, None]]:
    async def deliver(delivered: aiormq.abc.DeliveredMessage) -> None:
        await handle(Inbound(delivered))

    return deliver


def to_delivery(message: Inbound, queue: str) -> Delivery:
    """The transport-free view of an incoming message."""
    properties = message.properties
    headers = properties.headers or {}
    return Delivery(
        body=message.body,
        headers=headers,
        message_id=properties.message_id,
        content_type=properties.content_type,
        queue=queue,
        attempt=_header_int(headers, names.HEADER_ATTEMPT, 1),
        redelivered=message.redelivered,
    )


class _Properties(aiormq.spec.Basic.Properties):
    """Basic properties whose headers table goes on the wire with ``more`` after its entries:
    table entries encoded beforehand (see :mod:`worker.deadletter`)."""

    def __init__(self, *, more: bytes, **properties: Any) -> None:
        super().__init__(**properties)
        self.more = more

    def encode_property(self, name: str, value: Any) -> bytes:
        if name != "headers":
            return super().encode_property(name, value)
        entries = encode.field_table(value)[4:] + self.more
        return _TABLE_LENGTH.pack(len(entries)) + entries


def copy_properties(
    message: Inbound,
    headers: dict[str, Any],
    *,
    expiration_ms: int | None = None,
    more_headers: bytes = b"",
) -> aiormq.spec.Basic.Properties:
    """The properties of a persistent copy of ``message``: the same, with the given headers
    (and, for a message parked in a retry queue, its own expiration). ``more_headers`` are
    encoded table entries that follow ``headers`` on the wire; they must not repeat a name in
    ``headers``."""
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
        user_id=original.user_id,
        app_id=original.app_id,
    )


def copy_message(
    message: AbstractIncomingMessage, headers: dict[str, Any], *, expiration_ms: int | None = None
) -> aio_pika.Message:
    """A persistent copy of ``message``: same body, same properties, the given headers (and,
    for a message parked in a retry queue, its own expiration)."""
    properties = {name: getattr(message, name) for name in COPIED_PROPERTIES}
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


async def _confirmed(where: str, publishing: Awaitable[Any]) -> None:
    try:
        confirmation = await publishing
    except aiormq.exceptions.DeliveryError as exc:
        frame = exc.frame
        returned = frame is None or isinstance(frame, aiormq.spec.Basic.Return)
        why = "returned as unroutable" if returned else type(frame).__name__
        raise PublishFailed(f"{where}: {why}") from None
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        raise PublishFailed(f"{where}: {describe(exc)}") from None
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise PublishFailed(f"{where}: not confirmed ({type(confirmation).__name__})")


def describe(exc: BaseException) -> str:
    """An AMQP error's type and the broker's reply text; never a message's content."""
    texts = [a for a in exc.args if isinstance(a, str | int)][:2]
    if isinstance(exc, aio_pika.exceptions.DeliveryError) or not texts:
        return type(exc).__name__
    return f"{type(exc).__name__}: " + " ".join(str(t) for t in texts)
