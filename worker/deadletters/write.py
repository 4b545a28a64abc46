"""Writing a dead letter: the denial record it carries in ``x-warden-denial`` (its JSON Schema:
``schemas/denial.schema.json``; ``docs/dead-letters.md``), the original headers it keeps, and
both encoded for the wire.

A refusal tends to repeat: a publisher that holds a token keeps sending jobs the token does not
allow, to the same queue. Everything in ``x-warden-reason`` and ``x-warden-denial`` but the moment
of the refusal is then the same from one dead letter to the next, so it is encoded once and kept;
only ``denied_at`` and ``received_at`` are encoded per message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from worker import names
from worker.amqp.outbound import (
    TABLE,
    TABLE_LENGTH,
    table_entries,
    table_entry,
    table_key,
    table_value,
)
from worker.auth.tokens import TokenCheck
from worker.deadletters.read import body_action
from worker.errors import DeliveryLimit, Denial, MalformedMessage, TableNotEncodable
from worker.pipeline.decision import Denied, bearer_token
from worker.pipeline.delivery import Delivery
from worker.support.cache import BoundedCache
from worker.support.clock import rfc3339

log = logging.getLogger("warden.consumer")

_DENIED_AT = table_key("denied_at")
_RECEIVED_AT = table_key("received_at")


MAX_LISTED = 16
"""The most names of dropped values a denial record lists (its detail gives how many there
were); each is cut to :data:`MAX_NAME` characters."""
MAX_NAME = 100


def denial_record(
    denied: Denied,
    delivery: Delivery,
    *,
    exchange: str,
    routing_key: str,
    worker: str,
    now: datetime,
    dropped: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything an operator needs to know about a refusal, and nothing secret. ``dropped``
    names the headers the dead letter could not carry, beyond those the delivery lost when it
    was decoded."""
    listed = [*delivery.dropped, *dropped][:MAX_LISTED]
    return {
        "reason": denied.denial.reason,
        "error": denied.denial.error,
        "detail": denied.denial.detail,
        "queue": delivery.queue,
        "exchange": exchange,
        "routing_key": routing_key,
        "action": denied.action,
        "denied_at": rfc3339(now),
        "received_at": None if delivery.arrived_at is None else rfc3339(delivery.arrived_at),
        "worker": worker,
        "attempts": delivery.attempt,
        "token": None if denied.token is None else denied.token.summary(),
        "publisher_user": delivery.publisher_user,
        "dropped": [
            name if len(name) <= MAX_NAME else name[: MAX_NAME - 3] + "..." for name in listed
        ],
    }


def uncarried(denied: Denied, lost: Sequence[str]) -> Denied:
    """The verdict on a message whose dead letter or parked copy cannot carry the headers
    ``lost``: ``malformed_message``, saying what it was denied first."""
    first = denied.denial
    before = (
        first.detail
        if isinstance(first, MalformedMessage)
        else f"denied {first.reason} first: {first.detail}"
    )
    detail = f"{len(lost)} headers could not be encoded again and were dropped; {before}"
    return Denied(MalformedMessage(detail), denied.action, denied.token)


def unparked(delivery: Delivery, why: str) -> Denied:
    """The verdict on a message whose retry or wait copy cannot be encoded, to be passed to
    :func:`uncarried`: the action its body names, its token by fingerprint only."""
    reason = MalformedMessage(f"its copy could not be parked {why}")
    return Denied(reason, body_action(delivery.body), _token(delivery))


def _token(delivery: Delivery) -> TokenCheck | None:
    """The token a delivery carries, unchecked: what a record may show of it is its
    fingerprint, and kept headers must not repeat it."""
    try:
        return TokenCheck(bearer_token(delivery.headers))
    except Denial:
        return None


_NEVER_KEPT = frozenset(
    {
        names.HEADER_AUTHORIZATION,
        names.HEADER_REASON,
        names.HEADER_DENIAL,
        names.HEADER_PUBLISHER_USER,
        names.HEADER_RECEIVED_AT,
        names.HEADER_REPLAYED_BY,
        names.HEADER_SEALED_TOKEN,
        names.HEADER_BROKER_TIMESTAMP,
    }
)


def kept_headers(headers: Mapping[str, Any], token: str | None) -> dict[str, Any]:
    """The original headers a dead letter keeps: all but ``authorization``, any header that
    repeats the token anywhere in its value (in a string or bytes, at any depth of tables and
    arrays), ``x-warden-reason``, ``x-warden-denial`` and ``x-warden-sealed-token`` (any case),
    which only warden writes, ``x-warden-publisher-user``, which the record holds as
    ``publisher_user``, and the arrival (``timestamp_in_ms``, ``x-warden-received-at``, which the
    record holds as ``received_at``; the broker stamps the dead letter anew) with
    ``x-warden-replayed-by``, both of which are believed only on a trusted user's message.

    The token is ``token`` where the decision read one, and in any case what the
    ``authorization`` header carries: a job refused before its token was parsed (its body is
    not a job) must not leak the token through another header either.
    """
    secrets = {token} if token else set()
    for name, value in headers.items():
        if name.lower() == names.HEADER_AUTHORIZATION:
            secrets.update(_credentials(value))
    kept: dict[str, Any] = {}
    for name, value in headers.items():
        if name.lower() in _NEVER_KEPT:
            continue
        if secrets and _repeats(value, secrets):
            continue
        kept[name] = value
    return kept


