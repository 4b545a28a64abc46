"""What several commands share: failing with one clear line, settings, tokens, payloads."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from worker.auth.credentials import ClientCredentials, StaticToken, TokenSource
from worker.errors import ConfigurationError, TokenRequestFailed, WardenError
from worker.settings import S, load_settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``warden: <message>`` on stderr and exit."""
    click.echo(f"warden: {message}", err=True)
    sys.exit(code)


def settings_or_exit(kind: type[S]) -> S:
    """The settings, or exit naming the bad variable."""
    try:
        return load_settings(kind)
    except ConfigurationError as exc:
        fail(f"configuration error: {exc}")


def run_or_exit(work: Coroutine[Any, Any, T], doing: str) -> T:
    """Run ``work``; a broker or authorization server problem exits with one line."""
    try:
        return asyncio.run(work)
    except (WardenError, TokenRequestFailed) as exc:
        fail(f"{doing} failed: {exc}")
    except OSError as exc:
        fail(f"{doing} failed: cannot reach the broker: {exc}")


def read_payload(value: str) -> dict[str, Any]:
    """A JSON object given inline or as ``@FILE``."""
    text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    return payload


def token_options(command: F) -> F:
    """``--token``/``--token-file``, or client credentials to get one from the issuer."""
    options = [
        click.option("--token", envvar="WARDEN_TOKEN", help="Access token (or WARDEN_TOKEN)."),
        click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--token-url", help="Token endpoint, for the client-credentials grant."),
        click.option("--client-id", "cc_client_id", help="Client id, with --token-url."),
        click.option(
            "--client-secret",
            envvar="WARDEN_CLIENT_SECRET",
            help="Client secret (or WARDEN_CLIENT_SECRET), with --token-url.",
        ),
        click.option("--scope", help="Space-separated scopes to ask for, with --token-url."),
        click.option("--resource", help="RFC 8707 resource (audience), with --token-url."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def token_source_from(options: dict[str, Any]) -> TokenSource:
    """The token source the token options name: a token given, or the client-credentials
    grant, which fetches a new token before the current one expires.

    Pops the token options from ``options``.
    """
    token, token_file = options.pop("token"), options.pop("token_file")
    token_url, client_id = options.pop("token_url"), options.pop("cc_client_id")
    secret, scope, resource = (
        options.pop("client_secret"),
        options.pop("scope"),
        options.pop("resource"),
    )
    given = [name for name, v in (("--token", token), ("--token-file", token_file)) if v]
    if token_url:
        given.append("--token-url")
    if len(given) > 1:
        raise click.UsageError(f"give one of {', '.join(given)}")
    if token_file is not None:
        text = str(token_file.read_text(encoding="ascii").strip())
        if not text:
            raise click.UsageError(f"--token-file {token_file} is empty")
        return StaticToken(text)
    if token:
        return StaticToken(str(token))
    if token_url:
        if not client_id or not secret:
            raise click.UsageError("--token-url needs --client-id and --client-secret")
        return ClientCredentials(token_url, client_id, secret, scope=scope, resource=resource)
    raise click.UsageError(
        "a token is needed: --token, --token-file, WARDEN_TOKEN, or --token-url with client "
        "credentials"
    )


def obtain_token(options: dict[str, Any]) -> str:
    """The token the token options name, asking the authorization server if need be.

    Pops the token options from ``options``.
    """
    return run_or_exit(token_source_from(options).token(), "getting a token")


def with_token(command: Callable[..., T]) -> Callable[..., T]:
    """Resolve the token options into one ``token`` argument."""

    @functools.wraps(command)
    def wrapper(**options: Any) -> T:
        token = obtain_token(options)
        return command(token=token, **options)

    return wrapper


_TOKEN_OPTIONS = (
    "token",
    "token_file",
    "token_url",
    "cc_client_id",
    "client_secret",
    "scope",
    "resource",
)


def with_optional_token(command: Callable[..., T]) -> Callable[..., T]:
    """Resolve the token options into one ``token`` argument, None where none was given."""

    @functools.wraps(command)
    def wrapper(**options: Any) -> T:
        if options.get("token") or options.get("token_file") or options.get("token_url"):
            return command(token=obtain_token(options), **options)
        for name in _TOKEN_OPTIONS:
            options.pop(name, None)
        return command(token=None, **options)

    return wrapper


def with_token_source(command: Callable[..., T]) -> Callable[..., T]:
    """Resolve the token options into one ``token`` argument: a token source, asked for each
    job, so that a long run renews its token before it expires."""

    @functools.wraps(command)
    def wrapper(**options: Any) -> T:
        return command(token=token_source_from(options), **options)

    return wrapper
