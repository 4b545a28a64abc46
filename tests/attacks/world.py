"""The attacker's world: two trusted issuers, their keys, an attacker's key, and hostile messages.

An attack is a function of a :class:`World` returning the :class:`Hostile` message it sends (or
just its token), paired with the reason code warden must answer. The same attack runs against
the decision with an in-memory key store (the world of :data:`WORLD`) and, for a representative
subset, through RabbitMQ against a worker whose issuers are served over HTTP
(``test_end_to_end.py`` builds its world with the same keys under the JWKS server's URLs).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tests.support.decision import assert_allowed, assert_denied, delivery, job_body
from tests.support.issuer import DROP, Issuer, SigningKey
from tests.support.issuer import sign as sign_with
from worker.pipeline.decision import Gate
from worker.pipeline.delivery import Delivery

ALLOWED = "allowed"
"""Not a reason: the job must run (an attack that warden must shrug off, not refuse)."""

RS = SigningKey.generate("RS256")
PS = SigningKey.generate("PS256")
ES = SigningKey.generate("ES256")
ED = SigningKey.generate("EdDSA")
SHARED_A = SigningKey.generate("ES256", kid="shared-kid")
"""Issuer A's key under a kid that issuer B also uses for a key of its own."""
OTHER_RS = SigningKey.generate("RS256")
SHARED_B = SigningKey.generate("ES256", kid="shared-kid")
ATTACKER = SigningKey.generate("RS256", kid="attacker-1")

ISSUER_KEYS = (SHARED_A, PS, ES, ED, RS)
"""Issuer A's JWKS; the last key (RS256) signs by default."""
OTHER_KEYS = (SHARED_B, OTHER_RS)
"""Issuer B's JWKS."""


def self_signed_der(key: SigningKey) -> bytes:
    """A self-signed X.509 certificate for ``key``, DER: what an ``x5c`` header would carry."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key.private, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


@dataclass
class World:
    """Issuer A (``issuer``) and issuer B (``other``), both trusted, and the attacker's key."""

    issuer: Issuer
    other: Issuer
    attacker: SigningKey = field(default_factory=lambda: ATTACKER)

    @classmethod
    def at(cls, issuer_url: str, other_url: str) -> World:
        return cls(Issuer(issuer_url, list(ISSUER_KEYS)), Issuer(other_url, list(OTHER_KEYS)))

    @property
    def rs(self) -> SigningKey:
        return RS

    @property
    def ps(self) -> SigningKey:
        return PS

    @property
    def es(self) -> SigningKey:
        return ES

    @property
    def ed(self) -> SigningKey:
        return ED

    def token(self, **kwargs: Any) -> str:
        """An access token of issuer A that passes every check."""
        return self.issuer.token(**kwargs)

    def earlier(self, **kwargs: Any) -> str:
        """A token issued two minutes before the keys were fetched: an unknown ``kid`` in it
        is a verdict (``key_unknown``), not a key the issuer may have published since."""
        return self.issuer.token(iat=int(time.time()) - 120, **kwargs)

    def head(self, key: SigningKey = RS, **extra: Any) -> dict[str, Any]:
        """The header issuer A puts on an access token signed with ``key``, and ``extra``."""
        header = {"alg": key.alg, "typ": "at+jwt", "kid": key.kid, **extra}
        return {name: value for name, value in header.items() if value is not DROP}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        return self.issuer.claims(**overrides)

    def sign(self, header: Any, claims: Any, key: SigningKey = RS, alg: str | None = None) -> str:
        """A compact JWS over exactly ``header`` and ``claims`` (dicts or raw JSON bytes)."""
        return sign_with(header, claims, key, alg)


@dataclass
class Hostile:
    """A message as the attacker sends it: a token (or none), a body, more headers."""

    token: str | None
    body: bytes = field(default_factory=job_body)
    headers: dict[str, Any] = field(default_factory=dict)

    def all_headers(self) -> dict[str, Any]:
        headers = dict(self.headers)
        if self.token is not None:
            headers.setdefault("authorization", f"Bearer {self.token}")
        return headers

    def delivery(self) -> Delivery:
        return delivery(self.token, content=self.body, headers=self.all_headers())


Make = Callable[[World], "Hostile | str"]


def attack(name: str, reason: str, make: Make) -> Any:
    """One case: the attack's name (the test id), the reason warden must answer, the message."""
    return pytest.param(make, reason, id=name)


def hostile(make: Make, world: World) -> Hostile:
    made = make(world)
    return made if isinstance(made, Hostile) else Hostile(made)


async def answers(gate: Gate, world: World, make: Make, reason: str) -> None:
    """The gate's verdict on the attack is exactly ``reason`` (or lets the job run), in bounded
    time, and no denial shows the token."""
    message = hostile(make, world)
    started = time.perf_counter()
    verdict = await gate.decide(message.delivery())
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"deciding took {elapsed:.1f} s"
    if reason == ALLOWED:
        assert message.token is not None
        assert_allowed(verdict, message.token)
    else:
        assert_denied(verdict, reason, message.token)


WORLD = World.at("https://issuer.test/realms/main", "https://other-issuer.test/realms/b")
"""The world of the decision-level runs: issuers held in memory."""
