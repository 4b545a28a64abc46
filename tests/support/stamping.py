"""Whether a broker stamps arrivals: RabbitMQ's message interceptor
``set_header_timestamp`` with ``overwrite = true`` (``tests/brokers/rabbitmq4.sh`` configures it),
proven as a worker proves it (:func:`worker.amqp.arrival.stamping`); and RabbitMQ 4.0
nodes of the tests' own, started and stopped by that script.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import aio_pika

from worker.amqp.arrival import stamping

RABBITMQ4 = Path(__file__).resolve().parents[1] / "brokers" / "rabbitmq4.sh"
RABBITMQ4_ROOT = Path(os.environ.get("WARDEN_RABBITMQ4_ROOT", "/var/cache/warden/rabbitmq4-trixie"))
KEEPING_NODE = "keep"
"""The second node of ``rabbitmq4.sh``: ``overwrite = false``, AMQP on 5683."""


async def broker_stamps(url: str) -> tuple[bool, str]:
    """Whether the broker at ``url`` overwrites a forged arrival stamp, and its version."""
    connection = await aio_pika.connect(url)
    try:
        transport = connection.transport
        assert transport is not None
        version = transport.connection.server_properties.get("version", "")
        version = version.decode() if isinstance(version, bytes) else str(version)
        publisher = await connection.channel(publisher_confirms=True)
        channel = await connection.channel()
        return await stamping(publisher, channel) is None, version
    finally:
        await connection.close()


def rabbitmq4_built() -> bool:
    """Whether ``rabbitmq4.sh build`` has run on this machine, and this process may run it."""
    return (RABBITMQ4_ROOT / ".warden-rabbitmq4-built").is_file() and os.geteuid() == 0


def rabbitmq4(command: str, node: str = "") -> str:
    """Run ``rabbitmq4.sh command`` for ``node`` ("" for the stamping one); its output."""
    done = subprocess.run(
        [str(RABBITMQ4), command],
        env={**os.environ, "WARDEN_RABBITMQ4_NODE": node},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmq4.sh {command}: {done.stderr.strip()}")
    return done.stdout.strip()


async def start_rabbitmq4(node: str) -> str:
    """Start ``node`` (its AMQP URL once it answers), in a thread: booting takes seconds."""
    return await asyncio.to_thread(rabbitmq4, "start", node)
