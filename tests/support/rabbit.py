"""The tests' own side of the broker: publish jobs, read dead letters, look at queues."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode

from worker import names


class Rabbit:
    """A connection of the test's own, with helpers that await events instead of sleeping."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._to_delete: set[str] = set()

    async def __aenter__(self) -> Rabbit:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        channel = await self.connection.channel()
        for name in self._to_delete:
            await channel.queue_delete(name)
        await self.connection.close()

    def forget_later(self, queue: str) -> None:
        """Delete ``queue`` and its dead-letter queue when the test ends (the retry and
        quarantine queues are shared by every work queue, and stay)."""
        self._to_delete.update((queue, names.dead_letter_queue(queue)))

    async def publish(
        self,
        queue: str,
        body: bytes | dict[str, Any],
        *,
        token: str | None = None,
        headers: dict[str, Any] | None = None,
        message_id: str | None = "auto",
        content_type: str | None = "application/json",
        **properties: Any,
    ) -> str | None:
        """Publish one message straight to ``queue``, confirmed; return its message id."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        mid = uuid.uuid4().hex if message_id == "auto" else message_id
        message = aio_pika.Message(
            body,
            headers=all_headers,
            message_id=mid,
            content_type=content_type,
            delivery_mode=DeliveryMode.PERSISTENT,
            **properties,
        )
        await self.channel.default_exchange.publish(message, queue, mandatory=True)
        return mid

    async def job(
        self,
        queue: str,
        action: str,
        token: str | None,
        payload: dict[str, Any] | None = None,
        **kw: Any,
    ) -> str | None:
        return await self.publish(
            queue, {"action": action, "payload": payload or {}}, token=token, **kw
        )

    async def take(
        self, queue: str, count: int, timeout: float = 15.0
    ) -> list[AbstractIncomingMessage]:
        """Consume and ack ``count`` messages from ``queue``, waiting at most ``timeout``."""
        channel = await self.connection.channel()
        received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        q = await channel.get_queue(queue)
        tag = await q.consume(received.put)
        out: list[AbstractIncomingMessage] = []
        try:
            async with asyncio.timeout(timeout):
                while len(out) < count:
                    message = await received.get()
                    await message.ack()
                    out.append(message)
        finally:
            await q.cancel(tag)
            await channel.close()
        return out

    async def peek(
        self, queue: str, count: int, timeout: float = 15.0
    ) -> list[AbstractIncomingMessage]:
        """The first ``count`` messages of ``queue``, waiting at most ``timeout`` for them, left
        in the queue: taken without an ack, they go back in order when the look ends."""
        channel = await self.connection.channel()
        received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await (await channel.get_queue(queue)).consume(received.put)
        out: list[AbstractIncomingMessage] = []
        try:
            async with asyncio.timeout(timeout):
                while len(out) < count:
                    out.append(await received.get())
        finally:
            await channel.close()
        return out

    async def dead_letters(
        self, queue: str, count: int, timeout: float = 15.0
    ) -> list[AbstractIncomingMessage]:
        """The next ``count`` dead letters of ``queue``."""
        return await self.take(names.dead_letter_queue(queue), count, timeout)

    async def declare_work_queue(
        self, queue: str, delivery_limit: int = 5, retry_tiers: tuple[int, ...] = (50,)
    ) -> None:
        """Declare ``queue`` and its dead-letter queue as a worker would, so jobs can wait in it
        before any worker runs."""
        from worker.amqp.topology import declare_topology

        self.forget_later(queue)
        channel = await self.connection.channel()
        await declare_topology(channel, (queue,), delivery_limit, retry_tiers)
        await channel.close()

    async def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting those delivered and unacked)."""
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0
        finally:
            await channel.close()

    async def until_depth(
        self, queue: str, count: int, timeout: float = 15.0, *, at_least: bool = False
    ) -> None:
        """Return once ``queue`` holds ``count`` ready messages (or more, ``at_least``). The
        broker is another process with no event to wait on: it is asked, every 50 ms."""
        async with asyncio.timeout(timeout):
            while True:
                depth = await self.depth(queue)
                if depth == count or (at_least and depth > count):
                    return
                await asyncio.sleep(0.05)

    async def get_all(self, queue: str) -> list[AbstractIncomingMessage]:
        """Take every message ready in ``queue`` now (acked), in order."""
        channel = await self.connection.channel()
        out: list[AbstractIncomingMessage] = []
        try:
            q = await channel.get_queue(queue)
            while (message := await q.get(fail=False)) is not None:
                await message.ack()
                out.append(message)
        finally:
            await channel.close()
        return out
