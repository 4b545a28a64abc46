"""The authorization core as the configuration describes it: trusted issuers' policies, their
key stores, the introspection client."""

from __future__ import annotations

import httpx

from worker.auth.introspection import Introspector
from worker.auth.keys import Keyring
from worker.auth.tokens import RFC9068_TYPES, IssuerPolicy, Trust
from worker.errors import ConfigurationError
from worker.settings import IssuerSettings, Settings


def issuer_policy(entry: IssuerSettings) -> IssuerPolicy:
    """The policy of a configured issuer, every field its entry leaves out taken from its
    profile (:meth:`IssuerSettings.resolved`); the audience and algorithms must be filled in."""
    entry = entry.resolved(entry.audience, entry.algorithms or ())
    if (
        (entry.audience is None and entry.clients is None)
        or not entry.algorithms
        or entry.required_claims is None
        or entry.accept_typ is None
        or entry.client_id_claims is None
        or entry.scope_claims is None
        or entry.token_id_claims is None
        or entry.claim_values is None
    ):
        raise ConfigurationError(f"issuer {entry.issuer!r} is not fully configured")
    return IssuerPolicy(
        issuer=entry.issuer,
        audience=entry.audience,
        algorithms=frozenset(entry.algorithms),
        token_types=RFC9068_TYPES | {None if t is None else t.lower() for t in entry.accept_typ},
        required_claims=tuple(entry.required_claims),
        client_id_claims=entry.client_id_claims,
        scope_claims=entry.scope_claims,
        token_id_claims=entry.token_id_claims,
        claim_values=tuple(sorted(entry.claim_values.items())),
        clients=None if entry.clients is None else frozenset(entry.clients),
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
    entries = settings.trusted_issuers()
    return Introspector(
        http,
        settings.introspection_client_id,
        settings.introspection_client_secret,
        {
            e.issuer: str(e.introspection_endpoint) if e.introspection_endpoint else None
            for e in entries
        },
        trust.policies,
        owners={
            e.issuer: e.opaque_prefix
            for e in entries
            if len(entries) == 1 or e.opaque_prefix or e.introspection_endpoint
        },
        ceiling=settings.introspection_cache_seconds,
        leeway=settings.leeway_seconds,
        max_lifetime=settings.max_token_lifetime_seconds,
    )
