"""Issuer keys: discovery, rotation, rate-limited refetch, stale-if-error, an issuer down."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.support.actions import ran
from tests.support.issuer import Issuer, JwksServer, SigningKey
from tests.support.rabbit import Rabbit
from worker.auth.keys import IssuerKeys


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def _keys(issuer: Issuer, http: httpx.AsyncClient, url: str | None = None, **kw: Any) -> IssuerKeys:
    kw.setdefault("cooldown", 30.0)
    kw.setdefault("refresh", 300.0)
    return IssuerKeys(issuer.url, url, http, **kw)


async def test_jwks_is_discovered_from_the_issuer_metadata(
    jwks: JwksServer, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    keys = _keys(issuer, http)
    await keys.fetch()
    assert keys.loaded
    assert keys.jwks_url == jwks.jwks_url(issuer)
    assert keys.key(issuer.key.kid) is not None
    assert jwks.requests[0] == "/.well-known/oauth-authorization-server/main"


async def test_metadata_naming_another_issuer_is_not_trusted(
    jwks: JwksServer, http: httpx.AsyncClient
) -> None:
    impostor = jwks.issuer("impostor")
    keys = IssuerKeys(impostor.url + "-other", None, http, cooldown=30, refresh=300)
    await keys.fetch()
    assert not keys.loaded
    assert keys.failures == 1


async def test_concurrent_refetches_share_one_request_and_then_cool_down(
    jwks: JwksServer, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    keys = _keys(issuer, http, jwks.jwks_url(issuer))
    await asyncio.gather(*(keys.refetch() for _ in range(200)))
    assert jwks.jwks_requests(issuer) == 1
    await asyncio.gather(*(keys.refetch() for _ in range(200)))
    assert jwks.jwks_requests(issuer) == 1, "within the cool-down no refetch may go out"


async def test_a_failed_fetch_keeps_the_keys_it_had(
    jwks: JwksServer, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    keys = _keys(issuer, http, jwks.jwks_url(issuer), cooldown=0)
    await keys.fetch()
    kid = issuer.key.kid
    jwks.down = True
    await keys.fetch()
    assert keys.failures == 1
    assert keys.key(kid) is not None


async def test_jwks_with_private_or_symmetric_keys_yields_only_public_signing_keys(
    jwks: JwksServer, issuer: Issuer, http: httpx.AsyncClient
) -> None:
    from jwt.algorithms import RSAAlgorithm

    leaked = SigningKey.generate("RS256", kid="leaked")
    private_jwk = RSAAlgorithm.to_jwk(leaked.private, as_dict=True) | {"kid": "leaked"}
    extra = [private_jwk, {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]
    original = issuer.jwks
    issuer.jwks = lambda: {"keys": original()["keys"] + extra}  # type: ignore[method-assign]
    keys = _keys(issuer, http, jwks.jwks_url(issuer))
    await keys.fetch()
    assert keys.key(issuer.key.kid) is not None
    assert keys.key("leaked") is None
    assert keys.key("hmac") is None


@pytest.mark.broker
async def test_rotated_key_is_accepted_without_a_restart(
    start_worker: Any, rabbit: Rabbit, jwks: JwksServer, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(jwks_cooldown_seconds=0.5)
    first = await rabbit.job(queue_name, "reports.read", issuer.token())
    await ran.wait_for(1)

    issuer.keys.append(SigningKey.generate("ES256"))  # the issuer rotates and signs at once
    second = await rabbit.job(queue_name, "reports.read", issuer.token())
    jobs = await ran.wait_for(2)
    assert [j.id for j in jobs] == [first, second]
    assert await rabbit.depth(f"{queue_name}.dlq") == 0


@pytest.mark.broker
async def test_random_kids_cause_at_most_one_fetch_per_cooldown(
    start_worker: Any, rabbit: Rabbit, jwks: JwksServer, issuer: Issuer, queue_name: str
) -> None:
    cooldown = 3.0
    started = time.monotonic()
    await start_worker(jwks_cooldown_seconds=cooldown)
    assert jwks.jwks_requests(issuer) == 1
    for _ in range(200):
        attacker = SigningKey.generate("ES256", kid=uuid.uuid4().hex)
        await rabbit.job(queue_name, "reports.read", issuer.token(key=attacker))

    letters = await rabbit.dead_letters(queue_name, 200, timeout=30)
    elapsed = time.monotonic() - started

    assert {letter.headers["x-warden-reason"] for letter in letters} == {"key_unknown"}
    allowed = 1 + int(elapsed // cooldown) + 1
    assert jwks.jwks_requests(issuer) <= allowed
    assert ran.jobs == []


@pytest.mark.broker
async def test_issuer_down_with_keys_cached_decisions_go_on(
    start_worker: Any, rabbit: Rabbit, jwks: JwksServer, issuer: Issuer, queue_name: str
) -> None:
    await start_worker(jwks_cooldown_seconds=0.2)
    jwks.down = True
    allowed = await rabbit.job(queue_name, "reports.read", issuer.token())
    await rabbit.job(queue_name, "admin.purge", issuer.token())
    [job] = await ran.wait_for(1)
    assert job.id == allowed
    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.headers["x-warden-reason"] == "scope_insufficient"


@pytest.mark.broker
async def test_issuer_never_reached_jobs_wait_then_run_when_it_answers(
    start_worker: Any, rabbit: Rabbit, jwks: JwksServer, issuer: Issuer, queue_name: str
) -> None:
    jwks.down = True
    await start_worker(jwks_cooldown_seconds=0.3, retry_base_seconds=0.1, defer_max_seconds=0.3)
    ids = [await rabbit.job(queue_name, "reports.read", issuer.token()) for _ in range(5)]

    # The jobs are being held back: each goes round more than once while the issuer is down.
    await jwks.wait_for_requests(6, timeout=15)
    assert ran.jobs == []
    assert await rabbit.depth(f"{queue_name}.dlq") == 0

    jwks.down = False
    jobs = await ran.wait_for(5, timeout=15)
    assert sorted(j.id for j in jobs) == sorted(ids)
    assert await rabbit.depth(f"{queue_name}.dlq") == 0
