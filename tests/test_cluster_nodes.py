"""The nodes the failure tests break behave as an operator of warden counts on: a cluster of three
whose quorum queues outlive a member, nodes that come back after a crash or a freeze, and
resource alarms that hold publishers until they clear."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import pytest

from tests.support.blocked import BlockedWatch
from tests.support.cluster import Cluster
from tests.support.nodes import Node, process_state

pytestmark = pytest.mark.cluster


def quorum_queue_name() -> str:
    return f"t-qq-{uuid.uuid4().hex[:10]}"


async def test_the_cluster_runs_three_members_that_see_each_other(cluster: Cluster) -> None:
    everyone = {node.nodename for node in cluster}
    seen = await asyncio.gather(*(cluster.running_members(via=node) for node in cluster))
    assert seen == [everyone] * 3
    for node in cluster:
        assert await node.answers(), f"{node} does not answer an AMQP handshake"


async def test_a_quorum_queue_has_its_leader_where_it_was_declared_and_members_on_all(
    cluster: Cluster,
) -> None:
    queue = quorum_queue_name()
    c2 = cluster.node("c2")
    async with await aio_pika.connect(c2.url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})

    # RabbitMQ places a new quorum queue's leader on the node the client declared it through.
    assert await cluster.wait_leader(queue) is c2
    members = await cluster.quorum_members(queue, via=cluster.node("c3"))
    assert members == {node.nodename for node in cluster}


async def test_stopping_the_leaders_broker_moves_the_leader_and_keeps_the_message(
    cluster: Cluster,
) -> None:
    queue = quorum_queue_name()
    async with await aio_pika.connect(cluster.node("c1").url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        message = aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, queue)  # confirmed by a majority
    leader = await cluster.wait_leader(queue)

    await leader.stop_app()
    assert not await leader.answers()
    successor = await cluster.wait_leader(queue, away_from=leader)

    assert successor is not leader
    async with await aio_pika.connect(successor.url) as connection:
        channel = await connection.channel()
        kept = await channel.get_queue(queue)
        got = await kept.get(timeout=10)
        assert got.body == b"kept"
        await got.ack()


async def test_a_node_killed_with_sigkill_restarts_and_rejoins_the_cluster(
    cluster: Cluster,
) -> None:
    c1, c2, c3 = cluster.nodes
    crashed = c3.pid
    assert crashed is not None

    await c3.kill()
    assert process_state(crashed) is None
    await cluster.wait_running({c1, c2}, via=c1)

    await c3.start()
    await cluster.wait_running({c1, c2, c3}, via=c1)
    assert await cluster.running_members(via=c3) == {c1.nodename, c2.nodename, c3.nodename}
    assert c3.pid != crashed


async def test_a_frozen_node_accepts_tcp_but_answers_no_handshake_until_thawed(
    cluster: Cluster,
) -> None:
    c2 = cluster.node("c2")
    await c2.freeze()

    # The kernel still completes the TCP handshake: only AMQP shows the broker is gone.
    _, writer = await asyncio.open_connection("127.0.0.1", c2.port)
    writer.close()
    await writer.wait_closed()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await aio_pika.connect(c2.url, timeout=2)
    assert loop.time() - started < 5

    await c2.thaw()
    connection = await aio_pika.connect(c2.url, timeout=5)
    await connection.close()


ALARMS: dict[str, tuple[str, str, str]] = {
    "memory": ("raise_memory_alarm", "clear_memory_alarm", "low on memory"),
    "disk": ("raise_disk_alarm", "clear_disk_alarm", "low on disk"),
}


@pytest.mark.parametrize("alarm", ALARMS)
async def test_an_alarm_blocks_publishers_until_it_clears(
    standalone_node: Node, alarm: str
) -> None:
    raise_name, clear_name, reason = ALARMS[alarm]
    raise_alarm: Callable[[], Awaitable[None]] = getattr(standalone_node, raise_name)
    clear_alarm: Callable[[], Awaitable[None]] = getattr(standalone_node, clear_name)
    async with await aio_pika.connect(standalone_node.url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"t-{uuid.uuid4().hex[:10]}", auto_delete=True)
        with BlockedWatch(connection) as watch:
            await raise_alarm()
            held = asyncio.create_task(
                channel.default_exchange.publish(aio_pika.Message(b"held"), queue.name)
            )
            assert await watch.blocked(timeout=10) == reason
            done, _ = await asyncio.wait({held}, timeout=1)
            assert not done, f"a publish was confirmed during a {alarm} alarm"

            await clear_alarm()
            await watch.unblocked(timeout=10)
            await asyncio.wait_for(held, 10)
        got = await queue.get(timeout=5)
        assert got.body == b"held"
        await got.ack()
