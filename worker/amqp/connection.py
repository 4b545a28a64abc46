"""Connections to the broker, and the errors that mean the link to it failed.

``WARDEN_BROKER_URL`` may list several nodes of one cluster. :func:`connect` gives a connection
that reconnects by itself and, on each attempt after the first, moves on to the next address: a
lost node is left at once, and a node that stops answering is left once the heartbeat says so.
What its channels declared is declared again on a new connection only where it is missing (see
:class:`FailoverChannel`). :func:`open_connection` is the same without reconnecting, for tools.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection
from aio_pika.robust_channel import RobustChannel
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from worker.errors import BrokerUnresponsive
from worker.settings import DEFAULT_HEARTBEAT_SECONDS, broker_addresses
from worker.support.backoff import backoff

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

UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    aiormq.exceptions.AMQPConnectionError,
)
"""What connecting to one address raises when its node is down, refuses or does not answer."""

# aiormq gives up on a connection once no frame came for (heartbeat + 1) times this; its default
# of 3 leaves a frozen node only after more than three heartbeats. The broker sends a frame at
# least every half heartbeat on a live connection, so two still allow four missed ones.
aiormq.Connection.HEARTBEAT_GRACE_MULTIPLIER = 2

RECONNECT_SECONDS = 1.0
"""The pause between two attempts of a connection that lost its node (each to the next
address)."""


def describe(exc: BaseException) -> str:
    """An AMQP error's type and the broker's reply text; never a message's content."""
    texts = [a for a in exc.args if isinstance(a, str | int)][:2]
    if isinstance(exc, aio_pika.exceptions.DeliveryError) or not texts:
        return type(exc).__name__
    return f"{type(exc).__name__}: " + " ".join(str(t) for t in texts)


