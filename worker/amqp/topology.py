"""What warden declares on the broker (``docs/threat-model.md`` says who may write where):

- ``warden.jobs`` (direct): jobs enter here; each work queue is bound with its own name;
- each work queue, quorum, whose messages the broker dead-letters (the delivery limit) to
  ``warden.quarantine`` (direct, routing key: the work queue) and so to the queue
  ``warden.quarantine``, one for every work queue, which only warden reads;
- ``warden.dlx`` (topic): warden's dead letters, routing key ``<reason>.<queue>``, bound to
  ``<queue>.dlq`` with ``*.<queue>``;
- ``warden.retry`` (headers) and ``warden.retry.<ms>ms``, one set for every work queue: copies
  waiting (each bound by its ``warden-wait-ms``), handed back through ``warden.jobs`` to the
  work queue they were published for when they expire. A work queue costs two broker queues
  (itself and its dead-letter queue), whatever the number of retry tiers: RabbitMQ 3 counts
  three file handles for every quorum queue against a limit of about 900 under the usual
  ``ulimit -n`` of 1024, and stops accepting connections once they are used;
- ``warden.revoke`` (fanout): revocation events enter here, bound to the stream
  ``warden.revocations`` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
    """A quorum work queue whose crashes-too-often messages go to the quarantine queue."""
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": names.QUARANTINE_EXCHANGE,
        "x-dead-letter-routing-key": queue,
        "x-delivery-limit": delivery_limit,
        **_AT_LEAST_ONCE,
    }


def retry_queue_arguments(ttl_ms: int) -> dict[str, Any]:
    """A quorum queue that holds messages up to ``ttl_ms``, then hands each back through
    ``warden.jobs`` with the routing key it was parked with: its own work queue's name."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": ttl_ms,
        "x-dead-letter-exchange": names.JOBS_EXCHANGE,
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
# 20. A limit no look (nor a quarantined message that keeps failing) reaches keeps it until it is
# replayed, purged or written into the dead-letter queue. (4.0 reads -1 as no limit; RabbitMQ 3
# drops a message at its first return with -1.)
_KEPT = 2**31 - 1

QUORUM: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": _KEPT}
"""The dead-letter and quarantine queues: quorum queues that never drop what they hold."""


@dataclass(frozen=True)
class Topology:
    """What :func:`declare_topology` declared: the work queues by name, and the quarantine
    queues a worker empties (the shared one, and any an earlier version left)."""

    work: dict[str, AbstractQueue]
    quarantine: dict[str, str | None]
    """Queue name → the work queue its messages came from (None: each message's routing key)."""


async def declare_topology(
    channel: AbstractChannel,
    queues: tuple[str, ...],
    delivery_limit: int,
    retry_tiers: tuple[int, ...],
) -> Topology:
    """Declare the exchanges, the shared retry and quarantine queues, each work queue and its
    dead-letter queue, and their bindings."""
    dlx = await channel.declare_exchange(
        names.DEAD_LETTER_EXCHANGE, ExchangeType.TOPIC, durable=True
    )
    jobs = await channel.declare_exchange(names.JOBS_EXCHANGE, ExchangeType.DIRECT, durable=True)
    quarantine = await channel.declare_exchange(
        names.QUARANTINE_EXCHANGE, ExchangeType.DIRECT, durable=True
    )
    retry = await channel.declare_exchange(names.RETRY_EXCHANGE, ExchangeType.HEADERS, durable=True)
    held = await channel.declare_queue(names.QUARANTINE_QUEUE, durable=True, arguments=QUORUM)
    for ttl in retry_tiers:
        try:
            tier = await channel.declare_queue(
                names.retry_queue(ttl), durable=True, arguments=retry_queue_arguments(ttl)
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"retry queue {names.retry_queue(ttl)!r} exists with other arguments than "
                f"warden declares ({describe(exc)}); delete it or move it aside"
            ) from None
        await tier.bind(retry, arguments={"x-match": "all", names.HEADER_WAIT: str(ttl)})
    declared: dict[str, AbstractQueue] = {}
    for queue in queues:
        try:
            work = await channel.declare_queue(
                queue, durable=True, arguments=work_queue_arguments(queue, delivery_limit)
            )
            dlq = await channel.declare_queue(
                names.dead_letter_queue(queue), durable=True, arguments=QUORUM
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"queue {queue!r} (or its dead-letter queue) exists with "
                f"other arguments than warden declares ({describe(exc)}); delete it or move it "
                "aside"
            ) from None
        await work.bind(jobs, queue)
        await dlq.bind(dlx, names.dead_letter_binding(queue))
        await held.bind(quarantine, queue)
        declared[queue] = work
    quarantined: dict[str, str | None] = {names.QUARANTINE_QUEUE: None}
    for queue in queues:
        former = names.former_quarantine_queue(queue)
        if await _exists(channel, former):
            # Unbound, it takes nothing more; what it holds is emptied into the dead-letter
            # queue as before, and it can be deleted once empty.
            underlay = await channel.get_underlay_channel()
            await underlay.queue_unbind(former, names.QUARANTINE_EXCHANGE, queue)
            quarantined[former] = queue
    return Topology(declared, quarantined)


