"""Everything that speaks AMQP: topology, the message parser, confirmed publishing.

The rest of warden sees :class:`~worker.decision.Delivery` values, never aio-pika types.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    DeliveryMode,
    ExchangeType,
)

from . import names
from .decision import Delivery
from .errors import ConfigurationError, PublishFailed

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


DEAD_LETTER_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


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


def to_delivery(message: AbstractIncomingMessage, queue: str) -> Delivery:
    """The transport-free view of an incoming message."""
    headers = message.headers or {}
    return Delivery(
        body=message.body,
        headers=headers,
        message_id=message.message_id,
        content_type=message.content_type,
        queue=queue,
        attempt=_header_int(headers, names.HEADER_ATTEMPT, 1),
        redelivered=bool(message.redelivered),
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
    try:
        confirmation = await exchange.publish(message, routing_key, mandatory=True)
    except aio_pika.exceptions.DeliveryError as exc:
        frame = exc.frame
        why = "returned as unroutable" if frame is None else type(frame).__name__
        raise PublishFailed(f"{exchange.name or 'default exchange'}: {why}") from None
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        raise PublishFailed(f"{exchange.name or 'default exchange'}: {describe(exc)}") from None
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise PublishFailed(
            f"{exchange.name or 'default exchange'}: not confirmed ({type(confirmation).__name__})"
        )


def describe(exc: BaseException) -> str:
    """An AMQP error's type and the broker's reply text; never a message's content."""
    texts = [a for a in exc.args if isinstance(a, str | int)][:2]
    if isinstance(exc, aio_pika.exceptions.DeliveryError) or not texts:
        return type(exc).__name__
    return f"{type(exc).__name__}: " + " ".join(str(t) for t in texts)
