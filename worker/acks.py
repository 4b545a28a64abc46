"""Acks, coalesced: the acks a loop iteration produces leave as few ``basic.ack`` frames as can be.

Delivery tags on a channel only grow. Once every delivery up to tag T is settled, one
``basic.ack(T, multiple=True)`` settles them all; an ack above a delivery still being handled
goes out on its own, so a slow action never holds back the acks (and the prefetch credit) of
the quick ones after it. A quorum queue turns every ack frame into a log entry, so fewer frames
are less work for the broker as well as for the worker.
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
    """Tracks the unsettled deliveries of one consumer channel and sends their acks."""

    def __init__(self) -> None:
        self._channel: Any = None
        self._open: dict[int, asyncio.Future[None] | None] = {}
        """Unsettled tags in delivery order; a future once acked and waiting for the flush."""
        self._messages: dict[int, Inbound] = {}
        self._flush: asyncio.Handle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def delivered(self, message: Inbound) -> None:
        """A delivery is being handled (called before anything can settle it)."""
        if message.channel is not self._channel:
            # A new channel (after a reconnect): its tags start again; the old ones are void.
            self._fail_all()
            self._channel = message.channel
        tag = message.delivery_tag
        if tag is not None:
            self._open[tag] = None
            self._messages[tag] = message

    def unsettled(self, message: Inbound) -> bool:
        """Whether nothing has acked or nacked this delivery yet."""
        tag = message.delivery_tag
        return message.channel is self._channel and tag in self._open and self._open[tag] is None

    def abandon(self, message: Inbound) -> None:
        """Handling ended without settling (cancelled): stop tracking a delivery never acked,
        so it cannot hold back the acks after it; the broker delivers it again."""
        if self.unsettled(message):
            self.settled_otherwise(message)

    def settled_otherwise(self, message: Inbound) -> None:
        """The delivery was settled without an ack (a nack): stop tracking it."""
        if message.channel is self._channel and message.delivery_tag is not None:
            self._open.pop(message.delivery_tag, None)
            self._messages.pop(message.delivery_tag, None)

    async def ack(self, message: Inbound) -> None:
        """Ack ``message`` with the others of this loop iteration."""
        tag = message.delivery_tag
        if message.channel is not self._channel or tag not in self._open:
            await ack(message)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._open[tag] = done
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._send)
        await done

    def _send(self) -> None:
        self._flush = None
        prefix: list[int] = []
        beyond: list[int] = []
        blocked = False  # past the first delivery still being handled
        for tag, done in self._open.items():
            if done is None:
                blocked = True
            elif blocked:
                beyond.append(tag)
            else:
                prefix.append(tag)
        if prefix:
            self._dispatch(prefix[-1], multiple=len(prefix) > 1, covered=prefix)
        for tag in beyond:
            self._dispatch(tag, multiple=False, covered=[tag])

    def _dispatch(self, tag: int, *, multiple: bool, covered: list[int]) -> None:
        message = self._messages[tag]
        futures = [self._open.pop(t) for t in covered]
        for t in covered:
            del self._messages[t]
        task = asyncio.ensure_future(self._finish(message, multiple, futures))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _finish(
        self,
        message: Inbound,
        multiple: bool,
        futures: list[asyncio.Future[None] | None],
    ) -> None:
        try:
            await ack(message, multiple=multiple)
        finally:
            for done in futures:
                if done is not None and not done.done():
                    done.set_result(None)

    def _fail_all(self) -> None:
        for done in self._open.values():
            if done is not None and not done.done():
                done.set_result(None)  # their channel is gone: the broker delivers them again
        self._open.clear()
        self._messages.clear()


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
