"""Blocking actions (plain ``def``) run in a bounded pool of threads: the event loop, the other
jobs and the connection's heartbeat never wait for them, and shutdown waits for them within the
grace period, then names those that did not finish.

How much a sleeping action costs the other jobs' throughput is measured by ``bench/`` (scenario
``b-blocked``), not here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.actions import ran
from tests.support.issuer import Issuer
from tests.support.logwatch import LogWatch
from tests.support.rabbit import Rabbit
from tests.support.user_actions import seen
from worker.errors import ConfigurationError
from worker.pipeline.actions import Registry, action

REGISTRY = Registry.from_modules(["tests.support.actions", "tests.support.user_actions"])
OTHERS = 200


@pytest.fixture(autouse=True)
def _fresh_seen() -> Iterator[None]:
    seen.reset()
    yield
    seen.gate.set()
    seen.stuck.set()  # let a thread a test left blocked end


@pytest.mark.broker
async def test_a_sleeping_blocking_action_holds_up_neither_other_jobs_nor_the_heartbeat(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    # A heartbeat of 1 s: the broker closes a connection that sends nothing for about 2 s, so an
    # action blocking the event loop for 3 s would lose it.
    handle = await start_worker(REGISTRY, broker_url=f"{broker_url}?heartbeat=1", prefetch=64)
    connection = handle.worker.connection
    assert connection is not None
    underlying = connection.transport.connection
    assert underlying.connection_tune.heartbeat == 1
    closed: list[Any] = []
    connection.close_callbacks.add(lambda *args: closed.append(args))

    sleeper = await rabbit.job(queue_name, "blocking.sleep", issuer.token(scope=""))
    await seen.wait_entered()
    token = issuer.token(scope="reports:read")
    others = await asyncio.gather(
        *(rabbit.job(queue_name, "reports.read", token) for _ in range(OTHERS))
    )
    jobs = await ran.wait_for(OTHERS)
    assert not seen.jobs, "every other job ran while the blocking action still slept"
    assert sorted(job.id for job in jobs) == sorted(others)
    assert handle.worker.metrics.registry.get_sample_value("warden_action_threads_busy") == 1

    [slept] = await seen.wait_for(1)
    assert slept.id == sleeper
    assert seen.threads[0].startswith("warden-action-")
    assert not closed, "the connection was never closed"
    assert connection.transport.connection is underlying
    assert not underlying.is_closed
    await handle.stop()
    assert await rabbit.depth(queue_name) == 0


async def running(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue: str, action: str, grace: float
) -> tuple[Any, str | None]:
    """A worker with ``grace`` seconds of shutdown grace, once it runs a job of ``action``."""
    handle = await start_worker(REGISTRY, shutdown_grace_seconds=grace)
    mid = await rabbit.job(queue, action, issuer.token(scope=""))
    await seen.wait_entered()
    return handle, mid


@pytest.mark.broker
async def test_shutdown_waits_for_a_running_blocking_action_within_the_grace_period(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, logwatch: LogWatch
) -> None:
    handle, mid = await running(start_worker, rabbit, issuer, queue_name, "blocking.gated", 20)
    handle.stop_event.set()
    await logwatch.wait_for(lambda r: r.getMessage().startswith("stopping: no new messages"))
    seen.gate.set()
    await handle.stop()

    assert [job.id for job in seen.jobs] == [mid]
    assert not [m for m in logwatch.messages() if "did not finish" in m]
    assert await rabbit.depth(queue_name) == 0, "it finished, so it was acked"


@pytest.mark.broker
async def test_shutdown_names_the_blocking_actions_that_did_not_finish_and_returns_their_jobs(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, logwatch: LogWatch
) -> None:
    handle, mid = await running(start_worker, rabbit, issuer, queue_name, "blocking.stuck", 0.5)
    await handle.stop()

    [record] = [r for r in logwatch.records if "did not finish" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert record.__dict__["message_id"] == mid
    assert record.__dict__["action"] == "blocking.stuck"
    assert record.__dict__["running_seconds"] >= 0.5
    [back] = await rabbit.get_all(queue_name)
    assert back.message_id == mid, "never acked: back in its queue for another worker"


def test_plain_functions_register_as_blocking_and_coroutines_do_not() -> None:
    assert REGISTRY.get("blocking.sleep").blocking  # type: ignore[union-attr]
    assert not REGISTRY.get("reports.read").blocking  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="not a function"):
        action("not.a.function", scopes=set())(print)  # type: ignore[type-var]
