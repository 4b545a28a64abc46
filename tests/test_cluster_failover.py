"""Workers given the addresses of a three-node cluster (``WARDEN_BROKER_URL`` as a list) outlive
the loss of any node: the worker on the lost node moves to another and keeps consuming, whether
the node's broker stopped, its VM was killed or it froze (SIGSTOP: only the heartbeat tells);
with the work queue's leader lost mid-load, nothing is lost, no denied job runs, and a revocation
issued afterwards holds on every replica."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest

from tests.support.cluster import Cluster
from tests.support.issuer import Issuer, JwksServer
from tests.support.nodes import Node
from tests.support.rabbit import Rabbit
from tests.support.workers import ROOT, Worker, WorkerProcesses
from worker import names
from worker.amqp.publisher import publish_jobs
from worker.settings import DEFAULT_HEARTBEAT_SECONDS

pytestmark = pytest.mark.cluster

HEARTBEAT = 5


def addresses(first: Node, cluster: Cluster) -> str:
    """The cluster's addresses as ``WARDEN_BROKER_URL`` lists them, ``first`` first."""
    others = [node for node in cluster if node is not first]
    return " , ".join(node.url for node in (first, *others))


@dataclass
class Setup:
    cluster: Cluster
    queue: str
    ran: str
    workers: WorkerProcesses
    rabbit: Rabbit
    """A connection of the test's own to c1, which no test here takes down."""

    async def worker(self, first: Node, **env: str) -> Worker:
        """A worker given every address, ``first`` first; returned once it consumes."""
        worker = await self.workers.run(
            **{
                "WARDEN_BROKER_URL": addresses(first, self.cluster),
                "WARDEN_HEARTBEAT_SECONDS": str(HEARTBEAT),
                "WARDEN_LOG_LEVEL": "INFO",
                **env,
            }
        )
        await worker.logged(lambda r: r.get("event") == "consuming", timeout=90)
        return worker


@pytest.fixture
async def setup(cluster: Cluster, jwks: JwksServer, issuer: Issuer) -> AsyncIterator[Setup]:
    queue = f"t-{uuid.uuid4().hex[:10]}"
    ran = f"{queue}.ran"
    c1 = cluster.node("c1")
    async with Rabbit(c1.url) as rabbit:
        channel = await rabbit.connection.channel()
        # The record of what ran outlives any one node, as the work queue does.
        await channel.declare_queue(ran, durable=True, arguments={"x-queue-type": "quorum"})
        await channel.close()
        workers = WorkerProcesses(c1.url, queue, ran, issuer, jwks)
        # What ran is reported through c1, which no test here takes down.
        workers.environment["WARDEN_TEST_REPORT_URL"] = c1.url
        try:
            yield Setup(cluster, queue, ran, workers, rabbit)
        finally:
            await workers.close()


def moved_to(record: dict[str, Any], node: Node) -> bool:
    return (
        record.get("event") == "connected to the broker"
        and record.get("connection") == "consuming"
        and f":{node.port}/" in record.get("address", "")
    )


async def runs_a_new_job(setup: Setup, issuer: Issuer, timeout: float) -> float:
    """Publish one job through c1 and wait until it ran; how long that took. A job that ran
    before may be reported again first: one whose ack had not left when its node was lost runs
    again (delivery is at least once)."""
    started = time.monotonic()
    [job] = await publish_jobs(
        setup.rabbit.url, setup.queue, "work.slow", {}, issuer.token(scope="work")
    )
    async with asyncio.timeout(timeout):
        while (await setup.rabbit.take(setup.ran, 1, timeout=timeout))[0].body.decode() != job:
            pass
    return time.monotonic() - started


@pytest.mark.parametrize("fault", ["stop_app", "kill"])
async def test_the_worker_on_a_lost_node_moves_to_the_next_address_and_keeps_consuming(
    setup: Setup, issuer: Issuer, fault: str
) -> None:
    c1, _, c3 = setup.cluster.nodes
    worker = await setup.worker(c3)  # it declares the queues: their leaders are on c3 too
    assert any(moved_to(r, c3) for r in worker.records)
    await runs_a_new_job(setup, issuer, timeout=30)

    seen = len(worker.records)
    await (c3.stop_app() if fault == "stop_app" else c3.kill())
    lost = time.monotonic()
    await worker.logged(lambda r: moved_to(r, c1), timeout=30, after=seen)
    moved = time.monotonic() - lost

    took = await runs_a_new_job(setup, issuer, timeout=60)
    print(f"{fault}: the worker connected to c1 {moved:.1f} s later; a new job ran in {took:.1f} s")
    assert moved < 10
    assert worker.process.returncode is None
    await worker.stop()


