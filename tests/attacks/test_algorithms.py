"""Attacks on the algorithm: ``none``, HMAC keyed with the public key, an ``alg`` the key does not
fit, and JWS extensions (``crit``, ``b64``) that would change what the signature covers."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from tests.attacks.world import Make, World, answers, attack
from tests.support.issuer import DROP, b64, encoded, unsigned
from tests.support.leaks import minted
from worker.pipeline.decision import Gate


def hmac_keyed_with(secret: bytes, alg: str, world: World) -> str:
    """The algorithm-confusion attack: an HMAC whose key is something public of the issuer's."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signing_input = (
        f"{b64(encoded(world.head(alg=alg)))}.{b64(encoded(world.claims(scope='admin')))}"
    )
    mac = hmac.new(secret, signing_input.encode(), digest).digest()
    return minted(f"{signing_input}.{b64(mac)}")


def public_pem(world: World) -> bytes:
    return world.rs.public_pem()


def public_jwk(world: World) -> bytes:
    return json.dumps(world.rs.public_jwk()).encode()


def unencoded_payload(world: World, detached: bool = False) -> str:
    """RFC 7797: ``b64: false`` signs the payload as it is, not its base64url."""
    header = world.head(b64=False, crit=["b64"]) if detached else world.head(b64=False)
    header_b64 = b64(encoded(header))
    payload = json.dumps(world.claims(scope="admin"))
    signed = world.sign(header, b"{}")  # any signature: the point is what warden makes of it
    signature = signed.rsplit(".", 1)[1]
    return minted(f"{header_b64}.{'' if detached else payload}.{signature}")


ATTACKS: list[Any] = [
    # alg none, in every spelling
    attack("alg-none", "algorithm_not_allowed", lambda w: unsigned(w.head(alg="none"), w.claims())),
    attack("alg-None", "algorithm_not_allowed", lambda w: unsigned(w.head(alg="None"), w.claims())),
    attack("alg-NONE", "algorithm_not_allowed", lambda w: unsigned(w.head(alg="NONE"), w.claims())),
    attack(
        "alg-nOnE-without-kid",
        "algorithm_not_allowed",
        lambda w: unsigned(w.head(alg="nOnE", kid=DROP), w.claims()),
    ),
    attack(
        "alg-none-with-a-signature",
        "algorithm_not_allowed",
        lambda w: unsigned(w.head(alg="none"), w.claims(), b"\x00" * 32),
    ),
    attack(
        "alg-none-untrusted-issuer",
        "algorithm_not_allowed",
        lambda w: unsigned(w.head(alg="none"), w.claims(iss="https://evil.test")),
    ),
    attack(
        "alg-missing", "algorithm_not_allowed", lambda w: unsigned(w.head(alg=DROP), w.claims())
    ),
    attack("alg-empty", "algorithm_not_allowed", lambda w: unsigned(w.head(alg=""), w.claims())),
    # HMAC keyed with what the issuer publishes
    attack(
        "hs256-keyed-with-issuer-public-pem",
        "algorithm_not_allowed",
        lambda w: hmac_keyed_with(public_pem(w), "HS256", w),
    ),
    attack(
        "hs384-keyed-with-issuer-public-pem",
        "algorithm_not_allowed",
        lambda w: hmac_keyed_with(public_pem(w), "HS384", w),
    ),
    attack(
        "hs512-keyed-with-issuer-public-pem",
        "algorithm_not_allowed",
        lambda w: hmac_keyed_with(public_pem(w), "HS512", w),
    ),
    attack(
        "hs256-keyed-with-issuer-public-jwk",
        "algorithm_not_allowed",
        lambda w: hmac_keyed_with(public_jwk(w), "HS256", w),
    ),
    attack(
        "hs256-keyed-with-issuer-modulus",
        "algorithm_not_allowed",
        lambda w: hmac_keyed_with(w.rs.public_jwk()["n"].encode(), "HS256", w),
    ),
    # an alg the key's type does not fit
    attack(
        "es256-over-an-rsa-kid",
        "algorithm_not_allowed",
        lambda w: w.sign(w.head(w.es, kid=w.rs.kid), w.claims(), w.es),
    ),
    attack(
        "eddsa-over-an-ec-kid",
        "algorithm_not_allowed",
        lambda w: w.sign(w.head(w.ed, kid=w.es.kid), w.claims(), w.ed),
    ),
    attack(
        "rs256-over-an-okp-kid",
        "algorithm_not_allowed",
        lambda w: w.sign(w.head(w.rs, kid=w.ed.kid), w.claims(), w.rs),
    ),
    attack(
        "ps256-over-a-jwk-that-says-rs256",
        "algorithm_not_allowed",
        lambda w: w.sign(w.head(w.rs, alg="PS256"), w.claims(), w.rs, alg="PS256"),
    ),
    attack(
        "rs256-over-a-jwk-that-says-ps256",
        "algorithm_not_allowed",
        lambda w: w.sign(w.head(w.ps, alg="RS256"), w.claims(), w.ps, alg="RS256"),
    ),
    attack("rs512-not-in-the-allow-list", "algorithm_not_allowed", lambda w: w.token(alg="RS512")),
    attack(
        "alg-in-lower-case",
        "algorithm_not_allowed",
        lambda w: w.sign(w.head(alg="rs256"), w.claims(), alg="RS256"),
    ),
    # extensions that change what is signed
    attack(
        "unknown-crit-header",
        "token_type_invalid",
        lambda w: w.sign({**w.head(crit=["urn:example:ext"]), "urn:example:ext": 1}, w.claims()),
    ),
    attack(
        "crit-naming-a-registered-header",
        "token_type_invalid",
        lambda w: w.sign(w.head(crit=["exp"], exp=1), w.claims()),
    ),
    attack(
        "empty-crit-header", "token_type_invalid", lambda w: w.sign(w.head(crit=[]), w.claims())
    ),
    attack(
        "b64-false-with-crit",
        "token_type_invalid",
        lambda w: w.sign(w.head(b64=False, crit=["b64"]), w.claims()),
    ),
    attack("b64-false-unencoded-payload", "token_malformed", unencoded_payload),
    attack(
        "b64-false-detached-payload",
        "token_malformed",
        lambda w: unencoded_payload(w, detached=True),
    ),
]


@pytest.mark.parametrize(("make", "reason"), ATTACKS)
async def test_algorithm_attacks(gate: Gate, world: World, make: Make, reason: str) -> None:
    await answers(gate, world, make, reason)


async def test_an_allowed_algorithm_the_key_does_not_fit_is_still_refused(world: World) -> None:
    """RS512 allowed by configuration, over a JWK that says RS256: the key decides."""
    from tests.support.decision import MemoryKeys, make_gate

    gate = make_gate(
        world.issuer,
        world.other,
        keys=MemoryKeys(world.issuer, world.other),
        algorithms="RS256,RS512",
    )
    await answers(gate, world, lambda w: w.token(alg="RS512"), "algorithm_not_allowed")
    await answers(gate, world, lambda w: w.token(alg="RS256"), "allowed")
