"""The published JSON Schemas and the code that enforces them must not drift apart.

``schemas/job.schema.json`` is what publishers validate against;
``worker.pipeline.decision.read_job`` is what warden enforces. ``schemas/denial.schema.json`` is
what dead-letter tooling reads; ``worker.deadletters.write.denial_record`` and ``worker.errors``
are what warden writes. No broker needed.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.support.issuer import AUDIENCE, Issuer, SigningKey
from tests.support.schemas import DENIAL, DENIAL_SCHEMA, Validator, load
from worker import errors
from worker.auth.keys import parse_jwks
from worker.auth.setup import issuer_policy
from worker.auth.tokens import (
    SUMMARY_CLAIMS,
    TokenCheck,
    Trust,
    VerificationKey,
    verify,
)
from worker.deadletters.write import denial_record
from worker.pipeline.decision import Denied, JobRequest, bearer_token, read_job
from worker.pipeline.delivery import Delivery
from worker.settings import DEFAULT_REQUIRED_CLAIMS, IssuerSettings

ERROR_CLASSES = ("invalid_request", "invalid_token", "insufficient_scope")


JOB_SCHEMA = load("job.schema.json")
JOB = Validator(JOB_SCHEMA)


def delivery(body: bytes, *, attempt: int = 1) -> Delivery:
    return Delivery(
        body=body,
        headers={},
        message_id="m-0001",
        content_type="application/json",
        queue="jobs",
        attempt=attempt,
    )


# --- the schema files -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["job.schema.json", "denial.schema.json"])
def test_schema_file_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://warden.dev/schemas/{name}"


# --- the job body: schema and read_job agree ---------------------------------------------------

VALID = "reports.generate"

JOB_CORPUS = [
    # valid
    pytest.param({"action": VALID, "payload": {}}, True, id="empty-payload"),
    pytest.param({"action": "a", "payload": {}}, True, id="one-char-action"),
    pytest.param({"action": "a" * 128, "payload": {}}, True, id="128-char-action"),
    pytest.param({"action": "billing:invoice.send_v2-x", "payload": {}}, True, id="every-punct"),
    pytest.param(
        {"action": "x9", "payload": {"n": 1, "s": "x", "b": True, "z": None}},
        True,
        id="scalar-payload-members",
    ),
    pytest.param(
        {"action": VALID, "payload": {"a": {"b": {"c": [1, {"d": []}]}}}}, True, id="nested-payload"
    ),
    pytest.param(
        {"action": VALID, "payload": {"名前": "résumé ✓", "emoji": "🐇"}},
        True,
        id="unicode-in-payload",
    ),
    pytest.param({"payload": {}, "action": VALID}, True, id="members-reordered"),
    pytest.param(
        {"action": VALID, "payload": {"action": "x", "payload": 1, "token": "t"}},
        True,
        id="payload-reuses-top-level-names",
    ),
    # bad action names
    pytest.param({"action": "", "payload": {}}, False, id="empty-action"),
    pytest.param({"action": "a" * 129, "payload": {}}, False, id="129-char-action"),
    pytest.param({"action": "Reports.generate", "payload": {}}, False, id="leading-uppercase"),
    pytest.param({"action": "reports.Generate", "payload": {}}, False, id="inner-uppercase"),
    pytest.param({"action": "REPORTS", "payload": {}}, False, id="all-uppercase"),
    pytest.param({"action": "1reports", "payload": {}}, False, id="leading-digit"),
    pytest.param({"action": "_reports", "payload": {}}, False, id="leading-underscore"),
    pytest.param({"action": ".reports", "payload": {}}, False, id="leading-dot"),
    pytest.param({"action": "reports generate", "payload": {}}, False, id="space"),
    pytest.param({"action": "reports/generate", "payload": {}}, False, id="slash"),
    pytest.param({"action": " reports", "payload": {}}, False, id="leading-space"),
    pytest.param({"action": "répertoire", "payload": {}}, False, id="non-ascii-letter"),
    pytest.param({"action": "\uff52eports", "payload": {}}, False, id="fullwidth-letter"),
    pytest.param({"action": "reports\u0663", "payload": {}}, False, id="non-ascii-digit"),
    pytest.param({"action": "reports\ngenerate", "payload": {}}, False, id="inner-newline"),
    pytest.param(
        {"action": VALID + "\n", "payload": {}},
        False,
        id="trailing-newline",
    ),
    # wrong member types
    pytest.param({"action": None, "payload": {}}, False, id="action-null"),
    pytest.param({"action": 7, "payload": {}}, False, id="action-number"),
    pytest.param({"action": True, "payload": {}}, False, id="action-bool"),
    pytest.param({"action": [VALID], "payload": {}}, False, id="action-array"),
    pytest.param({"action": {"name": VALID}, "payload": {}}, False, id="action-object"),
    pytest.param({"action": VALID, "payload": None}, False, id="payload-null"),
    pytest.param({"action": VALID, "payload": []}, False, id="payload-array"),
    pytest.param({"action": VALID, "payload": [{"a": 1}]}, False, id="payload-array-of-object"),
    pytest.param({"action": VALID, "payload": "{}"}, False, id="payload-json-in-string"),
    pytest.param({"action": VALID, "payload": 0}, False, id="payload-number"),
    pytest.param({"action": VALID, "payload": False}, False, id="payload-bool"),
    # missing and extra members
    pytest.param({}, False, id="empty-object"),
    pytest.param({"action": VALID}, False, id="missing-payload"),
    pytest.param({"payload": {}}, False, id="missing-action"),
    pytest.param({"action": VALID, "payload": {}, "token": "eyJ..."}, False, id="token-in-body"),
    pytest.param({"action": VALID, "payload": {}, "Action": VALID}, False, id="extra-key-case"),
    pytest.param({"action": VALID, "params": {}}, False, id="payload-misnamed"),
    pytest.param({"Action": VALID, "Payload": {}}, False, id="capitalised-keys"),
    # not an object at the top
    pytest.param([], False, id="top-empty-array"),
    pytest.param([{"action": VALID, "payload": {}}], False, id="top-array-of-job"),
    pytest.param(VALID, False, id="top-string"),
    pytest.param(42, False, id="top-number"),
    pytest.param(1.5, False, id="top-float"),
    pytest.param(True, False, id="top-bool"),
    pytest.param(None, False, id="top-null"),
]


@pytest.mark.parametrize(("body", "valid"), JOB_CORPUS)
def test_job_schema_and_read_job_agree(body: Any, valid: bool) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
    schema_says = JOB.is_valid(json.loads(raw))
    try:
        request = read_job(delivery(raw))
    except errors.MalformedMessage:
        code_says = False
    else:
        code_says = True
        # What passes is handed on unchanged.
        assert request == JobRequest(body["action"], body["payload"])
    assert (schema_says, code_says) == (valid, valid)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            '{"action": "reports.generate", "payload": {"name": "é"}}'.encode("latin-1"),
            id="latin-1",
        ),
        pytest.param(json.dumps({"action": VALID, "payload": {}}).encode("utf-16"), id="utf-16"),
        pytest.param(
            b'{"action": "reports.generate", "payload": {"k": "\xff\xfe"}}', id="bad-bytes"
        ),
        pytest.param(
            b'{"action": "reports.generate", "payload": {"k": "\xed\xa0\x80"}}',
            id="utf-8-encoded-surrogate",
        ),
    ],
)
def test_read_job_refuses_bodies_that_are_not_utf8(raw: bytes) -> None:
    with pytest.raises(errors.MalformedMessage, match="UTF-8"):
        read_job(delivery(raw))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"action": "reports.generate", "action": "admin.wipe", "payload": {}}',
            id="action-twice",
        ),
        pytest.param(
            b'{"action": "reports.generate", "payload": {}, "payload": {"all": true}}',
            id="payload-twice",
        ),
        pytest.param(
            b'{"action": "reports.generate", "payload": {"id": 1, "id": 2}}', id="inside-payload"
        ),
        pytest.param(
            b'{"action": "a", "payload": {"x": [{"k": 1, "k": 1}]}}', id="deep-and-equal-values"
        ),
    ],
)
def test_read_job_refuses_duplicate_members(raw: bytes) -> None:
    # Parsers disagree on which duplicate wins, so a checker and warden could read two jobs.
    with pytest.raises(errors.MalformedMessage, match="duplicate"):
        read_job(delivery(raw))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"reports.generate", id="bare-text"),
        pytest.param(b'{"action": "reports.generate", "payload": {}', id="truncated"),
        pytest.param(b"{'action': 'reports.generate', 'payload': {}}", id="single-quotes"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
        pytest.param(b'{"action": "reports.generate", "payload": {"x": NaN}}', id="nan"),
        pytest.param(b'{"action": "reports.generate", "payload": {"x": -Infinity}}', id="inf"),
    ],
)
def test_read_job_refuses_bodies_that_are_not_json(raw: bytes) -> None:
    with pytest.raises(errors.MalformedMessage):
        read_job(delivery(raw))


# --- the denial record: reasons and their error classes ----------------------------------------


def _schema_pairing() -> dict[str, list[str]]:
    """error class -> reasons, as the denial schema's allOf if/then encodes it."""
    pairing: dict[str, list[str]] = {}
    for rule in DENIAL_SCHEMA["allOf"]:
        error = rule["if"]["properties"]["error"]["const"]
        assert rule["if"]["required"] == ["error"]
        pairing[error] = rule["then"]["properties"]["reason"]["enum"]
    return pairing


