"""Revocation through the feed: a revoked token stops working everywhere, queued jobs included."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest

from tests.support.actions import ran
from tests.support.issuer import Issuer
from tests.support.rabbit import Rabbit
from worker.amqp.feed import revoke
from worker.auth.revocation import Revocation

pytestmark = pytest.mark.broker


def _at(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _event(**fields: Any) -> Revocation:
    fields.setdefault("expires_at", _at(time.time() + 3600))
    return Revocation.from_mapping(fields)


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _client() -> str:
    # Revocations outlive a test in the shared stream: every test revokes clients of its own.
    return f"client-{uuid.uuid4().hex[:10]}"


async def test_job_queued_before_its_jti_was_revoked_is_denied(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    client = _client()
    revoked_token = issuer.token(client_id=client)
    other_token = issuer.token(client_id=client)
    await rabbit.declare_work_queue(queue_name)
    denied = await rabbit.job(queue_name, "reports.read", revoked_token)
    allowed = await rabbit.job(queue_name, "reports.read", other_token)
    jti = _claims(revoked_token)["jti"]
    await revoke(broker_url, _event(jti=jti), "24h", "guest")

    await start_worker()

    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == denied
    assert letter.headers["x-warden-reason"] == "token_revoked"
    assert letter.headers["x-warden-denial"]["token"]["jti"] == jti
    [job] = await ran.wait_for(1)
    assert job.id == allowed


async def test_client_revocation_cuts_off_tokens_issued_before_the_cut(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    client = _client()
    cut = int(time.time())
    await revoke(
        broker_url, _event(client_id=client, iss=issuer.url, issued_before=_at(cut)), "24h", "guest"
    )
    await start_worker()
    old = await rabbit.job(queue_name, "reports.read", issuer.token(client_id=client, iat=cut - 60))
    new = await rabbit.job(queue_name, "reports.read", issuer.token(client_id=client, iat=cut))
    other = await rabbit.job(queue_name, "reports.read", issuer.token(iat=cut - 60))

    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == old
    assert letter.headers["x-warden-reason"] == "token_revoked"
    jobs = await ran.wait_for(2)
    assert {j.id for j in jobs} == {new, other}


async def test_two_workers_both_deny_soon_after_the_event(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, broker_url: str
) -> None:
    running = [await start_worker(prefetch=1), await start_worker(prefetch=1)]
    token = issuer.token(client_id=_client())
    claims = _claims(token)

    published = time.monotonic()
    await revoke(broker_url, _event(jti=claims["jti"]), "24h", "guest")
    async with asyncio.timeout(5):
        for handle in running:
            await handle.worker.feed.wait_until_revoked(claims, issuer.url)
    propagation = time.monotonic() - published
    assert propagation < 5

    ids = [await rabbit.job(queue_name, "reports.read", token) for _ in range(20)]
    letters = await rabbit.dead_letters(queue_name, 20)
    assert sorted(letter.message_id for letter in letters) == sorted(ids)
    assert {letter.headers["x-warden-reason"] for letter in letters} == {"token_revoked"}
    deciders = {letter.headers["x-warden-denial"]["worker"] for letter in letters}
    assert deciders == {handle.worker.settings.worker_id for handle in running}
    assert ran.jobs == []