@pytest.mark.parametrize("heartbeat", [HEARTBEAT, DEFAULT_HEARTBEAT_SECONDS])
async def test_a_frozen_node_is_left_and_consumption_goes_on_within_twice_the_heartbeat(
    setup: Setup, issuer: Issuer, heartbeat: int
) -> None:
    c1, _, c3 = setup.cluster.nodes
    # A worker started through c1 declares the queues and the revocation stream: their leaders
    # are on c1. (While a frozen node holds a queue's leader, RabbitMQ serves that queue on no
    # node until the cluster declares the frozen one down: see docs/cluster.md.)
    declaring = await setup.worker(c1)
    await declaring.stop()
    worker = await setup.worker(c3, WARDEN_HEARTBEAT_SECONDS=str(heartbeat))
    await runs_a_new_job(setup, issuer, timeout=30)

    # SIGSTOP: the node's sockets stay open and nothing answers; only missed heartbeats tell.
    seen = len(worker.records)
    await c3.freeze()
    frozen = time.monotonic()
    try:
        await worker.logged(lambda r: moved_to(r, c1), timeout=2 * heartbeat + 10, after=seen)
        left = time.monotonic() - frozen
        # Until the cluster declares c3 down, the queue still counts the consumer the worker
        # had there, and hands it jobs up to its prefetch: the others run at once.
        ids = await publish_jobs(
            setup.rabbit.url, setup.queue, "work.slow", {}, issuer.token(scope="work"), count=200
        )
        # Thawed by the bound at the latest: a node frozen past net_ticktime would partition.
        bound = 2 * heartbeat + 10
        ran = await setup.rabbit.take(setup.ran, 1, timeout=bound - (time.monotonic() - frozen))
        resumed = time.monotonic() - frozen
    finally:
        await c3.thaw()
    print(
        f"frozen: left after {left:.1f} s, jobs published then ran from {resumed:.1f} s after "
        f"the freeze; heartbeat {heartbeat} s"
    )
    assert resumed < bound
    # Once c3 answers again it drops the consumer of the closed connection: its jobs come back.
    ran += await setup.rabbit.take(setup.ran, len(ids) - 1, timeout=60)
    assert sorted(m.body.decode() for m in ran) == sorted(ids)
    await worker.stop()


async def warden_revoke(urls: str, jti: str) -> None:
    tool = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "revoke",
        "--jti",
        jti,
        env={**os.environ, "WARDEN_BROKER_URL": urls},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    said, _ = await tool.communicate()
    assert tool.returncode == 0, said.decode()


async def taken_until(rabbit: Rabbit, queue: str, wanted: set[str], timeout: float) -> list[str]:
    """Bodies (or message ids, for dead letters) taken from ``queue`` until every one of
    ``wanted`` came; repeats included."""
    got: list[str] = []
    channel = await rabbit.connection.channel()
    received: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await (await channel.get_queue(queue)).consume(received.put)
    try:
        async with asyncio.timeout(timeout):
            while not wanted <= set(got):
                message = await received.get()
                await message.ack()
                got.append(message.message_id if queue.endswith(".dlq") else message.body.decode())
    finally:
        await channel.close()
    return got


@pytest.mark.parametrize("fault", ["stop_app", "kill"])
async def test_losing_the_work_queue_leader_mid_load_loses_nothing_and_runs_no_denied_job(
    setup: Setup, issuer: Issuer, fault: str
) -> None:
    c1, c2, c3 = setup.cluster.nodes
    # The first replica starts on c3 and declares the queues: the work queue's leader is there.
    replicas = {"w3": await setup.worker(c3, WARDEN_WORKER_ID="w3")}
    assert await setup.cluster.wait_leader(setup.queue) is c3
    replicas["w1"] = await setup.worker(c1, WARDEN_WORKER_ID="w1")
    replicas["w2"] = await setup.worker(c2, WARDEN_WORKER_ID="w2")

    good, bad = issuer.token(scope="work"), issuer.token(scope="reports")
    allowed, denied = await asyncio.gather(
        publish_jobs(setup.rabbit.url, setup.queue, "work.slow", {}, good, count=800),
        publish_jobs(setup.rabbit.url, setup.queue, "work.slow", {}, bad, count=200),
    )
    ran = await setup.rabbit.take(setup.ran, 150, timeout=120)
    seen = {name: len(replica.records) for name, replica in replicas.items()}
    await (c3.stop_app() if fault == "stop_app" else c3.kill())
    leader = await setup.cluster.wait_leader(setup.queue, away_from=c3)
    await replicas["w3"].logged(
        lambda r: (
            r.get("event") == "connected to the broker" and r.get("connection") == "consuming"
        ),
        timeout=30,
        after=seen["w3"],
    )

    # A revocation issued now, through the addresses the workers have (c3's first), reaches
    # every replica.
    jti = f"revoked-{uuid.uuid4().hex}"
    await warden_revoke(addresses(c3, setup.cluster), jti)
    for name, replica in replicas.items():
        await replica.logged(
            lambda r: r.get("event") == "revocation received", timeout=60, after=seen[name]
        )
    revoked = await publish_jobs(
        setup.rabbit.url,
        setup.queue,
        "work.slow",
        {},
        issuer.token(scope="work", jti=jti),
        count=30,
    )

    ran_ids = [m.body.decode() for m in ran]
    ran_ids += await taken_until(setup.rabbit, setup.ran, set(allowed) - set(ran_ids), 180)
    dead = await taken_until(
        setup.rabbit, names.dead_letter_queue(setup.queue), set(denied) | set(revoked), 120
    )
    print(
        f"{fault} of c3 (leader now on {leader.name}): {len(ran_ids)} runs of {len(allowed)} "
        f"allowed jobs, {len(dead)} dead letters for {len(denied) + len(revoked)} denied jobs"
    )
    assert set(ran_ids) == set(allowed), "every allowed job ran, and nothing else did"
    assert set(dead) == set(denied) | set(revoked)
    for replica in replicas.values():
        await replica.stop()
