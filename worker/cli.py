"""The ``warden`` command: one console script, its subcommands in :mod:`worker.commands`."""

from __future__ import annotations

import click

from worker.commands.asyncapi import asyncapi
from worker.commands.demo import demo
from worker.commands.dlq import dlq
from worker.commands.explain import explain
from worker.commands.permissions import permissions
from worker.commands.publish import publish
from worker.commands.revoke import revoke
from worker.commands.run import run
from worker.commands.token import token


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """warden: verify each job's access token, run what is allowed, dead-letter what is not."""


for command in (demo, run, publish, token, revoke, dlq, explain, permissions, asyncapi):
    main.add_command(command)
