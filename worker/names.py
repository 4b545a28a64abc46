"""Names of exchanges, queues and headers that operators and publishers depend on (SPEC 1, 3)."""

from __future__ import annotations

DEAD_LETTER_EXCHANGE = "warden.dlx"
REVOCATION_STREAM = "warden.revocations"

HEADER_AUTHORIZATION = "authorization"
HEADER_TRACEPARENT = "traceparent"
HEADER_PROOF = "x-warden-proof"
HEADER_REASON = "x-warden-reason"
HEADER_DENIAL = "x-warden-denial"
HEADER_DEFERRALS = "x-warden-deferrals"
HEADER_ATTEMPT = "x-warden-attempt"
HEADER_X_DEATH = "x-death"
HEADER_MARKER = "x-warden-marker"

DELIVERY_LIMIT_REASON = "delivery_limit"


def dead_letter_queue(queue: str) -> str:
    """Name of the queue that holds ``queue``'s dead letters."""
    return f"{queue}.dlq"


def dead_letter_binding(queue: str) -> str:
    """Binding key of ``queue``'s dead-letter queue: one word of reason, then the queue."""
    return f"*.{queue}"


def retry_queue(queue: str, ttl_ms: int) -> str:
    """Name of the queue that holds ``queue``'s messages waiting up to ``ttl_ms``."""
    return f"{queue}.retry.{ttl_ms}ms"


def dead_letter_routing_key(reason: str, queue: str) -> str:
    """Routing key of a dead letter: ``<reason>.<queue>``."""
    return f"{reason}.{queue}"
