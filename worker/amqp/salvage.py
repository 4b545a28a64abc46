"""Content headers pamqp cannot decode, read value by value instead of closing the connection.

What breaks without this (checked against pamqp 4.0.1 and aiormq 7.2.4): aiormq reads every frame
of a connection in one task (``aiormq.connection.FrameReceiver.get_frame``, which calls
``pamqp.frame.unmarshal``). RabbitMQ accepts, stores and delivers content headers that pamqp
cannot decode, since it keeps short strings as bytes and timestamps as integers:

- a ``timestamp`` property, or a ``T`` value anywhere in the headers, after the year 9999:
  ``pamqp.decode.timestamp`` makes a ``datetime`` of it and raises ``ValueError`` ("year 10000 is
  out of range");
- a short string that is not UTF-8 (a property such as ``message_id``, or the name of a header):
  ``UnicodeDecodeError`` from ``pamqp.decode.short_str`` or ``pamqp.decode.field_table``;
- tables or arrays nested some 500 deep: ``RecursionError`` from pamqp's recursive decoding.

pamqp turns the first two into ``UnmarshalingException`` (aiormq: ``InvalidFrameError``); the
third escapes as it is. Either way aiormq's reader task ends and the connection closes, with
every channel, consumer and unacknowledged delivery on it. The broker delivers the message again,
to the next consumer, whose connection closes too: one such message stops every worker of its
queue, and every ``warden dlq`` command on a queue that holds one fails.

:func:`install` replaces ``pamqp.frame._unmarshal_header_frame``, which pamqp calls for each
content header frame, with :func:`unmarshal_header`: pamqp's own decoding and, only when that
fails, the frame decoded again property by property and header by header, leaving out the values
that cannot be decoded. The properties are then :class:`Salvaged`, and their ``dropped`` names
what was left out. A frame that decodes costs what it cost before: the same calls, in the same
order. ``tests/test_salvage.py`` fails when pamqp changes underneath (the function is renamed or
no longer called, or decodes these values itself).
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands, decode, exceptions, frame, header

_UNDECODABLE = (ValueError, ArithmeticError, OSError, RecursionError, struct.error)
"""What pamqp's decoders raise on a value they cannot decode (``datetime.fromtimestamp`` raises
ValueError, OverflowError or OSError depending on the platform)."""

_FIXED = struct.Struct(">HHQ")
_LENGTH = struct.Struct(">I")

_VALUE_SIZES = {
    b"t": 1,
    b"b": 1,
    b"B": 1,
    b"s": 2,
    b"u": 2,
    b"I": 4,
    b"i": 4,
    b"l": 8,
    b"L": 8,
    b"f": 4,
    b"d": 8,
    b"D": 5,
    b"T": 8,
    b"V": 0,
    b"\x00": 0,
}
"""Bytes after the type tag of each fixed-size field value ``pamqp.decode`` knows."""
_LENGTH_PREFIXED = frozenset({b"S", b"A", b"F", b"x"})
"""Type tags of field values whose size follows the tag as a 32-bit length."""
_PROPERTY_SIZES = {"octet": 1, "timestamp": 8}

AMQP_NAMES = {"message_type": "type"}
"""pamqp's names of properties that AMQP names otherwise."""


class Salvaged(commands.Basic.Properties):
    """The properties of a content header that pamqp could not decode whole: every value that
    could be decoded, and in ``dropped`` the names of those left out (a property by its AMQP
    name, a header as ``headers.<name>``)."""

    dropped: tuple[str, ...] = ()


def unmarshal_header(frame_data: bytes) -> header.ContentHeader:
    """``pamqp.frame._unmarshal_header_frame``, which falls back to :func:`salvage` where pamqp
    cannot decode a value."""
    content_header = header.ContentHeader()
    try:
        content_header.unmarshal(frame_data)
    except _UNDECODABLE:
        return salvage(frame_data)
    return content_header


def salvage(frame_data: bytes) -> header.ContentHeader:
    """The content header in ``frame_data``, without the values that cannot be decoded.

    Raises pamqp's ``UnmarshalingException``, as pamqp does, only when the frame itself is
    broken (lengths beyond its end), which RabbitMQ never lets through.
    """
    try:
        _, weight, body_size = _FIXED.unpack_from(frame_data)
        used, flags = header.ContentHeader._get_flags(frame_data[12:])
        properties = _properties(flags, frame_data[12 + used :])
    except _UNDECODABLE as error:
        raise exceptions.UnmarshalingException(header.ContentHeader.name, error) from error
    return header.ContentHeader(weight, body_size, properties)


def _properties(flags: int, data: bytes) -> Salvaged:
    properties = Salvaged()
    dropped: list[str] = []
    for name in Salvaged.attributes():
        if not flags & Salvaged.flags[name]:
            continue
        kind = Salvaged.amqp_type(name)
        value: Any
        if kind == "table":
            used, value, lost = _table(data)
            dropped += lost
        else:
            used = 1 + data[0] if kind == "shortstr" else _PROPERTY_SIZES[kind]
            try:
                _, value = decode.by_type(data[:used], kind)
            except _UNDECODABLE:
                value = None
                dropped.append(AMQP_NAMES.get(name, name))
        setattr(properties, name, value)
        data = data[used:]
    properties.dropped = tuple(dropped)
    return properties


def _table(data: bytes) -> tuple[int, dict[str, Any], list[str]]:
    """The headers table at the start of ``data``: the bytes it takes, the entries that decode,
    and the names of those that do not."""
    end = _LENGTH.size + _LENGTH.unpack_from(data)[0]
    if end > len(data):
        raise ValueError("field table length exceeds the frame")
    table: dict[str, Any] = {}
    dropped: list[str] = []
    at = _LENGTH.size
    while at < end:
        value_at = at + 1 + data[at]
        name = data[at + 1 : value_at]
        size = _value_size(data, value_at)
        if value_at + size > end:
            raise ValueError("field value length exceeds its table")
        try:
            key = name.decode("utf-8")
            _, table[key] = decode.embedded_value(data[value_at : value_at + size])
        except _UNDECODABLE:
            dropped.append("headers." + name.decode("utf-8", "backslashreplace"))
        at = value_at + size
    return end, table, dropped


def _value_size(data: bytes, at: int) -> int:
    """The bytes the field value at ``at`` takes, its type tag included."""
    tag = data[at : at + 1]
    size = _VALUE_SIZES.get(tag)
    if size is not None:
        return 1 + size
    if tag in _LENGTH_PREFIXED:
        length: int = _LENGTH.unpack_from(data, at + 1)[0]
        return 1 + _LENGTH.size + length
    raise ValueError(f"unknown field type {tag!r}")


def install() -> None:
    """Have pamqp decode every content header through :func:`unmarshal_header`."""
    frame._unmarshal_header_frame = unmarshal_header
