"""Who a verified token speaks for: what an action is told of the caller, never the token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.auth.tokens import IssuerPolicy, actor_chain, is_numeric_date


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the verified token speaks for. Holds no token."""

    sub: str
    client_id: str | None
    """From where the issuer puts it (``client_id_claims``: ``client_id``, ``azp``, ``cid``)."""
    scopes: frozenset[str]
    issuer: str
    jti: str | None
    """The token's id, from where its issuer puts it (``token_id_claims``: ``jti``, ``uti``)."""
    expires_at: datetime | None
    actor: str | None = None
    """``act.sub``: who acts for ``sub`` (RFC 8693 delegation), or None."""
    actor_issuer: str | None = None
    """Who identifies :attr:`actor`: ``act.iss``, or else the token's own issuer."""
    actor_chain: tuple[str, ...] = ()
    """Every actor of the token's ``act`` chain, the current one (:attr:`actor`) first, then the
    prior actors of nested ``act`` claims. Only the first was checked against the action's
    ``actors``; the others are what the token says of the delegation's history."""


def principal(claims: Mapping[str, Any], policy: IssuerPolicy) -> Principal:
    """Who a verified token speaks for, read where its issuer puts each part."""
    exp = claims.get("exp")
    actors = actor_chain(claims) if "act" in claims else ()
    act = claims.get("act")
    act_iss = act.get("iss") if isinstance(act, dict) else None
    return Principal(
        sub=claims.get("sub", ""),
        client_id=policy.client_id(claims),
        scopes=policy.scopes(claims),
        issuer=policy.issuer,
        jti=policy.token_id(claims),
        expires_at=datetime.fromtimestamp(exp, UTC) if is_numeric_date(exp) else None,
        actor=actors[0] if actors else None,
        actor_issuer=(act_iss if isinstance(act_iss, str) else policy.issuer) if actors else None,
        actor_chain=actors,
    )