@contextmanager
def stuck_as_lost() -> Iterator[None]:
    """Turn the CancelledError aiormq raises in whatever waits on a connection it found stuck
    (no frame within the heartbeat's grace) into a ConnectionError; a cancellation of the
    running task itself goes on as it is."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise ConnectionError("the broker stopped answering (no heartbeat)") from None


def addresses(url: str | Sequence[str | URL], heartbeat: int) -> tuple[URL, ...]:
    """The addresses of ``url`` (one URL, a comma-separated list, or a sequence of URLs), each
    asking for ``heartbeat`` unless it names a heartbeat of its own (``?heartbeat=``)."""
    listed = broker_addresses(url) if isinstance(url, str) else tuple(url)
    if not listed:
        raise ValueError("no broker address")
    urls = [URL(u) for u in listed]
    return tuple(
        u if "heartbeat" in u.query else u.update_query(heartbeat=str(heartbeat)) for u in urls
    )


def shown(url: URL) -> str:
    """An address as logs show it: without its password."""
    return str(url.with_password("******") if url.password else url)


def connect_timeout(heartbeat: int, handshake_timeout: float | None = None) -> float:
    """How long one address may take to answer a handshake before the next is tried
    (``WARDEN_BROKER_HANDSHAKE_TIMEOUT_SECONDS``; unset, the heartbeat, at least 5 s): a frozen
    node, or one out of file handles, accepts the TCP connection and never answers."""
    if handshake_timeout is not None:
        return handshake_timeout
    return float(max(heartbeat, 5))


HANDSHAKE_NOTICE = 2.0
"""After this many seconds without the broker completing the handshake, a connection says it
waits."""


@asynccontextmanager
async def handshake(name: str, seconds: float) -> AsyncIterator[None]:
    """Bound the handshake of the connection called ``name`` by ``seconds``: a warning
    once it has waited :data:`HANDSHAKE_NOTICE` seconds (half the bound, if less), and
    :class:`~worker.errors.BrokerUnresponsive` when the broker has not answered by then."""
    notice = asyncio.get_running_loop().call_later(
        min(HANDSHAKE_NOTICE, seconds / 2),
        lambda: log.warning(
            "waiting for the broker to complete the handshake",
            extra={"connection": name, "timeout": seconds},
        ),
    )
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise BrokerUnresponsive(
            f"the broker did not complete the handshake of {name!r} within {seconds:g}s"
        ) from None
    finally:
        notice.cancel()


def _is_stream(queue: Any) -> bool:
    return bool((queue.arguments or {}).get("x-queue-type") == "stream")


class FailoverChannel(RobustChannel):
    """A robust channel that, reopened on a new connection, declares again only the queues and
    exchanges that are missing there.

    aio-pika declares everything again (and binds again) on every reopen. While a cluster node
    is frozen, declaring and binding hang on every node until the frozen one is declared down
    (a minute and more), whereas a passive declare answers at once: so after a failover
    consumption does not wait on what exists, and a queue deleted meanwhile is still declared
    again as it was."""

    async def _on_open(self) -> None:
        if not hasattr(self, "default_exchange"):  # the first opening: nothing to restore
            await super()._on_open()
            return
        exchanges, queues = self._exchanges, self._queues
        # A stream is never declared again: even a passive declare waits for its leader, which
        # may be on the node that was lost (whoever reads it declares it passively, and waits).
        probed = [name for name, held in queues.items() if not any(map(_is_stream, held))]
        missing_exchanges, missing_queues = await self._missing(list(exchanges), probed)
        self._exchanges = type(exchanges)(
            None, {k: v for k, v in exchanges.items() if k in missing_exchanges}
        )
        self._queues = type(queues)(set, {k: v for k, v in queues.items() if k in missing_queues})
        try:
            await super()._on_open()
        finally:
            exchanges.update(self._exchanges)
            for name, declared in self._queues.items():
                queues[name] |= declared
            self._exchanges, self._queues = exchanges, queues

    async def _missing(self, exchanges: list[str], queues: list[str]) -> tuple[set[str], set[str]]:
        """Which of these are not on the broker, by passive declares on a channel of their own
        (a miss closes it)."""
        transport = self._connection.transport
        if transport is None:
            raise RuntimeError("no connection to probe the broker on")
        missing: tuple[set[str], set[str]] = (set(), set())
        probe = await transport.connection.channel()
        try:
            for kind, name in [(0, e) for e in exchanges] + [(1, q) for q in queues]:
                try:
                    if kind == 0:
                        await probe.exchange_declare(name, passive=True)
                    else:
                        await probe.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    missing[kind].add(name)
                    probe = await transport.connection.channel()
        finally:
            if not probe.is_closed:
                await probe.close()
        return missing


class FailoverConnection(RobustConnection):
    """A robust connection over several addresses: each attempt after the first (a reconnect
    after the node was lost, or after an attempt that failed) goes to the next address."""

    CHANNEL_CLASS = FailoverChannel

    def __init__(self, urls: tuple[URL, ...], start: int, purpose: str, **kwargs: Any) -> None:
        super().__init__(urls[start], **kwargs)
        self._urls = urls
        self._index = start
        self._attempted = False
        self.purpose = purpose

    @property
    def address(self) -> str:
        """The address in use or being tried, without its password."""
        return shown(self.url)

    async def _RobustConnection__connect_transport(self) -> None:  # noqa: N802 - aio-pika's name
        if self._attempted:
            self._index = (self._index + 1) % len(self._urls)
            self.url = self._urls[self._index]
            log.warning(
                "connecting to the broker again",
                extra={"connection": self.purpose, "address": self.address},
            )
        self._attempted = True
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        if self._index or len(self._urls) > 1:
            log.info(
                "connected to the broker",
                extra={"connection": self.purpose, "address": self.address},
            )


async def connect(
    url: str | Sequence[str | URL],
    purpose: str,
    *,
    heartbeat: int = DEFAULT_HEARTBEAT_SECONDS,
    worker_id: str | None = None,
    handshake_timeout: float | None = None,
) -> Connection:
    """A connection named for its ``purpose`` (``consuming``, ``publishing``...) to the first
    address of ``url`` that answers, trying them in turn with backoff until one does; it
    reconnects by itself, to the next address each time (:class:`FailoverConnection`)."""
    urls = addresses(url, heartbeat)
    name = f"warden {purpose}" + (f" {worker_id}" if worker_id else "")
    timeout = connect_timeout(heartbeat, handshake_timeout)
    failures = 0
    while True:
        for start, address in enumerate(urls):
            connection = FailoverConnection(
                urls,
                start,
                purpose,
                client_properties={"connection_name": name},
                reconnect_interval=RECONNECT_SECONDS,
            )
            try:
                async with handshake(name, timeout):
                    await connection.connect(timeout=timeout)
            except asyncio.CancelledError:
                # A stop signal while connecting: the task of reconnecting outlives a
                # cancellation, and would keep the process from ending.
                await connection.close()
                raise
            except UNREACHABLE as exc:
                await connection.close()
                log.warning(
                    "broker unreachable",
                    extra={
                        "connection": purpose,
                        "address": shown(address),
                        "error": describe(exc),
                    },
                )
                continue
            return connection
        failures += 1
        pause = backoff(0.5, 15.0, failures - 1)
        log.warning(
            "no broker address answers; retrying",
            extra={"connection": purpose, "attempt": failures, "retry_in": round(pause, 1)},
        )
        await asyncio.sleep(pause)


async def open_connection(
    url: str | Sequence[str | URL],
    name: str,
    handshake_timeout: float | None = None,
    *,
    heartbeat: int = DEFAULT_HEARTBEAT_SECONDS,
) -> AbstractConnection:
    """A plain connection (no reconnecting) called ``name`` to the first address of ``url``
    that answers, each handshake bounded as :func:`connect_timeout` says; the error of the last
    one when none does."""
    urls = addresses(url, heartbeat)
    timeout = connect_timeout(heartbeat, handshake_timeout)
    error: BaseException | None = None
    for address in urls:
        try:
            async with handshake(name, timeout):
                return await aio_pika.connect(
                    address, client_properties={"connection_name": name}, timeout=timeout
                )
        except UNREACHABLE as exc:
            error = exc
            if len(urls) > 1:
                log.warning(
                    "broker unreachable; trying the next address",
                    extra={"connection": name, "address": shown(address), "error": describe(exc)},
                )
    assert error is not None
    raise error


async def probe(url: str) -> None:
    """Connect and close: a real AMQP handshake, not just an open port (10 s at most)."""
    connection = await open_connection(url, "warden probe")
    await connection.close()
