"""Reading dead letters, whoever dead-lettered them: what happened, to what, and where it
came from. Pure: the broker side is :mod:`worker.deadletters.admin`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
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
        names.HEADER_WAIT,
        names.HEADER_DELIVERY_COUNT,
        *names.BROKER_DEATH_HEADERS,
        names.HEADER_PROOF,
        names.HEADER_SEALED_TOKEN,
        names.HEADER_RECEIVED_AT,
        names.HEADER_REPLAYED_BY,
        names.HEADER_BROKER_TIMESTAMP,
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


UNTRUSTED = "untrusted"
"""What ``warden dlq`` counts a letter as that no trusted user wrote: never a reason."""


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as an operator reads it."""

    message_id: str | None
    trusted: bool
    """Written by a trusted broker user (``WARDEN_TRUSTED_USERS``): only then is it warden's
    verdict. Anyone who may publish into the queue could have written an untrusted one."""
    written_by: str | None
    """The ``user_id`` it carries, which the broker checked against its publisher's user."""
    reason: str | None
    origin: str
    """The work queue whose dead-letter queue holds it: where a replay sends it."""
    action: str | None
    client_id: str | None
    """The job's client: only from a token whose signature verified."""
    sub: str | None
    unverified: Mapping[str, str] | None
    """``client_id`` and ``sub`` as a token that did not verify claimed them: anyone's say."""
    denied_at: str | None
    received_at: str | None
    """When the broker first received the job (the denial record's ``received_at``)."""
    detail: str | None
    denial: Mapping[str, Any] | None
    body: bytes
    headers: Mapping[str, Any]
    copies: int = 1
    """How many letters in the queue are this one (:attr:`identity`): more than one when the
    same job was dead-lettered again for the same reason before the first was acked."""

    @property
    def identity(self) -> tuple[str, str, bytes] | None:
        """What makes two letters the same: the job's message id, the reason, and the body.
        A worker stopped after writing a letter and before acking the job leaves the job to be
        denied again, and so written again, alike. Only warden's own letters with a message id
        have an identity: an untrusted one is never taken for a copy of anything."""
        if not self.trusted or self.message_id is None or self.reason is None:
            return None
        return (self.message_id, self.reason, hashlib.sha256(self.body).digest())

    def repeated(self) -> Letter:
        """This letter, counting one more copy of it."""
        return replace(self, copies=self.copies + 1)

    @classmethod
    def read(
        cls,
        body: bytes,
        headers: Mapping[str, Any] | None,
        message_id: str | None,
        *,
        queue: str,
        user_id: str | None,
        trusted: frozenset[str],
    ) -> Letter:
        """Make sense of a dead letter of ``queue``'s dead-letter queue: its headers are
        believed only when a trusted user wrote it."""
        headers = headers or {}
        if user_id not in trusted:
            return cls(
                message_id=message_id,
                trusted=False,
                written_by=user_id,
                reason=None,
                origin=queue,
                action=body_action(body),
                client_id=None,
                sub=None,
                unverified=None,
                denied_at=None,
                received_at=None,
                detail=f"not written by a trusted user (user_id {user_id!r}): not warden's verdict",
                denial=None,
                body=body,
                headers=headers,
            )
        denial = headers.get(names.HEADER_DENIAL)
        denial = denial if isinstance(denial, Mapping) else None
        token = (denial or {}).get("token")
        token = token if isinstance(token, Mapping) else {}
        verified = token.get("verified") is True
        said = {k: v for k in ("client_id", "sub") if isinstance(v := token.get(k), str)}
        death = _broker_death(headers)
        action = (denial or {}).get("action") or body_action(body)
        when = (denial or {}).get("denied_at") or (death or {}).get("time")
        detail = (denial or {}).get("detail")
        if detail is None and death is not None:
            detail = f"the broker dead-lettered it after {death.get('count', '?')} deliveries"
        return cls(
            message_id=message_id,
            trusted=True,
            written_by=user_id,
            reason=dead_letter_reason(headers),
            origin=queue,
            action=action if isinstance(action, str) else None,
            client_id=said.get("client_id") if verified else None,
            sub=said.get("sub") if verified else None,
            unverified=said if said and not verified else None,
            denied_at=None if when is None else str(when),
            received_at=_text((denial or {}).get("received_at")),
            detail=_text(detail),
            denial=denial,
            body=body,
            headers=headers,
        )

    @property
    def counted_as(self) -> str:
        """What ``warden dlq stats`` counts it under: its reason, or ``untrusted``."""
        if not self.trusted:
            return UNTRUSTED
        return self.reason or "unknown"

    def summary(self) -> dict[str, Any]:
        """What ``warden dlq list`` shows of it (an untrusted letter has no reason)."""
        out: dict[str, Any] = {"message_id": self.message_id, "trusted": self.trusted}
        if self.trusted:
            out["reason"] = self.reason
        else:
            out["written_by"] = self.written_by
        out.update(
            action=self.action,
            client_id=self.client_id,
            sub=self.sub,
            unverified=None if self.unverified is None else dict(self.unverified),
            denied_at=self.denied_at,
            received_at=self.received_at,
            detail=self.detail,
            copies=self.copies,
        )
        return out


def replay_headers(
    headers: Mapping[str, Any],
    token: str,
    *,
    received_at: int | None = None,
    replayed_by: str | None = None,
) -> dict[str, Any]:
    """The headers of a replayed job: the original ones, a credential, no old verdict.

    With its own token, the job keeps its first arrival (``received_at``, milliseconds since the
    epoch, from the denial record); with another one, it arrives anew, and says who replayed it
    (``replayed_by``, the user the tool connects as, which the broker checks)."""
    kept = {k: v for k, v in headers.items() if k.lower() not in _NOT_REPLAYED}
    kept[names.HEADER_AUTHORIZATION] = f"Bearer {token}"
    if received_at is not None:
        kept[names.HEADER_RECEIVED_AT] = received_at
    if replayed_by is not None:
        kept[names.HEADER_REPLAYED_BY] = replayed_by
    return kept


def arrival_ms(received_at: str | None) -> int | None:
    """A denial record's ``received_at`` in milliseconds since the epoch, or None."""
    if received_at is None:
        return None
    try:
        moment = datetime.fromisoformat(received_at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return round(moment.timestamp() * 1000)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def body_action(body: bytes) -> str | None:
    """The ``action`` a job's body names, if it can be read at all."""
    try:
        job = strictjson.loads(body)
    except NotStrictJSON:
        return None
    return _text(job.get("action")) if isinstance(job, dict) else None
