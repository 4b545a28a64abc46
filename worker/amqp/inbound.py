"""Deliveries as they arrive: consumers of the work queues, and each delivery turned into the
transport-free :class:`~worker.pipeline.delivery.Delivery` the pipeline decides on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import aiormq
from aio_pika.abc import AbstractRobustChannel

from worker import names
from worker.amqp.connection import TRANSPORT_ERRORS, describe
from worker.amqp.salvage import Salvaged
from worker.pipeline.delivery import Delivery

log = logging.getLogger("warden.consumer")


MAX_COUNT = 1_000_000
"""The largest count warden reads from one of its own headers; a larger one is not its own."""


def warden_count(headers: Mapping[str, Any], name: str, default: int) -> int:
    """A count warden wrote into a header (``x-warden-attempt``, ``x-warden-deferrals``), or
    ``default`` where there is no sensible one."""
    value = headers.get(name)
    return value if type(value) is int and 0 < value <= MAX_COUNT else default


class Inbound:
    """One delivery to a work queue, as aio-pika's transport (aiormq) hands it over.

    The consumer reads deliveries at this level rather than as aio-pika messages: a delivery
    then costs one task and no copy of its properties, which is most of what a consumer spends
    per message besides the decision (``bench/`` scenario (b) went from 0.75 to 1.05 of the bare
    aio-pika loop with the unwaited publishes of :mod:`worker.amqp.outbound`).
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
        assert isinstance(deliver, aiormq.spec.Basic.Deliver | aiormq.spec.Basic.GetOk)
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

    async def ack(self, *, multiple: bool = False, wait: bool = True) -> None:
        await self.channel.basic_ack(self.delivery_tag, multiple=multiple, wait=wait)

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
        self._stopped = False
        self._changing = asyncio.Lock()
        """Held while consumers are cancelled or registered, one change at a time."""

    async def start(self) -> None:
        self._channel.reopen_callbacks.add(self._reopened)
        await self._consume()

    async def pause(self) -> None:
        """Cancel every consumer, and register none again until :meth:`resume`: new jobs wait
        in their queues. Deliveries already received are still handled."""
        async with self._changing:
            if self._paused:
                return
            self._paused = True
            await self._cancel_all()

    async def resume(self) -> None:
        """Consume again after :meth:`pause`."""
        async with self._changing:
            if not self._paused:
                return
            self._paused = False
            await self._consume_again()

    async def renew(self) -> None:
        """Cancel every consumer and register it again, unless paused or stopped. Deliveries
        received stay unacked and are handled; the new consumers' prefetch does not count them
        (:class:`~worker.amqp.links.CreditKeeper`)."""
        async with self._changing:
            if self._paused or self._stopped:
                return
            await self._cancel_all()
            await self._consume_again()
            log.info("consumers registered again", extra={"queues": list(self._callbacks)})

    async def stop(self) -> None:
        """Cancel every consumer; deliveries already received are still handled."""
        self._stopped = True
        self._channel.reopen_callbacks.discard(self._reopened)
        async with self._changing:
            await self._cancel_all()

    async def _consume_again(self) -> None:
        try:
            await self._consume()
        except TRANSPORT_ERRORS as exc:
            # The channel is down: its restore registers the consumers (_reopened).
            log.info("consuming again once the channel reopens", extra={"error": describe(exc)})

    async def _cancel_all(self) -> None:
        for task in self._again:
            task.cancel()
        transport, tags = self._transport, self._tags
        self._tags = {}
        for tag in tags:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                assert transport is not None
                await transport.basic_cancel(tag)

    async def _reopened(self, _: object) -> None:
        if self._paused or self._stopped:
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
        except TRANSPORT_ERRORS as exc:
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


def to_delivery(
    message: Inbound, queue: str, trusted: frozenset[str], *, witnessed: bool = False
) -> Delivery:
    """The transport-free view of an incoming message.

    Its attempt and deferral counts are read from warden's headers only when a ``trusted`` user
    wrote the message (RabbitMQ checks ``user_id`` against the publishing connection's user):
    anyone else's copy counts as a first attempt. Who published it is its ``user_id``; on
    warden's own retry or wait copy, the ``x-warden-publisher-user`` the copy carries over from
    the original.

    Its arrival is read only where the broker was proven to stamp every message (``witnessed``,
    :func:`~worker.amqp.arrival.stamping`): the first arrival a trusted user's copy
    carries (``x-warden-received-at``), or else the broker's ``timestamp_in_ms``.
    """
    properties = message.properties
    headers = properties.headers or {}
    user = properties.user_id
    own = user in trusted
    replayed_by = None
    if own:
        carried = headers.get(names.HEADER_PUBLISHER_USER)
        user = carried if type(carried) is str else None
        by = headers.get(names.HEADER_REPLAYED_BY)
        replayed_by = by if type(by) is str and by else None
    return Delivery(
        body=message.body,
        headers=headers,
        message_id=properties.message_id,
        content_type=properties.content_type,
        queue=queue,
        attempt=warden_count(headers, names.HEADER_ATTEMPT, 1) if own else 1,
        deferrals=warden_count(headers, names.HEADER_DEFERRALS, 0) if own else 0,
        redelivered=message.redelivered,
        publisher_user=user,
        dropped=properties.dropped if type(properties) is Salvaged else (),
        arrived_at=_arrival(headers, own) if witnessed else None,
        replayed_by=replayed_by,
    )


def broker_stamp(headers: Mapping[str, Any]) -> float | None:
    """The broker's arrival stamp on a message (``timestamp_in_ms``), in seconds since the
    epoch, or None. Only a broker proven to overwrite it (:mod:`worker.amqp.arrival`) makes it
    a witness."""
    stamp = headers.get(names.HEADER_BROKER_TIMESTAMP)
    return stamp / 1000 if type(stamp) is int and stamp > 0 else None


def _arrival(headers: Mapping[str, Any], own: bool) -> float | None:
    """When the broker first received a message: the first arrival a trusted user's copy
    carries, else the broker's stamp on this very message."""
    if own:
        carried = headers.get(names.HEADER_RECEIVED_AT)
        if type(carried) is int and carried > 0:
            return carried / 1000
    return broker_stamp(headers)
