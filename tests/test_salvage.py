"""Content headers pamqp cannot decode are read without what it cannot decode, and named
(``worker/amqp/salvage.py``), on the path aiormq reads frames by.

These tests fail when the libraries change underneath: when pamqp decodes these values itself
(the replacement may then go), when it no longer decodes content headers through the function
warden replaces, or when aiormq's frame reader no longer goes through pamqp's.
"""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime
from typing import Any

import pytest
from aiormq.connection import FrameReceiver
from pamqp import commands, constants, exceptions, frame, header

from tests.support.hostile import (
    array,
    deep_arrays,
    deep_tables,
    entry,
    long_long,
    longstr,
    nested,
    octet,
    properties,
    shortstr,
    stamp,
    table,
    timestamp,
)
from worker.amqp import salvage

YEAR_10000_MS = 253_402_300_800_000
"""The first millisecond of the year 10000: pamqp reads a timestamp above 2**32 as milliseconds."""


def _payload(wire: bytes) -> bytes:
    """A content header frame's payload: class 60 (basic), weight 0, a body of 2 bytes."""
    return struct.pack(">HHQ", 60, 0, 2) + wire


def _frame(wire: bytes) -> bytes:
    """The whole frame, on channel 1, as the broker sends it."""
    payload = _payload(wire)
    return (
        struct.pack(">BHI", constants.FRAME_HEADER, 1, len(payload))
        + payload
        + bytes([constants.FRAME_END])
    )


