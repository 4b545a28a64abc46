"""The decision (``docs/checks.md``) without a broker, check by check.

Every case asserts the exact reason code of the first failing check, that the denial never leaks
the token (``assert_denied``), and what the denial's token summary says. Keys come from a real
in-memory key store over the test issuers' JWKS documents, parsed by
:func:`worker.auth.keys.parse_jwks`.
The catalogue of named attacks (``alg: none``, key injection, JWE, duplicate members, confused
tokens, oversized input ...) is ``tests/attacks/``; delegation and proof of possession (checks 16
and 17) are ``tests/test_delegation.py`` and ``tests/test_proof.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.decision import (
    REGISTRY,
    MemoryKeys,
    assert_allowed,
    assert_denied,
    clear_warden_environment,
    delivery,
    fingerprint,
    job_body,
)
from tests.support.decision import make_gate as make_gate_for
from tests.support.issuer import AUDIENCE, DROP, Issuer, SigningKey, b64, encoded, unsigned
from tests.support.issuer import sign as sign_as
from tests.support.leaks import minted
from worker import errors
from worker.pipeline.decision import Gate
from worker.pipeline.delivery import Delivery

ISSUER_URL = "https://issuer.test/realms/main"
OTHER_URL = "https://other-issuer.test/realms/b"

RS = SigningKey.generate("RS256")
PS = SigningKey.generate("PS256")
ES = SigningKey.generate("ES256")
ED = SigningKey.generate("EdDSA")
ISSUER = Issuer(ISSUER_URL, [PS, ES, ED, RS])  # the last key (RS256) signs by default
OTHER = Issuer(OTHER_URL)  # a second trusted issuer with its own RS256 key
ATTACKER = SigningKey.generate("RS256", kid="attacker-1")


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_warden_environment(monkeypatch)


def now() -> int:
    return int(time.time())


def sign(header: Any, claims: Any, key: SigningKey = RS, alg: str | None = None) -> str:
    """A compact JWS over exactly these header and claims (dicts or raw JSON bytes)."""
    return sign_as(header, claims, key, alg)


def head(key: SigningKey = RS, **extra: Any) -> dict[str, Any]:
    """The header an issuer would put on an access token signed with ``key``."""
    header = {"alg": key.alg, "typ": "at+jwt", "kid": key.kid, **extra}
    return {name: value for name, value in header.items() if value is not DROP}


def claims(**overrides: Any) -> dict[str, Any]:
    return ISSUER.claims(**overrides)


def token(**kwargs: Any) -> str:
    return ISSUER.token(**kwargs)


def issued_earlier(**kwargs: Any) -> str:
    """A token issued two minutes before the keys were (re)fetched.

    For such a token an unknown ``kid`` is a verdict (``key_unknown``), not a reason to wait for
    keys the issuer may have published since the last fetch.
    """
    return ISSUER.token(iat=now() - 120, **kwargs)


def with_payload(raw: str, new_claims: Any) -> str:
    """``raw`` with its claims segment replaced, header and signature kept."""
    header, _, signature = raw.split(".")
    return minted(f"{header}.{b64(encoded(new_claims))}.{signature}")


body = job_body


def make_gate(*trusted: Issuer, keys: MemoryKeys | None = None, **settings: Any) -> Gate:
    """A gate trusting ``trusted`` (default: ISSUER) with the settings a worker would have."""
    return make_gate_for(*(trusted or (ISSUER,)), keys=keys, **settings)


@pytest.fixture
def keys() -> MemoryKeys:
    return MemoryKeys(ISSUER, OTHER)


@pytest.fixture
def gate(keys: MemoryKeys) -> Gate:
    return make_gate(ISSUER, OTHER, keys=keys)


# --- allowed ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [RS, PS, ES, ED], ids=["rs256", "ps256", "es256", "eddsa"])
async def test_tokens_signed_with_each_default_algorithm_are_allowed(
    gate: Gate, key: SigningKey
) -> None:
    exp = now() + 300
    raw = token(key=key, jti="jti-" + key.alg, exp=exp)
    verdict = assert_allowed(await gate.decide(delivery(raw)), raw)
    job = verdict.job
    assert (job.id, job.action, dict(job.payload), job.attempt) == ("m1", "reports.generate", {}, 1)
    assert verdict.spec.name == "reports.generate"
    who = job.principal
    assert who.sub == "service-account-reports"
    assert who.client_id == "reports-service"
    assert who.scopes == {"reports:write", "reports:read"}
    assert who.issuer == ISSUER_URL
    assert who.jti == "jti-" + key.alg
    assert who.expires_at == datetime.fromtimestamp(exp, UTC)
    assert who.actor is None


@pytest.mark.parametrize(
    ("scopes", "granted"),
    [
        pytest.param(
            {"scope": "reports:write  reports:read"},
            {"reports:write", "reports:read"},
            id="scope-space-delimited",
        ),
        pytest.param(
            {"scope": DROP, "scp": "reports:write reports:read"},
            {"reports:write", "reports:read"},
            id="scp-string",
        ),
        pytest.param(
            {"scope": DROP, "scp": ["reports:write", "admin"]},
            {"reports:write", "admin"},
            id="scp-array",
        ),
        pytest.param(
            {"scope": "reports:read", "scp": ["reports:write"]},
            {"reports:read", "reports:write"},
            id="union-of-scope-and-scp",
        ),
        pytest.param(
            {"scope": "reports:read", "scp": "reports:write other"},
            {"reports:read", "reports:write", "other"},
            id="union-with-scp-string",
        ),
    ],
)
async def test_granted_scopes_come_from_scope_and_scp(
    gate: Gate, scopes: dict[str, Any], granted: set[str]
) -> None:
    raw = token(**scopes)
    verdict = assert_allowed(await gate.decide(delivery(raw)), raw)
    assert verdict.job.principal.scopes == granted


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda t: delivery(None, headers={"authorization": "bearer " + t}),
            id="lower-case-scheme",
        ),
        pytest.param(
            lambda t: delivery(None, headers={"authorization": "BEARER   " + t}),
            id="upper-case-scheme-several-spaces",
        ),
        pytest.param(
            lambda t: delivery(None, headers={"authorization": f"Bearer {t}  "}),
            id="trailing-spaces",
        ),
        pytest.param(
            lambda t: delivery(None, headers={"authorization": f"Bearer {t}".encode()}),
            id="header-as-bytes",
        ),
        pytest.param(
            lambda t: delivery(t, content_type="application/json; charset=utf-8"),
            id="content-type-with-charset",
        ),
        pytest.param(lambda t: delivery(t, message_id="m" * 128), id="message-id-128-chars"),
        pytest.param(
            lambda t: delivery(t, content=body(payload={"n": [1, {"a": None}]})),
            id="nested-payload",
        ),
    ],
)
async def test_well_formed_variants_are_allowed(
    gate: Gate, make: Callable[[str], Delivery]
) -> None:
    raw = token()
    assert_allowed(await gate.decide(make(raw)), raw)


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/AT+JWT"])
async def test_access_token_types_are_allowed_in_any_case(gate: Gate, typ: str) -> None:
    raw = token(header={"typ": typ})
    assert_allowed(await gate.decide(delivery(raw)), raw)


# --- check 1: malformed_message ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: delivery(t, content=b"not json"), id="non-json-body"),
        pytest.param(lambda t: delivery(t, content=b""), id="empty-body"),
        pytest.param(
            lambda t: delivery(t, content=b"\xef\xbb\xbf" + body()), id="utf8-bom-before-json"
        ),
        pytest.param(lambda t: delivery(t, content=b"[]"), id="json-array-body"),
        pytest.param(lambda t: delivery(t, content=b'"reports.generate"'), id="json-string-body"),
        pytest.param(lambda t: delivery(t, content=b"null"), id="json-null-body"),
        pytest.param(
            lambda t: delivery(
                t,
                content=json.dumps(
                    {"action": "reports.generate", "payload": {}, "token": t}
                ).encode(),
            ),
            id="extra-key-carrying-the-token",
        ),
        pytest.param(
            lambda t: delivery(t, content=b'{"action": "reports.generate"}'), id="missing-payload"
        ),
        pytest.param(lambda t: delivery(t, content=b'{"payload": {}}'), id="missing-action"),
        pytest.param(
            lambda t: delivery(t, content=b'{"action": "reports.generate", "payload": []}'),
            id="payload-not-an-object",
        ),
        pytest.param(
            lambda t: delivery(t, content=b'{"action": "reports.generate", "payload": null}'),
            id="payload-null",
        ),
        pytest.param(
            lambda t: delivery(t, content=body("Reports.Generate")), id="action-upper-case"
        ),
        pytest.param(lambda t: delivery(t, content=body("../admin.purge")), id="action-path"),
        pytest.param(lambda t: delivery(t, content=body("")), id="action-empty"),
        pytest.param(lambda t: delivery(t, content=body("a" * 129)), id="action-129-chars"),
        pytest.param(
            lambda t: delivery(t, content=body("reports.generate\n")), id="action-trailing-newline"
        ),
        pytest.param(
            lambda t: delivery(t, content=b'{"action": 5, "payload": {}}'), id="action-not-a-string"
        ),
        pytest.param(
            lambda t: delivery(
                t, content=b'{"action": "reports.read", "action": "admin.purge", "payload": {}}'
            ),
            id="duplicate-action-key",
        ),
        pytest.param(
            lambda t: delivery(t, content=b'{"action": "reports.generate", "payload": {"n": NaN}}'),
            id="nan-is-not-json",
        ),
        pytest.param(
            lambda t: delivery(
                t, content=b'{"action": "reports.generate", "payload": {"n": -Infinity}}'
            ),
            id="infinity-is-not-json",
        ),
        pytest.param(lambda t: delivery(t, message_id=None), id="message-id-missing"),
        pytest.param(lambda t: delivery(t, message_id=""), id="message-id-empty"),
        pytest.param(lambda t: delivery(t, message_id="m" * 129), id="message-id-129-chars"),
        pytest.param(
            lambda t: delivery(t, content_type="text/plain"), id="content-type-text-plain"
        ),
        pytest.param(
            lambda t: delivery(t, content_type="application/jsonp"), id="content-type-jsonp"
        ),
    ],
)
async def test_malformed_messages(gate: Gate, make: Callable[[str], Delivery]) -> None:
    raw = token()
    verdict = assert_denied(await gate.decide(make(raw)), "malformed_message", raw)
    assert verdict.token is None, "no token is looked at before the message is well formed"
    assert verdict.action is None


# --- check 2: token_missing (and a Bearer token that is not token syntax) ---------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda t: {}, id="no-header"),
        pytest.param(lambda t: {"authorization": ""}, id="empty-header"),
        pytest.param(lambda t: {"authorization": None}, id="null-header"),
        pytest.param(lambda t: {"authorization": 42}, id="header-not-a-string"),
        pytest.param(lambda t: {"authorization": "Basic xyz"}, id="basic-scheme"),
        pytest.param(lambda t: {"authorization": "Basic " + t}, id="token-under-basic-scheme"),
        pytest.param(lambda t: {"authorization": "DPoP " + t}, id="token-under-dpop-scheme"),
        pytest.param(lambda t: {"authorization": t}, id="token-without-scheme"),
        pytest.param(lambda t: {"authorization": "Bearer" + t}, id="no-space-after-scheme"),
        pytest.param(lambda t: {"authorization": "Bearer"}, id="scheme-only"),
        pytest.param(lambda t: {"authorization": "Bearer "}, id="scheme-and-space-only"),
        pytest.param(lambda t: {"authorization": "Bearer    "}, id="scheme-and-spaces-only"),
        pytest.param(lambda t: {"x-authorization": "Bearer " + t}, id="token-in-another-header"),
    ],
)
async def test_token_missing(gate: Gate, headers: Callable[[str], dict[str, Any]]) -> None:
    raw = token()
    verdict = assert_denied(
        await gate.decide(delivery(None, headers=headers(raw))), "token_missing", raw
    )
    assert verdict.token is None
    assert verdict.action == "reports.generate"


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(lambda t: "Bearer " + t[:10] + "$" + t[10:], id="dollar-in-token"),
        pytest.param(lambda t: "Bearer " + t + " " + t, id="two-tokens"),
        pytest.param(lambda t: "Bearer " + t + ",x", id="comma-after-token"),
        pytest.param(lambda t: 'Bearer "' + t + '"', id="quoted-token"),
        pytest.param(lambda t: "Bearer " + t + "\n", id="trailing-newline"),
        pytest.param(lambda t: "Bearer " + t + "\r\nx-admin: 1", id="header-injection"),
        pytest.param(lambda t: "Bearer \t" + t, id="tab-before-token"),
        pytest.param(lambda t: "Bearer " + t.replace(".", "\u2024", 1), id="non-ascii-in-token"),
        pytest.param(lambda t: "Bearer =" + t, id="padding-first"),
    ],
)
async def test_bearer_header_with_illegal_token_characters_is_malformed(
    gate: Gate, header: Callable[[str], str]
) -> None:
    raw = token()
    verdict = assert_denied(
        await gate.decide(delivery(None, headers={"authorization": header(raw)})),
        "token_malformed",
        raw,
    )
    assert verdict.token is None


# --- check 3: token_malformed -----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: "a" * 40, id="one-segment"),
        pytest.param(lambda: "a" + token(), id="garbage-before-header"),
        pytest.param(lambda: sign(b"[]", claims()), id="header-json-array"),
        pytest.param(lambda: sign(b'"at+jwt"', claims()), id="header-json-string"),
        pytest.param(lambda: sign(b"not json", claims()), id="header-not-json"),
        pytest.param(lambda: sign(head(), b"[1, 2]"), id="claims-json-array"),
        pytest.param(lambda: sign(head(), b"null"), id="claims-json-null"),
        pytest.param(lambda: token(exp=253402300800), id="exp-in-year-10000"),
    ],
)
async def test_token_malformed(gate: Gate, make: Callable[[], str]) -> None:
    raw = make()
    verdict = assert_denied(await gate.decide(delivery(raw)), "token_malformed", raw)
    assert verdict.token is not None
    assert verdict.action == "reports.generate"


async def test_the_token_size_limit_is_configurable() -> None:
    raw = token(padding="x" * 2000)
    assert len(raw) > 2048
    assert_allowed(await make_gate().decide(delivery(raw)), raw)
    verdict = await make_gate(max_token_bytes=2048).decide(delivery(raw))
    assert_denied(verdict, "token_malformed", raw)


# --- check 4: algorithm_not_allowed -----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: token(alg="RS384"), id="rs384-not-in-defaults"),
        pytest.param(lambda: token(alg="PS512"), id="ps512-not-in-defaults"),
    ],
)
async def test_algorithm_not_allowed(gate: Gate, make: Callable[[], str]) -> None:
    raw = make()
    verdict = assert_denied(await gate.decide(delivery(raw)), "algorithm_not_allowed", raw)
    assert verdict.token is not None


async def test_an_allowed_algorithm_still_has_to_fit_the_key() -> None:
    gate = make_gate(algorithms="RS256,RS512")
    allowed = token(key=RS, alg="RS256")
    assert_allowed(await gate.decide(delivery(allowed)), allowed)
    raw = token(key=RS, alg="RS512")  # allowed by configuration, but the JWK says RS256
    assert_denied(await gate.decide(delivery(raw)), "algorithm_not_allowed", raw)


async def test_the_algorithm_allow_list_is_per_issuer(keys: MemoryKeys) -> None:
    gate = make_gate(
        ISSUER,
        OTHER,
        keys=keys,
        issuers=[{"issuer": ISSUER_URL, "algorithms": ["ES256"]}, {"issuer": OTHER_URL}],
    )
    raw = token(key=RS)
    assert_denied(await gate.decide(delivery(raw)), "algorithm_not_allowed", raw)
    es = token(key=ES)
    assert_allowed(await gate.decide(delivery(es)), es)
    other = OTHER.token()
    assert_allowed(await gate.decide(delivery(other)), other)


# --- check 5: token_type_invalid --------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: sign(head(typ=DROP), claims()), id="typ-missing"),
        pytest.param(lambda: token(header={"typ": ""}), id="typ-empty"),
        pytest.param(
            lambda: token(header={"typ": "JWT"}, iss="https://evil.test"),
            id="typ-jwt-untrusted-issuer",
        ),
    ],
)
async def test_token_type_invalid(gate: Gate, make: Callable[[], str]) -> None:
    raw = make()
    assert_denied(await gate.decide(delivery(raw)), "token_type_invalid", raw)


async def test_an_issuer_may_be_configured_to_accept_typ_jwt(keys: MemoryKeys) -> None:
    raw = token(header={"typ": "JWT"})
    strict = make_gate(ISSUER, OTHER, keys=keys)
    assert_denied(await strict.decide(delivery(raw)), "token_type_invalid", raw)
    lenient = make_gate(
        ISSUER,
        OTHER,
        keys=keys,
        issuers=[{"issuer": ISSUER_URL, "accept_typ": ["JWT"]}, {"issuer": OTHER_URL}],
    )
    verdict = assert_allowed(await lenient.decide(delivery(raw)), raw)
    assert verdict.job.principal.issuer == ISSUER_URL
    at = token()
    assert_allowed(await lenient.decide(delivery(at)), at)
    # only that issuer: the other still refuses typ JWT, and a missing typ stays refused
    other = OTHER.token(header={"typ": "JWT"})
    assert_denied(await lenient.decide(delivery(other)), "token_type_invalid", other)
    no_typ = sign(head(typ=DROP), claims())
    assert_denied(await lenient.decide(delivery(no_typ)), "token_type_invalid", no_typ)


# --- check 6: issuer_untrusted ----------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        pytest.param("https://evil.test/realms/main", id="other-issuer"),
        pytest.param("https://issuer.test/realms/Main", id="path-in-other-case"),
        pytest.param("https://issuer.test:443/realms/main", id="explicit-default-port"),
        pytest.param("", id="empty"),
    ],
)
async def test_issuer_untrusted(gate: Gate, iss: Any) -> None:
    raw = token(iss=iss)
    verdict = assert_denied(await gate.decide(delivery(raw)), "issuer_untrusted", raw)
    assert verdict.token is not None
    assert verdict.token.policy is None


# --- check 7: key_unknown ---------------------------------------------------------------------


def _forged_with_attacker_key(kid: str) -> str:
    """Signed by the attacker, pointing at the attacker's key through jwk, jku, x5u."""
    return issued_earlier(
        key=ATTACKER,
        header={
            "kid": kid,
            "jwk": ATTACKER.public_jwk(),
            "jku": "https://attacker.example/jwks.json",
            "x5u": "https://attacker.example/cert.pem",
        },
        scope="admin reports:write",
    )


