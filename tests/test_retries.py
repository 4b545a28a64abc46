"""Action failures: retried with growing backoff held by the broker, then dead-lettered."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.actions import ran
from tests.support.issuer import Issuer
from tests.support.rabbit import Rabbit

pytestmark = pytest.mark.broker


async def test_retry_twice_then_success_survives_a_worker_restart_during_backoff(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    # Waits of 1 s then 2 s: a difference the broker's own timing (when a quorum queue finds an
    # expired message, a few hundred milliseconds on a loaded machine) cannot hide.
    first = await start_worker(retry_base_seconds=1.0, retry_max_seconds=4.0)
    mid = await rabbit.job(queue_name, "flaky.twice", issuer.token())

    await ran.wait_for(2)
    # The second attempt failed: the job now waits about 2 s in a retry queue. Stop the worker
    # during that wait and start another; the broker, not the worker, holds the job.
    await first.stop()
    assert len(ran.jobs) == 2
    await start_worker(retry_base_seconds=1.0, retry_max_seconds=4.0)

    jobs = await ran.wait_for(3, timeout=15)
    assert [j.id for j in jobs] == [mid, mid, mid]
    assert [j.attempt for j in jobs] == [1, 2, 3]
    gaps = [later - earlier for earlier, later in zip(ran.times, ran.times[1:], strict=False)]
    assert gaps[1] > gaps[0], f"backoff must grow: {gaps}"
    assert gaps[0] >= 1.0 * 0.8
    assert await rabbit.depth(queue_name) == 0
    assert await rabbit.depth(f"{queue_name}.dlq") == 0
    assert len(ran.jobs) == 3


async def test_always_failing_action_is_dead_lettered_after_max_attempts(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(max_attempts=4)
    failing = await rabbit.job(queue_name, "always.fails", issuer.token())
    rejected = await rabbit.job(queue_name, "reports.reject", issuer.token())

    letters = {m.message_id: m for m in await rabbit.dead_letters(queue_name, 2)}
    assert letters.keys() == {failing, rejected}

    failed = letters[failing].headers["x-warden-denial"]
    assert failed["reason"] == "action_failed"
    assert failed["attempts"] == 4
    assert "RuntimeError: disk full while handling" in failed["detail"]
    assert failed["token"]["verified"] is True
    assert "authorization" not in letters[failing].headers

    refused = letters[rejected].headers["x-warden-denial"]
    assert refused["reason"] == "action_rejected"
    assert refused["attempts"] == 1
    assert "this report cannot be generated" in refused["detail"]

    runs = [j.id for j in ran.jobs]
    assert runs.count(failing) == 4
    assert runs.count(rejected) == 1
    assert await rabbit.depth(queue_name) == 0


async def test_a_token_that_expired_while_the_job_waited_is_denied_on_retry(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    import time

    await start_worker(retry_base_seconds=1.5, retry_max_seconds=3.0, leeway_seconds=0)
    # Valid now, expired by the time the retry comes back: every retry is decided afresh.
    mid = await rabbit.job(queue_name, "flaky.twice", issuer.token(exp=int(time.time()) + 2))
    [letter] = await rabbit.dead_letters(queue_name, 1, timeout=15)
    assert letter.message_id == mid
    assert letter.headers["x-warden-reason"] == "token_expired"
    assert letter.headers["x-warden-denial"]["attempts"] >= 2
    assert [j.id for j in ran.jobs] == [mid] * (letter.headers["x-warden-denial"]["attempts"] - 1)
