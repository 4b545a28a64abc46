"""JSON as RFC 8259 has it and nothing more: no duplicate members, no NaN or Infinity.

A later duplicate must never override what was checked, so documents with one are refused.
"""

from __future__ import annotations

import json
from typing import Any


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member")
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def loads(data: bytes) -> Any:
    """Decode UTF-8 JSON strictly; raises UnicodeDecodeError, ValueError or RecursionError."""
    return _decoder.decode(data.decode("utf-8"))
