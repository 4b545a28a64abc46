"""The broker as witness of a job's arrival: proving, before a worker believes it, that the
broker stamps every message it receives and overwrites a stamp a publisher forged.

RabbitMQ 3.12 and later set the ``timestamp_in_ms`` header (and the ``timestamp`` property) on
every message they receive when ``rabbitmq.conf`` has
``message_interceptors.incoming.set_header_timestamp.overwrite = true``. Without that setting, or
with ``overwrite = false``, the header is whatever the publisher wrote, and a publisher could
make an expired token look as if its job had waited since the token was valid.
"""

from __future__ import annotations

import secrets
import uuid

import aio_pika
from aio_pika.abc import AbstractChannel

from worker import names
from worker.amqp.connection import TRANSPORT_ERRORS, describe
from worker.amqp.inbound import broker_stamp
from worker.amqp.outbound import publish_confirmed
from worker.errors import ConfigurationError, PublishFailed

STAMP_SETTING = "message_interceptors.incoming.set_header_timestamp.overwrite = true"
"""The ``rabbitmq.conf`` line that makes the broker a witness of arrival."""

FORGED_MS = 1_000_000_000_000
"""The stamp the probe forges (2001-09-09): no broker's clock shows it."""

PROBE_SECONDS = 10.0


async def stamping(publisher: AbstractChannel, channel: AbstractChannel) -> str | None:
    """Publish a message with a forged ``timestamp_in_ms`` (on ``publisher``, a channel with
    confirms) to a private, exclusive queue (:func:`~worker.names.stamp_probe_queue`) and read
    it back (on ``channel``). None where the broker replaced the forged stamp with its own;
    otherwise what it did instead."""
    try:
        queue = await channel.declare_queue(
            names.stamp_probe_queue(secrets.randbelow(10**15)),
            exclusive=True,
            auto_delete=True,
        )
        try:
            probe = aio_pika.Message(
                b"",
                headers={names.HEADER_BROKER_TIMESTAMP: FORGED_MS},
                message_id=f"stamp-probe-{uuid.uuid4().hex}",
            )
            await publish_confirmed(publisher.default_exchange, probe, queue.name)
            message = await queue.get(no_ack=True, fail=False, timeout=PROBE_SECONDS)
        finally:
            await queue.delete(if_unused=False, if_empty=False)
    except PublishFailed as exc:
        return f"did not take the probe ({exc})"
    except TRANSPORT_ERRORS as exc:
        return f"refused the probe ({describe(exc)})"
    except TimeoutError:
        return f"did not return the probe within {PROBE_SECONDS:g}s"
    if message is None:
        return f"did not return the probe within {PROBE_SECONDS:g}s"
    headers = message.headers or {}
    if headers.get(names.HEADER_BROKER_TIMESTAMP) == FORGED_MS:
        return "kept a publisher's forged timestamp_in_ms"
    if broker_stamp(headers) is None:
        return "set no timestamp_in_ms"
    return None


def unwitnessed(found: str) -> ConfigurationError:
    """The start-up error of a worker with a queueing allowance on a broker that, as
    :func:`stamping` ``found``, does not witness arrivals."""
    return ConfigurationError(
        f"a queueing allowance needs the broker's arrival stamp, and the broker {found}: set "
        f"{STAMP_SETTING} in rabbitmq.conf (RabbitMQ 3.12 or later), or set "
        "WARDEN_QUEUED_FOR_SECONDS and every action's queued_for to 0"
    )
