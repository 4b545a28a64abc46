"""warden's error root: denials with stable reason codes, and verdicts that cannot be reached.

A denial is permanent: the message is dead-lettered with the class's ``reason`` and its RFC 6750
``error`` class. An :class:`Unavailable` is transient: the message waits and is decided later.
The reason always comes from the class, never from the text of the exception.
"""

from __future__ import annotations

from typing import ClassVar


class WardenError(Exception):
    """Root of every error warden raises on purpose."""


class ConfigurationError(WardenError):
    """The configuration or the action registry is unusable; start-up stops."""


class Denial(WardenError):
    """A permanent refusal of a message. ``detail`` is human text and never holds a secret."""

    reason: ClassVar[str]
    error: ClassVar[str]

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRequest(Denial):
    """RFC 6750 ``invalid_request``."""

    error = "invalid_request"


class InvalidToken(Denial):
    """RFC 6750 ``invalid_token``."""

    error = "invalid_token"


class InsufficientScope(Denial):
    """RFC 6750 ``insufficient_scope``."""

    error = "insufficient_scope"


class MalformedMessage(InvalidRequest):
    """Check 1: the body is not a valid job, or ``message_id`` is missing."""

    reason = "malformed_message"


class TokenMissing(InvalidRequest):
    """Check 2: no ``authorization`` header with a Bearer token."""

    reason = "token_missing"


class TokenMalformed(InvalidToken):
    """Check 3: not a compact JWS of JSON objects within the size limit."""

    reason = "token_malformed"


class AlgorithmNotAllowed(InvalidToken):
    """Check 4: ``alg`` is not allowed, or does not fit the key."""

    reason = "algorithm_not_allowed"


class TokenTypeInvalid(InvalidToken):
    """Check 5: ``typ`` is not an access-token type, or a ``crit`` header is not understood."""

    reason = "token_type_invalid"


class IssuerUntrusted(InvalidToken):
    """Check 6: ``iss`` is not a trusted issuer."""

    reason = "issuer_untrusted"


class KeyUnknown(InvalidToken):
    """Check 7: ``kid`` names no key of the issuer."""

    reason = "key_unknown"


class SignatureInvalid(InvalidToken):
    """Check 8: the signature does not verify."""

    reason = "signature_invalid"


class TokenExpired(InvalidToken):
    """Check 9: ``exp`` has passed."""

    reason = "token_expired"


class TokenNotYetValid(InvalidToken):
    """Check 10: ``nbf`` or ``iat`` is in the future."""

    reason = "token_not_yet_valid"


class AudienceMismatch(InvalidToken):
    """Check 11: ``aud`` does not name this resource server."""

    reason = "audience_mismatch"


class ClaimsMissing(InvalidToken):
    """Check 12: a required claim is absent."""

    reason = "claims_missing"


class TokenRevoked(InvalidToken):
    """Check 13: the token was revoked."""

    reason = "token_revoked"


class ActionUnknown(InvalidRequest):
    """Check 14: no action of that name is registered."""

    reason = "action_unknown"


class ScopeInsufficient(InsufficientScope):
    """Check 15: the token lacks a scope the action requires."""

    reason = "scope_insufficient"


class DelegationNotAllowed(InsufficientScope):
    """Check 16: the actor may not act for the subject on this action."""

    reason = "delegation_not_allowed"


class ProofInvalid(InvalidToken):
    """Check 17: a sender-constrained token came without a valid proof of possession."""

    reason = "proof_invalid"


class ActionFailed(InvalidRequest):
    """The action kept failing until the attempts ran out."""

    reason = "action_failed"


class ActionRejected(InvalidRequest):
    """The action refused the job for good."""

    reason = "action_rejected"


class DeliveryLimit(InvalidRequest):
    """The broker dead-lettered the message after too many failed deliveries."""

    reason = "delivery_limit"


DENIALS: tuple[type[Denial], ...] = (
    MalformedMessage,
    TokenMissing,
    TokenMalformed,
    AlgorithmNotAllowed,
    TokenTypeInvalid,
    IssuerUntrusted,
    KeyUnknown,
    SignatureInvalid,
    TokenExpired,
    TokenNotYetValid,
    AudienceMismatch,
    ClaimsMissing,
    TokenRevoked,
    ActionUnknown,
    ScopeInsufficient,
    DelegationNotAllowed,
    ProofInvalid,
    ActionFailed,
    ActionRejected,
    DeliveryLimit,
)
"""Every denial, in the order of the checks; ``schemas/denial.schema.json`` enumerates the same."""

REASONS: dict[str, type[Denial]] = {cls.reason: cls for cls in DENIALS}


class Unavailable(WardenError):
    """A verdict cannot be reached now (keys unreachable, state too stale): wait, do not deny."""


class KeysUnavailable(Unavailable):
    """No usable key of the issuer could be had."""


class IntrospectionUnavailable(Unavailable):
    """The issuer's introspection endpoint gave no usable answer."""


class RevocationsStale(Unavailable):
    """The revocation feed has been unreachable too long to trust the revocation list."""


class PublishFailed(WardenError):
    """The broker did not confirm a publish (a dead letter, a requeued copy, a job)."""


class Reject(WardenError):
    """Raised by an action to refuse a job for good: it is dead-lettered ``action_rejected``."""


class Retry(WardenError):
    """Raised by an action to ask for another attempt later, optionally after ``delay`` seconds."""

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay
