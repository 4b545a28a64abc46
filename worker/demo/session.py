"""One run of ``warden demo``: the development issuer, a worker with the demo actions on a queue
of the demo's own, the scenario's jobs published with confirms, and what became of each.

Everything runs in this process and this event loop except the issuer's HTTP server, which has a
thread of its own. Nothing is shared with other workers but the broker: the queue is the demo's
(``demo-jobs`` unless told), emptied when the demo starts, and the one revocation it publishes
names a ``jti`` only its own token has.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from worker import errors, names
from worker.amqp.feed import revoke
from worker.amqp.publisher import Publisher
from worker.amqp.queues import consumers, delete_queues
from worker.auth.revocation import Revocation
from worker.deadletters.admin import Reader, stats
from worker.demo.scenario import ALLOWED, TOKEN_DEFAULTS, DemoJob, Scenario, scenario
from worker.devissuer import DevIssuer
from worker.pipeline.actions import Registry
from worker.pipeline.delivery import Delivery
from worker.pipeline.outcomes import Outcome
from worker.pipeline.results import JobResult
from worker.service.runner import Worker, until_consuming
from worker.settings import Settings, load_settings
from worker.support import strictjson
from worker.support.clock import rfc3339

AUDIENCE = "https://jobs.example.com"
DEMO_ACTIONS = "worker.examples"
START_TIMEOUT = 40.0
"""How long the worker may take to start: it reads the whole revocation stream first."""


@dataclass
class Row:
    """A job of the scenario and the last thing that became of it."""

    job: DemoJob
    result: JobResult | None = None

    @property
    def shown(self) -> str:
        """The outcome in a word or two: ``allowed``, a reason, or ``waiting``."""
        if self.result is None or self.result.outcome in ("retry", "deferred"):
            return "waiting"
        return ALLOWED if self.result.done else str(self.result.reason)

    @property
    def final(self) -> bool:
        """Done or dead-lettered."""
        return self.result is not None and self.result.outcome in ("done", "denied")

    @property
    def as_expected(self) -> bool:
        """The outcome the scenario expects."""
        return self.final and self.shown == self.job.expected


@dataclass(frozen=True)
class Other:
    """A job that is not the scenario's (one the user published meanwhile)."""

    action: str
    result: JobResult


class Session:
    """The issuer, the worker and the scenario of one ``warden demo``."""

    def __init__(self, queue: str, **settings: Any) -> None:
        self.queue = queue
        self.issuer = DevIssuer(audience=AUDIENCE, defaults=TOKEN_DEFAULTS)
        try:
            self.settings = load_settings(
                Settings,
                queues=(queue,),
                issuer=self.issuer.url,
                issuers=(),
                audience=AUDIENCE,
                actions=(DEMO_ACTIONS,),
                http_port=0,
                worker_id=f"demo-{os.getpid()}",
                **settings,
            )
        except errors.ConfigurationError:
            self.issuer.stop()
            raise
        self.url = self.settings.broker_url.get_secret_value()
        self.rows: dict[str, Row] = {}
        self.others: asyncio.Queue[Other] = asyncio.Queue()
        self.changed = asyncio.Event()
        self.all_settled = asyncio.Event()
        self.scenario: Scenario | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        try:
            if self._task is not None:
                await self._task
        finally:
            self.issuer.stop()

    async def clear_queue(self) -> None:
        """Make sure no one else consumes the demo's queue, then delete it and its dead-letter
        queue, so that what the demo shows is this run's alone. (Copies of an earlier run still
        waiting in the shared retry queues come back to no queue, and are dropped.)"""
        found = await consumers(self.url, self.queue)
        if found:
            raise errors.ConfigurationError(
                f"queue {self.queue!r} has {found} consumer(s): another warden demo or a worker "
                "uses it; give this demo a queue of its own with --queue"
            )
        await delete_queues(self.url, [self.queue, names.dead_letter_queue(self.queue)])

    async def start(self) -> float:
        """Start the issuer and the worker (after revoking the scenario's revoked token, so that
        the worker reads it from the feed before it takes a job); how long it took."""
        started = time.monotonic()
        self.issuer.start()
        self.scenario = scenario(self.issuer)
        self.rows = {job.message_id: Row(job) for job in self.scenario.jobs}
        now = time.time()
        event = Revocation.from_mapping(
            {
                "jti": self.scenario.revoked_jti,
                "iss": self.issuer.url,
                "expires_at": rfc3339(now + self.settings.revocation_lifetime(), "auto"),
            }
        )
        await revoke(
            self.url, event, self.settings.revocation_retention, self.settings.broker_user()
        )
        worker = Worker(
            self.settings,
            Registry.from_modules(self.settings.actions),
            on_settled=self._settled,
        )
        self._task = asyncio.create_task(worker.run(self._stop))
        try:
            await until_consuming(worker, self._task, START_TIMEOUT)
        except TimeoutError as exc:
            raise errors.ConfigurationError(str(exc)) from None
        return time.monotonic() - started

    async def publish(self) -> None:
        """Publish every job of the scenario through ``warden.jobs``, each confirmed."""
        await asyncio.gather(*(self._publish(row.job) for row in self.rows.values()))

    async def _publish(self, job: DemoJob) -> None:
        async with Publisher(
            self.url,
            job.token,
            queue=self.queue,
            proof_key=job.proof_key,
            connection_name="warden demo",
        ) as publisher:
            await publisher.publish(job.action, job.payload, message_id=job.message_id)

    def _settled(self, delivery: Delivery, outcome: Outcome) -> None:
        mid = delivery.message_id or ""
        result = JobResult.of(mid, outcome)
        row = self.rows.get(mid)
        if row is None:
            self.others.put_nowait(Other(_action(delivery.body), result))
            return
        row.result = result
        self.changed.set()
        if all(r.final for r in self.rows.values()):
            self.all_settled.set()

    async def dead_letters(self) -> Counter[str]:
        """The demo queue's dead letters by reason, as ``warden dlq stats`` counts them."""
        reader = Reader(self.url, self.settings.broker_user(), self.settings.trusted())
        return (await stats(reader, [self.queue]))[self.queue]

    def secret_of(self, client_id: str) -> str:
        """The client secret of one of the demo's clients (never printed)."""
        return self.issuer.clients[client_id].secret

    async def wait_stopped(self) -> None:
        """Until :meth:`stop` (the user's Ctrl-C)."""
        await self._stop.wait()

    def stop(self) -> None:
        """Stop the worker (the issuer stops when the session ends)."""
        self._stop.set()


def _action(body: bytes) -> str:
    try:
        job = strictjson.loads(body)
    except errors.NotStrictJSON:
        return "-"
    action = job.get("action") if isinstance(job, dict) else None
    return action if isinstance(action, str) else "-"
