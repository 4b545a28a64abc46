"""A delivery as the pipeline sees it: bytes, properties and headers, nothing of AMQP."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.auth.proof import ProofKey
from worker.names import HEADER_AUTHORIZATION, HEADER_PROOF


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message taken from a work queue, as the transport edge hands it to the pipeline."""

    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    content_type: str | None
    queue: str
    attempt: int = 1
    """Which attempt this is (``x-warden-attempt`` on warden's own retry copies)."""
    deferrals: int = 0
    """How often the message already waited for a verdict (``x-warden-deferrals``)."""
    redelivered: bool = False
    publisher_user: str | None = None
    """The broker user that published it, as far as the broker vouches for it."""
    dropped: tuple[str, ...] = ()
    """Properties and headers (``headers.<name>``) that could not be decoded, left out."""
    arrived_at: float | None = None
    """When the broker first received the job (seconds since the epoch), as far as a witness
    warden believes says so: the broker's own stamp, or the first arrival warden carried over on
    its retry and wait copies. None where there is no such witness."""
    replayed_by: str | None = None
    """Who replayed the job with a token of their own, as warden's replay tool marked it."""


# --- the publisher's side: a job as docs/jobs.md has it -----------------------------------------


def job_body(action: str, payload: Mapping[str, Any]) -> bytes:
    """The body of a job: ``{"action": ..., "payload": {...}}``, compact UTF-8 JSON."""
    return json.dumps({"action": action, "payload": dict(payload)}, separators=(",", ":")).encode()


def job_headers(
    token: str,
    *,
    message_id: str,
    action: str,
    queue: str,
    body: bytes,
    proof_key: ProofKey | None = None,
    headers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The headers of a job: ``headers``, then ``authorization: Bearer <token>`` and, with
    ``proof_key`` (the key the token is bound to by ``cnf.jkt``), the ``x-warden-proof`` over
    this message id, action, queue and body (``docs/proof-of-possession.md``)."""
    out = {**(headers or {}), HEADER_AUTHORIZATION: f"Bearer {token}"}
    if proof_key is not None:
        out[HEADER_PROOF] = proof_key.sign(
            token=token, message_id=message_id, action=action, queue=queue, body=body
        )
    return out
