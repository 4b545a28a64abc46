"""Coalesced acks never hold back the acks of quick jobs behind a slow one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.actions import ran
from tests.support.issuer import Issuer
from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import close_connection_named, needs_rabbitmqctl

pytestmark = pytest.mark.broker


async def test_quick_jobs_flow_past_a_slow_one_with_a_prefetch_of_two(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(prefetch=2)
    token = issuer.token()
    slow = await rabbit.job(queue_name, "gated.run", token)
    await ran.entered.wait()
    # One prefetch slot is held by the slow job; the other must be freed by each quick job's
    # ack in turn, or the fourth quick job would never be delivered.
    quick = [await rabbit.job(queue_name, "reports.read", token) for _ in range(6)]
    jobs = await ran.wait_for(6)
    assert [j.id for j in jobs] == quick

    ran.gate.set()
    jobs = await ran.wait_for(7)
    assert jobs[-1].id == slow
    assert await rabbit.depth(queue_name) == 0


async def test_a_burst_of_jobs_is_acked_exactly_once(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    handle = await start_worker(prefetch=64)
    token = issuer.token()
    ids = [await rabbit.job(queue_name, "reports.read", token) for _ in range(300)]
    jobs = await ran.wait_for(300, timeout=30)
    assert sorted(j.id for j in jobs) == sorted(ids)
    await handle.stop()
    # Had any ack been lost or sent for the wrong tag, the stop would have returned jobs.
    assert await rabbit.depth(queue_name) == 0
    assert len(ran.jobs) == 300


@needs_rabbitmqctl
async def test_a_lingering_ack_leaves_without_any_further_message(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    # A quarter of the prefetch is 16 acks: a lone ack must leave when its linger ends.
    handle = await start_worker(prefetch=64, ack_linger_ms=100)
    token = issuer.token()
    first = await rabbit.job(queue_name, "reports.read", token)
    await ran.wait_for(1)
    # What is checked is a time bound: the ack is out once the linger has passed.
    await asyncio.sleep(0.5)

    # Had it not left, the broker would deliver the job again after this.
    await close_connection_named(f"warden consuming {handle.worker.settings.worker_id}")
    second = await rabbit.job(queue_name, "reports.read", token)
    jobs = await ran.wait_for(2, timeout=30)
    assert [j.id for j in jobs] == [first, second]


async def test_a_job_cut_short_by_the_stop_goes_back_though_later_acks_were_waiting(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    # The acks of the quick jobs linger (a batch is four); the slow job is cancelled when the
    # grace ends. Its delivery sits below theirs: one ack covering them all would settle it
    # unrun.
    handle = await start_worker(prefetch=16, ack_linger_ms=1000, shutdown_grace_seconds=0.2)
    token = issuer.token()
    slow = await rabbit.job(queue_name, "gated.run", token)
    await ran.entered.wait()
    quick = [await rabbit.job(queue_name, "reports.read", token) for _ in range(3)]
    assert [j.id for j in await ran.wait_for(3)] == quick

    await handle.stop()
    left = await rabbit.get_all(queue_name)
    assert [m.message_id for m in left] == [slow], "the job cut short was acked"