def test_denial_reasons_are_the_code_reasons_in_check_order() -> None:
    assert DENIAL_SCHEMA["properties"]["reason"]["enum"] == [cls.reason for cls in errors.DENIALS]
    assert list(errors.REASONS) == [cls.reason for cls in errors.DENIALS]  # no reason used twice


def test_denial_error_classes_are_the_code_error_classes() -> None:
    assert DENIAL_SCHEMA["properties"]["error"]["enum"] == list(ERROR_CLASSES)
    assert {cls.error for cls in errors.DENIALS} == set(ERROR_CLASSES)


def test_denial_schema_pairs_each_reason_with_its_class_error() -> None:
    expected = {
        error: [cls.reason for cls in errors.DENIALS if cls.error == error]
        for error in ERROR_CLASSES
    }
    assert _schema_pairing() == expected


def _record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "reason": "token_expired",
        "error": "invalid_token",
        "detail": "the token expired at 1700000000",
        "queue": "jobs",
        "exchange": "",
        "routing_key": "jobs",
        "action": VALID,
        "denied_at": "2026-01-02T03:04:05.678Z",
        "received_at": "2026-01-02T01:59:58.120Z",
        "worker": "host-1234",
        "attempts": 1,
        "token": {"fingerprint": "sha256:" + "0" * 64, "verified": True, "exp": 1700000000},
        "publisher_user": "billing-publisher",
        "dropped": [],
    }
    record.update(changes)
    return record


