"""Token confusion: a JWT that is real and validly signed by the trusted issuer, but is not an
access token for this resource server (an ID token, a logout token, a DPoP or warden proof, a
client assertion, an access token for another resource)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.attacks.world import Make, World, answers, attack
from tests.support.decision import MemoryKeys, make_gate
from tests.support.issuer import DROP
from worker.pipeline.decision import Gate


def id_token(world: World, **header: Any) -> str:
    """An OpenID Connect ID token: ``typ: JWT``, ``aud`` the client, ``nonce``, no scope."""
    return world.token(
        header={"typ": "JWT", **header},
        aud="reports-web-client",
        nonce="n-0S6_WzA2Mj",
        azp="reports-web-client",
        auth_time=1_700_000_000,
        scope=DROP,
        client_id=DROP,
    )


ATTACKS: list[Any] = [
    attack("id-token-typ-jwt-with-nonce", "token_type_invalid", id_token),
    attack(
        "id-token-without-typ",
        "token_type_invalid",
        lambda w: w.sign(
            w.head(typ=DROP), w.claims(aud="reports-web-client", nonce="n-0S6_WzA2Mj")
        ),
    ),
    attack(
        "id-token-for-this-audience",
        "token_type_invalid",
        lambda w: w.token(header={"typ": "JWT"}, nonce="n-0S6_WzA2Mj"),
    ),
    attack("typ-jwt-lower-case", "token_type_invalid", lambda w: w.token(header={"typ": "jwt"})),
    attack("logout-token", "token_type_invalid", lambda w: w.token(header={"typ": "logout+jwt"})),
    attack("dpop-proof", "token_type_invalid", lambda w: w.token(header={"typ": "dpop+jwt"})),
    attack(
        "warden-proof-as-access-token",
        "token_type_invalid",
        lambda w: w.token(header={"typ": "warden-proof+jwt"}),
    ),
    attack(
        "client-assertion",
        "token_type_invalid",
        lambda w: w.token(header={"typ": "JWT"}, aud=w.issuer.url + "/token"),
    ),
    attack(
        "typ-with-a-parameter",
        "token_type_invalid",
        lambda w: w.token(header={"typ": "at+jwt; charset=x"}),
    ),
    attack(
        "access-token-for-another-resource",
        "audience_mismatch",
        lambda w: w.token(aud="https://payments.example/api"),
    ),
    attack(
        "access-token-for-several-other-resources",
        "audience_mismatch",
        lambda w: w.token(aud=["https://payments.example/api", "https://mail.example"]),
    ),
    attack(
        "access-token-for-a-look-alike-resource",
        "audience_mismatch",
        lambda w: w.token(aud=w.issuer.audience + "/"),
    ),
    attack("access-token-with-no-audience", "audience_mismatch", lambda w: w.token(aud=DROP)),
]


@pytest.mark.parametrize(("make", "reason"), ATTACKS)
async def test_confused_tokens(gate: Gate, world: World, make: Make, reason: str) -> None:
    await answers(gate, world, make, reason)


async def test_an_id_token_is_refused_even_by_an_issuer_that_accepts_typ_jwt(
    world: World,
) -> None:
    """Where an issuer's access tokens say ``typ: JWT`` (``accept_typ``), its ID tokens get past
    check 5, and are refused by their audience: the client, not this resource server."""
    gate = make_gate(
        world.issuer,
        world.other,
        keys=MemoryKeys(world.issuer, world.other),
        issuers=[{"issuer": world.issuer.url, "accept_typ": ["JWT"]}, {"issuer": world.other.url}],
    )
    await answers(gate, world, id_token, "audience_mismatch")
    await answers(gate, world, lambda w: w.token(header={"typ": "JWT"}), "allowed")
