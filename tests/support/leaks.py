"""Whether any text holds a token the tests minted, or a 16-character run of its signature.

Every token the tests make goes through :func:`minted` (``tests/support/issuer.py`` calls it), so
any text — a log line, a dead letter, a metrics page, an exception — can be checked against all
of them with :func:`leaks` or :func:`assert_no_leak`. :class:`LogGuard` keeps every log record of
the run, formatted as warden formats it, for one check at the end of the session.
"""

from __future__ import annotations

import logging
import re
import threading

from worker.ops.logs import JsonFormatter

RUN = 16
"""A piece of a signature this long is as good as the signature to whoever collects pieces."""

_minted: list[str] = []
_seen: set[str] = set()
_lock = threading.Lock()
_runs: dict[str, str] = {}
_tails: dict[str, list[str]] = {}
_short: list[str] = []
_indexed = 0
_CANDIDATE = re.compile(rf"[A-Za-z0-9_-]{{{RUN},}}")
"""Signatures are base64url: only runs of that alphabet can hold a piece of one."""


def minted(token: str) -> str:
    """Remember ``token`` as one no output may ever show; return it."""
    with _lock:
        if token not in _seen:
            _seen.add(token)
            _minted.append(token)
    return token


def minted_tokens() -> list[str]:
    """Every token minted so far in this run."""
    with _lock:
        return list(_minted)


SIGNATURE_VARIETY = 8
"""A run with fewer distinct characters is no piece of a signature but filler (the ``AAAA...`` of a
zero-byte "signature" some attack makes): such runs are looked for only as part of the token."""


def _signature_runs(token: str) -> list[str]:
    """The runs of a compact JWS's third segment. Anything else (a JWE, a token stripped of its
    signature) has no signature to speak of, and is looked for whole."""
    segments = token.split(".")
    if len(segments) != 3:
        return []
    signature = segments[2]
    runs = (signature[i : i + RUN] for i in range(len(signature) - RUN + 1))
    return [run for run in runs if len(set(run)) >= SIGNATURE_VARIETY]


def _refresh_index() -> tuple[dict[str, str], dict[str, list[str]]]:
    """Runs of signatures; for a token without a signature to speak of, the last run of its
    longest segment, which is in any text that holds the token, to look for the token whole."""
    global _indexed
    with _lock:
        fresh = _minted[_indexed:]
        _indexed = len(_minted)
    for token in fresh:
        runs = _signature_runs(token)
        for run in runs:
            _runs.setdefault(run, token)
        if runs:
            continue
        longest = max(token.split("."), key=len)
        if len(longest) >= RUN and _CANDIDATE.fullmatch(longest):
            _tails.setdefault(longest[-RUN:], []).append(token)
        elif len(token) >= RUN:
            _short.append(token)
    return _runs, _tails


def leaks(text: str) -> list[str]:
    """What ``text`` shows of minted tokens: a description per finding, empty when clean."""
    runs, tails = _refresh_index()
    found: list[str] = []
    for match in _CANDIDATE.finditer(text):
        candidate = match.group()
        for i in range(len(candidate) - RUN + 1):
            piece = candidate[i : i + RUN]
            if piece in runs:
                found.append(f"a run of a token's signature (...{piece[:4]}...)")
                break
            whole = [token for token in tails.get(piece, ()) if token in text]
            if whole:
                found.append(f"a whole token with no signature to speak of (...{piece[:4]}...)")
                break
    found.extend(f"a whole token of {len(t)} characters" for t in _short if t and t in text)
    return found


def assert_no_leak(text: str, where: str) -> None:
    """Fail when ``text`` (from ``where``: a log, a dead letter, /metrics ...) shows a token."""
    found = leaks(text)
    assert not found, f"{where} shows {found[0]} ({len(found)} findings)"


class LogGuard(logging.Handler):
    """Keeps every record of the run as the formatted line warden would write, exception and
    stack included, to be checked with :meth:`check` once every token has been minted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[tuple[str, str]] = []
        """(where the record was logged, the line)."""

    def emit(self, record: logging.LogRecord) -> None:
        where = f"{record.levelname} {record.name} at {record.pathname}:{record.lineno}"
        try:
            line = self.format(record)
            if record.stack_info:
                line += "\n" + record.stack_info
        except Exception as exc:
            line = f"unformattable record: {type(exc).__name__}: {exc}"
        self.lines.append((where, line))

    def check(self) -> None:
        """Fail when any line kept shows a minted token or a run of its signature; the failure
        names where the line was logged, never what it said."""
        for number, (where, line) in enumerate(self.lines):
            found = leaks(line)
            assert not found, f"log line {number} of {len(self.lines)} ({where}) shows {found[0]}"