@pytest.mark.parametrize("reason", list(errors.REASONS))
def test_denial_schema_accepts_a_reason_only_with_its_own_error_class(reason: str) -> None:
    own = errors.REASONS[reason].error
    verdicts = {
        error: DENIAL.is_valid(_record(reason=reason, error=error)) for error in ERROR_CLASSES
    }
    assert verdicts == {error: error == own for error in ERROR_CLASSES}


def test_denial_token_members_are_what_a_token_summary_may_hold() -> None:
    members = DENIAL_SCHEMA["$defs"]["token"]["properties"].keys()
    assert set(members) == {"fingerprint", "verified", *SUMMARY_CLAIMS}


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        pytest.param({"reason": "Token_Expired"}, "reason", id="reason-unknown"),
        pytest.param({"error": "server_error"}, "error", id="error-unknown"),
        pytest.param({"denied_at": "2026-01-02T04:04:05.678+01:00"}, "denied_at", id="not-utc"),
        pytest.param({"denied_at": "2026-01-02 03:04:05Z"}, "denied_at", id="no-t"),
        pytest.param({"denied_at": "1767323045"}, "denied_at", id="epoch"),
        pytest.param({"received_at": "2026-01-02T01:59:58Z"}, "received_at", id="arrival-no-ms"),
        pytest.param({"received_at": 1767319198120}, "received_at", id="arrival-epoch-ms"),
        pytest.param({"attempts": 0}, "attempts", id="attempts-zero"),
        pytest.param({"attempts": "1"}, "attempts", id="attempts-string"),
        pytest.param({"attempts": 2**63 - 1}, "attempts", id="attempts-unbounded"),
        pytest.param({"publisher_user": 7}, "publisher_user", id="publisher-user-number"),
        pytest.param({"dropped": "timestamp"}, "dropped", id="dropped-not-a-list"),
        pytest.param({"dropped": [f"headers.h{n}" for n in range(17)]}, "dropped", id="dropped-17"),
        pytest.param({"action": 7}, "action", id="action-number"),
        pytest.param({"token": {"verified": False}}, "token", id="token-without-fingerprint"),
        pytest.param(
            {"token": {"fingerprint": "sha256:" + "A" * 64, "verified": False}},
            "token",
            id="fingerprint-uppercase",
        ),
        pytest.param(
            {"token": {"fingerprint": "sha256:" + "0" * 64 + "\n", "verified": False}},
            "token",
            id="fingerprint-trailing-newline",
        ),
        pytest.param(
            {
                "token": {
                    "fingerprint": "sha256:" + "0" * 64,
                    "verified": True,
                    "raw": "eyJhbGciOiJSUzI1NiJ9.e30.sig",
                }
            },
            "token",
            id="token-leaked",
        ),
        pytest.param(
            {"token": {"fingerprint": "sha256:" + "0" * 64, "verified": True, "exp": "soon"}},
            "token",
            id="exp-string",
        ),
        pytest.param(
            {"token": {"fingerprint": "sha256:" + "0" * 64, "verified": True, "act": "agent"}},
            "token",
            id="act-string",
        ),
        pytest.param({"authorization": "Bearer eyJ..."}, "", id="extra-member"),
    ],
)
def test_denial_schema_refuses_records_off_the_contract(changes: dict[str, Any], why: str) -> None:
    assert DENIAL.is_valid(_record())  # the baseline passes; only `changes` break it
    where = {e.path[0] if e.path else "" for e in DENIAL.iter_errors(_record(**changes))}
    assert why in where


