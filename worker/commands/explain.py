"""``warden explain``: every check of ``docs/checks.md`` for one token and action, without a
broker."""

from __future__ import annotations

import asyncio
import json
import sys

import click
import httpx
from rich.console import Console
from rich.table import Table

from worker import errors
from worker.commands.common import fail, read_payload, settings_or_exit
from worker.errors import ConfigurationError
from worker.pipeline.actions import Registry
from worker.pipeline.decision import Allowed, Gate, Verdict
from worker.pipeline.delivery import Delivery
from worker.settings import Settings

CHECKS = errors.DENIALS[: errors.DENIALS.index(errors.PayloadInvalid) + 1]
"""Checks 1 to 18, in order; each denial class's docstring says what it checks."""
REVOCATION = errors.TokenRevoked.reason


def _what(cls: type[errors.Denial]) -> str:
    text = (cls.__doc__ or "").split(":", 1)[-1].strip().rstrip(".")
    return text[:1].upper() + text[1:]


async def _decide(settings: Settings, registry: Registry, delivery: Delivery) -> Verdict:
    from worker.auth.setup import build_introspector, build_keyring, build_trust

    async with httpx.AsyncClient(timeout=settings.jwks_timeout_seconds) as http:
        keyring = build_keyring(settings, http)
        await keyring.load()
        trust = build_trust(settings)
        gate = Gate(
            trust, keyring, registry, introspector=build_introspector(settings, trust, http)
        )
        return await gate.decide(delivery)


@click.command()
@click.option("--token", help="The access token; read from stdin when not given.")
@click.option("--action", "action_name", required=True, help="The action the job would ask for.")
@click.option("--queue", default="jobs", show_default=True, help="The queue it would come from.")
@click.option(
    "--payload", default="{}", show_default=True, help="The job's payload: JSON, or @FILE."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def explain(token: str | None, action_name: str, queue: str, payload: str, as_json: bool) -> None:
    """Each check, passed or failed, for a token, an action and a payload (exit 0 allowed, 1
    denied).

    Uses the configured issuers' real keys and WARDEN_ACTIONS. The revocation feed is not
    read (no broker), so check 13 is reported as not checked.
    """
    if token is None or token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        raise click.UsageError("give --token, or the token on stdin")
    settings = settings_or_exit(Settings)
    try:
        registry = Registry.from_modules(settings.actions)
    except ConfigurationError as exc:
        fail(f"configuration error: {exc}")
    body = json.dumps({"action": action_name, "payload": read_payload(payload)}).encode()
    delivery = Delivery(
        body, {"authorization": f"Bearer {token}"}, "explain", "application/json", queue
    )
    try:
        verdict = asyncio.run(_decide(settings, registry, delivery))
    except errors.Unavailable as exc:
        fail(f"no verdict can be reached now: {exc}", code=3)
    except ConfigurationError as exc:
        fail(f"configuration error: {exc}")

    failed = None if isinstance(verdict, Allowed) else verdict.denial
    rows = _rows(failed)
    verdict_text = "allowed" if failed is None else f"denied: {failed.reason}"
    if as_json:
        click.echo(json.dumps({"verdict": verdict_text, "checks": rows}, indent=2))
    else:
        _print(rows, verdict_text)
    sys.exit(0 if failed is None else 1)


def _rows(failed: errors.Denial | None) -> list[dict[str, object]]:
    """One row per check: passed, failed (the first that failed), not reached, not checked."""
    rows: list[dict[str, object]] = []
    reached = True
    for number, cls in enumerate(CHECKS, start=1):
        if failed is not None and cls.reason == failed.reason:
            result, detail, reached = "failed", failed.detail, False
        elif not reached:
            result, detail = "not reached", ""
        elif cls.reason == REVOCATION:
            result, detail = "not checked", "the revocation feed is read by workers only"
        else:
            result, detail = "passed", ""
        rows.append(
            {
                "check": number,
                "what": _what(cls),
                "reason": cls.reason,
                "result": result,
                "detail": detail,
            }
        )
    if failed is not None and reached:
        rows.append(
            {
                "check": "-",
                "what": "The action",
                "reason": failed.reason,
                "result": "failed",
                "detail": failed.detail,
            }
        )
    return rows


def _print(rows: list[dict[str, object]], verdict: str) -> None:
    table = Table("#", "check", "reason", "result", "detail")
    for row in rows:
        style = {"passed": "green", "failed": "bold red"}.get(str(row["result"]), "dim")
        table.add_row(
            str(row["check"]),
            str(row["what"]),
            str(row["reason"]),
            f"[{style}]{row['result']}[/{style}]",
            str(row["detail"]),
        )
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
    console.print(table)
    console.print(f"verdict: {verdict}")
