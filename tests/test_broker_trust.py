"""The broker is not a trusted party: tried from the side of someone who may publish to it.

Each test has a virtual host and broker users of its own. The roles get the permissions that
``warden permissions`` prints; the worker believes only what its trusted users wrote
(``WARDEN_TRUSTED_USERS``), which RabbitMQ vouches for by checking ``user_id`` against the
publishing connection's user.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import jwt
import pytest

from tests.conftest import StartWorker
from tests.support.actions import ran
from tests.support.issuer import Issuer
from tests.support.logwatch import LogWatch
from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import as_user, broker_users, rabbitmqctl, scratch_vhost
from worker import names
from worker.amqp.publisher import publish_jobs
from worker.auth.revocation import Revocation

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("worker", "publisher", "revoker", "operator")


async def _warden(url: str, *args: str, **env: str) -> tuple[int, str]:
    """A ``warden`` command as an operator runs it; its exit code and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env={**os.environ, "WARDEN_BROKER_URL": url, **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


class Site:
    """A virtual host with a user per role, each with the permissions warden prints."""

    def __init__(self, vhost_url: str, vhost: str, passwords: dict[str, str], prefix: str):
        self.vhost_url = vhost_url
        self.vhost = vhost
        self.passwords = passwords
        self.prefix = prefix

    def user(self, role: str) -> str:
        return self.prefix + role

    def url(self, role: str) -> str:
        name = self.user(role)
        return as_user(self.vhost_url, name, self.passwords[name])

    @property
    def trusted(self) -> str:
        return ",".join(self.user(r) for r in ("worker", "revoker", "operator"))


@pytest.fixture
async def site(broker_url: str, queue_name: str) -> AsyncIterator[Site]:
    async with scratch_vhost(broker_url) as vhost_url:
        vhost = vhost_url.rsplit("/", 1)[1]
        prefix = f"t{uuid.uuid4().hex[:8]}-"
        async with broker_users(*(prefix + role for role in ROLES), prefix + "attacker") as users:
            code, printed = await _warden(
                vhost_url,
                "permissions",
                "--vhost",
                vhost,
                "--queues",
                queue_name,
                "--prefix",
                prefix,
            )
            assert code == 0, printed
            lines = [
                shlex.split(line) for line in printed.splitlines() if line.startswith("rabbitmqctl")
            ]
            assert [line[4] for line in lines] == [prefix + role for role in ROLES]
            for line in lines:
                await rabbitmqctl(*line[1:])
            # Someone who may do anything in the virtual host, yet is not a trusted user.
            await rabbitmqctl("set_permissions", "-p", vhost, prefix + "attacker", ".*", ".*", ".*")
            yield Site(vhost_url, vhost, users, prefix)


async def _depth(url: str, queue: str, count: int) -> None:
    async with Rabbit(url) as rabbit:
        await rabbit.until_depth(queue, count)


async def _refused(url: str, attempt: Any) -> str:
    """Run ``attempt(channel)`` as the user of ``url``; return how the broker refused it."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
            await attempt(channel)
        return str(refused.value)


def _job(action: str, token: str, **properties: Any) -> aio_pika.Message:
    return aio_pika.Message(
        json.dumps({"action": action, "payload": {}}).encode(),
        content_type="application/json",
        message_id=uuid.uuid4().hex,
        headers={"authorization": f"Bearer {token}"},
        **properties,
    )


async def test_each_role_may_do_its_part_and_nothing_else(
    site: Site, start_worker: StartWorker, issuer: Issuer, queue_name: str, logwatch: LogWatch
) -> None:
    await start_worker(broker_url=site.url("worker"), trusted_users=site.trusted)
    # The worker's start-up probe of the broker's arrival stamp declares a queue of its own,
    # which its role may: whatever the broker does with stamps, it does not refuse the probe.
    refused = [r for r in logwatch.records if "refused" in str(getattr(r, "why", ""))]
    assert not refused, [r.why for r in refused]  # type: ignore[attr-defined]

    # The publisher's jobs enter through warden.jobs and run.
    [job_id] = await publish_jobs(
        site.url("publisher"), queue_name, "reports.read", {}, issuer.token()
    )
    [job] = await ran.wait_for(1)
    assert job.id == job_id

    # Anything else it tries, the broker refuses: the default exchange reaches every queue by
    # name (the dead-letter queue, a retry queue, the revocation stream), and it may declare
    # nothing.
    publisher = site.url("publisher")
    token = issuer.token()
    for target in (
        names.dead_letter_queue(queue_name),
        names.retry_queue(50),
        names.REVOCATION_STREAM,
    ):

        async def straight(channel: Any, target: str = target) -> None:
            await channel.default_exchange.publish(_job("reports.read", token), target)

        assert "ACCESS_REFUSED" in await _refused(publisher, straight)
    for exchange in (names.DEAD_LETTER_EXCHANGE, names.REVOKE_EXCHANGE, names.RETRY_EXCHANGE):

        async def through(channel: Any, exchange: str = exchange) -> None:
            target = await channel.get_exchange(exchange, ensure=False)
            await target.publish(_job("reports.read", token), queue_name)

        assert "ACCESS_REFUSED" in await _refused(publisher, through)

    async def declare(channel: Any) -> None:
        await channel.declare_queue(f"{queue_name}.mine", durable=True)

    assert "ACCESS_REFUSED" in await _refused(publisher, declare)

    async def declare_stream(channel: Any) -> None:
        await channel.declare_queue(
            names.REVOCATION_STREAM, durable=True, arguments={"x-queue-type": "stream"}
        )

    assert "ACCESS_REFUSED" in await _refused(publisher, declare_stream)

    # The revoker may only revoke, and its revocations hold.
    revoked = issuer.token()
    jti = jwt.decode(revoked, options={"verify_signature": False})["jti"]
    code, printed = await _warden(site.url("revoker"), "revoke", "--jti", jti)
    assert code == 0, printed
    assert "ACCESS_REFUSED" in await _refused(site.url("revoker"), declare)
    denied = await publish_jobs(site.url("publisher"), queue_name, "reports.read", {}, revoked)
    await _depth(site.vhost_url, names.dead_letter_queue(queue_name), 1)
    code, printed = await _warden(
        site.url("operator"), "dlq", "list", queue_name, "--json", WARDEN_TRUSTED_USERS=site.trusted
    )
    assert code == 0, printed
    [letter] = json.loads(printed)
    assert letter["message_id"] == denied[0]
    assert letter["trusted"] is True
    assert letter["reason"] == "token_revoked"

    # The operator replays it with a fresh token, and it runs.
    code, printed = await _warden(
        site.url("operator"),
        "dlq",
        "replay",
        queue_name,
        "--all",
        "--token",
        issuer.token(),
        WARDEN_TRUSTED_USERS=site.trusted,
    )
    assert code == 0, printed
    assert "replayed 1" in printed
    _, again = await ran.wait_for(2)
    assert again.id == denied[0]


async def test_forged_letters_are_shown_untrusted_and_never_moved_or_counted(
    site: Site, start_worker: StartWorker, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(broker_url=site.url("worker"), trusted_users=site.trusted)
    dlq = names.dead_letter_queue(queue_name)
    token = issuer.token()
    forged = {
        names.HEADER_REASON: "token_expired",
        names.HEADER_DENIAL: {"reason": "token_expired", "queue": "victim-queue"},
        names.HEADER_X_DEATH: [
            {"queue": queue_name, "reason": "delivery_limit", "count": 5, "exchange": ""}
        ],
    }
    attacker = site.url("attacker")
    connection = await aio_pika.connect(attacker)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        victim = await channel.declare_queue("victim-queue", durable=True)
        # Straight into the dead-letter queue, with and without warden's headers, and with a
        # user_id the broker checks (the attacker's own: another's would be refused).
        for headers in (forged, {names.HEADER_X_DEATH: forged[names.HEADER_X_DEATH]}):
            message = _job("admin.purge", token, user_id=site.user("attacker"))
            message.headers.update(headers)
            await channel.default_exchange.publish(message, dlq)
        # And through warden's own dead-letter exchange.
        dlx = await channel.get_exchange(names.DEAD_LETTER_EXCHANGE, ensure=False)
        message = _job("admin.purge", token)
        message.headers.update(forged)
        await dlx.publish(message, f"token_expired.{queue_name}")
    # One real dead letter, written by the worker.
    real = await publish_jobs(site.url("publisher"), queue_name, "admin.purge", {}, token)

    operator = site.url("operator")
    trusted = {"WARDEN_TRUSTED_USERS": site.trusted}
    await _depth(site.vhost_url, dlq, 4)
    code, printed = await _warden(operator, "dlq", "stats", queue_name, "--json", **trusted)
    assert code == 0, printed
    assert json.loads(printed)[queue_name] == {"scope_insufficient": 1, "untrusted": 3}

    code, printed = await _warden(operator, "dlq", "list", queue_name, "--json", **trusted)
    letters = json.loads(printed)
    assert [letter["trusted"] for letter in letters] == [False, False, False, True]
    for letter in letters[:3]:
        assert "reason" not in letter
        assert letter["client_id"] is None
    assert letters[3]["message_id"] == real[0]

    # Purging by the forged reason removes nothing; a replay moves only warden's own letter, and
    # only to the work queue whose dead-letter queue holds it, never to the queue a letter names.
    code, printed = await _warden(
        operator, "dlq", "purge", queue_name, "--reason", "token_expired", "--yes", **trusted
    )
    assert "purged 0" in printed
    code, printed = await _warden(
        operator, "dlq", "replay", queue_name, "--all", "--token", issuer.token(), **trusted
    )
    assert code == 0, printed
    assert "replayed 1, left 3" in printed
    async with await aio_pika.connect(attacker) as connection:
        channel = await connection.channel()
        victim = await channel.declare_queue("victim-queue", passive=True)
        assert victim.declaration_result.message_count == 0


async def test_a_revocation_event_from_an_untrusted_user_changes_nothing(
    site: Site,
    start_worker: StartWorker,
    issuer: Issuer,
    queue_name: str,
    logwatch: LogWatch,
) -> None:
    running = await start_worker(broker_url=site.url("worker"), trusted_users=site.trusted)
    feed = running.worker.feed
    assert feed is not None
    token = issuer.token()
    claims = jwt.decode(token, options={"verify_signature": False})
    event = Revocation.from_mapping(
        {
            "client_id": claims["client_id"],
            "issued_before": "2999-01-01T00:00:00Z",
            "expires_at": "2999-01-01T00:00:00Z",
        }
    )
    async with await aio_pika.connect(site.url("attacker")) as connection:
        channel = await connection.channel(publisher_confirms=True)
        revoke = await channel.get_exchange(names.REVOKE_EXCHANGE, ensure=False)
        await revoke.publish(aio_pika.Message(event.to_json(), user_id=site.user("attacker")), "")
        await channel.default_exchange.publish(
            aio_pika.Message(event.to_json()), names.REVOCATION_STREAM
        )
    await logwatch.wait_for(lambda _: feed.untrusted >= 2)
    assert len(feed.revocations) == 0
    ignored = [r for r in logwatch.records if r.getMessage().startswith("revocation event ignored")]
    assert {r.publisher_user for r in ignored} == {site.user("attacker"), None}

    [job_id] = await publish_jobs(site.url("publisher"), queue_name, "reports.read", {}, token)
    [job] = await ran.wait_for(1)
    assert job.id == job_id
    assert running.worker.http is not None
    async with httpx.AsyncClient() as client:
        metrics = await client.get(f"http://127.0.0.1:{running.worker.http.port}/metrics")
    assert "warden_revocations_untrusted_total 2.0" in metrics.text


async def test_a_forged_retry_copy_counts_as_a_first_attempt(
    site: Site, start_worker: StartWorker, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(broker_url=site.url("worker"), trusted_users=site.trusted)
    forged = {names.HEADER_ATTEMPT: 4, names.HEADER_DEFERRALS: 2**62}
    async with await aio_pika.connect(site.url("attacker")) as connection:
        channel = await connection.channel(publisher_confirms=True)
        jobs = await channel.get_exchange(names.JOBS_EXCHANGE, ensure=False)
        first = _job("reports.read", issuer.token())
        first.headers.update(forged)
        await jobs.publish(first, queue_name)
        # As if parked by a worker: the shared retry queue hands it back to the work queue
        # through warden.jobs when it expires.
        second = _job("reports.read", issuer.token(), user_id=site.user("attacker"))
        second.headers.update(forged)
        second.headers[names.HEADER_WAIT] = "50"
        retry = await channel.get_exchange(names.RETRY_EXCHANGE, ensure=False)
        await retry.publish(second, queue_name, mandatory=True)
    jobs_run = await ran.wait_for(2)
    assert {job.id for job in jobs_run} == {first.message_id, second.message_id}
    assert [job.attempt for job in jobs_run] == [1, 1]


async def test_a_tool_run_as_a_role_without_the_permission_says_so_in_one_line(
    site: Site, start_worker: StartWorker, queue_name: str
) -> None:
    """The worker's user may not read dead letters: `warden dlq stats` run with its URL names
    the user and the refusal, in one line, with no traceback."""
    await start_worker(broker_url=site.url("worker"), trusted_users=site.trusted)
    code, printed = await _warden(
        site.url("worker"), "dlq", "stats", queue_name, "--json", WARDEN_TRUSTED_USERS=site.trusted
    )
    assert code != 0, printed
    [line] = printed.strip().splitlines()
    assert "ACCESS_REFUSED" in line
    assert repr(site.user("worker")) in line
    assert "warden permissions" in line
    code, printed = await _warden(
        site.url("operator"),
        "dlq",
        "stats",
        queue_name,
        "--json",
        WARDEN_TRUSTED_USERS=site.trusted,
    )
    assert code == 0, printed
    assert json.loads(printed) == {queue_name: {}}
