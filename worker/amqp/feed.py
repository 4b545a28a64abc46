"""The revocation feed: the stream ``warden.revocations``, read from as far back as an event
can still deny a token, then followed.

A replica is *caught up* once it reads back a marker it published itself (a stream reports no
message count on declare, so there is no other way to know the end was reached). While the
feed cannot be followed, the state is *stale* after ``WARDEN_REVOCATION_MAX_STALENESS``, and
jobs wait rather than run on a revocation list that may be missing entries. After a break the
feed resumes at the offset after the last one it applied: no event is read twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, DeliveryMode

from worker import errors, names
from worker.amqp.connection import (
    TRANSPORT_ERRORS,
    UNREACHABLE,
    describe,
    open_connection,
    stuck_as_lost,
)
from worker.amqp.outbound import publish_confirmed
from worker.amqp.topology import declare_stream
from worker.auth.revocation import Revocation, RevocationList
from worker.errors import FeedBroken, InvalidEvent, PublishFailed
from worker.settings import DEFAULT_HEARTBEAT_SECONDS
from worker.support.backoff import backoff

log = logging.getLogger("warden.revocation")

_BROKEN: tuple[type[BaseException], ...] = (
    FeedBroken,
    PublishFailed,
    *UNREACHABLE,
    *TRANSPORT_ERRORS,
)
"""What ends one attachment of the feed; it attaches again."""

PREFETCH = 2000
"""Stream messages in flight to the feed's consumer; acknowledged by the half, in one frame."""

BATCH_BYTES = 256 * 1024
"""The largest body :func:`publish_revocations` packs events into."""

PROGRESS_EVERY = 10.0
"""Seconds between the progress lines of a long first reading."""


def _message(body: bytes, user: str) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=str(uuid.uuid4()),
        timestamp=datetime.now(UTC),
        user_id=user,
    )


async def publish_revocation(channel: AbstractChannel, event: Revocation, user: str) -> None:
    """Append one event to the feed through ``warden.revoke``, confirmed by the broker.

    It carries ``user_id``, which RabbitMQ checks against the publishing connection's user:
    workers believe an event only from a trusted user (``WARDEN_TRUSTED_USERS``); and the time
    it was written (``timestamp``), by which a worker that starts later knows it is too old to
    deny anything.
    """
    exchange = await channel.get_exchange(names.REVOKE_EXCHANGE, ensure=False)
    await publish_confirmed(exchange, _message(event.to_json(), user), "")


def batches(events: Iterable[Revocation], most_bytes: int = BATCH_BYTES) -> Iterable[bytes]:
    """``events`` as the bodies of as few messages as fit: JSON arrays of at most
    ``most_bytes`` (an event longer than that goes alone)."""
    parts: list[bytes] = []
    size = 1
    for event in events:
        encoded = event.to_json()
        if parts and size + len(encoded) + 1 > most_bytes:
            yield b"[" + b",".join(parts) + b"]"
            parts, size = [], 1
        parts.append(encoded)
        size += len(encoded) + 1
    if parts:
        yield b"[" + b",".join(parts) + b"]"


async def publish_revocations(
    channel: AbstractChannel, events: Sequence[Revocation], user: str, window: int = 64
) -> int:
    """Append many events, packed into as few messages as fit (:func:`batches`), each confirmed,
    at most ``window`` unconfirmed at a time; return how many messages that took. A worker
    applies a whole message or, when it cannot, none of what follows it."""
    exchange = await channel.get_exchange(names.REVOKE_EXCHANGE, ensure=False)
    pending: list[Any] = []
    sent = 0
    for body in batches(events):
        pending.append(publish_confirmed(exchange, _message(body, user), ""))
        sent += 1
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return sent


async def revoke(
    broker_url: str,
    event: Revocation,
    retention: str,
    user: str,
    *,
    heartbeat: int = DEFAULT_HEARTBEAT_SECONDS,
) -> None:
    """What ``warden revoke`` does: append ``event``, confirmed.

    Where the user may (a worker's or an administrator's user), the stream and its exchange are
    declared first, so that a revocation issued before any worker ran is kept; a revoker with
    only the permission to write to ``warden.revoke`` publishes to what the workers declared.
    """
    connection = await open_connection(broker_url, "warden revoke", heartbeat=heartbeat)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await declare_stream(channel, retention)
        except aiormq.exceptions.ChannelAccessRefused:
            # The broker closed the channel: publish on a new one, with what exists.
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            await publish_revocation(channel, event, user)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise PublishFailed(
                f"exchange {names.REVOKE_EXCHANGE!r} does not exist: start a worker first, "
                "it declares the revocation stream and its exchange"
            ) from None


