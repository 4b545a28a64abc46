"""``warden run``: the worker."""

from __future__ import annotations

import asyncio
import signal

import click
from pydantic import ValidationError

from worker.commands.common import fail, settings_or_exit
from worker.errors import ConfigurationError
from worker.ops import logs, tracing
from worker.pipeline.actions import Registry
from worker.settings import Settings, TracingSettings


@click.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT (configured by WARDEN_* variables)."""
    # Until the event loop takes the signals over, a stop signal ends start-up at once, with 0:
    # nothing has been taken from the broker yet.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped_while_starting)
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
    try:
        traces = tracing.configured(TracingSettings())
    except ValidationError as exc:
        fail(f"configuration error: OTEL_*: {exc.errors(include_url=False)[0]['msg']}")
    except ConfigurationError as exc:
        fail(f"configuration error: {exc}")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Worker(settings, registry, tracing=traces).run(stop)

    steady_collector()
    try:
        asyncio.run(serve())
    except ConfigurationError as exc:
        fail(f"configuration error: {exc}")


def _stopped_while_starting(signum: int, frame: object) -> None:
    raise SystemExit(0)