@pytest.mark.parametrize(
    ("make", "refetched"),
    [
        pytest.param(lambda: issued_earlier(header={"kid": "no-such-kid"}), True, id="unknown-kid"),
        pytest.param(lambda: sign(head(kid=DROP), claims()), False, id="no-kid"),
        pytest.param(lambda: issued_earlier(header={"kid": ""}), True, id="empty-kid"),
        pytest.param(
            lambda: issued_earlier(header={"kid": RS.kid.upper()}), True, id="kid-in-other-case"
        ),
        pytest.param(
            lambda: _forged_with_attacker_key(ATTACKER.kid),
            True,
            id="embedded-jwk-and-jku-with-attacker-kid",
        ),
        pytest.param(
            lambda: sign(head(ATTACKER, kid=DROP, jwk=ATTACKER.public_jwk()), claims(), ATTACKER),
            False,
            id="embedded-jwk-without-kid",
        ),
        pytest.param(
            lambda: sign(head(ATTACKER, kid=DROP, x5c=["MIIB"]), claims(), ATTACKER),
            False,
            id="x5c-without-kid",
        ),
        pytest.param(
            lambda: issued_earlier(key=OTHER.key, iss=ISSUER_URL),
            True,
            id="claims-issuer-a-signed-by-issuer-b",
        ),
        pytest.param(
            lambda: OTHER.token(key=RS, iat=now() - 120),
            True,
            id="claims-issuer-b-signed-by-issuer-a",
        ),
    ],
)
async def test_key_unknown(
    gate: Gate, keys: MemoryKeys, make: Callable[[], str], refetched: bool
) -> None:
    raw = make()
    verdict = assert_denied(await gate.decide(delivery(raw)), "key_unknown", raw)
    assert verdict.token is not None
    # an unknown kid is worth one (rate-limited) refetch; a missing kid is not
    assert len(keys.refetches) == (1 if refetched else 0)


