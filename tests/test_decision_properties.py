"""The decision, for arbitrary input: a verdict from the closed set of reasons, never a crash.

Hypothesis builds messages from arbitrary bytes, AMQP-like headers, and tokens made of random
JOSE headers and claims, signed by the real keys (or not signed, or carrying random segments);
some carry a ``cnf`` and a proof, some an ``act``. For each, :meth:`Gate.decide` must return an
:class:`Allowed` or a :class:`Denied` whose reason is one of :data:`worker.errors.REASONS` (with
the class and RFC 6750 error of that reason), and whose denial record is valid against
``schemas/denial.schema.json`` and reads back from the headers a dead letter carries, encoded as
warden sends them (with what repeats between cases kept from one to the next).

One exception is legitimate: :class:`~worker.errors.KeysUnavailable` for a token naming a ``kid``
the issuer does not have (yet), issued no earlier than the last key fetch and no later than now
plus the leeway (``Gate._key_may_be_newer``): an issuer may sign with a key the moment it
publishes it, so such a token waits for the next fetch instead of being denied. The test checks
exactly that condition whenever it is raised; anything else raised is a failure.
"""

from __future__ import annotations

import asyncio
import json
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.attacks.world import ATTACKER, ISSUER_KEYS, OTHER_KEYS, WORLD
from tests.support.decision import MemoryKeys, clear_warden_environment, make_gate
from tests.support.issuer import AUDIENCE, SigningKey
from tests.support.issuer import sign as sign_with
from tests.support.leaks import assert_no_leak
from tests.support.schemas import DENIAL
from tests.support.wire import decoded, denial_headers
from worker import Job, action, errors
from worker.auth.proof import ProofKey
from worker.deadletters.write import DenialHeaders, denial_record
from worker.pipeline.actions import Registry
from worker.pipeline.decision import Allowed, Denied
from worker.pipeline.delivery import Delivery

EXAMPLES = 2000
DENIALS = DenialHeaders("w", max_entries=64)


SIGNERS: list[SigningKey] = [*ISSUER_KEYS, *OTHER_KEYS, ATTACKER]
KIDS = {
    WORLD.issuer.url: {key.kid for key in ISSUER_KEYS},
    WORLD.other.url: {key.kid for key in OTHER_KEYS},
}


@action(
    "reports.delegated_per_issuer",
    scopes={"reports:write"},
    actors={WORLD.issuer.url: {"agent-x"}, WORLD.other.url: {"agent-y"}},
)
async def delegated_per_issuer(job: Job) -> None:
    """``agent-x`` of the first issuer, or ``agent-y`` of the second, may act."""


REGISTRY = Registry.from_modules(["tests.support.actions", __name__])
ACTIONS = [
    "reports.generate",
    "reports.read",
    "reports.delegated_per_issuer",
    "reports.any_actor",
    "admin.purge",
]
PROOF_KEY = ProofKey.from_pem(
    ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
)


def b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


# --- strategies -------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "agent-x", "agent-y", "\ud800", "x\udfff", "admin", AUDIENCE]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=300_000_000_000),
    st.floats(allow_nan=False, allow_infinity=False),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(texts, children, max_size=3)
    ),
    max_leaves=6,
)
amqp_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(max_size=12),
        st.binary(max_size=12),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=5,
)
actor_chains = st.recursive(
    st.builds(lambda sub: {"sub": sub}, texts),
    lambda inner: st.builds(lambda sub, act: {"sub": sub, "act": act}, texts, inner),
    max_leaves=4,
)


def mostly(draw: st.DrawFn, usual: Any, other: st.SearchStrategy[Any], odds: int = 8) -> Any:
    """``usual`` about ``odds`` times in ``odds + 1``, else something drawn from ``other``: most
    messages must get past the first checks for the later ones to be tried at all."""
    return draw(other) if rarely(draw, odds) else usual


def rarely(draw: st.DrawFn, odds: int) -> bool:
    """True about once in ``odds + 1`` draws (Hypothesis favours small integers, so the rare
    case is the largest)."""
    return bool(draw(st.integers(0, odds)) == odds)


