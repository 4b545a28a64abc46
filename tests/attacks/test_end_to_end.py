"""A representative subset of the attacks through RabbitMQ: each lands in ``<queue>.dlq`` with
its reason, a denial record valid against the schema, the body byte for byte, and no token.

The worker trusts two issuers served over HTTP with the same keys as the decision-level world,
so every attack is the very function the decision-level tests run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.attacks import (
    test_algorithms,
    test_claims,
    test_confusion,
    test_key_injection,
    test_resources,
    test_structure,
)
from tests.attacks.world import ALLOWED, ISSUER_KEYS, OTHER_KEYS, Make, World, hostile
from tests.support.actions import ran
from tests.support.issuer import Issuer, JwksServer
from tests.support.leaks import assert_no_leak
from tests.support.rabbit import Rabbit
from tests.support.schemas import DENIAL

pytestmark = pytest.mark.broker


FAMILIES = (
    test_algorithms,
    test_key_injection,
    test_structure,
    test_claims,
    test_confusion,
    test_resources,
)
CATALOGUE: dict[str, tuple[Make, str]] = {
    param.id: param.values for module in FAMILIES for param in module.ATTACKS
}

THROUGH_RABBITMQ = [
    "alg-none",
    "alg-NONE",
    "hs256-keyed-with-issuer-public-pem",
    "es256-over-an-rsa-kid",
    "unknown-crit-header",
    "b64-false-with-crit",
    "jku-to-attacker-jwks",
    "x5c-embedded-attacker-cert",
    "kid-path-traversal",
    "kid-sql-union",
    "issuer-a-key-for-a-token-claiming-issuer-b",
    "issuer-a-key-under-a-kid-issuer-b-also-uses",
    "jwe-five-segments",
    "nested-jwt-cty-jwt",
    "empty-signature-rs256",
    "stripped-signature-two-segments",
    "signature-over-a-header-with-another-typ",
    "duplicate-kid-in-header",
    "duplicate-scope-in-claims",
    "exp-string",
    "aud-object",
    "scope-number",
    "iss-trailing-slash",
    "iss-upper-case",
    "sub-lone-surrogate",
    "act-members-no-dead-letter-could-carry",
    "id-token-typ-jwt-with-nonce",
    "access-token-for-another-resource",
    "token-just-over-8192-bytes",
    "deeply-nested-json-body",
    "non-utf8-body",
    "body-with-a-lone-surrogate",
    "10000-headers-and-alg-none",
    "10000-headers-token-under-another-name",
    "10000-headers-and-a-good-token",
]


def test_the_subset_names_attacks_of_the_catalogue() -> None:
    assert set(THROUGH_RABBITMQ) <= CATALOGUE.keys()
    families = {
        module: any(p.id in THROUGH_RABBITMQ for p in module.ATTACKS) for module in FAMILIES
    }
    assert all(families.values()), families


async def test_attacks_through_rabbitmq(
    start_worker: Any, rabbit: Rabbit, jwks: JwksServer, issuer: Issuer, queue_name: str
) -> None:
    issuer.keys[:] = list(ISSUER_KEYS)
    other = jwks.issuer("other", *OTHER_KEYS)
    world = World(issuer, other)
    await start_worker(issuers=[{"issuer": other.url}])

    sent: dict[str, tuple[str, Any]] = {}
    allowed: list[str] = []
    for name in THROUGH_RABBITMQ:
        make, reason = CATALOGUE[name]
        message = hostile(make, world)
        mid = await rabbit.publish(
            queue_name, message.body, token=message.token, headers=message.headers
        )
        assert mid is not None
        if reason == ALLOWED:
            allowed.append(mid)
        else:
            sent[mid] = (name, (reason, message))

    letters = await rabbit.dead_letters(queue_name, len(sent), timeout=30)
    jobs = await ran.wait_for(len(allowed))

    assert sorted(job.id for job in jobs) == sorted(allowed)
    assert {letter.message_id for letter in letters} == sent.keys()
    for letter in letters:
        name, (reason, message) = sent[letter.message_id or ""]
        headers = dict(letter.headers)
        assert headers["x-warden-reason"] == reason, name
        assert letter.routing_key == f"{reason}.{queue_name}"
        record = headers["x-warden-denial"]
        problems = [error.message for error in DENIAL.iter_errors(record)]
        assert problems == [], (name, problems)
        assert letter.body == message.body, name
        assert "authorization" not in {header.lower() for header in headers}, name
        assert_no_leak(repr(headers), f"the dead letter of {name}")
        assert_no_leak(json.dumps(record, default=str), f"the denial record of {name}")
    assert await rabbit.depth(queue_name) == 0