async def test_embedded_jwk_with_the_issuers_kid_does_not_replace_the_issuers_key(
    gate: Gate,
) -> None:
    raw = _forged_with_attacker_key(RS.kid)
    assert_denied(await gate.decide(delivery(raw)), "signature_invalid", raw)


async def test_a_key_the_issuer_published_after_the_last_fetch_is_found_by_one_refetch() -> None:
    first = SigningKey.generate("ES256")
    rotating = Issuer("https://rotating.test", [first])
    keys = MemoryKeys(rotating)
    gate = make_gate(rotating, keys=keys)
    rotating.keys.append(SigningKey.generate("ES256"))
    raw = rotating.token()
    verdict = assert_allowed(await gate.decide(delivery(raw)), raw)
    assert verdict.job.principal.issuer == "https://rotating.test"
    assert keys.refetches == ["https://rotating.test"]
    old = rotating.token(key=first)
    assert_allowed(await gate.decide(delivery(old)), old)
    assert len(keys.refetches) == 1


async def test_a_trusted_issuer_whose_keys_were_never_fetched_makes_the_message_wait() -> None:
    keys = MemoryKeys(ISSUER)  # OTHER is trusted but none of its keys could be had
    gate = make_gate(ISSUER, OTHER, keys=keys)
    raw = OTHER.token()
    with pytest.raises(errors.KeysUnavailable) as caught:
        await gate.decide(delivery(raw))
    assert raw not in str(caught.value)
    assert keys.refetches == [OTHER_URL]


