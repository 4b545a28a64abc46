"""A job dead-lettered twice for the same reason (its worker killed after writing the dead letter
and before acking the job) is one dead letter for the operator: ``warden dlq`` counts it,
lists it and replays it once, and the replay removes its copy too."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import pytest

from tests.support.issuer import Issuer, JwksServer
from tests.support.leaks import assert_no_leak
from tests.support.rabbit import Rabbit
from tests.support.workers import ROOT, WorkerProcesses
from worker import names
from worker.deadletters.admin import once
from worker.deadletters.read import Letter


async def warden(broker_url: str, *args: str) -> str:
    """Run a ``warden`` command; what it printed (stdout then stderr), asserting exit 0."""
    tool = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env={**os.environ, "WARDEN_BROKER_URL": broker_url},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await tool.communicate()
    assert tool.returncode == 0, (out + err).decode()
    return out.decode() + err.decode()


@pytest.fixture
async def workers(
    broker_url: str, jwks: JwksServer, issuer: Issuer, queue_name: str, rabbit: Rabbit
) -> AsyncIterator[WorkerProcesses]:
    ran_queue = f"{queue_name}.ran"
    rabbit.forget_later(ran_queue)
    channel = await rabbit.connection.channel()
    await channel.declare_queue(ran_queue, durable=True)
    await channel.close()
    await rabbit.declare_work_queue(queue_name)
    processes = WorkerProcesses(broker_url, queue_name, ran_queue, issuer, jwks)
    yield processes
    await processes.close()


@pytest.mark.broker
async def test_a_job_dead_lettered_twice_is_counted_listed_and_replayed_once(
    workers: WorkerProcesses, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    dlq = names.dead_letter_queue(queue_name)
    denied = await rabbit.job(queue_name, "work.slow", issuer.token(scope="reports"))

    # The worker holds its acks up to a second to send them together: killed as soon as the
    # dead letter is in the queue, it wrote the letter and never acked the job.
    first = await workers.start(WARDEN_ACK_LINGER_MS="1000", WARDEN_PREFETCH="64")
    await rabbit.until_depth(dlq, 1, timeout=60)
    first.kill()
    await first.wait()
    await rabbit.until_depth(queue_name, 1, timeout=30)  # the job went back to its queue

    # The next worker denies it again, for the same reason: a second, identical letter.
    second = await workers.start()
    await rabbit.until_depth(dlq, 2, timeout=60)
    await workers.stop(second)
    assert await rabbit.depth(queue_name) == 0

    stats = json.loads(await warden(broker_url, "dlq", "stats", queue_name, "--json"))
    assert stats == {queue_name: {"scope_insufficient": 1}}
    listed = json.loads(await warden(broker_url, "dlq", "list", queue_name, "--json"))
    assert [(letter["message_id"], letter["copies"]) for letter in listed] == [(denied, 2)]

    good = issuer.token(scope="work")
    replayed = await warden(
        broker_url, "dlq", "replay", queue_name, "--message-id", str(denied), "--token", good
    )
    assert "replayed 1, removed 1 repeated copies" in replayed
    assert_no_leak(replayed, "warden dlq replay")
    assert await rabbit.depth(dlq) == 0
    assert await rabbit.depth(queue_name) == 1

    # Run with a token that allows it, the job runs once.
    third = await workers.start()
    [ran] = await rabbit.take(f"{queue_name}.ran", 1, timeout=60)
    assert ran.body.decode() == denied
    await workers.stop(third)
    assert await rabbit.get_all(f"{queue_name}.ran") == []
    assert await rabbit.depth(queue_name) == 0


def _letter(message_id: str, reason: str, user: str, body: bytes = b"{}") -> Letter:
    return Letter.read(
        body,
        {names.HEADER_REASON: reason},
        message_id,
        queue="jobs",
        user_id=user,
        trusted=frozenset({"warden"}),
    )


def test_only_warden_letters_of_one_job_one_reason_and_one_body_are_taken_for_copies() -> None:
    genuine = _letter("m1", "token_expired", "warden")
    # Anyone who may write into the dead-letter queue can copy a letter's id and reason: such a
    # copy never hides the genuine letter, nor is hidden by it.
    planted = _letter("m1", "token_expired", "mallory")
    other_reason = _letter("m1", "token_revoked", "warden")
    other_body = _letter("m1", "token_expired", "warden", b'{"action": "x"}')

    kept = once([genuine, planted, genuine, other_reason, other_body, genuine])

    assert kept == [genuine.repeated().repeated(), planted, other_reason, other_body]
    assert [letter.copies for letter in kept] == [3, 1, 1, 1]
