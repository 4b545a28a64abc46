"""Access-token verification: checks 3 to 12 of ``docs/checks.md``, in that order.

Pure and synchronous: given the token text, the trusted issuers, a key lookup and the clock, it
returns the verified claims or raises the :class:`~worker.errors.Denial` of the first check that
fails. Fetching keys is the caller's business (:mod:`worker.auth.keys`); when the ``kid`` is unknown
the caller may refetch once and ask again.
"""

from __future__ import annotations

import binascii
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from jwt.algorithms import Algorithm, get_default_algorithms

from worker import errors
from worker.names import ACCESS_TOKEN_TYPES
from worker.support import strictjson
from worker.support.cache import BoundedCache
from worker.support.clock import rfc3339

_SEGMENT = re.compile(rb"^[A-Za-z0-9_-]*$")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_URLSAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SPARE_BITS = {2: 0b1111, 3: 0b11}
"""By the length of a segment modulo 4: the bits of its last character that encode nothing.
RFC 4648 section 3.5: they are zero, so one octet string has one spelling."""
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
"""A scope-token of RFC 6749 section 3.3."""
VERIFIERS: dict[str, Algorithm] = {
    name: algorithm
    for name, algorithm in get_default_algorithms().items()
    if name != "none" and not name.startswith("HS")
}
"""pyjwt's asymmetric algorithms by ``alg``: ``none`` and ``HS*`` are not there to be chosen."""