# --- check 8: signature_invalid ---------------------------------------------------------------


def _tampered(key: SigningKey) -> str:
    raw = token(key=key, scope="reports:read")
    return with_payload(raw, claims(scope="reports:read reports:write admin"))


def _es256_der_signature() -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signing_input = f"{b64(encoded(head(ES)))}.{b64(encoded(claims()))}"
    der = ES.private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    return minted(f"{signing_input}.{b64(der)}")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _tampered(RS), id="tampered-claims-rs256"),
        pytest.param(lambda: _tampered(PS), id="tampered-claims-ps256"),
        pytest.param(lambda: _tampered(ES), id="tampered-claims-es256"),
        pytest.param(lambda: _tampered(ED), id="tampered-claims-eddsa"),
        pytest.param(lambda: sign(head(), claims(), ATTACKER), id="attacker-key-issuer-kid"),
        pytest.param(
            lambda: sign(head(PS), claims(), RS, alg="PS256"),
            id="signed-with-another-key-of-the-issuer",
        ),
        pytest.param(_es256_der_signature, id="es256-der-signature"),
        pytest.param(
            lambda: with_payload(token(), claims(aud="https://elsewhere.test")),
            id="tampered-audience",
        ),
    ],
)
async def test_signature_invalid(gate: Gate, make: Callable[[], str]) -> None:
    raw = make()
    verdict = assert_denied(await gate.decide(delivery(raw)), "signature_invalid", raw)
    assert verdict.token is not None
    assert verdict.token.policy is not None


