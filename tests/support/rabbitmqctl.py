"""The broker's own command line, for what AMQP cannot do: close a client's connection, make a
virtual host.

``WARDEN_TEST_RABBITMQCTL`` is the command that runs ``rabbitmqctl`` against the broker of
``RABBITMQ_URL``, split as a shell would (``rabbitmqctl`` where unset): a broker of another
version runs elsewhere, with a command line of its own (``tests/brokers/rabbitmq4.sh ctl``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

COMMAND_VARIABLE = "WARDEN_TEST_RABBITMQCTL"


def command() -> list[str]:
    """The command line, without arguments, that runs ``rabbitmqctl`` for the test broker."""
    return shlex.split(os.environ.get(COMMAND_VARIABLE) or "rabbitmqctl")


def _available() -> bool:
    # A command named in the environment or in CI must be there: a test that needs it then
    # fails instead of being skipped.
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return ci or bool(os.environ.get(COMMAND_VARIABLE)) or shutil.which("rabbitmqctl") is not None


needs_rabbitmqctl = pytest.mark.skipif(
    not _available(), reason=f"needs rabbitmqctl (or {COMMAND_VARIABLE})"
)


async def _rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command(), "-q", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def close_connection_named(name: str) -> None:
    """Have the broker close the one connection whose client calls itself ``name``."""
    listing = await _rabbitmqctl(
        "list_connections", "--no-table-headers", "pid", "client_properties"
    )
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if f'"{name}"' in line]
    assert len(pids) == 1, listing
    await _rabbitmqctl("close_connection", pids[0], "closed by a test")


async def close_connections_of_vhost(broker_url: str, name: str) -> int:
    """Have the broker close every connection called ``name`` in the virtual host of
    ``broker_url`` (a test's own); return how many it closed."""
    vhost = unquote(urlsplit(broker_url).path[1:]) or "/"
    listing = await _rabbitmqctl(
        "list_connections", "--no-table-headers", "pid", "vhost", "client_properties"
    )
    pids = [
        line.split("\t", 2)[0]
        for line in listing.splitlines()
        if line.split("\t", 2)[1:2] == [vhost] and f'"{name}"' in line
    ]
    for pid in pids:
        await _rabbitmqctl("close_connection", pid, "closed by a test")
    return len(pids)


@contextlib.asynccontextmanager
async def scratch_vhost(broker_url: str) -> AsyncIterator[str]:
    """A virtual host of the test's own on the shared broker, with the URL's user allowed
    everything in it; deleted afterwards with everything in it (its revocation stream too)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    parts = urlsplit(broker_url)
    await _rabbitmqctl("add_vhost", name)
    try:
        user = parts.username or "guest"
        await _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    finally:
        await _rabbitmqctl("delete_vhost", name)


async def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` against the shared node; fail the test on an error."""
    return await _rabbitmqctl(*args)


@contextlib.asynccontextmanager
async def broker_users(*names: str) -> AsyncIterator[dict[str, str]]:
    """Broker users of the test's own (name -> password), with no permissions yet; deleted
    afterwards."""
    passwords = {name: uuid.uuid4().hex for name in names}
    for name, password in passwords.items():
        await _rabbitmqctl("add_user", name, password)
    try:
        yield passwords
    finally:
        for name in passwords:
            await _rabbitmqctl("delete_user", name)


def as_user(url: str, user: str, password: str) -> str:
    """``url`` with another user's credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def writing_user(broker_url: str, write: str) -> AsyncIterator[tuple[str, str]]:
    """A broker user of the test's own that may write to the exchanges ``write`` matches and do
    nothing else: its name, and a URL that connects as it."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    vhost = unquote(urlsplit(broker_url).path[1:]) or "/"
    async with broker_users(name) as passwords:
        await rabbitmqctl("set_permissions", "-p", vhost, name, "^$", write, "^$")
        yield name, as_user(broker_url, name, passwords[name])
