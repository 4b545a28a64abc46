"""The denial record a dead letter carries in ``x-warden-denial`` (its JSON Schema: denial)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from . import names
from .decision import Delivery, Denied


def rfc3339(moment: datetime) -> str:
    """``2026-01-02T03:04:05.678Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def denial_record(
    denied: Denied,
    delivery: Delivery,
    *,
    exchange: str,
    routing_key: str,
    worker: str,
    now: datetime,
) -> dict[str, Any]:
    """Everything an operator needs to know about a refusal, and nothing secret."""
    return {
        "reason": denied.denial.reason,
        "error": denied.denial.error,
        "detail": denied.denial.detail,
        "queue": delivery.queue,
        "exchange": exchange,
        "routing_key": routing_key,
        "action": denied.action,
        "denied_at": rfc3339(now),
        "worker": worker,
        "attempts": delivery.attempt,
        "token": None if denied.token is None else denied.token.summary(),
    }


_NEVER_KEPT = frozenset({names.HEADER_AUTHORIZATION, names.HEADER_REASON, names.HEADER_DENIAL})


def kept_headers(headers: Mapping[str, Any], token: str | None) -> dict[str, Any]:
    """The original headers a dead letter keeps: all but ``authorization``, any header that
    repeats the token, and ``x-warden-reason`` and ``x-warden-denial`` (any case), which only
    warden writes."""
    kept: dict[str, Any] = {}
    for name, value in headers.items():
        if name.lower() in _NEVER_KEPT:
            continue
        if token and isinstance(value, str | bytes) and _contains(value, token):
            continue
        kept[name] = value
    return kept


def _contains(value: str | bytes, token: str) -> bool:
    if isinstance(value, bytes):
        return token.encode("ascii", "replace") in value
    return token in value