# --- checks 9 to 12 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"exp": -60}, "token_expired", id="expired-a-minute-ago"),
        pytest.param({"exp": -31}, "token_expired", id="expired-beyond-leeway"),
        pytest.param({"exp": -30}, "token_expired", id="expired-exactly-leeway"),
        pytest.param({"exp": -86400 * 365}, "token_expired", id="expired-a-year-ago"),
        pytest.param({"exp": -29}, None, id="expired-within-leeway"),
        pytest.param({"exp": -1}, None, id="expired-a-second-ago"),
        pytest.param({"nbf": 31}, "token_not_yet_valid", id="nbf-beyond-leeway"),
        pytest.param({"nbf": 3600}, "token_not_yet_valid", id="nbf-an-hour-ahead"),
        pytest.param({"iat": 31}, "token_not_yet_valid", id="iat-beyond-leeway"),
        pytest.param({"iat": 86400}, "token_not_yet_valid", id="iat-a-day-ahead"),
        pytest.param({"nbf": 30, "iat": 30}, None, id="nbf-and-iat-within-leeway"),
        pytest.param({"nbf": -10}, None, id="nbf-in-the-past"),
    ],
)
async def test_time_claims_with_leeway(
    keys: MemoryKeys, overrides: dict[str, int], reason: str | None
) -> None:
    clock = float(now())
    gate = Gate(make_gate(ISSUER, OTHER, keys=keys).trust, keys, REGISTRY, clock=lambda: clock)
    times = {"iat": int(clock) - 100, "exp": int(clock) + 300}
    times.update({name: int(clock) + delta for name, delta in overrides.items()})
    raw = token(**times)
    verdict = await gate.decide(delivery(raw))
    if reason is None:
        assert_allowed(verdict, raw)
    else:
        assert_denied(verdict, reason, raw)


