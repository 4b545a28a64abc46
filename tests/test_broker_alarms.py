"""A resource alarm blocks publishing, not the worker: during a memory or a disk alarm on its
node, allowed jobs keep running while denied ones wait, unacked, for their dead letters; once
the alarm clears, every denied job is in the dead-letter queue once and nothing is lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import REGISTRY, Running, worker_settings
from tests.support.actions import ran
from tests.support.issuer import Issuer, JwksServer
from tests.support.logwatch import LogWatch
from tests.support.nodes import Node, until
from tests.support.rabbit import Rabbit
from worker import names
from worker.amqp import links
from worker.service.runner import Worker

pytestmark = pytest.mark.cluster

PREFETCH = 10
JOBS = 400
STALENESS = 2.0
DENIED_EVERY = 5
"""One job in five is denied (its token lacks the action's scope): 20 %."""


@pytest.fixture
async def node_rabbit(standalone_node: Node) -> AsyncIterator[Rabbit]:
    async with Rabbit(standalone_node.url) as client:
        yield client


async def readyz(worker: Worker) -> httpx.Response:
    assert worker.http is not None
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(f"http://127.0.0.1:{worker.http.port}/readyz")


async def gated_then_mixed(
    rabbit: Rabbit, queue: str, issuer: Issuer, jobs: int
) -> tuple[list[str | None], list[str | None], list[str | None]]:
    """The prefetch taken by jobs that wait for the test, then ``jobs`` reading a report, one in
    :data:`DENIED_EVERY` with a token that lacks the scope; returns once the worker holds the
    first gated job. The gated, allowed and denied jobs' ids."""
    gated = [await rabbit.job(queue, "gated.run", issuer.token()) for _ in range(PREFETCH)]
    allowed_token = issuer.token(scope="reports:read")
    denied_token = issuer.token(scope="reports:write")
    allowed, denied = [], []
    for i in range(jobs):
        if i % DENIED_EVERY == 0:
            denied.append(await rabbit.job(queue, "reports.read", denied_token))
        else:
            allowed.append(await rabbit.job(queue, "reports.read", allowed_token))
    await ran.entered.wait()
    return gated, allowed, denied


def test_aiormq_still_has_the_frame_handlers_the_block_watch_wraps() -> None:
    import aiormq

    for name in (links._ON_BLOCKED, links._ON_UNBLOCKED):
        assert callable(getattr(aiormq.Connection, name, None)), name


@pytest.mark.parametrize("alarm", ["memory", "disk"])
async def test_allowed_jobs_run_through_an_alarm_and_denied_ones_are_dead_lettered_once_after(
    alarm: str,
    standalone_node: Node,
    node_rabbit: Rabbit,
    jwks: JwksServer,
    issuer: Issuer,
    logwatch: LogWatch,
) -> None:
    queue = f"t-alarm-{uuid.uuid4().hex[:10]}"
    settings = worker_settings(
        standalone_node.url,
        jwks,
        issuer,
        queue,
        prefetch=PREFETCH,
        # Were the time blocked counted as staleness, jobs would stop within the alarm.
        revocation_max_staleness=STALENESS,
    )
    node_rabbit.forget_later(queue)
    running = Running(Worker(settings, REGISTRY))
    try:
        await asyncio.wait_for(running.worker.ready.wait(), 30)

        # The prefetch taken by jobs that wait for the test: what follows waits in the queue
        # until the alarm is up, and then has to go through the worker during it.
        gated, allowed, denied = await gated_then_mixed(node_rabbit, queue, issuer, JOBS)

        raise_alarm = getattr(standalone_node, f"raise_{alarm}_alarm")
        await raise_alarm()
        ran.gate.set()

        # During the alarm: every allowed job runs, no dead letter gets through.
        jobs = await ran.wait_for(len(gated) + len(allowed), timeout=60)
        assert sorted(job.id for job in jobs) == sorted(gated + allowed)
        assert standalone_node.alarms == {alarm}
        record = await logwatch.wait_for(lambda r: r.getMessage().startswith("the broker blocks"))
        assert record.connection == "publishing"
        # The block outlasts WARDEN_REVOCATION_MAX_STALENESS, and no marker could be sent all
        # along: the list is still relied on, its consumer attached.
        publishing = running.worker.publishing
        assert publishing is not None
        assert publishing.blocked_since is not None
        since = publishing.blocked_since
        await until(lambda: time.monotonic() - since > 2 * STALENESS, 30, "the block to last")
        assert running.worker.feed is not None
        assert running.worker.feed.fresh()
        answer = await readyz(running.worker)
        assert answer.status_code == 503
        assert "the broker blocks the publishing connection" in answer.json()["broker"]
        assert "revocations" not in answer.json()
        metrics = running.worker.metrics.registry
        assert metrics.get_sample_value("warden_publishing_blocked") == 1
        assert metrics.get_sample_value("warden_waiting_on_publishing") == len(denied)
        assert await node_rabbit.depth(names.dead_letter_queue(queue)) == 0

        clear_alarm = getattr(standalone_node, f"clear_{alarm}_alarm")
        await clear_alarm()

        # After it: each denied job dead-lettered once, the queue empty, nothing run twice.
        await node_rabbit.until_depth(names.dead_letter_queue(queue), len(denied), timeout=30)
        letters = await node_rabbit.get_all(names.dead_letter_queue(queue))
        assert sorted(m.message_id for m in letters) == sorted(denied)
        assert {m.headers[names.HEADER_REASON] for m in letters} == {"scope_insufficient"}
        await logwatch.wait_for(
            lambda r: r.getMessage() == "the broker no longer blocks publishing"
        )
        assert (await readyz(running.worker)).status_code == 200
        await running.stop()
        assert await node_rabbit.depth(queue) == 0
        assert sorted(ran.ids()) == sorted(gated + allowed), "no job ran twice"
    finally:
        ran.gate.set()
        running.stop_event.set()
        await asyncio.wait_for(asyncio.shield(running.task), 30)


async def test_stopped_during_an_alarm_the_worker_returns_the_waiting_jobs_to_their_queue(
    standalone_node: Node,
    node_rabbit: Rabbit,
    jwks: JwksServer,
    issuer: Issuer,
    logwatch: LogWatch,
) -> None:
    queue = f"t-alarm-{uuid.uuid4().hex[:10]}"
    grace = 2.0
    settings = worker_settings(
        standalone_node.url,
        jwks,
        issuer,
        queue,
        prefetch=PREFETCH,
        shutdown_grace_seconds=grace,
    )
    node_rabbit.forget_later(queue)
    running = Running(Worker(settings, REGISTRY))
    try:
        await asyncio.wait_for(running.worker.ready.wait(), 30)
        gated, allowed, denied = await gated_then_mixed(node_rabbit, queue, issuer, 40)
        await standalone_node.raise_memory_alarm()
        ran.gate.set()
        await ran.wait_for(len(gated) + len(allowed), timeout=60)
        await logwatch.wait_for(lambda r: r.getMessage().startswith("the broker blocks"))

        # The denied jobs wait for their dead letters: stopped, the worker gives them back,
        # having sent nothing for them, within the grace period and the bounded close.
        await asyncio.wait_for(running.stop(), grace + 10)
    finally:
        ran.gate.set()
        running.stop_event.set()
        await asyncio.wait_for(asyncio.shield(running.task), 30)

    await standalone_node.clear_memory_alarm()
    back = [m.message_id for m in await node_rabbit.get_all(queue)]
    letters = [m.message_id for m in await node_rabbit.get_all(names.dead_letter_queue(queue))]
    # Nothing lost: every denied job is back in its queue or dead-lettered. A dead letter sent
    # in the moment before the block reached the worker stays in its socket: the broker takes
    # it after the alarm, besides the original given back (docs/broker-failures.md).
    assert set(back) | set(letters) == set(denied)
    assert len(back) == len(set(back))
    assert len(letters) == len(set(letters))
    assert sorted(ran.ids()) == sorted(gated + allowed), "no job ran twice"


async def test_past_blocked_max_waiting_no_more_jobs_are_taken_until_the_alarm_ends(
    standalone_node: Node,
    node_rabbit: Rabbit,
    jwks: JwksServer,
    issuer: Issuer,
    logwatch: LogWatch,
) -> None:
    queue = f"t-alarm-{uuid.uuid4().hex[:10]}"
    prefetch, bound = 4, 8
    settings = worker_settings(
        standalone_node.url, jwks, issuer, queue, prefetch=prefetch, blocked_max_waiting=bound
    )
    node_rabbit.forget_later(queue)
    running = Running(Worker(settings, REGISTRY))
    try:
        await asyncio.wait_for(running.worker.ready.wait(), 30)
        gated = [await node_rabbit.job(queue, "gated.run", issuer.token()) for _ in range(prefetch)]
        allowed_token = issuer.token(scope="reports:read")
        denied_token = issuer.token(scope="reports:write")
        allowed, denied = [], []
        for i in range(80):
            token = denied_token if i % 2 else allowed_token
            (denied if i % 2 else allowed).append(
                await node_rabbit.job(queue, "reports.read", token)
            )
        await ran.entered.wait()
        await standalone_node.raise_memory_alarm()
        ran.gate.set()

        await logwatch.wait_for(
            lambda r: r.getMessage().startswith("WARDEN_BLOCKED_MAX_WAITING"), timeout=30
        )
        metrics = running.worker.metrics.registry
        waiting = metrics.get_sample_value("warden_waiting_on_publishing")
        assert waiting is not None
        assert bound < waiting <= bound + prefetch
        # What is left stays in the queue, for this worker after the alarm, or for another.
        assert await node_rabbit.depth(queue) > len(allowed + denied) // 2

        await standalone_node.clear_memory_alarm()
        await node_rabbit.until_depth(names.dead_letter_queue(queue), len(denied), timeout=60)
        letters = await node_rabbit.get_all(names.dead_letter_queue(queue))
        assert sorted(m.message_id for m in letters) == sorted(denied)
        await ran.wait_for(len(gated) + len(allowed), timeout=30)
        assert sorted(ran.ids()) == sorted(gated + allowed)
        await running.stop()
        assert await node_rabbit.depth(queue) == 0
    finally:
        ran.gate.set()
        running.stop_event.set()
        await asyncio.wait_for(asyncio.shield(running.task), 30)
