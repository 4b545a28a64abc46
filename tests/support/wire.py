"""AMQP header tables as a client reads them, to hold what warden sends against what it means."""

from __future__ import annotations

import struct
from datetime import datetime
from typing import Any

from pamqp import decode, encode

from worker.deadletters.write import denial_record
from worker.pipeline.decision import Denied
from worker.pipeline.delivery import Delivery


def decoded(entries: bytes) -> dict[str, Any]:
    """The table made of encoded ``entries``."""
    table: dict[str, Any] = decode.field_table(struct.pack(">I", len(entries)) + entries)[1]
    return table


def denial_headers(
    denied: Denied, job: Delivery, now: datetime, *, worker: str, exchange: str, routing_key: str
) -> dict[str, Any]:
    """What ``x-warden-reason`` and ``x-warden-denial`` should read: the record built afresh,
    through pamqp's own encoding of the whole table."""
    record = denial_record(
        denied, job, worker=worker, now=now, exchange=exchange, routing_key=routing_key
    )
    table = {"x-warden-reason": record["reason"], "x-warden-denial": record}
    expected: dict[str, Any] = decode.field_table(encode.field_table(table))[1]
    return expected
