"""Signing keys of the development issuer: generated in memory, never written anywhere."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", *_CURVES, "EdDSA")
"""What :meth:`SigningKey.generate` can make a key for."""


@dataclass
class SigningKey:
    """A private key with its ``kid`` and the algorithm it signs with."""

    kid: str
    alg: str
    private: Any = field(repr=False)

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        """A fresh key for ``alg`` (RSA keys of 2048 bits); ``kid`` defaults to a random one."""
        kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        if alg.startswith(("RS", "PS")) and alg in ALGORITHMS:
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg in _CURVES:
            private = ec.generate_private_key(_CURVES[alg]())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"no key for {alg!r}: one of {', '.join(ALGORITHMS)}")
        return cls(kid, alg, private)

    def public_jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        """The public key as a JWK with ``kid``, ``use: sig`` and (by default) ``alg``."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        jwk.update(kid=self.kid, use="sig")
        if with_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo)."""
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
