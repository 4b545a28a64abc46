"""``warden permissions``: the broker users warden's roles need, as ``rabbitmqctl`` lines."""

from __future__ import annotations

import shlex

import click

from worker.amqp.topology import roles
from worker.commands.common import settings_or_exit
from worker.settings import BrokerSettings


@click.command()
@click.option("--vhost", default="/", show_default=True, help="The virtual host warden uses.")
@click.option("--queues", help="Work queues, comma-separated (default: WARDEN_QUEUES).")
@click.option("--prefix", default="warden-", show_default=True, help="User names: PREFIX + role.")
def permissions(vhost: str, queues: str | None, prefix: str) -> None:
    """Print the rabbitmqctl set_permissions line of each role's user.

    worker: the workers; publisher: job publishers; revoker: who runs warden revoke; operator:
    who runs warden dlq. Give each its own user; set WARDEN_TRUSTED_USERS to the worker, revoker
    and operator users.
    """
    if queues is None:
        names = settings_or_exit(BrokerSettings).queues
    else:
        names = tuple(q.strip() for q in queues.split(",") if q.strip())
        if not names:
            raise click.BadParameter("name at least one queue", param_hint="--queues")
    for role in roles(names):
        click.echo(f"# {role.name}: {role.what}")
        click.echo(
            shlex.join(
                [
                    "rabbitmqctl",
                    "set_permissions",
                    "-p",
                    vhost,
                    prefix + role.name,
                    role.configure,
                    role.write,
                    role.read,
                ]
            )
        )
