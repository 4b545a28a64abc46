"""Who a verified token speaks for: what an action is told of the caller, never the token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.auth.tokens import actor_chain, granted_scopes


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the verified token speaks for. Holds no token."""

    sub: str
    client_id: str | None
    scopes: frozenset[str]
    issuer: str
    jti: str | None
    expires_at: datetime | None
    actor: str | None = None
    """``act.sub``: who acts for ``sub`` (RFC 8693 delegation), or None."""
    actor_chain: tuple[str, ...] = ()
    """Every actor of the token's ``act`` chain, the current one (:attr:`actor`) first, then the
    prior actors of nested ``act`` claims. Only the first was checked against the action's
    ``actors``; the others are what the token says of the delegation's history."""


def principal(claims: Mapping[str, Any], issuer: str) -> Principal:
    """Who a verified token speaks for."""
    exp = claims.get("exp")
    actors = actor_chain(claims) if "act" in claims else ()
    return Principal(
        sub=claims.get("sub", ""),
        client_id=claims.get("client_id"),
        scopes=granted_scopes(claims),
        issuer=issuer,
        jti=claims.get("jti"),
        expires_at=datetime.fromtimestamp(exp, UTC) if isinstance(exp, int) else None,
        actor=actors[0] if actors else None,
        actor_chain=actors,
    )
