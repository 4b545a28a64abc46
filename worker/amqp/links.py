"""A worker's two connections to the broker, and what each is doing: one consumes, one publishes.

RabbitMQ blocks a connection that publishes during a resource alarm (memory or disk) and then
reads nothing more from it until the alarm clears: not a publish, not an ack. Were dead letters,
retry and wait copies and the feed's markers published on the connection warden consumes on,
the first of them would stop every ack, and with them every decision, allowed jobs included. So
they leave on a connection of their own (:class:`Publishing`), and the consuming connection,
which never publishes, is never blocked.

A :class:`Link` knows whether its connection is up and whether the broker blocks it, as
``/readyz`` reports. aiormq acts on ``connection.blocked`` (it announces it only in a log line)
and offers no callback, so each underlying connection's two frame handlers are wrapped, by their
(private) names, after every connect; ``tests/test_broker_alarms.py`` fails should aiormq rename
them.

While publishing is blocked, a delivery whose outcome is a publish (a denied job's dead letter,
a retry or a wait copy) waits, unacked, for the broker to unblock: nothing is lost. It keeps its
prefetch credit while it waits, so the :class:`CreditKeeper` registers the consumers again each
time half a prefetch more of them gather (a consumer's prefetch counts only its own deliveries),
until ``WARDEN_BLOCKED_MAX_WAITING`` wait; allowed jobs go on being decided and run meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractRobustChannel

from worker.amqp.connection import TRANSPORT_ERRORS, Channel, Connection, connect

ConsumingChannel = AbstractRobustChannel
"""The channel a worker consumes on: it reopens, and its consumers are registered again, after
its connection comes back."""

log = logging.getLogger("warden.worker")

CLOSE_SECONDS = 5.0
"""How long closing the publishing connection may take: the broker answers a close at once,
unless it blocks the connection, and then it never reads the close."""

_ON_BLOCKED = "_Connection__handle_connection_blocked"
_ON_UNBLOCKED = "_Connection__handle_connection_unblocked"
"""aiormq's handlers of the two frames, as their names are mangled."""


class Link:
    """A robust connection to the broker, with what ``/readyz`` says of it: ``role`` names it
    (``consuming``, ``publishing``)."""

    def __init__(self, connection: Connection, role: str) -> None:
        self.connection = connection
        self.role = role
        self.blocked: str | None = None
        """The broker's reason while it blocks this connection (``low on memory``), else None."""
        self.blocked_since: float | None = None
        """When the block began (``time.monotonic``)."""
        self.flowing = asyncio.Event()
        """Set while the broker does not block the connection."""
        self.flowing.set()
        self.listeners: list[Callable[[bool], None]] = []
        """Told ``True`` when the broker blocks the connection, ``False`` when the block ends."""
        connection.reconnect_callbacks.add(self._reconnected)
        connection.close_callbacks.add(self._lost)
        self._watch()

    def why_not_ready(self) -> str | None:
        """Why this connection cannot do its work now, or None."""
        if self.connection.is_closed or not self.connection.connected.is_set():
            return f"the {self.role} connection to the broker is lost; reconnecting"
        if self.blocked is not None:
            return f"the broker blocks the {self.role} connection: {self.blocked}"
        return None

    def _reconnected(self, *_: Any) -> None:
        self._watch()

    def _lost(self, *_: Any) -> None:
        # Blocking is a state of one TCP connection: a new one starts unblocked.
        self._unblocked(None)

    def _watch(self) -> None:
        transport = self.connection.transport
        if transport is None:
            return
        underlay = transport.connection
        on_blocked = getattr(underlay, _ON_BLOCKED)
        on_unblocked = getattr(underlay, _ON_UNBLOCKED)

        async def blocked(frame: aiormq.spec.Connection.Blocked) -> None:
            await on_blocked(frame)
            self._blocked(frame.reason or "no reason given")

        async def unblocked(frame: aiormq.spec.Connection.Unblocked) -> None:
            await on_unblocked(frame)
            self._unblocked(frame)

        setattr(underlay, _ON_BLOCKED, blocked)
        setattr(underlay, _ON_UNBLOCKED, unblocked)

    def _blocked(self, reason: str) -> None:
        if self.blocked is not None:
            return
        self.blocked, self.blocked_since = reason, time.monotonic()
        self.flowing.clear()
        log.error(
            "the broker blocks publishing (a resource alarm); allowed jobs go on, the others "
            "wait unacked for it to end",
            extra={"connection": self.role, "reason": reason},
        )
        for listener in self.listeners:
            listener(True)

    def _unblocked(self, frame: object) -> None:
        if self.blocked is None:
            return
        since = self.blocked_since or time.monotonic()
        self.blocked, self.blocked_since = None, None
        self.flowing.set()
        log.warning(
            "the broker no longer blocks publishing"
            if frame is not None
            else "the blocked connection is gone; publishing starts again on a new one",
            extra={"connection": self.role, "blocked_seconds": round(time.monotonic() - since, 3)},
        )
        for listener in self.listeners:
            listener(False)


