"""Proof of possession for sender-constrained jobs: check 17 (``docs/proof-of-possession.md``).

An authorization server may bind an access token to its client's key: the token's ``cnf.jkt`` is
the RFC 7638 SHA-256 thumbprint of that key, as in DPoP (RFC 9449). A job carrying such a token
must then carry, in its ``x-warden-proof`` header, a compact JWS signed with that key over the
job itself: header ``typ: warden-proof+jwt``, an asymmetric ``alg`` of the issuer's allow-list and
the public ``jwk``; claims ``iat``, ``ath`` (base64url SHA-256 of the access token), ``mid`` (the
``message_id``), ``action``, ``queue`` (the queue it was published for) and ``bh`` (base64url
SHA-256 of the body bytes). Whoever copies the token out of a queue, a log or a dead letter
cannot sign a proof, and a copied proof covers one message id and one body: replaying the
message can only ever be the same job again, which the action's idempotency key dedupes.

There is no maximum age: a proof covers exactly one job, which may wait in its queue, in retry
queues and behind a stopped worker for as long as the broker keeps it, and is bounded by the
token's own ``exp``. Only an ``iat`` in the future beyond the leeway is refused.

:func:`check_proof` is the verifier, pure like the rest of the decision. :class:`ProofKey` is the
publisher's side (``warden publish --proof-key``): it only ever signs proofs with the publisher's
own key, never an access token (only the development issuer, :mod:`worker.devissuer`, mints
those, for demos and tests).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from base64 import urlsafe_b64encode
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import PyJWTError

from worker import errors
from worker.auth.tokens import VERIFIERS, VerificationKey, decode_segment, json_object, shown
from worker.names import HEADER_PROOF

PROOF_TYPES = frozenset({"warden-proof+jwt", "application/warden-proof+jwt"})
"""``typ`` of a proof, compared without regard to case as media types are."""

MAX_PROOF_BYTES = 8192
"""A longer ``x-warden-proof`` is refused unread (an RSA-4096 proof is about 2,500 bytes)."""

MIN_RSA_BITS = 2048
"""Smaller RSA keys are refused for proofs, and by :meth:`ProofKey.from_pem` (RFC 8725 sec. 3.5)."""

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_THUMBPRINT_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
"""RFC 7638 section 3.2: the required members of each key type, in lexicographic order."""
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_CHECKED_CONFIRMATIONS = frozenset({"jkt"})
"""``cnf`` members warden can check. Any other (``x5t#S256``, ``jwk``, ``kid`` ...) is refused."""


def b64url_sha256(data: bytes) -> str:
    """base64url, unpadded, of the SHA-256 of ``data`` (``ath``, ``bh``, thumbprints)."""
    return urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK: what ``cnf.jkt`` holds.

    Raises ValueError when the JWK is not an RSA, EC or OKP key with string members.
    """
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("kty is not RSA, EC or OKP")
    values = {name: jwk.get(name) for name in members}
    if not all(isinstance(v, str) and v for v in values.values()):
        raise ValueError(f"a {kty} key needs the string members {', '.join(members)}")
    canonical = json.dumps(values, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url_sha256(canonical.encode("utf-8"))


def _proof_text(value: object, max_bytes: int) -> bytes:
    if value is None:
        raise errors.ProofInvalid(
            "the token is sender-constrained (cnf.jkt) but the message has no x-warden-proof"
        )
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes):
        raise errors.ProofInvalid(f"{HEADER_PROOF} is not a string")
    if len(value) > max_bytes:
        raise errors.ProofInvalid(f"{HEADER_PROOF} is {len(value)} bytes, more than {max_bytes}")
    return value


def _public_key(jwk: Mapping[str, Any], alg: str) -> Any:
    """The public key of the proof's ``jwk``, if it is one that may sign with ``alg``."""
    private = _PRIVATE_MEMBERS & jwk.keys()
    if private:
        raise errors.ProofInvalid(
            "the proof's jwk holds private key members: " + " ".join(sorted(private))
        )
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None or not isinstance(kty, str):
        raise errors.ProofInvalid(f"the proof's jwk has kty {shown(kty)}, not RSA, EC or OKP")
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise errors.ProofInvalid(f"the proof's jwk member {name!r} is not a string")
        if name not in ("kty", "crv") and not _BASE64URL.fullmatch(value):
            raise errors.ProofInvalid(f"the proof's jwk member {name!r} is not base64url")
    crv, jwk_alg = jwk.get("crv"), jwk.get("alg")
    if jwk_alg is not None and not isinstance(jwk_alg, str):
        raise errors.ProofInvalid("the proof's jwk alg is not a string")
    try:
        key = VERIFIERS[alg].from_jwk(dict(jwk))
    except (PyJWTError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        raise errors.ProofInvalid("the proof's jwk is not a usable public key") from None
    if not VerificationKey("proof", kty, crv, jwk_alg, key).fits(alg):
        raise errors.ProofInvalid(f"alg {alg!r} does not fit the proof's jwk ({kty})")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise errors.ProofInvalid(f"the proof's RSA key has fewer than {MIN_RSA_BITS} bits")
    return key


def check_proof(
    claims: Mapping[str, Any],
    token: str,
    proof: object,
    *,
    message_id: str,
    action: str,
    queue: str,
    body: bytes,
    algorithms: Collection[str],
    leeway: int,
    now: float,
    max_bytes: int = MAX_PROOF_BYTES,
) -> None:
    """Check 17: return when the token needs no proof or ``proof`` proves the job; else deny.

    ``claims`` are the access token's verified claims and ``token`` its text; ``proof`` is the
    ``x-warden-proof`` header as it came (str, bytes, None or anything else); ``queue`` is the
    work queue the message was consumed from; ``algorithms`` the issuer's allow-list. Raises
    :class:`~worker.errors.ProofInvalid`, whose detail never holds the token or the proof.
    """
    cnf = claims.get("cnf")
    if cnf is None:
        return
    jkt = _bound_key(cnf)
    payload = _verified_payload(_proof_text(proof, max_bytes), jkt, algorithms)
    iat = payload.get("iat")
    if type(iat) is not int:
        raise errors.ProofInvalid("the proof's iat is not an integer NumericDate")
    if iat - leeway > now:
        raise errors.ProofInvalid(f"the proof's iat {iat} is in the future")
    expected = {
        "ath": (b64url_sha256(token.encode("ascii", "replace")), "the access token"),
        "mid": (message_id, "the message_id"),
        "action": (action, "the job's action"),
        "queue": (queue, f"the queue {queue!r}"),
        "bh": (b64url_sha256(body), "the body"),
    }
    for name, (value, what) in expected.items():
        claimed = payload.get(name)
        if claimed is None:
            raise errors.ProofInvalid(f"the proof has no {name}")
        if claimed != value:
            raise errors.ProofInvalid(f"the proof's {name} is not for {what}")


def _bound_key(cnf: object) -> str:
    """The ``jkt`` of a ``cnf`` claim that warden can check entirely."""
    if not isinstance(cnf, Mapping):
        raise errors.ProofInvalid("cnf is not an object")
    unchecked = sorted(cnf.keys() - _CHECKED_CONFIRMATIONS)
    if unchecked:
        raise errors.ProofInvalid(
            "the token is bound with cnf members warden cannot check: " + shown(unchecked, 120)
        )
    jkt = cnf.get("jkt")
    if not isinstance(jkt, str) or not jkt:
        raise errors.ProofInvalid("the token's cnf names no key thumbprint (jkt)")
    return jkt


def _verified_payload(proof: bytes, jkt: str, algorithms: Collection[str]) -> dict[str, Any]:
    """The claims of a proof signed with the key whose thumbprint is ``jkt``."""
    parts = proof.split(b".")
    if len(parts) != 3:
        raise errors.ProofInvalid(f"{HEADER_PROOF} is not a compact JWS of 3 segments")
    invalid = errors.ProofInvalid
    header = json_object(decode_segment(parts[0], "proof header", invalid), "proof header", invalid)
    payload = json_object(
        decode_segment(parts[1], "proof payload", invalid), "proof payload", invalid
    )
    signature = decode_segment(parts[2], "proof signature", invalid)
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in PROOF_TYPES:
        raise errors.ProofInvalid(f"the proof's typ {shown(typ)} is not warden-proof+jwt")
    if "crit" in header:
        raise errors.ProofInvalid("the proof's crit names an extension warden does not understand")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg not in VERIFIERS:
        raise errors.ProofInvalid(f"the proof's alg {shown(alg)} is not allowed")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise errors.ProofInvalid("the proof's header has no jwk object")
    key = _public_key(jwk, alg)
    if not hmac.compare_digest(jwk_thumbprint(jwk).encode(), jkt.encode("utf-8")):
        raise errors.ProofInvalid("the proof's jwk is not the key the token is bound to (cnf.jkt)")
    if not VERIFIERS[alg].verify(parts[0] + b"." + parts[1], key, signature):
        raise errors.ProofInvalid("the proof's signature does not verify")
    return payload


# --- the publisher's side ---------------------------------------------------------------------

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


@dataclass(frozen=True)
class ProofKey:
    """A publisher's private key, loaded once, signing the proof of every job it publishes."""

    private: Any = field(repr=False)
    alg: str
    jwk: dict[str, str]
    """The public JWK that goes into each proof's header."""

    @property
    def thumbprint(self) -> str:
        """The RFC 7638 thumbprint the authorization server must bind tokens to (``cnf.jkt``)."""
        return jwk_thumbprint(self.jwk)

    @classmethod
    def from_pem(
        cls, data: bytes, *, password: bytes | None = None, alg: str | None = None
    ) -> ProofKey:
        """A key from a PEM private key: RSA (RS256, at least 2048 bits), EC P-256 (ES256),
        P-384 (ES384), P-521 (ES512) or Ed25519/Ed448 (EdDSA); ``alg`` picks another fitting
        algorithm (PS256 for RSA, say). Raises :class:`~worker.errors.ConfigurationError`."""
        try:
            private = load_pem_private_key(data, password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise errors.ConfigurationError(
                f"the proof key is not a usable PEM private key ({type(exc).__name__})"
            ) from None
        public = private.public_key()
        if isinstance(private, rsa.RSAPrivateKey):
            if private.key_size < MIN_RSA_BITS:
                raise errors.ConfigurationError(
                    f"the proof key has {private.key_size} bits; RSA needs {MIN_RSA_BITS}"
                )
            default = "RS256"
        elif isinstance(private, ec.EllipticCurvePrivateKey):
            default = _EC_ALGORITHMS.get(private.curve.name, "")
        elif isinstance(private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            default = "EdDSA"
        else:
            default = ""
        if not default:
            raise errors.ConfigurationError(
                "the proof key must be an RSA, EC (P-256, P-384, P-521) or EdDSA key"
            )
        chosen = alg or default
        if chosen not in VERIFIERS:
            raise errors.ConfigurationError(f"alg {chosen!r} is not an asymmetric algorithm")
        jwk: dict[str, str] = VERIFIERS[default].to_jwk(public, as_dict=True)
        key = cls(private, chosen, {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS})
        fit = VerificationKey("proof", jwk["kty"], jwk.get("crv"), None, public)
        if not fit.fits(chosen):
            raise errors.ConfigurationError(f"alg {chosen!r} does not fit the proof key")
        return key

    @classmethod
    def generate(cls) -> ProofKey:
        """A new EC P-256 key (ES256), held in memory only."""
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return cls.from_pem(pem)

    @classmethod
    def from_file(cls, path: Path, *, password: bytes | None = None) -> ProofKey:
        """:meth:`from_pem` of a file; a missing or unreadable file is a ConfigurationError."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise errors.ConfigurationError(
                f"cannot read the proof key {str(path)!r}: {exc.strerror}"
            ) from None
        return cls.from_pem(data, password=password)

    def sign(
        self,
        *,
        token: str,
        message_id: str,
        action: str,
        queue: str,
        body: bytes,
        now: float | None = None,
    ) -> str:
        """The ``x-warden-proof`` of one job: ``body`` exactly as it will be published."""
        header = {"typ": "warden-proof+jwt", "alg": self.alg, "jwk": self.jwk}
        claims = {
            "iat": int(time.time() if now is None else now),
            "ath": b64url_sha256(token.encode("ascii")),
            "mid": message_id,
            "action": action,
            "queue": queue,
            "bh": b64url_sha256(body),
        }
        signing_input = _b64(_compact(header)) + b"." + _b64(_compact(claims))
        signature = get_default_algorithms()[self.alg].sign(signing_input, self.private)
        return (signing_input + b"." + _b64(signature)).decode("ascii")


def _compact(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _b64(data: bytes) -> bytes:
    return urlsafe_b64encode(data).rstrip(b"=")
