"""``warden publish``: jobs onto a queue, each confirmed by the broker."""

from __future__ import annotations

import click

from ..settings import BrokerSettings
from .common import read_payload, run_or_exit, settings_or_exit, token_options, with_token


@click.command()
@click.argument("queue")
@click.argument("action")
@click.option(
    "--payload", default="{}", show_default=True, help="JSON object, or @FILE holding one."
)
@token_options
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--message-id", help="Idempotency key (with --count 1); a UUID by default.")
@with_token
def publish(
    queue: str, action: str, payload: str, token: str, count: int, message_id: str | None
) -> None:
    """Publish COUNT jobs asking for ACTION to QUEUE."""
    from ..publisher import publish_jobs

    body = read_payload(payload)
    settings = settings_or_exit(BrokerSettings)
    ids = run_or_exit(
        publish_jobs(
            settings.broker_url.get_secret_value(),
            queue,
            action,
            body,
            token,
            count=count,
            message_id=message_id,
        ),
        "publish",
    )
    click.echo(ids[0] if count == 1 else f"published {len(ids)} jobs to {queue}")
