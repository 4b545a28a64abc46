"""Jobs that outlive their tokens, on a broker that witnesses arrivals (RabbitMQ 4.0 with
``message_interceptors.incoming.set_header_timestamp.overwrite = true``, as ``.ci/run`` starts
it): the allowance, the stamps a publisher forges, the first arrival across retries, and the
brokers a worker with an allowance refuses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest

from tests.conftest import IN_CI, worker_settings
from tests.support.actions import ran
from tests.support.issuer import Issuer, JwksServer
from tests.support.leaks import assert_no_leak
from tests.support.queued_actions import RETRY_DELAY
from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import needs_rabbitmqctl, writing_user
from tests.support.schemas import DENIAL
from tests.support.stamping import KEEPING_NODE, rabbitmq4, rabbitmq4_built
from tests.test_operating import warden
from worker import names
from worker.amqp.arrival import STAMP_SETTING
from worker.auth.revocation import Revocation, RevocationList
from worker.deadletters.seal import Seal
from worker.errors import ConfigurationError
from worker.pipeline.actions import Registry
from worker.service.runner import Worker

REGISTRY = Registry.from_modules(["tests.support.actions", "tests.support.queued_actions"])
HOUR = 3600.0


async def _past(moment: float) -> None:
    """Return once the wall clock has passed ``moment``: a token's expiry is no event."""
    await asyncio.sleep(max(0.0, moment - time.time()) + 0.01)


def _ms(moment: float) -> int:
    return round(moment * 1000)


def _at(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["received_at"]).timestamp()


