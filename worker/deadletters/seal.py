"""The token of a job refused only for time, sealed into its dead letter (``WARDEN_SEAL_KEY``).

No raw token rests in a dead letter. A job refused ``token_expired`` or ``token_not_yet_valid``
may still be run as its publisher, once the queueing allowance covers it: its dead letter then
carries the token encrypted and authenticated with AES-256-GCM, the message id as associated
data, so that a sealed token opens only on the letter it was sealed for. The workers that seal
and the operator's tools that open share the key; the broker never sees it.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.errors import Denial, TokenExpired, TokenNotYetValid

SEALED_REASONS = frozenset({TokenExpired.reason, TokenNotYetValid.reason})
"""The refusals whose dead letters carry the sealed token: those only time decided."""

_VERSION = "v1."
_NONCE_BYTES = 12
_CONTEXT = b"warden sealed token v1\x00"


class Seal:
    """Seals and opens tokens with one 256-bit key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, token: str, message_id: str) -> str:
        """``token`` encrypted for the letter of ``message_id``: ``v1.`` and base64url text."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, token.encode("ascii"), _CONTEXT + message_id.encode())
        return _VERSION + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")

    def open(self, sealed: object, message_id: str) -> str | None:
        """The token sealed for ``message_id``, or None when ``sealed`` is not one this key
        sealed for that letter (another key, another letter, altered or not a seal at all)."""
        if isinstance(sealed, bytes):
            sealed = sealed.decode("ascii", "replace")
        if not isinstance(sealed, str) or not sealed.startswith(_VERSION):
            return None
        text = sealed.removeprefix(_VERSION)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            opened = self._aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _CONTEXT + message_id.encode()
            )
            return opened.decode("ascii")
        except (ValueError, binascii.Error, InvalidTag):
            return None


def sealed_for(denial: Denial) -> bool:
    """Whether a dead letter of ``denial`` carries its token sealed: a refusal only for time."""
    return denial.reason in SEALED_REASONS
