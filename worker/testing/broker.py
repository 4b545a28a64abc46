"""A real worker on a real RabbitMQ, in the test's own event loop: :func:`running_worker` and
:func:`scratch_queue`, which the pytest fixtures ``warden_worker`` and ``warden_queue`` use."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from worker import names
from worker.amqp.publisher import Publisher
from worker.amqp.queues import delete_queues
from worker.auth.proof import ProofKey
from worker.deadletters.admin import Reader, letters
from worker.deadletters.read import Letter
from worker.devissuer.issuer import Issuer
from worker.pipeline.delivery import Delivery
from worker.pipeline.outcomes import Outcome
from worker.pipeline.results import JobResult
from worker.service.runner import Worker, until_consuming
from worker.settings import Settings
from worker.testing.harness import Action, registry_of

START_TIMEOUT = 60.0
"""How long a worker may take to start consuming (it reads the revocation feed first)."""

QUICK = {
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 1.0,
    "defer_max_seconds": 0.5,
    "jwks_cooldown_seconds": 1.0,
    "shutdown_grace_seconds": 5.0,
    "http_port": 0,
}
"""Settings of a worker under test unless the test says otherwise: short waits between
attempts, and a health port of its own."""


class RunningWorker:
    """A worker consuming a queue; :meth:`run` publishes a job and waits for what became of it."""

    def __init__(self, worker: Worker, queue: str) -> None:
        self.worker = worker
        self.queue = queue
        self.settings = worker.settings
        self.results: dict[str, list[JobResult]] = {}
        """Every settled outcome so far, by message id (a retried job has several)."""
        self._final: dict[str, asyncio.Future[JobResult]] = {}
        worker.on_settled = self._settled

    def _settled(self, delivery: Delivery, outcome: Outcome) -> None:
        mid = delivery.message_id or ""
        result = JobResult.of(mid, outcome)
        self.results.setdefault(mid, []).append(result)
        if result.outcome in ("done", "denied"):
            future = self._final.setdefault(mid, asyncio.get_running_loop().create_future())
            if not future.done():
                future.set_result(result)

    async def publish(
        self,
        action: str,
        payload: Mapping[str, Any] | None = None,
        *,
        token: str,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        proof_key: ProofKey | None = None,
    ) -> str:
        """Publish a job to the worker's queue as :class:`worker.Publisher` does; its id once
        the broker confirmed it."""
        url = self.settings.broker_url.get_secret_value()
        async with Publisher(url, token, queue=self.queue, proof_key=proof_key) as publisher:
            return await publisher.publish(action, payload, message_id=message_id, headers=headers)

    async def result(self, message_id: str, within: float = 30.0) -> JobResult:
        """What finally became of a job: done, or dead-lettered (after any retries); a
        TimeoutError after ``within`` seconds."""
        future = self._final.setdefault(message_id, asyncio.get_running_loop().create_future())
        async with asyncio.timeout(within):
            return await asyncio.shield(future)

    async def run(self, action: str, *args: Any, within: float = 30.0, **job: Any) -> JobResult:
        """Publish a job (the arguments of :meth:`publish`) and wait for its final result."""
        return await self.result(await self.publish(action, *args, **job), within)

    async def dead_letters(self) -> list[Letter]:
        """The dead letters of the worker's queue, oldest first, read as ``warden dlq`` reads
        them (the queue is left as it was)."""
        settings = self.settings
        reader = Reader(
            settings.broker_url.get_secret_value(), settings.broker_user(), settings.trusted()
        )
        return await letters(reader, self.queue)


@contextlib.asynccontextmanager
async def running_worker(
    *actions: Action,
    broker_url: str,
    issuer: Issuer,
    queue: str,
    **settings: Any,
) -> AsyncIterator[RunningWorker]:
    """A worker running ``actions`` on ``queue``, trusting ``issuer`` (which must be serving its
    JWKS, a :class:`~worker.testing.TestIssuer` started), in this event loop; stopped, with its
    retry queues deleted, when the block ends."""
    values: dict[str, Any] = {
        **QUICK,
        "broker_url": broker_url,
        "queues": (queue,),
        "issuer": issuer.url,
        "issuers": (),
        "audience": issuer.audience,
        "worker_id": f"test-{uuid.uuid4().hex[:8]}",
        **settings,
    }
    worker = Worker(Settings(**values), registry_of(actions))
    running = RunningWorker(worker, queue)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await until_consuming(worker, task, START_TIMEOUT)
        yield running
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def scratch_queue(broker_url: str, prefix: str = "test") -> AsyncIterator[str]:
    """A work queue name of its own (``<prefix>-<random>``); the queue and its dead-letter
    queue are deleted when the block ends."""
    queue = f"{prefix}-{uuid.uuid4().hex[:12]}"
    try:
        yield queue
    finally:
        await delete_queues(broker_url, [queue, names.dead_letter_queue(queue)])
