"""The headers warden adds to a dead letter, encoded for the wire.

A refusal tends to repeat: a publisher that holds a token keeps sending jobs the token does not
allow, to the same queue. Everything in ``x-warden-reason`` and ``x-warden-denial`` but the moment
of the refusal is then the same from one dead letter to the next, so it is encoded once and kept;
only ``denied_at`` is encoded per message. The tables are AMQP field tables (a 4-byte length, then
name-value pairs in any order), and every value in them is encoded by pamqp, as aiormq would.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from datetime import datetime
from typing import Any

from pamqp import encode

from . import names
from .decision import Delivery, Denied
from .record import denial_record, rfc3339

log = logging.getLogger("warden.consumer")

_LENGTH = struct.Struct(">I")
_DENIED_AT = encode.short_string("denied_at")
_ENCODING_ERRORS = (TypeError, ValueError, OverflowError)


class DenialHeaders:
    """Encodes ``x-warden-reason`` and ``x-warden-denial`` for dead letters, keeping the part
    that repeats for the ``max_entries`` refusals seen last. An entry holds no token, only its
    SHA-256 and the claims a record shows, so it is no larger than the largest token warden
    reads (``WARDEN_MAX_TOKEN_BYTES``)."""

    def __init__(self, worker: str, max_entries: int = 256) -> None:
        self.worker = worker
        self._fixed: OrderedDict[tuple[Any, ...], tuple[bytes, bytes]] = OrderedDict()
        self._max = max_entries

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
    ) -> bytes:
        """The two headers as encoded table entries, to follow the message's other headers.

        The table decodes to ``x-warden-reason`` and the :func:`~worker.record.denial_record` of
        the same arguments, except that a token whose claims AMQP cannot carry is reduced to its
        fingerprint and ``verified``.
        """
        denial, token = denied.denial, denied.token
        key = (
            denial.reason,
            denial.detail,
            denied.action,
            delivery.queue,
            delivery.attempt,
            exchange,
            routing_key,
            # The token's part of the record follows from its text, how far it was checked
            # and whether its claims could be read.
            None if token is None else (token.digest(), token.verified, token.claims is None),
        )
        fixed = self._fixed.get(key)
        if fixed is None:
            record = denial_record(
                denied,
                delivery,
                exchange=exchange,
                routing_key=routing_key,
                worker=self.worker,
                now=now,
            )
            fixed = self._fixed[key] = self._encode_fixed(record, delivery)
            if len(self._fixed) > self._max:
                self._fixed.popitem(last=False)
        else:
            self._fixed.move_to_end(key)
        head, entries = fixed
        entries += _DENIED_AT + encode.encode_table_value(rfc3339(now))
        return head + _LENGTH.pack(len(entries)) + entries

    @staticmethod
    def _encode_fixed(record: dict[str, Any], delivery: Delivery) -> tuple[bytes, bytes]:
        """What precedes the denial table's length, and the table's entries but ``denied_at``."""
        del record["denied_at"]
        try:
            entries = encode.field_table(record)[4:]
        except _ENCODING_ERRORS as exc:
            # A claim AMQP cannot encode (the token's claims are the publisher's choice): the
            # dead letter still goes out, with the token reduced to what is always encodable.
            token = record["token"]
            if token is None:
                raise
            log.warning(
                "token claims not encodable in a dead letter; kept only its fingerprint",
                extra={"message_id": delivery.message_id, "error": type(exc).__name__},
            )
            record["token"] = {"fingerprint": token["fingerprint"], "verified": token["verified"]}
            entries = encode.field_table(record)[4:]
        head = (
            encode.short_string(names.HEADER_REASON)
            + encode.encode_table_value(record["reason"])
            + encode.short_string(names.HEADER_DENIAL)
            + b"F"
        )
        return head, entries
