"""The revocation feed: the stream ``warden.revocations``, read from its start, then followed.

A replica is *caught up* once it reads back a marker it published itself (a stream reports no
message count on declare, so there is no other way to know the end was reached). While the
feed cannot be followed, the state is *stale* after ``WARDEN_REVOCATION_MAX_STALENESS``, and
jobs wait rather than run on a revocation list that may be missing entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, DeliveryMode

from . import errors, names
from .broker import describe, publish_confirmed
from .revocation import InvalidEvent, Revocation, RevocationList

log = logging.getLogger("warden.revocation")


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
        raise errors.ConfigurationError(
            f"stream {names.REVOCATION_STREAM!r} exists with other arguments "
            f"({describe(exc)}); WARDEN_REVOCATION_RETENTION must match it"
        ) from None


async def publish_revocation(channel: AbstractChannel, event: Revocation) -> None:
    """Append one event to the feed, confirmed by the broker."""
    message = aio_pika.Message(
        event.to_json(),
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),
    )
    await publish_confirmed(channel.default_exchange, message, names.REVOCATION_STREAM)


async def revoke(broker_url: str, event: Revocation, retention: str) -> None:
    """What ``warden revoke`` does: make sure the stream exists, append ``event``, confirmed."""
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_stream(channel, retention)
        await publish_revocation(channel, event)


class FeedBroken(Exception):
    """The stream consumer was cancelled or its channel closed."""


class RevocationFeed:
    """Follows the stream into a :class:`RevocationList`; knows whether it is fresh."""

    def __init__(
        self,
        broker_url: str,
        revocations: RevocationList,
        *,
        max_staleness: float,
        probe_every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._url = broker_url
        self.revocations = revocations
        self.max_staleness = max_staleness
        self._probe_every = probe_every or max(min(max_staleness / 3, 5.0), 0.05)
        self._clock = clock
        self._wall = wall
        self.caught_up = asyncio.Event()
        """Set once the whole stream was read (and stays set)."""
        self._attached = False
        self._last_ok = 0.0
        self._applied = asyncio.Event()
        self._stale_timer: asyncio.TimerHandle | None = None
        self._stale = False
        self._failures = 0
        self._seen_offset = -1

    def fresh(self) -> bool:
        """Whether decisions may rely on the revocation list now."""
        if not self.caught_up.is_set():
            return False
        return self._attached or self._clock() - self._last_ok <= self.max_staleness

    def why_stale(self) -> str:
        """Human text for a wait: what the feed is missing."""
        if not self.caught_up.is_set():
            return "the revocation feed has not been read to its end yet"
        return (
            f"the revocation feed has been unreachable for "
            f"{self._clock() - self._last_ok:.1f}s (max {self.max_staleness:g}s)"
        )

    def check(self, claims: dict[str, Any], issuer: str) -> None:
        """Check 13: raise TokenRevoked, or RevocationsStale when the list cannot be trusted."""
        if not self.fresh():
            raise errors.RevocationsStale(self.why_stale())
        self.revocations.check(claims, issuer)

    async def wait_until_revoked(self, claims: dict[str, Any], issuer: str) -> None:
        """Return once the list revokes a token with these claims (for tools and tests)."""
        while True:
            try:
                self.revocations.check(claims, issuer)
            except errors.TokenRevoked:
                return
            self._applied.clear()
            await self._applied.wait()

    async def follow_forever(self) -> None:
        """Follow the stream; after a break, attach again with backoff. Until cancelled."""
        self._failures = 0
        try:
            while True:
                try:
                    await self._follow()
                except (FeedBroken, aiormq.exceptions.AMQPError, OSError, RuntimeError) as exc:
                    self._detached(exc)
                await asyncio.sleep(min(0.1 * 2 ** min(self._failures, 6), 5.0))
        finally:
            if self._stale_timer is not None:
                self._stale_timer.cancel()

    def _detached(self, exc: BaseException) -> None:
        if self._attached:
            self._last_ok = self._clock()
            self._attached = False
            loop = asyncio.get_running_loop()
            self._stale_timer = loop.call_later(self.max_staleness, self._went_stale)
        self._failures += 1
        log.warning(
            "revocation feed lost; jobs wait once it is stale",
            extra={"error": describe(exc), "max_staleness": self.max_staleness},
        )

    def _went_stale(self) -> None:
        self._stale_timer = None
        if not self.fresh():
            self._stale = True
            log.error(
                "revocation feed stale; jobs wait until it is back", extra={"why": self.why_stale()}
            )

    def _reattached(self) -> None:
        self._attached = True
        self._last_ok = self._clock()
        self._failures = 0
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        if self._stale:
            self._stale = False
            log.warning("revocation feed back; jobs are decided again")

    async def _follow(self) -> None:
        connection = await aio_pika.connect(
            self._url, client_properties={"connection_name": "warden revocation feed"}
        )
        async with connection:
            broken = asyncio.Event()
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=500)
            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(lambda *_: broken.set())
            channel.close_callbacks.add(lambda *_: broken.set())
            connection.close_callbacks.add(lambda *_: broken.set())
            stream = await channel.declare_queue(names.REVOCATION_STREAM, passive=True)

            marker = uuid.uuid4().hex
            publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await publish_confirmed(
                publisher.default_exchange,
                aio_pika.Message(b"", headers={names.HEADER_MARKER: marker}),
                names.REVOCATION_STREAM,
            )
            reached = asyncio.Event()
            await stream.consume(
                partial(self._on_message, marker=marker, reached=reached),
                arguments={"x-stream-offset": "first"},
            )
            waiting = asyncio.ensure_future(broken.wait())
            try:
                while not broken.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(waiting), self._probe_every)
                    if broken.is_set():
                        break
                    # A passive declare proves the stream still exists and the link works.
                    await publisher.declare_queue(names.REVOCATION_STREAM, passive=True)
                    if reached.is_set():
                        self._last_ok = self._clock()
                    self.revocations.prune(self._wall())
            finally:
                waiting.cancel()
            raise FeedBroken("the revocation stream consumer was cancelled or its channel closed")

    async def _on_message(
        self, message: AbstractIncomingMessage, *, marker: str, reached: asyncio.Event
    ) -> None:
        headers = message.headers or {}
        # After a re-attach the stream is read from its start again: events are applied again
        # (that is idempotent) but only logged the first time.
        offset = headers.get("x-stream-offset")
        new = type(offset) is not int or offset > self._seen_offset
        if new and type(offset) is int:
            self._seen_offset = offset
        if names.HEADER_MARKER in headers:
            if headers[names.HEADER_MARKER] == marker and not reached.is_set():
                reached.set()
                self._reattached()
                if not self.caught_up.is_set():
                    log.info(
                        "revocation feed read to its end", extra={"entries": len(self.revocations)}
                    )
                self.caught_up.set()
        else:
            try:
                event = Revocation.from_json(message.body)
            except InvalidEvent as exc:
                if new:
                    log.error(
                        "revocation event skipped: not valid",
                        extra={
                            "message_id": message.message_id,
                            "offset": offset,
                            "error": str(exc),
                        },
                    )
            else:
                applied = self.revocations.add(event, self._wall())
                self._applied.set()
                if applied and new and reached.is_set():
                    log.info(
                        "revocation received",
                        extra={"subject": event.subject, "iss": event.issuer},
                    )
        await message.ack()
