"""Acks, coalesced: acks given within a short linger leave as few ``basic.ack`` frames as can be.

Delivery tags on a channel only grow. Once every delivery up to tag T is settled, one
``basic.ack(T, multiple=True)`` settles them all; an ack above a delivery still being handled
goes out on its own, so a slow action never holds back the acks (and the prefetch credit) of
the quick ones after it. A quorum queue turns every ack frame into a log entry, so fewer frames
are less work for the broker as well as for the worker.

Acks wait at most ``linger`` seconds, and no longer than it takes ``batch`` of them to gather
(a quarter of the prefetch, so waiting acks never hold back much of the prefetch credit). The
price is a wider window in which a worker that dies has run jobs the broker will deliver again;
delivery is at least once in any case.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiormq

from .broker import Inbound, describe

log = logging.getLogger("warden.consumer")


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
            self._start(ack(message))

    def _start(self, sending: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(sending)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)


async def ack(message: Inbound, *, multiple: bool = False) -> None:
    """Ack; if the channel died, say so: the broker delivers the message again, and the worker
    goes on."""
    await _settle(message, "ack", message.ack(multiple=multiple))


async def requeue(message: Inbound) -> None:
    """Return the message to its queue (this counts against the delivery limit)."""
    await _settle(message, "nack", message.nack(requeue=True))


async def _settle(message: Inbound, what: str, settling: Coroutine[Any, Any, None]) -> None:
    try:
        await settling
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        log.warning(
            f"{what} failed; the broker will deliver the message again",
            extra={"message_id": message.message_id, "error": describe(exc)},
        )
