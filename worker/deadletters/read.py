"""Reading dead letters, whoever dead-lettered them: what happened, to what, and where it
came from. Pure: the broker side is :mod:`worker.deadletters.admin`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker import names
from worker.errors import NotStrictJSON
from worker.support import strictjson

_BROKER_REASONS = ("delivery_limit", "rejected")

# Headers a replayed job must not carry: warden's verdict on the old attempt, the broker's
# bookkeeping, the old credential and anything bound to it (a proof covers the old token).
_NOT_REPLAYED = frozenset(
    {
        names.HEADER_AUTHORIZATION,
        names.HEADER_REASON,
        names.HEADER_DENIAL,
        names.HEADER_X_DEATH,
        names.HEADER_ATTEMPT,
        names.HEADER_DEFERRALS,
        names.HEADER_DELIVERY_COUNT,
        *names.BROKER_DEATH_HEADERS,
        names.HEADER_PROOF,
    }
)


def _broker_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get(names.HEADER_X_DEATH)
    if isinstance(deaths, list):
        for death in deaths:
            if isinstance(death, Mapping) and death.get("reason") in _BROKER_REASONS:
                return death
    return None


def dead_letter_reason(headers: Mapping[str, Any]) -> str | None:
    """``x-warden-reason`` when warden dead-lettered the message; ``delivery_limit`` when the
    broker did (its ``x-death`` says so); None for anything else."""
    reason = headers.get(names.HEADER_REASON)
    if isinstance(reason, str):
        return reason
    return names.DELIVERY_LIMIT_REASON if _broker_death(headers) is not None else None


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as an operator reads it."""

    message_id: str | None
    reason: str | None
    origin: str | None
    """The work queue it came from, where a replay sends it."""
    action: str | None
    client_id: str | None
    sub: str | None
    denied_at: str | None
    detail: str | None
    denial: Mapping[str, Any] | None
    body: bytes
    headers: Mapping[str, Any]

    @classmethod
    def read(cls, body: bytes, headers: Mapping[str, Any] | None, message_id: str | None) -> Letter:
        """Make sense of a dead letter's body and headers."""
        headers = headers or {}
        denial = headers.get(names.HEADER_DENIAL)
        denial = denial if isinstance(denial, Mapping) else None
        token = (denial or {}).get("token")
        token = token if isinstance(token, Mapping) else {}
        death = _broker_death(headers)
        origin = (denial or {}).get("queue") or (death or {}).get("queue")
        action = (denial or {}).get("action") or _body_action(body)
        when = (denial or {}).get("denied_at") or (death or {}).get("time")
        detail = (denial or {}).get("detail")
        if detail is None and death is not None:
            detail = f"the broker dead-lettered it after {death.get('count', '?')} deliveries"
        return cls(
            message_id=message_id,
            reason=dead_letter_reason(headers),
            origin=origin if isinstance(origin, str) else None,
            action=action if isinstance(action, str) else None,
            client_id=_text(token.get("client_id")),
            sub=_text(token.get("sub")),
            denied_at=None if when is None else str(when),
            detail=_text(detail),
            denial=denial,
            body=body,
            headers=headers,
        )

    def summary(self) -> dict[str, Any]:
        """What ``warden dlq list`` shows of it."""
        return {
            "message_id": self.message_id,
            "reason": self.reason,
            "action": self.action,
            "client_id": self.client_id,
            "sub": self.sub,
            "denied_at": self.denied_at,
            "detail": self.detail,
        }


def replay_headers(headers: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The headers of a replayed job: the original ones, a fresh credential, no old verdict."""
    kept = {k: v for k, v in headers.items() if k.lower() not in _NOT_REPLAYED}
    kept[names.HEADER_AUTHORIZATION] = f"Bearer {token}"
    return kept


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _body_action(body: bytes) -> str | None:
    try:
        job = strictjson.loads(body)
    except NotStrictJSON:
        return None
    return _text(job.get("action")) if isinstance(job, dict) else None
