"""Revocation state: what the feed said was revoked, checked in O(1) per message (check 13).

Events (``schemas/revocation.schema.json``) revoke one token by ``jti``, or every token of a
``sub`` or ``client_id`` issued before ``issued_before``, optionally of one ``iss``. Each entry
is forgotten at its ``expires_at``, so memory holds only what can still matter.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
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
    def many_from_json(cls, body: bytes) -> list[Revocation | InvalidEvent]:
        """The events of one message: one event (a JSON object) or several (a JSON array of
        them). Each element is an event or the :class:`InvalidEvent` saying what is wrong with
        it; a body that is neither raises :class:`InvalidEvent`."""
        try:
            decoded = strictjson.loads(body)
        except NotStrictJSON:
            raise InvalidEvent("not UTF-8 JSON without duplicate members") from None
        if isinstance(decoded, dict):
            return [cls.from_mapping(decoded)]
        if not isinstance(decoded, list):
            raise InvalidEvent("not a JSON object nor an array of them")
        events: list[Revocation | InvalidEvent] = []
        for item in decoded:
            try:
                if not isinstance(item, dict):
                    raise InvalidEvent("not a JSON object")
                events.append(cls.from_mapping(item))
            except InvalidEvent as exc:
                events.append(exc)
        return events

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
_CODES: dict[str, str] = {"jti": "j", "sub": "s", "client_id": "c"}


def entry_key(subject: Subject, issuer: str | None, value: str) -> bytes:
    """The key an entry is held under: a 16-byte BLAKE2b digest of what it names, so that an
    entry costs the same few bytes however long its identifier. The issuer is length-prefixed:
    no two different (issuer, value) pairs read as the same text."""
    scope = "-" if issuer is None else f"{len(issuer)}:{issuer}"
    text = f"{_CODES[subject]}{scope}|{value}".encode(errors="surrogatepass")
    return hashlib.blake2b(text, digest_size=16).digest()


_Entry = int | tuple[float, int]
"""What an entry holds: its expiry (a whole second) for a jti; its cut-off and expiry else."""


class RevocationList:
    """Every entry that can still matter, keyed for O(1) lookups.

    An entry is small (about 110 bytes with the dictionary's share): its key a digest
    (:func:`entry_key`), its expiry rounded up to the second and shared by every entry that
    ends in the same second, and forgotten through one list of keys per second rather than an
    ordered structure per entry."""

    def __init__(self, max_entries: int | None = None, *, hold: float = 0.0) -> None:
        self.max_entries = max_entries
        """At most this many entries; an event that would add one more raises
        :class:`~worker.errors.RevocationListFull` (the feed then stops decisions)."""
        self.hold = hold
        """Seconds an entry is kept past its ``expires_at``: the largest queueing allowance,
        for which a token may be accepted after its ``exp``."""
        self._entries: dict[bytes, _Entry] = {}
        self._due: dict[int, tuple[int, list[bytes]]] = {}
        """Keys by the second their entry ends (an entry extended later is listed again)."""
        self._seconds: list[int] = []
        """The seconds of ``_due``, as a heap."""

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, event: Revocation, now: float) -> bool:
        """Record ``event``; False when it has already expired and was ignored."""
        if event.expires_at + self.hold <= now:
            return False
        key = entry_key(event.subject, event.issuer, event.value)
        entries = self._entries
        old = entries.get(key)
        if old is None and self.max_entries is not None and len(entries) >= self.max_entries:
            raise RevocationListFull(
                f"{len(entries)} revocation entries held, "
                "the most WARDEN_REVOCATION_MAX_ENTRIES allows"
            )
        expires = math.ceil(event.expires_at + self.hold)
        before = event.issued_before
        old_expires = -1
        if old is not None:
            # Entries only ever widen: the later cut-off and the later expiry win.
            if isinstance(old, tuple):
                old_before, old_expires = old
                if before is not None:
                    before = max(before, old_before)
            else:
                old_expires = old
            expires = max(expires, old_expires)
        due = self._due.get(expires)
        if due is None:
            due = self._due[expires] = (expires, [])
            heapq.heappush(self._seconds, expires)
        expires = due[0]  # the one int object of that second, which its entries share
        entries[key] = expires if before is None else (before, expires)
        if expires != old_expires:
            due[1].append(key)
        return True

    def prune(self, now: float) -> int:
        """Forget entries whose ``expires_at`` has passed; return how many went."""
        gone = 0
        entries = self._entries
        while self._seconds and self._seconds[0] <= now:
            second = heapq.heappop(self._seconds)
            for key in self._due.pop(second)[1]:
                entry = entries.get(key)
                if entry is None:
                    continue
                expires = entry[1] if isinstance(entry, tuple) else entry
                if expires <= now:
                    del entries[key]
                    gone += 1
        return gone

    def entries(self) -> dict[bytes, tuple[float | None, float]]:
        """A copy of every entry: ``entry_key(subject, issuer, value) -> (issued_before,
        expires_at)``, ``expires_at`` rounded up to the second."""
        return {
            key: (entry[0], float(entry[1])) if isinstance(entry, tuple) else (None, float(entry))
            for key, entry in self._entries.items()
        }

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
                entry = self._entries.get(entry_key(subject, scope, value))
                if entry is None:
                    continue
                if not isinstance(entry, tuple):
                    raise errors.TokenRevoked(f"the token's jti {value!r} was revoked")
                before = entry[0]
                if not is_numeric_date(iat) or iat < before:
                    raise errors.TokenRevoked(
                        f"tokens of {subject} {value!r} issued before {_at(before)} were revoked"
                    )