# Which key an algorithm may be used with: (kty, crv or None).
_KEY_FIT: dict[str, tuple[str, frozenset[str | None]]] = {
    **{a: ("RSA", frozenset({None})) for a in ("RS256", "RS384", "RS512")},
    **{a: ("RSA", frozenset({None})) for a in ("PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}

SUMMARY_CLAIMS = ("iss", "sub", "client_id", "jti", "exp", "scope", "act")
"""Claims a denial record may carry about its token (``docs/dead-letters.md``)."""

MAX_ACTORS = 32
"""The longest ``act`` chain (RFC 8693 section 4.1) a token may carry; a longer one is malformed.

Nested actors are informational only, but they are copied into a job's principal and into a
dead letter's header table, whose nesting the broker and its clients bound.
"""

NESTED_TYPES = frozenset({"jwt", "application/jwt"})
"""``cty`` values that announce a nested JWT (RFC 7519 section 5.2): never an access token."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A parsed public key of an issuer, with the JWK facts that bind it to algorithms."""

    kid: str
    kty: str
    crv: str | None
    alg: str | None
    key: Any
    jwk: str = field(default="", compare=False, repr=False)
    """The JWK it was parsed from (canonical JSON), to tell a republished key from a new one."""

    def fits(self, alg: str) -> bool:
        """Whether a signature made with ``alg`` may be checked with this key."""
        fit = _KEY_FIT.get(alg)
        if fit is None or self.kty != fit[0] or self.crv not in fit[1]:
            return False
        return self.alg is None or self.alg == alg


class KeyLookup(Protocol):
    """Keys of the trusted issuers, already fetched."""

    def key(self, issuer: str, kid: str) -> VerificationKey | None:
        """The issuer's key called ``kid``, or None."""
        ...


@dataclass(frozen=True, slots=True)
class IssuerPolicy:
    """What a token of one trusted issuer must satisfy, and where its claims say what.

    ``audience`` or ``clients``: where the issuer's tokens carry no ``aud``, the client ids
    allowed to call warden replace the audience check (``docs/profiles/``).
    """

    issuer: str
    audience: str | None
    algorithms: frozenset[str]
    token_types: frozenset[str | None]
    """Lower-case ``typ`` values; None admits a token without ``typ``."""
    required_claims: tuple[str, ...]
    client_id_claims: tuple[str, ...] = ("client_id",)
    """Where the client id is: the first of them the token has."""
    scope_claims: tuple[str, ...] = ("scope", "scp")
    """Their union is what the token grants."""
    token_id_claims: tuple[str, ...] = ("jti",)
    """Where the token's id is (what a revocation by ``jti`` matches): the first it has."""
    claim_values: tuple[tuple[str, str], ...] = ()
    """Claims that must hold exactly this value, or the token is not an access token."""
    clients: frozenset[str] | None = None

    def client_id(self, claims: Mapping[str, Any]) -> str | None:
        """The token's client id, from the first of ``client_id_claims`` it carries."""
        return _first(claims, self.client_id_claims)

    def token_id(self, claims: Mapping[str, Any]) -> str | None:
        """The token's id, from the first of ``token_id_claims`` it carries."""
        return _first(claims, self.token_id_claims)

    def scopes(self, claims: Mapping[str, Any]) -> frozenset[str]:
        """The scopes the token grants: the union of its ``scope_claims``."""
        return granted_scopes(claims, self.scope_claims)

    def identity(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        """What revocation events name, read where this issuer puts it: ``jti`` (the token's
        id), ``sub``, ``client_id``, and ``iat``."""
        found = {
            "jti": self.token_id(claims),
            "sub": claims.get("sub"),
            "client_id": self.client_id(claims),
            "iat": claims.get("iat"),
        }
        return {name: value for name, value in found.items() if value is not None}


def _first(claims: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            return value
    return None


RFC9068_TYPES: frozenset[str | None] = frozenset(ACCESS_TOKEN_TYPES)


class Trust:
    """The trusted issuers, by exact ``iss`` value."""

    def __init__(
        self,
        policies: Iterable[IssuerPolicy],
        *,
        leeway: int,
        max_token_bytes: int,
        max_lifetime: float = math.inf,
    ):
        self.policies: dict[str, IssuerPolicy] = {p.issuer: p for p in policies}
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        """The longest a token may live (``exp`` after ``iat``): what a revocation outlasts."""
        self.max_token_bytes = max_token_bytes
        self.any_algorithm = frozenset().union(*(p.algorithms for p in self.policies.values()))
        self.default_types = RFC9068_TYPES


@dataclass(frozen=True, slots=True)
class Verified:
    """A token that passed checks 3 to 12: its issuer's policy and its claims."""

    policy: IssuerPolicy
    claims: dict[str, Any]


@dataclass(slots=True)
class TokenCheck:
    """One token going through the checks; what a denial may report of it."""

    raw: str
    header: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None
    verified: bool = False
    policy: IssuerPolicy | None = field(default=None, repr=False)
    _digest: bytes | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"TokenCheck(fingerprint={self.fingerprint()!r}, verified={self.verified})"

    def digest(self) -> bytes:
        """The SHA-256 of the token: what the cache keys it by and its fingerprint shows."""
        digest = self._digest
        if digest is None:
            digest = self._digest = hashlib.sha256(self.raw.encode("ascii", "replace")).digest()
        return digest

    def fingerprint(self) -> str:
        """``sha256:`` and the hex digest of the token."""
        return "sha256:" + self.digest().hex()

    def summary(self) -> dict[str, Any]:
        """The denial record's ``token`` member: never the token itself.

        ``act`` is reduced to its chain of ``sub`` values: what else an actor object holds is
        the token's (possibly unverified) say, and need not fit an AMQP header table.
        """
        out: dict[str, Any] = {"fingerprint": self.fingerprint(), "verified": self.verified}
        claims = self.claims
        if claims is not None:
            out.update((k, claims[k]) for k in SUMMARY_CLAIMS if k in claims and k != "act")
            policy = self.policy
            if policy is not None:
                # Where this issuer puts them: what warden calls the client and the token id.
                for name, value in (
                    ("client_id", policy.client_id(claims)),
                    ("jti", policy.token_id(claims)),
                ):
                    if value is None:
                        out.pop(name, None)
                    else:
                        out[name] = value
                if not isinstance(claims.get("scope"), str):
                    out.pop("scope", None)
                    scopes = policy.scopes(claims)
                    if scopes:
                        out["scope"] = " ".join(sorted(scopes))
            if "act" in claims:
                out["act"] = actor_claim(actor_chain(claims))
        return out


def shown(value: object, limit: int = 64) -> str:
    """``repr`` of an untrusted value, cut short so a detail line stays a line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def actor_chain(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """``act.sub``, then the ``sub`` of each nested ``act``: the current actor first.

    Only the first governs (RFC 8693 section 4.1); the others are prior actors, for the record.
    Assumes the claims passed :func:`check_claim_types`.
    """
    chain: list[str] = []
    act = claims.get("act")
    while isinstance(act, dict):
        chain.append(act["sub"])
        act = act.get("act")
    return tuple(chain)


def actor_claim(chain: tuple[str, ...]) -> dict[str, Any] | None:
    """The ``act`` claim of an actor chain, with nothing but each actor's ``sub``."""
    act: dict[str, Any] | None = None
    for sub in reversed(chain):
        act = {"sub": sub} if act is None else {"sub": sub, "act": act}
    return act


def decode_segment(
    data: bytes, what: str, error: type[errors.Denial] = errors.TokenMalformed
) -> bytes:
    """One base64url segment of a compact JWS, unpadded as RFC 7515 has it; ``error`` if not."""
    spare = _SPARE_BITS.get(len(data) % 4, 0)
    if (
        not _SEGMENT.fullmatch(data)
        or len(data) % 4 == 1
        or (spare and _URLSAFE.index(data[-1]) & spare)
    ):
        raise error(f"the {what} is not base64url")
    try:
        # The alphabet is checked above, so the translated segment is plain base64.
        return binascii.a2b_base64(data.translate(_FROM_URLSAFE) + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise error(f"the {what} is not base64url") from None


def json_object(
    data: bytes, what: str, error: type[errors.Denial] = errors.TokenMalformed
) -> dict[str, Any]:
    """A strict JSON object (:mod:`worker.support.strictjson`); ``error`` for anything else."""
    try:
        value = strictjson.loads(data)
    except errors.NotStrictJSON:
        raise error(f"the {what} is not a JSON object without duplicate members") from None
    if not isinstance(value, dict):
        raise error(f"the {what} is not a JSON object")
    return value


_LAST_NUMERIC_DATE = 253402300799
"""9999-12-31T23:59:59Z: a NumericDate past it is no date (``datetime`` cannot hold it)."""


def is_numeric_date(value: object) -> TypeGuard[float]:
    """An RFC 7519 NumericDate: a JSON number of seconds, integer or not, 1970 to 9999."""
    return (
        isinstance(value, int | float)
        and type(value) is not bool
        and 0 <= value <= _LAST_NUMERIC_DATE
    )


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_actor(value: object) -> bool:
    """An RFC 8693 ``act``: an object with a string ``sub`` (and, if any, a string ``iss``, who
    identifies the actor), whose ``act``, if any, is one too."""
    for _ in range(MAX_ACTORS):
        if not isinstance(value, dict) or not isinstance(value.get("sub"), str):
            return False
        if not isinstance(value.get("iss", ""), str):
            return False
        if "act" not in value:
            return True
        value = value["act"]
    return False


def _is_confirmation(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("jkt", ""), str)


_CLAIM_TYPES: dict[str, tuple[str, Any]] = {
    "iss": ("a string", lambda v: isinstance(v, str)),
    "sub": ("a string", lambda v: isinstance(v, str)),
    "client_id": ("a string", lambda v: isinstance(v, str)),
    "jti": ("a string", lambda v: isinstance(v, str)),
    "exp": ("a NumericDate", is_numeric_date),
    "nbf": ("a NumericDate", is_numeric_date),
    "iat": ("a NumericDate", is_numeric_date),
    "aud": ("a string or an array of strings", lambda v: isinstance(v, str) or _is_str_list(v)),
    "scope": ("a space-delimited string", lambda v: isinstance(v, str)),
    "scp": ("a string or an array of strings", lambda v: isinstance(v, str) or _is_str_list(v)),
    "act": (
        f"an object with a string sub (and iss), nesting at most {MAX_ACTORS} actors",
        _is_actor,
    ),
    "cnf": ("an object whose jkt, if any, is a string", _is_confirmation),
}
_HEADER_TYPES: dict[str, tuple[str, Any]] = {
    "alg": ("a string", lambda v: isinstance(v, str)),
    "kid": ("a string", lambda v: isinstance(v, str)),
    "typ": ("a string", lambda v: isinstance(v, str)),
    "crit": ("an array of strings", _is_str_list),
    "cty": ("a string", lambda v: isinstance(v, str)),
}


def _check_types(obj: Mapping[str, Any], types: Mapping[str, tuple[str, Any]], what: str) -> None:
    for name, (expected, ok) in types.items():
        if name in obj and not ok(obj[name]):
            raise errors.TokenMalformed(f"{what} {name!r} is not {expected}")


def check_claim_types(claims: Mapping[str, Any], policy: IssuerPolicy | None = None) -> None:
    """Registered claims must have their registered types, and the claims an issuer's policy
    reads the client, the token id and the scopes from theirs: TokenMalformed otherwise."""
    _check_types(claims, _CLAIM_TYPES, "claim")
    if policy is None:
        return
    for name in (*policy.client_id_claims, *policy.token_id_claims):
        if name in claims and not isinstance(claims[name], str):
            raise errors.TokenMalformed(f"claim {name!r} is not a string")
    for name in policy.scope_claims:
        value = claims.get(name)
        if value is not None and not (isinstance(value, str) or _is_str_list(value)):
            raise errors.TokenMalformed(f"claim {name!r} is not a string or an array of strings")


def check_token_kind(header: Mapping[str, Any], types: frozenset[str | None]) -> None:
    """Check 5 for ``typ``, ``crit`` and ``cty``: an access token, and nothing we cannot read."""
    typ = header.get("typ")
    if (typ.lower() if typ is not None else None) not in types:
        raise errors.TokenTypeInvalid(f"typ {shown(typ)} is not an access-token type")
    if "crit" in header:
        raise errors.TokenTypeInvalid(
            f"crit {shown(header['crit'])} names an extension warden does not understand"
        )
    cty = header.get("cty")
    if cty is not None and cty.lower() in NESTED_TYPES:
        raise errors.TokenTypeInvalid(f"cty {shown(cty)} announces a nested JWT")


def check_claim_values(claims: Mapping[str, Any], policy: IssuerPolicy) -> None:
    """Check 5 for the issuer's ``claim_values``: the token is the kind warden accepts (an
    access token, not an ID token or a refresh token of the same issuer)."""
    for name, value in policy.claim_values:
        if claims.get(name) != value:
            raise errors.TokenTypeInvalid(
                f"claim {name!r} is {shown(claims.get(name))}, not {value!r}: not an access token"
            )


_HEADERS: BoundedCache[bytes, dict[str, Any]] = BoundedCache(256)
"""Parsed JOSE headers by their encoded segment. An issuer's tokens share a handful of headers
(one per key and type), so most tokens skip decoding theirs. Nothing changes a parsed header."""


def parse(check: TokenCheck, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Check 3: a compact JWS whose header and claims are JSON objects of the right types.

    Returns (and keeps on ``check``) the header and claims, then the signing input and signature.
    """
    raw = check.raw.encode("ascii", "replace")
    if len(raw) > max_bytes:
        raise errors.TokenMalformed(f"the token is {len(raw)} bytes, more than {max_bytes}")
    parts = raw.split(b".")
    if len(parts) != 3:
        kind = "a JWE" if len(parts) == 5 else f"{len(parts)} segments"
        raise errors.TokenMalformed(f"the token is {kind}, not a compact JWS of 3 segments")
    header = _HEADERS.get(parts[0])
    if header is None:
        header = json_object(decode_segment(parts[0], "header"), "header")
        _check_types(header, _HEADER_TYPES, "header member")
        _HEADERS.put(parts[0], header)
    check.header = header
    claims = json_object(decode_segment(parts[1], "payload"), "payload")
    check_claim_types(claims)
    check.claims = claims
    signature = decode_segment(parts[2], "signature")
    return header, claims, parts[0] + b"." + parts[1], signature


@dataclass(frozen=True, slots=True)
class Queued:
    """How long a job may have waited: when the broker witnessed its arrival (seconds since the
    epoch; None where no witness could be believed) and the action's queueing allowance."""

    arrived_at: float | None
    allowance: float


NOT_QUEUED = Queued(None, 0.0)
"""No allowance: times are judged at the moment of the decision only."""


def verify(
    check: TokenCheck, trust: Trust, keys: KeyLookup, now: float, queued: Queued = NOT_QUEUED
) -> Verified:
    """Run checks 3 to 12 on ``check.raw``; return the issuer's policy and the claims."""
    header, claims, signing_input, signature = parse(check, trust.max_token_bytes)
    iss = claims.get("iss")
    policy = trust.policies.get(iss) if isinstance(iss, str) else None
    if policy is not None:
        check_claim_types(claims, policy)  # 3, for the claims this issuer's tokens are read by

    # 4: the algorithm comes from configuration; the header only names which one was used.
    alg = header.get("alg")
    allowed = policy.algorithms if policy else trust.any_algorithm
    if alg not in allowed or alg not in VERIFIERS:
        raise errors.AlgorithmNotAllowed(f"alg {shown(alg)} is not allowed")

    # 5: an access token, not an ID token or another JWT; no extension we do not understand.
    check_token_kind(header, policy.token_types if policy else trust.default_types)
    if policy is not None:
        check_claim_values(claims, policy)

    # 6
    if policy is None:
        raise errors.IssuerUntrusted(
            "the token has no iss" if iss is None else f"iss {shown(iss)} is not a trusted issuer"
        )
    check.policy = policy

    # 7: keys come from the issuer's JWKS only, never from jku, x5u, jwk or x5c.
    kid = header.get("kid")
    if kid is None:
        raise errors.KeyUnknown("the token header has no kid")
    key = keys.key(policy.issuer, kid)
    if key is None:
        raise errors.KeyUnknown(f"kid {shown(kid)} is not a key of {policy.issuer}")
    if not key.fits(alg):
        raise errors.AlgorithmNotAllowed(f"alg {alg!r} does not fit key {shown(kid)} ({key.kty})")

    # 8
    if not VERIFIERS[alg].verify(signing_input, key.key, signature):
        raise errors.SignatureInvalid("the signature does not verify")
    check.verified = True

    check_claims(claims, policy, now, trust.leeway, trust.max_lifetime, queued)
    return Verified(policy, claims)


def check_claims(
    claims: Mapping[str, Any],
    policy: IssuerPolicy,
    now: float,
    leeway: int,
    max_lifetime: float = math.inf,
    queued: Queued = NOT_QUEUED,
) -> None:
    """Checks 9 to 12 on verified claims; a token expired now passes 9 when ``queued`` says
    the job arrived while it was valid, within the allowance (:func:`check_queued`)."""
    exp = claims.get("exp")
    if exp is not None:
        if exp + leeway <= now:
            check_queued(claims, exp, now, leeway, queued)
        # A token that lives longer than a revocation lasts could outlive its revocation. It
        # is measured from iat, or from now where the token has none: what is left of its life.
        iat = claims.get("iat")
        lifetime = exp - (iat if isinstance(iat, int | float) else now)
        if lifetime > max_lifetime:
            raise errors.TokenExpired(
                f"the token lives {lifetime:g}s, longer than WARDEN_MAX_TOKEN_LIFETIME_SECONDS "
                f"({max_lifetime:g}s), so a revocation could not outlast it"
            )
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and value - leeway > now:
            raise errors.TokenNotYetValid(f"{name} {value} is in the future")
    if policy.clients is not None:
        client = policy.client_id(claims)
        if client not in policy.clients:
            raise errors.AudienceMismatch(
                f"client {shown(client)} is not one of the clients allowed to call warden"
            )
    else:
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else (aud or ())
        if policy.audience is None or policy.audience not in audiences:
            raise errors.AudienceMismatch(f"aud does not contain {policy.audience!r}")
    missing = [name for name in policy.required_claims if name not in claims]
    if missing:
        raise errors.ClaimsMissing("missing required claims: " + " ".join(missing))


def check_queued(
    claims: Mapping[str, Any], exp: float, now: float, leeway: int, queued: Queued
) -> None:
    """Check 9 for a token that expired before ``now``: it passes only if the job arrived (as
    the broker witnessed) while the token was valid (``exp``, ``nbf`` and ``iat`` judged at the
    arrival) and no longer ago than the allowance. Otherwise :class:`TokenExpired`, saying
    which of these failed."""
    expired = f"the token expired at {exp}"
    if queued.allowance <= 0:
        raise errors.TokenExpired(expired)
    arrived = queued.arrived_at
    if arrived is None:
        raise errors.TokenExpired(f"{expired}, and no arrival time witnessed by the broker")
    waited = now - arrived
    if waited > queued.allowance:
        raise errors.TokenExpired(
            f"{expired}; the job arrived {waited:.0f}s ago, longer than its queueing allowance "
            f"({queued.allowance:g}s)"
        )
    if exp + leeway <= arrived:
        raise errors.TokenExpired(f"{expired}, before the job arrived at {rfc3339(arrived)}")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and value - leeway > arrived:
            raise errors.TokenExpired(
                f"{expired}, and its {name} {value} is after the job arrived at {rfc3339(arrived)}"
            )


def is_scope_token(value: object) -> bool:
    """A scope-token of RFC 6749 section 3.3: printable ASCII but space, ``"`` and ``\\``."""
    return isinstance(value, str) and _SCOPE_TOKEN.fullmatch(value) is not None


def granted_scopes(
    claims: Mapping[str, Any], names: Iterable[str] = ("scope", "scp")
) -> frozenset[str]:
    """The union of the claims ``names``, each a string of scopes delimited by U+0020 (and
    nothing else) or an array of scopes. A scope with a character RFC 6749 section 3.3 does not
    allow in a scope-token grants nothing."""
    scopes: set[str] = set()
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            value = value.split(" ")
        elif not isinstance(value, list):
            continue
        scopes.update(s for s in value if is_scope_token(s))
    return frozenset(scopes)
