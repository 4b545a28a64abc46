"""Nothing is lost when the dead-letter exchange or a work queue is gone, or warden itself fails."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.actions import ran
from tests.support.issuer import Issuer
from tests.support.logwatch import LogWatch
from tests.support.rabbit import Rabbit
from worker import names

pytestmark = pytest.mark.broker


async def test_failed_dead_letter_leaves_the_message_in_its_work_queue(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, logwatch: LogWatch
) -> None:
    worker = await start_worker()
    channel = await rabbit.connection.channel()
    await channel.exchange_delete(names.DEAD_LETTER_EXCHANGE)

    mid = await rabbit.job(queue_name, "admin.purge", issuer.token())
    await logwatch.wait_for(lambda r: r.getMessage().startswith("dead letter not confirmed"))
    # And again: the message keeps coming back while the exchange is missing.
    await logwatch.wait_for(
        lambda r: sum(m.startswith("dead letter not confirmed") for m in logwatch.messages()) >= 2
    )
    await worker.stop()

    [kept] = await rabbit.get_all(queue_name)
    assert kept.message_id == mid
    assert kept.headers["authorization"].startswith("Bearer ")
    assert await rabbit.depth(names.dead_letter_queue(queue_name)) == 0

    # Put it back and restart: the worker declares its topology again and the denial lands.
    await rabbit.publish(queue_name, kept.body, headers=dict(kept.headers), message_id=mid)
    await start_worker()
    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == mid
    assert letter.headers["x-warden-reason"] == "scope_insufficient"


async def test_a_deleted_work_queue_is_declared_again_and_consumed(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, logwatch: LogWatch
) -> None:
    await start_worker()
    channel = await rabbit.connection.channel()
    await channel.queue_delete(queue_name)
    await channel.close()

    await logwatch.wait_for(
        lambda r: r.getMessage().startswith("the broker cancelled the consumer")
    )
    await logwatch.wait_for(lambda r: r.getMessage() == "consuming again on a reopened channel")
    # Declared again as warden declares it (a declaration with other arguments would fail), and
    # consumed: a job published now runs.
    await rabbit.declare_work_queue(queue_name)
    mid = await rabbit.job(queue_name, "reports.read", issuer.token())
    [job] = await ran.wait_for(1)
    assert job.id == mid
    assert await rabbit.depth(queue_name) == 0


async def test_a_fault_in_warden_itself_returns_the_message_until_the_delivery_limit(
    start_worker: Any,
    rabbit: Rabbit,
    issuer: Issuer,
    queue_name: str,
    logwatch: LogWatch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.pipeline.decision import Gate

    async def broken(self: Gate, delivery: Any) -> Any:
        raise RuntimeError("a bug in the decision")

    # Fault injection: the decision itself fails (a bug, not a verdict).
    monkeypatch.setattr(Gate, "decide", broken)
    await start_worker(delivery_limit=2)
    mid = await rabbit.job(queue_name, "reports.read", issuer.token())

    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == mid
    assert letter.routing_key == f"delivery_limit.{queue_name}"
    record = await logwatch.wait_for(lambda r: r.getMessage() == "handling failed")
    assert record.exc_info is not None
