"""A worker's life: fetch keys, connect, declare, read the revocation feed, consume until told
to stop, let in-flight messages finish, close."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import httpx

from worker.amqp.arrival import stamping, unwitnessed
from worker.amqp.connection import TRANSPORT_ERRORS, Connection, connect, describe
from worker.amqp.feed import RevocationFeed
from worker.amqp.inbound import Subscriptions
from worker.amqp.links import ConsumingChannel, CreditKeeper, Link, Publishing, close_bounded
from worker.amqp.topology import Topology, declare_stream, declare_topology
from worker.auth.keys import Keyring
from worker.auth.revocation import RevocationList
from worker.auth.setup import build_introspector, build_keyring, build_trust
from worker.auth.verified import VerifiedTokens
from worker.errors import ConfigurationError
from worker.ops.health import Check, HealthServer
from worker.ops.metrics import Metrics, StateCollector
from worker.ops.tracing import NO_TRACING, Tracing
from worker.pipeline.actions import Registry
from worker.pipeline.decision import Gate
from worker.pipeline.delivery import Delivery
from worker.pipeline.outcomes import Outcome
from worker.service.consumer import Consumer
from worker.settings import Settings
from worker.support.backoff import backoff

log = logging.getLogger("warden.worker")

T = TypeVar("T")

DECLARE_SECONDS = 30.0
"""How long one attempt at declaring the queues may take before it is tried again."""
PROBE_LIMIT_SECONDS = 20.0
"""How long finding out whether the broker stamps arrivals may take, all told."""
_DECLARE_FAILURES: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, TimeoutError)


YOUNG_COLLECTION_EVERY = 50_000
"""Allocations between two collections of the youngest generation (CPython's default: 700).
Well above what a prefetch of a few hundred messages holds in flight (about 40 objects each),
so a young collection no longer comes round while they are still being handled."""


def steady_collector() -> None:
    """Set CPython's cyclic garbage collector for a process that consumes until it stops; called
    by ``warden run`` once everything is imported and configured.

    What start-up made (modules, classes, settings, actions) lives as long as the process:
    ``gc.freeze`` keeps it out of every later full collection. And a message in flight holds
    tasks, futures and frames that outlive 700 allocations, so with the default threshold the
    collector promoted and scanned them again several times per message: with the benchmark's
    256 messages in flight, 25 µs of the 188 µs a denied message cost; about 1 µs now. warden
    makes few reference cycles, so the young generation waiting longer holds little garbage.
    """
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, oldest)


def _report_unfinished(consumer: Consumer) -> None:
    """Name each blocking action still running after the grace period. A thread cannot be
    stopped: it runs on until the process exits, and its job, never acked, goes back to its
    queue when the channel closes."""
    for (action, message_id), seconds in consumer.threads.running():
        log.warning(
            "a blocking action did not finish within the grace period; its job returns to the "
            "queue",
            extra={
                "action": action,
                "message_id": message_id,
                "running_seconds": round(seconds, 3),
            },
        )


async def _hold_while_unreliable(feed: RevocationFeed, subscriptions: Subscriptions) -> None:
    """Take no job while the revocation list cannot be relied on: jobs wait in their queues."""
    while True:
        await feed.wait_unreliable()
        await subscriptions.pause()
        log.warning("not taking jobs until the revocation feed is current")
        await feed.wait_reliable()
        await subscriptions.resume()
        log.warning("taking jobs again")


async def until_consuming(worker: Worker, running: asyncio.Task[None], within: float) -> None:
    """Return once ``worker``, run by the task ``running``, consumes from every queue; raise
    what the worker raised if it ended first, or TimeoutError after ``within`` seconds."""
    ready = asyncio.create_task(worker.ready.wait())
    try:
        done, _ = await asyncio.wait(
            {ready, running}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        ready.cancel()
    if running in done:
        running.result()
    if ready not in done:
        raise TimeoutError(f"the worker did not start consuming within {within:.0f}s")


@dataclass
class Worker:
    """One worker process's consumers, over every configured queue."""

    settings: Settings
    registry: Registry
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the worker consumes from every queue."""
    keyring: Keyring | None = None
    feed: RevocationFeed | None = None
    connection: Connection | None = None
    """The consuming connection."""
    consuming: Link | None = None
    publishing: Publishing | None = None
    """The connection copies and markers are published on."""
    stage: str = "starting"
    """What the worker is doing, as ``/readyz`` says while it is not consuming."""
    consumer: Consumer | None = None
    metrics: Metrics = field(default_factory=Metrics)
    http: HealthServer | None = None
    revocations: RevocationList | None = None
    """The list the feed fills (by default one of ``WARDEN_REVOCATION_MAX_ENTRIES``; given by
    tests that inject faults into it)."""
    tracing: Tracing = NO_TRACING
    """Where the spans of jobs go (``warden run``: as the ``OTEL_*`` variables say)."""
    on_settled: Callable[[Delivery, Outcome], None] | None = None
    """Told what became of each delivery once it is settled."""

    def __post_init__(self) -> None:
        self.metrics.watch(
            StateCollector(
                in_flight=lambda: len(self.consumer.in_flight) if self.consumer else 0,
                threads_busy=lambda: self.consumer.threads.busy() if self.consumer else 0,
                revocation_entries=lambda: len(self.feed.revocations) if self.feed else 0,
                revocation_faults=lambda: self.feed.faults if self.feed else 0,
                revocations_untrusted=lambda: self.feed.untrusted if self.feed else 0,
                jwks=lambda: iter(self.keyring.fetch_counts() if self.keyring else ()),
                publishing_blocked=lambda: int(bool(self.publishing and self.publishing.blocked)),
                waiting_on_publishing=lambda: self.publishing.waiting if self.publishing else 0,
            )
        )

    def readiness(self) -> dict[str, Check]:
        """What ``/readyz`` requires: each check says why it is not met, or None."""

        def broker() -> str | None:
            if self.consuming is None:
                return "not connected to the broker"
            return self.consuming.why_not_ready() or (
                self.publishing.why_not_ready() if self.publishing else None
            )

        def keys() -> str | None:
            missing = self.keyring.unloaded() if self.keyring else ["every issuer"]
            return f"no keys yet for {', '.join(missing)}" if missing else None

        def revocations() -> str | None:
            return (
                None
                if self.feed and self.feed.fresh()
                else (self.feed.why_stale() if self.feed else "the revocation feed is not started")
            )

        def consuming() -> str | None:
            return None if self.ready.is_set() else f"not consuming: {self.stage}"

        return {"broker": broker, "keys": keys, "revocations": revocations, "consuming": consuming}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then let in-flight messages finish and close. ``stop``
        is heeded at every stage: set while starting (keys, connecting, declaring, reading the
        feed), the worker closes what it opened and returns."""
        self.http = HealthServer(self.metrics.registry, self.readiness(), self.settings.http_port)
        log.info("serving /metrics, /healthz and /readyz", extra={"port": self.http.port})
        try:
            await self._run(stop)
        except Stopped:
            log.info("stopped while starting", extra={"stage": self.stage})
        finally:
            self.ready.clear()
            self.http.close()

    def allowance(self) -> float:
        """The largest queueing allowance of any action (seconds); start-up refuses one that a
        revocation would not outlast in the stream."""
        settings = self.settings
        largest = self.registry.largest_allowance(settings.queued_for_seconds)
        try:
            settings.check_retention(largest, "the largest queueing allowance")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        return largest

    async def _run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        url = settings.broker_url.get_secret_value()
        allowance = self.allowance()
        async with httpx.AsyncClient(timeout=settings.jwks_timeout_seconds) as http:
            keyring = self.keyring = build_keyring(settings, http)
            self.stage = "fetching the issuers' keys"
            await unless_stopped(stop, keyring.load())
            if self.revocations is None:
                self.revocations = RevocationList(settings.revocation_max_entries, hold=allowance)
            feed = self.feed = RevocationFeed(
                url,
                self.revocations,
                max_staleness=settings.revocation_max_staleness,
                trusted=settings.trusted(),
                user=settings.broker_user(),
                window=settings.revocation_window(allowance),
                heartbeat=settings.heartbeat_seconds,
                handshake_timeout=settings.broker_handshake_timeout_seconds,
            )
            trust = build_trust(settings)
            gate = Gate(
                trust,
                keyring,
                self.registry,
                revocations=feed,
                introspector=build_introspector(settings, trust, http),
                cache=VerifiedTokens(settings.token_cache_size)
                if settings.token_cache_size
                else None,
                queued_for=settings.queued_for_seconds,
            )
            self.stage = "connecting to the broker"
            connection = self.connection = await unless_stopped(
                stop, self._connect(url, "consuming")
            )
            self.consuming = Link(connection, "consuming")
            async with connection:
                publishing = await unless_stopped(
                    stop,
                    Publishing.open(
                        url,
                        settings.worker_id,
                        settings.heartbeat_seconds,
                        settings.broker_handshake_timeout_seconds,
                    ),
                )
                self.publishing = publishing
                publishing.listeners.append(feed.publishing_blocked)
                feed.markers = publishing.channel
                try:
                    witnessed = await self._probe_arrivals(url, allowance, stop)
                    async with asyncio.TaskGroup() as background:
                        tasks = [background.create_task(keyring.refresh_forever())]
                        try:
                            await self._serve(
                                connection,
                                publishing,
                                gate,
                                feed,
                                stop,
                                tasks,
                                background,
                                witnessed=witnessed,
                            )
                        finally:
                            for task in tasks:
                                task.cancel()
                except* (Stopped, ConfigurationError) as group:
                    # One cause, said in one line, not a group of one.
                    raise group.exceptions[0] from None
                finally:
                    await publishing.close()
        log.info("stopped")

    async def _connect(self, url: str, purpose: str) -> Connection:
        """A connection of this worker's for ``purpose``, with its heartbeat and handshake
        bound (:func:`~worker.amqp.connection.connect`)."""
        settings = self.settings
        return await connect(
            url,
            purpose,
            heartbeat=settings.heartbeat_seconds,
            worker_id=settings.worker_id,
            handshake_timeout=settings.broker_handshake_timeout_seconds,
        )

    async def _declare(
        self, connection: Connection, stop: asyncio.Event
    ) -> tuple[ConsumingChannel, Topology]:
        """Open the consuming channel and declare what the worker uses; while the broker cannot
        (a queue without a leader or a majority, a stream without quorum, a connection closed
        under it), say why and try again."""
        settings = self.settings
        channel: ConsumingChannel | None = None

        async def declare() -> tuple[ConsumingChannel, Topology]:
            nonlocal channel
            if channel is None:
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=settings.prefetch)
            topology = await declare_topology(
                channel, settings.queues, settings.delivery_limit, settings.retry_tiers()
            )
            await declare_stream(channel, settings.revocation_retention)
            return channel, topology

        failures = 0
        while True:
            try:
                async with asyncio.timeout(DECLARE_SECONDS):
                    return await unless_stopped(stop, declare())
            except _DECLARE_FAILURES as exc:
                why = describe(exc) if not isinstance(exc, TimeoutError) else "no answer"
                self.stage = f"declaring the queues: the broker cannot yet ({why})"
                log.warning(
                    "could not declare the queues; trying again",
                    extra={"error": why, "attempt": failures + 1},
                )
                await unless_stopped(stop, asyncio.sleep(backoff(0.5, 10.0, failures)))
                failures += 1

    async def _probe_arrivals(self, url: str, allowance: float, stop: asyncio.Event) -> bool:
        """Whether the broker witnesses arrivals (:func:`~worker.amqp.arrival.stamping`): only
        then is a job's arrival read. A worker with an allowance refuses to start otherwise.

        The probe is a publish, on a connection of its own: a broker in a resource alarm
        blocks a connection that publishes, and then reads nothing more from it, not even the
        probe queue's deletion; so the probe is given up after :data:`PROBE_LIMIT_SECONDS`."""
        self.stage = "finding out whether the broker stamps arrivals"
        probing = await unless_stopped(stop, self._connect(url, "arrival probe"))
        try:
            async with asyncio.timeout(PROBE_LIMIT_SECONDS):
                found = await unless_stopped(stop, self._stamping(probing))
        except TimeoutError:
            found = f"did not finish the probe within {PROBE_LIMIT_SECONDS:g}s"
        finally:
            await close_bounded(probing)
        if found is None:
            return True
        if allowance:
            raise unwitnessed(found)
        log.info(
            "the broker does not witness arrivals: no queueing allowance is possible, and dead "
            "letters record no received_at",
            extra={"why": found},
        )
        return False

    async def _stamping(self, connection: Connection) -> str | None:
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        channel = await connection.channel()
        try:
            return await stamping(publisher, channel)
        finally:
            for open_channel in (publisher, channel):
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await open_channel.close()

    async def _serve(
        self,
        connection: Connection,
        publishing: Publishing,
        gate: Gate,
        feed: RevocationFeed,
        stop: asyncio.Event,
        tasks: list[asyncio.Task[None]],
        background: asyncio.TaskGroup,
        *,
        witnessed: bool,
    ) -> None:
        settings = self.settings
        self.stage = "declaring the queues"
        channel, topology = await self._declare(connection, stop)
        tasks.append(background.create_task(feed.follow_forever()))
        self.stage = "reading the revocation feed to its end"
        log.info("reading the revocation feed before taking jobs")
        await unless_stopped(stop, feed.caught_up.wait())

        consumer = self.consumer = Consumer(
            gate,
            settings,
            publishing,
            metrics=self.metrics,
            tracing=self.tracing,
            on_settled=self.on_settled,
            witnessed=witnessed,
        )
        queues = list(topology.work)
        handlers = {name: partial(consumer.on_message, name) for name in queues}
        for name, origin in topology.quarantine.items():
            # What the broker dead-lettered (the delivery limit) is written into the dead-letter
            # queue without its token.
            handlers[name] = partial(consumer.on_quarantined, origin=origin)
        subscriptions = Subscriptions(channel, handlers)
        self.stage = "registering the consumers"
        try:
            await unless_stopped(stop, subscriptions.start())
        except TRANSPORT_ERRORS as exc:
            # The channel closed under it (a queue's leader moving): its restore registers them.
            log.warning("consuming once the channel reopens", extra={"error": describe(exc)})
        keeper = CreditKeeper(
            publishing,
            subscriptions.renew,
            step=max(1, settings.prefetch // 2),
            bound=settings.blocked_max_waiting,
        )
        tasks.append(background.create_task(_hold_while_unreliable(feed, subscriptions)))
        log.info(
            "consuming",
            extra={
                "queues": list(queues),
                "actions": self.registry.names(),
                "prefetch": settings.prefetch,
                "worker": settings.worker_id,
            },
        )
        self.stage = "consuming"
        self.ready.set()
        await stop.wait()
        self.ready.clear()
        self.stage = "stopping"

        log.info("stopping: no new messages; waiting for those in flight")
        await keeper.close()
        await subscriptions.stop()
        if consumer.in_flight:
            await asyncio.wait(set(consumer.in_flight), timeout=settings.shutdown_grace_seconds)
        _report_unfinished(consumer)
        for task in set(consumer.in_flight):
            task.cancel()
        consumer.threads.close()
        await consumer.flushed()
        # The consuming channel right after the last acks: what it still holds unacked goes
        # back to its queue before anything else closes. (The publishing channel closes with
        # its connection, in bounded time, the broker may be blocking it.)
        with contextlib.suppress(*TRANSPORT_ERRORS):
            await channel.close()


class Stopped(Exception):
    """The stop signal came while the worker was starting."""


async def unless_stopped(stop: asyncio.Event, step: Awaitable[T]) -> T:
    """What ``step`` returns; should ``stop`` be set before it is done, cancel it, wait for it
    to end (a connection being made closes itself), and raise :class:`Stopped`."""
    task = asyncio.ensure_future(step)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopping.cancel()
    if task.done():
        if task.cancelled():
            # aiormq cancels what waits on a connection the broker closed.
            raise ConnectionError("cancelled: the connection closed under it")
        return task.result()
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: the stop is what is reported
    raise Stopped