async def _exists(channel: AbstractChannel, queue: str) -> bool:
    """Whether ``queue`` exists, asked on a channel of its own (a passive declare of a queue
    that does not exist closes the channel it was asked on)."""
    probe = await (await channel.get_underlay_channel()).connection.channel()
    try:
        await probe.queue_declare(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    else:
        await probe.close()
        return True


def stream_arguments(retention: str) -> dict[str, Any]:
    """The revocation stream: kept ``retention`` (RabbitMQ ``x-max-age``, e.g. ``24h``)."""
    return {"x-queue-type": "stream", "x-max-age": retention}


async def declare_stream(channel: AbstractChannel, retention: str) -> None:
    """Declare the revocation stream and ``warden.revoke`` bound to it, or fail naming the
    argument that differs."""
    try:
        stream = await channel.declare_queue(
            names.REVOCATION_STREAM, durable=True, arguments=stream_arguments(retention)
        )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"stream {names.REVOCATION_STREAM!r} exists with other arguments "
            f"({describe(exc)}); WARDEN_REVOCATION_RETENTION must match it"
        ) from None
    revoke = await channel.declare_exchange(
        names.REVOKE_EXCHANGE, ExchangeType.FANOUT, durable=True
    )
    await stream.bind(revoke)


@dataclass(frozen=True)
class Role:
    """One kind of broker user and what RabbitMQ should let it do (configure, write and read
    patterns of ``rabbitmqctl set_permissions``)."""

    name: str
    what: str
    configure: str
    write: str
    read: str


def roles(queues: tuple[str, ...]) -> tuple[Role, ...]:
    """The least each kind of user needs on a virtual host where warden serves ``queues``.

    A job publisher may only write to ``warden.jobs``, a revoker only to ``warden.revoke``: in
    particular neither may write through the default exchange (``amq.default``), which reaches
    every queue by name, nor declare anything.
    """
    work = "(" + "|".join(re.escape(q) for q in queues) + ")"
    retry = r"retry(\.[0-9]+ms)?"
    return (
        Role(
            "worker",
            "consumes the work queues, writes dead letters and retry copies, follows revocations",
            configure=rf"^(warden\.(dlx|jobs|quarantine|revoke|revocations|{retry})|{work}(\.dlq|\.quarantine)?)$",
            write=rf"^(amq\.default|warden\.(dlx|jobs|quarantine|revocations|{retry})|{work}(\.dlq|\.quarantine)?)$",
            read=rf"^(warden\.(dlx|jobs|quarantine|revoke|revocations|{retry})|{work}(\.quarantine)?)$",
        ),
        Role("publisher", "publishes jobs through warden.jobs", "^$", r"^warden\.jobs$", "^$"),
        Role(
            "revoker",
            "publishes revocations through warden.revoke",
            "^$",
            r"^warden\.revoke$",
            "^$",
        ),
        Role(
            "operator",
            "reads, replays and purges dead letters (warden dlq)",
            "^$",
            r"^warden\.(jobs|dlx)$",
            rf"^{work}\.dlq$",
        ),
    )
