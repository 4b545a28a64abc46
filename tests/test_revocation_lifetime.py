"""Revocations that hold: no token outlives a revocation issued with the defaults, and the list
of revocations is bounded.

A token may live at most ``WARDEN_MAX_TOKEN_LIFETIME_SECONDS`` (``exp`` after ``iat``) and is
accepted up to ``WARDEN_LEEWAY_SECONDS`` past its ``exp``; ``warden revoke`` keeps its entry that
long by default, and the stream must keep events at least as long.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import StartWorker
from tests.support.decision import assert_allowed, assert_denied, delivery, make_gate
from tests.support.issuer import DROP, Issuer
from tests.support.logwatch import LogWatch
from tests.support.rabbit import Rabbit
from tests.support.rabbitmqctl import scratch_vhost
from worker import errors
from worker.amqp.feed import revoke
from worker.auth.revocation import Revocation
from worker.settings import BrokerSettings, load_settings

ROOT = Path(__file__).resolve().parent.parent


# --- without a broker ---------------------------------------------------------------------------


async def test_a_token_that_lives_longer_than_the_maximum_is_expired(issuer: Issuer) -> None:
    gate = make_gate(issuer, max_token_lifetime_seconds=3600)
    now = int(time.time())
    long_lived = issuer.token(iat=now - 10, exp=now + 3600)
    verdict = await gate.decide(delivery(long_lived, action="reports.read"))
    denied = assert_denied(verdict, "token_expired", long_lived)
    assert "WARDEN_MAX_TOKEN_LIFETIME_SECONDS" in denied.denial.detail
    within = issuer.token(iat=now - 10, exp=now + 3590)
    assert_allowed(await gate.decide(delivery(within, action="reports.read")), within)


async def test_without_iat_what_is_left_of_its_life_counts(issuer: Issuer) -> None:
    gate = make_gate(
        issuer,
        max_token_lifetime_seconds=3600,
        issuers=[{"issuer": issuer.url, "required_claims": ["iss", "exp", "aud", "sub"]}],
    )
    now = int(time.time())
    endless = issuer.token(iat=DROP, exp=now + 10 * 3600)
    assert_denied(
        await gate.decide(delivery(endless, action="reports.read")), "token_expired", endless
    )


@pytest.mark.parametrize(
    ("retention", "lifetime", "leeway"),
    [("12h", 43_200, 30), ("1h", 3600, 1), ("59s", 30, 30)],
)
def test_a_stream_that_forgets_before_tokens_expire_stops_start_up(
    retention: str, lifetime: int, leeway: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("WARDEN_"):
            monkeypatch.delenv(name)
    with pytest.raises(errors.ConfigurationError, match="WARDEN_REVOCATION_RETENTION"):
        load_settings(
            BrokerSettings,
            revocation_retention=retention,
            max_token_lifetime_seconds=lifetime,
            leeway_seconds=leeway,
        )
    settings = load_settings(
        BrokerSettings,
        revocation_retention=f"{lifetime + leeway}s",
        max_token_lifetime_seconds=lifetime,
        leeway_seconds=leeway,
    )
    assert settings.revocation_lifetime() == lifetime + leeway


# --- through RabbitMQ ---------------------------------------------------------------------------

LIFETIME = 3
LEEWAY = 4


@pytest.fixture
async def vhost_url(broker_url: str) -> AsyncIterator[str]:
    async with scratch_vhost(broker_url) as url:
        yield url


@pytest.mark.broker
async def test_a_revocation_with_the_defaults_outlasts_its_token(
    vhost_url: str, start_worker: StartWorker, issuer: Issuer, queue_name: str
) -> None:
    short = {
        "max_token_lifetime_seconds": LIFETIME,
        "leeway_seconds": LEEWAY,
        "revocation_retention": "10s",
    }
    await start_worker(broker_url=vhost_url, **short)
    issued = int(time.time())
    token = issuer.token(iat=issued, exp=issued + LIFETIME)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "revoke",
        "--jti",
        jti,
        env={
            **os.environ,
            "WARDEN_BROKER_URL": vhost_url,
            "WARDEN_MAX_TOKEN_LIFETIME_SECONDS": str(LIFETIME),
            "WARDEN_LEEWAY_SECONDS": str(LEEWAY),
            "WARDEN_REVOCATION_RETENTION": "10s",
        },
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()

    # Near the last moment the token is still accepted at all: past its exp, within the leeway
    # (1.5 s before its end: room for a loaded machine to decide). Time has to pass for that;
    # nothing else can be awaited.
    last = issued + LIFETIME + LEEWAY - 1.5
    await asyncio.sleep(max(0.0, last - time.time()))
    async with Rabbit(vhost_url) as rabbit:
        denied = await rabbit.job(queue_name, "reports.read", token)
        [letter] = await rabbit.dead_letters(queue_name, 1)
    assert letter.message_id == denied
    assert letter.headers["x-warden-reason"] == "token_revoked"


@pytest.mark.broker
async def test_a_full_revocation_list_stops_decisions(
    vhost_url: str,
    start_worker: StartWorker,
    issuer: Issuer,
    queue_name: str,
    logwatch: LogWatch,
) -> None:
    running = await start_worker(broker_url=vhost_url, revocation_max_entries=2)
    feed = running.worker.feed
    assert feed is not None
    assert running.worker.http is not None
    expires = time.time() + 600
    for jti in ("a", "b"):
        await revoke(vhost_url, Revocation("jti", jti, None, None, expires), "24h", "guest")
    await logwatch.wait_for(lambda r: r.getMessage().startswith("revocation list nearly full"))
    assert feed.fresh()
    await revoke(vhost_url, Revocation("jti", "c", None, None, expires), "24h", "guest")
    await asyncio.wait_for(feed.wait_unreliable(), 10)
    async with httpx.AsyncClient() as client:
        ready = await client.get(f"http://127.0.0.1:{running.worker.http.port}/readyz")
    assert ready.status_code == 503
    assert "RevocationListFull" in ready.json()["revocations"]