class Publishing(Link):
    """The connection and confirm channel warden publishes its copies and markers on; counts
    the publishes under way, which wait for the broker while it blocks them."""

    def __init__(self, connection: Connection, channel: Channel) -> None:
        super().__init__(connection, "publishing")
        self.channel = channel
        self.waiting = 0
        """Deliveries whose settling publishes now (all of them wait while blocked)."""
        self.on_waiting: Callable[[int], None] | None = None

    @classmethod
    async def open(
        cls,
        url: str | Sequence[str],
        worker_id: str,
        heartbeat: int,
        handshake_timeout: float | None = None,
    ) -> Publishing:
        connection = await connect(
            url,
            "publishing",
            heartbeat=heartbeat,
            worker_id=worker_id,
            handshake_timeout=handshake_timeout,
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await connection.close()
            raise
        return cls(connection, channel)

    async def close(self) -> None:
        await close_bounded(self.connection)

    @contextlib.asynccontextmanager
    async def settling(self) -> AsyncIterator[None]:
        """Around the publishes that settle one delivery: while the broker blocks publishing,
        first wait for it to end. What would be sent meanwhile would wait in the socket, where
        a worker stopped during the block could not take it back, and the broker would take it
        after the block, as well as the original its worker never acked."""
        self.waiting += 1
        if self.on_waiting is not None:
            self.on_waiting(self.waiting)
        try:
            await self.flowing.wait()
            yield
        finally:
            self.waiting -= 1


async def close_bounded(connection: Connection) -> None:
    """Close a connection that has published; one the broker blocks, and so does not read, is
    left after :data:`CLOSE_SECONDS` (its socket closes with the process)."""
    with contextlib.suppress(TimeoutError, *TRANSPORT_ERRORS):
        async with asyncio.timeout(CLOSE_SECONDS):
            await connection.close()


class CreditKeeper:
    """While publishing is blocked, keeps prefetch credit for allowed jobs: each time ``step``
    more deliveries wait on the publisher, ``renew`` registers the consumers again (a new
    consumer's prefetch does not count the deliveries of the one before), as long as at most
    ``bound`` wait. Past the bound, consumption stops once the prefetch is taken: that many
    deliveries held is the most a worker keeps in memory for a blocked broker."""

    def __init__(
        self,
        publishing: Publishing,
        renew: Callable[[], Awaitable[None]],
        *,
        step: int,
        bound: int,
    ) -> None:
        self._publishing = publishing
        self._renew = renew
        self._step = max(1, step)
        self._bound = bound
        self._renewed_at = 0
        self._told_full = False
        self._tasks: set[asyncio.Task[None]] = set()
        publishing.on_waiting = self._changed
        publishing.listeners.append(self._block_changed)

    def _block_changed(self, blocked: bool) -> None:
        self._renewed_at = 0
        self._told_full = False
        if blocked:
            self._changed(self._publishing.waiting)

    def _changed(self, waiting: int) -> None:
        if self._publishing.blocked is None or waiting < self._renewed_at + self._step:
            return
        if waiting > self._bound:
            if not self._told_full:
                self._told_full = True
                log.error(
                    "WARDEN_BLOCKED_MAX_WAITING deliveries wait for the blocked broker; no more "
                    "are taken until it unblocks",
                    extra={"waiting": waiting, "max_waiting": self._bound},
                )
            return
        self._renewed_at = waiting
        task = asyncio.ensure_future(self._renew())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in set(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
