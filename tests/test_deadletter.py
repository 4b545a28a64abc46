"""The warden headers of a dead letter as they go on the wire (``docs/dead-letters.md``).

What repeats from one refusal to the next is encoded once and kept, so these tests decode what
goes out and hold it against the denial record built afresh for the same refusal: a kept
encoding must never carry another refusal's facts, and a publisher's own ``x-warden-*`` headers
must never reach a dead letter.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands, encode
from pamqp.header import ContentHeader

from tests.support.decision import delivery, make_gate
from tests.support.issuer import Issuer
from tests.support.leaks import assert_no_leak
from tests.support.schemas import DENIAL
from tests.support.wire import decoded, denial_headers
from worker import errors
from worker.amqp.inbound import Inbound
from worker.amqp.outbound import copy_properties
from worker.auth.tokens import TokenCheck
from worker.deadletters.write import DenialHeaders, kept_headers
from worker.pipeline.decision import Denied
from worker.pipeline.delivery import Delivery

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


def as_sent(denied: Denied, job: Delivery, now: datetime, **where: str) -> dict[str, Any]:
    return denial_headers(denied, job, now, worker="w-1", **where)


async def test_a_repeated_refusal_reads_as_its_own_record(issuer: Issuer) -> None:
    gate, headers = make_gate(issuer), DenialHeaders("w-1")
    token = issuer.token(scope="reports:read", client_id="reports-svc")
    job = delivery(token, action="admin.purge")
    for n in range(3):
        now = MOMENT + timedelta(seconds=n, milliseconds=n)
        denied = await gate.decide(job)
        assert isinstance(denied, Denied)
        sent = decoded(headers.encoded(denied, job, exchange="", routing_key="jobs", now=now))
        assert sent == as_sent(denied, job, now, exchange="", routing_key="jobs")
        DENIAL.validate(sent["x-warden-denial"])
        assert sent["x-warden-denial"]["denied_at"] == f"2026-01-02T03:04:0{5 + n}.{678 + n}Z"
        assert_no_leak(repr(sent), "a dead letter's headers")
    assert len(headers) == 1, "the second and third refusals reused the first one's encoding"


async def test_whatever_differs_between_refusals_shows_in_each(issuer: Issuer) -> None:
    """Each refusal below differs from the first in one fact; all are encoded with the same
    DenialHeaders, in an order that puts every kept encoding to the test."""
    gate, headers = make_gate(issuer), DenialHeaders("w-1")
    token = issuer.token(scope="reports:read")
    other = issuer.token(scope="reports:read", sub="someone-else")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    first = delivery(token, action="admin.purge")
    refusals = [
        (first, "", "jobs"),
        (delivery(token, action="reports.generate"), "", "jobs"),
        (delivery(token, action="admin.purge", queue="other-jobs"), "", "jobs"),
        (replace(first, attempt=2), "", "jobs"),
        (first, "jobs-exchange", "jobs"),
        (first, "", "jobs.eu"),
        (delivery(other, action="admin.purge"), "", "jobs"),
        (delivery(forged, action="admin.purge"), "", "jobs"),
        (delivery(None, action="admin.purge"), "", "jobs"),
        (delivery("not-a-jwt", action="admin.purge"), "", "jobs"),
    ]
    reasons = set()
    for _ in range(2):
        for job, exchange, routing_key in refusals:
            denied = await gate.decide(job)
            assert isinstance(denied, Denied)
            where = {"exchange": exchange, "routing_key": routing_key}
            sent = decoded(headers.encoded(denied, job, now=MOMENT, **where))
            assert sent == as_sent(denied, job, MOMENT, **where)
            reasons.add(sent["x-warden-reason"])
    assert {
        "scope_insufficient",
        "signature_invalid",
        "token_missing",
        "token_malformed",
    } <= reasons
    assert len(headers) == len(refusals)


async def test_kept_encodings_are_bounded(issuer: Issuer) -> None:
    gate, headers = make_gate(issuer), DenialHeaders("w-1", max_entries=2)
    jobs = [delivery(issuer.token(scope="reports:read"), action="admin.purge") for _ in range(3)]
    for job in [*jobs, jobs[0]]:
        denied = await gate.decide(job)
        assert isinstance(denied, Denied)
        sent = decoded(headers.encoded(denied, job, exchange="", routing_key="jobs", now=MOMENT))
        assert sent == as_sent(denied, job, MOMENT, exchange="", routing_key="jobs")
    assert len(headers) == 2


def test_claims_amqp_cannot_carry_leave_the_fingerprint(caplog: pytest.LogCaptureFixture) -> None:
    """An integer beyond 64 bits has no AMQP encoding; the dead letter still goes out."""
    raw = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJlLXRleHQtb2YtdGhlLXRva2Vu"
    check = TokenCheck(raw, claims={"sub": "svc", "exp": 2**70})
    denied = Denied(errors.SignatureInvalid("the signature does not verify"), "reports.read", check)
    job = delivery(raw)
    headers = DenialHeaders("w-1")
    with caplog.at_level(logging.WARNING, logger="warden.consumer"):
        for _ in range(2):
            sent = decoded(
                headers.encoded(denied, job, exchange="", routing_key="jobs", now=MOMENT)
            )
            assert sent["x-warden-denial"]["token"] == {
                "fingerprint": check.fingerprint(),
                "verified": False,
            }
            DENIAL.validate(sent["x-warden-denial"])
    [warning] = [r for r in caplog.records if "not encodable" in r.getMessage()]
    assert warning.message_id == "m1"  # type: ignore[attr-defined]
    assert raw not in caplog.text


def test_a_publishers_own_warden_headers_never_reach_a_dead_letter() -> None:
    forged = {"reason": "none", "detail": "trust me"}
    original = {
        "authorization": "Bearer abc.def.ghi",
        "x-warden-reason": "none",
        "X-Warden-Denial": forged,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "echo": "abc.def.ghi",
    }
    kept = kept_headers(original, "abc.def.ghi")
    assert kept == {"traceparent": original["traceparent"]}

    more = encode.short_string("x-warden-reason") + encode.encode_table_value("token_revoked")
    message = Inbound(_delivered(original))
    wire = copy_properties(message, kept, user_id="guest", more_headers=more).marshal()
    properties = commands.Basic.Properties()
    properties.unmarshal(struct.unpack(">H", wire[:2])[0], wire[2:])
    assert properties.headers == {**kept, "x-warden-reason": "token_revoked"}
    assert wire.count(b"x-warden-reason") == 1
    assert properties.message_id == "m-7"
    assert properties.app_id == "billing"
    assert properties.delivery_mode == 2


def _delivered(headers: dict[str, Any]) -> DeliveredMessage:
    """An aiormq delivery as the transport hands it over, with these headers."""
    return DeliveredMessage(
        delivery=commands.Basic.Deliver(
            consumer_tag="c", delivery_tag=1, redelivered=False, exchange="", routing_key="jobs"
        ),
        header=_header(headers),
        body=b"{}",
        channel=None,  # type: ignore[arg-type]
    )


def _header(headers: dict[str, Any]) -> ContentHeader:
    return ContentHeader(
        body_size=2,
        properties=commands.Basic.Properties(
            headers=headers, message_id="m-7", app_id="billing", content_type="application/json"
        ),
    )
