"""Publishing jobs: :class:`Publisher` (``from worker import Publisher``), on which ``warden
publish`` and every helper that sends jobs is built.

Jobs enter through ``warden.jobs`` (the one exchange a publisher's broker user may write to),
routed by the work queue's name, with ``mandatory`` and publisher confirms. Confirms are
awaited in a window: up to ``window`` jobs are on the wire at once, each reported published
only once the broker confirmed it. A refusal comes back as a
:class:`~worker.errors.JobRefused` that names the broker's reason.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, DeliveryMode

from worker import errors, names
from worker.amqp.connection import (
    TRANSPORT_ERRORS,
    UNREACHABLE,
    addresses,
    describe,
    open_connection,
)
from worker.auth.credentials import TokenLike, token_source
from worker.auth.proof import ProofKey
from worker.pipeline.delivery import job_body, job_headers
from worker.settings import DEFAULT_HEARTBEAT_SECONDS

_BROKER_ERRORS: tuple[type[BaseException], ...] = (*UNREACHABLE, *TRANSPORT_ERRORS)
"""What connecting, or publishing on a channel, raises when the broker refuses or is gone."""

WINDOW = 256
"""Jobs awaiting their confirm at once: confirms are awaited in a window, not one by one."""


@dataclass(frozen=True)
class NewJob:
    """A job to publish: its action and payload; its message id (a UUID unless given) and queue
    (the publisher's unless given); headers to add (``traceparent``, say)."""

    action: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    queue: str | None = None
    headers: Mapping[str, Any] | None = None


def job_message(
    action: str,
    payload: Mapping[str, Any],
    token: str,
    *,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    proof_key: ProofKey | None = None,
    queue: str | None = None,
) -> aio_pika.Message:
    """A persistent job message (``docs/jobs.md``) carrying ``token`` as a Bearer credential.

    With ``proof_key`` (the key the token is bound to by ``cnf.jkt``) the message also carries
    the ``x-warden-proof`` of ``docs/proof-of-possession.md``, for ``queue``, the queue it is
    published to.
    """
    if proof_key is not None and not queue:
        raise ValueError("a proof is signed for one queue: pass queue= with proof_key=")
    body = job_body(action, payload)
    mid = message_id or str(uuid.uuid4())
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=mid,
        timestamp=datetime.now(UTC),
        headers=job_headers(
            token,
            message_id=mid,
            action=action,
            queue=queue or "",
            body=body,
            proof_key=proof_key,
            headers=headers,
        ),
    )


