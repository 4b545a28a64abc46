"""Reading dead letters: the reason of one, whoever dead-lettered it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import names


def dead_letter_reason(headers: Mapping[str, Any]) -> str | None:
    """``x-warden-reason`` when warden dead-lettered the message; ``delivery_limit`` when the
    broker did (its ``x-death`` says so); None for anything else."""
    reason = headers.get(names.HEADER_REASON)
    if isinstance(reason, str):
        return reason
    deaths = headers.get(names.HEADER_X_DEATH)
    if isinstance(deaths, list):
        for death in deaths:
            if isinstance(death, Mapping) and death.get("reason") in ("delivery_limit", "rejected"):
                return names.DELIVERY_LIMIT_REASON
    return None
