"""``warden run`` as a process: SIGTERM under load loses and repeats nothing; a message that
kills the process every time ends in the dead-letter queue as ``delivery_limit``; what the process
writes never shows a token."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.issuer import Issuer, JwksServer
from tests.support.leaks import assert_no_leak, minted
from tests.support.rabbit import Rabbit
from tests.support.workers import WorkerProcesses
from worker import names
from worker.amqp.publisher import publish_jobs
from worker.deadletters.read import dead_letter_reason

pytestmark = pytest.mark.broker

ROOT = Path(__file__).parent.parent


@pytest.fixture
async def spawn(
    broker_url: str, jwks: JwksServer, issuer: Issuer, queue_name: str, rabbit: Rabbit
) -> AsyncIterator[Callable[..., Any]]:
    """Start ``warden run`` processes on the test's queue; kill leftovers at the end."""
    ran_queue = f"{queue_name}.ran"
    rabbit.forget_later(ran_queue)
    channel = await rabbit.connection.channel()
    await channel.declare_queue(ran_queue, durable=True)

    workers = WorkerProcesses(broker_url, queue_name, ran_queue, issuer, jwks)

    rabbit.forget_later(queue_name)
    yield workers.start
    await workers.close()


async def test_sigterm_under_load_exits_0_and_loses_or_repeats_nothing(
    spawn: Callable[..., Any], rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    await rabbit.declare_work_queue(queue_name)
    total = 2000
    ids = await publish_jobs(
        broker_url, queue_name, "work.slow", {}, issuer.token(scope="work"), count=total
    )
    process = await spawn(WARDEN_PREFETCH="64")

    # What ran is read once, after the stop, so that nothing is counted twice but a job run
    # twice.
    await rabbit.until_depth(f"{queue_name}.ran", 300, timeout=60, at_least=True)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert_no_leak(stderr.decode(), "the output of warden run")

    ran = await rabbit.get_all(f"{queue_name}.ran")
    ran_ids = [m.body.decode() for m in ran]
    left = [m.message_id for m in await rabbit.get_all(queue_name)]
    twice = {i for i in ran_ids if ran_ids.count(i) > 1}
    assert not twice, (
        f"{len(twice)} jobs ran twice; redelivered: "
        f"{[m.headers.get('redelivered') for m in ran if m.body.decode() in twice]}; "
        f"the worker wrote: {stderr.decode()[-3000:]}"
    )
    assert sorted(ran_ids + left) == sorted(ids), "executed plus still queued must be published"
    assert 300 <= len(ran_ids) < total
    assert await rabbit.depth(names.dead_letter_queue(queue_name)) == 0


async def test_message_that_kills_the_worker_every_time_reaches_the_dlq_as_delivery_limit(
    spawn: Callable[..., Any], rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    limit = 3
    await rabbit.declare_work_queue(queue_name, delivery_limit=limit)
    poison = await rabbit.job(queue_name, "work.crash", issuer.token(scope="work"))
    fine = await rabbit.job(queue_name, "work.slow", issuer.token(scope="work"))

    # Workers keep dying on the poison message until the broker gives up on it.
    dead_lettered = asyncio.create_task(
        rabbit.until_depth(names.dead_letter_queue(queue_name), 1, timeout=120)
    )
    deaths = 0
    while not dead_lettered.done():
        process = await spawn(WARDEN_DELIVERY_LIMIT=str(limit), WARDEN_PREFETCH="1")
        exited = asyncio.ensure_future(process.wait())
        await asyncio.wait({dead_lettered, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            assert process.returncode == -signal.SIGKILL, (await process.stderr.read())[-2000:]
            deaths += 1
            assert deaths <= limit + 1, "the delivery limit did not stop the poison message"
        else:  # the broker gave up while this worker was starting; it has nothing to do
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(exited, 30) in (0, -signal.SIGTERM)

    # What the operator's tools print of it holds no token either.
    for command in (("list", queue_name, "--json"), ("show", queue_name, str(poison))):
        tool = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "dlq",
            *command,
            env={**os.environ, "WARDEN_BROKER_URL": rabbit.url},
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        printed, _ = await tool.communicate()
        assert tool.returncode == 0, printed.decode()
        assert "delivery_limit" in printed.decode()
        assert_no_leak(printed.decode(), f"warden dlq {command[0]}")
    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert deaths >= limit - 1
    assert letter.message_id == poison
    # The broker's dead letter waited in the shared quarantine queue; what reached the
    # dead-letter queue was written by warden: its user, its reason and record, and no token
    # anywhere.
    assert letter.user_id == "guest"
    assert dead_letter_reason(letter.headers) == "delivery_limit"
    assert letter.routing_key == f"delivery_limit.{queue_name}"
    assert "authorization" not in letter.headers
    denial = letter.headers["x-warden-denial"]
    assert denial["reason"] == "delivery_limit"
    assert denial["action"] == "work.crash"
    assert "deliveries" in denial["detail"]
    assert_no_leak(repr((letter.headers, letter.body, letter.info())), "the dead letter")
    assert await rabbit.depth(names.QUARANTINE_QUEUE) == 0

    # The job behind it was never lost: it ran once, before or in this last worker.
    process = await spawn(
        WARDEN_DELIVERY_LIMIT=str(limit), WARDEN_PREFETCH="1", WARDEN_LOG_LEVEL="INFO"
    )
    [ran] = await rabbit.take(f"{queue_name}.ran", 1, timeout=30)
    assert ran.body.decode() == fine
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while b'"consuming"' not in await process.stderr.readline():
            pass
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.wait(), 30)
    assert process.returncode == 0


async def test_what_warden_run_writes_never_shows_a_token(
    spawn: Callable[..., Any], rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await rabbit.declare_work_queue(queue_name)
    good = issuer.token(scope="work")
    header, claims, signature = good.split(".")
    forged = minted(f"{header}.{claims}.{signature[::-1]}")  # the alphabet of a signature
    denied = await rabbit.job(queue_name, "work.slow", forged)
    allowed = await rabbit.job(queue_name, "work.slow", good)
    process = await spawn(WARDEN_LOG_LEVEL="DEBUG", WARDEN_LOG_ALLOWED_LEVEL="INFO")

    [letter] = await rabbit.dead_letters(queue_name, 1, timeout=30)
    [ran] = await rabbit.take(f"{queue_name}.ran", 1, timeout=30)
    assert (letter.message_id, ran.body.decode()) == (denied, allowed)
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0

    text = stderr.decode()
    written = [json.loads(line)["event"] for line in text.splitlines()]
    assert {"denied", "allowed"} <= set(written), "both jobs were logged, at DEBUG"
    assert_no_leak(text, "the output of warden run")
