"""Publishing jobs with publisher confirms: what ``warden publish`` does."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import DeliveryMode

from worker import names
from worker.amqp.outbound import publish_confirmed
from worker.auth.proof import ProofKey

WINDOW = 256
"""Publishes awaiting their confirm at once: confirms are awaited in batches, not one by one."""


def job_message(
    action: str,
    payload: Mapping[str, Any],
    token: str,
    *,
    message_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    proof_key: ProofKey | None = None,
    queue: str | None = None,
) -> aio_pika.Message:
    """A persistent job message (``docs/jobs.md``) carrying ``token`` as a Bearer credential.

    With ``proof_key`` (the key the token is bound to by ``cnf.jkt``) the message also carries
    the ``x-warden-proof`` of ``docs/proof-of-possession.md``, for ``queue``, the queue it is
    published to.
    """
    body = _body(action, payload)
    mid = message_id or str(uuid.uuid4())
    extra: dict[str, Any] = {names.HEADER_AUTHORIZATION: f"Bearer {token}"}
    if proof_key is not None:
        if not queue:
            raise ValueError("a proof is signed for one queue: pass queue= with proof_key=")
        extra[names.HEADER_PROOF] = proof_key.sign(
            token=token, message_id=mid, action=action, queue=queue, body=body
        )
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=mid,
        timestamp=datetime.now(UTC),
        headers={**(headers or {}), **extra},
    )


def _body(action: str, payload: Mapping[str, Any]) -> bytes:
    return json.dumps({"action": action, "payload": dict(payload)}, separators=(",", ":")).encode()


async def publish_jobs(
    broker_url: str,
    queue: str,
    action: str,
    payload: Mapping[str, Any],
    token: str,
    *,
    count: int = 1,
    message_id: str | None = None,
    proof_key: ProofKey | None = None,
    on_confirmed: Callable[[int], None] | None = None,
) -> list[str]:
    """Publish ``count`` jobs to ``queue`` through ``warden.jobs``; return their message ids once
    all are confirmed (a queue no worker has declared yet is refused as unroutable).

    With ``proof_key`` each job carries its own proof of possession (``x-warden-proof``) of the
    key that ``token`` is bound to (``warden publish --proof-key``).
    """
    ids = [message_id] if message_id and count == 1 else [str(uuid.uuid4()) for _ in range(count)]
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # Jobs enter through warden.jobs, the one exchange a publisher may write to.
        exchange = await channel.get_exchange(names.JOBS_EXCHANGE, ensure=False)
        for start in range(0, len(ids), WINDOW):
            await asyncio.gather(
                *(
                    publish_confirmed(
                        exchange,
                        job_message(
                            action,
                            payload,
                            token,
                            message_id=mid,
                            proof_key=proof_key,
                            queue=queue,
                        ),
                        queue,
                    )
                    for mid in ids[start : start + WINDOW]
                )
            )
            if on_confirmed is not None:
                on_confirmed(len(ids[start : start + WINDOW]))
    return ids