@contextlib.asynccontextmanager
async def _other_publisher(broker_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel of a broker user of the test's own, who may publish jobs and nothing else."""
    async with writing_user(broker_url, r"^warden\.jobs$") as (_, url):
        connection = await aio_pika.connect(url)
        async with connection:
            yield await connection.channel(publisher_confirms=True, on_return_raises=True)


async def test_a_job_that_outlived_its_token_runs_within_its_allowance_and_only_then(
    witnessing_broker: str, start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await rabbit.declare_work_queue(queue_name)
    published = time.time()
    exp = int(published) + 2
    token = issuer.token(exp=exp)
    revoked_jti = uuid.uuid4().hex
    mids = {
        "long": await rabbit.job(queue_name, "queued.long", token),
        "short": await rabbit.job(queue_name, "queued.short", token),
        "never": await rabbit.job(queue_name, "queued.never", token),
        "default": await rabbit.job(queue_name, "queued.default", token),
        "expired-on-arrival": await rabbit.job(
            queue_name, "queued.long", issuer.token(iat=int(published) - 60, exp=exp - 10)
        ),
        "revoked": await rabbit.job(
            queue_name, "queued.long", issuer.token(exp=exp, jti=revoked_jti)
        ),
    }
    arrived = time.time()
    await _past(exp + 1.5)  # every token has expired; queued.short's 1 s allowance is over
    revocations = RevocationList()
    revocations.add(Revocation("jti", revoked_jti, issuer.url, None, time.time() + HOUR), 0)

    await start_worker(
        REGISTRY, revocations=revocations, leeway_seconds=0, broker_url=witnessing_broker
    )

    [job] = await ran.wait_for(1)
    assert job.id == mids["long"]
    assert job.principal.sub == issuer.defaults["sub"], "it runs as its publisher"
    assert job.replayed_by is None
    letters = {m.message_id: m for m in await rabbit.dead_letters(queue_name, 5)}
    assert len(ran.jobs) == 1
    by_name = {
        name: letters[mid].headers[names.HEADER_DENIAL]
        for name, mid in mids.items()
        if mid in letters
    }
    assert set(by_name) == set(mids) - {"long"}
    for record in by_name.values():
        DENIAL.validate(record)
        assert published - 1 <= _at(record) <= arrived + 1, "the broker's own stamp"
    assert {name: record["reason"] for name, record in by_name.items()} == {
        "short": "token_expired",
        "never": "token_expired",
        "default": "token_expired",
        "expired-on-arrival": "token_expired",
        "revoked": "token_revoked",
    }
    assert "longer than its queueing allowance (1s)" in by_name["short"]["detail"]
    assert by_name["never"]["detail"] == f"the token expired at {exp}"
    assert by_name["default"]["detail"] == f"the token expired at {exp}"
    assert "before the job arrived at" in by_name["expired-on-arrival"]["detail"]


async def test_a_stamp_a_publisher_forges_changes_nothing(
    witnessing_broker: str,
    start_worker: Any,
    rabbit: Rabbit,
    issuer: Issuer,
    queue_name: str,
) -> None:
    await rabbit.declare_work_queue(queue_name)
    now = time.time()
    expired = issuer.token(iat=int(now) - 120, exp=int(now) - 60)
    exp = int(now) + 2
    valid = issuer.token(exp=exp)
    forged_older = {
        "headers": {names.HEADER_BROKER_TIMESTAMP: _ms(now - 90)},
        "timestamp": datetime.fromtimestamp(now - 90, UTC),
    }
    forged_newer = {
        "headers": {names.HEADER_BROKER_TIMESTAMP: _ms(now + HOUR)},
        "timestamp": datetime.fromtimestamp(now + HOUR, UTC),
    }
    older_header = await rabbit.job(
        queue_name, "queued.long", expired, headers=forged_older["headers"]
    )
    older_property = await rabbit.job(
        queue_name, "queued.long", expired, timestamp=forged_older["timestamp"]
    )
    newer = await rabbit.job(queue_name, "queued.long", valid, **forged_newer)
    await _past(exp + 0.5)

    await start_worker(REGISTRY, leeway_seconds=0, broker_url=witnessing_broker)

    [job] = await ran.wait_for(1)
    assert job.id == newer, "the broker's stamp, before exp, not the forged one after it"
    letters = {m.message_id: m for m in await rabbit.dead_letters(queue_name, 2)}
    assert set(letters) == {older_header, older_property}
    for letter in letters.values():
        record = letter.headers[names.HEADER_DENIAL]
        assert record["reason"] == "token_expired"
        assert "before the job arrived at" in record["detail"]
        assert abs(_at(record) - now) < 5, "the broker's stamp, not the forged one"


async def test_a_job_retried_twice_keeps_its_first_arrival(
    witnessing_broker: str, start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(
        REGISTRY,
        leeway_seconds=0,
        retry_max_seconds=RETRY_DELAY + 1,
        broker_url=witnessing_broker,
    )
    # The second attempt comes after exp, and so does the broker's stamp on the copy that waits
    # for the third: only the first arrival, carried on warden's copies, lets the third run.
    exp = int(time.time()) + 2
    expiry = time.monotonic() + (exp - time.time())
    mid = await rabbit.job(queue_name, "queued.flaky", issuer.token(exp=exp))
    jobs = await ran.wait_for(3, timeout=3 * RETRY_DELAY + 10)
    assert [(job.id, job.attempt) for job in jobs] == [(mid, 1), (mid, 2), (mid, 3)]
    assert ran.times[1] > expiry
    assert ran.times[2] > expiry


@needs_rabbitmqctl
async def test_a_retry_copy_forged_by_an_untrusted_user_gives_nothing(
    witnessing_broker: str, start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(REGISTRY, leeway_seconds=0, broker_url=witnessing_broker)
    now = time.time()
    expired = issuer.token(iat=int(now) - 120, exp=int(now) - 60)
    forged = {
        names.HEADER_AUTHORIZATION: f"Bearer {expired}",
        names.HEADER_RECEIVED_AT: _ms(now - 90),
        names.HEADER_ATTEMPT: 2,
        names.HEADER_REPLAYED_BY: "guest",
    }
    async with _other_publisher(witnessing_broker) as theirs:
        jobs = await theirs.get_exchange(names.JOBS_EXCHANGE, ensure=False)
        for mid, token in (("forged-copy", expired), ("forged-replay", issuer.token())):
            await jobs.publish(
                aio_pika.Message(
                    b'{"action":"queued.long","payload":{}}',
                    headers={**forged, names.HEADER_AUTHORIZATION: f"Bearer {token}"},
                    message_id=mid,
                    content_type="application/json",
                ),
                queue_name,
            )
        sent = time.time()
    [letter] = await rabbit.dead_letters(queue_name, 1)
    record = letter.headers[names.HEADER_DENIAL]
    assert record["reason"] == "token_expired"
    assert "before the job arrived at" in record["detail"]
    assert record["attempts"] == 1
    assert now <= _at(record) <= sent + 1, "its own arrival, not the one it claims"
    for name in (names.HEADER_RECEIVED_AT, names.HEADER_REPLAYED_BY):
        assert name not in letter.headers
    [job] = await ran.wait_for(1)
    assert job.id == "forged-replay"
    assert job.replayed_by is None, "only a trusted user's replay names who replayed it"
    assert job.attempt == 1


# --- brokers that do not witness arrivals ------------------------------------------------------


@pytest.fixture(scope="module")
def keeping_broker(broker_stamping: tuple[bool, str]) -> Iterator[str]:
    """A RabbitMQ 4.0 node with the interceptor at ``overwrite = false``: it stamps a message
    only where the publisher did not (``tests/brokers/rabbitmq4.sh``, node ``keep``)."""
    if not rabbitmq4_built():
        if IN_CI and not broker_stamping[1].startswith("3."):
            pytest.fail("CI's RabbitMQ 4 run needs tests/brokers/rabbitmq4.sh build, as root")
        pytest.skip("needs tests/brokers/rabbitmq4.sh build (as root)")
    url = rabbitmq4("start", KEEPING_NODE)
    try:
        yield url
    finally:
        rabbitmq4("stop", KEEPING_NODE)


async def test_a_worker_with_an_allowance_refuses_a_broker_that_keeps_a_forged_stamp(
    keeping_broker: str, jwks: JwksServer, issuer: Issuer, queue_name: str
) -> None:
    settings = worker_settings(keeping_broker, jwks, issuer, queue_name)
    with pytest.raises(ConfigurationError) as refused:
        await Worker(settings, REGISTRY).run(asyncio.Event())
    assert "kept a publisher's forged timestamp_in_ms" in str(refused.value)
    assert STAMP_SETTING in str(refused.value)

    code, _, err = await warden(
        "run",
        env={
            "WARDEN_BROKER_URL": keeping_broker,
            "WARDEN_ISSUER": issuer.url,
            "WARDEN_AUDIENCE": issuer.audience,
            "WARDEN_ACTIONS": "tests.support.queued_actions",
            "WARDEN_QUEUES": queue_name,
            "WARDEN_QUEUED_FOR_SECONDS": "600",
            "WARDEN_HTTP_PORT": "0",
            "WARDEN_LOG_LEVEL": "ERROR",
        },
    )
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("warden: configuration error: ")
    assert STAMP_SETTING in line


async def test_a_worker_with_an_allowance_refuses_a_broker_that_does_not_stamp(
    broker_url: str,
    broker_stamping: tuple[bool, str],
    start_worker: Any,
    jwks: JwksServer,
    issuer: Issuer,
    queue_name: str,
) -> None:
    if broker_stamping[0]:
        pytest.skip("this broker stamps arrivals (the 3.10 run shows one that does not)")
    settings = worker_settings(broker_url, jwks, issuer, queue_name, queued_for_seconds=60)
    with pytest.raises(ConfigurationError, match=STAMP_SETTING):
        await Worker(settings, REGISTRY).run(asyncio.Event())
    # Without an allowance (no action names one of its own), nothing changes: the worker starts.
    await start_worker()


# --- replaying a job that outlived its token ---------------------------------------------------


async def test_replay_runs_a_job_as_its_publisher_once_the_allowance_covers_it(
    witnessing_broker: str, start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    key = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    await rabbit.declare_work_queue(queue_name)
    exp = int(time.time()) + 2
    token = issuer.token(exp=exp, client_id="billing")
    own = await rabbit.job(queue_name, "reports.read", token)
    other = await rabbit.job(queue_name, "reports.read", token)
    await _past(exp + 0.5)
    # No allowance yet (the default): both are dead-lettered, their token sealed.
    first = await start_worker(leeway_seconds=0, seal_key=key, broker_url=witnessing_broker)
    letters = await rabbit.peek(names.dead_letter_queue(queue_name), 2)
    for letter in letters:
        record = letter.headers[names.HEADER_DENIAL]
        assert record["reason"] == "token_expired"
        assert record["received_at"] is not None
        assert token not in repr(dict(letter.headers))
        assert_no_leak(repr(dict(letter.headers)), "a dead letter")
        sealed = letter.headers[names.HEADER_SEALED_TOKEN]
        assert Seal(base64.urlsafe_b64decode(key + "=")).open(sealed, letter.message_id) == token
    await first.stop()

    env = {"WARDEN_BROKER_URL": witnessing_broker}
    code, _, err = await warden("dlq", "replay", queue_name, "--all", env=env)
    assert code == 2
    assert "a token is needed" in err

    # The operator raises the allowance; the job replayed with its own token runs as billing.
    await start_worker(
        leeway_seconds=0, seal_key=key, queued_for_seconds=3600, broker_url=witnessing_broker
    )
    sealing = {**env, "WARDEN_SEAL_KEY": key}
    code, _, err = await warden("dlq", "replay", queue_name, "--message-id", own, env=sealing)
    assert code == 0, err
    [job] = await ran.wait_for(1)
    assert (job.id, job.principal.client_id, job.replayed_by) == (own, "billing", None)

    # Replayed with the operator's token, it runs as the operator, and says who replayed it.
    fresh = issuer.token(client_id="operator-tool", scope="reports:read")
    code, _, err = await warden(
        "dlq", "replay", queue_name, "--message-id", other, "--token", fresh, env=env
    )
    assert code == 0, err
    jobs = await ran.wait_for(2)
    replayed = jobs[1]
    assert (replayed.id, replayed.principal.client_id) == (other, "operator-tool")
    assert replayed.replayed_by == unquote(urlsplit(witnessing_broker).username or "")
