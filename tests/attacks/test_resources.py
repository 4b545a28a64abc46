"""Attacks on resources: oversized tokens and claims, deep JSON, bodies that are not UTF-8,
and thousands of headers. Each is answered with its reason, within seconds, without a crash."""

from __future__ import annotations

from typing import Any

import pytest

from tests.attacks.world import Hostile, Make, World, answers, attack
from tests.support.decision import job_body
from tests.support.issuer import AUDIENCE, unsigned
from tests.support.leaks import minted
from worker.pipeline.decision import Gate

NESTED = b"[" * 100_000 + b"]" * 100_000


def many_headers(count: int, **extra: Any) -> dict[str, Any]:
    """``count`` headers with short names, as many as one AMQP frame can carry."""
    return {f"h{i:04x}": True for i in range(count)} | extra


ATTACKS: list[Any] = [
    attack("one-megabyte-token", "token_malformed", lambda w: w.token(padding="x" * 1_000_000)),
    attack("token-just-over-8192-bytes", "token_malformed", lambda w: w.token(padding="x" * 6200)),
    attack(
        "aud-of-100000-elements",
        "token_malformed",
        lambda w: w.token(aud=[f"https://r{i}.example" for i in range(100_000)] + [AUDIENCE]),
    ),
    attack("100000-dots", "token_malformed", lambda w: minted("." * 100_000)),
    attack(
        "deeply-nested-claims",
        "token_malformed",
        lambda w: w.sign(w.head(), b'{"x": ' + b"[" * 2500 + b"]" * 2500 + b"}"),
    ),
    attack(
        "deeply-nested-header",
        "token_malformed",
        lambda w: w.sign(b'{"x": ' + b"[" * 2500 + b"]" * 2500 + b"}", w.claims()),
    ),
    attack(
        "deeply-nested-json-body",
        "malformed_message",
        lambda w: Hostile(w.token(), body=NESTED),
    ),
    attack(
        "deeply-nested-json-in-payload",
        "malformed_message",
        lambda w: Hostile(
            w.token(), body=b'{"action": "reports.generate", "payload": {"a": ' + NESTED + b"}}"
        ),
    ),
    attack(
        "non-utf8-body",
        "malformed_message",
        lambda w: Hostile(
            w.token(), body=b'{"action": "reports.generate", "payload": {"x": "\xff\xfe"}}'
        ),
    ),
    attack(
        "latin1-body",
        "malformed_message",
        lambda w: Hostile(
            w.token(),
            body='{"action": "reports.generate", "payload": {"x": "é"}}'.encode("latin-1"),
        ),
    ),
    attack(
        "utf16-body",
        "malformed_message",
        lambda w: Hostile(w.token(), body=job_body().decode().encode("utf-16")),
    ),
    attack(
        "body-with-a-lone-surrogate",
        "malformed_message",
        lambda w: Hostile(
            w.token(), body=b'{"action": "reports.generate", "payload": {"x": "\\ud800"}}'
        ),
    ),
    attack(
        "10000-headers-and-a-good-token",
        "allowed",
        lambda w: Hostile(w.token(), headers=many_headers(10_000)),
    ),
    attack(
        "10000-headers-and-alg-none",
        "algorithm_not_allowed",
        lambda w: Hostile(unsigned(w.head(alg="none"), w.claims()), headers=many_headers(10_000)),
    ),
    attack(
        "10000-headers-and-no-authorization",
        "token_missing",
        lambda w: Hostile(None, headers=many_headers(10_000)),
    ),
    attack(
        "10000-headers-token-under-another-name",
        "token_missing",
        lambda w: Hostile(None, headers=many_headers(10_000, Authorization=f"Bearer {w.token()}")),
    ),
]


@pytest.mark.parametrize(("make", "reason"), ATTACKS)
async def test_resource_attacks(gate: Gate, world: World, make: Make, reason: str) -> None:
    await answers(gate, world, make, reason)
