"""Verified tokens, remembered: checks 3 to 12 once per token rather than once per job.

Keyed by the SHA-256 of the token (the cache holds no token), bounded in size, and an entry
lives no longer than its token's ``exp`` (plus the leeway). An entry is also dropped when its
issuer's JWKS no longer holds the key that verified it. A hit replaces only checks 3 to 12:
revocation, the action, scopes, delegation and proof are checked on every job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.auth.principal import Principal
from worker.auth.tokens import VerificationKey, Verified
from worker.support.cache import BoundedCache


@dataclass(frozen=True, slots=True)
class Entry:
    """A token that passed checks 3 to 12, and what may end that."""

    verified: Verified
    principal: Principal
    header: dict[str, Any]
    key: VerificationKey | None
    until: float


class VerifiedTokens(BoundedCache[bytes, Entry]):
    """Verified tokens by SHA-256 (see :meth:`~worker.auth.tokens.TokenCheck.digest`), each
    until its ``until``, the least recently used going first when full, for a token asked for
    more often than it (admission): when more distinct tokens cycle than it holds, the cache
    keeps serving its share of them rather than evicting each before it comes again."""

    def __init__(self, max_entries: int = 10_000) -> None:
        super().__init__(max_entries, admission=True)

    def remember(self, digest: bytes, entry: Entry) -> None:
        """Keep a verified token until its entry's ``until``."""
        self.put(digest, entry, entry.until)
