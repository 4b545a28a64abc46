"""RFC 7662 introspection: opaque tokens, ``introspect=True`` actions, caching, an endpoint down."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from tests.support.actions import ran
from tests.support.issuer import Issuer, JwksServer
from tests.support.rabbit import Rabbit
from worker import errors
from worker.auth.keys import Keyring
from worker.auth.setup import build_introspector, build_keyring, build_trust
from worker.pipeline.actions import Registry
from worker.pipeline.decision import Allowed, Denied, Gate
from worker.pipeline.delivery import Delivery
from worker.settings import Settings

REGISTRY = Registry.from_modules(["tests.support.actions", "tests.support.introspected"])


def _settings(jwks: JwksServer, issuer: Issuer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "issuer": issuer.url,
        "audience": issuer.audience,
        "introspection_client_id": jwks.client[0],
        "introspection_client_secret": jwks.client[1],
    }
    return Settings(**(values | overrides))


def _opaque() -> str:
    return secrets.token_urlsafe(32)


def _answer(issuer: Issuer, **claims: Any) -> dict[str, Any]:
    return {"active": True, **issuer.claims(scope="payments:write reports:read", **claims)}


@pytest.fixture
async def gate(jwks: JwksServer, issuer: Issuer) -> Any:
    settings = _settings(jwks, issuer)
    async with httpx.AsyncClient(timeout=5) as http:
        keyring: Keyring = build_keyring(settings, http)
        await keyring.load()
        trust = build_trust(settings)
        yield Gate(trust, keyring, REGISTRY, introspector=build_introspector(settings, trust, http))


def _delivery(token: str, action: str = "payments.send") -> Delivery:
    body = f'{{"action": "{action}", "payload": {{}}}}'.encode()
    return Delivery(body, {"authorization": f"Bearer {token}"}, "m-1", "application/json", "jobs")


async def test_active_opaque_token_is_allowed_with_the_introspected_principal(
    gate: Gate, jwks: JwksServer, issuer: Issuer
) -> None:
    token = _opaque()
    jwks.active[token] = _answer(issuer, sub="svc-opaque", client_id="opaque-client")
    verdict = await gate.decide(_delivery(token))
    assert isinstance(verdict, Allowed)
    assert verdict.job.principal.sub == "svc-opaque"
    assert verdict.job.principal.client_id == "opaque-client"
    assert verdict.job.principal.scopes == {"payments:write", "reports:read"}


async def test_inactive_opaque_token_is_revoked(gate: Gate) -> None:
    verdict = await gate.decide(_delivery(_opaque()))
    assert isinstance(verdict, Denied)
    assert verdict.denial.reason == "token_revoked"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        pytest.param(
            {"aud": "https://elsewhere.example"}, "audience_mismatch", id="other-audience"
        ),
        pytest.param({"exp": int(time.time()) - 3600}, "token_expired", id="expired"),
        pytest.param({"iss": "https://impostor.example"}, "issuer_untrusted", id="other-issuer"),
        pytest.param({"scope": "reports:read"}, "scope_insufficient", id="lacking-scope"),
        pytest.param({"exp": "tomorrow"}, "token_malformed", id="exp-as-string"),
    ],
)
async def test_active_opaque_token_still_meets_every_claim_check(
    gate: Gate, jwks: JwksServer, issuer: Issuer, claims: dict[str, Any], reason: str
) -> None:
    token = _opaque()
    jwks.active[token] = {**_answer(issuer), **claims}
    verdict = await gate.decide(_delivery(token))
    assert isinstance(verdict, Denied)
    assert verdict.denial.reason == reason
    assert token not in verdict.denial.detail


async def test_introspect_action_asks_about_a_valid_jwt(
    gate: Gate, jwks: JwksServer, issuer: Issuer
) -> None:
    token = issuer.token(scope="payments:write")
    denied = await gate.decide(_delivery(token))
    assert isinstance(denied, Denied)
    assert denied.denial.reason == "token_revoked", "a JWT the issuer calls inactive is revoked"

    other = issuer.token(scope="payments:write")
    jwks.active[other] = {"active": True}
    assert isinstance(await gate.decide(_delivery(other)), Allowed)
    # Actions without introspect=True never ask.
    asked = jwks.introspections
    assert isinstance(await gate.decide(_delivery(token, "reports.generate")), Denied)
    assert jwks.introspections == asked


async def test_answers_are_cached_but_never_past_the_tokens_exp(
    jwks: JwksServer, issuer: Issuer
) -> None:
    now = [time.time()]
    settings = _settings(jwks, issuer, introspection_cache_seconds=60)
    async with httpx.AsyncClient(timeout=5) as http:
        trust = build_trust(settings)
        introspector = build_introspector(settings, trust, http)
        assert introspector is not None
        introspector._clock = lambda: now[0]  # the cache's clock, moved by the test
        token = _opaque()
        jwks.active[token] = _answer(issuer, exp=int(now[0]) + 10)
        for _ in range(5):
            await introspector.introspect(token, issuer.url)
        assert jwks.introspections == 1
        now[0] += 11  # past the token's exp, well inside the 60 s ceiling
        await introspector.introspect(token, issuer.url)
        assert jwks.introspections == 2


async def test_wrong_client_credentials_or_endpoint_down_mean_wait_not_deny(
    jwks: JwksServer, issuer: Issuer, gate: Gate
) -> None:
    token = _opaque()
    jwks.active[token] = _answer(issuer)
    jwks.introspection_down = True
    with pytest.raises(errors.Unavailable):
        await gate.decide(_delivery(token))

    jwks.introspection_down = False
    settings = _settings(jwks, issuer, introspection_client_secret="wrong")
    async with httpx.AsyncClient(timeout=5) as http:
        trust = build_trust(settings)
        wrong = Gate(
            trust, gate.keys, REGISTRY, introspector=build_introspector(settings, trust, http)
        )
        with pytest.raises(errors.Unavailable) as caught:
            await wrong.decide(_delivery(token))
    assert "401" in str(caught.value)
    assert "wrong" not in str(caught.value)


def test_introspect_actions_without_credentials_stop_start_up(
    jwks: JwksServer, issuer: Issuer
) -> None:
    settings = Settings(issuer=issuer.url, audience=issuer.audience)
    with pytest.raises(errors.ConfigurationError, match="WARDEN_INTROSPECTION_CLIENT_ID"):
        Gate(build_trust(settings), Keyring([]), REGISTRY)


def test_client_secret_is_not_in_the_settings_repr(jwks: JwksServer, issuer: Issuer) -> None:
    settings = _settings(jwks, issuer)
    assert isinstance(settings.introspection_client_secret, SecretStr)
    assert jwks.client[1] not in repr(settings)


@pytest.mark.broker
async def test_opaque_jobs_through_rabbitmq_wait_while_the_endpoint_is_down(
    start_worker: Any, rabbit: Rabbit, jwks: JwksServer, issuer: Issuer, queue_name: str
) -> None:
    good, bad = _opaque(), _opaque()
    jwks.active[good] = _answer(issuer)
    jwks.introspection_down = True
    await start_worker(
        registry=REGISTRY,
        introspection_client_id=jwks.client[0],
        introspection_client_secret=jwks.client[1],
    )
    ok = await rabbit.job(queue_name, "payments.send", good)
    revoked = await rabbit.job(queue_name, "payments.send", bad)
    await jwks.wait_for_introspections(4, timeout=15)
    assert ran.jobs == []
    assert await rabbit.depth(f"{queue_name}.dlq") == 0

    jwks.introspection_down = False
    [job] = await ran.wait_for(1, timeout=15)
    assert job.id == ok
    [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == revoked
    assert letter.headers["x-warden-reason"] == "token_revoked"
    assert bad not in repr(dict(letter.headers))
