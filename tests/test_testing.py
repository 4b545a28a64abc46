"""worker.testing as an action author uses it: the test issuer on loopback (discovery, JWKS, the
client-credentials grant, tokens labelled not for production), and a job run through every check
and its action without a broker, with the same verdicts a worker on RabbitMQ reaches."""

from __future__ import annotations

import json
import logging
import time
from importlib.metadata import entry_points

import httpx
import jwt
import pytest

from tests.support.actions import ran
from tests.support.issuer import TestIssuer
from tests.support.leaks import assert_no_leak
from tests.support.logwatch import LogWatch
from worker.auth.keys import metadata_urls
from worker.auth.proof import ProofKey
from worker.devissuer import DROP, LABEL_CLAIM, SigningKey
from worker.testing import TestWorker
from worker.testing.plugin import StartWorker

ACTIONS = "tests.support.actions"


def test_the_plugin_is_registered_through_an_entry_point() -> None:
    [plugin] = [e for e in entry_points(group="pytest11") if e.name == "warden"]
    assert plugin.value == "worker.testing.plugin"


# --- the test issuer ---------------------------------------------------------------------------


async def test_the_issuer_serves_discovery_and_jwks_on_loopback_only(
    warden_issuer: TestIssuer,
) -> None:
    assert warden_issuer._httpd.server_address[0] == "127.0.0.1"
    assert warden_issuer.url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient() as http:
        for url in metadata_urls(warden_issuer.url):
            metadata = (await http.get(url)).raise_for_status().json()
            assert metadata["issuer"] == warden_issuer.url
            assert metadata[LABEL_CLAIM] == "not for production"
        jwks = (await http.get(metadata["jwks_uri"])).raise_for_status().json()
    token = warden_issuer.token(scope="reports:read")
    [key] = [k for k in jwks["keys"] if k["kid"] == jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience=warden_issuer.audience,
        issuer=warden_issuer.url,
    )
    assert claims[LABEL_CLAIM] == "not for production"
    assert claims["scope"] == "reports:read"


def test_every_issuer_generates_keys_of_its_own() -> None:
    with TestIssuer() as one, TestIssuer() as other:
        assert one.jwks() != other.jwks()
        assert {k["kid"] for k in one.jwks()["keys"]}.isdisjoint(
            k["kid"] for k in other.jwks()["keys"]
        )


async def test_the_grant_gives_tokens_to_registered_clients_only(
    warden_issuer: TestIssuer, logwatch: LogWatch
) -> None:
    key = ProofKey.generate()
    client = warden_issuer.register("reporter", scopes={"reports:write", "reports:read"})
    bound = warden_issuer.register("signer", scopes={"reports:write"}, bound_to=key)
    url = warden_issuer.token_url
    async with httpx.AsyncClient() as http:
        good = await http.post(
            url,
            data={"grant_type": "client_credentials", "scope": "reports:read"},
            auth=("reporter", client.secret),
        )
        in_form = await http.post(
            url,
            data={
                "grant_type": "client_credentials",
                "client_id": "signer",
                "client_secret": bound.secret,
            },
        )
        wrong = await http.post(
            url, data={"grant_type": "client_credentials"}, auth=("reporter", "guessed")
        )
        greedy = await http.post(
            url,
            data={"grant_type": "client_credentials", "scope": "admin"},
            auth=("reporter", client.secret),
        )
        other_grant = await http.post(
            url, data={"grant_type": "password"}, auth=("reporter", client.secret)
        )
    assert good.status_code == 200
    assert good.headers["cache-control"] == "no-store"
    answer = good.json()
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert (claims["client_id"], claims["scope"], answer["scope"]) == (
        "reporter",
        "reports:read",
        "reports:read",
    )
    assert answer["expires_in"] == claims["exp"] - claims["iat"]
    signer = jwt.decode(in_form.json()["access_token"], options={"verify_signature": False})
    assert signer["cnf"] == {"jkt": key.thumbprint}
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    assert (greedy.status_code, greedy.json()["error"]) == (400, "invalid_scope")
    assert (other_grant.status_code, other_grant.json()["error"]) == (400, "unsupported_grant_type")
    assert [i.client_id for i in warden_issuer.issued] == ["reporter", "signer"]

    # Every line it logged says what it is, and none shows a secret or a token.
    lines = [r for r in logwatch.records if r.name == "warden.devissuer"]
    assert len(lines) >= 5
    for record in lines:
        assert "not for production" in record.getMessage()
        assert record.development_issuer == "not for production"
        text = json.dumps(vars(record), default=str)
        assert client.secret not in text
        assert bound.secret not in text
        assert_no_leak(text, "a log line of the development issuer")


# --- a job without a broker ----------------------------------------------------------------------


@pytest.fixture
def worker(warden_issuer: TestIssuer) -> TestWorker:
    return TestWorker(ACTIONS, issuer=warden_issuer, max_attempts=3)


async def test_an_allowed_job_runs_its_action_with_the_principal(
    worker: TestWorker, warden_issuer: TestIssuer
) -> None:
    token = warden_issuer.token(scope="reports:write", sub="alice", client_id="reporter")
    result = await worker.run("reports.generate", {"report": "q3"}, token=token)
    assert (result.outcome, result.reason) == ("done", None)
    [job] = ran.jobs
    assert (job.id, job.payload, job.principal.sub) == (
        result.message_id,
        {"report": "q3"},
        "alice",
    )
    assert job.principal.client_id == "reporter"


