"""Await a broker blocking and unblocking a connection under a resource alarm, as events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

_AIORMQ_LOGGER = "aiormq.connection"


class BlockedWatch(logging.Handler):
    """The Connection.Blocked and Connection.Unblocked frames one connection receives.

    aiormq acts on both frames (it holds back writes while blocked) but announces them only in a
    WARNING of its own logger, with the connection as the first argument: this handler listens
    there and keeps the frames of the one connection it was given.
    """

    def __init__(self, connection: AbstractConnection) -> None:
        super().__init__(logging.WARNING)
        if connection.transport is None:
            raise ValueError("watch a connection that is open")
        self._connection = connection.transport.connection
        self.events: list[tuple[str, str | None]] = []
        """("blocked", reason), ("unblocked", None), and ("closed", why) once it is closed."""
        self._changed = asyncio.Event()
        self._logger = logging.getLogger(_AIORMQ_LOGGER)
        self._level = self._logger.level
        connection.close_callbacks.add(self._on_close)

    def emit(self, record: logging.LogRecord) -> None:
        if not isinstance(record.args, tuple) or not record.args:
            return
        if record.args[0] is not self._connection:
            return
        template = str(record.msg)
        if template.endswith("was blocked by: %r"):
            self._record("blocked", str(record.args[1]))
        elif template.endswith("was unblocked"):
            self._record("unblocked", None)

    def _on_close(self, _: object, exc: BaseException | None = None) -> None:
        self._record("closed", repr(exc))

    def _record(self, kind: str, detail: str | None) -> None:
        self.events.append((kind, detail))
        self._changed.set()

    def attach(self) -> None:
        if logging.root.manager.disable >= logging.WARNING:
            raise RuntimeError(
                "logging.disable() hides the WARNING in which aiormq announces connection.blocked"
            )
        if self._logger.getEffectiveLevel() > logging.WARNING:
            self._logger.setLevel(logging.WARNING)
        self._logger.addHandler(self)

    def detach(self) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def __enter__(self) -> BlockedWatch:
        self.attach()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.detach()

    @property
    def is_blocked(self) -> bool:
        """Whether the last frame was Connection.Blocked (and the connection is still open)."""
        return bool(self.events) and self.events[-1][0] == "blocked"

    @property
    def is_closed(self) -> bool:
        return any(kind == "closed" for kind, _ in self.events)

    async def blocked(self, timeout: float, reason: str | None = None) -> str:
        """Wait until the broker has blocked the connection (for ``reason`` if given); the
        reason it gave."""
        wanted = "connection.blocked" + ("" if reason is None else f" for {reason!r}")
        found = await self._wait(
            lambda: next(
                (why for kind, why in self.events if kind == "blocked" and reason in (None, why)),
                None,
            ),
            wanted,
            timeout,
        )
        return found or ""

    async def unblocked(self, timeout: float) -> None:
        """Wait until the broker has unblocked the connection it blocked last."""
        await self._wait(
            lambda: bool(self.events) and self.events[-1][0] == "unblocked",
            "connection.unblocked",
            timeout,
        )

    async def unblocked_or_closed(self, timeout: float) -> None:
        """Wait until the connection is no longer blocked: unblocked, or closed by either side."""
        await self._wait(lambda: not self.is_blocked, "connection.unblocked", timeout)

    async def _wait(self, found: Callable[[], object], wanted: str, timeout: float) -> Any:
        try:
            async with asyncio.timeout(timeout):
                while not (result := found()):
                    self._changed.clear()
                    await self._changed.wait()
                return result
        except TimeoutError:
            raise TimeoutError(
                f"the broker did not send {wanted} within {timeout:g} s "
                f"(frames so far: {self.events or 'none'})"
            ) from None


class BlockedPublisher:
    """A connection that publishes until the broker blocks it, to see an alarm take effect.

    RabbitMQ blocks, and says so, only a connection that publishes during an alarm; once blocked,
    it reads nothing more from it, not even a close. So the publisher is kept until the alarm is
    lifted, then closed.
    """

    ROUTING_KEY = "warden.nowhere"
    """Routed nowhere: the broker drops what the publisher sends before it is blocked."""

    REPUBLISH_SECONDS = 0.2

    def __init__(self, connection: AbstractConnection, channel: AbstractChannel) -> None:
        self.connection = connection
        self.channel = channel
        self.watch = BlockedWatch(connection)
        self.watch.attach()

    @classmethod
    async def open(cls, url: str, timeout: float) -> BlockedPublisher:
        connection = await aio_pika.connect(url, timeout=timeout)
        channel = await connection.channel(publisher_confirms=False)
        return cls(connection, channel)

    async def wait_blocked(self, timeout: float, reason: str | None = None) -> str:
        """Publish until the broker blocks the connection (for ``reason`` if given): an alarm
        reaches the connection a moment after ``rabbitmqctl`` returns, so the first publish
        may still pass. Return the reason the broker gave."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.watch.is_blocked:
                await self.channel.default_exchange.publish(
                    aio_pika.Message(b""), self.ROUTING_KEY, mandatory=False
                )
            try:
                return await self.watch.blocked(
                    min(self.REPUBLISH_SECONDS, deadline - loop.time()), reason
                )
            except TimeoutError:
                if loop.time() >= deadline:
                    raise

    async def close(self, timeout: float) -> None:
        """Wait for the broker to unblock the connection if it blocked it, then close it. A
        connection the broker has closed meanwhile (its application stopped) is let go."""
        try:
            await self.watch.unblocked_or_closed(timeout)
        finally:
            self.watch.detach()
            await close_soon(self.connection)

    async def abandon(self) -> None:
        """Close the connection without waiting for the broker (gone, or never to unblock)."""
        self.watch.detach()
        await close_soon(self.connection)


async def close_soon(connection: AbstractConnection, timeout: float = 5.0) -> None:
    """Close a connection in bounded time, even one the broker no longer reads (blocked,
    frozen, gone) or one of an event loop that has ended (RuntimeError)."""
    with contextlib.suppress(TimeoutError, OSError, RuntimeError):
        async with asyncio.timeout(timeout):
            await connection.close()
