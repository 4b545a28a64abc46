"""A worker's life: fetch keys, connect, declare, consume until told to stop, drain, close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from functools import partial

import aio_pika
import httpx

from .actions import Registry
from .broker import declare_topology
from .consumer import Consumer
from .decision import Gate
from .keys import Keyring
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


@dataclass
class Worker:
    """One worker process's consumers, over every configured queue."""

    settings: Settings
    registry: Registry
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the worker consumes from every queue."""
    keyring: Keyring | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then let in-flight messages finish and close."""
        settings = self.settings
        async with httpx.AsyncClient(timeout=settings.jwks_timeout_seconds) as http:
            keyring = self.keyring = Keyring.for_issuers(
                ((e.issuer, str(e.jwks_url) if e.jwks_url else None)
                 for e in settings.trusted_issuers()),
                http,
                cooldown=settings.jwks_cooldown_seconds,
                refresh=settings.jwks_refresh_seconds,
            )
            await keyring.load()
            gate = Gate(build_trust(settings), keyring, self.registry)
            connection = await aio_pika.connect_robust(
                settings.broker_url.get_secret_value(),
                client_properties={"connection_name": f"warden {settings.worker_id}"},
            )
            async with connection, asyncio.TaskGroup() as background:
                refresher = background.create_task(keyring.refresh_forever())
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=settings.prefetch)
                publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
                queues = await declare_topology(channel, settings.queues, settings.delivery_limit)
                consumer = Consumer(gate, settings, publisher)
                tags = {
                    name: await queue.consume(partial(consumer.on_message, name))
                    for name, queue in queues.items()
                }
                log.info(
                    "consuming",
                    extra={"queues": list(queues), "actions": self.registry.names(),
                           "prefetch": settings.prefetch, "worker": settings.worker_id},
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
                refresher.cancel()
        log.info("stopped")