class RevocationFeed:
    """Follows the stream into a :class:`RevocationList`; knows whether it can be relied on.

    Freshness is verified, never inferred from an open connection: every ``probe_every`` the
    feed appends a marker of its own to the stream and reads it back through the same consumer
    that reads the events. The list is *fresh* while the last marker that came back was sent no
    longer than ``max_staleness`` ago, so a consumer that stops advancing for any reason (a
    closed link, a stalled delivery, a callback that never acks) turns stale within the budget.
    An event the list fails to take (a fault of warden's own, not an invalid event) makes the
    feed *faulted* at once: decisions stop until a re-read from that event applies it.

    With a ``window`` (seconds; ``Settings.revocation_window``), the first attachment starts at
    the stream's messages of that long ago, and a message written (its ``timestamp``) before
    then is not applied: its events can deny no token that still lives. Every later attachment
    resumes at the offset after the last message taken.
    """

    def __init__(
        self,
        broker_url: str,
        revocations: RevocationList,
        *,
        max_staleness: float,
        trusted: frozenset[str],
        user: str,
        window: float | None = None,
        heartbeat: int = DEFAULT_HEARTBEAT_SECONDS,
        handshake_timeout: float | None = None,
        probe_every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._url = broker_url
        self._heartbeat = heartbeat
        self.revocations = revocations
        self._trusted = trusted
        self._user = user
        self._window = window
        self._handshake_timeout = handshake_timeout
        self.untrusted = 0
        """Events ignored because no trusted user wrote them (``warden_revocations_untrusted``)."""
        self._untrusted_publishers: set[str | None] = set()
        self._near_full = False
        self.max_staleness = max_staleness
        self._probe_every = probe_every or max(min(max_staleness / 3, 5.0), 0.05)
        self._clock = clock
        self._wall = wall
        self.caught_up = asyncio.Event()
        """Set once the stream was read to its end (and stays set)."""
        self._last_ok = 0.0
        """When the newest marker that came back was sent (``clock``)."""
        self._probe: tuple[str, float] | None = None
        """The marker sent and not yet read back on this attachment, with when it was sent."""
        self._applied = asyncio.Event()
        self._fault: str | None = None
        self.faults = 0
        """Events the list failed to take, since start (``warden_revocation_faults``)."""
        self._reliable = False
        self._became_reliable = asyncio.Event()
        self._became_unreliable = asyncio.Event()
        self._failures = 0
        self.next_offset: int | None = None
        """The stream offset the feed reads next (None: none taken yet)."""
        self.counts = dict.fromkeys(
            ("messages", "events", "applied", "expired", "too_old", "invalid", "reread"), 0
        )
        """What the feed read since start: ``messages`` taken, ``events`` in them, ``applied``
        to the list, ``expired`` (past their ``expires_at``), ``too_old`` (in messages written
        before the window), ``invalid`` (skipped), ``reread`` (deliveries of an offset already
        taken, not applied again: a broker that delivers them is counted, never believed)."""
        self.attachments = 0
        """How many times the feed attached to the stream."""
        self._started = clock()
        self._attached = False
        self._blocked_since: float | None = None
        """While the broker blocks publishing: since when (``clock``)."""
        self.markers: AbstractChannel | None = None
        """The channel markers are published on (the worker's publishing connection); None for
        one of the feed's own connection."""

    def fresh(self) -> bool:
        """Whether decisions may rely on the revocation list now."""
        return self.caught_up.is_set() and self._fault is None and self._lag() <= self.max_staleness

    def _lag(self) -> float:
        """How long since the newest marker that came back was sent, not counting the time the
        broker has been blocking publishing with the feed attached. A resource alarm blocks
        every publisher of the cluster, revokers included (the broker reads no more from a
        connection once it has published), and no marker can be sent to show the feed current;
        but a block stops publishers' sockets, not deliveries: the attached consumer goes on
        receiving whatever reaches the stream. So the list is relied on, for the time blocked,
        as it was when the block began; otherwise no allowed job would run through an alarm."""
        since = self._blocked_since
        now = self._clock()
        if since is not None and self._attached:
            now = min(now, max(since, self._last_ok))
        return now - self._last_ok

    def publishing_blocked(self, blocked: bool) -> None:
        """The broker blocks publishing (``True``), or no longer does."""
        now = self._clock()
        if blocked:
            self._blocked_since = now
            return
        since, self._blocked_since = self._blocked_since, None
        if since is not None and self._attached and self._last_ok < since:
            self._last_ok += now - since

    def why_stale(self) -> str:
        """Human text for a wait: what the feed is missing."""
        if self._fault is not None:
            return f"a revocation event could not be applied ({self._fault})"
        if not self.caught_up.is_set():
            return (
                f"the revocation feed is being read to its end: {self.counts['events']} events "
                f"in {self.counts['messages']} messages so far, "
                f"{self._clock() - self._started:.0f}s"
            )
        return (
            f"the revocation feed has not advanced for "
            f"{self._lag():.1f}s (max {self.max_staleness:g}s)"
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

    async def wait_unreliable(self) -> None:
        """Return once the list can no longer be relied on (stale or faulted)."""
        while self._reliable:
            self._became_unreliable.clear()
            await self._became_unreliable.wait()

    async def wait_reliable(self) -> None:
        """Return once the list can be relied on again."""
        while not self._reliable:
            self._became_reliable.clear()
            await self._became_reliable.wait()

    async def follow_forever(self) -> None:
        """Follow the stream; after a break, attach again with backoff. Until cancelled."""
        self._failures = 0
        async with asyncio.TaskGroup() as group:
            watch = group.create_task(self._watch())
            try:
                while True:
                    try:
                        with stuck_as_lost():
                            await self._follow()
                    except _BROKEN as exc:
                        self._detached(exc)
                    except asyncio.CancelledError as exc:
                        # aiormq cancels what waits on a connection the broker closed (541
                        # "Stream coordinator unavailable" without quorum): only a cancellation
                        # of this task ends it.
                        current = asyncio.current_task()
                        if current is None or current.cancelling():
                            raise
                        self._detached(exc)
                    await asyncio.sleep(backoff(0.1, 5.0, self._failures))
            finally:
                watch.cancel()

    async def _watch(self) -> None:
        """Notice when the list turns unreliable or reliable again, and say so once; while the
        stream is first read, say how far it got every :data:`PROGRESS_EVERY` seconds."""
        tick = min(self._probe_every, 1.0)
        said = self._clock()
        while True:
            self._review()
            if not self.caught_up.is_set() and self._clock() - said >= PROGRESS_EVERY:
                said = self._clock()
                log.info("reading the revocation feed", extra=self._progress())
            await asyncio.sleep(tick)

    def _progress(self) -> dict[str, Any]:
        return {
            **self.counts,
            "entries": len(self.revocations),
            "offset": self.next_offset,
            "seconds": round(self._clock() - self._started, 1),
        }

    def _review(self) -> None:
        fresh = self.fresh()
        if fresh == self._reliable:
            return
        self._reliable = fresh
        if fresh:
            self._became_reliable.set()
            log.warning("revocation feed current; jobs are decided again")
        else:
            self._became_unreliable.set()
            if self.caught_up.is_set():
                log.error(
                    "revocation feed not current; no job is decided until it is",
                    extra={"why": self.why_stale()},
                )

    def _detached(self, exc: BaseException) -> None:
        self._failures += 1
        self._probe = None
        if self._attached and self._blocked_since is not None:
            # The time blocked while attached is behind us; from here on, it counts.
            self._last_ok += self._clock() - max(self._blocked_since, self._last_ok)
            self._blocked_since = self._clock()
        self._attached = False
        log.warning(
            "revocation feed lost; jobs wait once it is stale",
            extra={
                "error": describe(exc),
                "max_staleness": self.max_staleness,
                "resume_at": self.next_offset,
            },
        )

    def _faulted(self, exc: BaseException, offset: object, message_id: str | None) -> None:
        self.faults += 1
        self._fault = f"{type(exc).__name__} at offset {offset}"
        self._review()
        log.error(
            "revocation event could not be applied; no job is decided until it is",
            exc_info=exc,
            extra={"offset": offset, "message_id": message_id},
        )

    def _start_at(self) -> int | datetime | str:
        """Where this attachment starts: after the last message taken; on the first, the
        window's start (whole seconds, rounded down: the broker's timestamps are in seconds)."""
        if self.next_offset is not None:
            return self.next_offset
        if self._window is None:
            return "first"
        return datetime.fromtimestamp(int(self._wall() - self._window), UTC)

    async def _follow(self) -> None:
        connection = await open_connection(
            self._url,
            "warden revocation feed",
            self._handshake_timeout,
            heartbeat=self._heartbeat,
        )
        async with connection:
            broken = asyncio.Event()
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.add(lambda *_: broken.set())
            channel.close_callbacks.add(lambda *_: broken.set())
            connection.close_callbacks.add(lambda *_: broken.set())
            await channel.declare_queue(names.REVOCATION_STREAM, passive=True)
            publisher = self.markers or await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            probes = _Probes(broken)
            sent = self._send_probe(publisher, probes)
            if self.next_offset is not None:
                # Where the marker just written stands tells whether the stream is the one read
                # so far: it waits for the marker's confirm (during an alarm, for its end).
                await sent
                if await self._marker_offset(underlay) < self.next_offset:
                    # The stream was deleted and declared again. Read the new one from the
                    # window's start (the entries already held stay).
                    log.warning(
                        "the revocation stream is not the one read so far; reading it afresh",
                        extra={"offset": self.next_offset},
                    )
                    self.next_offset = None
            start = self._start_at()
            self.attachments += 1
            reader = _Reader(self, underlay, broken)
            await underlay.basic_consume(
                names.REVOCATION_STREAM, reader.on_delivery, arguments={names.STREAM_OFFSET: start}
            )
            log.info(
                "revocation feed attached",
                extra={"from": start.isoformat() if isinstance(start, datetime) else start},
            )
            self._attached = True
            waiting = asyncio.ensure_future(broken.wait())
            try:
                while not broken.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(waiting), self._probe_every)
                    if broken.is_set():
                        break
                    await reader.ack_taken()
                    if self._probe is None:
                        self._send_probe(publisher, probes)
                    self.revocations.prune(self._wall())
                    self._watch_size()
            finally:
                waiting.cancel()
                probes.cancel()
            if probes.failure is not None:
                raise probes.failure
            raise FeedBroken("the revocation stream consumer was cancelled or its channel closed")

    async def _marker_offset(self, channel: aiormq.abc.AbstractChannel) -> int:
        """The offset of the marker just sent, read from the stream's last chunk."""
        assert self._probe is not None
        marker = self._probe[0]
        found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def look(delivered: aiormq.abc.DeliveredMessage) -> None:
            headers = delivered.header.properties.headers or {}
            offset = headers.get(names.STREAM_OFFSET)
            mine = headers.get(names.HEADER_MARKER) == marker
            if mine and type(offset) is int and not found.done():
                found.set_result(offset)
            tag = getattr(delivered.delivery, "delivery_tag", 0) or 0
            await channel.basic_ack(tag)

        ok = await channel.basic_consume(
            names.REVOCATION_STREAM, look, arguments={names.STREAM_OFFSET: "last"}
        )
        try:
            async with asyncio.timeout(self.max_staleness):
                return await found
        except TimeoutError:
            raise FeedBroken("the marker just written was not found at the stream's end") from None
        finally:
            await channel.basic_cancel(ok.consumer_tag or "")

    def _send_probe(self, publisher: AbstractChannel, probes: _Probes) -> asyncio.Task[None]:
        """Publish a marker, confirmed, without waiting here: while the broker blocks
        publishing, the confirm waits, and the feed goes on reading. The publish's task."""
        marker = uuid.uuid4().hex
        self._probe = (marker, self._clock())
        return probes.start(
            publish_confirmed(
                publisher.default_exchange,
                aio_pika.Message(b"", headers={names.HEADER_MARKER: marker}, user_id=self._user),
                names.REVOCATION_STREAM,
            )
        )

    def _probe_returned(self) -> None:
        assert self._probe is not None
        self._last_ok = max(self._last_ok, self._probe[1])
        self._probe = None
        if not self.caught_up.is_set() or self._fault is not None:
            # Every event before the marker was applied: a fault from an earlier reading is
            # behind us only now.
            self._fault = None
            if not self.caught_up.is_set():
                log.info("revocation feed read to its end", extra=self._progress())
            self.caught_up.set()
        self._failures = 0
        self._review()

    def take(
        self, properties: aiormq.spec.Basic.Properties, body: bytes, offset: int | None
    ) -> None:
        """One message of the stream: a marker, or events to apply. Raises when the list cannot
        take an event (the feed then faults, and the message is read again)."""
        headers = properties.headers or {}
        if names.HEADER_MARKER in headers:
            probe = self._probe
            if probe is not None and headers[names.HEADER_MARKER] == probe[0]:
                self._probe_returned()
            return
        counts = self.counts
        counts["messages"] += 1
        if not self._believed(properties, offset):
            return
        try:
            events = Revocation.many_from_json(body)
        except InvalidEvent as exc:
            self._invalid(properties.message_id, offset, str(exc))
            return
        now = self._wall()
        applied: list[Revocation] = []
        for event in events:
            counts["events"] += 1
            if isinstance(event, InvalidEvent):
                self._invalid(properties.message_id, offset, str(event))
            elif self.revocations.add(event, now):
                applied.append(event)
            else:
                counts["expired"] += 1
        counts["applied"] += len(applied)
        if self.caught_up.is_set() and applied:
            # While the stream is first read, the summary at its end says it all.
            if len(applied) == 1:
                log.info(
                    "revocation received",
                    extra={"subject": applied[0].subject, "iss": applied[0].issuer},
                )
            else:
                log.info("revocations received", extra={"events": len(applied), "offset": offset})
        self._applied.set()
        self._watch_size()

    def _believed(self, properties: aiormq.spec.Basic.Properties, offset: int | None) -> bool:
        """Whether a message's events count: a trusted user wrote it, within the window."""
        if properties.user_id not in self._trusted:
            # Anyone who may write to the stream could revoke any client, or fill every
            # worker's memory: only a trusted user's event counts.
            self.untrusted += 1
            if properties.user_id not in self._untrusted_publishers:
                self._untrusted_publishers.add(properties.user_id)
                log.warning(
                    "revocation event ignored: not written by a trusted user",
                    extra={"publisher_user": properties.user_id, "offset": offset},
                )
            return False
        written = properties.timestamp
        if (
            self._window is not None
            and isinstance(written, datetime)
            and written.timestamp() < self._wall() - self._window
        ):
            self.counts["too_old"] += 1
            return False
        return True

    def _invalid(self, message_id: str | None, offset: object, error: str) -> None:
        self.counts["invalid"] += 1
        if self.caught_up.is_set() or self.counts["invalid"] <= 10:
            log.error(
                "revocation event skipped: not valid",
                extra={"message_id": message_id, "offset": offset, "error": error},
            )

    def _watch_size(self) -> None:
        """Say once when the list nears ``WARDEN_REVOCATION_MAX_ENTRIES``."""
        limit = self.revocations.max_entries
        if limit is None:
            return
        held = len(self.revocations)
        if not self._near_full and held >= 0.9 * limit:
            self._near_full = True
            log.warning(
                "revocation list nearly full; at the limit, no job is decided",
                extra={"entries": held, "max_entries": limit},
            )
        elif self._near_full and held < 0.8 * limit:
            self._near_full = False


class _Reader:
    """One attachment's consumer: takes each delivery in order, acknowledges them by the half
    prefetch in one ``basic.ack(multiple)``, and stops at the first it cannot take."""

    def __init__(
        self, feed: RevocationFeed, channel: aiormq.abc.AbstractChannel, broken: asyncio.Event
    ) -> None:
        self._feed = feed
        self._channel = channel
        self._broken = broken
        self._unacked = 0
        self._last_tag = 0

    async def on_delivery(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        feed = self._feed
        if self._broken.is_set():
            return  # the consumer is being torn down after a fault: take nothing more
        properties = delivered.header.properties
        offset = (properties.headers or {}).get(names.STREAM_OFFSET)
        if type(offset) is not int:
            offset = None
        tag = getattr(delivered.delivery, "delivery_tag", 0) or 0
        if offset is not None and feed.next_offset is not None and offset < feed.next_offset:
            feed.counts["reread"] += 1
        else:
            try:
                feed.take(properties, delivered.body, offset)
            except Exception as exc:
                # Not acked, and nothing after it is taken: the consumer is dropped and the
                # stream read again from this message; until then no job is decided.
                self._broken.set()
                feed._faulted(exc, offset, properties.message_id)
                return
            if offset is not None:
                feed.next_offset = offset + 1
        self._last_tag = tag
        self._unacked += 1
        if self._unacked >= PREFETCH // 2 or feed._probe is None:
            await self.ack_taken()

    async def ack_taken(self) -> None:
        """Acknowledge every delivery taken so far (the stream's credit: more come)."""
        if self._unacked:
            self._unacked = 0
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await self._channel.basic_ack(self._last_tag, multiple=True)


class _Probes:
    """The marker publishes of one attachment; one that fails breaks the attachment."""

    def __init__(self, broken: asyncio.Event) -> None:
        self._broken = broken
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.failure: BaseException | None = None

    def start(self, publishing: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(publishing)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._closing:
            return
        if task.cancelled():
            failure: BaseException | None = FeedBroken("a marker's publish was cancelled")
        else:
            failure = task.exception()
        if failure is None:
            return
        if self.failure is None:
            self.failure = failure
        self._broken.set()

    def cancel(self) -> None:
        self._closing = True
        for task in set(self._tasks):
            task.cancel()
