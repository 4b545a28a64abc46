"""Denied jobs land in ``<queue>.dlq`` with their reason, the original body and no token."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.actions import ran
from tests.support.issuer import DROP, Issuer, SigningKey
from tests.support.rabbit import Rabbit
from tests.support.schemas import DENIAL

pytestmark = pytest.mark.broker


JOB = {"action": "reports.generate", "payload": {"report": "q3", "format": "pdf"}}


def _body(job: dict[str, Any] = JOB) -> bytes:
    # Not what json.dumps would give back: the dead letter must keep these exact bytes.
    return json.dumps(job, indent=1, ensure_ascii=False).encode() + b"\n"


Case = Callable[[Issuer], tuple[bytes, str | None]]
"""Given the trusted issuer: the body and the token (or None) of a message to deny."""

CASES: dict[str, Case] = {
    "malformed_message": lambda iss: (
        b'{"action": "reports.generate", "payload": [1, 2',
        iss.token(),
    ),
    "token_missing": lambda iss: (_body(), None),
    "token_malformed": lambda iss: (_body(), "a.b.c.d.e"),
    "algorithm_not_allowed": lambda iss: (_body(), iss.token(alg="RS512")),
    "token_type_invalid": lambda iss: (_body(), iss.token(header={"typ": "JWT"}, nonce="n-0S6")),
    "issuer_untrusted": lambda iss: (_body(), iss.token(iss=iss.url + "/")),
    "key_unknown": lambda iss: (
        _body(),
        iss.token(key=SigningKey.generate("RS256", kid="attacker")),
    ),
    "signature_invalid": lambda iss: (
        _body(),
        iss.token(key=SigningKey.generate("RS256", kid=iss.key.kid)),
    ),
    "token_expired": lambda iss: (_body(), iss.token(exp=int(time.time()) - 3600)),
    "token_not_yet_valid": lambda iss: (_body(), iss.token(nbf=int(time.time()) + 3600)),
    "audience_mismatch": lambda iss: (_body(), iss.token(aud="https://other.example/api")),
    "claims_missing": lambda iss: (_body(), iss.token(client_id=DROP)),
    "action_unknown": lambda iss: (_body({"action": "reports.delete", "payload": {}}), iss.token()),
    "scope_insufficient": lambda iss: (
        _body({"action": "admin.purge", "payload": {"all": True}}),
        iss.token(),
    ),
}


def _signature_runs(token: str) -> set[str]:
    signature = token.rsplit(".", 1)[-1]
    return {signature[i : i + 16] for i in range(max(len(signature) - 15, 0))}


def _assert_no_token(token: str | None, *texts: str) -> None:
    if not token:
        return
    runs = _signature_runs(token)
    for text in texts:
        assert token not in text
        assert not any(run in text for run in runs), "a piece of the token's signature leaked"


async def test_every_denial_reason_lands_in_the_dead_letter_queue(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker()
    sent: dict[str, tuple[bytes, str | None, dict[str, Any]]] = {}
    for reason, case in CASES.items():
        body, token = case(issuer)
        headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
        properties = {"correlation_id": f"corr-{reason}", "app_id": "billing", "type": "job"}
        mid = await rabbit.publish(queue_name, body, token=token, headers=headers, **properties)
        assert mid is not None
        sent[mid] = (body, token, {"reason": reason, **properties})

    letters = await rabbit.dead_letters(queue_name, len(CASES))

    by_id = {letter.message_id: letter for letter in letters}
    assert by_id.keys() == sent.keys()
    for mid, (body, token, expected) in sent.items():
        letter = by_id[mid]
        headers = dict(letter.headers)
        reason = expected["reason"]
        assert headers["x-warden-reason"] == reason
        denial = headers["x-warden-denial"]
        DENIAL.validate(denial)
        assert denial["reason"] == reason
        assert denial["queue"] == queue_name
        assert denial["routing_key"] == queue_name
        assert letter.routing_key == f"{reason}.{queue_name}"
        assert letter.body == body, "the dead letter must keep the body byte for byte"
        assert letter.correlation_id == expected["correlation_id"]
        assert letter.app_id == expected["app_id"]
        assert letter.type == expected["type"]
        assert letter.content_type == "application/json"
        assert headers["traceparent"].startswith("00-0af7651916cd43dd")
        assert "authorization" not in {name.lower() for name in headers}
        _assert_no_token(
            token, repr(headers), letter.body.decode("utf-8", "replace"), denial["detail"]
        )
        if token and reason not in ("token_malformed", "malformed_message"):
            assert denial["token"]["fingerprint"].startswith("sha256:")
        assert denial["token"] is None or denial["token"]["verified"] == (
            reason
            in (
                "token_expired",
                "token_not_yet_valid",
                "audience_mismatch",
                "claims_missing",
                "action_unknown",
                "scope_insufficient",
            )
        )
    assert ran.jobs == []
    assert await rabbit.depth(queue_name) == 0


async def test_a_publisher_cannot_write_its_own_verdict_into_a_dead_letter(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker()
    token = issuer.token()
    forged = {
        "x-warden-reason": "action_failed",
        "x-warden-denial": {"reason": "action_failed", "detail": "approved by security"},
    }
    sent = [
        await rabbit.job(queue_name, "admin.purge", token, headers=forged, app_id=f"app-{n}")
        for n in range(3)
    ]

    letters = await rabbit.dead_letters(queue_name, 3)

    assert sorted(letter.message_id or "" for letter in letters) == sorted(m or "" for m in sent)
    assert {letter.app_id for letter in letters} == {"app-0", "app-1", "app-2"}
    for letter in letters:
        assert letter.routing_key == f"scope_insufficient.{queue_name}"
        headers = dict(letter.headers)
        assert headers["x-warden-reason"] == "scope_insufficient"
        denial = headers["x-warden-denial"]
        DENIAL.validate(denial)
        assert denial["reason"] == "scope_insufficient"
        assert "approved" not in denial["detail"]
        assert denial["token"]["verified"] is True


async def test_allowed_job_runs_once_with_its_principal_and_is_acked(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str
) -> None:
    await start_worker()
    token = issuer.token(sub="svc-42", client_id="reports-svc", scope="reports:write audit:read")
    mid = await rabbit.job(queue_name, "reports.generate", token, {"report": "q3"})
    # A second, denied job after it: once its dead letter is there, the first was settled too.
    await rabbit.job(queue_name, "admin.purge", token)
    await rabbit.dead_letters(queue_name, 1)

    [job] = await ran.wait_for(1)
    assert job.id == mid
    assert job.action == "reports.generate"
    assert job.payload == {"report": "q3"}
    assert job.principal.sub == "svc-42"
    assert job.principal.client_id == "reports-svc"
    assert job.principal.scopes == {"reports:write", "audit:read"}
    assert job.principal.issuer == issuer.url
    assert not hasattr(job, "token")
    assert token not in repr(job)
    assert await rabbit.depth(queue_name) == 0
    assert await rabbit.depth(f"{queue_name}.dlq") == 0
    assert len(ran.jobs) == 1


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_tokens_of_each_algorithm_are_accepted(
    start_worker: Any, rabbit: Rabbit, issuer: Issuer, queue_name: str, alg: str
) -> None:
    issuer.keys.append(SigningKey.generate(alg))
    await start_worker()
    mid = await rabbit.job(queue_name, "reports.read", issuer.token())
    [job] = await ran.wait_for(1)
    assert job.id == mid
