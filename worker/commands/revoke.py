"""``warden revoke``: publish a revocation to the feed every worker follows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from worker.auth.revocation import Revocation
from worker.commands.common import run_or_exit, settings_or_exit
from worker.settings import BrokerSettings
from worker.support.clock import rfc3339


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


@click.command()
@click.option("--jti", help="Revoke the one token with this jti.")
@click.option("--sub", help="Revoke every token of this subject issued before --before.")
@click.option("--client-id", help="Revoke every token of this client issued before --before.")
@click.option("--issuer", help="Only tokens of this issuer (iss).")
@click.option("--before", help="Cut-off for --sub/--client-id (RFC 3339; default: now).")
@click.option(
    "--expires-at",
    help="When the entry may be forgotten (RFC 3339; default: once every token it can name has "
    "expired, WARDEN_MAX_TOKEN_LIFETIME_SECONDS plus WARDEN_LEEWAY_SECONDS from now).",
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
    from worker.amqp.feed import revoke as publish

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
    settings = settings_or_exit(BrokerSettings)
    now = datetime.now(UTC)
    if before is not None and _when(before, "--before", now) > now.timestamp():
        # A worker starting later reads back only as far as a token can live: a cut-off in the
        # future would outlast the events it reads.
        raise click.BadParameter("a cut-off cannot be in the future", param_hint="--before")
    holds = now + timedelta(seconds=settings.revocation_lifetime())
    event = Revocation.from_mapping(
        {
            subject: value,
            **({"iss": issuer} if issuer else {}),
            **(
                {}
                if subject == "jti"
                else {"issued_before": rfc3339(_when(before, "--before", now), "auto")}
            ),
            "expires_at": rfc3339(_when(expires_at, "--expires-at", holds), "auto"),
        }
    )
    run_or_exit(
        publish(
            settings.broker_url.get_secret_value(),
            event,
            settings.revocation_retention,
            settings.broker_user(),
            heartbeat=settings.heartbeat_seconds,
        ),
        "revocation",
    )
    click.echo(f"revoked {subject} {value}")
