"""What warden declares on the broker: the dead-letter exchange, each work queue with its
dead-letter and retry queues, and the revocation stream."""

from __future__ import annotations

from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

from worker import names
from worker.amqp.connection import describe
from worker.errors import ConfigurationError

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


def stream_arguments(retention: str) -> dict[str, Any]:
    """The revocation stream: kept ``retention`` (RabbitMQ ``x-max-age``, e.g. ``24h``)."""
    return {"x-queue-type": "stream", "x-max-age": retention}


async def declare_stream(channel: AbstractChannel, retention: str) -> None:
    """Declare the revocation stream, or fail naming the argument that differs."""
    try:
        await channel.declare_queue(
            names.REVOCATION_STREAM, durable=True, arguments=stream_arguments(retention)
        )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"stream {names.REVOCATION_STREAM!r} exists with other arguments "
            f"({describe(exc)}); WARDEN_REVOCATION_RETENTION must match it"
        ) from None
