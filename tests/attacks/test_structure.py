"""Attacks on the shape of the token: JWE and nested JWTs, missing, empty or borrowed
signatures, and headers swapped under a signature made for another."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.attacks.world import Make, World, answers, attack
from tests.support.issuer import b64, encoded
from tests.support.leaks import minted
from worker.pipeline.decision import Gate


def jwe(world: World) -> str:
    """An encrypted token (five segments): warden holds no decryption key and wants none."""
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "typ": "at+jwt", "kid": world.rs.kid}
    return minted(".".join([b64(encoded(header)), "a" * 342, "b" * 16, "c" * 100, "d" * 22]))


def nested(world: World) -> str:
    """RFC 7519 section 5.2: an outer JWS whose payload is a whole signed JWT."""
    inner = world.token(scope="admin")
    return world.sign(world.head(cty="JWT"), inner.encode())


def swapped_header(world: World, **changes: Any) -> str:
    """A real token's signature under a header it was not made for."""
    _, payload, signature = world.token().split(".")
    return minted(f"{b64(encoded(world.head(**changes)))}.{payload}.{signature}")


def header_reencoded(world: World) -> str:
    """The same header members, serialised with other whitespace: other bytes, same meaning."""
    _, payload, signature = world.token().split(".")
    header = json.dumps(world.head(), indent=2).encode()
    return minted(f"{b64(header)}.{payload}.{signature}")


def stripped(world: World) -> str:
    return minted(world.token().rsplit(".", 1)[0])


def empty_signature(world: World, key: Any) -> str:
    return minted(world.token(key=key).rsplit(".", 1)[0] + ".")


ATTACKS: list[Any] = [
    attack("jwe-five-segments", "token_malformed", jwe),
    attack(
        "jwe-with-a-jws-header",
        "token_malformed",
        lambda w: minted(w.token() + ".AAAA.BBBB"),
    ),
    attack("nested-jwt-cty-jwt", "token_malformed", nested),
    attack(
        "cty-jwt-over-plain-claims",
        "token_type_invalid",
        lambda w: w.sign(w.head(cty="JWT"), w.claims()),
    ),
    attack(
        "cty-application-jwt",
        "token_type_invalid",
        lambda w: w.sign(w.head(cty="application/jwt"), w.claims()),
    ),
    attack("stripped-signature-two-segments", "token_malformed", stripped),
    attack("empty-signature-rs256", "signature_invalid", lambda w: empty_signature(w, w.rs)),
    attack("empty-signature-es256", "signature_invalid", lambda w: empty_signature(w, w.es)),
    attack("empty-signature-eddsa", "signature_invalid", lambda w: empty_signature(w, w.ed)),
    attack(
        "signature-of-zero-bytes",
        "signature_invalid",
        lambda w: minted(w.token().rsplit(".", 1)[0] + "." + b64(b"\x00" * 256)),
    ),
    attack(
        "signature-over-a-header-with-another-typ",
        "signature_invalid",
        lambda w: swapped_header(w, typ="application/at+jwt"),
    ),
    attack(
        "signature-over-a-header-with-another-kid",
        "signature_invalid",
        lambda w: swapped_header(w, kid=w.ps.kid, alg="PS256"),
    ),
    attack(
        "signature-over-a-header-without-jku",
        "signature_invalid",
        lambda w: swapped_header(w, jku="https://attacker.example/jwks.json"),
    ),
    attack("signature-over-a-reencoded-header", "signature_invalid", header_reencoded),
    attack(
        "signature-of-another-token",
        "signature_invalid",
        lambda w: minted(
            w.token(scope="admin").rsplit(".", 1)[0] + "." + w.token().rsplit(".", 1)[1]
        ),
    ),
    # Cut to a whole number of base64 quanta, so the shorter signature is still canonical.
    attack("truncated-signature", "signature_invalid", lambda w: minted(w.token()[:-2])),
    attack("extended-signature", "signature_invalid", lambda w: minted(w.token() + "AAAA")),
    attack("padded-signature", "token_malformed", lambda w: minted(w.token() + "=")),
    attack(
        "standard-base64-alphabet",
        "token_malformed",
        lambda w: minted(w.token().replace("-", "+").replace("_", "/") + "+/"),
    ),
    attack("four-segments", "token_malformed", lambda w: minted(w.token() + ".")),
    attack("only-dots", "token_malformed", lambda w: ".."),
]


@pytest.mark.parametrize(("make", "reason"), ATTACKS)
async def test_structure_attacks(gate: Gate, world: World, make: Make, reason: str) -> None:
    await answers(gate, world, make, reason)
