"""Verified tokens, remembered: checks 3 to 12 once per token rather than once per job.

Keyed by the SHA-256 of the token (the cache holds no token), bounded in size, and an entry
lives no longer than its token's ``exp`` (plus the leeway). An entry is also dropped when its
issuer's JWKS no longer holds the key that verified it. A hit replaces only checks 3 to 12:
revocation, the action, scopes, delegation and proof are checked on every job.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .actions import Principal
from .tokens import VerificationKey, Verified


@dataclass(frozen=True, slots=True)
class Entry:
    """A token that passed checks 3 to 12, and what may end that."""

    verified: Verified
    principal: Principal
    header: dict[str, Any]
    key: VerificationKey | None
    until: float


class VerifiedTokens:
    """An LRU of verified tokens."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: float) -> Entry | None:
        """The entry of the token with this SHA-256 (see
        :meth:`~worker.tokens.TokenCheck.digest`), while the token has not expired."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.until <= now:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return entry

    def put(self, digest: bytes, entry: Entry) -> None:
        """Remember a verified token; the least recently used goes when full."""
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def drop(self, digest: bytes) -> None:
        """Forget one token (its key was withdrawn)."""
        self._entries.pop(digest, None)