async def test_leeway_is_configurable() -> None:
    raw = token(exp=now() - 20)
    assert_allowed(await make_gate().decide(delivery(raw)), raw)
    assert_denied(await make_gate(leeway_seconds=0).decide(delivery(raw)), "token_expired", raw)


@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        pytest.param("https://other.test/api", "audience_mismatch", id="other-audience"),
        pytest.param(AUDIENCE + "/", "audience_mismatch", id="audience-trailing-slash"),
        pytest.param(AUDIENCE.upper(), "audience_mismatch", id="audience-other-case"),
        pytest.param(AUDIENCE + " other", "audience_mismatch", id="audience-with-a-space"),
        pytest.param(
            ["https://a.test", "https://b.test"], "audience_mismatch", id="array-without-ours"
        ),
        pytest.param([], "audience_mismatch", id="empty-array"),
        pytest.param("", "audience_mismatch", id="empty-string"),
        pytest.param(DROP, "audience_mismatch", id="aud-missing"),
        pytest.param(["https://a.test", AUDIENCE], None, id="array-with-ours"),
        pytest.param([AUDIENCE], None, id="array-of-ours"),
        pytest.param(AUDIENCE, None, id="string-ours"),
    ],
)
async def test_audience(gate: Gate, aud: Any, reason: str | None) -> None:
    raw = token(aud=aud)
    verdict = await gate.decide(delivery(raw))
    if reason is None:
        assert_allowed(verdict, raw)
    else:
        assert_denied(verdict, reason, raw)