def test_denial_schema_requires_every_member() -> None:
    for name in _record():
        record = _record()
        del record[name]
        assert not DENIAL.is_valid(record), name


# --- the denial record: what warden writes validates ------------------------------------------

TRUSTED = "https://issuer.test/trusted"


@pytest.fixture(scope="module")
def trusted_issuer() -> Issuer:
    return Issuer(TRUSTED, [SigningKey.generate("EdDSA")])


@pytest.fixture(scope="module")
def trust() -> Trust:
    settings = IssuerSettings(
        issuer=TRUSTED,
        audience=AUDIENCE,
        algorithms=("EdDSA", "RS256"),
        required_claims=DEFAULT_REQUIRED_CLAIMS,
    )
    return Trust([issuer_policy(settings)], leeway=30, max_token_bytes=8192)


class Keys:
    """The trusted issuer's JWKS, already fetched."""

    def __init__(self, issuer: Issuer) -> None:
        self.keys = parse_jwks(issuer.jwks(), issuer.url)

    def key(self, issuer: str, kid: str) -> VerificationKey | None:
        return self.keys.get(kid) if issuer == TRUSTED else None


def refuse(
    issuer: Issuer, trust: Trust, body: dict[str, Any], headers: dict[str, str], *, attempt: int = 1
) -> tuple[Denied, Delivery]:
    """Checks 1 to 12 and 15 as the gate runs them, over one message that must be refused."""
    raw = json.dumps(body).encode()
    message = Delivery(raw, headers, "m-0001", "application/json", "jobs", attempt)
    action: str | None = None
    check: TokenCheck | None = None
    try:
        action = read_job(message).action
        check = TokenCheck(bearer_token(headers))
        verify(check, trust, Keys(issuer), time.time())
        assert check.claims is not None
        if "reports:write" not in str(check.claims.get("scope", "")).split():
            raise errors.ScopeInsufficient("action 'reports.generate' requires reports:write")
    except errors.Denial as denial:
        return Denied(denial, action, check), message
    pytest.fail("the message was allowed")


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


