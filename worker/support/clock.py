"""One way to write a moment: RFC 3339 in UTC with a ``Z``."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds", "auto"]


def rfc3339(moment: datetime | float, timespec: Precision = "milliseconds") -> str:
    """``2026-01-02T03:04:05.678Z`` for a datetime or a POSIX timestamp.

    A timestamp is rounded up to the microsecond first, so that a cut-off written this way never
    narrows. ``auto`` writes microseconds only where the moment has any. A timestamp outside
    what a datetime can hold is written as a count of seconds, never an exception.
    """
    if not isinstance(moment, datetime):
        try:
            moment = datetime.fromtimestamp(math.ceil(moment * 1e6) / 1e6, UTC)
        except (ValueError, OverflowError, OSError):
            return f"{moment:.0f} seconds after the epoch"
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
