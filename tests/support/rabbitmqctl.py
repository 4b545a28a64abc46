"""The broker's own command line, for what AMQP cannot do: close a client's connection."""

from __future__ import annotations

import asyncio


async def _rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
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
