"""A connection closed by the broker: the worker reconnects, and an ack lost with the old
channel means a redelivery, never a crash or a lost job."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.actions import ran
from tests.support.issuer import Issuer
from tests.support.logwatch import LogWatch
from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import close_connection_named, needs_rabbitmqctl
from worker.amqp.outbound import ack

pytestmark = [pytest.mark.broker, needs_rabbitmqctl]


async def test_worker_survives_its_connection_being_closed_mid_action(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, logwatch: LogWatch
) -> None:
    handle = await start_worker()
    token = issuer.token()
    held = await rabbit.job(queue_name, "gated.run", token)
    await ran.entered.wait()

    # The broker drops the worker's connection while the action runs: the action is cancelled
    # with its channel (it could not be acked any more), and the broker delivers the job again.
    await close_connection_named(f"warden consuming {handle.worker.settings.worker_id}")
    ran.gate.set()
    after = [await rabbit.job(queue_name, "reports.read", token) for _ in range(3)]
    jobs = await ran.wait_for(4, timeout=30)

    runs = [j.id for j in jobs]
    assert sorted(runs) == sorted([held, *after])
    [again] = [j for j in jobs if j.id == held]
    assert again.redelivered, "the run after the reconnect is a redelivery"
    assert not handle.task.done()
    assert await rabbit.depth(queue_name) == 0
    assert await rabbit.depth(f"{queue_name}.dlq") == 0


async def test_an_ack_on_a_dead_channel_is_logged_not_raised(
    rabbit: Rabbit, issuer: Issuer, queue_name: str, logwatch: LogWatch
) -> None:
    await rabbit.declare_work_queue(queue_name)
    mid = await rabbit.job(queue_name, "reports.read", issuer.token())
    channel = await rabbit.connection.channel()
    queue = await channel.get_queue(queue_name)
    message = await queue.get()
    await channel.close()

    await ack(message)
    record = await logwatch.wait_for(lambda r: r.getMessage().startswith("ack failed"))
    assert record.message_id == mid
    [again] = await rabbit.get_all(queue_name)
    assert again.message_id == mid
    assert again.redelivered
