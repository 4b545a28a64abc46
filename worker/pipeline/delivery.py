"""A delivery as the pipeline sees it: bytes, properties and headers, nothing of AMQP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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
