"""Attacks on key selection: keys offered by the token itself (``jku``, ``x5u``, ``jwk``,
``x5c``), hostile ``kid`` values, and one trusted issuer's key used for another's tokens.

Keys come from the token's issuer's JWKS and nowhere else, by exact ``kid``. Tokens naming a
``kid`` the issuer does not have are issued before the keys were fetched, so the answer is
``key_unknown`` after one refetch, not a wait for a key the issuer may have published since.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from tests.attacks.world import ATTACKER, SHARED_A, Make, World, answers, attack, self_signed_der
from tests.support.decision import MemoryKeys
from tests.support.issuer import DROP
from worker.pipeline.decision import Gate

JKU = "https://attacker.example/jwks.json"
X5U = "https://attacker.example/cert.pem"


def offered(world: World, kid: Any, **header: Any) -> str:
    """Signed by the attacker, with ``header`` pointing at the attacker's key."""
    return world.earlier(key=ATTACKER, header={"kid": kid, **header}, scope="admin reports:write")


def x5c(world: World) -> list[str]:
    return [base64.b64encode(self_signed_der(world.attacker)).decode()]


ATTACKS: list[Any] = [
    attack("jku-to-attacker-jwks", "key_unknown", lambda w: offered(w, ATTACKER.kid, jku=JKU)),
    attack("x5u-to-attacker-cert", "key_unknown", lambda w: offered(w, ATTACKER.kid, x5u=X5U)),
    attack(
        "jwk-embedded-attacker-key",
        "key_unknown",
        lambda w: offered(w, ATTACKER.kid, jwk=ATTACKER.public_jwk()),
    ),
    attack(
        "x5c-embedded-attacker-cert", "key_unknown", lambda w: offered(w, ATTACKER.kid, x5c=x5c(w))
    ),
    attack(
        "jwk-embedded-without-kid",
        "key_unknown",
        lambda w: w.sign(
            w.head(ATTACKER, kid=DROP, jwk=ATTACKER.public_jwk()), w.claims(), ATTACKER
        ),
    ),
    attack(
        "x5c-embedded-without-kid",
        "key_unknown",
        lambda w: w.sign(w.head(ATTACKER, kid=DROP, x5c=x5c(w)), w.claims(), ATTACKER),
    ),
    attack(
        "jku-and-jwk-with-the-issuers-kid",
        "signature_invalid",
        lambda w: offered(w, w.rs.kid, jku=JKU, jwk=ATTACKER.public_jwk()),
    ),
    attack(
        "x5c-with-the-issuers-kid", "signature_invalid", lambda w: offered(w, w.rs.kid, x5c=x5c(w))
    ),
    attack(
        "kid-path-traversal",
        "key_unknown",
        lambda w: w.earlier(header={"kid": "../../../../../../dev/null"}),
    ),
    attack("kid-absolute-path", "key_unknown", lambda w: w.earlier(header={"kid": "/etc/passwd"})),
    attack(
        "kid-path-with-nul", "key_unknown", lambda w: w.earlier(header={"kid": "keys/rs\x00.pem"})
    ),
    attack("kid-sql-tautology", "key_unknown", lambda w: w.earlier(header={"kid": "' OR '1'='1"})),
    attack(
        "kid-sql-union",
        "key_unknown",
        lambda w: w.earlier(header={"kid": "x' UNION SELECT 'secret' AS k --"}),
    ),
    attack(
        "kid-command-injection", "key_unknown", lambda w: w.earlier(header={"kid": "k|rm -rf /;"})
    ),
    attack(
        "kid-url-to-attacker",
        "key_unknown",
        lambda w: w.earlier(key=ATTACKER, header={"kid": JKU + "#attacker-1"}),
    ),
    attack(
        "kid-prefix-of-a-real-kid",
        "key_unknown",
        lambda w: w.earlier(header={"kid": w.rs.kid[:-1]}),
    ),
    attack(
        "kid-in-other-case", "key_unknown", lambda w: w.earlier(header={"kid": w.rs.kid.upper()})
    ),
    attack(
        "issuer-a-key-for-a-token-claiming-issuer-b",
        "key_unknown",
        lambda w: w.issuer.token(iss=w.other.url, iat=int(time.time()) - 120),
    ),
    attack(
        "issuer-b-key-for-a-token-claiming-issuer-a",
        "key_unknown",
        lambda w: w.other.token(iss=w.issuer.url, iat=int(time.time()) - 120),
    ),
    attack(
        "issuer-a-key-under-a-kid-issuer-b-also-uses",
        "signature_invalid",
        lambda w: w.issuer.token(key=SHARED_A, iss=w.other.url),
    ),
]


@pytest.mark.parametrize(("make", "reason"), ATTACKS)
async def test_key_injection(gate: Gate, world: World, make: Make, reason: str) -> None:
    await answers(gate, world, make, reason)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"jku": JKU}, id="jku"),
        pytest.param({"x5u": X5U}, id="x5u"),
        pytest.param({"jwk": ATTACKER.public_jwk()}, id="jwk"),
        pytest.param({"x5c": ["MIIB"]}, id="x5c"),
    ],
)
async def test_key_headers_are_ignored_on_an_honest_token(
    gate: Gate, world: World, header: dict[str, Any]
) -> None:
    """Never used to find keys: an honest token that carries one verifies with the JWKS key."""
    await answers(gate, world, lambda w: w.token(header=header), "allowed")


async def test_an_unknown_kid_costs_one_refetch_and_nothing_else(
    gate: Gate, keys: MemoryKeys, world: World
) -> None:
    await answers(gate, world, lambda w: offered(w, ATTACKER.kid, jku=JKU), "key_unknown")
    assert keys.refetches == [world.issuer.url]
