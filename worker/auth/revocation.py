"""Revocation state: what the feed said was revoked, checked in O(1) per message (check 13).

Events (``schemas/revocation.schema.json``) revoke one token by ``jti``, or every token of a
``sub`` or ``client_id`` issued before ``issued_before``, optionally of one ``iss``. Each entry
is forgotten at its ``expires_at``, so memory holds only what can still matter.
"""

from __future__ import annotations

import heapq
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from worker import errors
from worker.auth.tokens import is_numeric_date
from worker.errors import InvalidEvent, NotStrictJSON, RevocationListFull
from worker.support import strictjson
from worker.support.clock import rfc3339

Subject = Literal["jti", "sub", "client_id"]
SUBJECTS: tuple[Subject, ...] = ("jti", "sub", "client_id")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)
_EVENT_KEYS = frozenset({"jti", "sub", "client_id", "iss", "issued_before", "expires_at", "reason"})


def parse_time(value: object, name: str) -> float:
    """An RFC 3339 date-time with an offset, as a POSIX timestamp."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise InvalidEvent(f"{name} is not an RFC 3339 date-time with an offset")
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidEvent(f"{name} is not a valid date-time") from None


@dataclass(frozen=True, slots=True)
class Revocation:
    """One event of the feed."""

    subject: Subject
    value: str
    issuer: str | None
    issued_before: float | None
    expires_at: float

    @classmethod
    def from_json(cls, body: bytes) -> Revocation:
        """Parse and validate an event; raise :class:`InvalidEvent` naming what is wrong."""
        try:
            event = strictjson.loads(body)
        except NotStrictJSON:
            raise InvalidEvent("not UTF-8 JSON without duplicate members") from None
        if not isinstance(event, dict):
            raise InvalidEvent("not a JSON object")
        return cls.from_mapping(event)

    @classmethod
    def from_mapping(cls, event: Mapping[str, Any]) -> Revocation:
        """Validate a decoded event (the rules of ``schemas/revocation.schema.json``)."""
        unknown = event.keys() - _EVENT_KEYS
        if unknown:
            raise InvalidEvent(f"unknown members {sorted(unknown)}")
        present = [s for s in SUBJECTS if s in event]
        if len(present) != 1:
            raise InvalidEvent("exactly one of jti, sub, client_id is required")
        subject = present[0]
        value = event[subject]
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"{subject} is not a non-empty string")
        issuer = event.get("iss")
        if "iss" in event and (not isinstance(issuer, str) or not issuer):
            raise InvalidEvent("iss is not a non-empty string")
        if "reason" in event and not isinstance(event["reason"], str):
            raise InvalidEvent("reason is not a string")
        issued_before = None
        if subject == "jti":
            if "issued_before" in event:
                raise InvalidEvent("issued_before goes with sub or client_id, not jti")
        else:
            issued_before = parse_time(event.get("issued_before"), "issued_before")
        expires_at = parse_time(event.get("expires_at"), "expires_at")
        return cls(subject, value, issuer, issued_before, expires_at)

    def to_json(self) -> bytes:
        """The event as the feed carries it."""
        event: dict[str, Any] = {self.subject: self.value, "expires_at": _at(self.expires_at)}
        if self.issuer is not None:
            event["iss"] = self.issuer
        if self.issued_before is not None:
            event["issued_before"] = _at(self.issued_before)
        return json.dumps(event, separators=(",", ":")).encode()


def _at(timestamp: float) -> str:
    return rfc3339(timestamp, "auto")


_Key = tuple[Subject, str | None, str]


class RevocationList:
    """Every entry that can still matter, keyed for O(1) lookups."""

    def __init__(self, max_entries: int | None = None, *, hold: float = 0.0) -> None:
        self.max_entries = max_entries
        """At most this many entries; an event that would add one more raises
        :class:`~worker.errors.RevocationListFull` (the feed then stops decisions)."""
        self.hold = hold
        """Seconds an entry is kept past its ``expires_at``: the largest queueing allowance,
        for which a token may be accepted after its ``exp``."""
        # (subject, issuer or None, value) -> (issued_before or None for a jti, expires_at)
        self._entries: dict[_Key, tuple[float | None, float]] = {}
        # (expires_at, sequence, key): the sequence number breaks ties between equal expiries,
        # so the heap never compares two keys (whose issuer may be None beside a string).
        self._expiry: list[tuple[float, int, _Key]] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, event: Revocation, now: float) -> bool:
        """Record ``event``; False when it has already expired and was ignored."""
        if event.expires_at + self.hold <= now:
            return False
        key: _Key = (event.subject, event.issuer, event.value)
        old = self._entries.get(key)
        if old is None and self.max_entries is not None and len(self._entries) >= self.max_entries:
            raise RevocationListFull(
                f"{len(self._entries)} revocation entries held, "
                "the most WARDEN_REVOCATION_MAX_ENTRIES allows"
            )
        before, expires = event.issued_before, event.expires_at + self.hold
        if old is not None:
            # Entries only ever widen: the later cut-off and the later expiry win.
            if before is not None and old[0] is not None:
                before = max(before, old[0])
            expires = max(expires, old[1])
        self._entries[key] = (before, expires)
        if old is None or expires > old[1]:
            heapq.heappush(self._expiry, (expires, next(self._sequence), key))
        return True

    def prune(self, now: float) -> int:
        """Forget entries whose ``expires_at`` has passed; return how many went."""
        gone = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, _, key = heapq.heappop(self._expiry)
            entry = self._entries.get(key)
            if entry is not None and entry[1] <= now:
                del self._entries[key]
                gone += 1
        return gone

    def entries(self) -> dict[_Key, tuple[float | None, float]]:
        """A copy of every entry: ``(subject, issuer, value) -> (issued_before, expires_at)``."""
        return dict(self._entries)

    def check(self, claims: Mapping[str, Any], issuer: str) -> None:
        """Raise :class:`~worker.errors.TokenRevoked` when an entry covers the token.

        ``claims`` name the token's ``jti``, ``sub``, ``client_id`` and ``iat``, read where its
        issuer puts them (:meth:`~worker.auth.tokens.IssuerPolicy.identity`): an Entra ID token's
        ``uti`` is its ``jti`` here, an Okta token's ``cid`` its ``client_id``."""
        iat = claims.get("iat")
        for subject in SUBJECTS:
            value = claims.get(subject)
            if not isinstance(value, str):
                continue
            for scope in (issuer, None):
                entry = self._entries.get((subject, scope, value))
                if entry is None:
                    continue
                before = entry[0]
                if before is None:
                    raise errors.TokenRevoked(f"the token's jti {value!r} was revoked")
                if not is_numeric_date(iat) or iat < before:
                    raise errors.TokenRevoked(
                        f"tokens of {subject} {value!r} issued before {_at(before)} were revoked"
                    )
