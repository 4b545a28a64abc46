"""warden's one error root, with a permanent and a transient branch.

A :class:`Permanent` error gives the same answer however often it is tried: a denial (the
message is dead-lettered with the class's ``reason`` and its RFC 6750 ``error`` class, see
``docs/checks.md``), a configuration that cannot work, an invalid event. A :class:`Transient`
error may go away: the message waits and is decided later, the link is tried again. The reason
always comes from the class, never from the text of the exception.
"""

from __future__ import annotations

from typing import ClassVar


class WardenError(Exception):
    """Root of every error warden raises on purpose."""


class Permanent(WardenError):
    """Trying again gives the same answer."""


class Transient(WardenError):
    """May succeed when tried again later."""


class ConfigurationError(Permanent):
    """The configuration or the action registry is unusable; start-up stops."""


class InvalidEvent(Permanent, ValueError):
    """A revocation event that does not follow ``schemas/revocation.schema.json``."""


class AccessRefused(Permanent):
    """The broker refused a tool's user something its permissions do not allow (``warden
    permissions`` prints what each role may do)."""


class QueueMissing(Permanent):
    """A queue a tool needs does not exist."""


class TokenRequestFailed(Permanent):
    """The authorization server gave no access token."""


class NotStrictJSON(Permanent, ValueError):
    """Bytes that are not UTF-8 JSON as RFC 8259 has it (no duplicate members, no NaN, no
    unpaired surrogate); ``utf8`` is False when they are not even UTF-8."""

    def __init__(self, message: str, *, utf8: bool = True) -> None:
        super().__init__(message)
        self.utf8 = utf8


class TableNotEncodable(Permanent):
    """A header table holds a value AMQP cannot encode."""


class Denial(Permanent):
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


class PayloadInvalid(InvalidRequest):
    """Check 18: the payload does not fit the action's model (the failing fields, never their
    values)."""

    reason = "payload_invalid"


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
    PayloadInvalid,
    ActionFailed,
    ActionRejected,
    DeliveryLimit,
)
"""Every denial, in the order of the checks; ``schemas/denial.schema.json`` enumerates the same."""

REASONS: dict[str, type[Denial]] = {cls.reason: cls for cls in DENIALS}


class Unavailable(Transient):
    """A verdict cannot be reached now (keys unreachable, state too stale): wait, do not deny."""


class KeysUnavailable(Unavailable):
    """No usable key of the issuer could be had."""


class IntrospectionUnavailable(Unavailable):
    """The issuer's introspection endpoint gave no usable answer."""


class RevocationsStale(Unavailable):
    """The revocation list cannot be relied on now (the feed is behind, unreachable or faulted)."""


class RevocationListFull(Transient):
    """The revocation list holds ``WARDEN_REVOCATION_MAX_ENTRIES`` entries and an event would add
    one more; entries expire, so it may fit later."""


class FetchError(Transient):
    """A metadata or JWKS document could not be had or was not usable."""


class BrokerUnresponsive(Transient, TimeoutError):
    """The broker accepted a connection and did not complete the AMQP handshake in time."""


class FeedBroken(Transient):
    """The revocation stream's consumer was cancelled, its channel closed, or an event could not
    be applied."""


class PublishFailed(Transient):
    """The broker did not confirm a publish (a dead letter, a requeued copy, a job)."""


class Unroutable(PublishFailed):
    """The broker returned a publish: no queue is bound where it went."""


class JobRefused(WardenError):
    """A job a :class:`worker.Publisher` sent was not confirmed; ``cause`` names the broker's
    refusal. ``message_id`` is the job's; ``confirmed`` lists the jobs of the same call that the
    broker did confirm (nothing else was published)."""

    cause: ClassVar[str]

    def __init__(self, detail: str, *, message_id: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.message_id = message_id
        self.confirmed: list[str] = []


class JobUnroutable(JobRefused, Permanent):
    """The broker returned the job (``NO_ROUTE``): no queue of that name is bound to
    ``warden.jobs``."""

    cause = "unroutable"


class JobAccessRefused(JobRefused, Permanent):
    """The broker refused the publisher's user (``ACCESS_REFUSED``): no write permission on
    ``warden.jobs``, or a login it does not accept."""

    cause = "access_refused"


class JobExchangeMissing(JobRefused, Permanent):
    """``warden.jobs`` does not exist (``NOT_FOUND``): no worker has declared it yet."""

    cause = "exchange_missing"


class JobNacked(JobRefused, Transient):
    """The broker answered the publish with a negative acknowledgement (a full queue that
    rejects publishes, an internal error)."""

    cause = "nacked"


class JobNotConfirmed(JobRefused, Transient):
    """The connection or channel closed before the broker confirmed the job: it may or may not
    have been enqueued."""

    cause = "not_confirmed"


class Reject(Permanent):
    """Raised by an action to refuse a job for good: it is dead-lettered ``action_rejected``."""


class Retry(Transient):
    """Raised by an action to ask for another attempt later, optionally after ``delay`` seconds."""

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay
