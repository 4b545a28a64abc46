"""``/readyz`` tells the truth about the broker: 503 from the moment a connection is lost, with
the reason; and a broker that is partly down (two of three nodes) makes warden wait, not exit,
until a node returns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import REGISTRY, Running, worker_settings
from tests.support.cluster import Cluster
from tests.support.issuer import Issuer, JwksServer
from tests.support.nodes import Node, until
from tests.support.processes import WorkerProcess, worker_environment, worker_processes
from tests.support.rabbit import Rabbit
from worker.service.runner import Worker

pytestmark = pytest.mark.cluster

OUTAGE_SEEN_WITHIN = 2.0
"""Seconds from ``rabbitmqctl stop_app`` returning to ``/readyz`` answering 503."""


async def readyz(worker: Worker) -> tuple[int, dict[str, Any]]:
    assert worker.http is not None
    async with httpx.AsyncClient(timeout=1) as http:
        answer = await http.get(f"http://127.0.0.1:{worker.http.port}/readyz")
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


@pytest.fixture
async def running_on(jwks: JwksServer, issuer: Issuer) -> AsyncIterator[Any]:
    """Start in-process workers on a node's URL; stop them at the end."""
    started: list[Running] = []

    async def start(url: str, queue: str) -> Running:
        running = Running(Worker(worker_settings(url, jwks, issuer, queue), REGISTRY))
        started.append(running)
        await asyncio.wait_for(running.worker.ready.wait(), 60)
        return running

    yield start
    for running in started:
        running.stop_event.set()
    for running in started:
        await asyncio.wait_for(asyncio.shield(running.task), 30)


async def test_readyz_is_503_within_2_s_of_stop_app_and_200_again_once_the_broker_is_back(
    standalone_node: Node, running_on: Any
) -> None:
    running = await running_on(standalone_node.url, f"t-ready-{uuid.uuid4().hex[:10]}")
    assert (await readyz(running.worker))[0] == 200

    await standalone_node.ctl("stop_app")
    standalone_node.app_stopped = True
    seen: dict[str, Any] = {}

    async def unready() -> bool:
        status, body = await readyz(running.worker)
        seen.update(body)
        return status == 503

    await until(unready, OUTAGE_SEEN_WITHIN, "/readyz to answer 503")
    assert seen["broker"].endswith("connection to the broker is lost; reconnecting")

    await standalone_node.start_app()
    await until(lambda: _is_ready(running.worker), 60, "/readyz to answer 200 again")
    assert not running.task.done()


async def _is_ready(worker: Worker) -> bool:
    return (await readyz(worker))[0] == 200


async def test_two_of_three_nodes_down_a_new_replica_waits_and_is_ready_when_one_returns(
    cluster: Cluster, running_on: Any, jwks: JwksServer, issuer: Issuer
) -> None:
    c1, c2, c3 = cluster.nodes
    queue = f"t-quorum-{uuid.uuid4().hex[:10]}"
    # A replica that runs before the outage declared the queues and the revocation stream.
    first = await running_on(c1.url, queue)
    async with Rabbit(c1.url) as rabbit:
        rabbit.forget_later(queue)

    await asyncio.gather(c2.stop_app(), c3.stop_app())
    async with worker_processes() as start:
        environment = worker_environment(
            c1.url, queue, jwks, issuer, WARDEN_SHUTDOWN_GRACE_SECONDS="5"
        )
        replica: WorkerProcess = await start(environment)
        stopped_meanwhile: WorkerProcess = await start(environment)
        # Without a majority, declaring the queues fails after a while; the replica says why
        # and tries again, as often as it takes.
        await replica.logged("could not declare the queues; trying again", timeout=90)
        status, body = await replica.readyz()
        assert status == 503
        assert body["consuming"].startswith("not consuming: declaring the queues: the broker")
        await replica.logged(
            lambda r: (
                r.get("event") == "could not declare the queues; trying again"
                and r.get("attempt") == 2
            ),
            timeout=90,
        )
        assert replica.process.returncode is None, replica.other[-20:]
        # Stopped while it waits to declare: exit status 0, within the grace period.
        await stopped_meanwhile.logged("could not declare the queues; trying again", timeout=90)
        assert await stopped_meanwhile.stop(within=5) == 0
        assert "stopped while starting" in stopped_meanwhile.events()
        assert not stopped_meanwhile.other, stopped_meanwhile.other[:10]
        # The replica that ran meanwhile is still there, its feed stale, taking no job.
        assert not first.task.done()

        await c2.start_app()
        await replica.logged("consuming", timeout=120)
        assert (await replica.readyz())[0] == 200
        await until(lambda: _is_ready(first.worker), 120, "the first replica to be ready")
        assert await replica.stop(within=10) == 0
        assert not replica.other, replica.other[:10]