@pytest.mark.parametrize(
    ("action", "claims", "reason"),
    [
        ("reports.generate", {"scope": "reports:read"}, "scope_insufficient"),
        ("reports.read", {"aud": "https://elsewhere.test"}, "audience_mismatch"),
        ("reports.read", {"lifetime": -300}, "token_expired"),
        ("reports.read", {"jti": DROP}, "claims_missing"),
        ("reports.read", {"act": {"sub": "agent-x"}}, "delegation_not_allowed"),
        ("reports.unheard_of", {}, "action_unknown"),
    ],
)
async def test_a_refused_job_never_reaches_its_action(
    worker: TestWorker,
    warden_issuer: TestIssuer,
    action: str,
    claims: dict[str, object],
    reason: str,
) -> None:
    token = warden_issuer.token(**{"scope": "reports:read reports:write", **claims})
    result = await worker.run(action, token=token)
    assert (result.outcome, result.reason) == ("denied", reason)
    assert ran.jobs == []
    assert_no_leak(str(result), "a result")


async def test_forged_and_missing_tokens_are_refused(
    worker: TestWorker, warden_issuer: TestIssuer
) -> None:
    stranger = SigningKey.generate("RS256")
    forged = warden_issuer.token(key=stranger, header={"kid": warden_issuer.key.kid})
    unknown = warden_issuer.token(key=stranger, iat=int(time.time()) - 60)
    assert (await worker.run("reports.read", token=forged)).reason == "signature_invalid"
    assert (await worker.run("reports.read", token=unknown)).reason == "key_unknown"
    # A key newer than the last look at the JWKS may be the issuer's: such a job waits.
    newer = await worker.run("reports.read", token=warden_issuer.token(key=stranger))
    assert newer.outcome == "deferred"
    assert (await worker.run("reports.read", token=None)).reason == "token_missing"


async def test_a_revoked_token_is_refused_and_others_still_run(
    worker: TestWorker, warden_issuer: TestIssuer
) -> None:
    revoked = warden_issuer.token(scope="reports:read", jti="revoked-1")
    fine = warden_issuer.token(scope="reports:read")
    assert (await worker.run("reports.read", token=revoked)).done
    worker.revoke(jti="revoked-1")
    assert (await worker.run("reports.read", token=revoked)).reason == "token_revoked"
    assert (await worker.run("reports.read", token=fine)).done


async def test_a_bound_token_runs_with_its_proof_only(
    worker: TestWorker, warden_issuer: TestIssuer
) -> None:
    key = ProofKey.generate()
    token = warden_issuer.token(scope="reports:write", bound_to=key)
    assert (await worker.run("reports.generate", token=token, proof_key=key)).done
    without = await worker.run("reports.generate", token=token)
    other = await worker.run("reports.generate", token=token, proof_key=ProofKey.generate())
    assert (without.reason, other.reason) == ("proof_invalid", "proof_invalid")


async def test_what_the_action_says_becomes_the_outcome(
    worker: TestWorker, warden_issuer: TestIssuer
) -> None:
    token = warden_issuer.token(scope="")
    rejected = await worker.run("reports.reject", token=token)
    assert (rejected.outcome, rejected.reason) == ("denied", "action_rejected")
    assert (await worker.run("flaky.twice", token=token)).outcome == "retry"
    assert (await worker.run("flaky.twice", token=token, attempt=3)).done
    failed = await worker.run("always.fails", token=token, attempt=3)
    assert (failed.outcome, failed.reason) == ("denied", "action_failed")


async def test_a_key_the_issuer_adds_later_is_found_as_a_worker_finds_it(
    worker: TestWorker, warden_issuer: TestIssuer
) -> None:
    warden_issuer.rotate("EdDSA")
    assert (await worker.run("reports.read", token=warden_issuer.token(scope="reports:read"))).done
    assert worker.keys.refetches == [warden_issuer.url]


@pytest.mark.broker
async def test_the_same_verdicts_through_rabbitmq(
    warden_worker: StartWorker, warden_issuer: TestIssuer, worker: TestWorker
) -> None:
    running = await warden_worker(ACTIONS)
    cases = [
        ("reports.generate", warden_issuer.token(scope="reports:write")),
        ("reports.generate", warden_issuer.token(scope="reports:read")),
        ("reports.read", warden_issuer.token(scope="reports:read", lifetime=-300)),
        ("reports.reject", warden_issuer.token(scope="")),
    ]
    through_broker = [(await running.run(a, token=t)).reason for a, t in cases]
    without = [(await worker.run(a, token=t)).reason for a, t in cases]
    assert (
        through_broker
        == without
        == [
            None,
            "scope_insufficient",
            "token_expired",
            "action_rejected",
        ]
    )
    letters = await running.dead_letters()
    assert sorted(str(letter.reason) for letter in letters) == sorted(filter(None, without))


def test_the_issuer_logs_at_start_that_it_is_not_for_production(logwatch: LogWatch) -> None:
    with TestIssuer() as issuer:
        pass
    [started] = [r for r in logwatch.records if r.name == "warden.devissuer" and r.levelno >= 30]
    assert started.getMessage() == "development issuer, not for production: serving"
    assert started.issuer == issuer.url
    assert logging.getLevelName(started.levelno) == "WARNING"
