"""The leak check itself: it must see a token, or a 16-character run of its signature, wherever it
is written, and nothing else. (The session-wide guard of ``tests/conftest.py`` relies on it.)"""

from __future__ import annotations

import json
import logging

import pytest

from tests.attacks.world import WORLD
from tests.support.issuer import unsigned
from tests.support.leaks import RUN, LogGuard, assert_no_leak, leaks


def test_a_whole_token_and_any_run_of_its_signature_are_leaks() -> None:
    token = WORLD.token()
    signature = token.rsplit(".", 1)[1]
    assert leaks(f"authorization: Bearer {token}")
    assert leaks(json.dumps({"detail": "saw ..." + signature[40 : 40 + RUN] + "..."}))
    assert not leaks("saw " + signature[40 : 40 + RUN - 1])
    assert not leaks("sha256:" + "0" * 64 + " " + token.split(".")[0])  # the header is no secret


def test_an_unsigned_token_is_a_leak_only_whole() -> None:
    token = unsigned({"alg": "none", "typ": "at+jwt"}, WORLD.claims())
    assert leaks(f"Bearer {token}")
    assert not leaks(token.split(".")[1])


def test_assert_no_leak_names_where_without_repeating_the_token() -> None:
    token = WORLD.token()
    with pytest.raises(AssertionError) as caught:
        assert_no_leak(f"x {token} y", "/metrics")
    assert "/metrics" in str(caught.value)
    assert token.rsplit(".", 1)[1][:RUN] not in str(caught.value)


def test_the_log_guard_reads_messages_fields_and_exceptions() -> None:
    token = WORLD.token()
    signature = token.rsplit(".", 1)[1]
    logger = logging.getLogger("tests.leaks.isolated")
    logger.propagate = False  # the session's guard must not see these on purpose
    for emit in (
        lambda: logger.info("clean", extra={"token_fingerprint": "sha256:abc"}),
        lambda: logger.info("token %s", token),
        lambda: logger.info("denied", extra={"detail": signature[:RUN]}),
        lambda: logger.error("failed", exc_info=ValueError(f"bad {signature[-RUN:]}")),
        lambda: logger.warning("stack", stack_info=True, extra={"k": "v"}),
    ):
        guard = LogGuard()
        logger.addHandler(guard)
        try:
            emit()
        finally:
            logger.removeHandler(guard)
        assert len(guard.lines) == 1
        line = guard.lines[0][1]
        if '"event": "clean"' in line or '"event": "stack"' in line:
            guard.check()
        else:
            with pytest.raises(AssertionError) as caught:
                guard.check()
            assert "tests.leaks.isolated" in str(caught.value)
            assert not leaks(str(caught.value))
