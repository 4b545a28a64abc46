"""The revocation feed never stops silently: events it cannot apply, and a consumer that stops
advancing, stop decisions (jobs wait in their queues, ``/readyz`` is 503) instead of letting a
revoked token run.

Each test has a virtual host of its own, so its revocation stream (and whatever an event does to
a worker) stays out of the shared one.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import StartWorker
from tests.support.actions import ran
from tests.support.issuer import Issuer
from tests.support.logwatch import LogWatch
from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import needs_rabbitmqctl, scratch_vhost
from worker import errors, names
from worker.amqp.feed import RevocationFeed, revoke
from worker.amqp.topology import declare_stream, stream_arguments
from worker.auth.revocation import Revocation, RevocationList

pytestmark = [pytest.mark.broker, needs_rabbitmqctl]

STALENESS = 2.0


@pytest.fixture
async def vhost_url(broker_url: str) -> AsyncIterator[str]:
    async with scratch_vhost(broker_url) as url:
        yield url


@pytest.fixture
async def vrabbit(vhost_url: str) -> AsyncIterator[Rabbit]:
    async with Rabbit(vhost_url) as client:
        yield client


def _jti(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def _warden_revoke(url: str, *args: str) -> None:
    """``warden revoke`` as an operator runs it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "revoke",
        *args,
        env={**os.environ, "WARDEN_BROKER_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()


async def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/readyz")
    return response.status_code, response.json()


async def _consumers(rabbit: Rabbit, queue: str) -> int:
    channel = await rabbit.connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.consumer_count or 0
    finally:
        await channel.close()


async def test_equal_expiries_with_and_without_issuer_are_all_enforced(
    vhost_url: str, start_worker: StartWorker, vrabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    first = await start_worker(broker_url=vhost_url)
    a, b, c = (issuer.token() for _ in range(3))
    allowed = issuer.token()
    await _warden_revoke(vhost_url, "--jti", _jti(a), "--expires-at", "2030-01-01T00:00:00Z")
    await _warden_revoke(
        vhost_url,
        "--jti",
        _jti(b),
        "--issuer",
        issuer.url,
        "--expires-at",
        "2030-01-01T00:00:00Z",
    )
    await _warden_revoke(vhost_url, "--jti", _jti(c))

    async def all_denied(running: Any) -> None:
        async with asyncio.timeout(10):
            for token in (a, b, c):
                claims = jwt.decode(token, options={"verify_signature": False})
                await running.worker.feed.wait_until_revoked(claims, issuer.url)
        assert running.worker.feed.fresh()
        denied = {await vrabbit.job(queue_name, "reports.read", t) for t in (a, b, c)}
        ran_id = await vrabbit.job(queue_name, "reports.read", allowed)
        letters = await vrabbit.dead_letters(queue_name, 3)
        assert {m.message_id for m in letters} == denied
        assert {m.headers["x-warden-reason"] for m in letters} == {"token_revoked"}
        [job] = await ran.wait_for(1)
        assert job.id == ran_id
        ran.reset()

    await all_denied(first)
    await first.stop()
    # A replica started afterwards reads the same events from the stream and becomes ready.
    await all_denied(await start_worker(broker_url=vhost_url))


class FaultyList(RevocationList):
    """A revocation list that fails to take events naming ``poisoned`` while ``failing``."""

    def __init__(self, poisoned: str) -> None:
        super().__init__()
        self.poisoned = poisoned
        self.failing = True

    def add(self, event: Revocation, now: float) -> bool:
        if self.failing and event.value == self.poisoned:
            raise RuntimeError("injected fault")
        return super().add(event, now)


async def test_an_event_that_cannot_be_applied_stops_decisions_until_it_is(
    vhost_url: str,
    start_worker: StartWorker,
    vrabbit: Rabbit,
    issuer: Issuer,
    queue_name: str,
    logwatch: LogWatch,
) -> None:
    poisoned = issuer.token()
    faulty = FaultyList(_jti(poisoned))
    running = await start_worker(
        broker_url=vhost_url, revocations=faulty, revocation_max_staleness=STALENESS
    )
    feed = running.worker.feed
    assert running.worker.http is not None
    port = running.worker.http.port
    assert (await _readyz(port))[0] == 200

    revoked_at = time.monotonic()
    await revoke(
        vhost_url, Revocation("jti", _jti(poisoned), None, None, time.time() + 60), "24h", "guest"
    )
    await asyncio.wait_for(feed.wait_unreliable(), STALENESS)
    assert time.monotonic() - revoked_at < STALENESS
    status, body = await _readyz(port)
    assert status == 503
    assert body["ready"] is False
    assert "could not be applied" in body["revocations"]
    await logwatch.wait_for(lambda r: r.getMessage().startswith("not taking jobs"))
    assert await _consumers(vrabbit, queue_name) == 0

    # Jobs wait in their queue: the one the event would deny, and an innocent one alike.
    denied = await vrabbit.job(queue_name, "reports.read", poisoned)
    innocent = await vrabbit.job(queue_name, "reports.read", issuer.token())
    # The feed keeps trying, and keeps failing, and still nothing is taken.
    faults = feed.faults
    await logwatch.wait_for(lambda _: feed.faults >= faults + 2, timeout=30)
    assert await vrabbit.depth(queue_name) == 2
    assert ran.jobs == []
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert f"warden_revocation_faults_total {float(feed.faults)}" in metrics

    # Once the event can be applied, the worker takes jobs again and enforces it.
    faulty.failing = False
    [letter] = await vrabbit.dead_letters(queue_name, 1, timeout=30)
    assert letter.message_id == denied
    assert letter.headers["x-warden-reason"] == "token_revoked"
    [job] = await ran.wait_for(1)
    assert job.id == innocent
    assert (await _readyz(port))[0] == 200


class StallingFeed(RevocationFeed):
    """A feed whose consumer stops advancing (receives, never handles) once ``stalled`` is set."""

    stalled = False

    def take(self, *args: Any) -> None:
        if self.stalled:
            return
        super().take(*args)


async def test_a_feed_that_stops_advancing_turns_stale_within_the_budget(
    vhost_url: str, vrabbit: Rabbit
) -> None:
    channel = await vrabbit.connection.channel()
    await declare_stream(channel, "24h")
    feed = StallingFeed(
        vhost_url,
        RevocationList(),
        max_staleness=STALENESS,
        trusted=frozenset({"guest"}),
        user="guest",
    )
    following = asyncio.create_task(feed.follow_forever())
    try:
        async with asyncio.timeout(10):
            await feed.caught_up.wait()
            await feed.wait_reliable()
        # Quiet is not stale: with no events, the feed stays fresh well past the budget.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(feed.wait_unreliable(), 1.5 * STALENESS)
        assert feed.fresh()

        feed.stalled = True
        stalled_at = time.monotonic()
        await asyncio.wait_for(feed.wait_unreliable(), 2 * STALENESS)
        assert time.monotonic() - stalled_at <= STALENESS + 1.0
        assert not feed.fresh()
        assert "has not advanced" in feed.why_stale()
        # A revoked token is not let through: the check says "wait", not "allowed".
        with pytest.raises(errors.RevocationsStale, match="has not advanced"):
            feed.check({"jti": "x", "iat": int(time.time())}, "https://issuer.test")
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def test_jobs_wait_in_their_queue_while_the_feed_is_gone_and_are_decided_when_it_is_back(
    vhost_url: str,
    start_worker: StartWorker,
    vrabbit: Rabbit,
    issuer: Issuer,
    queue_name: str,
    logwatch: LogWatch,
) -> None:
    running = await start_worker(broker_url=vhost_url, revocation_max_staleness=0.5)
    channel = await vrabbit.connection.channel()
    await channel.queue_delete(names.REVOCATION_STREAM)
    await logwatch.wait_for(lambda r: r.getMessage().startswith("not taking jobs"))

    ids = [await vrabbit.job(queue_name, "reports.read", issuer.token()) for _ in range(3)]
    denied = await vrabbit.job(queue_name, "admin.purge", issuer.token())
    # Nobody consumes: every job is still in its queue, none deferred, none decided.
    assert await _consumers(vrabbit, queue_name) == 0
    assert await vrabbit.depth(queue_name) == 4
    assert running.worker.http is not None
    status, body = await _readyz(running.worker.http.port)
    assert status == 503
    assert "revocation feed" in body["revocations"]

    await channel.declare_queue(
        names.REVOCATION_STREAM, durable=True, arguments=stream_arguments("24h")
    )
    jobs = await ran.wait_for(3, timeout=20)
    assert sorted(j.id for j in jobs) == sorted(ids)
    [letter] = await vrabbit.dead_letters(queue_name, 1)
    assert letter.message_id == denied
    assert letter.headers["x-warden-reason"] == "scope_insufficient"
    assert "taking jobs again" in logwatch.messages()
