"""The ``warden`` command (SPEC section 7)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from . import logs
from .actions import Registry
from .errors import ConfigurationError, PublishFailed
from .revocation import Revocation
from .settings import BrokerSettings, Settings, load_settings


def _fail(message: str) -> None:
    click.echo(f"warden: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """warden: verify each job's access token, run what is allowed, dead-letter what is not."""


@main.command()
def run() -> None:
    """Run the worker until SIGTERM or SIGINT (configured by WARDEN_* variables)."""
    from .runner import Worker

    try:
        settings = load_settings(Settings)
        if not settings.actions:
            raise ConfigurationError(
                "WARDEN_ACTIONS is required: name the module(s) that register actions"
            )
        registry = Registry.from_modules(settings.actions)
    except ConfigurationError as exc:
        _fail(f"configuration error: {exc}")
        return
    logs.configure(settings.log_level)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Worker(settings, registry).run(stop)

    try:
        asyncio.run(serve())
    except ConfigurationError as exc:
        _fail(f"configuration error: {exc}")


def _payload(value: str) -> dict[str, Any]:
    text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object")
    return payload


def _token(token: str | None, token_file: Path | None) -> str:
    if token and token_file:
        raise click.UsageError("give --token or --token-file, not both")
    if token_file is not None:
        token = token_file.read_text(encoding="ascii").strip()
    if not token:
        raise click.UsageError("a token is needed: --token, --token-file or WARDEN_TOKEN")
    return token


def _when(value: str | None, name: str, default: datetime) -> float:
    if value is None:
        return default.timestamp()
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date-time", param_hint=name
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter("give a UTC offset, e.g. 2026-01-02T03:04:05Z", param_hint=name)
    return moment.timestamp()


@main.command()
@click.option("--jti", help="Revoke the one token with this jti.")
@click.option("--sub", help="Revoke every token of this subject issued before --before.")
@click.option("--client-id", help="Revoke every token of this client issued before --before.")
@click.option("--issuer", help="Only tokens of this issuer (iss).")
@click.option("--before", help="Cut-off for --sub/--client-id (RFC 3339; default: now).")
@click.option(
    "--expires-at", help="When the entry may be forgotten (RFC 3339; default: now + 24 h)."
)
def revoke(
    jti: str | None,
    sub: str | None,
    client_id: str | None,
    issuer: str | None,
    before: str | None,
    expires_at: str | None,
) -> None:
    """Publish a revocation to the feed every worker follows."""
    from .feed import revoke as publish

    chosen = [
        (name, value)
        for name, value in (("jti", jti), ("sub", sub), ("client_id", client_id))
        if value
    ]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --jti, --sub, --client-id")
    subject, value = chosen[0]
    if subject == "jti" and before is not None:
        raise click.UsageError("--before goes with --sub or --client-id")
    now = datetime.now(UTC)
    event = Revocation.from_mapping(
        {
            subject: value,
            **({"iss": issuer} if issuer else {}),
            **(
                {}
                if subject == "jti"
                else {"issued_before": _rfc3339(_when(before, "--before", now))}
            ),
            "expires_at": _rfc3339(_when(expires_at, "--expires-at", now + timedelta(hours=24))),
        }
    )
    try:
        settings = load_settings(BrokerSettings)
    except ConfigurationError as exc:
        _fail(f"configuration error: {exc}")
        return
    try:
        asyncio.run(
            publish(settings.broker_url.get_secret_value(), event, settings.revocation_retention)
        )
    except (PublishFailed, ConfigurationError) as exc:
        _fail(f"revocation not published: {exc}")
    except OSError as exc:
        _fail(f"cannot reach the broker: {exc}")
    click.echo(f"revoked {subject} {value}")


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


@main.command()
@click.argument("queue")
@click.argument("action")
@click.option(
    "--payload", default="{}", show_default=True, help="JSON object, or @FILE holding one."
)
@click.option(
    "--token", envvar="WARDEN_TOKEN", help="Access token (or WARDEN_TOKEN).", show_envvar=False
)
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--message-id", help="Idempotency key (with --count 1); a UUID by default.")
def publish(
    queue: str,
    action: str,
    payload: str,
    token: str | None,
    token_file: Path | None,
    count: int,
    message_id: str | None,
) -> None:
    """Publish COUNT jobs asking for ACTION to QUEUE, each confirmed by the broker."""
    from .publisher import publish_jobs

    body = _payload(payload)
    bearer = _token(token, token_file)
    try:
        settings = load_settings(BrokerSettings)
    except ConfigurationError as exc:
        _fail(f"configuration error: {exc}")
        return
    try:
        ids = asyncio.run(
            publish_jobs(
                settings.broker_url.get_secret_value(),
                queue,
                action,
                body,
                bearer,
                count=count,
                message_id=message_id,
            )
        )
    except PublishFailed as exc:
        _fail(f"publish failed: {exc}")
        return
    except OSError as exc:
        _fail(f"cannot reach the broker: {exc}")
        return
    click.echo(ids[0] if count == 1 else f"published {len(ids)} jobs to {queue}")
