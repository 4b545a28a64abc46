"""Connections to the broker, and the errors that mean the link to it failed."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from worker.support.backoff import wait_backoff

log = logging.getLogger("warden.worker")

Connection = AbstractRobustConnection
"""A connection that reconnects by itself, as the rest of warden holds it."""
Channel = AbstractChannel
"""A channel, as the rest of warden holds it."""

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    RuntimeError,
)
"""What an operation on a channel raises when the channel or its connection is gone (aiormq
raises RuntimeError on a closed channel, ConnectionError on a closed socket)."""


def describe(exc: BaseException) -> str:
    """An AMQP error's type and the broker's reply text; never a message's content."""
    texts = [a for a in exc.args if isinstance(a, str | int)][:2]
    if isinstance(exc, aio_pika.exceptions.DeliveryError) or not texts:
        return type(exc).__name__
    return f"{type(exc).__name__}: " + " ".join(str(t) for t in texts)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "broker unreachable; retrying",
        extra={"attempt": state.attempt_number, "error": describe(error) if error else None},
    )


class _Robust(aio_pika.RobustConnection):
    """A robust connection that closes itself when its connecting is cancelled (a stop signal
    while the broker does not answer): its task of reconnecting survives a cancellation, and
    would keep the process from ending."""

    async def connect(self, timeout: aiormq.abc.TimeoutType = None) -> None:  # noqa: ASYNC109
        try:
            await super().connect(timeout)
        except asyncio.CancelledError:
            await self.close()
            raise


async def connect(url: str, worker_id: str) -> AbstractRobustConnection:
    """A robust connection; until the broker first answers, keep trying with backoff."""
    async for attempt in AsyncRetrying(
        wait=wait_backoff(0.5, 15.0),
        retry=retry_if_exception_type((OSError, aiormq.exceptions.AMQPConnectionError)),
        before_sleep=_log_retry,
    ):
        with attempt:
            return await aio_pika.connect_robust(
                url,
                client_properties={"connection_name": f"warden {worker_id}"},
                connection_class=_Robust,
            )
    raise AssertionError("unreachable: the retry loop only ends by returning or raising")


async def probe(url: str) -> None:
    """Connect and close: a real AMQP handshake, not just an open port (10 s at most)."""
    connection = await aio_pika.connect(url, timeout=10)
    await connection.close()
