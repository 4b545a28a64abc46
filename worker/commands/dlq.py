"""``warden dlq``: how many dead letters, why, whose; send them again; remove them."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from worker import names
from worker.commands.common import (
    fail,
    run_or_exit,
    settings_or_exit,
    token_options,
    with_optional_token,
)
from worker.deadletters import admin
from worker.deadletters.read import UNTRUSTED, Letter
from worker.deadletters.seal import Seal
from worker.settings import BrokerSettings

# Piped into a file or a pager, a table is not squeezed to 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def _json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _reader(settings: BrokerSettings) -> admin.Reader:
    return admin.Reader(
        settings.broker_url.get_secret_value(),
        settings.broker_user(),
        settings.trusted(),
        settings.heartbeat_seconds,
    )


def _by(reason: str | None, message_id: str | None = None) -> admin.Select:
    """Letters of ``reason`` (``untrusted``: those no trusted user wrote), or with that id."""

    def select(letter: Letter) -> bool:
        if message_id is not None and letter.message_id != message_id:
            return False
        return reason is None or letter.counted_as == reason

    return select


def _who(letter: Letter) -> str:
    """The job's client (or subject); what an unverified token claimed is marked as such."""
    if letter.client_id or letter.sub:
        return letter.client_id or letter.sub or ""
    said = letter.unverified or {}
    claimed = said.get("client_id") or said.get("sub")
    return f"unverified: {claimed}" if claimed else "-"


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters (looking never disturbs a queue)."""


@dlq.command()
@click.argument("queues", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def stats(queues: tuple[str, ...], as_json: bool) -> None:
    """Dead letters by reason, per QUEUE (default: WARDEN_QUEUES); a job dead-lettered again
    for the same reason counts once."""
    settings = settings_or_exit(BrokerSettings)
    counts = run_or_exit(
        admin.stats(_reader(settings), list(queues or settings.queues)),
        "dlq stats",
    )
    if as_json:
        _json({queue: dict(sorted(c.items())) for queue, c in counts.items()})
        return
    table = Table("queue", "reason", "dead letters")
    for queue, by_reason in counts.items():
        for reason, count in sorted(by_reason.items()):
            table.add_row(queue, reason, str(count))
        table.add_row(queue, "[bold]all[/bold]", f"[bold]{sum(by_reason.values())}[/bold]")
    out.print(table)


@dlq.command(name="list")
@click.argument("queue")
@click.option("--reason", help="Only dead letters of this reason.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def list_(queue: str, reason: str | None, limit: int | None, as_json: bool) -> None:
    """QUEUE's dead letters, oldest first; a job dead-lettered again for the same reason is
    shown once, with its number of copies."""
    settings = settings_or_exit(BrokerSettings)
    found = run_or_exit(
        admin.letters(_reader(settings), queue, _by(reason), limit),
        "dlq list",
    )
    if as_json:
        _json([letter.summary() for letter in found])
        return
    table = Table("message id", "reason", "action", "client_id / sub", "denied at", "detail")
    for letter in found:
        copies = f" ({letter.copies} copies)" if letter.copies > 1 else ""
        table.add_row(
            (letter.message_id or "-") + copies,
            (letter.reason or "-") if letter.trusted else f"[red]{UNTRUSTED}[/red]",
            letter.action or "-",
            _who(letter),
            letter.denied_at or "-",
            letter.detail or "",
        )
    out.print(table)


@dlq.command()
@click.argument("queue")
@click.argument("message_id")
def show(queue: str, message_id: str) -> None:
    """One dead letter: its whole denial record and the original body."""
    settings = settings_or_exit(BrokerSettings)
    found = run_or_exit(
        admin.letters(_reader(settings), queue, _by(None, message_id)),
        "dlq show",
    )
    if not found:
        fail(f"no dead letter with message id {message_id!r} in {queue}.dlq", code=1)
    for letter in found:
        try:
            body: Any = json.loads(letter.body)
        except ValueError:
            body = letter.body.decode("utf-8", "replace")
        _json(
            {
                **letter.summary(),
                "origin": letter.origin,
                "denial": letter.denial,
                "headers": {k: v for k, v in letter.headers.items() if k != names.HEADER_DENIAL},
                "body": body,
            }
        )


@dlq.command()
@click.argument("queue")
@click.option("--message-id", help="Only the dead letter with this message id.")
@click.option("--reason", help="Only dead letters of this reason.")
@click.option("--all", "everything", is_flag=True, help="Every dead letter of QUEUE.")
@token_options
@with_optional_token
def replay(
    queue: str, message_id: str | None, reason: str | None, everything: bool, token: str | None
) -> None:
    """Send dead letters back to QUEUE: each with its own token, or with the one given.

    Without a token option, a job refused only for time goes back with its own token, which its
    dead letter carries sealed (WARDEN_SEAL_KEY), and its first arrival: it runs as its
    publisher if its queueing allowance covers it now. With --token, --token-file or client
    credentials, every selected job goes back with that token instead, and is marked as
    replayed by this tool's broker user.

    Only letters warden wrote move (untrusted ones, see ``dlq list``, never do). Each one moves
    in a transaction (republished and removed together), so a replay that is stopped loses
    nothing and moves nothing twice when it is run again. Copies of a letter (the same job
    dead-lettered again for the same reason) are removed with it: the job goes back once.
    """
    if not (message_id or reason or everything):
        raise click.UsageError("say what to replay: --message-id, --reason or --all")
    settings = settings_or_exit(BrokerSettings)
    key = settings.seal_key_bytes()
    if token is None and key is None:
        raise click.UsageError(
            "a token is needed: WARDEN_SEAL_KEY is not set, so no dead letter's own token can be "
            "opened; give --token, --token-file, WARDEN_TOKEN, or --token-url with client "
            "credentials"
        )
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("replaying", total=None)

        def moved(letter: Letter) -> None:
            progress.advance(task)
            click.echo(f"moved {letter.message_id} to {letter.origin}")

        report = run_or_exit(
            admin.replay(
                _reader(settings),
                queue,
                _by(reason, message_id),
                token,
                seal=None if key is None else Seal(key),
                on_moved=moved,
            ),
            "replay",
        )
    left = report.skipped + len(report.unsealed)
    repeats = f", removed {report.repeats} repeated copies" if report.repeats else ""
    click.echo(f"replayed {len(report.moved)}{repeats}, left {left} in {queue}.dlq")
    if report.unsealed:
        fail(
            f"{len(report.unsealed)} carry no token of their own that WARDEN_SEAL_KEY opens "
            "(only jobs refused token_expired or token_not_yet_valid do): a token is needed to "
            "replay them (--token, --token-file or client credentials)",
            code=1,
        )
    if report.returned:
        fail(f"{len(report.returned)} could not be routed and stay dead letters", code=1)


@dlq.command()
@click.argument("queue")
@click.option("--reason", help="Only dead letters of this reason.")
@click.option("--all", "everything", is_flag=True, help="Every dead letter of QUEUE.")
@click.option("--yes", is_flag=True, help="Confirm: the dead letters are gone for good.")
def purge(queue: str, reason: str | None, everything: bool, yes: bool) -> None:
    """Remove QUEUE's dead letters of one reason (or --all)."""
    if not (reason or everything):
        raise click.UsageError("say what to purge: --reason or --all")
    if not yes:
        raise click.UsageError("purging cannot be undone: add --yes")
    settings = settings_or_exit(BrokerSettings)
    report = run_or_exit(admin.purge(_reader(settings), queue, _by(reason)), "purge")
    click.echo(f"purged {len(report.moved)}, kept {report.skipped} in {queue}.dlq")
