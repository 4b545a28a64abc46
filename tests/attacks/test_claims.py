"""Attacks on the JSON of header and claims: duplicate members (a later one must never override
what was checked), registered claims of the wrong type, hostile strings, and look-alike issuers."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.attacks.world import ALLOWED, Make, World, answers, attack
from tests.support.issuer import AUDIENCE, DROP
from worker.pipeline.decision import Gate


def with_member(obj: dict[str, Any], raw_member: str) -> bytes:
    """``obj`` as JSON with ``raw_member`` (``"name": value``) written in after its members."""
    return (json.dumps(obj)[:-1] + ", " + raw_member + "}").encode()


def duplicate_header(world: World, member: str) -> str:
    return world.sign(with_member(world.head(), member), world.claims())


def duplicate_claim(world: World, member: str, **claims: Any) -> str:
    return world.sign(world.head(), with_member(world.claims(**claims), member))


def nested_actors(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"agent-{depth}"}
    for level in range(depth - 1, 0, -1):
        act = {"sub": f"agent-{level}", "act": act}
    return act


ATTACKS: list[Any] = [
    # duplicates: refused as malformed, whichever value a parser would keep
    attack(
        "duplicate-kid-in-header",
        "token_malformed",
        lambda w: duplicate_header(w, f'"kid": "{w.ed.kid}"'),
    ),
    attack(
        "duplicate-alg-in-header", "token_malformed", lambda w: duplicate_header(w, '"alg": "none"')
    ),
    attack(
        "duplicate-typ-in-header", "token_malformed", lambda w: duplicate_header(w, '"typ": "JWT"')
    ),
    attack(
        "duplicate-scope-in-claims",
        "token_malformed",
        lambda w: duplicate_claim(w, '"scope": "admin"', scope="reports:read"),
    ),
    attack(
        "duplicate-iss-in-claims",
        "token_malformed",
        lambda w: duplicate_claim(w, '"iss": "https://evil.test"'),
    ),
    attack(
        "duplicate-aud-in-claims",
        "token_malformed",
        lambda w: duplicate_claim(w, '"aud": "https://elsewhere.test"'),
    ),
    attack(
        "duplicate-exp-in-claims",
        "token_malformed",
        lambda w: duplicate_claim(w, f'"exp": {int(time.time()) + 10**8}'),
    ),
    attack(
        "duplicate-sub-in-nested-act",
        "token_malformed",
        lambda w: w.sign(w.head(), with_member(w.claims(), '"act": {"sub": "a", "sub": "b"}')),
    ),
    attack(
        "duplicate-via-unicode-escape",
        "token_malformed",
        lambda w: duplicate_claim(w, '"sc\\u006fpe": "admin"', scope="reports:read"),
    ),
    # registered claims of the wrong type
    attack("exp-string", "token_malformed", lambda w: w.token(exp=str(int(time.time()) + 300))),
    # RFC 7519 section 2: a NumericDate need not be an integer, and a fraction buys no time.
    attack("exp-float", ALLOWED, lambda w: w.token(exp=int(time.time()) + 300.5)),
    attack("exp-float-passed", "token_expired", lambda w: w.token(exp=time.time() - 60.5)),
    attack("nbf-float-ahead", "token_not_yet_valid", lambda w: w.token(nbf=time.time() + 90.5)),
    attack("exp-bool", "token_malformed", lambda w: w.token(exp=True)),
    attack("exp-null", "token_malformed", lambda w: w.token(exp=None)),
    attack("exp-negative", "token_malformed", lambda w: w.token(exp=-1)),
    attack("exp-beyond-any-date", "token_malformed", lambda w: w.token(exp=10**20)),
    attack("iat-string", "token_malformed", lambda w: w.token(iat=str(int(time.time())))),
    attack("nbf-array", "token_malformed", lambda w: w.token(nbf=[int(time.time())])),
    attack("aud-object", "token_malformed", lambda w: w.token(aud={"aud": AUDIENCE})),
    attack("aud-array-with-a-number", "token_malformed", lambda w: w.token(aud=[AUDIENCE, 7])),
    attack("scope-number", "token_malformed", lambda w: w.token(scope=7)),
    attack("scope-array", "token_malformed", lambda w: w.token(scope=["admin"])),
    attack("scp-object", "token_malformed", lambda w: w.token(scp={"admin": True})),
    attack("sub-number", "token_malformed", lambda w: w.token(sub=1)),
    attack(
        "iss-array", "token_malformed", lambda w: w.sign(w.head(), w.claims(iss=[w.issuer.url]))
    ),
    attack("act-string", "token_malformed", lambda w: w.token(act="agent-x")),
    attack("act-without-sub", "token_malformed", lambda w: w.token(act={"client_id": "agent-x"})),
    attack(
        "nested-act-not-an-object",
        "token_malformed",
        lambda w: w.token(act={"sub": "agent-x", "act": "agent-y"}),
    ),
    attack("act-chain-of-33", "token_malformed", lambda w: w.token(act=nested_actors(33))),
    attack("cnf-string", "token_malformed", lambda w: w.token(cnf="thumbprint")),
    attack("cnf-jkt-number", "token_malformed", lambda w: w.token(cnf={"jkt": 7})),
    attack("kid-number", "token_malformed", lambda w: w.sign(w.head(kid=7), w.claims())),
    attack("typ-array", "token_malformed", lambda w: w.sign(w.head(typ=["at+jwt"]), w.claims())),
    attack("alg-array", "token_malformed", lambda w: w.sign(w.head(alg=["RS256"]), w.claims())),
    attack("crit-string", "token_malformed", lambda w: w.sign(w.head(crit="exp"), w.claims())),
    # strings no dead letter could carry
    attack("sub-lone-surrogate", "token_malformed", lambda w: w.token(sub="svc-\ud800")),
    attack("act-sub-lone-surrogate", "token_malformed", lambda w: w.token(act={"sub": "\udfff"})),
    attack(
        "act-members-no-dead-letter-could-carry",
        "issuer_untrusted",
        lambda w: w.token(
            iss="https://evil.test",
            act={"sub": "agent-x", "n": 10**30, "k" * 300: 1, "act": {"sub": "y", "f": [{}]}},
        ),
    ),
    attack("claims-nan", "token_malformed", lambda w: w.sign(w.head(), b'{"exp": NaN}')),
    attack("claims-not-utf8", "token_malformed", lambda w: w.sign(w.head(), b"\xff\xfe{}")),
    # look-alike issuers
    attack("iss-trailing-slash", "issuer_untrusted", lambda w: w.token(iss=w.issuer.url + "/")),
    attack(
        "iss-without-trailing-path",
        "issuer_untrusted",
        lambda w: w.token(iss=w.issuer.url.rsplit("/", 1)[0]),
    ),
    attack("iss-upper-case", "issuer_untrusted", lambda w: w.token(iss=w.issuer.url.upper())),
    attack(
        "iss-host-in-other-case",
        "issuer_untrusted",
        lambda w: w.token(iss=w.issuer.url.replace("issuer.test", "ISSUER.test")),
    ),
    attack("iss-trailing-space", "issuer_untrusted", lambda w: w.token(iss=w.issuer.url + " ")),
    attack(
        "iss-http-for-https",
        "issuer_untrusted",
        lambda w: w.token(iss=w.issuer.url.replace("https:", "http:")),
    ),
    attack(
        "iss-dot-segments",
        "issuer_untrusted",
        lambda w: w.token(iss=w.issuer.url + "/../" + w.issuer.url.rsplit("/", 1)[1]),
    ),
    attack("iss-missing", "issuer_untrusted", lambda w: w.token(iss=DROP)),
]


@pytest.mark.parametrize(("make", "reason"), ATTACKS)
async def test_claims_attacks(gate: Gate, world: World, make: Make, reason: str) -> None:
    await answers(gate, world, make, reason)


async def test_a_chain_of_32_actors_is_well_formed(gate: Gate, world: World) -> None:
    """The bound is on nesting, not on delegation: 32 actors parse (and are then refused by an
    action that allows no delegation)."""
    await answers(gate, world, lambda w: w.token(act=nested_actors(32)), "delegation_not_allowed")
