"""Every name of an exchange, a queue or a header warden reads or writes: the fixed ones are
what operators and publishers depend on (``docs/jobs.md``, ``docs/dead-letters.md``)."""

from __future__ import annotations

DEAD_LETTER_EXCHANGE = "warden.dlx"
JOBS_EXCHANGE = "warden.jobs"
"""Jobs enter here (direct): each work queue is bound with its own name as routing key."""
REVOKE_EXCHANGE = "warden.revoke"
"""Revocation events enter here (fanout), bound to the stream only."""
QUARANTINE_EXCHANGE = "warden.quarantine"
"""Where the broker dead-letters a work queue's messages (direct, routing key: the queue)."""
QUARANTINE_QUEUE = "warden.quarantine"
"""The one queue, for every work queue of a virtual host, that holds what the broker
dead-lettered (bound to :data:`QUARANTINE_EXCHANGE` with each work queue's name), until warden
has written it into that work queue's dead-letter queue without its token."""
REVOCATION_STREAM = "warden.revocations"

HEADER_AUTHORIZATION = "authorization"
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
HEADER_PROOF = "x-warden-proof"
HEADER_REASON = "x-warden-reason"
HEADER_DENIAL = "x-warden-denial"
HEADER_DEFERRALS = "x-warden-deferrals"
HEADER_ATTEMPT = "x-warden-attempt"
HEADER_PUBLISHER_USER = "x-warden-publisher-user"
"""On warden's retry or wait copy: the ``user_id`` of the original, which the copy replaces
with warden's own."""
HEADER_RECEIVED_AT = "x-warden-received-at"
"""On warden's retry or wait copy, and on a job replayed with its own token: when the broker
first received the job (milliseconds since the epoch), as the broker's stamp said then."""
HEADER_REPLAYED_BY = "x-warden-replayed-by"
"""On a job replayed with another token than its own: the broker user who replayed it."""
HEADER_SEALED_TOKEN = "x-warden-sealed-token"
"""On a dead letter of a job refused only for time: its token, sealed (``WARDEN_SEAL_KEY``)."""
HEADER_BROKER_TIMESTAMP = "timestamp_in_ms"
"""Set by RabbitMQ 3.12 and later on every message it receives, when its message interceptor
``set_header_timestamp`` is configured (with ``overwrite = true``, replacing a publisher's)."""
HEADER_X_DEATH = "x-death"
HEADER_MARKER = "x-warden-marker"

HEADER_DELIVERY_COUNT = "x-delivery-count"
"""Set by a quorum queue on a redelivered message."""
BROKER_DEATH_HEADERS = (
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
)
"""Set by the broker beside ``x-death`` on a message it dead-letters."""
STREAM_OFFSET = "x-stream-offset"
"""Where a stream consumer starts (an argument) and where a stream message stands (a header)."""

DELIVERY_LIMIT_REASON = "delivery_limit"

ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
"""``typ`` values of an RFC 9068 access token (section 4), lower case."""


def stamp_probe_queue(nonce: int) -> str:
    """Name of the private queue a worker proves the broker's arrival stamp with: named like a
    shared retry queue (so that the worker role's permissions cover it), with a leading zero no
    retry queue's TTL has (:func:`retry_queue`), so it is never one of them."""
    return f"warden.retry.0{nonce}ms"


def dead_letter_queue(queue: str) -> str:
    """Name of the queue that holds ``queue``'s dead letters."""
    return f"{queue}.dlq"


def dead_letter_binding(queue: str) -> str:
    """Binding key of ``queue``'s dead-letter queue: one word of reason, then the queue."""
    return f"*.{queue}"


def former_quarantine_queue(queue: str) -> str:
    """The quarantine queue of ``queue`` alone that earlier versions declared; a worker that
    finds one unbinds it and empties it (:func:`~worker.amqp.topology.declare_topology`)."""
    return f"{queue}.quarantine"


RETRY_EXCHANGE = "warden.retry"
"""Where warden parks its retry and wait copies (headers): each copy goes to the shared retry
queue its ``warden-wait-ms`` names, and from there back through ``warden.jobs`` to the queue
it was published for (its routing key)."""

HEADER_WAIT = "warden-wait-ms"
"""On warden's retry or wait copy: the retry queue it waits in, by its TTL in ms. Not ``x-``:
RabbitMQ's headers exchange ignores headers of that prefix; a string, as the binding's value
(the broker matches by type too). A publisher's own is overwritten on every copy."""


def retry_queue(ttl_ms: int) -> str:
    """Name of the retry queue, shared by every work queue of a virtual host, that holds copies
    waiting up to ``ttl_ms``."""
    return f"warden.retry.{ttl_ms}ms"


def dead_letter_routing_key(reason: str, queue: str) -> str:
    """Routing key of a dead letter: ``<reason>.<queue>``."""
    return f"{reason}.{queue}"