def _credentials(value: object) -> set[str]:
    """The ``authorization`` header's value and, after its scheme, the credential alone."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    if not isinstance(value, str):
        return set()
    found = {value.strip(" ")}
    scheme, _, credential = value.strip(" ").partition(" ")
    if scheme and credential.strip(" "):
        found.add(credential.strip(" "))
    return {text for text in found if text}


def _repeats(value: object, secrets: set[str]) -> bool:
    """Whether ``value``, or anything nested in it, holds one of ``secrets``."""
    as_bytes = [secret.encode("latin-1", "replace") for secret in secrets]
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if any(secret in item for secret in secrets):
                return True
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
            if any(secret in data for secret in as_bytes):
                return True
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


def delivery_limit_denial(delivery: Delivery) -> Denied:
    """The refusal warden records for a message the broker dead-lettered from its work queue
    after ``WARDEN_DELIVERY_LIMIT`` deliveries (a job that kept killing its worker): the
    broker's count from ``x-death``, the action the body names, the token by fingerprint only."""
    count = None
    deaths = delivery.headers.get(names.HEADER_X_DEATH)
    if isinstance(deaths, list):
        for death in deaths:
            if isinstance(death, Mapping) and death.get("queue") == delivery.queue:
                found = death.get("count")
                count = found if type(found) is int else None
                break
    told = f"after {count} deliveries" if count is not None else "at its delivery limit"
    return Denied(
        DeliveryLimit(f"the broker dead-lettered it {told}: the job kept ending its worker"),
        body_action(delivery.body),
        _token(delivery),
    )


class DenialHeaders:
    """Encodes ``x-warden-reason`` and ``x-warden-denial`` for dead letters, keeping the part
    that repeats for the ``max_entries`` refusals seen last. An entry holds no token, only its
    SHA-256 and the claims a record shows, so it is no larger than the largest token warden
    reads (``WARDEN_MAX_TOKEN_BYTES``)."""

    def __init__(self, worker: str, max_entries: int = 256) -> None:
        self.worker = worker
        self._fixed: BoundedCache[tuple[Any, ...], tuple[bytes, bytes]] = BoundedCache(max_entries)

    def __len__(self) -> int:
        return len(self._fixed)

    def encoded(
        self,
        denied: Denied,
        delivery: Delivery,
        *,
        exchange: str,
        routing_key: str,
        now: datetime,
        dropped: Sequence[str] = (),
    ) -> bytes:
        """The two headers as encoded table entries, to follow the message's other headers.

        The table decodes to ``x-warden-reason`` and the :func:`denial_record` of the same
        arguments, except that a token whose claims AMQP cannot carry is reduced to its
        fingerprint and ``verified``. A record that lists dropped values is not kept.
        """
        denial, token = denied.denial, denied.token
        key = (
            denial.reason,
            denial.detail,
            denied.action,
            delivery.queue,
            delivery.attempt,
            delivery.publisher_user,
            exchange,
            routing_key,
            # The token's part of the record follows from its text, how far it was checked
            # and whether its claims could be read.
            None if token is None else (token.digest(), token.verified, token.claims is None),
        )
        lost = dropped or delivery.dropped
        fixed = None if lost else self._fixed.get(key)
        if fixed is None:
            record = denial_record(
                denied,
                delivery,
                exchange=exchange,
                routing_key=routing_key,
                worker=self.worker,
                now=now,
                dropped=dropped,
            )
            fixed = self._encode_fixed(record, delivery)
            if not lost:
                self._fixed.put(key, fixed)
        head, entries = fixed
        arrived = delivery.arrived_at
        entries += _DENIED_AT + table_value(rfc3339(now))
        entries += _RECEIVED_AT + table_value(None if arrived is None else rfc3339(arrived))
        return head + TABLE_LENGTH.pack(len(entries)) + entries

    @staticmethod
    def _encode_fixed(record: dict[str, Any], delivery: Delivery) -> tuple[bytes, bytes]:
        """``x-warden-reason``, and the denial table's entries but ``denied_at`` and
        ``received_at``."""
        del record["denied_at"], record["received_at"]
        try:
            entries = table_entries(record)
        except TableNotEncodable as exc:
            # A claim AMQP cannot encode (the token's claims are the publisher's choice): the
            # dead letter still goes out, with the token reduced to what is always encodable.
            token = record["token"]
            if token is None:
                raise
            log.warning(
                "token claims not encodable in a dead letter; kept only its fingerprint",
                extra={"message_id": delivery.message_id, "error": str(exc)},
            )
            record["token"] = {"fingerprint": token["fingerprint"], "verified": token["verified"]}
            entries = table_entries(record)
        head = table_entry(names.HEADER_REASON, record["reason"]) + table_key(names.HEADER_DENIAL)
        return head + TABLE, entries
