"""``warden publish``: jobs onto a queue, each confirmed by the broker."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress

from worker.commands.common import (
    fail,
    read_payload,
    run_or_exit,
    settings_or_exit,
    token_options,
    with_token,
)
from worker.errors import ConfigurationError
from worker.settings import BrokerSettings


@click.command()
@click.argument("queue")
@click.argument("action")
@click.option(
    "--payload", default="{}", show_default=True, help="JSON object, or @FILE holding one."
)
@token_options
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--message-id", help="Idempotency key (with --count 1); a UUID by default.")
@click.option(
    "--proof-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key the token is bound to (cnf.jkt): sign each job's x-warden-proof.",
)
@with_token
def publish(
    queue: str,
    action: str,
    payload: str,
    token: str,
    count: int,
    message_id: str | None,
    proof_key: Path | None,
) -> None:
    """Publish COUNT jobs asking for ACTION to QUEUE."""
    from worker.amqp.publisher import publish_jobs
    from worker.auth.proof import ProofKey

    body = read_payload(payload)
    try:
        key = None if proof_key is None else ProofKey.from_file(proof_key)
    except ConfigurationError as exc:
        fail(f"--proof-key: {exc}")
    settings = settings_or_exit(BrokerSettings)
    with Progress(console=Console(stderr=True), transient=True, disable=count < 100) as progress:
        task = progress.add_task(f"publishing to {queue}", total=count)
        ids = run_or_exit(
            publish_jobs(
                settings.broker_url.get_secret_value(),
                queue,
                action,
                body,
                token,
                count=count,
                message_id=message_id,
                proof_key=key,
                on_confirmed=lambda n: progress.advance(task, n),
            ),
            "publish",
        )
    click.echo(ids[0] if count == 1 else f"published {len(ids)} jobs to {queue}")
