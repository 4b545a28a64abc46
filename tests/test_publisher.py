"""The publisher API, ``from worker import Publisher``, against RabbitMQ and a development issuer
on loopback: tokens renewed before they expire and not per job, confirms awaited in a window,
proofs for sender-constrained tokens, and the broker's refusals reaching the caller by name."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.issuer import TestIssuer
from tests.support.leaks import assert_no_leak
from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import as_user, broker_users, rabbitmqctl, scratch_vhost
from worker import ClientCredentials, JobRefused, NewJob, Publisher, errors
from worker.auth.proof import ProofKey
from worker.testing import RunningWorker
from worker.testing.plugin import StartWorker

pytestmark = pytest.mark.broker

ACTIONS = "tests.support.actions"
WRITE = "reports:write"


@pytest.fixture
async def worker(warden_worker: StartWorker) -> RunningWorker:
    """A worker on the test's queue, running the tests' actions."""
    return await warden_worker(ACTIONS)


@pytest.fixture
def writer(warden_issuer: TestIssuer) -> str:
    """A token that may run reports.generate."""
    return warden_issuer.token(scope=WRITE)


@pytest.fixture
def missing() -> str:
    """A queue no one declared."""
    return f"missing-{uuid.uuid4().hex[:8]}"


async def test_client_credentials_renews_the_token_before_each_expiry_and_not_per_job(
    warden_worker: StartWorker, broker_url: str
) -> None:
    # Tokens live 2 s (their exp, in whole seconds, may come sooner); the worker allows no
    # leeway, so a job that carried an expired token would be denied token_expired.
    with TestIssuer(token_lifetime=2) as issuer:
        client = issuer.register("publisher", scopes={WRITE})
        worker = await warden_worker(ACTIONS, issuer=issuer, leeway_seconds=0)
        source = ClientCredentials(issuer.token_url, "publisher", client.secret, scope=WRITE)
        ids: list[str] = []
        loop = asyncio.get_running_loop()
        async with Publisher(broker_url, source, queue=worker.queue) as publisher:
            until = loop.time() + 10
            while loop.time() < until:
                batch = [NewJob("reports.generate", {"n": len(ids) + i}) for i in range(5)]
                ids += await publisher.publish_many(batch)
                # Publishing for 10 s is what this test is about: jobs spread over that time.
                await asyncio.sleep(0.1)
        results = [await worker.result(mid) for mid in ids]
        issued = issuer.issued

    assert [r.outcome for r in results] == ["done"] * len(ids), {
        r.reason for r in results if not r.done
    }
    assert source.requests == len(issued)
    # At least one token per lifetime, each asked for before the one before it expired ...
    assert len(issued) >= 5
    for before, after in itertools.pairwise(issued):
        assert after.at < before.exp, "a token was fetched only once the previous one expired"
    # ... and not one per job.
    assert len(ids) >= 100
    assert len(issued) <= 25, f"{len(issued)} token requests for {len(ids)} jobs"


async def test_publish_many_keeps_a_window_of_jobs_awaiting_their_confirm(
    worker: RunningWorker, writer: str, broker_url: str
) -> None:
    sent = 0
    sent_at_first_confirm: list[int] = []

    def counting() -> str:
        nonlocal sent
        sent += 1
        return writer

    def confirmed(_: str) -> None:
        if not sent_at_first_confirm:
            sent_at_first_confirm.append(sent)

    async with Publisher(broker_url, counting, queue=worker.queue, window=32) as publisher:
        ids = await publisher.publish_many(
            (NewJob("reports.generate", {"n": n}) for n in range(100)), on_confirmed=confirmed
        )
    assert len(set(ids)) == 100
    # Not one by one: when the first confirm came, a whole window had been sent.
    assert sent_at_first_confirm == [32]
    for mid in ids:
        assert (await worker.result(mid)).done


async def test_a_sender_constrained_token_from_the_grant_runs_with_its_proof_only(
    worker: RunningWorker, warden_issuer: TestIssuer, broker_url: str
) -> None:
    key = ProofKey.generate()
    client = warden_issuer.register("signer", scopes={WRITE}, bound_to=key)
    source = ClientCredentials(warden_issuer.token_url, "signer", client.secret)
    async with Publisher(broker_url, source, queue=worker.queue, proof_key=key) as publisher:
        proved = await publisher.publish("reports.generate", {"report": "q3"})
    async with Publisher(broker_url, source, queue=worker.queue) as publisher:
        unproved = await publisher.publish("reports.generate", {"report": "q3"})
    assert (await worker.result(proved)).done
    refused = await worker.result(unproved)
    assert (refused.outcome, refused.reason) == ("denied", "proof_invalid")
    assert source.requests == 1


async def test_a_token_function_is_asked_for_each_job(
    worker: RunningWorker, warden_issuer: TestIssuer, broker_url: str
) -> None:
    asked: list[int] = []

    async def fresh() -> str:
        asked.append(len(asked))
        return warden_issuer.token(scope=WRITE)

    async with Publisher(broker_url, fresh, queue=worker.queue) as publisher:
        ids = await asyncio.gather(*(publisher.publish("reports.generate") for _ in range(3)))
    assert len(asked) == 3
    assert [(await worker.result(mid)).outcome for mid in ids] == ["done"] * 3


# --- refusals -------------------------------------------------------------------------------


async def test_a_job_for_a_queue_that_does_not_exist_is_refused_as_unroutable(
    worker: RunningWorker, writer: str, broker_url: str, missing: str
) -> None:
    async with Publisher(broker_url, writer, queue=missing) as publisher:
        with pytest.raises(errors.JobUnroutable) as refused:
            await publisher.publish("reports.generate", message_id="lost-1")
        # The publisher goes on: the next job, to a queue a worker declared, is confirmed.
        ok = await publisher.publish("reports.generate", queue=worker.queue)
    said = str(refused.value)
    assert "NO_ROUTE" in said
    assert repr(missing) in said
    assert "lost-1" in said
    assert refused.value.cause == "unroutable"
    assert refused.value.message_id == "lost-1"
    assert_no_leak(said, "a refusal")
    assert (await worker.result(ok)).done


async def test_only_confirmed_jobs_are_reported_published_when_one_is_refused(
    worker: RunningWorker, writer: str, broker_url: str, missing: str
) -> None:
    jobs = [NewJob("reports.generate", message_id=f"ok-{n}") for n in range(5)]
    jobs.append(NewJob("reports.generate", message_id="lost", queue=missing))
    jobs += [NewJob("reports.generate", message_id=f"later-{n}") for n in range(5)]
    async with Publisher(broker_url, writer, queue=worker.queue, window=4) as publisher:
        with pytest.raises(JobRefused) as refused:
            await publisher.publish_many(jobs)
    confirmed = refused.value.confirmed
    assert refused.value.message_id == "lost"
    assert "lost" not in confirmed
    assert {f"ok-{n}" for n in range(5)} <= set(confirmed)
    # What was reported published is what ran, no more and no less.
    ran = [(await worker.result(mid)).message_id for mid in confirmed]
    assert ran == confirmed
    assert set(worker.results) == set(confirmed)


async def test_a_user_without_write_permission_is_refused_by_name(
    worker: RunningWorker, writer: str, broker_url: str, rabbit: Rabbit
) -> None:
    name = f"t-reader-{uuid.uuid4().hex[:8]}"
    async with broker_users(name) as passwords:
        # May read anything, write nothing.
        await rabbitmqctl("set_permissions", "-p", "/", name, "^$", "^$", ".*")
        url = as_user(broker_url, name, passwords[name])
        async with Publisher(url, writer, queue=worker.queue) as publisher:
            with pytest.raises(errors.JobAccessRefused) as refused:
                await publisher.publish_many([NewJob("reports.generate") for _ in range(3)])
        said = str(refused.value)
        assert "ACCESS_REFUSED" in said
        assert "warden.jobs" in said
        assert name in said
        assert refused.value.confirmed == []
        assert_no_leak(said, "a refusal")

        # warden publish, built on the Publisher, says the same and exits non-zero.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "publish",
            worker.queue,
            "reports.generate",
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")},
                "WARDEN_BROKER_URL": url,
                "WARDEN_TOKEN": writer,
            },
            cwd=Path(__file__).parent.parent,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    assert process.returncode != 0
    assert "publish refused" in err.decode()
    assert "ACCESS_REFUSED" in err.decode()
    assert out == b""
    assert_no_leak(err.decode(), "warden publish")
    assert await rabbit.depth(worker.queue) == 0
    assert worker.results == {}


async def test_publishing_where_no_worker_ever_ran_says_to_start_one(
    broker_url: str, warden_issuer: TestIssuer
) -> None:
    async with (
        scratch_vhost(broker_url) as url,
        Publisher(url, warden_issuer.token(), queue="jobs") as publisher,
    ):
        with pytest.raises(errors.JobExchangeMissing) as refused:
            await publisher.publish("reports.generate")
    assert "NOT_FOUND" in str(refused.value)
    assert "start a worker" in str(refused.value)


async def test_a_login_the_broker_refuses_is_an_error_naming_the_user(
    broker_url: str, warden_issuer: TestIssuer
) -> None:
    url = as_user(broker_url, "no-such-user", "wrong")
    with pytest.raises(errors.JobAccessRefused, match="no-such-user"):
        async with Publisher(url, warden_issuer.token(), queue="jobs"):
            pass
