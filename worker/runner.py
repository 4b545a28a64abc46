"""A worker's life: fetch keys, connect, declare, read the revocation feed, consume until told
to stop, let in-flight messages finish, close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractRobustConnection

from .actions import Registry
from .broker import declare_topology
from .consumer import Consumer
from .decision import Gate
from .feed import RevocationFeed, declare_stream
from .introspection import Introspector
from .keys import Keyring
from .revocation import RevocationList
from .settings import Settings
from .tokens import IssuerPolicy, Trust

log = logging.getLogger("warden.worker")


def build_trust(settings: Settings) -> Trust:
    """The trusted issuers' policies from the settings."""
    return Trust(
        (IssuerPolicy.from_settings(entry) for entry in settings.trusted_issuers()),
        leeway=settings.leeway_seconds,
        max_token_bytes=settings.max_token_bytes,
    )


def build_keyring(settings: Settings, http: httpx.AsyncClient) -> Keyring:
    """A key store for every trusted issuer."""
    return Keyring.for_issuers(
        ((e.issuer, str(e.jwks_url) if e.jwks_url else None) for e in settings.trusted_issuers()),
        http,
        cooldown=settings.jwks_cooldown_seconds,
        refresh=settings.jwks_refresh_seconds,
    )


def build_introspector(
    settings: Settings, trust: Trust, http: httpx.AsyncClient
) -> Introspector | None:
    """An RFC 7662 client when warden has introspection credentials, else None."""
    if settings.introspection_client_id is None or settings.introspection_client_secret is None:
        return None
    return Introspector(
        http,
        settings.introspection_client_id,
        settings.introspection_client_secret,
        {
            e.issuer: str(e.introspection_endpoint) if e.introspection_endpoint else None
            for e in settings.trusted_issuers()
        },
        trust.policies,
        ceiling=settings.introspection_cache_seconds,
        leeway=settings.leeway_seconds,
    )


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


@dataclass
class Worker:
    """One worker process's consumers, over every configured queue."""

    settings: Settings
    registry: Registry
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the worker consumes from every queue."""
    keyring: Keyring | None = None
    feed: RevocationFeed | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then let in-flight messages finish and close."""
        settings = self.settings
        url = settings.broker_url.get_secret_value()
        async with httpx.AsyncClient(timeout=settings.jwks_timeout_seconds) as http:
            keyring = self.keyring = build_keyring(settings, http)
            await keyring.load()
            feed = self.feed = RevocationFeed(
                url, RevocationList(), max_staleness=settings.revocation_max_staleness
            )
            trust = build_trust(settings)
            gate = Gate(
                trust,
                keyring,
                self.registry,
                revocations=feed,
                introspector=build_introspector(settings, trust, http),
            )
            connection = await aio_pika.connect_robust(
                url, client_properties={"connection_name": f"warden {settings.worker_id}"}
            )
            async with connection, asyncio.TaskGroup() as background:
                tasks = [background.create_task(keyring.refresh_forever())]
                try:
                    await self._serve(connection, gate, feed, stop, tasks, background)
                finally:
                    for task in tasks:
                        task.cancel()
        log.info("stopped")

    async def _serve(
        self,
        connection: AbstractRobustConnection,
        gate: Gate,
        feed: RevocationFeed,
        stop: asyncio.Event,
        tasks: list[asyncio.Task[None]],
        background: asyncio.TaskGroup,
    ) -> None:
        settings = self.settings
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.prefetch)
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queues = await declare_topology(
            channel, settings.queues, settings.delivery_limit, settings.retry_tiers()
        )
        await declare_stream(channel, settings.revocation_retention)
        tasks.append(background.create_task(feed.follow_forever()))
        log.info("reading the revocation feed before taking jobs")
        await _first(feed.caught_up.wait(), stop.wait())
        if stop.is_set():
            return

        consumer = Consumer(gate, settings, publisher)
        tags = {
            name: await queue.consume(partial(consumer.on_message, name))
            for name, queue in queues.items()
        }
        log.info(
            "consuming",
            extra={
                "queues": list(queues),
                "actions": self.registry.names(),
                "prefetch": settings.prefetch,
                "worker": settings.worker_id,
            },
        )
        self.ready.set()
        await stop.wait()

        log.info("stopping: no new messages; waiting for those in flight")
        for name, tag in tags.items():
            with contextlib.suppress(aio_pika.exceptions.AMQPError, RuntimeError):
                await queues[name].cancel(tag)
        if consumer.in_flight:
            await asyncio.wait(set(consumer.in_flight), timeout=settings.shutdown_grace_seconds)
        for task in set(consumer.in_flight):
            task.cancel()