@pytest.mark.parametrize("claim", ["sub", "client_id", "iat", "jti", "exp"])
async def test_claims_missing(gate: Gate, claim: str) -> None:
    raw = token(**{claim: DROP})
    verdict = assert_denied(await gate.decide(delivery(raw)), "claims_missing", raw)
    assert claim in verdict.denial.detail


async def test_required_claims_are_configurable_per_issuer(keys: MemoryKeys) -> None:
    gate = make_gate(
        ISSUER,
        OTHER,
        keys=keys,
        issuers=[
            {"issuer": ISSUER_URL, "required_claims": ["iss", "exp", "aud", "sub"]},
            {"issuer": OTHER_URL},
        ],
    )
    raw = token(client_id=DROP, jti=DROP)
    verdict = assert_allowed(await gate.decide(delivery(raw)), raw)
    assert (verdict.job.principal.client_id, verdict.job.principal.jti) == (None, None)
    other = OTHER.token(client_id=DROP)
    assert_denied(await gate.decide(delivery(other)), "claims_missing", other)


# --- checks 14 and 15 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action", ["reports.delete", "admin.purge.all", "reports", "reports.generate.", "x"]
)
async def test_action_unknown(gate: Gate, action: str) -> None:
    raw = token(scope="reports:write reports:read admin")
    verdict = assert_denied(await gate.decide(delivery(raw, action=action)), "action_unknown", raw)
    assert verdict.action == action


@pytest.mark.parametrize(
    ("action", "scopes"),
    [
        pytest.param("reports.generate", {"scope": "reports:read"}, id="read-scope-for-write"),
        pytest.param("reports.read", {"scope": "reports:write"}, id="write-scope-for-read"),
        pytest.param("reports.generate", {"scope": DROP}, id="no-scope-at-all"),
        pytest.param("reports.generate", {"scope": ""}, id="empty-scope"),
        pytest.param("admin.purge", {}, id="admin-without-admin"),
        pytest.param("admin.purge", {"scope": "administrator admin:all"}, id="admin-prefixes"),
        pytest.param("admin.purge", {"scope": "ADMIN Admin"}, id="admin-other-case"),
        pytest.param("admin.purge", {"scope": "admin,reports:read"}, id="comma-delimited"),
        pytest.param(
            "admin.purge",
            {"scope": DROP, "scp": ["reports:read admin"]},
            id="scp-array-element-with-space",
        ),
        pytest.param("admin.purge", {"scope": "reports:read", "admin": True}, id="admin-claim"),
        pytest.param(
            "admin.purge",
            {"roles": ["admin"], "groups": ["admin"]},
            id="roles-and-groups-are-not-scopes",
        ),
        pytest.param("admin.purge", {"scp": [], "scope": " "}, id="empty-scp-and-blank-scope"),
    ],
)
async def test_scope_insufficient(gate: Gate, action: str, scopes: dict[str, Any]) -> None:
    raw = token(**scopes)
    verdict = assert_denied(
        await gate.decide(delivery(raw, action=action)), "scope_insufficient", raw
    )
    assert verdict.action == action
    assert verdict.denial.error == "insufficient_scope"


async def test_a_token_with_the_scope_runs_the_admin_action(gate: Gate) -> None:
    raw = token(scope=DROP, scp=["admin"])
    verdict = assert_allowed(await gate.decide(delivery(raw, action="admin.purge")), raw)
    assert verdict.spec.name == "admin.purge"


