"""The authorization core as the configuration describes it: trusted issuers' policies, their
key stores, the introspection client."""

from __future__ import annotations

import httpx

from worker.auth.introspection import Introspector
from worker.auth.keys import Keyring
from worker.auth.tokens import IssuerPolicy, Trust
from worker.errors import ConfigurationError
from worker.names import ACCESS_TOKEN_TYPES
from worker.settings import IssuerSettings, Settings


def issuer_policy(entry: IssuerSettings) -> IssuerPolicy:
    """The policy of a configured issuer (audience and algorithms filled in)."""
    if entry.audience is None or entry.algorithms is None or entry.required_claims is None:
        raise ConfigurationError(f"issuer {entry.issuer!r} is not fully configured")
    return IssuerPolicy(
        issuer=entry.issuer,
        audience=entry.audience,
        algorithms=frozenset(entry.algorithms),
        token_types=frozenset(ACCESS_TOKEN_TYPES) | {t.lower() for t in entry.accept_typ},
        required_claims=tuple(entry.required_claims),
    )


def build_trust(settings: Settings) -> Trust:
    """The trusted issuers' policies from the settings."""
    return Trust(
        (issuer_policy(entry) for entry in settings.trusted_issuers()),
        leeway=settings.leeway_seconds,
        max_token_bytes=settings.max_token_bytes,
        max_lifetime=settings.max_token_lifetime_seconds,
    )


def build_keyring(settings: Settings, http: httpx.AsyncClient) -> Keyring:
    """A key store for every trusted issuer."""
    return Keyring.for_issuers(
        ((e.issuer, str(e.jwks_url) if e.jwks_url else None) for e in settings.trusted_issuers()),
        http,
        cooldown=settings.jwks_cooldown_seconds,
        refresh=settings.jwks_refresh_seconds,
    )


def build_introspector(
    settings: Settings, trust: Trust, http: httpx.AsyncClient
) -> Introspector | None:
    """An RFC 7662 client when warden has introspection credentials, else None."""
    if settings.introspection_client_id is None or settings.introspection_client_secret is None:
        return None
    return Introspector(
        http,
        settings.introspection_client_id,
        settings.introspection_client_secret,
        {
            e.issuer: str(e.introspection_endpoint) if e.introspection_endpoint else None
            for e in settings.trusted_issuers()
        },
        trust.policies,
        ceiling=settings.introspection_cache_seconds,
        leeway=settings.leeway_seconds,
        max_lifetime=settings.max_token_lifetime_seconds,
    )
