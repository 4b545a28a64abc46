"""The queueing allowance without a broker: ``exp``, ``nbf`` and ``iat`` judged at the arrival
the broker witnessed, everything else at the decision; the settings that bound it."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.support.decision import (
    assert_allowed,
    assert_denied,
    clear_warden_environment,
    delivery,
    make_gate,
)
from tests.support.issuer import Issuer
from worker import action
from worker.auth.revocation import Revocation, RevocationList
from worker.deadletters.seal import Seal
from worker.errors import ConfigurationError
from worker.pipeline.actions import Registry
from worker.pipeline.delivery import Delivery
from worker.service.runner import Worker
from worker.settings import Settings, load_settings

ISSUER = Issuer("https://issuer.test/queued")
REGISTRY = Registry.from_modules(["tests.support.actions", "tests.support.queued_actions"])
HOUR = 3600.0


def _arrived(raw: str, action_name: str, at: float | None) -> Delivery:
    return dataclasses.replace(delivery(raw, action=action_name), arrived_at=at)


async def _decide(raw: str, action_name: str, at: float | None, **settings: Any) -> Any:
    gate = make_gate(ISSUER, registry=REGISTRY, leeway_seconds=0, **settings)
    return await gate.decide(_arrived(raw, action_name, at))


async def test_an_expired_token_runs_if_the_job_arrived_while_it_was_valid_within_allowance() -> (
    None
):
    now = time.time()
    raw = ISSUER.token(iat=int(now - 600), exp=int(now - 60))
    assert_allowed(await _decide(raw, "queued.long", now - 120), raw)


@pytest.mark.parametrize(
    ("action_name", "arrived", "detail"),
    [
        pytest.param("queued.long", -30.0, "before the job arrived at", id="arrived-after-exp"),
        pytest.param(
            "queued.short", -120.0, "longer than its queueing allowance (1s)", id="waited-too-long"
        ),
        pytest.param("queued.never", -120.0, "", id="opted-out"),
        pytest.param("queued.default", -120.0, "", id="default-zero"),
        pytest.param("queued.long", None, "no arrival time witnessed", id="no-witness"),
    ],
)
async def test_an_expired_token_is_denied_saying_why_the_allowance_did_not_cover_it(
    action_name: str, arrived: float | None, detail: str
) -> None:
    now = time.time()
    exp = int(now - 60)
    raw = ISSUER.token(iat=int(now - 600), exp=exp)
    denied = assert_denied(
        await _decide(raw, action_name, None if arrived is None else now + arrived),
        "token_expired",
        raw,
    )
    assert denied.denial.detail.startswith(f"the token expired at {exp}")
    if detail:
        assert detail in denied.denial.detail
    else:
        assert denied.denial.detail == f"the token expired at {exp}"


async def test_the_default_allowance_covers_actions_without_their_own() -> None:
    now = time.time()
    raw = ISSUER.token(iat=int(now - 600), exp=int(now - 60))
    assert_allowed(await _decide(raw, "queued.default", now - 120, queued_for_seconds=3600), raw)
    # The action's own timedelta(0) wins over the default.
    assert_denied(
        await _decide(raw, "queued.never", now - 120, queued_for_seconds=3600),
        "token_expired",
        raw,
    )


async def test_a_token_issued_after_the_witnessed_arrival_was_never_valid_for_the_job() -> None:
    now = time.time()
    raw = ISSUER.token(iat=int(now - 100), nbf=int(now - 100), exp=int(now - 60))
    denied = assert_denied(await _decide(raw, "queued.long", now - 300), "token_expired", raw)
    assert "is after the job arrived at" in denied.denial.detail


async def test_a_token_still_valid_is_judged_as_without_an_allowance() -> None:
    now = time.time()
    raw = ISSUER.token(lifetime=600)
    # However old the job, a token valid now runs it.
    assert_allowed(await _decide(raw, "queued.short", now - 10 * HOUR), raw)
    future = ISSUER.token(nbf=int(now + 600), exp=int(now + 1200))
    assert_denied(await _decide(future, "queued.long", now - 1), "token_not_yet_valid", future)


async def test_a_token_revoked_after_the_job_arrived_is_denied_allowance_or_not() -> None:
    now = time.time()
    expired = ISSUER.token(iat=int(now - 600), exp=int(now - 60), jti="revoked-later")
    valid = ISSUER.token(lifetime=600, jti="revoked-later")
    revocations = RevocationList()
    revocations.add(Revocation("jti", "revoked-later", ISSUER.url, None, now + HOUR), now)
    gate = make_gate(ISSUER, registry=REGISTRY, leeway_seconds=0)
    gate.revocations = revocations
    for raw in (expired, valid):
        verdict = await gate.decide(_arrived(raw, "queued.long", now - 120))
        assert_denied(verdict, "token_revoked", raw)


def test_revocations_are_held_past_their_expiry_for_the_largest_allowance() -> None:
    now = time.time()
    held = RevocationList(hold=HOUR)
    event = Revocation("jti", "j1", ISSUER.url, None, now + 10)
    assert held.add(event, now)
    held.prune(now + 10 + HOUR - 1)
    assert len(held) == 1, "forgotten while a job within the allowance may still carry it"
    held.prune(now + 10 + HOUR + 1)  # an entry ends at its expiry rounded up to the second
    assert len(held) == 0
    assert not RevocationList(hold=HOUR).add(
        Revocation("jti", "j2", ISSUER.url, None, now - HOUR - 1), now
    )


def test_start_up_refuses_an_allowance_a_revocation_would_not_outlast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_warden_environment(monkeypatch)
    with pytest.raises(ConfigurationError, match="WARDEN_QUEUED_FOR_SECONDS"):
        load_settings(
            Settings,
            issuer=ISSUER.url,
            audience="a",
            queued_for_seconds=12 * 3600 + 1,
        )

    @action("queued.two_days", scopes=set(), queued_for=timedelta(days=2))
    async def two_days(job: Any) -> None:
        raise AssertionError("never runs")

    settings = Settings(issuer=ISSUER.url, audience="a")
    worker = Worker(settings, Registry.of(two_days))
    with pytest.raises(ConfigurationError, match="the largest queueing allowance"):
        worker.allowance()
    longer = Settings(issuer=ISSUER.url, audience="a", revocation_retention="3D")
    assert Worker(longer, Registry.of(two_days)).allowance() == 2 * 86400


def test_a_worker_with_an_allowance_starts_reading_revocations_that_much_further_back() -> None:
    # A job may run on a token up to the allowance past its exp: a revocation written while the
    # token was new must still be read by a worker that starts then.
    settings = Settings(issuer=ISSUER.url, audience="a", revocation_retention="3D")
    lifetime = settings.max_token_lifetime_seconds + settings.leeway_seconds
    assert settings.revocation_window() >= lifetime
    assert settings.revocation_window(2 * 86400) >= lifetime + 2 * 86400


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("c2hvcnQ", id="too-short"),
        pytest.param("A" * 64, id="512-bits"),
        pytest.param("not base64url!" * 4, id="not-base64url"),
    ],
)
def test_a_seal_key_of_another_size_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    clear_warden_environment(monkeypatch)
    monkeypatch.setenv("WARDEN_SEAL_KEY", key)
    with pytest.raises(ConfigurationError, match=r"^WARDEN_SEAL_KEY: ") as raised:
        load_settings(Settings, issuer=ISSUER.url, audience="a")
    assert key not in str(raised.value)


def test_a_sealed_token_opens_only_with_its_key_on_its_own_letter() -> None:
    key = b"k" * 32
    raw = ISSUER.token()
    sealed = Seal(key).seal(raw, "m-1")
    assert raw not in sealed
    assert raw.split(".")[2][:16] not in sealed
    assert Seal(key).open(sealed, "m-1") == raw
    assert Seal(key).open(sealed, "m-2") is None, "moved onto another letter"
    assert Seal(b"o" * 32).open(sealed, "m-1") is None, "another key"
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    assert Seal(key).open(flipped, "m-1") is None, "altered"
    assert Seal(key).open("v1.", "m-1") is None
    assert Seal(key).open(7, "m-1") is None