CLAIM_NAMES = ["iss", "sub", "client_id", "aud", "iat", "exp", "nbf", "jti", "scope", "scp"]


@st.composite
def claim_sets(draw: st.DrawFn) -> dict[str, Any]:
    now = int(time.time())
    claims = WORLD.issuer.claims(iss=draw(st.sampled_from([WORLD.issuer.url, WORLD.other.url])))
    mutated = draw(st.lists(st.sampled_from(CLAIM_NAMES), max_size=3, unique=True))
    for name in mutated if rarely(draw, 2) else ():
        choice = draw(st.integers(0, 2))
        if choice == 0:
            claims.pop(name, None)
        elif choice == 1:
            claims[name] = draw(json_values)
        else:
            claims[name] = now + draw(st.integers(-100_000, 100_000))
    if rarely(draw, 2):
        claims["scope"] = draw(st.sampled_from(["reports:write", "admin", "", "reports:read"]))
    if rarely(draw, 3):
        claims["act"] = draw(st.one_of(actor_chains, json_values))
    if rarely(draw, 3):
        claims["cnf"] = draw(
            st.one_of(
                st.just({"jkt": PROOF_KEY.thumbprint}),
                st.dictionaries(st.sampled_from(["jkt", "x5t#S256", "jwk"]), json_values),
                json_values,
            )
        )
    if rarely(draw, 3):
        claims.update(draw(st.dictionaries(texts, json_values, max_size=2)))
    return claims


@st.composite
def jose_headers(draw: st.DrawFn, key: SigningKey) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": key.alg, "typ": "at+jwt", "kid": key.kid}
    mutated = draw(st.lists(st.sampled_from(["alg", "typ", "kid"]), max_size=2, unique=True))
    for name in mutated if rarely(draw, 3) else ():
        header[name] = draw(
            st.one_of(
                st.sampled_from(
                    {
                        "alg": ["none", "HS256", "RS512", "ES256", "EdDSA", "PS256", "RS256"],
                        "typ": ["JWT", "application/at+jwt", "dpop+jwt", "AT+JWT"],
                        "kid": [*sorted(set().union(*KIDS.values())), "../", "' OR 1=1 --"],
                    }[name]
                ),
                json_values,
            )
        )
    extra = st.sampled_from(["crit", "cty", "jku", "jwk", "x5c", "b64", "zip"])
    for name in draw(st.lists(extra, max_size=2, unique=True)) if rarely(draw, 4) else ():
        header[name] = draw(json_values)
    return header


@st.composite
def tokens(draw: st.DrawFn) -> str:
    if rarely(draw, 12):
        return draw(st.text(alphabet="ab.-_=+/~", max_size=60))
    if rarely(draw, 12):
        segments = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=6))
        return ".".join(b64(segment) for segment in segments)
    key = draw(st.sampled_from(SIGNERS))
    header, claims = draw(jose_headers(key)), draw(claim_sets())
    if rarely(draw, 9):
        signature = b64(draw(st.binary(max_size=80)))
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{signature}"
    return sign_with(header, claims, key)


