"""``warden token``: an access token from the authorization server, on stdout."""

from __future__ import annotations

import click

from worker.auth.credentials import ClientCredentials
from worker.commands.common import run_or_exit


@click.command()
@click.option("--token-url", required=True, help="The authorization server's token endpoint.")
@click.option("--client-id", required=True)
@click.option(
    "--client-secret",
    envvar="WARDEN_CLIENT_SECRET",
    required=True,
    help="The client secret (or WARDEN_CLIENT_SECRET, which keeps it out of the process list).",
)
@click.option("--scope", help="Space-separated scopes to ask for.")
@click.option("--resource", help="RFC 8707 resource (audience).")
def token(
    token_url: str, client_id: str, client_secret: str, scope: str | None, resource: str | None
) -> None:
    """Print an access token of the client-credentials grant (for a token file, or a pipe)."""
    click.echo(
        run_or_exit(
            ClientCredentials(
                token_url, client_id, client_secret, scope=scope, resource=resource
            ).token(),
            "getting a token",
        )
    )