BASE = {"content_type": shortstr(b"application/json"), "delivery_mode": octet(2)}
KEPT = entry("traceparent", longstr("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))

UNDECODABLE: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "timestamp-year-10000": (
        properties(**BASE, timestamp=timestamp(YEAR_10000_MS)),
        ("timestamp",),
    ),
    "timestamp-max": (properties(**BASE, timestamp=timestamp(2**64 - 1)), ("timestamp",)),
    "message-id-latin-1": (properties(**BASE, message_id=shortstr(b"caf\xe9")), ("message_id",)),
    "type-not-utf-8": (properties(**BASE, message_type=shortstr(b"\xff\xfe")), ("type",)),
    "header-timestamp": (
        properties(**BASE, headers=table(entry("x-when", stamp(2**63)), KEPT)),
        ("headers.x-when",),
    ),
    "header-name-not-utf-8": (
        properties(**BASE, headers=table(entry(b"x-\xff", longstr("v")), KEPT)),
        ("headers.x-\\xff",),
    ),
    "timestamp-in-a-nested-table": (
        properties(**BASE, headers=table(KEPT, entry("x-meta", nested(entry("t", stamp(2**63)))))),
        ("headers.x-meta",),
    ),
    "timestamp-in-an-array": (
        properties(**BASE, headers=table(entry("x-list", array(long_long(1), stamp(2**63))), KEPT)),
        ("headers.x-list",),
    ),
    "tables-3000-deep": (
        properties(**BASE, headers=table(entry("x-deep", deep_tables(3000)), KEPT)),
        ("headers.x-deep",),
    ),
    "arrays-3000-deep": (
        properties(**BASE, headers=table(KEPT, entry("x-deep", deep_arrays(3000)))),
        ("headers.x-deep",),
    ),
    "everything-at-once": (
        properties(
            **BASE,
            headers=table(
                entry("x-when", stamp(YEAR_10000_MS)), KEPT, entry(b"\x80", long_long(1))
            ),
            message_id=shortstr(b"\xc3\x28"),
            timestamp=timestamp(2**63),
            app_id=shortstr(b"billing"),
        ),
        ("headers.x-when", "headers.\\x80", "message_id", "timestamp"),
    ),
}


@pytest.mark.parametrize(("wire", "dropped"), UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_pamqp_alone_cannot_decode_these_headers(wire: bytes, dropped: tuple[str, ...]) -> None:
    """If pamqp learns to decode them, ``worker/amqp/salvage.py`` may no longer be needed."""
    with pytest.raises((ValueError, RecursionError)):
        header.ContentHeader().unmarshal(_payload(wire))


@pytest.mark.parametrize(("wire", "dropped"), UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_a_frame_pamqp_cannot_decode_is_read_without_what_it_cannot(
    wire: bytes, dropped: tuple[str, ...]
) -> None:
    used, channel, read = frame.unmarshal(_frame(wire))
    assert (used, channel) == (len(_frame(wire)), 1)
    assert isinstance(read, header.ContentHeader)
    assert read.body_size == 2
    got = read.properties
    assert isinstance(got, salvage.Salvaged)
    assert got.dropped == dropped
    assert got.content_type == "application/json"
    assert got.delivery_mode == 2
    for name in ("timestamp", "message_id", "message_type"):
        if salvage.AMQP_NAMES.get(name, name) in dropped:
            assert getattr(got, name) is None
    if got.headers is not None:
        assert got.headers.keys() == {"traceparent"}


async def test_aiormqs_frame_reader_reads_them() -> None:
    """The frame reader of every connection, fed the bytes a broker sends."""
    wire = UNDECODABLE["everything-at-once"][0]
    reader = asyncio.StreamReader()
    reader.feed_data(_frame(wire) * 2)
    receiver = FrameReceiver(reader)
    for _ in range(2):
        _, channel, read = await receiver.get_frame()
        assert channel == 1
        assert isinstance(read, header.ContentHeader)
        assert isinstance(read.properties, salvage.Salvaged)
        assert read.properties.dropped == UNDECODABLE["everything-at-once"][1]


WELL_FORMED: dict[str, dict[str, Any]] = {
    "a job": {
        "content_type": "application/json",
        "delivery_mode": 2,
        "message_id": "m-1",
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "headers": {"authorization": "Bearer a.b.c", "x-warden-attempt": 2},
    },
    "every property": {
        "content_type": "application/json",
        "content_encoding": "identity",
        "headers": {
            "t": {"nested": [1, "two", None, True]},
            "when": datetime(9999, 12, 31, tzinfo=UTC),
        },
        "delivery_mode": 1,
        "priority": 9,
        "correlation_id": "c",
        "reply_to": "r",
        "expiration": "60000",
        "message_id": "m",
        "timestamp": datetime(2106, 2, 7, tzinfo=UTC),
        "message_type": "job",
        "user_id": "guest",
        "app_id": "billing",
    },
    "nothing": {},
}


@pytest.mark.parametrize("values", WELL_FORMED.values(), ids=WELL_FORMED.keys())
def test_a_frame_that_decodes_is_read_as_pamqp_reads_it(values: dict[str, Any]) -> None:
    wire = commands.Basic.Properties(**values).marshal()
    _, _, read = frame.unmarshal(_frame(wire))
    assert isinstance(read, header.ContentHeader)
    assert type(read.properties) is commands.Basic.Properties
    pamqp = header.ContentHeader()
    pamqp.unmarshal(_payload(wire))
    assert read.properties == pamqp.properties
    # Read again value by value, the same frame gives the same properties, nothing dropped.
    again = salvage.salvage(_payload(wire)).properties
    assert isinstance(again, salvage.Salvaged)
    assert again == pamqp.properties
    assert again.dropped == ()


def test_a_broken_frame_is_still_refused_as_pamqp_refuses_it() -> None:
    """Lengths beyond the frame (which RabbitMQ never sends) are no value to leave out."""
    entries = entry("x", longstr("abc"))
    broken = properties(**BASE, headers=struct.pack(">I", len(entries) + 50) + entries)
    with pytest.raises(exceptions.UnmarshalingException):
        frame.unmarshal(_frame(broken))
    unknown = properties(**BASE, headers=table(entry("x", b"Z\x00")))
    with pytest.raises(exceptions.UnmarshalingException):
        frame.unmarshal(_frame(unknown))