@dataclass
class Case:
    """One generated message, with the token it carries (if any) for the checks after."""

    delivery: Delivery
    token: str | None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    token = mostly(draw, None, st.none(), odds=9) or draw(st.one_of(st.none(), tokens()))
    token = draw(tokens()) if token is None and draw(st.integers(0, 9)) else token
    action = mostly(draw, draw(st.sampled_from(ACTIONS)), texts)
    payload = mostly(
        draw, {}, st.one_of(st.dictionaries(texts, json_values, max_size=3), json_values)
    )
    body = mostly(
        draw,
        json.dumps({"action": action, "payload": payload}).encode(),
        st.one_of(
            st.binary(max_size=64), st.builds(lambda value: json.dumps(value).encode(), json_values)
        ),
    )
    message_id = mostly(draw, "m1", st.one_of(st.none(), st.text(max_size=140)))
    headers: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), amqp_values, max_size=3))
    if token is not None:
        scheme = mostly(
            draw, "Bearer ", st.sampled_from(["bearer ", "BEARER  ", "Basic ", "", "DPoP "])
        )
        value: Any = scheme + token
        if draw(st.integers(0, 5)) == 0:
            value = value.encode()
        headers["authorization"] = value
    elif draw(st.booleans()):
        headers["authorization"] = draw(amqp_values)
    proof = draw(st.integers(0, 3))
    if proof <= 1 and token is not None and message_id:
        headers["x-warden-proof"] = PROOF_KEY.sign(
            token=token, message_id=message_id, action=action, queue="jobs", body=body
        )
    elif proof == 2:
        headers["x-warden-proof"] = draw(amqp_values)
    content_type = mostly(
        draw,
        "application/json",
        st.one_of(
            st.none(),
            st.sampled_from(["text/plain", "application/json; charset=utf-8"]),
            st.text(max_size=12),
        ),
    )
    return Case(
        Delivery(
            body=body,
            headers=headers,
            message_id=message_id,
            content_type=content_type,
            queue="jobs",
        ),
        token,
    )


# --- the property -----------------------------------------------------------------------------


def check_verdict(case: Case, verdict: object) -> None:
    if isinstance(verdict, Allowed):
        assert verdict.token.verified
        assert verdict.job.id == case.delivery.message_id
        assert verdict.spec.scopes <= verdict.job.principal.scopes
        assert_no_leak(repr(verdict), "an allowed verdict")
        return
    assert isinstance(verdict, Denied), repr(verdict)
    denial = verdict.denial
    assert denial.reason in errors.REASONS
    assert type(denial) is errors.REASONS[denial.reason]
    now = datetime.now(UTC)
    record = denial_record(
        verdict, case.delivery, exchange="", routing_key="jobs", worker="w", now=now
    )
    problems = [error.message for error in DENIAL.iter_errors(record)]
    assert problems == [], problems
    # On the wire, from a table of kept encodings shared by every case: the same record.
    sent = decoded(
        DENIALS.encoded(verdict, case.delivery, exchange="", routing_key="jobs", now=now)
    )
    assert sent == denial_headers(
        verdict, case.delivery, now, worker="w", exchange="", routing_key="jobs"
    )
    assert_no_leak(json.dumps(record, default=str) + repr(denial), "a denial")


def segment(token: str, index: int) -> Any:
    part = token.split(".")[index]
    return json.loads(urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def may_wait(case: Case, exc: errors.Unavailable, keys: MemoryKeys) -> None:
    """The one legitimate wait: a kid the issuer may have published since the last fetch."""
    assert isinstance(exc, errors.KeysUnavailable), repr(exc)
    assert_no_leak(str(exc), "a KeysUnavailable")
    assert case.token is not None
    header, claims = segment(case.token, 0), segment(case.token, 1)
    assert header["kid"] not in KIDS[claims["iss"]]
    fetched = keys.fetched_at(claims["iss"])
    assert fetched is not None
    assert type(claims["iat"]) in (int, float)
    assert fetched - 1 <= claims["iat"] <= time.time() + 30


def test_any_message_gets_a_verdict_from_the_closed_set(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_warden_environment(monkeypatch)
    keys = MemoryKeys(WORLD.issuer, WORLD.other)
    gate = make_gate(WORLD.issuer, WORLD.other, keys=keys, registry=REGISTRY)
    seen = 0

    with asyncio.Runner() as runner:

        @settings(max_examples=EXAMPLES, deadline=None)
        @given(cases())
        def decide(case: Case) -> None:
            nonlocal seen
            seen += 1
            try:
                verdict = runner.run(gate.decide(case.delivery))
            except errors.Unavailable as exc:
                event("waits")
                may_wait(case, exc, keys)
                return
            event("allowed" if isinstance(verdict, Allowed) else verdict.denial.reason)
            check_verdict(case, verdict)

        decide()
    assert seen >= EXAMPLES
