"""``warden publish``: jobs onto a queue, each confirmed by the broker."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress

from worker.auth.credentials import TokenSource
from worker.commands.common import (
    fail,
    read_payload,
    run_or_exit,
    settings_or_exit,
    token_options,
    with_token_source,
)
from worker.errors import ConfigurationError, JobRefused
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
@with_token_source
def publish(
    queue: str,
    action: str,
    payload: str,
    token: TokenSource,
    count: int,
    message_id: str | None,
    proof_key: Path | None,
) -> None:
    """Publish COUNT jobs asking for ACTION to QUEUE through warden.jobs, each confirmed.

    With --token-url the token comes from the client-credentials grant and is renewed before
    it expires. A job the broker refuses stops the run with the broker's reason.
    """
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

        async def publishing() -> list[str] | JobRefused:
            try:
                return await publish_jobs(
                    settings.broker_url.get_secret_value(),
                    queue,
                    action,
                    body,
                    token,
                    count=count,
                    message_id=message_id,
                    proof_key=key,
                    on_confirmed=lambda _: progress.advance(task),
                )
            except JobRefused as exc:
                return exc

        published = run_or_exit(publishing(), "publish")
    if isinstance(published, JobRefused):
        before = f" ({len(published.confirmed)} of {count} were published)" if count > 1 else ""
        fail(f"publish refused: {published}{before}")
    click.echo(published[0] if count == 1 else f"published {len(published)} jobs to {queue}")