class Publisher:
    """Publishes jobs through ``warden.jobs``, each confirmed by the broker.

    ::

        async with Publisher(url, token=ClientCredentials(...), queue="jobs") as publisher:
            job_id = await publisher.publish("reports.generate", {"report": "q3"})

    ``token`` is a token, a :class:`~worker.auth.credentials.TokenSource` (a
    :class:`~worker.auth.credentials.ClientCredentials` grant fetches the next token before the
    current one expires) or a function returning one; it is asked once per job. With
    ``proof_key`` every job carries its proof of possession (``x-warden-proof``) for a token
    bound to that key. :meth:`publish` returns once the broker confirmed the job; concurrent
    calls, and :meth:`publish_many`, keep up to ``window`` jobs in flight.
    """

    def __init__(
        self,
        broker_url: str,
        token: TokenLike,
        *,
        queue: str | None = None,
        proof_key: ProofKey | None = None,
        window: int = WINDOW,
        connection_name: str = "warden publisher",
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._url = broker_url
        self._source = token_source(token)
        self.queue = queue
        self.proof_key = proof_key
        self._window = asyncio.Semaphore(window)
        self._name = connection_name
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._opening = asyncio.Lock()

    async def __aenter__(self) -> Self:
        urls = addresses(self._url, DEFAULT_HEARTBEAT_SECONDS)
        try:
            self._connection = await open_connection(urls, self._name)
        except aiormq.exceptions.ProbableAuthenticationError:
            raise errors.JobAccessRefused(
                f"the broker refused the login of user {urls[0].user or 'guest'!r}"
            ) from None
        except _BROKER_ERRORS as exc:
            where = ", ".join(f"{url.host}:{url.port}" for url in urls)
            raise errors.PublishFailed(
                f"cannot reach the broker at {where}: {describe(exc)}"
            ) from None
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def publish(
        self,
        action: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish one job; return its message id once the broker confirmed it, or raise
        :class:`~worker.errors.JobRefused` naming why it did not."""
        async with self._window:
            return await self._send(NewJob(action, payload or {}, message_id, queue, headers))

    async def publish_many(
        self, jobs: Iterable[NewJob], *, on_confirmed: Callable[[str], None] | None = None
    ) -> list[str]:
        """Publish ``jobs`` with up to ``window`` awaiting their confirm; return their message
        ids once every one is confirmed, in order. After a refusal no further job is sent, and
        the :class:`~worker.errors.JobRefused` raised lists in ``confirmed`` the ids that were
        published all the same. ``on_confirmed`` is called with each id as it is confirmed."""
        confirmed: dict[int, str] = {}
        failed: list[Exception] = []

        async def one(index: int, job: NewJob) -> None:
            try:
                confirmed[index] = await self._send(job)
            except Exception as exc:  # raised below, once the jobs in flight are settled
                failed.append(exc)
            else:
                if on_confirmed is not None:
                    on_confirmed(confirmed[index])
            finally:
                self._window.release()

        await self._in_window((one(index, job) for index, job in enumerate(jobs)), failed)
        ids = [confirmed[index] for index in sorted(confirmed)]
        if failed:
            first = failed[0]
            if isinstance(first, errors.JobRefused):
                first.confirmed = ids
            raise first
        return ids

    async def _in_window(
        self, sends: Iterator[Coroutine[Any, Any, None]], failed: list[Exception]
    ) -> None:
        """Run ``sends``, each once the window has room (each releases it when done); stop
        starting new ones once ``failed`` holds anything, and wait for those started."""
        flying: set[asyncio.Task[None]] = set()
        try:
            for send in sends:
                await self._window.acquire()
                if failed:
                    self._window.release()
                    send.close()
                    break
                task = asyncio.create_task(send)
                flying.add(task)
                task.add_done_callback(flying.discard)
            if flying:
                await asyncio.wait(set(flying))
        finally:
            for task in flying:
                task.cancel()

    async def _send(self, job: NewJob) -> str:
        queue = job.queue or self.queue
        if not queue:
            raise ValueError("no queue: give Publisher(queue=...) or the job's queue")
        mid = job.message_id or str(uuid.uuid4())
        token = await self._source.token()
        message = job_message(
            job.action,
            job.payload,
            token,
            message_id=mid,
            headers=job.headers,
            proof_key=self.proof_key,
            queue=queue,
        )
        try:
            exchange = await self._jobs_exchange()
            confirmation = await exchange.publish(message, queue, mandatory=True)
        except _BROKER_ERRORS as exc:
            raise _refusal(exc, mid, queue) from None
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise errors.JobNacked(
                f"job {mid} to queue {queue!r} was not confirmed ({type(confirmation).__name__})",
                message_id=mid,
            )
        return mid

    async def _jobs_exchange(self) -> AbstractExchange:
        """``warden.jobs`` on an open confirming channel; a channel the broker closed (after a
        refusal) is replaced."""
        if self._connection is None:
            raise RuntimeError("use the Publisher as an async context manager")
        async with self._opening:
            if self._channel is None or self._channel.is_closed or self._exchange is None:
                self._channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._exchange = await self._channel.get_exchange(names.JOBS_EXCHANGE, ensure=False)
            return self._exchange


def _refusal(exc: BaseException, message_id: str, queue: str) -> errors.JobRefused:
    """What the broker's answer to a publish means, in words that name it."""
    job = f"job {message_id} to queue {queue!r}"
    exchange = names.JOBS_EXCHANGE
    if isinstance(exc, aiormq.exceptions.PublishError):
        frame = exc.frame
        code = getattr(frame, "reply_code", None) or 312
        text = getattr(frame, "reply_text", None) or "NO_ROUTE"
        return errors.JobUnroutable(
            f"{job}: the broker returned it as unroutable ({code} {text}): no queue {queue!r} "
            f"is bound to {exchange}; a worker declares and binds its queues when it starts",
            message_id=message_id,
        )
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        frame_name = type(exc.frame).__name__ if exc.frame is not None else "no frame"
        return errors.JobNacked(
            f"{job}: the broker did not accept it (basic.{frame_name.lower()}): a queue that "
            "rejects publishes when full, or a broker fault",
            message_id=message_id,
        )
    said = " ".join(str(a) for a in exc.args if isinstance(a, str)) or describe(exc)
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return errors.JobAccessRefused(
            f"{job}: the broker refused it (403 {said}); the publisher's broker user needs "
            f"write permission on {exchange} (see warden permissions)",
            message_id=message_id,
        )
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return errors.JobExchangeMissing(
            f"{job}: the broker refused it (404 {said}); start a worker first: it declares "
            f"{exchange} and its queues",
            message_id=message_id,
        )
    return errors.JobNotConfirmed(
        f"{job}: not confirmed, the channel or connection closed ({describe(exc)}); it may or "
        "may not have been enqueued",
        message_id=message_id,
    )


async def publish_jobs(
    broker_url: str,
    queue: str,
    action: str,
    payload: Mapping[str, Any],
    token: TokenLike,
    *,
    count: int = 1,
    message_id: str | None = None,
    proof_key: ProofKey | None = None,
    on_confirmed: Callable[[str], None] | None = None,
) -> list[str]:
    """Publish ``count`` jobs asking for ``action`` to ``queue`` with one :class:`Publisher`;
    return their message ids once all are confirmed (``message_id`` names the job when
    ``count`` is 1)."""
    ids = [message_id] if message_id and count == 1 else [None] * count
    async with Publisher(broker_url, token, queue=queue, proof_key=proof_key) as publisher:
        return await publisher.publish_many(
            (NewJob(action, payload, mid) for mid in ids), on_confirmed=on_confirmed
        )
