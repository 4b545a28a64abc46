"""Content headers built byte by byte, as a hostile publisher sends them: values pamqp refuses to
encode (or cannot decode) go on the wire all the same, through aiormq with properties whose
encoding is given."""

from __future__ import annotations

import struct
import uuid

import aiormq
from pamqp import commands

_PROPERTIES = commands.Basic.Properties


def shortstr(raw: bytes) -> bytes:
    """A short string of any bytes."""
    return bytes([len(raw)]) + raw


def octet(value: int) -> bytes:
    return bytes([value])


def timestamp(seconds: int) -> bytes:
    """A ``timestamp`` property: any 64-bit value."""
    return struct.pack(">Q", seconds)


def properties(**fields: bytes) -> bytes:
    """Encoded basic properties, each field given encoded (pamqp's names: ``message_type``)."""
    flags, parts = 0, []
    for name in _PROPERTIES.attributes():
        if name in fields:
            flags |= _PROPERTIES.flags[name]
            parts.append(fields[name])
    assert not fields.keys() - set(_PROPERTIES.attributes()), fields.keys()
    return struct.pack(">H", flags) + b"".join(parts)


def table(*entries: bytes) -> bytes:
    """A field table (the ``headers`` property) of encoded entries."""
    joined = b"".join(entries)
    return struct.pack(">I", len(joined)) + joined


def entry(name: bytes | str, value: bytes) -> bytes:
    """One table entry: a name of any bytes, and a value with its type tag."""
    raw = name.encode() if isinstance(name, str) else name
    return shortstr(raw) + value


def longstr(raw: bytes | str) -> bytes:
    data = raw.encode() if isinstance(raw, str) else raw
    return b"S" + struct.pack(">I", len(data)) + data


def stamp(seconds: int) -> bytes:
    """A ``T`` value."""
    return b"T" + struct.pack(">Q", seconds)


def long_long(value: int) -> bytes:
    return b"l" + struct.pack(">q", value)


def double(value: float) -> bytes:
    return b"d" + struct.pack(">d", value)


def nested(*entries: bytes) -> bytes:
    """An ``F`` value: a table inside a table."""
    return b"F" + table(*entries)


def array(*values: bytes) -> bytes:
    joined = b"".join(values)
    return b"A" + struct.pack(">I", len(joined)) + joined


def deep_tables(depth: int) -> bytes:
    """Tables nested ``depth`` deep, each the only entry of the one around it."""
    value = b"F" + table()
    for _ in range(depth - 1):
        value = nested(entry("d", value))
    return value


def deep_arrays(depth: int) -> bytes:
    value = array()
    for _ in range(depth - 1):
        value = array(value)
    return value


class RawProperties(commands.Basic.Properties):
    """Properties that go on the wire as given, whatever pamqp would make of them."""

    def __init__(self, wire: bytes, message_id: str) -> None:
        super().__init__(message_id=message_id)
        self.wire = wire

    def marshal(self) -> bytes:
        return self.wire


async def publish_raw(
    channel: aiormq.abc.AbstractChannel, queue: str, body: bytes, wire: bytes, exchange: str = ""
) -> None:
    """Publish ``body`` with the encoded properties ``wire`` to ``queue`` (through ``exchange``,
    by default the default exchange), with ``mandatory``; return once the broker confirmed it."""
    confirmation = await channel.basic_publish(
        body,
        exchange=exchange,
        routing_key=queue,
        properties=RawProperties(wire, uuid.uuid4().hex),
        mandatory=True,
    )
    assert isinstance(confirmation, aiormq.spec.Basic.Ack), confirmation