JOB_BODY = {"action": VALID, "payload": {"report_id": 42}}


def _scenario(name: str, issuer: Issuer, trust: Trust) -> tuple[Denied, Delivery, str | None]:
    """A refused message; returns the verdict, the delivery and the raw token (if any)."""
    if name == "body-malformed":
        denied, message = refuse(issuer, trust, {"action": "Reports"}, {})
        return denied, message, None
    if name == "token-missing":
        denied, message = refuse(issuer, trust, JOB_BODY, {})
        return denied, message, None
    if name == "token-not-a-jws":
        token = "not-a-jwt"
    elif name == "parsed-not-verified":
        stranger = Issuer("https://issuer.test/stranger", [SigningKey.generate("EdDSA")])
        token = stranger.token(act={"sub": "agent-7"})
    elif name == "verified-wrong-audience":
        token = issuer.token(aud="https://other.test/api")
    elif name == "verified-delegated-scope-insufficient":
        token = issuer.token(
            scope="reports:read",
            act={"sub": "agent-7", "act": {"sub": "orchestrator"}},
        )
    else:
        raise AssertionError(name)
    denied, message = refuse(issuer, trust, JOB_BODY, _bearer(token), attempt=3)
    return denied, message, token


SCENARIOS = {
    # name: (reason, token summary expected: None | (verified, claims present))
    "body-malformed": ("malformed_message", None),
    "token-missing": ("token_missing", None),
    "token-not-a-jws": ("token_malformed", (False, set())),
    "parsed-not-verified": (
        "issuer_untrusted",
        (False, {"iss", "sub", "client_id", "jti", "exp", "scope", "act"}),
    ),
    "verified-wrong-audience": (
        "audience_mismatch",
        (True, {"iss", "sub", "client_id", "jti", "exp", "scope"}),
    ),
    "verified-delegated-scope-insufficient": (
        "scope_insufficient",
        (True, {"iss", "sub", "client_id", "jti", "exp", "scope", "act"}),
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_denial_record_validates_against_the_schema(
    name: str, trusted_issuer: Issuer, trust: Trust
) -> None:
    denied, message, token = _scenario(name, trusted_issuer, trust)
    reason, summary = SCENARIOS[name]
    assert denied.denial.reason == reason

    record = denial_record(
        denied,
        message,
        exchange="",
        routing_key=message.queue,
        worker="host-1234",
        now=datetime.now(UTC),
    )

    problems = [f"{list(e.path)}: {e.message}" for e in DENIAL.iter_errors(record)]
    assert problems == []
    # date-time is only checked by jsonschema when rfc3339-validator is installed: check it here.
    assert record["denied_at"].endswith("Z")
    assert datetime.fromisoformat(record["denied_at"]).utcoffset() == timedelta(0)
    if summary is None:
        assert record["token"] is None
    else:
        verified, claims = summary
        assert record["token"]["verified"] is verified
        assert set(record["token"]) - {"fingerprint", "verified"} == claims
    if token is not None:
        assert token not in json.dumps(record)


def test_denial_record_of_a_delegated_token_carries_the_actor_chain(
    trusted_issuer: Issuer, trust: Trust
) -> None:
    denied, message, token = _scenario(
        "verified-delegated-scope-insufficient", trusted_issuer, trust
    )
    record = denial_record(
        denied, message, exchange="", routing_key="jobs", worker="w", now=datetime.now(UTC)
    )
    assert DENIAL.is_valid(record)
    assert record["action"] == VALID
    assert record["attempts"] == 3
    assert record["error"] == "insufficient_scope"
    assert record["token"]["act"] == {"sub": "agent-7", "act": {"sub": "orchestrator"}}
    assert record["token"]["scope"] == "reports:read"
    assert record["token"]["iss"] == TRUSTED
    assert record["token"]["fingerprint"] == TokenCheck(token or "").fingerprint()
