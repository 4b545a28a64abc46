"""The ``warden`` command (SPEC section 7)."""

from __future__ import annotations

import click

from .commands.dlq import dlq
from .commands.explain import explain
from .commands.publish import publish
from .commands.revoke import revoke
from .commands.run import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """warden: verify each job's access token, run what is allowed, dead-letter what is not."""


for command in (run, publish, revoke, dlq, explain):
    main.add_command(command)
