"""Access tokens and ID tokens shaped as each vendor documents them, signed by a test key.

Headers and claims follow the vendors' own documentation of their tokens (``docs/profiles/``
names the pages): Keycloak's ``typ: JWT`` with ``typ: Bearer`` and ``azp`` in the claims,
Microsoft Entra ID v2's ``roles``/``scp``, ``azp`` and ``uti``, Auth0's ``azp``, ``gty``,
``permissions`` and an issuer with a trailing slash, Okta's ``cid``, ``uid`` and ``scp`` array
under a header without ``typ``, Amazon Cognito's ``client_id`` and ``token_use`` without ``aud``.
Values that are random at the vendor are random here; the rest are the documented examples'.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from base64 import urlsafe_b64decode
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.issuer import AUDIENCE, DROP, Issuer, SigningKey, overridden, sign

Shape = tuple[dict[str, Any], dict[str, Any]]
"""A token's JOSE header and claims."""


def _now() -> int:
    return int(time.time())


@dataclass
class Vendor:
    """One vendor's issuer, what its access and ID tokens look like, and the cases of the
    profile test: each a set of claim overrides over the access token."""

    profile: str
    issuer: Issuer
    scope: str
    """A scope its access tokens grant, in the vendor's naming; the test action requires it."""
    entry: dict[str, Any]
    """The ``WARDEN_ISSUERS`` entry, less ``issuer`` and ``profile``."""
    access: Callable[[Vendor], Shape]
    id_token: Callable[[Vendor], Shape]
    wrong_audience: dict[str, Any]
    without_client: dict[str, Any]
    without_scope: dict[str, Any]
    wrong_use: dict[str, Any] | None = None
    """A token of the same issuer that is not an access token, where the claims tell."""
    id_token_reason: str = "audience_mismatch"
    wrong_audience_reason: str = "audience_mismatch"
    without_client_reason: str = "claims_missing"
    other_access: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Other documented shapes of its access tokens (a user's beside an application's)."""

    @property
    def key(self) -> SigningKey:
        return self.issuer.key

    def token(self, shape: Callable[[Vendor], Shape] | None = None, **overrides: Any) -> str:
        """An access token (or ``shape``'s token) with ``overrides`` over its claims."""
        header, claims = (shape or self.access)(self)
        return sign(header, overridden(claims, overrides), self.key)

    @staticmethod
    def claims_of(raw: str) -> dict[str, Any]:
        """The claims of a token minted here, as the vendor wrote them."""
        payload = raw.split(".")[1]
        claims: dict[str, Any] = json.loads(urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return claims

    def entry_for_warden(self) -> dict[str, Any]:
        return {"issuer": self.issuer.url, "profile": self.profile, **self.entry}


# --- RFC 9068 ---------------------------------------------------------------------------------


def _rfc9068_access(v: Vendor) -> Shape:
    header = {"typ": "at+jwt", "alg": "RS256", "kid": v.key.kid}
    return header, v.issuer.claims(scope="openid reports:write")


def _oidc_id_token(v: Vendor) -> Shape:
    now = _now()
    header = {"typ": "JWT", "alg": "RS256", "kid": v.key.kid}
    claims = {
        "iss": v.issuer.url,
        "sub": "248289761001",
        "aud": "reports-web",
        "nonce": "n-0S6_WzA2Mj",
        "exp": now + 300,
        "iat": now,
        "auth_time": now - 60,
    }
    return header, claims


# --- Keycloak ---------------------------------------------------------------------------------
# An access token of a client-credentials grant (the service account of client
# reports-service, with an audience mapper for warden) and an ID token of a browser login.


def _keycloak_access(v: Vendor) -> Shape:
    now = _now()
    header = {"alg": "RS256", "typ": "JWT", "kid": v.key.kid}
    claims = {
        "exp": now + 300,
        "iat": now,
        "jti": f"trrtcc:{uuid.uuid4()}",
        "iss": v.issuer.url,
        "aud": [AUDIENCE, "account"],
        "sub": str(uuid.uuid4()),
        "typ": "Bearer",
        "azp": "reports-service",
        "acr": "1",
        "allowed-origins": ["/*"],
        "realm_access": {"roles": ["offline_access", "default-roles-warden"]},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "profile email reports:write",
        "clientHost": "172.18.0.5",
        "email_verified": False,
        "preferred_username": "service-account-reports-service",
        "clientAddress": "172.18.0.5",
        "client_id": "reports-service",
    }
    return header, claims


def _keycloak_id_token(v: Vendor) -> Shape:
    now = _now()
    header = {"alg": "RS256", "typ": "JWT", "kid": v.key.kid}
    claims = {
        "exp": now + 300,
        "iat": now,
        "auth_time": now - 30,
        "jti": str(uuid.uuid4()),
        "iss": v.issuer.url,
        "aud": "reports-web",
        "sub": str(uuid.uuid4()),
        "typ": "ID",
        "azp": "reports-web",
        "nonce": "n-0S6_WzA2Mj",
        "sid": str(uuid.uuid4()),
        "at_hash": "Bn3E0x1h6ORmC8LRbv_nUw",
        "acr": "1",
        "email_verified": True,
        "preferred_username": "alice",
    }
    return header, claims


# --- Microsoft Entra ID (v2.0 tokens) ---------------------------------------------------------

ENTRA_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
ENTRA_API = "6e74172b-be56-4843-9ff4-e66a39bb12e3"
"""The application (client) id of the API: what a v2.0 access token's ``aud`` names."""
ENTRA_CLIENT = "2d4d11a2-f814-46a7-890a-274a72a7309e"


def _entra_common(v: Vendor) -> tuple[dict[str, Any], dict[str, Any]]:
    now = _now()
    header = {"typ": "JWT", "alg": "RS256", "kid": v.key.kid, "x5t": v.key.kid}
    oid = str(uuid.uuid4())
    claims = {
        "aud": ENTRA_API,
        "iss": v.issuer.url,
        "iat": now,
        "nbf": now,
        "exp": now + 3599,
        "aio": "k2BgYDD6x3jLSW9uSapm1it3vtdnC66c40v9FbYSxw8A",
        "azp": ENTRA_CLIENT,
        "azpacr": "1",
        "oid": oid,
        "rh": "0.AAAAjCDz1IhNQEuzm2f4mJIqxCsXdG5Wv0NIn_TmajnA-6w8AAA.",
        "sub": oid,
        "tid": ENTRA_TENANT,
        "uti": secrets.token_urlsafe(16),
        "ver": "2.0",
    }
    return header, claims


def _entra_app_access(v: Vendor) -> Shape:
    """An application's token (client-credentials grant): app roles, no ``scp``."""
    header, claims = _entra_common(v)
    return header, {**claims, "idtyp": "app", "roles": ["Reports.Write"]}


ENTRA_USER = {
    "roles": DROP,
    "idtyp": DROP,
    "scp": "Reports.Read Reports.Write",
    "name": "Alice Example",
    "preferred_username": "alice@example.onmicrosoft.com",
}
"""A user's token (delegated): ``scp`` as one space-separated string."""


def _entra_id_token(v: Vendor) -> Shape:
    header, claims = _entra_common(v)
    for name in ("azp", "azpacr"):
        claims.pop(name)
    return header, {
        **claims,
        "aud": ENTRA_CLIENT,
        "nonce": "n-0S6_WzA2Mj",
        "name": "Alice Example",
        "preferred_username": "alice@example.onmicrosoft.com",
    }


# --- Auth0 (its default token profile) -------------------------------------------------------

AUTH0_CLIENT = "kbyuFDidLLm280LIwVFiazOqjO3ty8KH"


def _auth0_access(v: Vendor) -> Shape:
    """A user's token for an API with RBAC and "Add Permissions in the Access Token", whose
    token expiration is set to 2 hours (Auth0's default of 24 would outlive what warden lets a
    revocation last, ``WARDEN_MAX_TOKEN_LIFETIME_SECONDS``)."""
    now = _now()
    header = {"alg": "RS256", "typ": "JWT", "kid": v.key.kid}
    claims = {
        "iss": v.issuer.url,
        "sub": "auth0|64c2b1f2e3a4b5c6d7e8f901",
        "aud": [AUDIENCE, v.issuer.url + "userinfo"],
        "iat": now,
        "exp": now + 7200,
        "azp": AUTH0_CLIENT,
        "scope": "openid profile email",
        "permissions": ["read:reports", "write:reports"],
    }
    return header, claims


AUTH0_MACHINE = {
    "sub": f"{AUTH0_CLIENT}@clients",
    "aud": AUDIENCE,
    "gty": "client-credentials",
    "scope": "write:reports",
    "permissions": DROP,
}
"""A client-credentials token: ``gty``, and the granted scopes in ``scope``."""


def _auth0_id_token(v: Vendor) -> Shape:
    now = _now()
    header = {"alg": "RS256", "typ": "JWT", "kid": v.key.kid}
    claims = {
        "nickname": "alice",
        "name": "alice@example.com",
        "updated_at": "2026-11-30T09:12:44.512Z",
        "email": "alice@example.com",
        "email_verified": True,
        "iss": v.issuer.url,
        "aud": AUTH0_CLIENT,
        "sub": "auth0|64c2b1f2e3a4b5c6d7e8f901",
        "iat": now,
        "exp": now + 36000,
        "sid": secrets.token_urlsafe(24),
        "nonce": "n-0S6_WzA2Mj",
    }
    return header, claims


# --- Okta (a custom authorization server) ----------------------------------------------------

OKTA_CLIENT = "0oa1u2v3w4x5y6z7a8b9"


def _okta_access(v: Vendor) -> Shape:
    now = _now()
    header = {"kid": v.key.kid, "alg": "RS256"}
    claims = {
        "ver": 1,
        "jti": "AT." + secrets.token_urlsafe(32),
        "iss": v.issuer.url,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "cid": OKTA_CLIENT,
        "uid": "00u1a2b3c4d5e6f7g8h9",
        "scp": ["openid", "reports:write"],
        "auth_time": now - 60,
        "sub": "alice@example.com",
    }
    return header, claims


def _okta_id_token(v: Vendor) -> Shape:
    now = _now()
    header = {"kid": v.key.kid, "alg": "RS256"}
    claims = {
        "sub": "00u1a2b3c4d5e6f7g8h9",
        "name": "Alice Example",
        "email": "alice@example.com",
        "ver": 1,
        "iss": v.issuer.url,
        "aud": OKTA_CLIENT,
        "iat": now,
        "exp": now + 3600,
        "jti": "ID." + secrets.token_urlsafe(32),
        "amr": ["pwd"],
        "idp": "00o1a2b3c4d5e6f7g8h9",
        "nonce": "n-0S6_WzA2Mj",
        "preferred_username": "alice@example.com",
        "auth_time": now - 60,
        "at_hash": "preHJ2bB1x6rMrMpYEKCEw",
    }
    return header, claims


# --- Amazon Cognito (a user pool) ------------------------------------------------------------

COGNITO_CLIENT = "1example23456789abcdefghij"


def _cognito_access(v: Vendor) -> Shape:
    now = _now()
    header = {"kid": v.key.kid, "alg": "RS256"}
    claims = {
        "sub": str(uuid.uuid4()),
        "cognito:groups": ["reporters"],
        "iss": v.issuer.url,
        "version": 2,
        "client_id": COGNITO_CLIENT,
        "origin_jti": str(uuid.uuid4()),
        "event_id": str(uuid.uuid4()),
        "token_use": "access",
        "scope": "openid https://jobs.example.com/reports.write",
        "auth_time": now - 60,
        "exp": now + 3600,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "username": "alice",
    }
    return header, claims


def _cognito_id_token(v: Vendor) -> Shape:
    now = _now()
    header = {"kid": v.key.kid, "alg": "RS256"}
    claims = {
        "at_hash": "cVzM5bHzyLzBX5WFEgN3Dw",
        "sub": str(uuid.uuid4()),
        "cognito:groups": ["reporters"],
        "email_verified": True,
        "iss": v.issuer.url,
        "cognito:username": "alice",
        "origin_jti": str(uuid.uuid4()),
        "aud": COGNITO_CLIENT,
        "event_id": str(uuid.uuid4()),
        "token_use": "id",
        "auth_time": now - 60,
        "exp": now + 3600,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "email": "alice@example.com",
    }
    return header, claims


def vendors() -> dict[str, Vendor]:
    """Every profile's vendor, each with an issuer of its own and a fresh key."""
    return {
        "rfc9068": Vendor(
            "rfc9068",
            Issuer("https://as.example.com/"),
            "reports:write",
            {},
            _rfc9068_access,
            _oidc_id_token,
            wrong_audience={"aud": "https://billing.example.com"},
            without_client={"client_id": DROP},
            without_scope={"scope": "openid reports:read"},
            id_token_reason="token_type_invalid",
        ),
        "keycloak": Vendor(
            "keycloak",
            Issuer("https://sso.example.com/realms/warden"),
            "reports:write",
            {},
            _keycloak_access,
            _keycloak_id_token,
            wrong_audience={"aud": "account"},
            without_client={"azp": DROP, "client_id": DROP},
            without_scope={"scope": "profile email reports:read"},
            wrong_use={"typ": "Refresh"},
            id_token_reason="token_type_invalid",
        ),
        "entra": Vendor(
            "entra",
            Issuer(f"https://login.microsoftonline.com/{ENTRA_TENANT}/v2.0"),
            "Reports.Write",
            {"audience": ENTRA_API},
            _entra_app_access,
            _entra_id_token,
            wrong_audience={"aud": "00000003-0000-0000-c000-000000000000"},  # Microsoft Graph
            without_client={"azp": DROP},
            without_scope={"roles": ["Reports.Read"]},
            other_access={"delegated-user": ENTRA_USER},
        ),
        "auth0": Vendor(
            "auth0",
            Issuer("https://warden-test.eu.auth0.com/"),
            "write:reports",
            {},
            _auth0_access,
            _auth0_id_token,
            wrong_audience={"aud": ["https://billing.example.com"]},
            without_client={"azp": DROP},
            without_scope={"permissions": ["read:reports"]},
            other_access={"client-credentials": AUTH0_MACHINE},
        ),
        "okta": Vendor(
            "okta",
            Issuer("https://warden-test.okta.com/oauth2/default"),
            "reports:write",
            {},
            _okta_access,
            _okta_id_token,
            wrong_audience={"aud": "api://default"},
            without_client={"cid": DROP},
            without_scope={"scp": ["openid", "reports:read"]},
        ),
        "cognito": Vendor(
            "cognito",
            Issuer("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Wrd3nTest"),
            "https://jobs.example.com/reports.write",
            {"clients": [COGNITO_CLIENT]},
            _cognito_access,
            _cognito_id_token,
            wrong_audience={"client_id": "7otherclient0987654321abcd"},
            without_client={"client_id": DROP},
            without_scope={"scope": "openid https://jobs.example.com/reports.read"},
            wrong_use={"token_use": "id"},
            id_token_reason="token_type_invalid",
            without_client_reason="audience_mismatch",
        ),
    }
