"""The development issuer's authority: its keys, the access tokens it mints, and the clients
that may ask it for one with the client-credentials grant.

Nothing here is fit to protect anything real: keys live in memory for as long as the process,
client secrets are compared without rate limits, and every token it mints carries the claim
:data:`LABEL_CLAIM` saying so. ``warden demo`` runs one, and :mod:`worker.testing` hands one to
tests (:class:`worker.testing.TestIssuer`).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jwt

from worker.auth.proof import ProofKey
from worker.devissuer.keys import SigningKey

NOT_FOR_PRODUCTION = "not for production"
LABEL_CLAIM = "warden_dev"
"""Every token the development issuer mints carries ``"warden_dev": "not for production"``."""
DEFAULT_AUDIENCE = "https://jobs.example.com"
DEFAULT_LIFETIME = 300


class _Drop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()
"""Pass as a claim's value to :meth:`Issuer.token` to leave that claim out."""


def overridden(claims: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``claims`` with ``overrides`` over them; a claim overridden with :data:`DROP` is left out."""
    out = dict(claims)
    for name, value in overrides.items():
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


class GrantRefused(Exception):
    """A token request the issuer refuses, as an RFC 6749 section 5.2 error."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class Client:
    """A client that may use the client-credentials grant."""

    client_id: str
    secret: str = field(repr=False)
    scopes: frozenset[str]
    """The scopes it may ask for; all of them when it asks for none."""
    audience: str
    bound_to: str | None = None
    """The RFC 7638 thumbprint its tokens are bound to (``cnf.jkt``), if sender-constrained."""
    resources: frozenset[str] = frozenset()
    """Other audiences it may ask for with an RFC 8707 ``resource`` (tokens for other APIs)."""


@dataclass(frozen=True)
class Issued:
    """One token handed out by the grant: to whom, when, until when."""

    client_id: str
    at: float
    exp: int
    scope: str


class Issuer:
    """An authorization server as far as a resource server sees one: an ``iss``, signing keys,
    and the access tokens (RFC 9068, ``typ: at+jwt``) it mints.

    :meth:`token` mints any token a test needs, well-formed or not; :meth:`grant` answers the
    client-credentials grant for the clients :meth:`register` added.
    """

    __test__: ClassVar[bool] = False  # not a test class, whatever a test module imports it as

    def __init__(
        self,
        url: str,
        keys: Iterable[SigningKey] = (),
        audience: str = DEFAULT_AUDIENCE,
        *,
        token_lifetime: int = DEFAULT_LIFETIME,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.keys: list[SigningKey] = list(keys) or [SigningKey.generate("RS256")]
        self.audience = audience
        self.token_lifetime = token_lifetime
        self.defaults: dict[str, Any] = {
            "sub": "service-account-test",
            "client_id": "test-client",
            **(defaults or {}),
        }
        self.clients: dict[str, Client] = {}
        self._issued: list[Issued] = []
        self._lock = threading.Lock()

    @property
    def key(self) -> SigningKey:
        """The key it signs with now (the last one added)."""
        return self.keys[-1]

    def rotate(self, alg: str | None = None) -> SigningKey:
        """Add a new key (of ``alg``, default the current key's) and sign with it from now on;
        the old keys stay in the JWKS."""
        key = SigningKey.generate(alg or self.key.alg)
        self.keys.append(key)
        return key

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: every key's public half."""
        return {"keys": [k.public_jwk() for k in self.keys]}

    def metadata(self) -> dict[str, Any]:
        """The RFC 8414 metadata document, served at the issuer's well-known addresses."""
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/jwks",
            "token_endpoint": f"{self.url}/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            LABEL_CLAIM: NOT_FOR_PRODUCTION,
        }

    def claims(self, *, lifetime: int | None = None, **overrides: Any) -> dict[str, Any]:
        """The claims of a token: ``iss``, ``aud``, ``iat``, ``exp`` (``lifetime`` seconds
        later), a fresh ``jti``, the defaults, the label, then ``overrides`` (:data:`DROP`
        removes a claim)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            **self.defaults,
            "aud": self.audience,
            "iat": now,
            "exp": now + (self.token_lifetime if lifetime is None else lifetime),
            "jti": uuid.uuid4().hex,
            LABEL_CLAIM: NOT_FOR_PRODUCTION,
        }
        return overridden(claims, overrides)

    def token(
        self,
        *,
        key: SigningKey | None = None,
        alg: str | None = None,
        header: Mapping[str, Any] | None = None,
        lifetime: int | None = None,
        bound_to: ProofKey | str | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token with the default claims and ``claims`` over them.

        ``key`` signs instead of the issuer's own (its ``kid`` goes in the header unless
        ``header`` names another: a key the issuer never published); ``alg`` overrides the key's
        algorithm; ``header`` adds or replaces header members; ``lifetime`` sets ``exp`` that
        many seconds after ``iat`` (negative: already expired); ``bound_to`` (a publisher's
        :class:`~worker.auth.proof.ProofKey`, or its thumbprint) makes it sender-constrained
        with ``cnf.jkt``. Scopes go in ``scope="a b"``, a delegation in ``act={"sub": ...}``.
        """
        if bound_to is not None:
            claims.setdefault("cnf", {"jkt": _thumbprint(bound_to)})
        return self.sign(self.claims(lifetime=lifetime, **claims), key=key, alg=alg, header=header)

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        key: SigningKey | None = None,
        alg: str | None = None,
        header: Mapping[str, Any] | None = None,
    ) -> str:
        """A compact JWS over exactly ``claims``, header ``typ: at+jwt`` and the key's ``kid``
        (``header`` adds or replaces members). Every token the issuer mints is made here."""
        key = key or self.key
        headers = {"typ": "at+jwt", "kid": key.kid, **(header or {})}
        return jwt.encode(dict(claims), key.private, algorithm=alg or key.alg, headers=headers)

    # --- the client-credentials grant -------------------------------------------------------

    def register(
        self,
        client_id: str,
        *,
        scopes: Iterable[str] = (),
        secret: str | None = None,
        audience: str | None = None,
        bound_to: ProofKey | str | None = None,
        resources: Iterable[str] = (),
    ) -> Client:
        """Let ``client_id`` ask for tokens with the client-credentials grant; its secret is
        generated unless given. ``bound_to`` makes every token it gets sender-constrained;
        ``resources`` are audiences besides ``audience`` it may name in ``resource``."""
        client = Client(
            client_id,
            secret or secrets.token_urlsafe(24),
            frozenset(scopes),
            audience or self.audience,
            None if bound_to is None else _thumbprint(bound_to),
            frozenset(resources),
        )
        self.clients[client_id] = client
        return client

    def grant(
        self,
        client_id: str,
        secret: str,
        *,
        scope: str | None = None,
        resource: str | None = None,
    ) -> dict[str, Any]:
        """The token response (RFC 6749 section 5.1) to a client-credentials request, or
        :class:`GrantRefused` naming why not."""
        client = self.clients.get(client_id)
        if client is None or not hmac.compare_digest(client.secret.encode(), secret.encode()):
            raise GrantRefused("invalid_client", "unknown client or wrong secret", 401)
        asked = frozenset(scope.split(" ")) - {""} if scope else client.scopes
        if not asked <= client.scopes:
            lacking = " ".join(sorted(asked - client.scopes))
            raise GrantRefused("invalid_scope", f"not granted to this client: {lacking}")
        audiences = {client.audience, *client.resources}
        if resource is not None and resource not in audiences:
            names = ", ".join(sorted(audiences))
            raise GrantRefused("invalid_target", f"this client's tokens are for {names}")
        granted = " ".join(sorted(asked))
        claims = self.claims(
            sub=f"service-account-{client_id}",
            client_id=client_id,
            aud=client.audience if resource is None else resource,
            scope=granted,
        )
        if client.bound_to is not None:
            claims["cnf"] = {"jkt": client.bound_to}
        token = self.sign(claims)
        with self._lock:
            self._issued.append(Issued(client_id, time.time(), claims["exp"], granted))
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": claims["exp"] - claims["iat"],
            "scope": granted,
        }

    @property
    def issued(self) -> list[Issued]:
        """Every token the grant handed out so far, oldest first (never the tokens themselves)."""
        with self._lock:
            return list(self._issued)


def _thumbprint(key: ProofKey | str) -> str:
    return key.thumbprint if isinstance(key, ProofKey) else key
