"""JSON as RFC 8259 has it and nothing more: no duplicate members, no NaN or Infinity, and no
unpaired surrogate in a string (I-JSON, RFC 7493 section 2.1).

A later duplicate must never override what was checked, so documents with one are refused. A
string holding half a surrogate pair is no Unicode text: it could not be written as UTF-8 again,
into a log line or an AMQP header of a dead letter, so it is refused where it is read.
"""

from __future__ import annotations

import json
import re
from typing import Any

from worker.errors import NotStrictJSON


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member")
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""Raw UTF-8 cannot hold a surrogate: only a ``\\uD800``-``\\uDFFF`` escape can make one."""


def loads(data: bytes) -> Any:
    """Decode UTF-8 JSON strictly; anything else raises :class:`~worker.errors.NotStrictJSON`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NotStrictJSON("not UTF-8", utf8=False) from None
    try:
        value = _decoder.decode(text)
    except (ValueError, RecursionError):
        raise NotStrictJSON("not JSON without duplicate members") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        # Paired escapes decode to one character and encode again; a lone one does not.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise NotStrictJSON("a string holds an unpaired surrogate") from None
    return value
