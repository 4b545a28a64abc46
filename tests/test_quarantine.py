"""The quarantine queue is one for every work queue of a virtual host: what the broker
dead-letters from any work queue reaches that queue's own dead-letter queue without its token,
whichever worker takes it; what did not come from the broker is not believed to name a queue;
a quarantine queue of an earlier version is unbound and emptied."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aio_pika
import pytest

from tests.support.issuer import Issuer
from tests.support.leaks import assert_no_leak
from tests.support.rabbit import Rabbit
from worker import names
from worker.amqp.topology import QUORUM
from worker.deadletters.read import dead_letter_reason

pytestmark = pytest.mark.broker


async def dead_lettered_by_the_broker(rabbit: Rabbit, queue: str, token: str) -> str:
    """Publish what the broker publishes when ``queue``'s delivery limit is reached: the job,
    token and all, through ``warden.quarantine`` with the queue's name."""
    message_id = uuid.uuid4().hex
    body = json.dumps({"action": "reports.read", "payload": {}}).encode()
    exchange = await rabbit.channel.get_exchange(names.QUARANTINE_EXCHANGE)
    await exchange.publish(
        aio_pika.Message(
            body,
            message_id=message_id,
            headers={
                "authorization": f"Bearer {token}",
                "x-death": [{"queue": queue, "reason": "delivery_limit", "count": 5}],
            },
        ),
        queue,
        mandatory=True,
    )
    return message_id


async def test_a_queue_no_running_worker_serves_gets_its_dead_letter_without_the_token(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker()
    other = f"{queue_name}-other"
    rabbit.forget_later(other)
    await rabbit.declare_work_queue(other)
    token = issuer.token()

    job = await dead_lettered_by_the_broker(rabbit, other, token)

    [letter] = await rabbit.dead_letters(other, 1)
    assert letter.message_id == job
    assert dead_letter_reason(letter.headers) == "delivery_limit"
    assert letter.routing_key == f"delivery_limit.{other}"
    assert "after 5 deliveries" in letter.headers["x-warden-denial"]["detail"]
    assert_no_leak(repr((letter.headers, letter.body)), "the dead letter")
    assert await rabbit.depth(names.dead_letter_queue(queue_name)) == 0
    assert await rabbit.depth(names.QUARANTINE_QUEUE) == 0


async def test_what_was_written_straight_into_the_quarantine_names_no_queue_and_is_dropped(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker()
    token = issuer.token()
    # Through the default exchange, by name, with a routing key that is a work queue's own.
    forged = await rabbit.job(names.QUARANTINE_QUEUE, "reports.read", token)
    # It does not loop, nor hold up what the broker dead-letters after it.
    job = await dead_lettered_by_the_broker(rabbit, queue_name, token)

    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == job != forged
    await rabbit.until_depth(names.QUARANTINE_QUEUE, 0)
    assert await rabbit.depth(names.dead_letter_queue(queue_name)) == 0


async def test_the_quarantine_queue_of_an_earlier_version_is_unbound_and_emptied(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await rabbit.declare_work_queue(queue_name)
    former = names.former_quarantine_queue(queue_name)
    rabbit.forget_later(former)
    held = await rabbit.channel.declare_queue(former, durable=True, arguments=QUORUM)
    await held.bind(names.QUARANTINE_EXCHANGE, queue_name)
    token = issuer.token()
    # Dead-lettered while the earlier version ran: it went to both queues bound with the name.
    waiting = await dead_lettered_by_the_broker(rabbit, queue_name, token)
    await rabbit.get_all(names.QUARANTINE_QUEUE)

    await start_worker()
    after = await dead_lettered_by_the_broker(rabbit, queue_name, token)

    letters = await rabbit.dead_letters(queue_name, 2)
    assert sorted(m.message_id for m in letters) == sorted([waiting, after])
    for letter in letters:
        assert dead_letter_reason(letter.headers) == "delivery_limit"
        assert_no_leak(repr((letter.headers, letter.body)), "the dead letter")
    assert await rabbit.depth(former) == 0
    assert await rabbit.depth(names.QUARANTINE_QUEUE) == 0
    assert await rabbit.depth(names.dead_letter_queue(queue_name)) == 0
