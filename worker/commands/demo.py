"""``warden demo``: what warden does, on the local RabbitMQ and nothing else.

A development issuer on loopback, a worker with the demo actions, and jobs: allowed ones, and one
for each of nine reasons to refuse. The outcomes show live, then the dead letters by reason and
the commands to try next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from worker.commands.common import fail
from worker.errors import ConfigurationError, WardenError
from worker.ops import logs

if TYPE_CHECKING:
    from worker.demo.session import Session

DEFAULT_QUEUE = "demo-jobs"
SETTLE_TIMEOUT = 30.0
"""How long the demo waits for every job to be settled once they are published."""


@click.command()
@click.option(
    "--queue",
    default=DEFAULT_QUEUE,
    show_default=True,
    help="The demo's own work queue: emptied when the demo starts.",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Keep the worker and the issuer up for jobs of your own, until Ctrl-C.",
)
def demo(queue: str, keep_running: bool) -> None:
    """Show what warden does, with only RabbitMQ (WARDEN_BROKER_URL, default localhost).

    A development issuer (loopback only, keys generated now and never written, not for
    production), a worker running the actions of worker.examples, and jobs carrying its tokens:
    some allowed, the others refused for nine different reasons.
    """
    from worker.demo.session import Session

    logs.configure("WARNING")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    try:
        ok = asyncio.run(_demo(Session(queue), keep_running, console))
    except ConfigurationError as exc:
        fail(f"demo: {exc}")
    except WardenError as exc:
        fail(f"demo failed: {exc}")
    except OSError as exc:
        fail(f"demo failed: cannot reach the broker (WARDEN_BROKER_URL): {exc}")
    sys.exit(0 if ok else 1)


async def _demo(session: Session, keep_running: bool, console: Console) -> bool:
    async with session:
        await session.clear_queue()
        took = await session.start()
        console.print(
            f"development issuer at {session.issuer.url}: [bold]not for production[/bold] "
            "(keys generated now, never written; loopback only)"
        )
        console.print(
            f"worker consuming [bold]{session.queue}[/bold] with the actions of "
            f"worker.examples (ready in {took:.1f}s)\n"
        )
        settled = await _show_outcomes(session, console)
        counts = await session.dead_letters()
        _show_dead_letters(session, counts, console)
        denied = sum(1 for r in session.rows.values() if r.result is not None and r.result.denied)
        ok = settled and all(r.as_expected for r in session.rows.values())
        if sum(counts.values()) != denied:
            ok = False
            console.print(
                f"[red]{denied} jobs were refused, but {session.queue}.dlq holds "
                f"{sum(counts.values())} dead letters[/red]"
            )
        if not keep_running:
            _show_next(session, console)
            return ok
        with _secret_file(session) as secret:
            _show_commands(session, secret, console)
            await _follow(session, console)
        return ok


async def _show_outcomes(session: Session, console: Console) -> bool:
    """Publish the jobs and show each outcome as it comes; whether every job was settled."""
    with Live(_outcomes(session), console=console, refresh_per_second=8) as live:
        await session.publish()
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                while not session.all_settled.is_set():
                    await session.changed.wait()
                    session.changed.clear()
                    live.update(_outcomes(session))
        except TimeoutError:
            live.update(_outcomes(session))
            console.print(f"[red]not every job was settled within {SETTLE_TIMEOUT:.0f}s[/red]")
            return False
        live.update(_outcomes(session))
    console.print()
    return True


def _outcomes(session: Session) -> Table:
    table = Table("#", "job", "action", "expected", "outcome", title=f"jobs on {session.queue}")
    for number, row in enumerate(session.rows.values(), start=1):
        if not row.final:
            outcome = "[dim]waiting[/dim]"
        else:
            colour = "green" if row.as_expected else "bold red"
            outcome = f"[{colour}]{row.shown}[/{colour}]"
        table.add_row(str(number), row.job.what, row.job.action, row.job.expected, outcome)
    return table


def _show_dead_letters(session: Session, counts: dict[str, int], console: Console) -> None:
    table = Table("reason", "dead letters", title=f"dead letters in {session.queue}.dlq")
    for reason, count in sorted(counts.items()):
        table.add_row(reason, str(count))
    table.add_row("[bold]all[/bold]", f"[bold]{sum(counts.values())}[/bold]")
    console.print(table)


def _queue_option(session: Session) -> str:
    return "" if session.queue == DEFAULT_QUEUE else f" --queue {shlex.quote(session.queue)}"


def _show_next(session: Session, console: Console) -> None:
    queue = shlex.quote(session.queue)
    example = next(
        (row for row in session.rows.values() if row.job.expected == "proof_invalid"), None
    )
    lines = [
        f"warden dlq stats {queue}",
        f"warden dlq list {queue} --reason token_expired",
    ]
    if example is not None:
        lines.append(f"warden dlq show {queue} {example.job.message_id}")
    lines += [
        f"warden demo --keep-running{_queue_option(session)}",
        "  # keeps the issuer and the worker up, and prints commands that get a token,",
        "  # publish a job of your own and run warden explain on that token",
    ]
    console.print("\nTry next:")
    for line in lines:
        console.print(f"  {line}", soft_wrap=True)


@contextlib.contextmanager
def _secret_file(session: Session) -> Iterator[Path]:
    """The reporter's client secret in a file only this user can read, removed afterwards, so
    that the commands shown can use it without the secret being printed."""
    from worker.demo.scenario import REPORTER

    folder = Path(tempfile.mkdtemp(prefix="warden-demo-"))
    path = folder / f"{REPORTER}.secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(session.secret_of(REPORTER))
        yield path
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()


def _show_commands(session: Session, secret: Path, console: Console) -> None:
    from worker.demo.scenario import GENERATE, READ_SCOPE, REPORTER, WRITE_SCOPE

    issuer, queue = session.issuer, shlex.quote(session.queue)
    lines = [
        f"export WARDEN_ISSUER={shlex.quote(issuer.url)} "
        f"WARDEN_AUDIENCE={shlex.quote(issuer.audience)} "
        f"WARDEN_ACTIONS=worker.examples WARDEN_QUEUES={queue}",
        f'WARDEN_CLIENT_SECRET="$(cat {shlex.quote(str(secret))})" warden token '
        f"--token-url {shlex.quote(issuer.token_url)} --client-id {REPORTER} "
        f"--scope {shlex.quote(f'{WRITE_SCOPE} {READ_SCOPE}')} > token.jwt",
        f"warden publish {queue} {GENERATE} --payload "
        + shlex.quote('{"report": "mine"}')
        + " --token-file token.jwt",
        f"warden explain --action {GENERATE} < token.jwt",
        f"warden dlq stats {queue}",
    ]
    console.print(
        "\nThe worker and the development issuer keep running until Ctrl-C. In another shell:"
    )
    for line in lines:
        console.print(f"  {line}", soft_wrap=True, markup=False)
    console.print("\nJobs of your own, as they are settled:")


async def _follow(session: Session, console: Console) -> None:
    """Print each job the user publishes as it is settled, until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, session.stop)
    stopped = asyncio.create_task(session.wait_stopped())
    try:
        while True:
            other = asyncio.create_task(session.others.get())
            await asyncio.wait({other, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not other.done():
                other.cancel()
                return
            done = other.result()
            shown = "allowed" if done.result.done else (done.result.reason or done.result.outcome)
            console.print(f"  {done.result.message_id}  {done.action}  {shown}", markup=False)
    finally:
        stopped.cancel()
