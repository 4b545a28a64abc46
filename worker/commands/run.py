"""``warden run``: the worker."""

from __future__ import annotations

import asyncio
import signal

import click

from worker.commands.common import fail, settings_or_exit
from worker.errors import ConfigurationError
from worker.ops import logs
from worker.pipeline.actions import Registry
from worker.settings import Settings


@click.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT (configured by WARDEN_* variables)."""
    from worker.service.runner import Worker, steady_collector

    settings = settings_or_exit(Settings)
    try:
        if not settings.actions:
            raise ConfigurationError(
                "WARDEN_ACTIONS is required: name the module(s) that register actions"
            )
        registry = Registry.from_modules(settings.actions)
    except ConfigurationError as exc:
        fail(f"configuration error: {exc}")
    logs.configure(settings.log_level)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Worker(settings, registry).run(stop)

    steady_collector()
    try:
        asyncio.run(serve())
    except ConfigurationError as exc:
        fail(f"configuration error: {exc}")
