"""The decision without a broker: a real in-memory key store, deliveries, and verdict checks.

Shared by ``tests/test_decision.py``, ``tests/attacks/`` and the property-based tests: keys come
from the test issuers' JWKS documents parsed by :func:`worker.auth.keys.parse_jwks`, exactly as
a worker parses what it fetches (:class:`worker.testing.LocalKeys`); settings are built as a
worker builds them.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

from tests.support.issuer import AUDIENCE, Issuer
from tests.support.leaks import assert_no_leak
from worker import errors
from worker.auth.setup import build_trust
from worker.pipeline.actions import Registry
from worker.pipeline.decision import Allowed, Denied, Gate
from worker.pipeline.delivery import Delivery
from worker.settings import Settings
from worker.testing.harness import LocalKeys as MemoryKeys

REGISTRY = Registry.from_modules(["tests.support.actions"])

BEFORE_SIGNATURE = {
    "token_malformed",
    "algorithm_not_allowed",
    "token_type_invalid",
    "issuer_untrusted",
    "key_unknown",
    "signature_invalid",
}
"""Reasons of checks 3 to 8: the token was parsed but never verified."""


def clear_warden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read WARDEN_* variables: the tests' own must not be mixed with the caller's."""
    for name in list(os.environ):
        if name.upper().startswith("WARDEN_"):
            monkeypatch.delenv(name)


def make_gate(
    *trusted: Issuer,
    keys: MemoryKeys | None = None,
    registry: Registry = REGISTRY,
    **settings: Any,
) -> Gate:
    """A gate trusting ``trusted`` with the settings a worker would have."""
    values: dict[str, Any] = {"audience": AUDIENCE, "broker_url": "amqp://guest:guest@localhost/"}
    if len(trusted) == 1 and "issuers" not in settings:
        values["issuer"] = trusted[0].url
    elif "issuers" not in settings:
        values["issuers"] = [{"issuer": issuer.url} for issuer in trusted]
    values.update(settings)
    built = Settings(**values)
    return Gate(
        build_trust(built),
        keys or MemoryKeys(*trusted),
        registry,
        queued_for=built.queued_for_seconds,
    )


def job_body(action: str = "reports.generate", payload: Any = None) -> bytes:
    """A well-formed job body."""
    return json.dumps({"action": action, "payload": {} if payload is None else payload}).encode()


def delivery(
    raw: str | None,
    *,
    content: bytes | None = None,
    headers: dict[str, Any] | None = None,
    message_id: str | None = "m1",
    content_type: str | None = "application/json",
    action: str = "reports.generate",
    queue: str = "jobs",
) -> Delivery:
    """A delivery of a job asking for ``action`` with ``raw`` as its Bearer token (if any)."""
    if headers is None:
        headers = {} if raw is None else {"authorization": "Bearer " + raw}
    return Delivery(
        body=job_body(action) if content is None else content,
        headers=headers,
        message_id=message_id,
        content_type=content_type,
        queue=queue,
    )


def fingerprint(raw: str) -> str:
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def assert_no_secret(verdict: Denied, raw: str | None) -> None:
    """Nothing a denial reports holds the token or any 16-character run of its signature."""
    summary = verdict.token.summary() if verdict.token is not None else {}
    texts = [
        verdict.denial.detail,
        str(verdict.denial),
        repr(verdict.denial),
        repr(verdict.token),
        json.dumps(summary, default=str),
        str(verdict.action),
    ]
    for text in texts:
        assert_no_leak(text, "a denial")
        if raw and len(raw) >= 16:
            assert raw not in text, "the raw token leaked into a denial"
            signature = raw.rsplit(".", 1)[-1]
            runs = {signature[i : i + 16] for i in range(len(signature) - 15)}
            leaked = [run for run in runs if run in text]
            assert not leaked, f"a run of the signature leaked into a denial: {text[:200]!r}"


def assert_denied(verdict: object, reason: str, raw: str | None) -> Denied:
    """The verdict is a denial for exactly ``reason``, and it keeps the token's secrets."""
    assert isinstance(verdict, Denied), f"expected {reason}, got {verdict!r}"
    denial = verdict.denial
    assert denial.reason == reason, f"expected {reason}, got {denial.reason}: {denial.detail}"
    assert type(denial) is errors.REASONS[reason]
    assert_no_secret(verdict, raw)
    if verdict.token is not None:
        assert raw is not None
        assert verdict.token.fingerprint() == fingerprint(raw)
        summary = verdict.token.summary()
        assert summary["fingerprint"] == fingerprint(raw)
        assert summary["verified"] is (reason not in BEFORE_SIGNATURE)
        assert verdict.token.verified is (reason not in BEFORE_SIGNATURE)
    return verdict


def assert_allowed(verdict: object, raw: str) -> Allowed:
    """The verdict lets the job run, and holds nothing of the token but its fingerprint."""
    assert isinstance(verdict, Allowed), (
        f"expected allowed, got {verdict.denial.reason}: {verdict.denial.detail}"
        if isinstance(verdict, Denied)
        else repr(verdict)
    )
    assert verdict.token.verified is True
    assert verdict.token.fingerprint() == fingerprint(raw)
    assert raw not in repr(verdict)
    assert_no_leak(repr(verdict), "an allowed verdict")
    return verdict
