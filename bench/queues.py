"""Work queues per worker (``queues-N``): on a RabbitMQ node of the run's own, with the default
limits of the installed ``rabbitmq-server`` (its file handles included), a worker serving N work
queues: how long until it consumes from all, whether each queue's job runs, and how many broker
queues that takes.

The node (``warden-bench@localhost``, AMQP 5781, distribution 25781, its data in a temporary
folder) is started for the scenarios and stopped by name afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika

from tests.support.issuer import JwksServer, SigningKey
from tests.support.nodes import Node
from worker.names import JOBS_EXCHANGE, QUARANTINE_QUEUE
from worker.pipeline.actions import Registry
from worker.service.runner import Worker
from worker.settings import Settings

PORT, DIST_PORT = 5781, 25781


class BenchNode:
    """The run's own node, started once and stopped by name when the last scenario is done."""

    node: Node | None = None
    folder: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def get(cls) -> Node:
        if cls.node is None:
            cls.folder = tempfile.TemporaryDirectory(prefix="warden-bench-")
            Path(cls.folder.name).chmod(0o755)  # the server runs as the rabbitmq user
            cls.node = Node("bench", PORT, DIST_PORT, Path(cls.folder.name))
            asyncio.run(cls.node.stop())  # one left over by an interrupted run
            asyncio.run(cls.node.start(timeout=120))
        return cls.node

    @classmethod
    def stop(cls) -> None:
        if cls.node is not None:
            asyncio.run(cls.node.stop())
            cls.node = None
        if cls.folder is not None:
            cls.folder.cleanup()
            cls.folder = None


async def _scenario(node: Node, count: int) -> dict[str, Any]:
    server = JwksServer()
    server.start()
    try:
        issuer = server.issuer("bench", SigningKey.generate("ES256"))
        prefix = f"q{count}-{uuid.uuid4().hex[:4]}"
        queues = tuple(f"{prefix}-{i}" for i in range(count))
        settings = Settings(
            broker_url=node.url,
            queues=queues,
            issuer=issuer.url,
            jwks_url=server.jwks_url(issuer),
            audience=issuer.audience,
            http_port=0,
            worker_id=f"bench-{prefix}",
            log_level="WARNING",
        )
        consumed: set[str] = set()
        all_consumed = asyncio.Event()

        def settled(delivery: Any, _: Any) -> None:
            consumed.add(delivery.queue)
            if len(consumed) == count:
                all_consumed.set()

        worker = Worker(settings, Registry.from_modules(["bench.actions"]), on_settled=settled)
        stop = asyncio.Event()
        started = time.perf_counter()
        running = asyncio.create_task(worker.run(stop))
        ready = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({ready, running}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if running.done():
            running.result()
        ready_s = time.perf_counter() - started if ready.done() else None
        token = issuer.token(scope="bench:run", exp=int(time.time()) + 600)
        connection = await aio_pika.connect(node.url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            jobs = await channel.get_exchange(JOBS_EXCHANGE, ensure=False)
            for queue in queues:
                body = json.dumps({"action": "bench.noop", "payload": {}}).encode()
                await jobs.publish(
                    aio_pika.Message(body, headers={"authorization": f"Bearer {token}"}), queue
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_consumed.wait(), 120)
        stop.set()
        await running
        listing = await node.ctl("list_queues", "--no-table-headers", "name")
        names = [line.strip() for line in listing.splitlines() if line.strip()]
        ours = [n for n in names if n.startswith(prefix)]
        shared = [n for n in names if n.startswith("warden.retry.") or n == QUARANTINE_QUEUE]
        return {
            "work_queues": count,
            "ready_s": ready_s,
            "consumed": f"{len(consumed)}/{count}",
            "broker_queues": len(ours) + len(shared),
            "per_work_queue": len(ours) / count,
            "shared": len(shared),
        }
    finally:
        server.stop()


def queues_scenario(count: int) -> dict[str, Any]:
    """``count`` work queues on the run's own node (started on first use)."""
    return asyncio.run(_scenario(BenchNode.get(), count))