# --- order: the first failing check decides ---------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda: delivery(None, content=b"[]"),
            "malformed_message",
            id="malformed-body-and-no-token",
        ),
        pytest.param(
            lambda: delivery(unsigned(head(alg="none"), claims()), message_id=None),
            "malformed_message",
            id="no-message-id-and-alg-none",
        ),
        pytest.param(
            lambda: delivery("x.y", action="nope.nope"),
            "token_malformed",
            id="malformed-token-and-unknown-action",
        ),
        pytest.param(
            lambda: delivery(
                unsigned(head(alg="none", typ="JWT"), claims(iss="https://evil.test"))
            ),
            "algorithm_not_allowed",
            id="alg-none-bad-typ-untrusted-issuer",
        ),
        pytest.param(
            lambda: delivery(token(header={"typ": "JWT", "kid": "nope"}, iss="https://evil.test")),
            "token_type_invalid",
            id="bad-typ-untrusted-issuer-unknown-kid",
        ),
        pytest.param(
            lambda: delivery(token(iss="https://evil.test", header={"kid": "nope"})),
            "issuer_untrusted",
            id="untrusted-issuer-and-unknown-kid",
        ),
        pytest.param(
            lambda: delivery(issued_earlier(key=ATTACKER, exp=now() - 3600)),
            "key_unknown",
            id="unknown-kid-and-expired",
        ),
        pytest.param(
            lambda: delivery(with_payload(token(), claims(exp=now() - 3600))),
            "signature_invalid",
            id="bad-signature-and-expired",
        ),
        pytest.param(
            lambda: delivery(token(exp=now() - 3600, aud="https://other.test")),
            "token_expired",
            id="expired-and-wrong-audience",
        ),
        pytest.param(
            lambda: delivery(token(exp=now() - 3600, nbf=now() + 3600)),
            "token_expired",
            id="expired-and-not-yet-valid",
        ),
        pytest.param(
            lambda: delivery(token(nbf=now() + 3600, aud="https://other.test")),
            "token_not_yet_valid",
            id="not-yet-valid-and-wrong-audience",
        ),
        pytest.param(
            lambda: delivery(token(aud="https://other.test", sub=DROP)),
            "audience_mismatch",
            id="wrong-audience-and-no-sub",
        ),
        pytest.param(
            lambda: delivery(token(jti=DROP, scope=""), action="nope.nope"),
            "claims_missing",
            id="no-jti-unknown-action-no-scope",
        ),
        pytest.param(
            lambda: delivery(token(scope=""), action="nope.nope"),
            "action_unknown",
            id="unknown-action-and-no-scope",
        ),
    ],
)
async def test_the_first_failing_check_decides(
    gate: Gate, make: Callable[[], Delivery], reason: str
) -> None:
    message = make()
    authorization = message.headers.get("authorization", "")
    raw = authorization.removeprefix("Bearer ") or None
    assert_denied(await gate.decide(message), reason, raw)


# --- the token summary of a denial ------------------------------------------------------------


async def test_the_summary_reports_claims_but_never_the_token(gate: Gate) -> None:
    raw = token(jti="j-1", sub="alice", scope="reports:read", act={"sub": "bot"})
    verdict = assert_denied(
        await gate.decide(delivery(raw, action="admin.purge")), "scope_insufficient", raw
    )
    assert verdict.token is not None
    summary = verdict.token.summary()
    assert summary["fingerprint"] == fingerprint(raw)
    assert summary["verified"] is True
    assert (summary["iss"], summary["sub"], summary["jti"]) == (ISSUER_URL, "alice", "j-1")
    assert summary["client_id"] == "reports-service"
    assert summary["scope"] == "reports:read"
    assert summary["act"] == {"sub": "bot"}
    assert set(summary) <= {
        "fingerprint",
        "verified",
        "iss",
        "sub",
        "client_id",
        "jti",
        "exp",
        "scope",
        "act",
    }


async def test_an_unverified_summary_says_so(gate: Gate) -> None:
    raw = with_payload(token(), claims(sub="admin"))
    verdict = assert_denied(await gate.decide(delivery(raw)), "signature_invalid", raw)
    assert verdict.token is not None
    assert verdict.token.summary()["verified"] is False
    assert verdict.token.summary()["fingerprint"] == fingerprint(raw)
